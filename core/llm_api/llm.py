"""ModelAPI: the one scoring interface of the project, routing to a model backend.

Routes: ``vllm`` (an OpenAI-compatible server at VLLM_BASE_URL: vLLM, or llama.cpp's server from
scripts/serve_local.py) and ``embedded`` (llama.cpp in-process, used when no server is configured).
"""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit
from typing import Optional, Sequence

from core.llm_api.base_llm import DEFAULT_TOP_K, RouteStats, ScoringRoute
from core.llm_api.logprobs import NextTokenLogprobs
from core.llm_api.model_files import resolve_embedded_model
from core.llm_api.settings import Settings, load_settings


class RouteUnavailable(RuntimeError):
    pass


def redact_url(url: str) -> str:
    """The URL without any user:password part, for logs and summaries."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))


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
    ) -> None:
        self.settings = settings or load_settings()
        self.deterministic = deterministic
        self.top_k = top_k
        self.exact_label_logprobs = exact_label_logprobs
        self._route = route or self._choose_route(model, show_progress)

    def _choose_route(self, model: Optional[str], show_progress: bool) -> ScoringRoute:
        settings = self.settings
        if settings.vllm_base_url:
            from core.llm_api.vllm_llm import VLLMClient

            return VLLMClient(
                settings.vllm_base_url, model=model, api_key=settings.vllm_api_key, top_k=self.top_k,
                deterministic=self.deterministic, timeout_seconds=settings.vllm_timeout_seconds,
                max_prompts_per_request=settings.vllm_max_prompts_per_request,
                exact_label_logprobs=self.exact_label_logprobs,
            )
        if settings.llama_api_base:
            raise RouteUnavailable(
                "LLAMA_API_BASE is set, but the hosted-API route is not in this version: unset it, or set "
                "VLLM_BASE_URL to a vLLM server"
            )
        from core.llm_api.embedded_llm import EmbeddedLlamaCpp

        return EmbeddedLlamaCpp(
            resolve_embedded_model(model),
            top_k=self.top_k,
            deterministic=self.deterministic,
            slots=self.settings.embedded_slots,
            ctx_per_slot=self.settings.embedded_ctx_per_slot,
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

    def next_token_logprobs(self, prompts: Sequence[str]) -> list[NextTokenLogprobs]:
        return self._route.next_token_logprobs(prompts)

    def refresh_stats(self) -> RouteStats:
        """Bring token counts up to date (a server route reads them from /metrics) and return the stats."""
        refresh = getattr(self._route, "refresh_engine_stats", None)
        if refresh is not None:
            refresh()
        return self._route.stats

    def describe(self) -> dict:
        described = {"route": self.route_name, "model": self.model, "deterministic": self.deterministic, "top_k": self.top_k}
        if self.route_name == "vllm":
            described.update(
                endpoint=redact_url(self.settings.vllm_base_url or ""),
                server_version=getattr(self._route, "server_version", None),
                label_logprobs="exact" if getattr(self._route, "label_token_ids", None) else "top-k",
            )
        return described

    def close(self) -> None:
        self._route.close()

    def __enter__(self) -> "ModelAPI":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
