"""What a run leaves in its output directory (run_directory.py names the files): its rows, its log, and the
rules for starting a new run in a folder that holds an old one."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

from core.errors import UserError
from src.data.claims import Claim, label_row
from src.run_directory.run_directory import CHECKPOINT_FILE, NEVER_STARTED, OUTPUT_FILES, RunDirectory


class OutputDirInUse(UserError):
    pass


class OutputWriteError(UserError):
    """The run's own files could not be written (a full disk, a folder made read-only): the run stops, and the
    message says what its checkpoint still holds and how to go on."""

    @classmethod
    def after(cls, error: OSError, out: Path, saved_iteration: Optional[int]) -> "OutputWriteError":
        where = error.filename or out
        if saved_iteration is None:
            kept = "nothing was checkpointed yet: once it can be written, run the same command again"
        else:
            kept = (f"{out}/{CHECKPOINT_FILE} is intact at iteration {saved_iteration}: once {out} can be written "
                    f"(free space, or make it writable), resume with --resume {out}")
        return cls(f"could not write {where} ({error.strerror or error}); {kept}")


def prepare_output_dir(files: RunDirectory, overwrite: bool) -> None:
    """Refuse to mix a new run into an old one's files, or into files made from them, unless told to replace
    them; --overwrite removes both and keeps the response cache. A run that never saved a checkpoint (killed
    during its first scoring) is replaced, since there is nothing to resume."""
    path = files.path
    existing = files.existing(OUTPUT_FILES)
    derived = files.derived_files() if path.is_dir() else []
    if existing and set(existing) <= NEVER_STARTED and not derived and not overwrite:
        print(f"note: replacing the run in {path}, which never finished its first scoring", file=sys.stderr)
        overwrite = True
    if existing and not overwrite:
        raise OutputDirInUse(
            f"--output-dir {path} already holds a run ({', '.join(existing + derived)}): continue it with --resume {path}, "
            "choose a new --output-dir, or pass --overwrite to replace it"
        )
    if derived and not overwrite:
        raise OutputDirInUse(
            f"--output-dir {path} holds files made from an earlier run ({', '.join(derived)}) but not the run itself: "
            "choose a new --output-dir, or pass --overwrite to remove them"
        )
    path.mkdir(parents=True, exist_ok=True)
    for name in existing + derived:
        (path / name).unlink()


def discard_unstarted_run(files: RunDirectory) -> None:
    """A run that never saved a checkpoint holds nothing worth resuming: leave nothing that blocks a re-run."""
    if files.checkpoint_file.exists():
        return
    for name in NEVER_STARTED:
        try:
            (files.path / name).unlink(missing_ok=True)
        except OSError:
            pass  # the folder can't be changed: prepare_output_dir replaces a run with no checkpoint anyway


def label_rows(claims: dict[int, Claim], scores: dict[int, float],
               label_masses: Optional[dict[int, float]] = None) -> Iterable[dict[str, Any]]:
    """labels.jsonl's rows. ``scores``: each labelled claim's leave-one-out score under the final labels, and
    each unlabelled claim's prediction from all labelled ones (missing where not known: null). ``label_masses``:
    the probability each of those answers puts on the label tokens (src/pipeline/label_scores.py)."""
    label_masses = label_masses or {}
    for uid in sorted(claims):
        yield label_row(claims[uid], scores.get(uid), label_masses.get(uid))


def jsonl(rows: Iterable[dict[str, Any]]) -> str:
    # allow_nan=False: no output may hold NaN or Infinity, which JSON readers other than Python's refuse.
    return "".join(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n" for row in rows)


class IterationLog:
    """log.jsonl, one line per iteration, flushed as it goes so a crash keeps what was logged."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("a", encoding="utf-8")

    def __call__(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
