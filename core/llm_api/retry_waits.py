"""How a failing request is asked again: jittered exponential backoff, each wait capped, the whole run of
failures bounded by a time budget (and a count, if one is set), a note on stderr while it lasts, and any
wait cut short by Ctrl-C or SIGTERM.

Both server routes use it, so they agree on what "bounded" means; only the settings' names differ.
"""
from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass
from typing import Optional

from core.interrupts import sleep_unless_stopped
from core.llm_api.http_errors import EndpointDown

NOTE_EVERY_SECONDS = 30.0


@dataclass(frozen=True)
class RetryPolicy:
    settings_prefix: str  # "VLLM" or "API": which settings the messages tell the user to raise
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 10.0
    retry_seconds: float = 600.0
    max_retries: Optional[int] = None  # None: only the time budget bounds the retries

    def delay(self, failures: int, jitter: random.Random) -> float:
        """The wait after ``failures`` + 1 failures in a row, never above ``backoff_max_seconds``."""
        doubled = self.backoff_seconds * (2 ** min(failures, 30))
        return min(self.backoff_max_seconds, doubled * (0.5 + jitter.random()))


class RetryWait:
    """One request's run of consecutive failures, from its first failure to a success or giving up."""

    def __init__(self, policy: RetryPolicy, where: str, jitter: random.Random) -> None:
        self.policy = policy
        self.where = where  # shown in messages: a URL with no credentials in it
        self.failures = 0
        self._jitter = jitter
        self._first_failure: Optional[float] = None
        self._last_note = 0.0

    async def after_failure(self, last: str) -> None:
        """Wait before the next try; raise EndpointDown once the budget is spent, WaitInterrupted on a stop."""
        policy, prefix = self.policy, self.policy.settings_prefix
        now = time.monotonic()
        if self._first_failure is None:
            self._first_failure = now
        waited = now - self._first_failure
        tries = self.failures + 1
        if policy.max_retries is not None and self.failures >= policy.max_retries:
            raise EndpointDown(f"{self.where} failed {tries} times in a row; last: {last}. If the server is restarting, "
                               f"raise {prefix}_MAX_RETRIES or {prefix}_BACKOFF_SECONDS")
        if waited >= policy.retry_seconds:
            raise EndpointDown(f"{self.where} failed {tries} times over {waited:.0f} s; last: {last}. If the server is "
                               f"restarting, raise {prefix}_RETRY_SECONDS")
        if self.failures == 0 or now - self._last_note >= NOTE_EVERY_SECONDS:
            self._last_note = now
            print(f"note: {self.where} is not answering ({last}); retrying for up to "
                  f"{policy.retry_seconds - waited:.0f} s more ({prefix}_RETRY_SECONDS)", file=sys.stderr, flush=True)
        await sleep_unless_stopped(min(policy.delay(self.failures, self._jitter), policy.retry_seconds - waited))
        self.failures += 1
