"""Fault injection for the resume tests: SIGKILL this process, or fail a write, at a named point.

``ICM_CRASH_AT=checkpoint-write:3`` kills the run at its 3rd write of its state (run.json, then each
checkpoint), once the new content is in a temporary file and before it is renamed into place; the points are
``batch`` (while the model is computing), ``checkpoint-write`` and ``after-log`` (a log line written, its
checkpoint not yet). A third part names an errno instead of a kill: ``checkpoint-write:3:ENOSPC`` makes that
write fail as a full disk would. Unset, as in every real run, it does nothing.

The write point is not inside the write: ICM.py injects it into the run's RunDirectory (``before_rename``) only
when ``armed()``, so a real run's writes carry no hook at all.
"""
from __future__ import annotations

import errno
import os
import signal
from collections import Counter

_seen: Counter = Counter()


def armed() -> bool:
    """Whether ICM_CRASH_AT names a crash point (only in the resume tests)."""
    return bool(os.environ.get("ICM_CRASH_AT"))


def maybe_crash(point: str) -> None:
    target = os.environ.get("ICM_CRASH_AT")
    if not target:
        return
    name, _, rest = target.partition(":")
    count, _, error_name = rest.partition(":")
    if name != point:
        return
    _seen[point] += 1
    if _seen[point] != int(count or 1):
        return
    if error_name:
        code = getattr(errno, error_name)
        raise OSError(code, os.strerror(code))
    os.kill(os.getpid(), signal.SIGKILL)
