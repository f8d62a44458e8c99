"""Running a sweep's cells: each one an ordinary ICM run in its own folder, started, resumed or skipped.

A cell's state is read from its folder: ``done`` (summary.json says the run ended without stopping early),
``partial`` (a checkpoint to resume from) or ``new``. A partial cell continues through ICM's own ``--resume``
with the sweep's flags repeated, so a folder that holds some other run is refused by the resume's checks rather
than continued. One cell at a time runs in this process (src.run.run); ``--jobs N`` runs N at once as ICM.py
subprocesses, against the same endpoints, and stops them all, by the process ids it started, on Ctrl-C/SIGTERM.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Callable, Optional, Sequence

from core.errors import UserError
from core.llm_api.redaction import scrub_credentials
from src.cli.cli_errors import network_error_line, os_error_line
from src.cli.stop_signals import SearchStopped
from src.config.run_config import RunConfig
from src.config.run_flags import build_parser, passed_flags, validate
from src.run import run
from src.run_directory.run_directory import RunDirectory
from src.run_directory.run_lock import OutputDirLocked
from src.sweep.grid import Cell
from src.sweep.sweep_record import LOGS_DIR, Sweep

REPO_ROOT = Path(__file__).resolve().parents[2]
ICM_COMMAND = [sys.executable, str(REPO_ROOT / "src" / "experiments" / "ICM.py")]  # a test may swap in a stand-in
POLL_SECONDS = 0.2
STOP_GRACE_SECONDS = 60.0  # after SIGTERM, how long a cell may take to finish its iteration before it is killed


def cell_state(run_dir: Path) -> str:
    """"done", "partial" or "new" (see the module's docstring). A damaged summary.json is not done."""
    files = RunDirectory(run_dir)
    try:
        summary = json.loads(files.summary_file.read_text(encoding="utf-8"))
        if isinstance(summary, dict) and not summary.get("stopped_early") and files.labels_file.is_file():
            return "done"
    except (OSError, ValueError, RecursionError):
        pass
    return "partial" if files.checkpoint_file.is_file() else "new"


def run_argv(sweep: Sweep, cell: Cell) -> list[str]:
    """ICM.py's flags for this invocation of the cell: a new run in its folder, or the resume of a partial one
    (the sweep's flags repeated, so that the resume refuses a folder started with other settings)."""
    where = sweep.cell_dir(cell)
    folder = ["--resume", str(where)] if cell_state(where) == "partial" else ["--output-dir", str(where)]
    return [*sweep.cell_argv(cell), *folder]


def check_cells(sweep: Sweep, cells: Sequence[Cell]) -> None:
    """Every cell's settings, as ICM.py would check them before starting (range, combinations, paper mode), so a
    bad combination stops the sweep before any cell runs. UserError naming the cell."""
    for cell in cells:
        argv = sweep.cell_argv(cell)
        try:
            config = sweep.cell_config(cell)
            validate(config)
            config.with_paper_mode(passed_flags(argv))
        except UserError as exc:
            raise UserError(f"cell {cell.index} ({cell.name}): {exc}") from None


@dataclass
class CellOutcome:
    cell: Cell
    code: int  # ICM.py's exit code: 0, 2 (an error), 128+signal (stopped)
    message: str = ""  # the error, for code 2
    busy: bool = False  # another process holds the cell's folder (another job of the sweep)


def run_in_process(sweep: Sweep, cell: Cell) -> CellOutcome:
    """One cell through src.run.run, as ICM.py would run it. A stop (Ctrl-C, SIGTERM) is returned as its code."""
    argv = run_argv(sweep, cell)
    try:
        run(RunConfig.from_args(build_parser().parse_args(argv)), frozenset(passed_flags(argv)))
    except OutputDirLocked as exc:
        return CellOutcome(cell, 2, scrub_credentials(str(exc)), busy=True)
    except UserError as exc:
        return CellOutcome(cell, 2, scrub_credentials(str(exc)))
    except OSError as exc:
        return CellOutcome(cell, 2, scrub_credentials(os_error_line(exc)))
    except SearchStopped as stopped:
        return CellOutcome(cell, stopped.exit_code)
    except KeyboardInterrupt:
        return CellOutcome(cell, 130)
    except Exception as exc:  # a network error a model route let through; anything else is a bug
        line = network_error_line(exc)
        if line is None:
            raise
        return CellOutcome(cell, 2, scrub_credentials(line))
    return CellOutcome(cell, 0)


def log_path(sweep: Sweep, cell: Cell) -> Path:
    return sweep.out / LOGS_DIR / f"cell-{cell.index}.log"


def last_error_line(log: Path) -> str:
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("error: ")]
    return errors[-1][len("error: "):] if errors else (lines[-1] if lines else "")


