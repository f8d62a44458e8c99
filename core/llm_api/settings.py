"""Settings for the model routes, from the environment and an optional SECRETS file (dotenv format).

The environment wins over the file, so a one-off ``VLLM_BASE_URL=... python ICM.py`` overrides SECRETS.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from dotenv import dotenv_values

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SECRETS_FILE = REPO_ROOT / "SECRETS"


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class Settings:
    vllm_base_url: Optional[str] = None
    llama_api_base: Optional[str] = None
    # repr=False keeps the key out of any log line or traceback that prints the settings.
    api_key: Optional[str] = field(default=None, repr=False)
    vllm_api_key: Optional[str] = field(default=None, repr=False)
    vllm_timeout_seconds: float = 900.0
    vllm_max_prompts_per_request: int = 1024
    vllm_max_retries: Optional[int] = None  # unset: only the time budget below bounds the retries
    vllm_backoff_seconds: float = 1.0
    # Long enough to outlast a server restart (a CPU vLLM takes 90-160 s, a large GPU model minutes).
    vllm_retry_seconds: float = 600.0
    vllm_backoff_max_seconds: float = 10.0
    vllm_health_poll_seconds: float = 5.0
    api_requests_per_minute: Optional[float] = None
    api_tokens_per_minute: Optional[float] = None
    api_top_k: int = 5
    api_concurrency: int = 16
    api_timeout_seconds: float = 60.0
    api_max_retries: int = 5
    api_backoff_seconds: float = 1.0
    embedded_threads: Optional[int] = None
    # One slot: on a CPU, parallel slots add no prefill throughput, and each recomputes the prefixes the
    # others hold (measured: 1.7x the trie's tokens with 2 slots, 1.0x with 1).
    embedded_slots: int = 1
    embedded_ctx_per_slot: int = 8192
    # llama.cpp's RAM prompt cache lets later pool scores reuse earlier prefixes. Its own default (8 GiB)
    # lets memory grow for the whole run; a small cap keeps most of the reuse.
    embedded_cache_ram_mib: int = 128


def load_settings(secrets_file: Optional[Path] = None) -> Settings:
    path = secrets_file or Path(os.environ.get("ICM_SECRETS_FILE", DEFAULT_SECRETS_FILE))
    values = {k: v for k, v in dotenv_values(path).items() if v} if path.is_file() else {}
    values.update({k: v for k, v in os.environ.items() if v})

    def number(name: str, default: Optional[float], kind: type = int, zero_ok: bool = False) -> Optional[float]:
        raw = values.get(name)
        if raw is None:
            return default
        try:
            value = kind(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} (in {path} or the environment) must be a {kind.__name__} number") from None
        if value < 0 or (value == 0 and not zero_ok):
            raise SettingsError(f"{name}={raw!r} (in {path} or the environment) must be {'0 or more' if zero_ok else 'positive'}")
        return value

    return Settings(
        vllm_base_url=values.get("VLLM_BASE_URL"),
        llama_api_base=values.get("LLAMA_API_BASE"),
        api_key=values.get("API_KEY"),
        vllm_api_key=values.get("VLLM_API_KEY"),
        vllm_timeout_seconds=number("VLLM_TIMEOUT_SECONDS", 900.0, float),
        vllm_max_prompts_per_request=number("VLLM_MAX_PROMPTS_PER_REQUEST", 1024),
        vllm_max_retries=number("VLLM_MAX_RETRIES", None, zero_ok=True),
        vllm_backoff_seconds=number("VLLM_BACKOFF_SECONDS", 1.0, float),
        vllm_retry_seconds=number("VLLM_RETRY_SECONDS", 600.0, float, zero_ok=True),
        vllm_backoff_max_seconds=number("VLLM_BACKOFF_MAX_SECONDS", 10.0, float),
        vllm_health_poll_seconds=number("VLLM_HEALTH_POLL_SECONDS", 5.0, float),
        api_requests_per_minute=number("API_REQUESTS_PER_MINUTE", None, float),
        api_tokens_per_minute=number("API_TOKENS_PER_MINUTE", None, float),
        api_top_k=number("API_TOP_K", 5),
        api_concurrency=number("API_CONCURRENCY", 16),
        api_timeout_seconds=number("API_TIMEOUT_SECONDS", 60.0, float),
        api_max_retries=number("API_MAX_RETRIES", 5, zero_ok=True),
        api_backoff_seconds=number("API_BACKOFF_SECONDS", 1.0, float),
        embedded_threads=number("EMBEDDED_THREADS", None),
        embedded_slots=number("EMBEDDED_SLOTS", 1),
        embedded_ctx_per_slot=number("EMBEDDED_CTX_PER_SLOT", 8192),
        embedded_cache_ram_mib=number("EMBEDDED_CACHE_RAM_MIB", 128, zero_ok=True),
    )
