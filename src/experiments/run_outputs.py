"""What a run leaves in its output directory: labels.jsonl, log.jsonl and summary.json."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional

from core.crash_points import maybe_crash

OUTPUT_FILES = ("labels.jsonl", "log.jsonl", "summary.json", "checkpoint.json", "run.json")
TEXT_FIELDS = ("question", "choice", "choice_2", "answer")


class OutputDirInUse(ValueError):
    pass


def prepare_output_dir(path: Path, overwrite: bool) -> None:
    """Refuse to mix a new run into an old one's files unless told to replace them."""
    existing = [name for name in OUTPUT_FILES if (path / name).exists()]
    if existing and not overwrite:
        raise OutputDirInUse(
            f"--output-dir {path} already holds a run ({', '.join(existing)}): continue it with --resume {path}, "
            "choose a new --output-dir, or pass --overwrite to replace it"
        )
    path.mkdir(parents=True, exist_ok=True)
    for name in existing:
        (path / name).unlink()


def write_atomically(path: Path, text: str, crash_point: Optional[str] = None) -> None:
    """Write to a temporary file beside ``path``, fsync, and rename it over ``path``: a crash leaves the old
    file or the new one, never half. ``crash_point`` names where the resume tests may kill the process."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text[: len(text) // 2])
            if crash_point:
                maybe_crash(crash_point)
            file.write(text[len(text) // 2:])
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    # The rename is durable only once the directory entry is on disk.
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _as_bool(label: Optional[int]) -> Optional[bool]:
    return None if label is None else bool(label)


def label_rows(claims: dict[int, dict[str, Any]], scores: dict[int, float]) -> Iterable[dict[str, Any]]:
    for uid in sorted(claims):
        claim = claims[uid]
        row = {"uid": uid, "record": claim.get("record"), "consistency_id": claim["consistency_id"]}
        row.update({f: claim[f] for f in TEXT_FIELDS if f in claim})
        row.update(
            prompt=claim["prompt"],
            label=_as_bool(claim["label"]), gold_label=_as_bool(claim.get("vanilla_label")),
            score=scores.get(uid), seed=claim.get("type") == "seed",
        )
        yield row


def jsonl(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


class IterationLog:
    """log.jsonl, one line per iteration, flushed as it goes so a crash keeps what was logged."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("a", encoding="utf-8")

    def __call__(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
