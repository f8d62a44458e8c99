"""The vLLM route: an aiohttp client for an OpenAI-compatible ``/v1/completions`` server, no rate limit.

A pool's prompts go out as one list in one request. The list is split into chunks, sent concurrently, only
past the server's prompts-per-request cap (vLLM: 1024). The same client also drives llama.cpp's server
(scripts/serve_local.py), which is how machines without GPUs run this path.
"""
from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from typing import Any, Awaitable, Callable, Optional, Sequence, TypeVar

import aiohttp

from core.llm_api.base_llm import DEFAULT_TOP_K, RouteStats, ScoringError, ScoringRoute
from core.llm_api.engine_metrics import parse_metrics, prompt_token_counters
from core.llm_api.http_errors import EndpointDown, HTTPStatusError, TransientError, explain_status
from core.llm_api.http_session import RunSession, gather_limited
from core.llm_api.logprobs import MalformedResponse, NextTokenLogprobs, parse_completion_logprobs
from core.llm_api.redaction import redact, redact_url
from core.llm_api.retry_waits import RetryPolicy, RetryWait

DEFAULT_MAX_PROMPTS_PER_REQUEST = 1024  # vLLM's VLLM_MAX_COMPLETION_PROMPTS
DEFAULT_TIMEOUT_SECONDS = 900.0
# A CPU vLLM takes 90-160 s to restart, a 70B model on GPUs several minutes: the default outlasts both.
DEFAULT_RETRY_SECONDS = 600.0
DEFAULT_BACKOFF_MAX_SECONDS = 10.0
# While a request is outstanding, /health is asked this often; a server whose engine died keeps the
# connection open and never answers (vLLM on SIGTERM), so only this notices it.
DEFAULT_HEALTH_POLL_SECONDS = 5.0
HEALTH_TIMEOUT_SECONDS = 5.0
HEALTH_FAILURES_TO_GIVE_UP = 2
# The start-up probes (/v1/models, /version, /tokenize) are small: a server that takes longer is not up yet.
PROBE_TIMEOUT_SECONDS = 30.0
SINGLE_PROMPT_CONCURRENCY = 64
T = TypeVar("T")
LABEL_TOKEN_VARIANTS = (" True", " False", "True", "False", " true", " false", "true", "false")
# Asked once with logprob_token_ids: the label tokens are never this prompt's top tokens, so an answer that
# holds exactly them proves the server honoured the field (one that ignores it answers with its top-k).
EXACT_LOGPROBS_PROBE = "The capital of France is"


def refuses_list_prompts(error: HTTPStatusError) -> bool:
    """Whether an error answer says the server takes one prompt per request, not a list."""
    said = error.body.lower()
    about_context = "context length" in said or "context size" in said
    about_type = "prompt" in said and any(word in said for word in ("list", "array", "valid string", "type"))
    return error.status in (400, 422) and about_type and not about_context


