"""How long a server asks us to wait, read from its rate-limit headers in every form servers send.

- ``Retry-After`` (RFC 9110 §10.2.3): delay-seconds, or an HTTP-date in any of the three forms HTTP allows
  (IMF-fixdate, RFC 850, asctime).
- ``retry-after-ms``: milliseconds (OpenAI's and Azure's APIs).
- ``x-ratelimit-reset-requests`` / ``-tokens`` / ``x-ratelimit-reset``, and ``anthropic-ratelimit-*-reset``: a
  duration (``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s``), plain seconds, an absolute Unix time in seconds or
  milliseconds (a value above about 10^9 can only be a time, not a wait), or an RFC 3339 timestamp.
Every function returns seconds to wait from ``now`` (never negative), or None for a value it can't read.
"""
from __future__ import annotations

import email.utils
import re
import time
from datetime import datetime, timezone
from typing import Mapping, Optional

_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?$")
# Seconds since 1970 pass 10^9 in 2001; no server asks for a wait of 30 years, so a larger number is a time.
UNIX_TIME_ABOVE = 1e9
UNIX_MILLISECONDS_ABOVE = 1e12


def _until(moment: datetime, now: float) -> float:
    if moment.tzinfo is None:  # asctime dates carry no zone; HTTP dates are always UTC
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, moment.timestamp() - now)


def _number_or_time(value: float, now: float) -> float:
    if value > UNIX_MILLISECONDS_ABOVE:
        return max(0.0, value / 1000.0 - now)
    if value > UNIX_TIME_ABOVE:
        return max(0.0, value - now)
    return max(0.0, value)


def _duration(text: str) -> Optional[float]:
    found = _DURATION.match(text)
    if not found or not any(found.groups()):
        return None
    hours, minutes, seconds, milliseconds = (float(part) if part else 0.0 for part in found.groups())
    return hours * 3600 + minutes * 60 + seconds + milliseconds / 1000


def _timestamp(text: str, now: float) -> Optional[float]:
    try:
        return _until(datetime.fromisoformat(text.replace("Z", "+00:00")), now)
    except ValueError:
        pass
    try:
        return _until(email.utils.parsedate_to_datetime(text), now)
    except (TypeError, ValueError, IndexError):
        return None


def parse_retry_after(value: str, now: Optional[float] = None) -> Optional[float]:
    """Seconds a ``Retry-After`` value asks for: delay-seconds or an HTTP-date."""
    now = time.time() if now is None else now
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        return _timestamp(text, now)
    return _number_or_time(seconds, now) if seconds >= 0 else None


def parse_reset(value: str, now: Optional[float] = None) -> Optional[float]:
    """Seconds until a quota resets, from an ``x-ratelimit-reset-*`` style value in any common form."""
    now = time.time() if now is None else now
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        found = _duration(text)
        return found if found is not None else _timestamp(text, now)
    return _number_or_time(seconds, now) if seconds >= 0 else None


RESET_HEADERS = ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens", "x-ratelimit-reset",
                 "anthropic-ratelimit-requests-reset", "anthropic-ratelimit-tokens-reset")


def requested_wait(headers: Mapping[str, str], now: Optional[float] = None) -> Optional[tuple[float, str]]:
    """(seconds, the header that said so) for a 429 answer: Retry-After first, then retry-after-ms, then the
    latest of the reset headers; None when no header says."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if "retry-after" in lowered:
        seconds = parse_retry_after(lowered["retry-after"], now)
        if seconds is not None:
            return seconds, f"Retry-After: {lowered['retry-after']}"
    if "retry-after-ms" in lowered:
        try:
            return max(0.0, float(lowered["retry-after-ms"]) / 1000.0), f"retry-after-ms: {lowered['retry-after-ms']}"
        except ValueError:
            pass
    resets = [(parse_reset(lowered[name], now), name) for name in RESET_HEADERS if name in lowered]
    resets = [(seconds, name) for seconds, name in resets if seconds is not None]
    if resets:
        seconds, name = max(resets)
        return seconds, f"{name}: {lowered[name]}"
    return None
