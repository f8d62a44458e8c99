"""Calling an entry point and checking the promise every entry point makes: one ``error:`` line, exit code 2, no
traceback.

``call`` runs an entry point's ``main(argv)`` in this process: the default, since starting Python and importing the
project costs more than most bad-input tests. ``run_script``/``start_script`` start one as its own process, for what
needs one: a real SIGTERM or SIGKILL, a crash that kills the process (ICM_CRASH_AT), or the script starting as a
script. Both see the test's environment, which tests/conftest.py cleans of route variables and keys; a test adds
its own with ``monkeypatch.setenv`` (in-process) or ``env`` (a subprocess).
"""
from __future__ import annotations

import importlib.util
import inspect
import os
import subprocess
import sys
import unittest.mock
from pathlib import Path
from types import ModuleType
from typing import Union

from tests.conftest import REPO_ROOT, SMALL_EMBEDDED  # noqa: F401  (SMALL_EMBEDDED: two 2048-token slots)

ICM_SCRIPT = "src/experiments/ICM.py"


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


def environment(**extra: str) -> dict[str, str]:
    """This test's environment (clean of route variables, see conftest.py) plus ``extra``, for a subprocess."""
    return {**os.environ, **extra}


def script_command(script: Union[str, Path], *args) -> list[str]:
    """``python <script> args``; ``script`` is a path from the repository root (``src/experiments/ICM.py``)."""
    return [sys.executable, str(REPO_ROOT / script), *map(str, args)]


def run_script(script: Union[str, Path], *args, env: dict[str, str] | None = None, timeout: float = 600,
               cwd: Union[str, Path] = REPO_ROOT) -> subprocess.CompletedProcess:
    """Run ``script`` as its own process to the end: its exit code, stdout and stderr (text)."""
    return subprocess.run(script_command(script, *args), cwd=cwd, env=environment(**(env or {})),
                          capture_output=True, text=True, timeout=timeout)


def start_script(script: Union[str, Path], *args, env: dict[str, str] | None = None, stderr=subprocess.PIPE,
                 stdout=subprocess.PIPE, cwd: Union[str, Path] = REPO_ROOT) -> subprocess.Popen:
    """Start ``script`` as its own process and return at once (to signal it, or to watch its files)."""
    return subprocess.Popen(script_command(script, *args), cwd=cwd, env=environment(**(env or {})),
                            stdout=stdout, stderr=stderr, text=True)
