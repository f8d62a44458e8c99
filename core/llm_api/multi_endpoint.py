"""Several vLLM endpoints (replicas of one model) serving one run: VLLM_BASE_URL=http://a:8000,http://b:8000.

A pool score is split into contiguous blocks, one per live endpoint. Neighbouring leave-one-out prompts share
the longest prefixes, and each endpoint gets the same block every iteration, so every replica's prefix cache
stays warm. An endpoint that keeps failing is marked down, its block goes to the others, and it is tried
again after ENDPOINT_RETRY_SECONDS. Serving itself (tensor, pipeline and data parallelism, multi-node) is
vLLM's own; this only spreads requests.
"""
from __future__ import annotations

import asyncio
import sys
import time
from typing import Optional, Sequence

from core.interrupts import sleep_unless_stopped
from core.llm_api.base_llm import RouteStats, ScoringError, ScoringRoute
from core.llm_api.http_errors import EndpointDown
from core.llm_api.http_session import RunSession
from core.llm_api.logprobs import NextTokenLogprobs
from core.llm_api.redaction import redact_url
from core.llm_api.vllm_llm import VLLMClient

ENDPOINT_RETRY_SECONDS = 30.0


def contiguous_blocks(count: int, parts: int) -> list[range]:
    """``count`` positions in ``parts`` contiguous ranges of near-equal size."""
    return [range(count * k // parts, count * (k + 1) // parts) for k in range(parts)]


class MultiEndpointVLLM(ScoringRoute):
    name = "vllm"

    def __init__(self, base_urls: Sequence[str], *, api_key: Optional[str], timeout_seconds: float,
                 max_retries: Optional[int], backoff_seconds: float, retry_seconds: float, **client_options) -> None:
        self._http = RunSession({"Authorization": f"Bearer {api_key}"} if api_key else {}, timeout_seconds)
        self.max_rounds = None if max_retries is None else max_retries + 1
        self.retry_seconds = retry_seconds
        self.backoff_seconds = backoff_seconds
        try:
            # One quick retry per endpoint: a replica that is down should hand its work on, not stall the run.
            self.endpoints = [VLLMClient(url, api_key=api_key, timeout_seconds=timeout_seconds, http=self._http,
                                         max_retries=1 if max_retries is None else min(max_retries, 1),
                                         backoff_seconds=backoff_seconds, retry_seconds=retry_seconds,
                                         **client_options) for url in base_urls]
        except BaseException:
            self._http.close()
            raise
        models = {e.model for e in self.endpoints}
        if len(models) > 1:
            self.close()
            raise ScoringError(f"the endpoints in VLLM_BASE_URL serve different models ({', '.join(sorted(models))}); "
                               "list replicas of one model, or pass --model")
        first = self.endpoints[0]
        self.model, self.top_k = first.model, first.top_k
        self.server_version, self.label_token_ids = first.server_version, first.label_token_ids
        self.down_until = [0.0] * len(self.endpoints)
        self.failovers = 0
        self._prompts = 0
        self._engine_seconds = 0.0  # waiting on the servers

    @property
    def stats(self) -> RouteStats:
        total = RouteStats(prompts=self._prompts, engine_seconds=self._engine_seconds)
        for endpoint in self.endpoints:
            total.requests += endpoint.stats.requests
            total.prompt_tokens += endpoint.stats.prompt_tokens
            total.computed_tokens += endpoint.stats.computed_tokens
        return total

    @property
    def retries(self) -> int:
        return sum(e.retries for e in self.endpoints)

    def requests_per_endpoint(self) -> dict[str, int]:
        return {e.base_url: e.stats.requests for e in self.endpoints}

    def refresh_engine_stats(self) -> None:
        for endpoint in self.endpoints:
            endpoint.refresh_engine_stats()

    async def _score(self, prompts: Sequence[str]) -> list[NextTokenLogprobs]:
        answers: list[Optional[NextTokenLogprobs]] = [None] * len(prompts)
        pending = list(range(len(prompts)))
        deadline = time.monotonic() + self.retry_seconds
        rounds = 0
        while (self.max_rounds is None or rounds < self.max_rounds) and (rounds == 0 or time.monotonic() < deadline):
            rounds += 1
            now = time.monotonic()
            live = [i for i, until in enumerate(self.down_until) if until <= now]
            if not live:
                await sleep_unless_stopped(max(0.0, min(min(self.down_until), deadline) - now))
                continue
            blocks = [[pending[j] for j in block] for block in contiguous_blocks(len(pending), len(live))]
            outcomes = await asyncio.gather(
                *(self.endpoints[e].score_batch([prompts[i] for i in block]) for e, block in zip(live, blocks) if block),
                return_exceptions=True,
            )
            for e, block, outcome in zip(live, [b for b in blocks if b], outcomes):
                if isinstance(outcome, EndpointDown):
                    self.down_until[e] = time.monotonic() + ENDPOINT_RETRY_SECONDS
                    self.failovers += 1
                    print(f"note: {self.endpoints[e].shown_url} is down ({outcome}); its prompts go to the other "
                          f"endpoints, and it is tried again in {ENDPOINT_RETRY_SECONDS:.0f} s", file=sys.stderr)
                elif isinstance(outcome, BaseException):
                    raise outcome
                else:
                    for i, answer in zip(block, outcome):
                        answers[i] = answer
            pending = [i for i in pending if answers[i] is None]
            if not pending:
                return answers  # type: ignore[return-value]
        raise ScoringError(f"every endpoint in VLLM_BASE_URL failed {rounds} rounds in a row: "
                           f"{', '.join(e.shown_url for e in self.endpoints)}. Check them with scripts/test_vllm_server.py")

    def next_token_logprobs(self, prompts: Sequence[str]) -> list[NextTokenLogprobs]:
        if not prompts:
            return []
        self._prompts += len(prompts)
        started = time.perf_counter()
        try:
            return self._http.run(self._score(prompts))
        finally:
            self._engine_seconds += time.perf_counter() - started

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return self.endpoints[0].tokenize(texts)

    def send_prompts_singly(self) -> None:
        for endpoint in self.endpoints:
            endpoint.send_prompts_singly()

    def describe(self) -> dict:
        # The replicas serve one model, so the first one's server facts stand for all of them.
        return {**self.endpoints[0].describe(), "endpoint": ",".join(redact_url(e.base_url) for e in self.endpoints),
                "retries": self.retries, "failovers": self.failovers,
                "requests_per_endpoint": {redact_url(url): n for url, n in self.requests_per_endpoint().items()}}

    def close(self) -> None:
        self._http.close()
