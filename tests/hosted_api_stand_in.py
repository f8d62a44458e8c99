"""A hosted completions API on 127.0.0.1 with no model behind it: OpenAI's legacy /v1/completions shape, one prompt
per request, each answer's logprobs from the stand-in route's rule (tests/stand_in_pipeline.py: a hash of the claim,
nudged by its demonstrations' labels) and a ``usage`` the tests can predict.

    server = HostedAPIStandIn().start()          # server.url; LLAMA_API_BASE=server.url
    ...
    server.stop()

``usage`` per answer: prompt_tokens = the prompt's whitespace-separated words (at least 1), completion_tokens =
``completion_tokens`` (what a provider reports for max_tokens 1). ``report_usage=False`` leaves ``usage`` out, as some
servers do. Every request's body and Authorization header is kept in ``seen``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from tests.threaded_app import ThreadedApp

from tests.stand_in_pipeline import PromptHashRoute


def prompt_tokens(prompt: str) -> int:
    """What the stand-in reports as a prompt's usage.prompt_tokens."""
    return max(1, len(prompt.split()))


@dataclass
class HostedAPIStandIn:
    completion_tokens: int = 1
    report_usage: bool = True
    seen: list[dict] = field(default_factory=list)  # {"body", "authorization"} per completions request
    url: str = ""

    def usage_reported(self) -> tuple[int, int]:
        """(prompt tokens, completion tokens) over every answer this server gave, as its usage reported them."""
        prompts = [s["body"]["prompt"] for s in self.seen]
        return sum(map(prompt_tokens, prompts)), self.completion_tokens * len(prompts)

    async def _completions(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.seen.append({"body": body, "authorization": request.headers.get("Authorization")})
        prompt = body["prompt"]
        top = {token: logprob for token, logprob in PromptHashRoute._answer(prompt)}
        token = max(top, key=top.get)
        answer = {"id": "cmpl-stand-in", "object": "text_completion", "model": body.get("model"),
                  "choices": [{"index": 0, "text": token, "finish_reason": "length",
                               "logprobs": {"tokens": [token], "token_logprobs": [top[token]], "top_logprobs": [top],
                                            "text_offset": [0]}}]}
        if self.report_usage:
            used = prompt_tokens(prompt)
            answer["usage"] = {"prompt_tokens": used, "completion_tokens": self.completion_tokens,
                               "total_tokens": used + self.completion_tokens}
        return web.json_response(answer)

    def start(self) -> "HostedAPIStandIn":
        async def make_app() -> web.Application:
            app = web.Application()
            app.router.add_post("/v1/completions", self._completions)
            return app

        self._app = ThreadedApp(make_app, "hosted-API stand-in")
        self.url = self._app.start()
        return self

    def stop(self) -> None:
        self._app.stop()
