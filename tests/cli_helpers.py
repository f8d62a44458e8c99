"""Calling an entry point in this process and checking the promise every entry point makes: one ``error:`` line,
exit code 2, no traceback."""
from __future__ import annotations

import importlib.util
import inspect
import sys
import unittest.mock
from pathlib import Path
from types import ModuleType

from tests.conftest import REPO_ROOT

SERVER_VARIABLES = ("VLLM_BASE_URL", "LLAMA_API_BASE", "API_KEY", "VLLM_API_KEY")


def load_script(name: str) -> ModuleType:
    """scripts/<name>.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def call(script: ModuleType, argv, capsys) -> tuple[int, str]:
    """``script.main(argv)`` in this process: its exit code and stderr. An exception that escapes it fails the test,
    as the traceback it would print."""
    argv = [str(a) for a in argv]
    try:
        if inspect.signature(script.main).parameters:
            code = script.main(argv)
        else:  # a main() that reads sys.argv itself
            with unittest.mock.patch.object(sys, "argv", [script.__name__, *argv]):
                code = script.main()
    except SystemExit as exit:  # argparse's own errors end this way
        code = exit.code
    return code, capsys.readouterr().err


def refused(code: int, stderr: str, *words: str) -> str:
    """Exit 2 and exactly one ``error:`` line, the last, holding ``words``; no traceback. Returns that line."""
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and stderr.strip().splitlines()[-1] == errors[0], stderr
    for word in words:
        assert word in errors[0], stderr
    return errors[0]


def snapshot(*folders: Path) -> dict:
    """Every file under ``folders`` and its bytes."""
    return {path: path.read_bytes() for folder in folders for path in sorted(Path(folder).rglob("*")) if path.is_file()}
