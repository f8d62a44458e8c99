"""ModelAPI: the one scoring interface of the project, routing to a model backend.

Routes: ``embedded`` (llama.cpp in-process; used when no server is configured). The vLLM and external
routes plug in here as their clients land.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from core.llm_api.base_llm import DEFAULT_TOP_K, RouteStats, ScoringRoute
from core.llm_api.logprobs import NextTokenLogprobs
from core.llm_api.model_files import resolve_embedded_model
from core.llm_api.settings import Settings, load_settings


class RouteUnavailable(RuntimeError):
    pass


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
    ) -> None:
        self.settings = settings or load_settings()
        self.deterministic = deterministic
        self.top_k = top_k
        self._route = route or self._choose_route(model, show_progress)

    def _choose_route(self, model: Optional[str], show_progress: bool) -> ScoringRoute:
        if self.settings.vllm_base_url or self.settings.llama_api_base:
            raise RouteUnavailable(
                "VLLM_BASE_URL / LLAMA_API_BASE is set, but this version has only the embedded route: "
                "unset them to run on the embedded model"
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

    def describe(self) -> dict:
        return {"route": self.route_name, "model": self.model, "deterministic": self.deterministic, "top_k": self.top_k}

    def close(self) -> None:
        self._route.close()

    def __enter__(self) -> "ModelAPI":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
