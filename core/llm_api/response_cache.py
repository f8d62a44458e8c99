"""A persistent cache of model answers, keyed by exactly what determines them.

The key hashes the route's identity (route, model, top-k, exact-label ids, deterministic or not) with the
full prompt text, so a changed prompt can never be served an old answer (the reference keyed its cache by
pipeline step name and replayed stale scores). SQLite in WAL mode lets parallel jobs share one cache file.
"""
from __future__ import annotations

import errno
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any, Sequence

from core.errors import UserError
from core.llm_api.logprobs import NextTokenLogprobs

CACHE_FILE = "responses.sqlite"


class CacheUnusable(UserError):
    pass


def request_key(identity: dict[str, Any], prompt: str) -> str:
    return hashlib.sha256(json.dumps([identity, prompt], sort_keys=True).encode()).hexdigest()


class ResponseCache:
    def __init__(self, folder: Path) -> None:
        self.path = folder / CACHE_FILE
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, logprobs TEXT NOT NULL)")
            self._db.execute("SELECT key, logprobs FROM answers LIMIT 1").fetchall()
        except (OSError, sqlite3.Error) as exc:
            raise self._unusable(exc) from None
        self.hits = 0
        self.misses = 0

    def _unusable(self, exc: BaseException) -> CacheUnusable:
        return CacheUnusable(f"the response cache {self.path} can't be used ({exc}): move it aside (a new cache "
                             "starts empty), choose another --cache-dir, or pass --no-cache")

    def get_many(self, keys: Sequence[str]) -> dict[str, NextTokenLogprobs]:
        found: dict[str, NextTokenLogprobs] = {}
        unique = list(dict.fromkeys(keys))
        try:
            for start in range(0, len(unique), 500):  # SQLite caps the number of bound parameters
                chunk = unique[start:start + 500]
                rows = self._db.execute(
                    f"SELECT key, logprobs FROM answers WHERE key IN ({','.join('?' * len(chunk))})", chunk
                ).fetchall()
                found.update({key: [tuple(pair) for pair in json.loads(value)] for key, value in rows})
        except (sqlite3.DatabaseError, ValueError, TypeError) as exc:
            # A file damaged past its first page opens, and fails here ("database disk image is malformed"); a
            # row that is not this cache's JSON fails here too.
            raise self._unusable(exc) from None
        return found

    def put_many(self, answers: dict[str, NextTokenLogprobs]) -> None:
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT OR REPLACE INTO answers (key, logprobs) VALUES (?, ?)",
                    [(key, json.dumps(value)) for key, value in answers.items()],
                )
        except sqlite3.OperationalError as exc:
            # A full disk or a folder made read-only: the same fault as any other file the run writes.
            raise OSError(errno.EIO, str(exc), str(self.path)) from None
        except sqlite3.DatabaseError as exc:  # a damaged file
            raise self._unusable(exc) from None

    def close(self) -> None:
        self._db.close()
