"""A pretend vLLM on 127.0.0.1 with no model behind it, whose label log-odds the test sets, for the health check's
prefix-cache self-test (scripts/test_vllm_server.py).

    server = ScoreDriftStandIn(scores=[2.0, -1.0, ...], cached_drift=-0.1, exact_drift=0.0).start()
    ...
    server.stop()

A prompt of the self-test starts "Probe <run>-<i>."; its label log-odds is ``scores[i]`` (any other prompt: 0.5),
plus ``cached_drift`` when the request says ``cache_prompt: true`` (the self-test's cached passes), plus
``exact_drift`` when it asks for ``logprob_token_ids``. The top 20 hold " True" and " False" with 90% of the
probability and 18 other tokens. /metrics counts prompt characters as vLLM's prefix-cache counters, a prompt
extending one seen before being served that much from the cache. ``exact=False``: no /version, so no exact
logprobs (as llama.cpp).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Optional

from aiohttp import web

from tests.threaded_app import ThreadedApp

LABEL_MASS = 0.9
FILLERS = [f" x{i}" for i in range(18)]
TOKEN_IDS = {" True": 1, " False": 2, "True": 3, "False": 4, " true": 5, " false": 6, "true": 7, "false": 8}
PROBE = re.compile(r"^Probe [0-9a-f]+-(\d+)\.")


@dataclass
class ScoreDriftStandIn:
    scores: list[float]
    cached_drift: float = 0.0
    exact_drift: float = 0.0
    exact: bool = True
    url: str = ""
    seen: list[str] = field(default_factory=list)
    queries: int = 0
    hits: int = 0

    def score(self, prompt: str, cached: bool, exact: bool) -> float:
        match = PROBE.match(prompt)
        base = self.scores[int(match.group(1))] if match else 0.5
        return base + (self.cached_drift if cached else 0.0) + (self.exact_drift if exact else 0.0)

    def top(self, score: float, named: Optional[list[int]]) -> dict[str, float]:
        p_true = LABEL_MASS / (1 + math.exp(-score))
        top = {" True": math.log(p_true), " False": math.log(LABEL_MASS - p_true)}
        if named:
            by_id = {i: t for t, i in TOKEN_IDS.items()}
            return {by_id[i]: top.get(by_id[i], -12.0) for i in named}
        return {**top, **{token: math.log((1 - LABEL_MASS) / len(FILLERS)) for token in FILLERS}}

    def count(self, prompt: str) -> None:
        self.queries += len(prompt)
        self.hits += max((len(p) for p in self.seen if prompt.startswith(p)), default=0)
        self.seen.append(prompt)

    async def _completions(self, request: web.Request) -> web.Response:
        body = await request.json()
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        named = body.get("logprob_token_ids") if self.exact else None
        choices = []
        for index, prompt in enumerate(prompts):
            self.count(prompt)
            top = self.top(self.score(prompt, body.get("cache_prompt") is True, bool(named)), named)
            token = max(top, key=top.get)
            choices.append({"index": index, "text": token, "finish_reason": "length",
                            "logprobs": {"tokens": [token], "token_logprobs": [top[token]], "top_logprobs": [top],
                                         "text_offset": [0]}})
        return web.json_response({"object": "text_completion", "model": body.get("model"), "choices": choices})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "stand-in", "max_model_len": 8192}]})

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.32.0"}) if self.exact else web.Response(status=404)

    async def _tokenize(self, request: web.Request) -> web.Response:
        text = (await request.json())["prompt"]
        return web.json_response({"tokens": [TOKEN_IDS[text]] if text in TOKEN_IDS else [100, 101]})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=f"vllm:prefix_cache_queries_total {self.queries}\nvllm:prefix_cache_hits_total {self.hits}\n")

    def start(self) -> "ScoreDriftStandIn":
        async def make_app() -> web.Application:
            app = web.Application()
            app.router.add_post("/v1/completions", self._completions)
            app.router.add_get("/v1/models", self._models)
            app.router.add_get("/health", self._health)
            app.router.add_get("/version", self._version)
            app.router.add_post("/tokenize", self._tokenize)
            app.router.add_get("/metrics", self._metrics)
            return app

        self._app = ThreadedApp(make_app, "score-drift stand-in")
        self.url = self._app.start()
        return self

    def stop(self) -> None:
        self._app.stop()
