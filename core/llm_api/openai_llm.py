"""The external route: a hosted OpenAI-compatible completions API with logprobs, rate limited.

Hosted APIs often refuse list prompts, so each prompt is its own request, at most ``concurrency`` at once,
each admitted by the RateLimiter. A 429 pauses every request for as long as the provider asks (every header
form core/llm_api/wait_headers.py reads), announced and within API_RETRY_SECONDS. Other faults follow the table
in core/llm_api/faults.py, under the retry policy the vLLM route uses (core/llm_api/retry_waits.py).
"""
from __future__ import annotations

import asyncio
import json
import random
from typing import Any, Optional, Sequence

import aiohttp

from core.llm_api.base_llm import RouteStats, ScoringRoute
from core.llm_api.completions_request import MAX_TOKENS, CompletionRequest
from core.llm_api.faults import (
    HTTPStatusError,
    PromptsRejected,
    PromptTooLong,
    ServerFault,
    classify_status,
    explain_status,
    server_message,
)
from core.llm_api.http_session import bearer_session, gather_limited
from core.llm_api.logprobs import MalformedResponse, NextTokenLogprobs, ServerSaidError, parse_completion_logprobs
from core.llm_api.rate_limits import RateLimiter
from core.llm_api.redaction import redact, redact_url
from core.llm_api.retry_waits import DEFAULT_RATE_LIMIT_WAIT_SECONDS, RetryWait, with_retries
from core.llm_api.route_settings import ExternalRouteSettings
from core.llm_api.server_probe import EXACT_LOGPROBS_PROBE
from core.llm_api.wait_headers import requested_wait

CHARS_PER_TOKEN = 4  # a cautious guess for the token bucket until the answer's usage says
SERVER_FIX = "or use a model with a longer context"


def _usage_count(usage: Any, name: str, at_least: int) -> Optional[int]:
    """``usage[name]`` when the answer holds it as a whole number of at least ``at_least``; else None."""
    value = usage.get(name) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= at_least else None