class VLLMClient(ScoringRoute):
    name = "vllm"

    def __init__(
        self,
        base_url: str,
        *,
        model: Optional[str] = None,
        api_key: Optional[str] = None,
        top_k: int = DEFAULT_TOP_K,
        deterministic: bool = False,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        max_prompts_per_request: int = DEFAULT_MAX_PROMPTS_PER_REQUEST,
        exact_label_logprobs: bool = True,
        max_retries: Optional[int] = None,
        backoff_seconds: float = 1.0,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
        backoff_max_seconds: float = DEFAULT_BACKOFF_MAX_SECONDS,
        health_poll_seconds: float = DEFAULT_HEALTH_POLL_SECONDS,
        http: Optional[RunSession] = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.shown_url = redact_url(self.base_url)  # for messages and files: no credentials
        self.top_k = top_k
        self.deterministic = deterministic
        self.max_prompts_per_request = max(1, max_prompts_per_request)
        self.stats = RouteStats()
        self.list_prompts_supported: Optional[bool] = None  # None until a list has been tried
        self.retry_policy = RetryPolicy("VLLM", backoff_seconds, backoff_max_seconds, retry_seconds, max_retries)
        self.health_poll_seconds = health_poll_seconds
        self.retries = 0
        self._jitter = random.Random(0)  # its own RNG: retries must not move the search's random stream
        self._api_key = api_key
        # Several endpoints of one run share one session and loop (see multi_endpoint.py).
        self._owns_http = http is None
        self._http = http or RunSession({"Authorization": f"Bearer {api_key}"} if api_key else {}, timeout_seconds)
        self.label_token_ids: Optional[list[int]] = None
        try:
            # A server still starting (or restarting) is waited for, within the same budget as a fault mid-run.
            self.model = self._http.run(self._with_retries(lambda: self._discover_model(model), "/v1/models"))
            self._tokens_at_start = self._http.run(self._prompt_token_counters())
            self.server_version = self._http.run(self._server_version())
            if exact_label_logprobs and self.server_version:  # llama.cpp's server has no /version and no such field
                self.label_token_ids = self._http.run(self._exact_label_token_ids())
        except BaseException:
            self.close()
            raise

    # -- connection ---------------------------------------------------------------------------------

    async def _request(self, method: str, path: str, body: Optional[dict] = None, timeout: Optional[float] = None) -> Any:
        """One call; while it is outstanding, /health is watched, and a server found dead ends the wait."""
        call = asyncio.ensure_future(self._request_once(method, path, body, timeout))
        failures = 0
        try:
            while True:
                done, _ = await asyncio.wait({call}, timeout=self.health_poll_seconds)
                if done:
                    return call.result()
                failures = 0 if await self._healthy() else failures + 1
                if failures >= HEALTH_FAILURES_TO_GIVE_UP:
                    raise TransientError(f"{self.shown_url} stopped answering /health while a request was in flight "
                                         "(the server or its engine died)")
        finally:
            if not call.done():
                call.cancel()
                await asyncio.gather(call, return_exceptions=True)

    async def _healthy(self) -> bool:
        try:
            async with self._http.session.get(self.base_url + "/health",
                                              timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_SECONDS)) as response:
                return response.status < 500
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    async def _request_once(self, method: str, path: str, body: Optional[dict] = None, timeout: Optional[float] = None) -> Any:
        url = self.shown_url + path
        # Only a probe passes its own limit: aiohttp reads timeout=None as "no limit at all".
        limit = {"timeout": aiohttp.ClientTimeout(total=timeout)} if timeout else {}
        try:
            async with self._http.session.request(method, self.base_url + path, json=body, **limit) as response:
                text = await response.text()
                if response.status != 200:
                    message = explain_status(response.status, text, url, "VLLM_API_KEY", self.top_k)
                    raise HTTPStatusError(response.status, redact(message, self._api_key), redact(text[:1000], self._api_key))
                try:
                    return json.loads(text)
                except ValueError:
                    raise TransientError(f"{url} answered 200 with a body that is not JSON (cut short?): {text[:100]!r}") from None
        except aiohttp.ClientConnectorError as exc:
            raise TransientError(
                f"cannot connect to {self.shown_url} ({exc.os_error or exc}): is the server running on that host "
                "and port? Check with `python scripts/test_vllm_server.py --base-url URL`"
            ) from None
        except asyncio.TimeoutError:
            if timeout:
                raise TransientError(f"{url} did not answer a start-up probe within {timeout:g} s") from None
            raise TransientError(f"{url} did not answer within {self._http.timeout.total:.0f} s (VLLM_TIMEOUT_SECONDS)") from None
        except aiohttp.ClientError as exc:
            raise TransientError(f"{url}: connection lost ({type(exc).__name__}: {exc})") from None

    async def _discover_model(self, requested: Optional[str]) -> str:
        answer = await self._request("GET", "/v1/models", timeout=PROBE_TIMEOUT_SECONDS)
        listed = answer.get("data") if isinstance(answer, dict) else None
        served = [m.get("id") for m in listed if isinstance(m, dict)] if isinstance(listed, list) else []
        if requested is None:
            if not served:
                raise ScoringError(f"{self.shown_url}/v1/models lists no model; pass --model")
            return served[0]
        if served and requested not in served:
            raise ScoringError(f"--model {requested!r} is not served at {self.shown_url}; it serves: {', '.join(map(str, served))}")
        return requested

    async def _server_version(self) -> Optional[str]:
        try:
            answer = await self._request("GET", "/version", timeout=PROBE_TIMEOUT_SECONDS)
            return answer.get("version") if isinstance(answer, dict) else None
        except HTTPStatusError:
            return None  # llama.cpp's server has no /version

    async def _exact_label_token_ids(self) -> Optional[list[int]]:
        """The label tokens' ids, if the server gives exact logprobs for named ids (``logprob_token_ids``);
        None otherwise. The feature is tried, not inferred from a version: vLLM 0.32 has it, other servers don't."""
        ids: list[int] = []
        texts: list[str] = []
        for text in LABEL_TOKEN_VARIANTS:
            try:
                answer = await self._request("POST", "/tokenize", {"model": self.model, "prompt": text, "content": text,
                                                                   "add_special_tokens": False}, timeout=PROBE_TIMEOUT_SECONDS)
            except HTTPStatusError:
                return None  # no /tokenize: not a vLLM
            tokens = (answer.get("tokens") if isinstance(answer, dict) else None) or []
            if len(tokens) == 1 and tokens[0] not in ids:
                ids.append(tokens[0])
                texts.append(text)
        if not ids:
            return None
        body = {"model": self.model, "prompt": EXACT_LOGPROBS_PROBE, "max_tokens": 1, "temperature": 0.0,
                "logprobs": len(ids), "logprob_token_ids": ids}
        try:
            [returned] = parse_completion_logprobs(await self._request("POST", "/v1/completions", body, timeout=PROBE_TIMEOUT_SECONDS), 1)
        except (HTTPStatusError, MalformedResponse):
            return None
        # vLLM adds the sampled token to the named ones; a server that ignored the field sent its top-k instead.
        tokens = {token for token, _ in returned}
        return ids if set(texts) <= tokens and len(tokens) <= len(ids) + 1 else None

    async def _prompt_token_counters(self) -> Optional[tuple[float, float]]:
        try:
            async with self._http.session.get(self.base_url + "/metrics") as response:
                if response.status != 200:
                    return None
                return prompt_token_counters(parse_metrics(await response.text()))
        except aiohttp.ClientError:
            return None

    def refresh_engine_stats(self) -> None:
        """Token counts from the server's /metrics since this client started.

        The ``usage`` of a list request is not reliable for this (llama.cpp reports one prompt's count), and
        it never says what came from the prefix cache. Counts include any other client of the same server.
        """
        now = self._http.run(self._prompt_token_counters())
        if now is None or self._tokens_at_start is None:
            return
        sent, cached = now[0] - self._tokens_at_start[0], now[1] - self._tokens_at_start[1]
        self.stats.prompt_tokens, self.stats.computed_tokens = int(sent), int(sent - cached)

    # -- scoring --------------------------------------------------------------------------------------

    def _body(self, prompt: Any) -> dict:
        body: dict[str, Any] = {"model": self.model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0}
        if self.label_token_ids:
            body.update(logprobs=len(self.label_token_ids), logprob_token_ids=self.label_token_ids)
        else:
            body["logprobs"] = self.top_k
        if self.deterministic:
            body["cache_prompt"] = False  # llama.cpp's switch; vLLM ignores unknown fields
        return body

    async def _with_retries(self, attempt: Callable[[], Awaitable[T]], what: str) -> T:
        """``attempt()`` until it succeeds. Faults that asking again may cure are retried as the RetryPolicy
        says (capped backoff, a time budget, a note while waiting, a stop ends the wait); others raise at once."""
        wait = RetryWait(self.retry_policy, self.shown_url + what, self._jitter)
        while True:
            try:
                return await attempt()
            except (HTTPStatusError, TransientError) as exc:
                if not getattr(exc, "retryable", True):
                    raise
                last = str(exc)
            await wait.after_failure(last)
            self.retries += 1

    async def _post(self, prompt: Any, n_prompts: int) -> list[NextTokenLogprobs]:
        """One completions request, retried as ``_with_retries`` says."""
        url = self.shown_url + "/v1/completions"

        async def attempt() -> list[NextTokenLogprobs]:
            self.stats.requests += 1
            response = await self._request("POST", "/v1/completions", self._body(prompt))
            try:
                return parse_completion_logprobs(response, n_prompts)
            except MalformedResponse as exc:
                if not exc.retryable:
                    raise ScoringError(f"{url}: {exc}") from None
                raise TransientError(f"{url}: {exc}") from None

        return await self._with_retries(attempt, "/v1/completions")

    async def _post_list(self, chunk: Sequence[str]) -> list[NextTokenLogprobs]:
        if len(chunk) == 1:
            return await self._post(chunk[0], 1)
        if self.list_prompts_supported is False:
            return await self._post_singly(chunk)
        try:
            result = await self._post(list(chunk), len(chunk))
        except HTTPStatusError as exc:
            # Only an answer that says the prompt's type is wrong proves lists are refused: a 5xx or a dropped
            # connection says nothing about lists, and was retried like any other fault.
            if self.list_prompts_supported or not refuses_list_prompts(exc):
                raise
            self.list_prompts_supported = False
            print(f"note: {self.shown_url} refuses a list of prompts (HTTP {exc.status}); sending prompts one per "
                  f"request, {SINGLE_PROMPT_CONCURRENCY} at a time", file=sys.stderr)
            return await self._post_singly(chunk)
        except EndpointDown as exc:
            # Lists have only ever failed with 500s: if one prompt alone is answered, say what to set (but don't
            # switch on a guess: a server whose engine died answers 500 too).
            if self.list_prompts_supported is None and "answered 500" in str(exc) and await self._answers_one_prompt(chunk[0]):
                raise EndpointDown(f"{exc}. This server answers one prompt but not a list of them (llama-cpp-python's "
                                   "does that): set VLLM_MAX_PROMPTS_PER_REQUEST=1") from None
            raise
        self.list_prompts_supported = True
        return result

    async def _answers_one_prompt(self, prompt: str) -> bool:
        """One try, no retries: is a single prompt answered?"""
        try:
            parse_completion_logprobs(await self._request("POST", "/v1/completions", self._body(prompt)), 1)
        except (ScoringError, MalformedResponse):
            return False
        return True

    async def _post_singly(self, prompts: Sequence[str]) -> list[NextTokenLogprobs]:
        async def one(prompt: str) -> NextTokenLogprobs:
            return (await self._post(prompt, 1))[0]

        return await gather_limited(prompts, one, SINGLE_PROMPT_CONCURRENCY)

    async def score_batch(self, prompts: Sequence[str]) -> list[NextTokenLogprobs]:
        """The prompts' logprobs on this client's loop (a multi-endpoint route awaits several at once)."""
        size = self.max_prompts_per_request
        chunks = [prompts[i:i + size] for i in range(0, len(prompts), size)]
        if self.list_prompts_supported is None and len(chunks) > 1:
            # Learn whether lists work on the first chunk before sending the rest at once.
            first = await self._post_list(chunks[0])
            rest = await gather_limited(chunks[1:], self._post_list, SINGLE_PROMPT_CONCURRENCY)
            answers = [first, *rest]
        else:
            answers = await gather_limited(chunks, self._post_list, SINGLE_PROMPT_CONCURRENCY)
        return [logprobs for chunk in answers for logprobs in chunk]

    def next_token_logprobs(self, prompts: Sequence[str]) -> list[NextTokenLogprobs]:
        if not prompts:
            return []
        self.stats.prompts += len(prompts)
        started = time.perf_counter()
        try:
            return self._http.run(self.score_batch(prompts))
        finally:
            self.stats.engine_seconds += time.perf_counter() - started  # waiting on the server

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text from the server's /tokenize (vLLM reads "prompt", llama.cpp "content")."""
        async def one(text: str) -> list[int]:
            answer = await self._request("POST", "/tokenize", {"model": self.model, "prompt": text, "content": text,
                                                                "add_special_tokens": False})
            return answer["tokens"]

        return self._http.run(gather_limited(texts, one, SINGLE_PROMPT_CONCURRENCY))

    def send_prompts_singly(self) -> None:
        self.list_prompts_supported = False  # prompts then go singly, SINGLE_PROMPT_CONCURRENCY at once

    def describe(self) -> dict:
        return {"endpoint": self.shown_url, "server_version": self.server_version,
                "label_logprobs": "exact" if self.label_token_ids else "top-k", "retries": self.retries}

    def close(self) -> None:
        if self._owns_http:
            self._http.close()
