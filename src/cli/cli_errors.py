"""The promise every entry point makes: bad input gets one stderr line starting ``error: ``, exit code 2, no
traceback, and nothing half-written.

    def main(argv=None) -> int:
        return run_main(lambda: _main(build_parser().parse_args(argv)))

``UserError`` (core/errors.py) is the base class of every error the user can fix: a flag, a data file, the run
directory, a model route. ``run_main`` reports it, an ``OSError`` on a path, Ctrl-C (exit 130)
and SIGTERM (exit 143). SIGTERM is turned into an exception for as long as ``run_main`` runs, so that a write
in progress is cleaned up as it is on Ctrl-C (``run_directory.write_atomically`` removes its temporary file on any
exception; the default SIGTERM action would kill the process without running it).
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType
from typing import Callable, NoReturn, Optional

from core.errors import UserError
from core.llm_api.redaction import scrub_credentials

__all__ = ["OneLineParser", "Terminated", "UsageError", "UserError", "network_error_line", "os_error_line", "run_main"]


class UsageError(UserError):
    """Flags that don't go together, or don't fit the run (ICM.py's)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C, so that cleanup runs on the way out (exit code 143)."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors (unknown flag, a value of the wrong type, a bad choice) are a UserError, so
    they end as one ``error:`` line like every other bad input, not argparse's usage block and message."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see {self.prog} --help)")


def os_error_line(exc: OSError) -> str:
    """What to say when the system refuses a path (permissions, a full disk, a missing folder)."""
    where = f" ({exc.filename})" if exc.filename else ""
    if isinstance(exc, FileExistsError):
        return f"{exc.strerror or exc}{where}: a file is where a folder is needed; choose another path, or move the file"
    if isinstance(exc, IsADirectoryError):
        return f"{exc.strerror or exc}{where}: a folder is where a file is needed; name a file, not a folder"
    return f"{exc.strerror or exc}{where}: check that the path exists, and that this user may read and write it"


def network_error_line(exc: BaseException) -> Optional[str]:
    """The one line for a network error that escaped a model route (an aiohttp error it did not expect), or None
    if ``exc`` is not one."""
    aiohttp = sys.modules.get("aiohttp")  # not imported: then no aiohttp error can have been raised
    if aiohttp is None or not isinstance(exc, aiohttp.ClientError):
        return None
    return (f"the connection to the model server failed ({type(exc).__name__}: {exc}); check that the server is up "
            "and answering, then run the same command again")


def _raise_terminated(number: int, frame: Optional[FrameType]) -> None:
    raise Terminated(f"stopped by {signal.Signals(number).name}")


def run_main(body: Callable[[], int]) -> int:
    """Run an entry point's body and turn what ends it into an exit code: its own, 2 after one ``error:`` line,
    130 on Ctrl-C, 143 on SIGTERM. A signal handler can only be set in the main thread; elsewhere SIGTERM keeps
    its default action."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        return body()
    except Terminated:
        print("stopped by SIGTERM", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("stopped by Ctrl-C", file=sys.stderr)
        return 128 + signal.SIGINT
    except UserError as exc:
        print(f"error: {scrub_credentials(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {scrub_credentials(os_error_line(exc))}", file=sys.stderr)
        return 2
    except Exception as exc:
        line = network_error_line(exc)
        if line is None:
            raise
        print(f"error: {scrub_credentials(line)}", file=sys.stderr)
        return 2
    finally:
        if in_main_thread:
            # None: the handler before was set outside Python; the default action is the nearest to it.
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
