"""Waits a server asks for in its rate-limit headers: every form is read, every pause is capped by the time budget,
announced with its length and reason, and ended by Ctrl-C/SIGTERM."""
import asyncio
import random
import threading
import time
from datetime import datetime, timezone
from email.utils import format_datetime

import pytest

from core.interrupts import WaitInterrupted, ask_to_stop, clear_stop
from core.llm_api.base_llm import ScoringError
from core.llm_api.llm import ModelAPI
from core.llm_api.rate_limits import RateLimiter
from core.llm_api.retry_waits import RetryPolicy, RetryWait, WaitPastBudget
from core.llm_api.settings import Settings
from core.llm_api.wait_headers import parse_reset, parse_retry_after, requested_wait

NOW = 1_795_976_000.0  # a fixed "now" (2026-11-29), so that absolute times have a known distance
MODEL = "SmolLM2-135M-Instruct.Q4_1"


@pytest.mark.parametrize("value, seconds", [
    ("120", 120.0),                                         # delay-seconds
    ("1.5", 1.5),                                           # some servers send a fraction
    (format_datetime(datetime.fromtimestamp(NOW + 30, timezone.utc), usegmt=True), 30.0),  # IMF-fixdate
    (datetime.fromtimestamp(NOW + 45, timezone.utc).strftime("%A, %d-%b-%y %H:%M:%S GMT"), 45.0),  # RFC 850
    (datetime.fromtimestamp(NOW + 60, timezone.utc).strftime("%a %b %d %H:%M:%S %Y").replace(" 0", "  "), 60.0),  # asctime
    (format_datetime(datetime.fromtimestamp(NOW - 60, timezone.utc), usegmt=True), 0.0),  # a date already past
])
def test_retry_after_in_every_form_http_defines(value, seconds):
    assert parse_retry_after(value, NOW) == pytest.approx(seconds, abs=1.0)


@pytest.mark.parametrize("value, seconds", [
    ("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1.5s", 1.5), ("2m59.56s", 179.56), ("1h2m3s", 3723.0),  # durations
    ("7", 7.0), ("0.25", 0.25),                                                                              # seconds
    ("1795976228", 228.0),                     # an absolute Unix time: 228 s from now, not 57 years
    ("1795976228000", 228.0),                  # the same in milliseconds
    ("2026-11-29T21:36:40Z", None),            # RFC 3339 (Anthropic): checked against its own clock below
    ("soon", None),
])
def test_reset_headers_in_every_common_form(value, seconds):
    if value.startswith("2026"):
        moment = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        assert parse_reset(value, moment - 90) == pytest.approx(90.0)
        return
    assert parse_reset(value, NOW) == (None if seconds is None else pytest.approx(seconds))


def test_the_header_that_names_the_wait_is_chosen_and_quoted():
    assert requested_wait({"Retry-After": "3"}, NOW) == (3.0, "Retry-After: 3")
    assert requested_wait({"retry-after-ms": "1500"}, NOW) == (1.5, "retry-after-ms: 1500")
    assert requested_wait({"x-ratelimit-reset-requests": "2s", "x-ratelimit-reset-tokens": "6m0s"}, NOW) == \
        (360.0, "x-ratelimit-reset-tokens: 6m0s")
    assert requested_wait({"content-type": "application/json"}, NOW) is None


def test_a_429_pause_is_announced_and_taken_from_the_header(forwarding, capsys):
    server = forwarding(rate_limit_first=1, rate_limit_headers={"x-ratelimit-reset-requests": "1.5s"})
    started = time.monotonic()
    with ModelAPI(MODEL, settings=Settings(llama_api_base=server.url)) as api:
        assert len(api.next_token_logprobs(["1, 2, 3,"])) == 1
    assert time.monotonic() - started >= 1.5
    first, retried = server.completions()
    assert retried.at - first.at >= 1.5  # the wait the header named, not the 1 s default
    assert "is rate limited; pausing 1.5 s as it asks (HTTP 429, x-ratelimit-reset-requests: 1.5s)" in capsys.readouterr().err


def test_a_reset_past_the_budget_stops_at_once(forwarding):
    # 1795976228 read as seconds would be a pause of 57 years without a word; as a Unix time it is minutes away,
    # still past a 60 s budget: stop at once, saying when, after one request.
    reset = str(int(time.time()) + 600)
    server = forwarding(rate_limit_first=100, rate_limit_headers={"x-ratelimit-reset-tokens": reset})
    started = time.monotonic()
    with ModelAPI(MODEL, settings=Settings(llama_api_base=server.url, api_retry_seconds=60)) as api:
        with pytest.raises(ScoringError, match=r"asks us to wait (9|10) min .*resume the run with --resume"):
            api.next_token_logprobs(["1, 2, 3,"])
    assert time.monotonic() - started < 30 and len(server.completions()) == 1


def test_an_empty_quota_past_the_budget_stops_and_a_short_one_is_announced(capsys):
    limiter = RateLimiter(None, None, max_pause_seconds=60)
    with pytest.raises(WaitPastBudget, match="asks us to wait 2.0 h until its quota resets"):
        limiter.update_from_headers({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "2h0m0s"})
    limiter.update_from_headers({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20s"})
    assert "pausing every request for 20 s (x-ratelimit-remaining-requests: 0, x-ratelimit-reset-requests: 20s)" in capsys.readouterr().err


def test_a_header_pause_ends_on_a_stop_and_the_bound_is_time_not_a_count():
    wait = RetryWait(RetryPolicy("API", backoff_seconds=1.0, backoff_max_seconds=30.0, retry_seconds=300, max_retries=None), "http://x", random.Random(0))
    threading.Timer(0.3, ask_to_stop).start()
    started = time.monotonic()
    try:
        with pytest.raises(WaitInterrupted):
            asyncio.run(wait.as_asked(120.0, "Retry-After: 120"))
    finally:
        clear_stop()
    assert time.monotonic() - started < 2.0
    # Many short waits fit the budget: none of them counts as a retry.
    quick = RetryWait(RetryPolicy("API", backoff_seconds=1.0, backoff_max_seconds=30.0, retry_seconds=5, max_retries=1), "http://x", random.Random(0))
    for _ in range(60):
        asyncio.run(quick.as_asked(0.0, "Retry-After: 0"))
    assert quick.failures == 0
