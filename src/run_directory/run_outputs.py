"""What a run leaves in its output directory: labels.jsonl, log.jsonl and summary.json."""
from __future__ import annotations

import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from core.errors import UserError
from core.crash_points import maybe_crash
from src.data.claims import Claim, label_row

OUTPUT_FILES = ("labels.jsonl", "log.jsonl", "summary.json", "checkpoint.json", "run.json")


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
            kept = (f"{out}/checkpoint.json is intact at iteration {saved_iteration}: once {out} can be written "
                    f"(free space, or make it writable), resume with --resume {out}")
        return cls(f"could not write {where} ({error.strerror or error}); {kept}")


# A run that never got past its first scoring has only these; nothing in them is worth keeping.
NEVER_STARTED = {"run.json", "log.jsonl"}


# What the companion scripts make from a run's labels (evaluate.py, plot.py, export_labels.py). They describe
# that run alone, so they go when it is replaced: a figure of another run beside new labels gets published.
DERIVED_FILES = ("eval.json", "eval.png", "progress.png")
DERIVED_PATTERNS = ("export_*.jsonl",)


def derived_files(path: Path) -> list[str]:
    """The names of the files in ``path`` made from a run's labels (sorted)."""
    found = {name for name in DERIVED_FILES if (path / name).exists()}
    found.update(p.name for pattern in DERIVED_PATTERNS for p in path.glob(pattern))
    return sorted(found)


def prepare_output_dir(path: Path, overwrite: bool) -> None:
    """Refuse to mix a new run into an old one's files, or into files made from them, unless told to replace
    them; --overwrite removes both and keeps the response cache. A run that never saved a checkpoint (killed
    during its first scoring) is replaced, since there is nothing to resume."""
    existing = [name for name in OUTPUT_FILES if (path / name).exists()]
    derived = derived_files(path) if path.is_dir() else []
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


def discard_unstarted_run(path: Path) -> None:
    """A run that never saved a checkpoint holds nothing worth resuming: leave nothing that blocks a re-run."""
    if (path / "checkpoint.json").exists():
        return
    for name in NEVER_STARTED:
        try:
            (path / name).unlink(missing_ok=True)
        except OSError:
            pass  # the folder can't be changed: prepare_output_dir replaces a run with no checkpoint anyway


def write_atomically(path: Path, text: str, crash_point: Optional[str] = None) -> None:
    """Write to a temporary file beside ``path``, fsync, and rename it over ``path``: a crash leaves the old
    file or the new one, never half. ``crash_point`` names where the resume tests may kill the process."""
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text[: len(text) // 2])
            if crash_point:
                maybe_crash(crash_point)
            file.write(text[len(text) // 2:])
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as exc:
        try:
            Path(temporary).unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(exc, OSError):
            # Name the file the run was writing, not its temporary stand-in.
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    # The rename is durable only once the directory entry is on disk.
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix, so a writer that goes by it, like matplotlib, still can) for
    the caller to write; renamed over ``path`` when the block ends, removed if it raises. For files written by
    name rather than as text (figures); ``write_atomically`` is the same for text."""
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        with temporary.open("rb") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


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
