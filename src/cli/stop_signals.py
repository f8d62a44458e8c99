"""Stop a search between iterations on Ctrl-C or SIGTERM (what a preempted cluster job receives).

Interrupting a model call midway is unsafe on the embedded route (llama.cpp is still using its buffers)
and would leave a half-finished iteration; so the first signal only asks the search to stop after the
iteration it is in. A wait between retries (or for a rate limit) has nothing to finish, so it ends within
a second (core/interrupts.py) and the run stops at its last checkpoint. A second Ctrl-C stops at once.
"""
from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Optional

from core.interrupts import ask_to_stop, clear_stop


class SearchStopped(Exception):
    def __init__(self, signal_number: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signal_number).name}")
        self.signal_number = signal_number

    @property
    def exit_code(self) -> int:
        return 128 + self.signal_number


class GracefulStop:
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal_number: Optional[int] = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "GracefulStop":
        clear_stop()
        for number in self.SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        clear_stop()

    def _handle(self, number: int, frame: Optional[FrameType]) -> None:
        if self.signal_number is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_number = number
        ask_to_stop()
        print(f"\n{signal.Signals(number).name}: stopping after this iteration (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    def stopped(self) -> SearchStopped:
        """What ends the run once a wait was cut short by the signal this caught."""
        return SearchStopped(self.signal_number or signal.SIGINT)

    def check(self) -> None:
        """Raise SearchStopped if a stop was asked for."""
        if self.signal_number is not None:
            raise SearchStopped(self.signal_number)
