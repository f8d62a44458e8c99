"""Each route's own settings, built in one place from the run's Settings (SECRETS and the environment) and
what the run asks of any route (RouteChoices). A route's constructor takes its dataclass and nothing else
from the settings; every default lives in core/llm_api/settings.py.

Refusals that depend on the route (API_TOP_K below 2 matters only to the hosted route) are made here, when
that route's settings are built, so a setting that does not apply to the chosen route never stops a run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from core.llm_api.base_llm import DEFAULT_TOP_K, ScoringError
from core.llm_api.model_files import resolve_embedded_model
from core.llm_api.retry_waits import RetryPolicy
from core.llm_api.settings import Settings, SettingsError, split_url_list

MIN_TOP_K = 2  # one True/False comparison needs both label tokens among the returned logprobs


@dataclass(frozen=True)
class RouteChoices:
    """What the run asks of whichever route serves it (flags, not settings)."""

    model: Optional[str] = None  # None: the route's own (the server's first model, or the bundled SmolLM2)
    top_k: int = DEFAULT_TOP_K  # logprobs asked per answer on the vLLM and embedded routes (the hosted: API_TOP_K)
    deterministic: bool = False
    exact_label_logprobs: bool = True  # ask vLLM for the label tokens' own logprobs where it offers them
    show_progress: bool = True


@dataclass(frozen=True)
class VLLMRouteSettings:
    base_urls: tuple[str, ...]  # one or more replicas of one model (VLLM_BASE_URL, comma-separated)
    api_key: Optional[str] = field(repr=False)
    model: Optional[str]
    top_k: int
    deterministic: bool
    exact_label_logprobs: bool
    timeout_seconds: float
    max_prompts_per_request: int
    retry: RetryPolicy
    health_poll_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings, choices: RouteChoices) -> "VLLMRouteSettings":
        return cls(
            base_urls=tuple(split_url_list(settings.vllm_base_url or "")), api_key=settings.vllm_api_key,
            model=choices.model, top_k=choices.top_k, deterministic=choices.deterministic,
            exact_label_logprobs=choices.exact_label_logprobs, timeout_seconds=settings.vllm_timeout_seconds,
            max_prompts_per_request=settings.vllm_max_prompts_per_request,
            retry=RetryPolicy("VLLM", settings.vllm_backoff_seconds, settings.vllm_backoff_max_seconds,
                              settings.vllm_retry_seconds, settings.vllm_max_retries),
            health_poll_seconds=settings.vllm_health_poll_seconds,
        )


@dataclass(frozen=True)
class ExternalRouteSettings:
    base_url: str
    api_key: Optional[str] = field(repr=False)
    model: str
    top_k: int  # API_TOP_K: what the provider returns (OpenAI's legacy completions: at most 5)
    concurrency: int
    timeout_seconds: float
    retry: RetryPolicy
    requests_per_minute: Optional[float]  # None: no limit of our own (the provider's headers may still set one)
    tokens_per_minute: Optional[float]

    @classmethod
    def from_settings(cls, settings: Settings, choices: RouteChoices) -> "ExternalRouteSettings":
        """Raises ScoringError without --model, SettingsError for an API_TOP_K below 2."""
        if not choices.model:
            raise ScoringError("the hosted API route needs --model: the provider's name of a base model with logprobs (e.g. davinci-002)")
        if settings.api_top_k < MIN_TOP_K:
            raise SettingsError(f"API_TOP_K={str(settings.api_top_k)!r} ({settings.source}) must be at least {MIN_TOP_K}: the label "
                                "score compares the ' True' and ' False' logprobs, so both must be among those returned (a "
                                "provider that allows only 1 can't be used)")
        return cls(
            base_url=settings.llama_api_base or "", api_key=settings.api_key, model=choices.model, top_k=settings.api_top_k,
            concurrency=settings.api_concurrency, timeout_seconds=settings.api_timeout_seconds,
            retry=RetryPolicy("API", settings.api_backoff_seconds, settings.api_backoff_max_seconds,
                              settings.api_retry_seconds, settings.api_max_retries),
            requests_per_minute=settings.api_requests_per_minute, tokens_per_minute=settings.api_tokens_per_minute,
        )


@dataclass(frozen=True)
class EmbeddedRouteSettings:
    model_path: Path
    top_k: int
    deterministic: bool
    slots: int
    ctx_per_slot: int  # tokens of context each slot holds
    cache_ram_mib: int  # llama.cpp's RAM prompt cache; 0: none
    threads: Optional[int]  # None: one per CPU
    show_progress: bool

    @classmethod
    def from_settings(cls, settings: Settings, choices: RouteChoices) -> "EmbeddedRouteSettings":
        """Raises ModelFileMissing when --model names no usable .gguf file (or SmolLM2 is not installed)."""
        return cls(
            model_path=resolve_embedded_model(choices.model), top_k=choices.top_k, deterministic=choices.deterministic,
            slots=settings.embedded_slots, ctx_per_slot=settings.embedded_ctx_per_slot,
            cache_ram_mib=settings.embedded_cache_ram_mib, threads=settings.embedded_threads,
            show_progress=choices.show_progress,
        )
