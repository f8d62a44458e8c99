"""How a failing request is asked again: jittered exponential backoff, each wait capped, the whole run of
failures bounded by a time budget (and a count, if one is set), a note on stderr while it lasts, and any
wait cut short by Ctrl-C or SIGTERM.

A server may ask for a wait itself (a 429's Retry-After or a quota's reset time): that wait is announced with
its length and reason, and taken as asked; one longer than the budget left stops at once instead.
Both server routes use this, so they agree on what "bounded" means; only the settings' names differ.
"""
from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional, TypeVar

from core.interrupts import sleep_unless_stopped
from core.llm_api.faults import EndpointDown, ServerFault

NOTE_EVERY_SECONDS = 30.0
# A 429 that names no wait: ask again after this long.
DEFAULT_RATE_LIMIT_WAIT_SECONDS = 1.0
# An internal server error (HTTP 500) this many times in a row on one request: time to check whether it is the
# server or the request. 502/503/504 say "overloaded" or "a gateway's trouble", never "this request": only retried.
SERVER_ERRORS_BEFORE_CHECKING = 2
INTERNAL_SERVER_ERROR = 500
T = TypeVar("T")
_last_pause_note: dict[str, float] = {}


@dataclass(frozen=True)
class RetryPolicy:
    """One route's retry settings (its defaults are in core/llm_api/settings.py; core/llm_api/route_settings.py
    builds the policy of each route from them)."""

    settings_prefix: str  # "VLLM" or "API": which settings the messages tell the user to raise
    backoff_seconds: float  # the first wait; each later one doubles, with jitter
    backoff_max_seconds: float  # no wait is longer
    retry_seconds: float  # the time budget of one run of failures
    max_retries: Optional[int]  # None: only the time budget bounds the retries

    def delay(self, failures: int, jitter: random.Random) -> float:
        """The wait after ``failures`` + 1 failures in a row, never above ``backoff_max_seconds``."""
        doubled = self.backoff_seconds * (2 ** min(failures, 30))
        return min(self.backoff_max_seconds, doubled * (0.5 + jitter.random()))


class WaitPastBudget(ServerFault):
    """The server asked for a wait longer than the retry budget has left."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "rate-limit wait past the budget")


class RetryWait:
    """One request's run of consecutive failures, from its first failure to a success or giving up."""

    def __init__(self, policy: RetryPolicy, where: str, jitter: random.Random) -> None:
        self.policy = policy
        self.where = where  # shown in messages: a URL with no credentials in it
        self.failures = 0
        self._jitter = jitter
        self._first_failure: Optional[float] = None
        self._last_note = 0.0

    def _spent(self) -> float:
        now = time.monotonic()
        if self._first_failure is None:
            self._first_failure = now
        return now - self._first_failure

    async def after_failure(self, last: str) -> None:
        """Wait before the next try; raise EndpointDown once the budget is spent, WaitInterrupted on a stop."""
        policy, prefix = self.policy, self.policy.settings_prefix
        waited = self._spent()
        tries = self.failures + 1
        if policy.max_retries is not None and self.failures >= policy.max_retries:
            raise EndpointDown(f"{self.where} failed {tries} times in a row; last: {last}. If the server is restarting, "
                               f"raise {prefix}_MAX_RETRIES or {prefix}_BACKOFF_SECONDS")
        if waited >= policy.retry_seconds:
            raise EndpointDown(f"{self.where} failed {tries} times over {waited:.0f} s; last: {last}. If the server is "
                               f"restarting, raise {prefix}_RETRY_SECONDS")
        now = time.monotonic()
        if self.failures == 0 or now - self._last_note >= NOTE_EVERY_SECONDS:
            self._last_note = now
            print(f"note: {self.where} is not answering ({last}); retrying for up to "
                  f"{policy.retry_seconds - waited:.0f} s more ({prefix}_RETRY_SECONDS)", file=sys.stderr, flush=True)
        await sleep_unless_stopped(min(policy.delay(self.failures, self._jitter), policy.retry_seconds - waited))
        self.failures += 1

    async def as_asked(self, seconds: float, reason: str) -> None:
        """Wait the ``seconds`` a server asked for (``reason`` quotes its header), announced on stderr. A wait
        past the budget left raises WaitPastBudget at once; rate-limit waits don't count as retries."""
        left = self.policy.retry_seconds - self._spent()
        if seconds > left:
            raise WaitPastBudget(
                f"{self.where} is rate limited and asks us to wait {describe_seconds(seconds)} ({reason}), more than the "
                f"{max(0.0, left):.0f} s left of {self.policy.settings_prefix}_RETRY_SECONDS: resume the run with --resume once "
                f"the quota has reset, or raise {self.policy.settings_prefix}_RETRY_SECONDS")
        now = time.monotonic()
        if now - _last_pause_note.get(self.where, -NOTE_EVERY_SECONDS) >= NOTE_EVERY_SECONDS or seconds >= NOTE_EVERY_SECONDS:
            _last_pause_note[self.where] = now  # concurrent requests share one pause: say it once
            print(f"note: {self.where} is rate limited; pausing {describe_seconds(seconds)} as it asks ({reason})",
                  file=sys.stderr, flush=True)
        await sleep_unless_stopped(seconds)


async def with_retries(attempt: Callable[[], Awaitable[T]], wait: RetryWait, *, on_retry: Callable[[], None] = lambda: None,
                       after_repeated_server_errors: Optional[Callable[[str], Awaitable[Optional[T]]]] = None) -> T:
    """``attempt()`` until it succeeds. A transient fault is waited out as ``wait`` says (a rate limit for as long as
    the server asks); any other fault raises at once. After SERVER_ERRORS_BEFORE_CHECKING HTTP 500s in a row,
    ``after_repeated_server_errors(last)`` is asked once: it may return the answer, raise what it found, or return
    None to go on retrying."""
    server_errors, checked = 0, False
    while True:
        try:
            return await attempt()
        except ServerFault as exc:
            if not exc.retryable:
                raise
            if exc.fault.name == "rate limited":
                hint, said = getattr(exc, "wait_hint", None), getattr(exc, "wait_reason", "")
                reason = f"HTTP {getattr(exc, 'status', 429)}, " + (said if hint is not None else "no wait named")
                await wait.as_asked(DEFAULT_RATE_LIMIT_WAIT_SECONDS if hint is None else hint, reason)
                continue
            server_errors = server_errors + 1 if getattr(exc, "status", None) == INTERNAL_SERVER_ERROR else 0
            last = str(exc)
        if after_repeated_server_errors is not None and server_errors >= SERVER_ERRORS_BEFORE_CHECKING and not checked:
            checked = True
            found = await after_repeated_server_errors(last)
            if found is not None:
                return found
        await wait.after_failure(last)
        on_retry()


def describe_seconds(seconds: float) -> str:
    """A wait in words a person reads at a glance: "0.5 s", "12 s", "6 min", "3.2 h", "57 years"."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    if seconds < 2 * 365 * 86400:
        return f"{seconds / 86400:.0f} days"
    return f"{seconds / (365.25 * 86400):.0f} years"