class CellProcesses:
    """Up to ``jobs`` cells at once, each an ICM.py process writing its output to OUT/logs/cell-<index>.log.

    After a cell fails, no new cell starts (the others finish). The first Ctrl-C or SIGTERM sends SIGTERM to every
    cell this object started (by the process ids it holds): each stops after its iteration, keeping its
    checkpoint; one still running STOP_GRACE_SECONDS later, or at a second signal, is killed (SIGKILL), which a
    resume also survives. Every wait here is a poll of POLL_SECONDS."""

    def __init__(self, sweep: Sweep, jobs: int, report: Callable[[str], None]) -> None:
        self.sweep, self.jobs, self.report = sweep, jobs, report
        self.running: dict[int, tuple[Cell, subprocess.Popen]] = {}  # pid -> the cell it runs
        self.stop_signal: Optional[int] = None
        self.kill_at: Optional[float] = None

    def _on_signal(self, number: int, frame: Optional[FrameType]) -> None:
        if self.stop_signal is None:
            self.stop_signal = number
            self.kill_at = time.monotonic() + STOP_GRACE_SECONDS
            self.report(f"{signal.Signals(number).name}: stopping {len(self.running)} running cell(s) after their "
                        f"iteration (again to stop at once)")
            for _, process in self.running.values():
                process.send_signal(signal.SIGTERM)
        else:
            self.kill_at = time.monotonic()

    def run(self, cells: Sequence[Cell]) -> list[CellOutcome]:
        previous = {n: signal.signal(n, self._on_signal) for n in (signal.SIGINT, signal.SIGTERM)}
        outcomes: list[CellOutcome] = []
        pending = list(cells)
        try:
            while pending or self.running:
                failed = any(o.code != 0 and not o.busy for o in outcomes)
                while pending and len(self.running) < self.jobs and self.stop_signal is None and not failed:
                    self._start(pending.pop(0))
                if not self.running:
                    break
                time.sleep(POLL_SECONDS)
                for pid, (cell, process) in list(self.running.items()):
                    code = process.poll()
                    if code is not None:
                        del self.running[pid]
                        outcomes.append(self._outcome(cell, code))
                if self.kill_at is not None and time.monotonic() >= self.kill_at:
                    for _, process in self.running.values():
                        process.kill()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            for _, process in self.running.values():  # an error in this loop must not leave cells running
                process.kill()
                process.wait(timeout=30)
        return outcomes

    def _start(self, cell: Cell) -> None:
        log = log_path(self.sweep, cell)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as output:
            # Its own session: a Ctrl-C at the terminal reaches the sweep alone, which stops the cells itself.
            process = subprocess.Popen([*ICM_COMMAND, *run_argv(self.sweep, cell)], stdin=subprocess.DEVNULL,
                                       stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        self.running[process.pid] = (cell, process)
        self.report(f"cell {cell.index} ({cell.name}): started, process {process.pid}, output in {log}")

    def _outcome(self, cell: Cell, code: int) -> CellOutcome:
        if code < 0:  # killed by a signal: the shell's convention
            code = 128 - code
        if self.stop_signal is not None and code > 2:
            code = 128 + self.stop_signal  # stopped because the sweep was: its signal's code, as a run's
        message = last_error_line(log_path(self.sweep, cell)) if code == 2 else ""
        busy = code == 2 and "is in use by another ICM run" in message
        self.report(f"cell {cell.index} ({cell.name}): {'finished' if code == 0 else f'exit {code}'}")
        return CellOutcome(cell, code, message, busy)
