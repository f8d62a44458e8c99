"""The vLLM route: an aiohttp client for an OpenAI-compatible ``/v1/completions`` server, no rate limit.

A pool's prompts go out as one list in one request. The list is split into chunks, sent concurrently, only
past the server's prompts-per-request cap (vLLM: 1024). The same client also drives llama.cpp's server
(scripts/serve_local.py), which is how machines without GPUs run this path.

What each fault means and what the client does is the table in core/llm_api/faults.py. In short: transient
faults are retried within VLLM_RETRY_SECONDS; permanent ones stop at once with the fix; a server that can't
take a list of prompts (it refuses lists, answers them with broken choice indices, or fails on lists while
answering each prompt alone) is sent one prompt per request; and a prompt the server fails on by itself is
found and named.
"""
from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from typing import Any, Optional, Sequence

import aiohttp

from core.interrupts import sleep_unless_stopped
from core.llm_api.base_llm import RouteStats, ScoringError, ScoringRoute
from core.llm_api.completions_request import CompletionRequest, tokenize_body
from core.llm_api.faults import (
    HTTPStatusError,
    PromptsRejected,
    PromptTooLong,
    ServerFault,
    classify_status,
    explain_status,
    server_message,
)
from core.llm_api.http_session import RunSession, bearer_session, gather_limited
from core.llm_api.logprobs import (
    MIN_ENTRIES,
    MalformedResponse,
    NextTokenLogprobs,
    ServerSaidError,
    parse_completion_logprobs,
)
from core.llm_api.redaction import redact, redact_url
from core.llm_api.retry_waits import RetryWait, with_retries
from core.llm_api.route_settings import VLLMRouteSettings
from core.llm_api.server_probe import (
    EXACT_LOGPROBS_PROBE,
    PROBE_TIMEOUT_SECONDS,
    exact_label_tokens,
    note,
    served_model,
    server_version,
    token_counters,
)
from core.llm_api.wait_headers import requested_wait

# While a request is outstanding, /health is asked every VLLM_HEALTH_POLL_SECONDS; a server whose engine died
# keeps the connection open and never answers (vLLM on SIGTERM), so only this notices it.
HEALTH_TIMEOUT_SECONDS = 5.0
HEALTH_FAILURES_TO_GIVE_UP = 2
SINGLE_PROMPT_CONCURRENCY = 64
SERVER_FIX = "or restart the server with a larger --max-model-len"


