"""A test server on 127.0.0.1 that forwards to a real upstream (llama.cpp's server) and records each request.

Its switches make the faults the client must handle: choices answered out of order, list prompts refused
with 400 and the reason, or with a bare 500 (as llama-cpp-python's server does), a pretend vLLM (/version, /tokenize in vLLM's shape) that
honours ``logprob_token_ids`` or ignores it, so that the exact-label-logprobs detection can be checked, a per-second request limit answered with
429 + Retry-After, the first N completions failing with 503 or stalling past the client's timeout, extra
response headers, a 401 whose body echoes the Authorization header back, and for the first N completions a
reset connection, a body cut short, a non-JSON body or a choice missing; missing logprobs; and a scripted
error answer (status and message).

Answer shapes that real servers have been reported to send (../shared/notes/serving-facts.md), each a switch:
vLLM's dict shape of top_logprobs, keyed by token text or by ``token_id:N``; every entry but the top one as
-9999.0; a logprob written as a string, Infinity, NaN or 800, or an entry with no token; label words removed
from every answer; every choice of a list at index 0; an older llama.cpp's own format (no ``choices``, a JSON
array for a list); a 500 for any request that holds a poisoned prompt; a raw error body of any shape and
status; and 429s carrying given rate-limit headers.
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Optional

import aiohttp
from aiohttp import web

from tests.threaded_app import ThreadedApp

VOCABULARY_SIZE = 49152  # SmolLM2's


@dataclass
class Seen:
    method: str
    path: str
    body: Optional[dict]
    at: float = field(default_factory=time.monotonic)  # when it arrived

    @property
    def n_prompts(self) -> int:
        prompt = (self.body or {}).get("prompt")
        return len(prompt) if isinstance(prompt, list) else 1


@dataclass
class ForwardingTestServer:
    upstream: str
    shuffle_choices: bool = False
    reject_lists: Optional[int] = None  # the status a list of prompts is refused with: 400 says why, 500 doesn't
    pretend_vllm_version: Optional[str] = None
    honour_logprob_token_ids: bool = False
    # While a stalled completion hangs, /health answers 503 this many times (an engine that died, then came back).
    unhealthy_while_stalling: int = 0
    requests_per_second: Optional[int] = None
    fail_first: int = 0
    fail_status: int = 503
    stall_first: int = 0
    stall_seconds: float = 5.0
    extra_headers: dict = field(default_factory=dict)
    echo_key_with_401: bool = False
    reset_first: int = 0
    truncate_first: int = 0
    nonjson_first: int = 0
    drop_choice_first: int = 0
    drop_logprobs: bool = False
    error_answer: Optional[tuple[int, str]] = None
    stall_model_list_once: float = 0.0  # the first GET /v1/models hangs this long (a server busy starting up)
    vllm_shape: bool = False  # top_logprobs as vLLM writes them: one {token text: logprob} dict per token
    token_id_keys: bool = False  # vLLM's --return-tokens-as-token-ids: keys "token_id:<id>"
    sentinel_after_top: bool = False  # every top-k entry but the first written as -9999.0
    bad_logprob: Optional[str] = None  # on the top entry: "string", "infinity", "nan", "huge" (800), "no_token"; "shape": none known
    drop_label_words_from: Optional[int] = None  # from the N-th completion on (1 = all), no True/False token in any top-k
    choices_at_index_zero: bool = False  # a list answered with every choice at index 0
    own_format: bool = False  # an older llama.cpp: no `choices`, and a JSON array for a list
    # Any completion request holding a prompt whose last block (the claim it asks about) has this text is answered 500,
    # as a server does whose logprobs for that prompt can't be written as JSON.
    poison: Optional[str] = None
    refuse: Optional[str] = None  # any completion request holding a prompt with this text is answered 404 at once
    error_body: Optional[tuple[int, str]] = None  # (status, raw body) for every completion
    rate_limit_first: int = 0  # the first N completions are answered 429 with rate_limit_headers
    rate_limit_headers: dict = field(default_factory=dict)
    metrics_stall: float = 0.0  # every GET /metrics hangs this long (an optional endpoint that stalls)
    version_body: Optional[str] = None  # what GET /version answers with 200 (garbage, or JSON with no version)
    seen: list[Seen] = field(default_factory=list)
    accepted_at: list[float] = field(default_factory=list)  # when each completion was let through
    accepted: list[Seen] = field(default_factory=list)
    refused_429: int = 0
    _stalling: int = 0

    def completions(self) -> list[Seen]:
        return [s for s in self.seen if s.path == "/v1/completions"]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        self.seen.append(Seen(request.method, request.path, body))
        if request.path == "/health" and self.unhealthy_while_stalling > 0 and self._stalling:
            self.unhealthy_while_stalling -= 1
            return web.Response(status=503)
        if request.path == "/v1/models" and self.stall_model_list_once:
            stall, self.stall_model_list_once = self.stall_model_list_once, 0.0
            await asyncio.sleep(stall)
        if request.path == "/metrics" and self.metrics_stall:
            await asyncio.sleep(self.metrics_stall)
        if request.path == "/version" and self.version_body is not None:
            return web.Response(text=self.version_body, status=200, content_type="application/json")
        if request.path == "/version" and self.pretend_vllm_version:
            return web.json_response({"version": self.pretend_vllm_version})
        if request.path == "/tokenize" and self.pretend_vllm_version:
            # vLLM's shape in, llama.cpp's shape upstream.
            body = {"content": body["prompt"], "add_special": body.get("add_special_tokens", False)}
        if request.path == "/v1/completions":
            refusal = await self._fault(request, len(self.completions()))
            if refusal is not None:
                return refusal
            self.accepted_at.append(time.monotonic())
            self.accepted.append(self.seen[-1])
        wanted_ids = (body or {}).get("logprob_token_ids") if self.honour_logprob_token_ids else None
        if wanted_ids:
            # llama.cpp has no such field: ask it for the whole vocabulary's logprobs and keep the named ids.
            body = {**body, "logprobs": VOCABULARY_SIZE}
        headers = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
        async with self._session.request(request.method, self.upstream + request.path, json=body, headers=headers) as upstream:
            text = await upstream.text()
            status = upstream.status
        if request.path == "/v1/completions" and status == 200:
            if wanted_ids:
                text = self._keep_ids(text, set(wanted_ids))
            text = self._mangle(text, len(self.completions()))
        return web.Response(text=text, status=status, content_type="application/json", headers=self.extra_headers)

    @staticmethod
    def _keep_ids(text: str, ids: set) -> str:
        answer = json.loads(text)
        for choice in answer["choices"]:
            first = choice["logprobs"]["content"][0]
            first["top_logprobs"] = [entry for entry in first["top_logprobs"] if entry["id"] in ids]
        return json.dumps(answer)

    def _mangle(self, text: str, number: int) -> str:
        answer = json.loads(text)
        if self.shuffle_choices:
            random.Random(len(self.seen)).shuffle(answer["choices"])
        if self.drop_logprobs:
            for choice in answer["choices"]:
                choice["logprobs"] = None
        self._reshape(answer, number)
        if self.own_format:
            own = [{"content": c.get("text", ""), "completion_probabilities": c["logprobs"]} for c in answer["choices"]]
            return json.dumps(own if len(own) > 1 else own[0])
        text = json.dumps(answer)
        faults = [(self.truncate_first, lambda t: t[: len(t) // 2]),
                  (self.nonjson_first, lambda t: "<html><body>502 Bad Gateway</body></html>"),
                  (self.drop_choice_first, lambda t: json.dumps({**answer, "choices": answer["choices"][:-1]}))]
        for first, mangle in faults:
            if number <= first:
                return mangle(text)
        return text

    def _reshape(self, answer: dict, number: int) -> None:
        """The answer-shape switches, applied to llama.cpp's answer in place."""
        for choice in answer["choices"]:
            logprobs = choice.get("logprobs")
            if not logprobs:
                continue
            entries = logprobs["content"][0]["top_logprobs"]
            if self.drop_label_words_from is not None and number >= self.drop_label_words_from:
                entries[:] = [e for e in entries if e["token"].strip().lower() not in ("true", "false")]
            if self.sentinel_after_top:
                for entry in entries[1:]:
                    entry["logprob"] = -9999.0
            if self.bad_logprob == "shape":
                choice["logprobs"] = {"tokens": [entries[0]["token"]], "top_logprobs": []}
                continue
            if self.bad_logprob == "no_token":
                entries[0]["token"] = None
            elif self.bad_logprob:
                entries[0]["logprob"] = {"string": str(entries[0]["logprob"]), "infinity": float("inf"),
                                         "nan": float("nan"), "huge": 800.0}[self.bad_logprob]
            if self.vllm_shape or self.token_id_keys:
                key = (lambda e: f"token_id:{e['id']}") if self.token_id_keys else (lambda e: e["token"])
                choice["logprobs"] = {"tokens": [key(entries[0])], "token_logprobs": [entries[0]["logprob"]],
                                      "top_logprobs": [{key(e): e["logprob"] for e in entries}], "text_offset": [0]}
        if self.choices_at_index_zero and len(answer["choices"]) > 1:
            for choice in answer["choices"]:
                choice["index"] = 0

    async def _fault(self, request: web.Request, number: int) -> Optional[web.Response]:
        if self.error_body is not None:
            status, text = self.error_body
            return web.Response(text=text, status=status, content_type="application/json" if text.lstrip()[:1] in "{[" else "text/plain")
        if number <= self.rate_limit_first:
            return web.json_response({"error": {"message": "rate limited"}}, status=429, headers=self.rate_limit_headers)
        prompt = (self.seen[-1].body or {}).get("prompt")
        prompts = prompt if isinstance(prompt, list) else [prompt]
        if self.poison and any(self.poison in p.rsplit("\n\n", 1)[-1] for p in prompts):
            return web.json_response({"error": {"message": "Internal Server Error"}}, status=500)
        if self.refuse and any(self.refuse in p for p in prompts):
            return web.json_response({"error": {"message": "The model `x` does not exist."}}, status=404)
        if self.error_answer is not None:
            status, message = self.error_answer
            return web.json_response({"error": {"message": message, "type": "BadRequestError", "code": status}}, status=status)
        if number <= self.reset_first:
            request.transport.close()  # the client sees the connection drop with no answer
            return web.Response(status=500)
        if self.echo_key_with_401:
            return web.json_response({"error": {"message": f"bad key {request.headers.get('Authorization')}"}}, status=401)
        if self.reject_lists and isinstance((self.seen[-1].body or {}).get("prompt"), list):
            message = ("Internal Server Error" if self.reject_lists >= 500 else
                       "1 validation error: ('body', 'prompt'): Input should be a valid string, not a list")
            return web.json_response({"error": {"message": message}}, status=self.reject_lists)
        if number <= self.fail_first:
            return web.json_response({"error": {"message": "overloaded"}}, status=self.fail_status)
        if number <= self.fail_first + self.stall_first:
            self._stalling += 1
            try:
                await asyncio.sleep(self.stall_seconds)
            finally:
                self._stalling -= 1
            return web.json_response({"error": {"message": "too late"}}, status=504)
        if self.requests_per_second is not None:
            now = time.monotonic()
            if sum(1 for t in self.accepted_at if now - t < 1.0) >= self.requests_per_second:
                self.refused_429 += 1
                return web.json_response({"error": {"message": "rate limited"}}, status=429, headers={"Retry-After": "1"})
        return None

    def start(self) -> str:
        async def make_app() -> web.Application:
            self._session = aiohttp.ClientSession()  # to the upstream, on the server's own loop

            async def close_session(_: web.Application) -> None:
                await self._session.close()

            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            app.on_cleanup.append(close_session)
            return app

        self._app = ThreadedApp(make_app, "forwarding test server")
        self.url = self._app.start()
        return self.url

    def stop(self) -> None:
        self._app.stop()
