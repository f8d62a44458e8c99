"""Client-side rate limits for hosted APIs: a request bucket and a prompt-token bucket.

Both are aiolimiter leaky buckets that hold a tenth of a second's worth (at least one request), so no
window of time sees more than its share plus that small burst; RATE_LIMIT_FRACTION keeps us under the limit.
The provider's ``x-ratelimit-*`` headers lower the limits or pause us until a reset (read in every form
core/llm_api/wait_headers.py knows), and a 429's wait pauses every request. A pause is announced on stderr,
ends on Ctrl-C/SIGTERM, and one longer than ``max_pause_seconds`` stops the run at once instead.
"""
from __future__ import annotations

import sys
import time
from typing import Mapping, Optional

from aiolimiter import AsyncLimiter

from core.interrupts import sleep_unless_stopped
from core.llm_api.retry_waits import WaitPastBudget, describe_seconds
from core.llm_api.wait_headers import parse_reset

RATE_LIMIT_FRACTION = 0.98
BURST_SECONDS = 0.1


class _Bucket:
    def __init__(self, per_minute: float) -> None:
        self.per_minute = per_minute
        per_second = per_minute * RATE_LIMIT_FRACTION / 60.0
        window = max(BURST_SECONDS, 1.0 / per_second)  # at least one whole unit fits the bucket
        self.limiter = AsyncLimiter(per_second * window, window)

    async def acquire(self, amount: float) -> None:
        # aiolimiter refuses an amount above its capacity; take a large one in capacity-sized pieces.
        capacity = self.limiter.max_rate
        while amount > capacity:
            await self.limiter.acquire(capacity)
            amount -= capacity
        if amount > 0:
            await self.limiter.acquire(amount)


class RateLimiter:
    def __init__(self, requests_per_minute: Optional[float], tokens_per_minute: Optional[float],
                 max_pause_seconds: float) -> None:
        self._requests = _Bucket(requests_per_minute) if requests_per_minute else None
        self._tokens = _Bucket(tokens_per_minute) if tokens_per_minute else None
        self._paused_until = 0.0
        self.max_pause_seconds = max_pause_seconds  # API_RETRY_SECONDS: a longer pause stops the run instead
        self.waited_for_pauses = 0.0

    @property
    def requests_per_minute(self) -> Optional[float]:
        return self._requests.per_minute if self._requests else None

    @property
    def tokens_per_minute(self) -> Optional[float]:
        return self._tokens.per_minute if self._tokens else None

    async def acquire(self, prompt_tokens: int) -> None:
        """Wait until one more request of about ``prompt_tokens`` tokens fits the limits."""
        while (delay := self._paused_until - time.monotonic()) > 0:
            self.waited_for_pauses += delay
            await sleep_unless_stopped(delay)
        if self._requests:
            await self._requests.acquire(1)
        if self._tokens:
            await self._tokens.acquire(prompt_tokens)

    async def charge_tokens(self, extra_tokens: int) -> None:
        """Count tokens a request used beyond what was acquired for it."""
        if self._tokens and extra_tokens > 0:
            await self._tokens.acquire(extra_tokens)

    def pause(self, seconds: float, reason: str = "", announce: bool = True) -> None:
        """Hold every request for ``seconds`` (a 429's wait, or a quota used up until its reset). A pause past
        ``max_pause_seconds`` raises WaitPastBudget; a new one that outlasts the current is announced."""
        if seconds > self.max_pause_seconds:
            raise WaitPastBudget(f"the provider asks us to wait {describe_seconds(seconds)} until its quota resets ({reason}), "
                                 f"more than API_RETRY_SECONDS ({self.max_pause_seconds:.0f} s): resume the run with --resume "
                                 "once it has reset, or raise API_RETRY_SECONDS")
        until = time.monotonic() + max(0.0, seconds)
        if announce and until > self._paused_until + 1.0:
            print(f"note: pausing every request for {describe_seconds(seconds)} ({reason})", file=sys.stderr, flush=True)
        self._paused_until = max(self._paused_until, until)

    def update_from_headers(self, headers: Mapping[str, str]) -> None:
        """Follow the provider's own view: lower a limit it reports as lower, and wait out an empty quota."""
        lowered = {k.lower(): v for k, v in headers.items()}
        for kind in ("requests", "tokens"):
            bucket = self._requests if kind == "requests" else self._tokens
            limit = _number(lowered.get(f"x-ratelimit-limit-{kind}"))
            if limit and (bucket is None or limit < bucket.per_minute):
                if kind == "requests":
                    self._requests = _Bucket(limit)
                else:
                    self._tokens = _Bucket(limit)
            remaining = _number(lowered.get(f"x-ratelimit-remaining-{kind}"))
            reset_header = f"x-ratelimit-reset-{kind}"
            reset = parse_reset(lowered.get(reset_header, ""))
            if remaining is not None and remaining <= 0 and reset:
                self.pause(reset, f"x-ratelimit-remaining-{kind}: 0, {reset_header}: {lowered[reset_header]}")


def _number(value: Optional[str]) -> Optional[float]:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
