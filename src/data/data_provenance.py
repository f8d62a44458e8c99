"""Which data a run read, recorded so that a later step can tell it apart from any other file.

Paths typed on the command line are relative to the folder the command ran in, which a later step run
elsewhere can't know. So run.json records them resolved to absolute paths, and the pool's source file with a
sha256 of its content: evaluate.py decides "is this test file the pool's source?" by that hash, wherever
either command ran and wherever the file has moved since.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

BUILT_IN_DEMO = "built-in demo"  # the source testbeds.load_testbed_claims names for the demo's records
_CHUNK = 1 << 20


def _is_scratch(relative: Path) -> bool:
    """Files inside a data folder that are not its data: hidden files, and the cache-*.arrow files the
    `datasets` library writes beside a saved dataset whenever it maps it (so reading would change the hash)."""
    return any(part.startswith(".") for part in relative.parts) or (
        relative.name.startswith("cache-") and relative.suffix == ".arrow")


def _feed(digest: "hashlib._Hash", path: Path) -> None:
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)


def content_hash(path: Path) -> str:
    """The sha256 (64 hex digits) of a data file's bytes, as ``sha256sum`` prints it.

    For a folder (a saved Hugging Face dataset), the sha256 over its files in sorted order of their paths
    relative to it, each as its path, its size and its bytes; hidden files and `datasets` cache files are
    left out. Raises OSError when the file or a file in the folder can't be read.
    """
    digest = hashlib.sha256()
    if not path.is_dir():
        _feed(digest, path)
        return digest.hexdigest()
    files = sorted((p.relative_to(path), p) for p in path.rglob("*") if p.is_file())
    for relative, file in files:
        if _is_scratch(relative):
            continue
        digest.update(f"{relative.as_posix()}\0{file.stat().st_size}\0".encode())
        _feed(digest, file)
    return digest.hexdigest()


def _absolute(path: Optional[Path]) -> Optional[str]:
    return None if path is None else str(path.expanduser().resolve())


def data_record(data_dir: Optional[Path], data_file: Optional[Path], pool_source: str) -> dict:
    """run.json's ``data``: ``data_dir`` and ``data`` (--data-dir, --data) as absolute paths or None;
    ``pool_source``, the absolute path of the file the pool was drawn from (or "built-in demo"); and
    ``pool_source_sha256``, its content_hash (None for the built-in demo). Resolved against the current
    folder, so call it from the process that read the data."""
    source_path = Path(pool_source)
    is_data = pool_source != BUILT_IN_DEMO and source_path.exists()
    return {
        "data_dir": _absolute(data_dir),
        "data": _absolute(data_file),
        "pool_source": str(source_path.resolve()) if is_data else pool_source,
        "pool_source_sha256": content_hash(source_path) if is_data else None,
    }
