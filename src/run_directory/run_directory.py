"""The one owner of a run's output directory: the name of every file in it, its lock, and how files get there.

Every reader and writer of a run (ICM.py, evaluate.py, plot.py, export_labels.py, merge_labels.py, the checkpoint
and the companion readers) asks a ``RunDirectory`` for a file's path instead of spelling its name, so the layout
is written down once, here:

    run.json          the run's identity, settings, pool fingerprint and data (written before any model call)
    checkpoint.json   the search's state after the seeds are scored and after every iteration
    log.jsonl         one line per iteration, appended as it goes
    labels.jsonl      every claim's label and score (written at the end, or when the run stops)
    summary.json      what the run did: settings, route, metrics, counts
    responses.sqlite  the response cache (core/llm_api/response_cache.py), unless --cache-dir puts it elsewhere
    .lock             held by the process that works in the folder (run_lock.py)
    .NAME.*.tmp       a write in progress (write_atomically); a crash can leave one, removed under the lock
    eval.json, eval.png, progress.png, export_*.jsonl   made from the labels by the companion scripts

Every file except the appended log is written atomically: a temporary file beside it, written, fsynced and
renamed over it, so a crash leaves the old file or the new one, never half. New files get the mode any file
this process creates gets (0o666 less the umask), like the log and the cache.
"""
from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from core.llm_api.response_cache import CACHE_FILE
from src.run_directory.run_lock import RunLock

RUN_FILE = "run.json"
CHECKPOINT_FILE = "checkpoint.json"
LOG_FILE = "log.jsonl"
LABELS_FILE = "labels.jsonl"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".lock"
TEMPORARY_PATTERN = ".*.tmp"  # what write_atomically leaves behind when a crash cuts it short
EVAL_FILE = "eval.json"
EVAL_FIGURE = "eval.png"
PROGRESS_FIGURE = "progress.png"
EXPORT_PATTERN = "export_*.jsonl"

# What a run writes and prepare_output_dir replaces (the response cache is kept: its answers stay valid).
OUTPUT_FILES = (LABELS_FILE, LOG_FILE, SUMMARY_FILE, CHECKPOINT_FILE, RUN_FILE)
# A run that never got past its first scoring has only these; nothing in them is worth keeping.
NEVER_STARTED = frozenset({RUN_FILE, LOG_FILE})
# What an ICM.py run keeps in its output directory, and reads back on resume: never an output of another tool.
RUN_OWN_FILES = (LABELS_FILE, LOG_FILE, SUMMARY_FILE, RUN_FILE, CHECKPOINT_FILE, CACHE_FILE)
# A folder holding any of these holds an ICM.py run; a merge's output holds only MERGE_FILES.
RUN_MARKERS = (RUN_FILE, CHECKPOINT_FILE, LOG_FILE)
MERGE_FILES = (LABELS_FILE, SUMMARY_FILE)
# What the companion scripts make from a run's labels (evaluate.py, plot.py, export_labels.py). They describe
# that run alone, so they go when it is replaced: a figure of another run beside new labels gets published.
DERIVED_FILES = (EVAL_FILE, EVAL_FIGURE, PROGRESS_FIGURE)
DERIVED_PATTERNS = (EXPORT_PATTERN,)


def export_file_name(fmt: str) -> str:
    """export_labels.py's default output name for ``--format fmt``."""
    return EXPORT_PATTERN.replace("*", fmt)


