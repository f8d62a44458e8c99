"""Which route serves a run (chosen here and nowhere else), and the registry that builds it.

Each entry of ROUTES says how to build the route's settings dataclass (core/llm_api/route_settings.py) from the
run's Settings and RouteChoices, and how to build the route from that dataclass. Builders import their route's
module only when called, so the HTTP routes never need llama.cpp's wheel and the embedded one never needs aiohttp.
A route's constructor does no network I/O; ``ScoringRoute.open()`` asks the server what it offers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from core.errors import UserError
from core.llm_api.base_llm import ScoringRoute
from core.llm_api.route_settings import EmbeddedRouteSettings, ExternalRouteSettings, RouteChoices, VLLMRouteSettings
from core.llm_api.settings import Settings


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


def _vllm(route_settings: VLLMRouteSettings) -> ScoringRoute:
    if len(route_settings.base_urls) > 1:
        from core.llm_api.multi_endpoint import MultiEndpointVLLM

        return MultiEndpointVLLM(route_settings)
    from core.llm_api.vllm_llm import VLLMClient

    return VLLMClient(route_settings.base_urls[0], route_settings)


def _external(route_settings: ExternalRouteSettings) -> ScoringRoute:
    from core.llm_api.openai_llm import ExternalAPIClient

    return ExternalAPIClient(route_settings)


def _embedded(route_settings: EmbeddedRouteSettings) -> ScoringRoute:
    from core.llm_api.embedded_llm import EmbeddedLlamaCpp

    return EmbeddedLlamaCpp(route_settings)


@dataclass(frozen=True)
class RouteEntry:
    settings_from: Callable[[Settings, RouteChoices], Any]  # -> the route's settings dataclass
    build: Callable[[Any], ScoringRoute]  # that dataclass -> the route, not yet opened


ROUTES: dict[str, RouteEntry] = {
    "vllm": RouteEntry(VLLMRouteSettings.from_settings, _vllm),
    "external": RouteEntry(ExternalRouteSettings.from_settings, _external),
    "embedded": RouteEntry(EmbeddedRouteSettings.from_settings, _embedded),
}


def build_route(name: str, settings: Settings, choices: RouteChoices) -> ScoringRoute:
    """The route ``name`` (a key of ROUTES), built but not opened: no network I/O yet. Raises what its settings
    refuse (SettingsError, ScoringError, ModelFileMissing)."""
    entry = ROUTES[name]
    return entry.build(entry.settings_from(settings, choices))
