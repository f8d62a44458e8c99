"""How far a run got, read from its summary.json: for the companion scripts that use its labels.

A run that stopped early (Ctrl-C, a server that never came back, a full disk) still writes labels.jsonl,
so a tool that reads labels must say when they are partial rather than pass them off as a finished run's.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from src.run_directory.run_directory import SUMMARY_FILE, RunDirectory
from src.search.baselines import ICM, LENGTH_SETTING, RANDOM_ROUNDS


@dataclass(frozen=True)
class RunProgress:
    """``iterations`` done of ``planned`` (ICM's --K; a bootstrap labeller's --bootstrap-rounds; the random
    labeller's one round); None where summary.json doesn't say. ``converged``: a bootstrap labeller's labels
    stopped changing, or went round a cycle, which finishes it before ``planned``.

    ``unknown`` says why the state can't be read (no summary.json, or a damaged one), else None.
    """
    iterations: Optional[int]
    planned: Optional[int]
    stopped_early: Optional[str]
    unknown: Optional[str] = None
    converged: bool = False

    @property
    def finished(self) -> bool:
        if self.unknown is not None or self.stopped_early:
            return False
        if self.converged:
            return True
        return not (isinstance(self.iterations, int) and isinstance(self.planned, int) and self.iterations < self.planned)


def _count(value: object) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def run_progress(run_dir: Path) -> RunProgress:
    """The progress summary.json records. Never raises: a missing or damaged file gives ``unknown``."""
    summary_file = RunDirectory(run_dir).summary_file
    try:
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return RunProgress(None, None, None, unknown=f"it has no {SUMMARY_FILE}")
    except (OSError, ValueError, RecursionError):
        return RunProgress(None, None, None, unknown=f"its {SUMMARY_FILE} can't be read")
    if not isinstance(summary, dict):
        return RunProgress(None, None, None, unknown=f"its {SUMMARY_FILE} is not a JSON object")
    settings = summary.get("settings") if isinstance(summary.get("settings"), dict) else {}
    stopped = summary.get("stopped_early")
    labeller = settings.get("labeller", ICM)  # runs recorded before the baselines are ICM's
    length = LENGTH_SETTING.get(labeller, "K") if isinstance(labeller, str) else "K"
    planned = RANDOM_ROUNDS if length is None else _count(settings.get(length))
    # A bootstrap labeller that went round a cycle (cycle_length) is finished as one that converged is.
    return RunProgress(_count(summary.get("iterations")), planned, str(stopped) if stopped else None,
                       converged=summary.get("converged") is True or _count(summary.get("cycle_length")) is not None)


def warn_if_partial(run_dir: Path) -> RunProgress:
    """Say on stderr when the labels are those of a run that stopped before its last iteration, or when
    that can't be told. Returns the progress it read."""
    progress = run_progress(run_dir)
    if progress.unknown is not None:
        print(f"warning: can't tell whether the run in {run_dir} finished ({progress.unknown}): its labels may "
              "be partial", file=sys.stderr)
    elif not progress.finished:
        print(f"warning: the run in {run_dir} stopped at iteration {progress.iterations} of {progress.planned} "
              f"({progress.stopped_early or 'stopped early'}): these are its partial labels. "
              f"Finish it with: python src/experiments/ICM.py --resume {run_dir}", file=sys.stderr)
    return progress
