"""Several vLLM endpoints (replicas of one model) serving one run: VLLM_BASE_URL=http://a:8000,http://b:8000.

A pool score is split into contiguous blocks, one per live endpoint. Neighbouring leave-one-out prompts share
the longest prefixes, and each endpoint gets the same block every iteration, so every replica's prefix cache
stays warm. An endpoint that keeps failing, or does not answer at start, is marked down, its block goes to
the others, and it is tried again after ENDPOINT_RETRY_SECONDS. Serving itself (tensor, pipeline and data
parallelism, multi-node) is vLLM's own; this only spreads requests.
"""
from __future__ import annotations

import asyncio
import random
import sys
import time
from dataclasses import replace
from typing import Optional, Sequence

from core.interrupts import sleep_unless_stopped
from core.llm_api.base_llm import RouteStats, ScoringError, ScoringRoute
from core.llm_api.faults import EndpointDown, PromptsRejected, ServerFault
from core.llm_api.http_session import bearer_session
from core.llm_api.logprobs import NextTokenLogprobs
from core.llm_api.redaction import redact_url
from core.llm_api.retry_waits import RetryWait
from core.llm_api.route_settings import VLLMRouteSettings
from core.llm_api.vllm_llm import VLLMClient

ENDPOINT_RETRY_SECONDS = 30.0


