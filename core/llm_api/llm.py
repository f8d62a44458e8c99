"""ModelAPI: the one scoring interface of the project, routing to a model backend.

Routes: ``vllm`` (an OpenAI-compatible server at VLLM_BASE_URL: vLLM, or llama.cpp's server from
scripts/serve_local.py), ``external`` (a hosted completions API at LLAMA_API_BASE, rate limited) and
``embedded`` (llama.cpp in-process, used when no server is configured).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

from core.errors import UserError
from core.llm_api.base_llm import DEFAULT_TOP_K, RouteStats, ScoringRoute
from core.llm_api.faults import PromptsRejected
from core.llm_api.logprobs import NextTokenLogprobs
from core.llm_api.response_cache import ResponseCache, request_key
from core.llm_api.route_settings import RouteChoices
from core.llm_api.routes import RouteUnavailable, build_route, choose_route  # noqa: F401  (callers import them from here)
from core.llm_api.settings import Settings, load_settings


class ModelAPI:
    """Scores lists of prompts: each prompt's next-token top-k logprobs, one batched call per list."""

    def __init__(
        self,
        model: Optional[str] = None,
        *,
        deterministic: bool = False,
        top_k: int = DEFAULT_TOP_K,
        settings: Optional[Settings] = None,
        route: Optional[ScoringRoute] = None,
        show_progress: bool = True,
        exact_label_logprobs: bool = True,
        use_vllm: Optional[bool] = None,
        cache_dir: Optional[Path] = None,
        worth_caching: Callable[[NextTokenLogprobs], bool] = lambda answer: True,
    ) -> None:
        """``worth_caching`` says which answers the response cache may keep: the scorer passes "holds a label
        token", so that an answer with no label information is asked again next time, never replayed.

        ``route`` is an already-built route (tests, benchmarks); otherwise the route is chosen from ``settings``
        and ``use_vllm`` (core/llm_api/routes.py) and opened here. Only the hosted route is rate limited."""
        self.settings = settings or load_settings()
        self.worth_caching = worth_caching
        self.deterministic = deterministic
        self.top_k = top_k
        self.exact_label_logprobs = exact_label_logprobs
        # The cache first: a cache that can't be opened should not cost a model load or a server probe.
        self.cache = ResponseCache(cache_dir) if cache_dir is not None else None
        try:
            choices = RouteChoices(model, top_k, deterministic, exact_label_logprobs, show_progress)
            self._route = route or build_route(choose_route(self.settings, use_vllm), self.settings, choices)
            if route is None:
                self._route.open()
        except BaseException:
            if self.cache is not None:
                self.cache.close()
            raise

    @property
    def route_name(self) -> str:
        return self._route.name

    @property
    def model(self) -> str:
        return self._route.model

    @property
    def stats(self) -> RouteStats:
        return self._route.stats

    def cache_identity(self) -> dict:
        """Everything besides the prompt that decides the answer."""
        return {
            "route": self.route_name, "model": self.model, "top_k": self._route.top_k,
            "deterministic": self.deterministic, "label_token_ids": self._route.label_token_ids,
        }

    def next_token_logprobs(self, prompts: Sequence[str]) -> list[NextTokenLogprobs]:
        """One batched call for all prompts the cache doesn't already answer. Every answer the route returns
        has passed its checks (core/llm_api/logprobs.py); a PromptsRejected names positions in ``prompts``."""
        if self.cache is None:
            return self._route.next_token_logprobs(prompts)
        identity = self.cache_identity()
        keys = [request_key(identity, p) for p in prompts]
        known = self.cache.get_many(keys)
        missing = [i for i, key in enumerate(keys) if key not in known]
        self.cache.hits += len(prompts) - len(missing)
        self.cache.misses += len(missing)
        if missing:
            try:
                answers = self._route.next_token_logprobs([prompts[i] for i in missing])
            except PromptsRejected as exc:
                raise PromptsRejected(str(exc), [missing[i] for i in exc.positions]) from None
            fresh = {keys[i]: answer for i, answer in zip(missing, answers)}
            self.cache.put_many({key: answer for key, answer in fresh.items() if self.worth_caching(answer)})
            known.update(fresh)
        return [known[key] for key in keys]

    @property
    def returned_top_k(self) -> int:
        """How many next-token logprobs each answer holds (the route's own k: API_TOP_K on the hosted route)."""
        return self._route.top_k

    @property
    def context_tokens(self) -> Optional[int]:
        """The longest prompt the model takes, in tokens, where the route knows it (None: unknown)."""
        return self._route.context_tokens

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's token ids from the engine's own tokenizer (embedded and vLLM routes)."""
        return self._route.tokenize(texts)

    def send_prompts_singly(self) -> None:
        """From now on, send each prompt as a request of its own (as the reference code does).

        Only benchmarks want this: it reproduces the reference's request pattern on the same engine.
        """
        self._route.send_prompts_singly()

    def refresh_stats(self) -> RouteStats:
        """Bring token counts up to date (a server route reads them from /metrics) and return the stats."""
        self._route.refresh_engine_stats()
        return self._route.stats

    def describe(self) -> dict:
        """The route and model for summary.json, with the route's own facts (endpoint, retries, ...)."""
        return {"route": self.route_name, "model": self.model, "deterministic": self.deterministic,
                "top_k": self.top_k, **self._route.describe()}

    def close(self) -> None:
        self._route.close()
        if self.cache is not None:
            self.cache.close()

    def __enter__(self) -> "ModelAPI":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