class ExternalAPIClient(ScoringRoute):
    name = "external"

    def __init__(self, settings: ExternalRouteSettings, seed: int = 0) -> None:
        """Builds this route's RateLimiter from ``settings`` (the only route that is throttled). ``seed`` seeds the
        retries' jitter. No network I/O here."""
        self.base_url = settings.base_url.rstrip("/")
        self.url = self.base_url + "/v1/completions"
        self.shown_url = redact_url(self.url)
        self.model = settings.model
        self.top_k = settings.top_k
        self.request = CompletionRequest(settings.model, settings.top_k)  # no fields beyond OpenAI's: hosted APIs refuse unknown ones
        # A provider's pause longer than the retry budget stops the run instead.
        self.limiter = RateLimiter(settings.requests_per_minute, settings.tokens_per_minute, settings.retry.retry_seconds)
        self.retry_policy = settings.retry
        self.stats = RouteStats()
        self.retries = 0
        self.rate_limited = 0
        self._api_key = settings.api_key
        self._jitter = random.Random(seed)  # its own RNG: retries must not move the search's random stream
        self._concurrency = settings.concurrency
        self._http = bearer_session(settings.api_key, settings.timeout_seconds)

    async def _attempt(self, prompt: str) -> NextTokenLogprobs:
        """One request for one prompt, admitted by the rate limiter; its answer checked."""
        estimate = max(1, len(prompt) // CHARS_PER_TOKEN)
        await self.limiter.acquire(estimate)
        self.stats.requests += 1
        try:
            async with self._http.session.post(self.url, json=self.request.body(prompt)) as response:
                self.limiter.update_from_headers(response.headers)
                text = await response.text()
                status, headers = response.status, response.headers
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise ServerFault(f"connection lost or timed out ({type(exc).__name__})", "connection refused or dropped") from None
        if status != 200:
            self._raise_for_status(status, text, headers)
        try:
            answer = json.loads(text)
        except ValueError:
            raise ServerFault(f"answered 200 with an unusable body (not JSON, cut short?): {text[:100]!r}",
                              "body cut short or not JSON") from None
        try:
            [logprobs] = parse_completion_logprobs(answer, 1)
        except ServerSaidError as exc:
            self._raise_for_status(200, json.dumps({"error": {"message": exc.server_message}}), {})
            raise  # unreachable: _raise_for_status always raises
        except MalformedResponse as exc:
            raise ServerFault(redact(f"{self.shown_url}: unusable answer ({exc})", self._api_key), exc.fault) from None
        usage = answer.get("usage") if isinstance(answer, dict) else None
        used = _usage_count(usage, "prompt_tokens", at_least=1)
        if used is None:
            used = estimate
            self.stats.prompt_tokens_estimated += 1
        self.stats.prompt_tokens += used
        self.stats.computed_tokens += used
        generated = _usage_count(usage, "completion_tokens", at_least=0)
        if generated is None:
            generated = MAX_TOKENS
            self.stats.completion_tokens_assumed += 1
        self.stats.completion_tokens += generated
        await self.limiter.charge_tokens(used - estimate)
        return logprobs

    def _raise_for_status(self, status: int, text: str, headers: Any) -> None:
        said = redact(server_message(text), self._api_key)
        fault = classify_status(status, said)
        if fault == "rate limited":
            self.rate_limited += 1
            asked = requested_wait(headers)
            seconds, reason = asked if asked is not None else (DEFAULT_RATE_LIMIT_WAIT_SECONDS, "no wait named")
            # Every request waits, not only this one; with_retries announces the wait.
            self.limiter.pause(seconds, f"HTTP 429, {reason}", announce=False)
            raise HTTPStatusError(f"HTTP {status}", fault, status, said, seconds, reason)
        if fault in ("server error", "list prompts refused"):
            raise HTTPStatusError(f"HTTP {status}", "server error" if status >= 500 else "request refused", status, said)
        message = redact(explain_status(status, said, self.shown_url, "API_KEY", self.top_k), self._api_key)
        if fault == "prompt longer than the context":
            raise PromptTooLong(message, SERVER_FIX)
        raise HTTPStatusError(message, fault, status, said)

    async def _score_one(self, prompt: str) -> NextTokenLogprobs:
        wait = RetryWait(self.retry_policy, self.shown_url, self._jitter)
        return await with_retries(lambda: self._attempt(prompt), wait, on_retry=self._count_retry,
                                  after_repeated_server_errors=lambda last: self._isolate(prompt, last))

    def _count_retry(self) -> None:
        self.retries += 1

    async def _isolate(self, prompt: str, last: str) -> Optional[NextTokenLogprobs]:
        """After repeated 5xx on ``prompt``: if a one-line probe is answered, ask for ``prompt`` once more, and if
        that fails too, it is a prompt the provider can't answer (PromptsRejected). None: keep retrying."""
        for attempt in (EXACT_LOGPROBS_PROBE, prompt):
            try:
                answer = await self._attempt(attempt)
            except ServerFault as exc:
                if not exc.retryable:
                    raise
                if attempt == prompt:
                    raise PromptsRejected(f"{self.shown_url} fails on this prompt every time ({last}), while it answers a "
                                          "one-line probe. The likely cause is in the prompt itself: a logprob the server "
                                          "can't write as JSON (NaN or infinity), or text its tokenizer rejects", [0]) from None
                return None
        return answer

    def next_token_logprobs(self, prompts: Sequence[str]) -> list[NextTokenLogprobs]:
        if not prompts:
            return []
        self.stats.prompts += len(prompts)

        async def one(i: int) -> NextTokenLogprobs:
            try:
                return await self._score_one(prompts[i])
            except PromptsRejected as exc:
                raise PromptsRejected(str(exc), [i]) from None

        return self._http.run(gather_limited(range(len(prompts)), one, self._concurrency))

    def describe(self) -> dict:
        return {"endpoint": redact_url(self.base_url), "top_k": self.top_k,
                "requests_per_minute": self.limiter.requests_per_minute, "tokens_per_minute": self.limiter.tokens_per_minute,
                "retries": self.retries, "rate_limited": self.rate_limited}

    def close(self) -> None:
        self._http.close()