class ListFallback(Exception):
    """This server can't take a list of prompts (``reason`` says how it showed it): send them one by one.
    ``answers`` holds the singles' answers when they were already fetched while finding that out."""

    def __init__(self, reason: str, answers: Optional[list[NextTokenLogprobs]] = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.answers = answers


class VLLMClient(ScoringRoute):
    name = "vllm"

    def __init__(self, base_url: str, settings: VLLMRouteSettings, http: Optional[RunSession] = None) -> None:
        """``base_url``: one of ``settings.base_urls``. ``http``: a session shared with other endpoints of the run.
        No network I/O here: ``open()`` (or ``connect()`` on a shared loop) asks the server what it offers."""
        self.base_url = base_url.rstrip("/")
        self.shown_url = redact_url(self.base_url)  # for messages and files: no credentials
        self.requested_model = settings.model
        self.model = settings.model or ""
        self.top_k = settings.top_k
        self.deterministic = settings.deterministic
        self.want_exact_label_logprobs = settings.exact_label_logprobs
        self.max_prompts_per_request = max(1, settings.max_prompts_per_request)
        self.stats = RouteStats()
        self.list_prompts_supported: Optional[bool] = None  # None until a list has been tried
        self.retry_policy = settings.retry
        self.health_poll_seconds = settings.health_poll_seconds
        self.retries = 0
        self.server_version: Optional[str] = None
        self.context_tokens: Optional[int] = None
        self.label_tokens: Optional[dict[int, str]] = None  # exact-logprob mode: {id: text} of the label tokens
        self.connected = False
        self._tokens_at_start: Optional[tuple[float, float]] = None
        self._counters_missing_noted = False
        self._jitter = random.Random(0)  # its own RNG: retries must not move the search's random stream
        self._api_key = settings.api_key
        # Several endpoints of one run share one session and loop (see multi_endpoint.py).
        self._owns_http = http is None
        self._http = http or bearer_session(settings.api_key, settings.timeout_seconds)

    @property
    def label_token_ids(self) -> Optional[list[int]]:  # type: ignore[override]
        return list(self.label_tokens) if self.label_tokens else None

    @property
    def request(self) -> CompletionRequest:
        return CompletionRequest(self.model, self.top_k, tuple(self.label_tokens) if self.label_tokens else None,
                                 # llama.cpp's switch; vLLM ignores unknown fields
                                 cache_prompt=False if self.deterministic else None)

    # -- start-up -------------------------------------------------------------------------------------

    def open(self) -> None:
        try:
            self._http.run(self.connect())
        except BaseException:
            self.close()
            raise

    async def connect(self, retry: bool = True) -> None:
        """Ask the server what it offers. A server still starting (or restarting) is waited for within the
        retry budget, unless ``retry`` is False (one try: a replica among several that is down is tried later)."""
        discover = self._discover
        self.model, self.context_tokens = await (with_retries(discover, self._wait("/v1/models"), on_retry=self._count_retry)
                                                 if retry else discover())
        self._tokens_at_start = await token_counters(self._fetch_text)
        self.server_version = await server_version(self._fetch, self.shown_url)
        if self.want_exact_label_logprobs and self.server_version:  # llama.cpp's server has no /version and no such field
            self.label_tokens = await exact_label_tokens(self._fetch, self.model)
        self.connected = True

    async def _discover(self) -> tuple[str, Optional[int]]:
        try:
            return await served_model(self._fetch, self.shown_url, self.requested_model)
        except ServerFault as exc:
            # An https:// URL whose connection fails: if the port answers plain HTTP, no retry will ever get through.
            if exc.retryable and self.base_url.startswith("https://") and await self._speaks_plain_http():
                raise ServerFault(f"cannot talk TLS to {self.shown_url}: the server there speaks plain HTTP. Write "
                                  f"{self.shown_url.replace('https://', 'http://', 1)} in VLLM_BASE_URL", "TLS handshake fails") from None
            raise

    async def _speaks_plain_http(self) -> bool:
        try:
            async with self._http.session.get("http://" + self.base_url.split("://", 1)[1] + "/health",
                                              timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_SECONDS)):
                return True  # any HTTP answer at all
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    # -- connection -----------------------------------------------------------------------------------

    async def _fetch(self, method: str, path: str, body: Optional[dict], timeout: float) -> Any:
        """A start-up probe: one call, its own short timeout."""
        return await self._request(method, path, body, timeout)

    async def _fetch_text(self, path: str, timeout: float) -> str:
        try:
            async with self._http.session.get(self.base_url + path, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                if response.status != 200:
                    raise ScoringError(f"{self.shown_url}{path} answered {response.status}")
                return await response.text()
        except (aiohttp.ClientError, asyncio.TimeoutError, UnicodeDecodeError) as exc:
            raise ScoringError(f"{self.shown_url}{path}: {type(exc).__name__}") from None

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
                    raise ServerFault(f"{self.shown_url} stopped answering /health while a request was in flight "
                                      "(the server or its engine died)", "engine died behind an open connection")
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
                    self._raise_for_status(response.status, text, response.headers, url)
                try:
                    return json.loads(text)
                except ValueError:
                    raise ServerFault(f"{url} answered 200 with a body that is not JSON (cut short?): {text[:100]!r}",
                                      "body cut short or not JSON") from None
        except aiohttp.ClientSSLError as exc:
            raise ServerFault(f"cannot talk TLS to {self.shown_url} ({exc.__class__.__name__}: {_ssl_reason(exc)}): if the "
                              "server speaks plain HTTP, write http:// in VLLM_BASE_URL; if it is HTTPS, check its certificate",
                              "TLS handshake fails") from None
        except aiohttp.ClientConnectorError as exc:
            raise ServerFault(
                f"cannot connect to {self.shown_url} ({exc.os_error or exc}): is the server running on that host "
                "and port? Check with `python scripts/test_vllm_server.py --base-url URL`", "connection refused or dropped"
            ) from None
        except asyncio.TimeoutError:
            if timeout:
                raise ServerFault(f"{url} did not answer a start-up probe within {timeout:g} s", "timeout") from None
            raise ServerFault(f"{url} did not answer within {self._http.timeout.total:.0f} s (VLLM_TIMEOUT_SECONDS)", "timeout") from None
        except aiohttp.ClientError as exc:
            raise ServerFault(f"{url}: connection lost ({type(exc).__name__}: {exc})", "connection refused or dropped") from None

    def _raise_for_status(self, status: int, text: str, headers: Any, url: str) -> None:
        said = redact(server_message(text), self._api_key)
        fault = classify_status(status, said)
        message = redact(explain_status(status, said, url, "VLLM_API_KEY", self.top_k), self._api_key)
        if fault == "prompt longer than the context":
            raise PromptTooLong(message, SERVER_FIX)
        wait = requested_wait(headers) if fault == "rate limited" else None
        raise HTTPStatusError(message, fault, status, said, *(wait or (None, ""))) from None

    # -- engine counters ------------------------------------------------------------------------------

    def refresh_engine_stats(self) -> None:
        """Token counts from the server's /metrics since this client started.

        The ``usage`` of a list request is not reliable for this (llama.cpp reports one prompt's count), and
        it never says what came from the prefix cache. Counts include any other client of the same server.
        A /metrics that fails leaves the counts as they were: they are statistics, never a reason to stop.
        """
        now = self._http.run(token_counters(self._fetch_text))
        if now is None or self._tokens_at_start is None:
            if not self._counters_missing_noted:
                self._counters_missing_noted = True
                note(f"{self.shown_url}/metrics gave no prompt-token counters; the run's engine token counts are unknown")
            return
        sent, cached = now[0] - self._tokens_at_start[0], now[1] - self._tokens_at_start[1]
        self.stats.prompt_tokens, self.stats.computed_tokens = int(sent), int(sent - cached)

    # -- one request ----------------------------------------------------------------------------------

    async def _attempt(self, prompts: Sequence[str]) -> list[NextTokenLogprobs]:
        """One completions request for ``prompts`` (a list when there are several), its answers checked."""
        self.stats.requests += 1
        try:
            response = await self._request("POST", "/v1/completions", self.request.body(prompts[0] if len(prompts) == 1 else prompts))
            return self._checked_answers(response, len(prompts))
        except HTTPStatusError as exc:
            if exc.fault.name == "list prompts refused" and len(prompts) > 1 and self.list_prompts_supported is not True:
                raise ListFallback(f"refuses a list of prompts (HTTP {exc.status})") from None
            raise

    def _checked_answers(self, response: Any, n_prompts: int) -> list[NextTokenLogprobs]:
        url = self.shown_url + "/v1/completions"
        try:
            # Asked for named tokens, the label check below is the stronger one.
            answers = parse_completion_logprobs(response, n_prompts, min_entries=0 if self.label_tokens else MIN_ENTRIES)
        except ServerSaidError as exc:  # a 200 whose body is an error: read like any error answer
            self._raise_for_status(200, json.dumps({"error": {"message": exc.server_message}}), {}, url)
            raise  # unreachable: _raise_for_status always raises
        except MalformedResponse as exc:
            if exc.fault == "choice indices wrong":
                raise ListFallback(f"answers a list of {n_prompts} prompts with broken choices ({exc})") from None
            raise ServerFault(f"{url}: {exc}", exc.fault) from None
        if self.label_tokens:
            wanted = set(self.label_tokens.values())
            for position, answer in enumerate(answers):
                missing = wanted - {token for token, _ in answer}
                if missing:
                    raise ServerFault(f"{url}: asked for the exact logprobs of the label tokens, the answer to prompt "
                                      f"{position} lacks {sorted(missing)}; the server stopped honouring logprob_token_ids. "
                                      "Pass --label-logprobs topk", "exact label logprobs missing")
        return answers

    async def _post(self, prompts: Sequence[str]) -> list[NextTokenLogprobs]:
        """``prompts`` in one request, asked again as the RetryPolicy says. After a 5xx twice in a row, the
        failing request is looked into (``_isolate``)."""
        return await with_retries(lambda: self._attempt(prompts), self._wait("/v1/completions"), on_retry=self._count_retry,
                                  after_repeated_server_errors=lambda last: self._isolate(prompts, last))

    def _wait(self, what: str) -> RetryWait:
        return RetryWait(self.retry_policy, self.shown_url + what, self._jitter)

    def _count_retry(self) -> None:
        self.retries += 1

    async def _try_once(self, prompt: str) -> NextTokenLogprobs | ServerFault:
        """One prompt, one try: its answer, or the transient fault it met. Permanent faults raise."""
        try:
            return (await self._attempt([prompt]))[0]
        except ServerFault as exc:
            if not exc.retryable:
                raise
            return exc

    async def _isolate(self, prompts: Sequence[str], last: str) -> Optional[list[NextTokenLogprobs]]:
        """After repeated HTTP 500s on ``prompts``, ask a one-line probe, and if the server answers it, the
        request once more. Then: None if the server fails as a whole (keep retrying); the answers if the request
        now works, or if each prompt alone is answered (and then ListFallback: lists are what it can't take);
        PromptsRejected naming the prompts that fail on their own, twice, while the server answers others."""
        if isinstance(await self._try_once(EXACT_LOGPROBS_PROBE), ServerFault):
            return None
        try:  # the server answers: one more try of the request itself tells a fault that cleared from one that stays
            return await self._attempt(prompts)
        except ServerFault as exc:
            if not exc.retryable:
                raise
        results: list[Any] = await gather_limited(prompts, self._try_once, SINGLE_PROMPT_CONCURRENCY)
        failing = [i for i, result in enumerate(results) if isinstance(result, ServerFault)]
        if len(prompts) > 1 and len(failing) == len(prompts):
            return None  # every prompt fails alone too: the server is in trouble after all
        if failing:  # ask those once more, so that a passing blip is not taken for a prompt the server can't answer
            await sleep_unless_stopped(self.retry_policy.backoff_seconds)
            again = await gather_limited([prompts[i] for i in failing], self._try_once, SINGLE_PROMPT_CONCURRENCY)
            for i, result in zip(failing, again):
                results[i] = result
            failing = [i for i in failing if isinstance(results[i], ServerFault)]
        if not failing:
            if len(prompts) > 1 and self.list_prompts_supported is not True:
                raise ListFallback(f"fails on a list of {len(prompts)} prompts ({last}) but answers each of them alone",
                                   answers=results)
            return results
        raise PromptsRejected(
            f"{self.shown_url} fails on {len(failing)} prompt(s) of {len(prompts)} every time they are sent, even alone, while "
            f"it answers the others and a one-line probe (last: {results[failing[0]]}). The likely cause is in those prompts "
            "themselves: a logprob the server can't write as JSON (NaN or infinity), or text its tokenizer rejects",
            failing)

    # -- a pool's prompts ---------------------------------------------------------------------------------

    def _fall_back_to_singles(self, reason: str) -> None:
        if self.list_prompts_supported is not False:
            self.list_prompts_supported = False
            print(f"note: {self.shown_url} {reason}; sending prompts one per request, {SINGLE_PROMPT_CONCURRENCY} at a "
                  "time, from now on", file=sys.stderr, flush=True)

    async def _score_singly(self, prompts: Sequence[str]) -> list[NextTokenLogprobs]:
        async def one(i: int) -> NextTokenLogprobs:
            return (await _located(self._post([prompts[i]]), range(i, i + 1)))[0]

        return await gather_limited(range(len(prompts)), one, SINGLE_PROMPT_CONCURRENCY)

    async def _score_chunk(self, chunk: Sequence[str]) -> list[NextTokenLogprobs]:
        if len(chunk) == 1 or self.list_prompts_supported is False:
            return await self._score_singly(chunk)
        try:
            answers = await self._post(chunk)
        except ListFallback as fallback:
            self._fall_back_to_singles(fallback.reason)
            return fallback.answers if fallback.answers is not None else await self._score_singly(chunk)
        self.list_prompts_supported = True
        return answers

    async def score_batch(self, prompts: Sequence[str]) -> list[NextTokenLogprobs]:
        """The prompts' logprobs on this client's loop (a multi-endpoint route awaits several at once)."""
        size = self.max_prompts_per_request
        starts = list(range(0, len(prompts), size))
        chunks = [prompts[i:i + size] for i in starts]

        async def chunk_at(k: int) -> list[NextTokenLogprobs]:
            return await _located(self._score_chunk(chunks[k]), range(starts[k], starts[k] + len(chunks[k])))

        if self.list_prompts_supported is None and len(chunks) > 1 and size > 1:
            # Learn whether lists work on the first chunk before sending the rest at once.
            answers = [await chunk_at(0), *await gather_limited(range(1, len(chunks)), chunk_at, SINGLE_PROMPT_CONCURRENCY)]
        else:
            answers = await gather_limited(range(len(chunks)), chunk_at, SINGLE_PROMPT_CONCURRENCY)
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
        """Token ids of each text from the server's /tokenize."""
        async def one(text: str) -> list[int]:
            answer = await self._request("POST", "/tokenize", tokenize_body(self.model, text), PROBE_TIMEOUT_SECONDS)
            tokens = answer.get("tokens") if isinstance(answer, dict) else None
            if not isinstance(tokens, list):
                raise ScoringError(f"{self.shown_url}/tokenize answered without a token list")
            return tokens

        return self._http.run(gather_limited(texts, one, SINGLE_PROMPT_CONCURRENCY))

    def send_prompts_singly(self) -> None:
        self.list_prompts_supported = False  # prompts then go singly, SINGLE_PROMPT_CONCURRENCY at once

    def describe(self) -> dict:
        return {"endpoint": self.shown_url, "server_version": self.server_version,
                "label_logprobs": "exact" if self.label_tokens else "top-k", "retries": self.retries}

    def close(self) -> None:
        if self._owns_http:
            self._http.close()


async def _located(work: Any, positions: range) -> list[NextTokenLogprobs]:
    """``await work``, with a PromptsRejected from it re-aimed at ``positions`` (the prompts' places in the
    caller's list)."""
    try:
        return await work
    except PromptsRejected as exc:
        raise PromptsRejected(str(exc), [positions[i] for i in exc.positions]) from None


def _ssl_reason(exc: BaseException) -> str:
    reason = getattr(exc, "os_error", None) or exc
    return str(getattr(reason, "reason", None) or reason)[:120]
