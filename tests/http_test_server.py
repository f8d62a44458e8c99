"""A test server on 127.0.0.1 that forwards to a real upstream (llama.cpp's server) and records each request.

Its switches make the faults the client must handle: choices answered out of order, list prompts refused
with 400 and the reason, or with a bare 500 (as llama-cpp-python's server does), a pretend vLLM (/version, /tokenize in vLLM's shape) that
honours ``logprob_token_ids`` or ignores it, so that the exact-label-logprobs detection can be checked, a per-second request limit answered with
429 + Retry-After, the first N completions failing with 503 or stalling past the client's timeout, extra
response headers, a 401 whose body echoes the Authorization header back, and for the first N completions a
reset connection, a body cut short, a non-JSON body or a choice missing; missing logprobs; and a scripted
error answer (status and message).
"""
from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import aiohttp
from aiohttp import web

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
        text = json.dumps(answer)
        faults = [(self.truncate_first, lambda t: t[: len(t) // 2]),
                  (self.nonjson_first, lambda t: "<html><body>502 Bad Gateway</body></html>"),
                  (self.drop_choice_first, lambda t: json.dumps({**answer, "choices": answer["choices"][:-1]}))]
        for first, mangle in faults:
            if number <= first:
                return mangle(text)
        return text

    async def _fault(self, request: web.Request, number: int) -> Optional[web.Response]:
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
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)

            async def up() -> None:
                self._session = aiohttp.ClientSession()
                app = web.Application()
                app.router.add_route("*", "/{tail:.*}", self._handle)
                self._runner = web.AppRunner(app)
                await self._runner.setup()
                site = web.TCPSite(self._runner, "127.0.0.1", 0)
                await site.start()
                self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

            self._loop.run_until_complete(up())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self.url

    def stop(self) -> None:
        async def down() -> None:
            await self._session.close()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(down(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
