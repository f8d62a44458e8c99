"""Stop a search between iterations on Ctrl-C or SIGTERM (what a preempted cluster job receives).

Interrupting a model call midway is unsafe on the embedded route (llama.cpp is still using its buffers)
and would leave a half-finished iteration; so the first signal only asks the search to stop after the
iteration it is in. A second Ctrl-C stops at once.
"""
from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Optional


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
        for number in self.SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame: Optional[FrameType]) -> None:
        if self.signal_number is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_number = number
        print(f"\n{signal.Signals(number).name}: stopping after this iteration (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    def check(self) -> None:
        """Raise SearchStopped if a stop was asked for."""
        if self.signal_number is not None:
            raise SearchStopped(self.signal_number)
