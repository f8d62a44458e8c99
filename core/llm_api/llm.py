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
from core.llm_api.model_files import resolve_embedded_model
from core.llm_api.rate_limits import RateLimiter
from core.llm_api.response_cache import ResponseCache, request_key
from core.llm_api.settings import Settings, load_settings, split_url_list


class RouteUnavailable(RuntimeError, UserError):
    pass


def choose_route(settings: Settings, use_vllm: Optional[bool] = None) -> str:
    """vLLM when configured (unless use_vllm is False), the hosted API when use_vllm is False or it is the only
    server configured, the embedded model when nothing is."""
    if use_vllm is False:
        if not settings.llama_api_base:
            raise RouteUnavailable("--no-vllm sends scoring to the hosted API, but LLAMA_API_BASE is not set (SECRETS or environment)")
        return "external"
    if settings.vllm_base_url:
        return "vllm"
    if use_vllm:
        raise RouteUnavailable("--use-vllm needs VLLM_BASE_URL (SECRETS or environment)")
    return "external" if settings.llama_api_base else "embedded"


def vllm_urls(settings: Settings) -> list[str]:
    """The vLLM endpoints in VLLM_BASE_URL, which may list several, comma-separated."""
    return split_url_list(settings.vllm_base_url or "")


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
        rate_limiter: Optional[RateLimiter] = None,
        cache_dir: Optional[Path] = None,
        worth_caching: Callable[[NextTokenLogprobs], bool] = lambda answer: True,
    ) -> None:
        """``worth_caching`` says which answers the response cache may keep: the scorer passes "holds a label
        token", so that an answer with no label information is asked again next time, never replayed."""
        self.settings = settings or load_settings()
        self.worth_caching = worth_caching
        self.deterministic = deterministic
        self.top_k = top_k
        self.exact_label_logprobs = exact_label_logprobs
        self.rate_limiter = rate_limiter
        # The cache first: a cache that can't be opened should not cost a model load or a server probe.
        self.cache = ResponseCache(cache_dir) if cache_dir is not None else None
        try:
            self._route = route or self._open_route(choose_route(self.settings, use_vllm), model, show_progress)
            if route is None:
                self._route.open()
        except BaseException:
            if self.cache is not None:
                self.cache.close()
            raise

    def _open_route(self, name: str, model: Optional[str], show_progress: bool) -> ScoringRoute:
        settings = self.settings
        if name == "vllm":
            from core.llm_api.vllm_llm import VLLMClient

            urls = vllm_urls(settings)
            options = dict(
                model=model, api_key=settings.vllm_api_key, top_k=self.top_k, deterministic=self.deterministic,
                timeout_seconds=settings.vllm_timeout_seconds, max_prompts_per_request=settings.vllm_max_prompts_per_request,
                exact_label_logprobs=self.exact_label_logprobs, max_retries=settings.vllm_max_retries,
                backoff_seconds=settings.vllm_backoff_seconds, retry_seconds=settings.vllm_retry_seconds,
                backoff_max_seconds=settings.vllm_backoff_max_seconds,
                health_poll_seconds=settings.vllm_health_poll_seconds,
            )
            if len(urls) > 1:
                from core.llm_api.multi_endpoint import MultiEndpointVLLM

                return MultiEndpointVLLM(urls, **options)
            return VLLMClient(urls[0], **options)
        if name == "external":
            from core.llm_api.openai_llm import ExternalAPIClient

            if self.rate_limiter is None:
                self.rate_limiter = RateLimiter(settings.api_requests_per_minute, settings.api_tokens_per_minute,
                                                settings.api_retry_seconds)
            return ExternalAPIClient(
                settings.llama_api_base, model=model, api_key=settings.api_key, limiter=self.rate_limiter,
                top_k=settings.api_top_k, concurrency=settings.api_concurrency,
                timeout_seconds=settings.api_timeout_seconds, max_retries=settings.api_max_retries,
                backoff_seconds=settings.api_backoff_seconds, backoff_max_seconds=settings.api_backoff_max_seconds,
                retry_seconds=settings.api_retry_seconds,
            )
        from core.llm_api.embedded_llm import EmbeddedLlamaCpp

        return EmbeddedLlamaCpp(
            resolve_embedded_model(model),
            top_k=self.top_k,
            deterministic=self.deterministic,
            slots=self.settings.embedded_slots,
            ctx_per_slot=self.settings.embedded_ctx_per_slot,
            cache_ram_mib=self.settings.embedded_cache_ram_mib,
            threads=self.settings.embedded_threads,
            show_progress=show_progress,
        )

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
