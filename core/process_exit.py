"""Ending the process while llama.cpp may still be computing a batch that an interrupt abandoned.

A second Ctrl-C stops a run at once, but the embedded model's batch goes on in llama.cpp's own threads: no
call cancels it. Two things must then not happen before that batch ends: freeing the model (the embedded
route keeps it, ``keep_until_done``), and the C++ static destructors that ``exit()`` runs, which tear down
llama.cpp's globals under its compute threads (SIGSEGV, exit 139, once in most tries). ``exit_process`` ends
such a process with ``os._exit`` after flushing stdio: the kernel stops llama.cpp's threads, and no destructor
runs. The run's files are written and closed before, and the kernel drops its flock. A process that exits
some other way waits for the batch instead (an atexit hook), then frees the model normally.
"""
from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn

_unfinished: list[tuple[object, threading.Event]] = []
_lock = threading.Lock()


def keep_until_done(owner: object, done: threading.Event) -> None:
    """Hold a reference to ``owner`` (a llama.cpp server) until ``done`` is set, and at the latest until exit."""
    with _lock:
        if not _unfinished:
            atexit.register(_wait_then_release)
        _unfinished.append((owner, done))


def native_work_running() -> bool:
    """Whether an abandoned batch is still being computed."""
    with _lock:
        return any(not done.is_set() for _, done in _unfinished)


def exit_process(code: int) -> NoReturn:
    """``sys.exit(code)``, or, while an abandoned batch is still computing, end at once without running
    llama.cpp's destructors under it."""
    if native_work_running():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass  # a closed or broken pipe: nothing more can be said there
        os._exit(code)
    sys.exit(code)


def _wait_then_release() -> None:
    with _lock:
        pending = list(_unfinished)
        _unfinished.clear()
    for _, done in pending:
        done.wait()
    pending.clear()  # the last references: each server is freed here, idle
