"""Client-side rate limits for hosted APIs: a request bucket and a prompt-token bucket.

Both are aiolimiter leaky buckets that hold a tenth of a second's worth (at least one request), so no
window of time sees more than its share plus that small burst; RATE_LIMIT_FRACTION keeps us under the limit. The provider's ``x-ratelimit-*``
headers lower the limits or pause us until a reset, and a 429's ``Retry-After`` pauses every request.
"""
from __future__ import annotations

import re
import time
from typing import Mapping, Optional

from aiolimiter import AsyncLimiter

from core.interrupts import sleep_unless_stopped

RATE_LIMIT_FRACTION = 0.98
BURST_SECONDS = 0.1
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_reset(value: str) -> Optional[float]:
    """Seconds in a reset header: "20ms", "1s", "6m0s", or a plain number of seconds."""
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        parts = _DURATION_PART.findall(value)
        return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts) if parts else None


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
    def __init__(self, requests_per_minute: Optional[float], tokens_per_minute: Optional[float]) -> None:
        self._requests = _Bucket(requests_per_minute) if requests_per_minute else None
        self._tokens = _Bucket(tokens_per_minute) if tokens_per_minute else None
        self._paused_until = 0.0
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

    def pause(self, seconds: float) -> None:
        """Hold every request for ``seconds`` (a 429's Retry-After, or a quota used up until its reset)."""
        self._paused_until = max(self._paused_until, time.monotonic() + max(0.0, seconds))

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
            reset = parse_reset(lowered.get(f"x-ratelimit-reset-{kind}", ""))
            if remaining is not None and remaining <= 0 and reset:
                self.pause(reset)


def _number(value: Optional[str]) -> Optional[float]:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
