"""A stop asked for by Ctrl-C or SIGTERM, seen by the waits deep inside the model routes.

The run's signal handler (src/cli/stop_signals.py) only records the request, so that an iteration in
progress can finish. A wait between retries, or for a rate-limit pause, has nothing in progress to finish: it
ends within ``POLL_SECONDS`` by raising WaitInterrupted, and the run stops with its last checkpoint.
"""
from __future__ import annotations

import asyncio
import threading
import time

POLL_SECONDS = 0.2
_asked = threading.Event()


class WaitInterrupted(Exception):
    """A wait was cut short because a stop was asked for."""


def ask_to_stop() -> None:
    _asked.set()


def clear_stop() -> None:
    _asked.clear()


async def sleep_unless_stopped(seconds: float) -> None:
    """``asyncio.sleep(seconds)``, unless a stop is (or gets) asked for: then raise WaitInterrupted."""
    deadline = time.monotonic() + max(0.0, seconds)
    while True:
        if _asked.is_set():
            raise WaitInterrupted("a stop was asked for while waiting to retry")
        left = deadline - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(POLL_SECONDS, left))
