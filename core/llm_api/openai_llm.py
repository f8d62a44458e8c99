"""The external route: a hosted OpenAI-compatible completions API with logprobs, rate limited.

Hosted APIs often refuse list prompts, so each prompt is its own request, at most ``concurrency`` at once,
each admitted by the RateLimiter. A 429 pauses every request for its Retry-After. 5xx answers, dropped
connections, timeouts and a 200 whose body is cut short or not JSON are retried as the vLLM route retries
them (retry_waits.py: capped backoff, a time budget, a note while waiting), then the run stops with the
endpoint and the last fault.
"""
from __future__ import annotations

import asyncio
import json
import random
from typing import Optional, Sequence

import aiohttp

from core.llm_api.base_llm import RouteStats, ScoringError, ScoringRoute
from core.llm_api.http_errors import explain_status
from core.llm_api.http_session import RunSession, gather_limited
from core.llm_api.logprobs import MalformedResponse, NextTokenLogprobs, parse_completion_logprobs
from core.llm_api.rate_limits import RateLimiter, parse_reset
from core.llm_api.redaction import redact, redact_url
from core.llm_api.retry_waits import RetryPolicy, RetryWait

# OpenAI's legacy completions return at most 5 logprobs; the label score works with any k.
DEFAULT_EXTERNAL_TOP_K = 5
CHARS_PER_TOKEN = 4  # a cautious guess for the token bucket until the answer's usage says
MAX_RATE_LIMIT_WAITS = 50  # 429s are waited out, but not forever
DEFAULT_RETRY_AFTER_SECONDS = 1.0


class ExternalAPIClient(ScoringRoute):
    name = "external"

    def __init__(
        self,
        base_url: str,
        *,
        model: Optional[str],
        api_key: Optional[str],
        limiter: RateLimiter,
        top_k: int = DEFAULT_EXTERNAL_TOP_K,
        concurrency: int = 16,
        timeout_seconds: float = 60.0,
        max_retries: Optional[int] = 5,
        backoff_seconds: float = 1.0,
        backoff_max_seconds: float = 30.0,
        retry_seconds: float = 300.0,
        seed: int = 0,
    ) -> None:
        if not model:
            raise ScoringError("the hosted API route needs --model: the provider's name of a base model with logprobs (e.g. davinci-002)")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/v1/completions"
        self.shown_url = redact_url(self.url)
        self.model = model
        self.top_k = top_k
        self.limiter = limiter
        self.retry_policy = RetryPolicy("API", backoff_seconds, backoff_max_seconds, retry_seconds, max_retries)
        self.stats = RouteStats()
        self.retries = 0
        self.rate_limited = 0
        self._api_key = api_key
        self._jitter = random.Random(seed)  # its own RNG: retries must not move the search's random stream
        self._concurrency = concurrency
        self._http = RunSession({"Authorization": f"Bearer {api_key}"} if api_key else {}, timeout_seconds)

    async def _score_one(self, prompt: str) -> NextTokenLogprobs:
        body = {"model": self.model, "prompt": prompt, "max_tokens": 1, "logprobs": self.top_k, "temperature": 0.0}
        estimate = max(1, len(prompt) // CHARS_PER_TOKEN)
        wait = RetryWait(self.retry_policy, self.shown_url, self._jitter)
        waits_for_429 = 0
        while True:
            await self.limiter.acquire(estimate)
            self.stats.requests += 1
            try:
                async with self._http.session.post(self.url, json=body) as response:
                    self.limiter.update_from_headers(response.headers)
                    text = await response.text()
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
                status, text, retry_after = None, "", None
                last = f"connection lost or timed out ({type(exc).__name__})"
            if status == 200:
                try:
                    return await self._accept(text, estimate)
                except ValueError as exc:  # cut short, not JSON, or choices garbled: asking again may cure it
                    last = f"answered 200 with an unusable body ({exc}): {text[:100]!r}"
            elif status == 429:
                waits_for_429 += 1
                self.rate_limited += 1
                if waits_for_429 > MAX_RATE_LIMIT_WAITS:
                    raise ScoringError(f"{self.shown_url} kept answering 429 (rate limited) after {MAX_RATE_LIMIT_WAITS} waits: "
                                       "lower API_REQUESTS_PER_MINUTE / API_TOKENS_PER_MINUTE")
                self.limiter.pause(parse_reset(retry_after or "") or DEFAULT_RETRY_AFTER_SECONDS)
                continue
            elif status is not None and status < 500:
                raise ScoringError(redact(explain_status(status, text, self.shown_url, "API_KEY", self.top_k), self._api_key))
            elif status is not None:
                last = f"HTTP {status}"
            await wait.after_failure(redact(last, self._api_key))
            self.retries += 1

    async def _accept(self, text: str, estimate: int) -> NextTokenLogprobs:
        """The logprobs in a 200's body; ValueError for a body worth asking for again, ScoringError for one
        the server will always send."""
        answer = json.loads(text)
        if not isinstance(answer, dict):
            raise ValueError(f"a JSON {type(answer).__name__}, not an object")
        try:
            [logprobs] = parse_completion_logprobs(answer, 1)
        except MalformedResponse as exc:
            if exc.retryable:
                raise
            raise ScoringError(redact(f"{self.shown_url}: unusable answer ({exc})", self._api_key)) from None
        used = int((answer.get("usage") or {}).get("prompt_tokens") or estimate)
        self.stats.prompt_tokens += used
        self.stats.computed_tokens += used
        await self.limiter.charge_tokens(used - estimate)
        return logprobs

    def next_token_logprobs(self, prompts: Sequence[str]) -> list[NextTokenLogprobs]:
        if not prompts:
            return []
        self.stats.prompts += len(prompts)
        return self._http.run(gather_limited(prompts, self._score_one, self._concurrency))

    def describe(self) -> dict:
        return {"endpoint": redact_url(self.base_url), "top_k": self.top_k,
                "requests_per_minute": self.limiter.requests_per_minute, "tokens_per_minute": self.limiter.tokens_per_minute,
                "retries": self.retries, "rate_limited": self.rate_limited}

    def close(self) -> None:
        self._http.close()
