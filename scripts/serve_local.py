"""Serve the embedded model over HTTP with llama.cpp's own server (xllamacpp), on a loopback port.

It speaks the OpenAI-compatible API that vLLM does (/v1/completions with list prompts and logprobs,
/v1/models, /health, /metrics), so a machine without a GPU can run the whole vLLM route against it:

    python scripts/serve_local.py --port 8000
    VLLM_BASE_URL=http://127.0.0.1:8000 python src/experiments/ICM.py --testbed demo ...

This starts llama.cpp's server; it is not a server of our own.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Optional, Sequence

from core.llm_api.model_files import resolve_embedded_model
from src.cli.cli_errors import OneLineParser, UserError, run_main
from src.cli.cli_numbers import Bounded

# llama.cpp refuses a smaller context.
LEAST_CONTEXT = 256


def build_parser() -> OneLineParser:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, action=Bounded, at_least=0, at_most=65535,
                        help="0 picks a free port")
    parser.add_argument("--model", default=None, help="a .gguf file (default: the bundled SmolLM2-135M)")
    parser.add_argument("--slots", type=int, default=4, action=Bounded, at_least=1, help="sequences processed in parallel")
    parser.add_argument("--ctx-per-slot", type=int, default=8192, action=Bounded, at_least=LEAST_CONTEXT,
                        help=f"context tokens per slot (at least {LEAST_CONTEXT})")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, action=Bounded, at_least=1)
    parser.add_argument("--api-key", default=os.environ.get("VLLM_API_KEY"), help="require this key (default: VLLM_API_KEY)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(lambda: serve(build_parser().parse_args(argv)))


def serve(args: argparse.Namespace) -> int:
    import xllamacpp

    model_path = resolve_embedded_model(args.model)  # ModelFileMissing: one error line
    params = xllamacpp.CommonParams()
    params.model.path = str(model_path)
    params.model_alias = {model_path.stem}  # what /v1/models lists and clients send as "model"
    params.hostnames = [args.host]
    params.port = args.port
    params.n_parallel = args.slots
    params.n_ctx = args.ctx_per_slot * args.slots
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.endpoint_metrics = True
    params.warmup = False
    params.verbosity = -1
    if args.api_key:
        params.api_keys = [args.api_key]
    try:
        server = xllamacpp.Server(params)
    except RuntimeError as exc:  # xllamacpp says no more than "check the input params"
        raise UserError(f"llama.cpp's server did not start on {args.host}:{args.port} ({exc}): is the port in use, or the "
                        "address not this machine's? Choose another --port (0 picks a free one) or --host") from None

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # Tests and scripts read this line to learn the port.
    print(f"serving {model_path.stem} at {server.listening_address} (Ctrl-C to stop)", flush=True)
    stop.wait()
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