class RunDirectory:
    """The files of the run in ``path``, as paths, and writing them. Nothing is touched on construction.

    ``before_rename`` is a seam for fault injection (the resume tests): called with a file's path once its new
    content is written and fsynced to the temporary, before the rename; None in a real run.
    """

    def __init__(self, path: Path, before_rename: Optional[Callable[[Path], None]] = None) -> None:
        self.path = Path(path)
        self._before_rename = before_rename

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def checkpoint_file(self) -> Path:
        return self.path / CHECKPOINT_FILE

    @property
    def log_file(self) -> Path:
        return self.path / LOG_FILE

    @property
    def labels_file(self) -> Path:
        return self.path / LABELS_FILE

    @property
    def summary_file(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def cache_file(self) -> Path:
        """Where the response cache is when the run keeps it in its own folder (the default)."""
        return self.path / CACHE_FILE

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_FILE

    @property
    def eval_file(self) -> Path:
        return self.path / EVAL_FILE

    @property
    def eval_figure(self) -> Path:
        return self.path / EVAL_FIGURE

    @property
    def progress_figure(self) -> Path:
        return self.path / PROGRESS_FIGURE

    def export_file(self, fmt: str) -> Path:
        return self.path / export_file_name(fmt)

    def own_files(self) -> list[Path]:
        """The run's own files (RUN_OWN_FILES), whether they exist or not."""
        return [self.path / name for name in RUN_OWN_FILES]

    def existing(self, names: Iterable[str]) -> list[str]:
        """Those of ``names`` (in their order) that exist in the folder."""
        return [name for name in names if (self.path / name).exists()]

    def derived_files(self) -> list[str]:
        """The names of the files here made from a run's labels (sorted)."""
        found = set(self.existing(DERIVED_FILES))
        found.update(p.name for pattern in DERIVED_PATTERNS for p in self.path.glob(pattern))
        return sorted(found)

    def temporaries(self) -> list[Path]:
        return sorted(self.path.glob(TEMPORARY_PATTERN))

    def remove_leftover_temporaries(self) -> None:
        """Temporary files of a write that a crash cut short; the real files are intact. Only call this while
        holding the run's lock: a live run's temporary file looks the same."""
        for leftover in self.temporaries():
            leftover.unlink(missing_ok=True)

    def lock(self) -> RunLock:
        """The run's exclusive lock, to hold in a ``with`` block (run_lock.py); makes the folder if it is missing."""
        return RunLock(self.path, self.lock_file)

    def write(self, path: Path, text: str) -> None:
        """Write ``text`` to ``path`` (one of this run's files) atomically; see write_atomically."""
        write_atomically(path, text, before_rename=self._before_rename)


def _temporary_beside(path: Path, suffix: str) -> Path:
    """A fresh name beside ``path`` for its temporary: ``.NAME.<random>SUFFIX``."""
    return path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"


def _is_ours(error: BaseException, temporary: Path) -> bool:
    """Whether the temporary is this write's to remove: every failure but finding its name already taken."""
    return not (isinstance(error, FileExistsError) and error.filename == str(temporary))


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_atomically(path: Path, text: str, before_rename: Optional[Callable[[Path], None]] = None) -> None:
    """Write ``text`` (UTF-8) to a new temporary file beside ``path``, fsync, and rename it over ``path``: a crash
    leaves the old file or the new one, never half. The new file's mode is 0o666 less the umask. A failure or
    a signal removes the temporary and raises (an OSError names ``path``). ``before_rename``: see RunDirectory."""
    temporary = _temporary_beside(path, ".tmp")
    # The temporary is created inside the try: a signal that lands just after it exists still removes it.
    try:
        with open(temporary, "x", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        if before_rename is not None:
            before_rename(path)
        os.replace(temporary, path)
    except BaseException as exc:
        if _is_ours(exc, temporary):
            try:
                temporary.unlink(missing_ok=True)
            except OSError:
                pass
        if isinstance(exc, OSError):
            # Name the file being written, not its temporary stand-in.
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    _fsync_directory(path.parent)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix, so a writer that goes by it, like matplotlib, still can) for
    the caller to write; renamed over ``path`` when the block ends, removed if it raises. For files written by
    name rather than as text (figures); ``write_atomically`` is the same for text."""
    temporary = _temporary_beside(path, f".tmp{path.suffix}")
    try:
        open(temporary, "x").close()  # taken, with the mode any new file gets; the caller writes it by name
        yield temporary
        with temporary.open("rb") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as exc:
        if _is_ours(exc, temporary):
            temporary.unlink(missing_ok=True)
        raise