def contiguous_blocks(count: int, parts: int) -> list[range]:
    """``count`` positions in ``parts`` contiguous ranges of near-equal size."""
    return [range(count * k // parts, count * (k + 1) // parts) for k in range(parts)]


class MultiEndpointVLLM(ScoringRoute):
    name = "vllm"

    def __init__(self, settings: VLLMRouteSettings) -> None:
        """No network I/O here: ``open()`` connects to the endpoints that answer."""
        self._http = bearer_session(settings.api_key, settings.timeout_seconds)
        policy = settings.retry
        self.max_rounds = None if policy.max_retries is None else policy.max_retries + 1
        self.retry_seconds = policy.retry_seconds
        self.policy = policy
        # One quick retry per endpoint: a replica that is down should hand its work on, not stall the run.
        quick = replace(settings, retry=replace(policy, max_retries=1 if policy.max_retries is None else min(policy.max_retries, 1)))
        self.endpoints = [VLLMClient(url, quick, http=self._http) for url in settings.base_urls]
        first = self.endpoints[0]
        self.model, self.top_k = first.model, first.top_k
        self.server_version: Optional[str] = None
        self.label_token_ids: Optional[list[int]] = None
        self.context_tokens: Optional[int] = None
        self.down_until = [0.0] * len(self.endpoints)
        self.failovers = 0
        self._last_connect_error: Optional[str] = None
        self._prompts = 0
        self._engine_seconds = 0.0  # waiting on the servers

    # -- start-up -------------------------------------------------------------------------------------

    def open(self) -> None:
        try:
            self._http.run(self._connect_all())
        except BaseException:
            self.close()
            raise

    async def _connect_all(self) -> None:
        """Connect every endpoint that answers now; wait (within the retry budget) only if none does."""
        wait = RetryWait(self.policy, "every endpoint in VLLM_BASE_URL", random.Random(0))
        while True:
            await self._connect_pending()
            if any(e.connected for e in self.endpoints):
                break
            await wait.after_failure(self._last_connect_error or "none answered")
        first = next(e for e in self.endpoints if e.connected)
        self.model, self.server_version = first.model, first.server_version
        self.label_token_ids, self.context_tokens = first.label_token_ids, first.context_tokens

    async def _connect_pending(self) -> None:
        """One try at each endpoint not yet connected whose retry time has come; failures are marked down."""
        now = time.monotonic()
        pending = [i for i, e in enumerate(self.endpoints) if not e.connected and self.down_until[i] <= now]
        outcomes = await asyncio.gather(*(self.endpoints[i].connect(retry=False) for i in pending), return_exceptions=True)
        for i, outcome in zip(pending, outcomes):
            endpoint = self.endpoints[i]
            if isinstance(outcome, ServerFault) and outcome.retryable:
                self._last_connect_error = str(outcome)
                self._mark_down(i, f"it does not answer ({outcome})")
            elif isinstance(outcome, BaseException):
                raise outcome
            elif any(e.connected and e.model != endpoint.model for e in self.endpoints if e is not endpoint):
                raise ScoringError(f"the endpoints in VLLM_BASE_URL serve different models "
                                   f"({', '.join(sorted({e.model for e in self.endpoints if e.connected}))}); "
                                   "list replicas of one model, or pass --model")

    def _mark_down(self, index: int, why: str) -> None:
        self.down_until[index] = time.monotonic() + ENDPOINT_RETRY_SECONDS
        self.failovers += 1
        print(f"note: {self.endpoints[index].shown_url} is down ({why}); its prompts go to the other endpoints, and it "
              f"is tried again in {ENDPOINT_RETRY_SECONDS:.0f} s", file=sys.stderr, flush=True)

    # -- statistics -----------------------------------------------------------------------------------

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
            if endpoint.connected:
                endpoint.refresh_engine_stats()

    # -- scoring --------------------------------------------------------------------------------------

    async def _score(self, prompts: Sequence[str]) -> list[NextTokenLogprobs]:
        answers: list[Optional[NextTokenLogprobs]] = [None] * len(prompts)
        pending = list(range(len(prompts)))
        deadline = time.monotonic() + self.retry_seconds
        rounds = 0
        while (self.max_rounds is None or rounds < self.max_rounds) and (rounds == 0 or time.monotonic() < deadline):
            rounds += 1
            await self._connect_pending()
            now = time.monotonic()
            live = [i for i, e in enumerate(self.endpoints) if e.connected and self.down_until[i] <= now]
            if not live:
                await sleep_unless_stopped(max(0.0, min(min(self.down_until), deadline) - now))
                continue
            blocks = [[pending[j] for j in block] for block in contiguous_blocks(len(pending), len(live))]
            work = [(e, block) for e, block in zip(live, blocks) if block]
            tasks = [asyncio.ensure_future(self.endpoints[e].score_batch([prompts[i] for i in block])) for e, block in work]
            try:
                failure = await _first_permanent_failure(tasks)
            finally:
                for task in tasks:
                    if not task.done():
                        task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            if failure is not None:
                task_at = tasks.index(failure)
                outcome = failure.exception()
                if isinstance(outcome, PromptsRejected):
                    block = work[task_at][1]
                    raise PromptsRejected(str(outcome), [block[i] for i in outcome.positions]) from None
                raise outcome  # type: ignore[misc]
            for (e, block), task in zip(work, tasks):
                if isinstance(task.exception(), EndpointDown):
                    self._mark_down(e, str(task.exception()))
                else:
                    for i, answer in zip(block, task.result()):
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
        return next(e for e in self.endpoints if e.connected).tokenize(texts)

    def send_prompts_singly(self) -> None:
        for endpoint in self.endpoints:
            endpoint.send_prompts_singly()

    def describe(self) -> dict:
        # The replicas serve one model, so the first connected one's server facts stand for all of them.
        first = next((e for e in self.endpoints if e.connected), self.endpoints[0])
        return {**first.describe(), "endpoint": ",".join(redact_url(e.base_url) for e in self.endpoints),
                "retries": self.retries, "failovers": self.failovers,
                "requests_per_endpoint": {redact_url(url): n for url, n in self.requests_per_endpoint().items()}}

    def close(self) -> None:
        self._http.close()


async def _first_permanent_failure(tasks: list[asyncio.Future]) -> Optional[asyncio.Future]:
    """Wait for every task; a failure other than EndpointDown (which only hands that endpoint's work to the
    others) ends the wait at once and is returned, so that the caller cancels the rest."""
    remaining = set(tasks)
    while remaining:
        done, remaining = await asyncio.wait(remaining, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None and not isinstance(task.exception(), EndpointDown):
                return task
    return None
