"""Settings for the model routes, from the environment and an optional SECRETS file (dotenv format).

The environment wins over the file, so a one-off ``VLLM_BASE_URL=... python ICM.py`` overrides SECRETS.
"""
from __future__ import annotations

import math
import os
import stat
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from dotenv import dotenv_values

from core.errors import UserError
from core.llm_api.redaction import redact_url

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SECRETS_FILE = REPO_ROOT / "SECRETS"


class SettingsError(UserError):
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
    api_max_retries: Optional[int] = 5
    api_backoff_seconds: float = 1.0
    api_backoff_max_seconds: float = 30.0
    api_retry_seconds: float = 300.0
    # The hosted API's price in dollars per million tokens, for the dollars in summary.json and eval.json. No
    # default: a price we guessed would be a wrong number in a paper's budget.
    api_price_input_per_mtok: Optional[float] = None
    api_price_output_per_mtok: Optional[float] = None
    embedded_threads: Optional[int] = None
    # One slot: on a CPU, parallel slots add no prefill throughput, and each recomputes the prefixes the
    # others hold (measured: 1.7x the trie's tokens with 2 slots, 1.0x with 1).
    embedded_slots: int = 1
    embedded_ctx_per_slot: int = 8192
    # llama.cpp's RAM prompt cache lets later pool scores reuse earlier prefixes. Its own default (8 GiB)
    # lets memory grow for the whole run; a small cap keeps most of the reuse.
    embedded_cache_ram_mib: int = 128
    # Where the values came from, for messages that name a setting refused later (when its route is opened).
    source: str = field(default="in the settings given", compare=False)

    def overridden(self, **values: object) -> "Settings":
        """A copy with each field named in ``values`` replaced, where its value is not None (a flag left unset
        keeps the setting)."""
        return replace(self, **{name: value for name, value in values.items() if value is not None})


# The one place each default is written: load_settings and every route read them from here.
DEFAULTS = Settings()

KEY_SETTINGS = ("API_KEY", "VLLM_API_KEY")
URL_EXAMPLE = "http://HOST:PORT, e.g. http://127.0.0.1:8000"


def split_url_list(text: str) -> list[str]:
    """The URLs in a comma-separated setting such as VLLM_BASE_URL."""
    return [url.strip() for url in text.split(",") if url.strip()]


def check_url(name: str, url: str, where: str) -> None:
    """Refuse a server URL that can't be used, naming the setting and the form it must take."""
    problem = None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except ValueError as exc:
        problem = str(exc)
    else:
        if parts.scheme not in ("http", "https"):
            problem = "it does not start with http:// or https://"
        elif not parts.hostname:
            problem = "it names no host"
    if problem:
        raise SettingsError(f"{name}={redact_url(url)!r} ({where}) is not a server URL: {problem}. Write it as {URL_EXAMPLE}")


def refuse_two_credentials(name: str, url: str, key_name: str, values: dict[str, str], where: str) -> None:
    """A ``user:password@`` in the URL and a key both become the Authorization header, which holds one of them
    (aiohttp refuses the pair): say which to keep rather than fail at the first request."""
    if key_name in values and (urlsplit(url).username or urlsplit(url).password):
        raise SettingsError(f"{name}={redact_url(url)!r} ({where}) holds a user:password@ and {key_name} is set too: "
                            f"a request carries one Authorization header. Remove the user:password@ from {name}, "
                            f"or unset {key_name}")


def _read_secrets_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        values = {k: v for k, v in dotenv_values(path, encoding="utf-8").items() if v}
    except UnicodeDecodeError:
        raise SettingsError(f"{path} is not UTF-8 text: save the settings file as UTF-8") from None
    keys = [name for name in KEY_SETTINGS if values.get(name)]
    if keys and path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
        print(f"warning: {path} holds {' and '.join(keys)} and other users can read it: chmod 600 {path}",
              file=sys.stderr)
    return values


def load_settings(secrets_file: Optional[Path] = None) -> Settings:
    path = secrets_file or Path(os.environ.get("ICM_SECRETS_FILE", DEFAULT_SECRETS_FILE))
    values = _read_secrets_file(path)
    values.update({k: v for k, v in os.environ.items() if v})
    where = f"in {path} or the environment"

    def number(name: str, default: Optional[float], kind: type = int, zero_ok: bool = False) -> Optional[float]:
        raw = values.get(name)
        if raw is None:
            return default
        try:
            value = kind(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} ({where}) must be {'a whole' if kind is int else 'a'} number") from None
        if not math.isfinite(value):
            raise SettingsError(f"{name}={raw!r} ({where}) must be a finite number")
        if value < 0 or (value == 0 and not zero_ok):
            raise SettingsError(f"{name}={raw!r} ({where}) must be {'0 or more' if zero_ok else 'positive'}")
        return value

    for name in KEY_SETTINGS:
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in values.get(name, "")):
            raise SettingsError(f"{name} ({where}) contains a line break or another control character: "
                                "copy the key again without it")
    if "VLLM_BASE_URL" in values:
        urls = split_url_list(values["VLLM_BASE_URL"])
        if not urls:
            raise SettingsError(f"VLLM_BASE_URL={values['VLLM_BASE_URL']!r} ({where}) lists no URL. "
                                f"Write it as {URL_EXAMPLE} (several: comma-separated), or unset it")
        for url in urls:
            check_url("VLLM_BASE_URL", url, where)
            refuse_two_credentials("VLLM_BASE_URL", url, "VLLM_API_KEY", values, where)
    if "LLAMA_API_BASE" in values:
        check_url("LLAMA_API_BASE", values["LLAMA_API_BASE"].strip(), where)
        refuse_two_credentials("LLAMA_API_BASE", values["LLAMA_API_BASE"].strip(), "API_KEY", values, where)

    # API_TOP_K's lower bound of 2 matters only on the hosted route: it is checked when that route is opened
    # (core/llm_api/route_settings.py), so a vLLM or embedded run is not refused for it.
    api_top_k = number("API_TOP_K", DEFAULTS.api_top_k)
    return Settings(
        vllm_base_url=values.get("VLLM_BASE_URL"),
        llama_api_base=values.get("LLAMA_API_BASE"),
        api_key=values.get("API_KEY"),
        vllm_api_key=values.get("VLLM_API_KEY"),
        vllm_timeout_seconds=number("VLLM_TIMEOUT_SECONDS", DEFAULTS.vllm_timeout_seconds, float),
        vllm_max_prompts_per_request=number("VLLM_MAX_PROMPTS_PER_REQUEST", DEFAULTS.vllm_max_prompts_per_request),
        vllm_max_retries=number("VLLM_MAX_RETRIES", DEFAULTS.vllm_max_retries, zero_ok=True),
        vllm_backoff_seconds=number("VLLM_BACKOFF_SECONDS", DEFAULTS.vllm_backoff_seconds, float),
        vllm_retry_seconds=number("VLLM_RETRY_SECONDS", DEFAULTS.vllm_retry_seconds, float, zero_ok=True),
        vllm_backoff_max_seconds=number("VLLM_BACKOFF_MAX_SECONDS", DEFAULTS.vllm_backoff_max_seconds, float),
        vllm_health_poll_seconds=number("VLLM_HEALTH_POLL_SECONDS", DEFAULTS.vllm_health_poll_seconds, float),
        api_requests_per_minute=number("API_REQUESTS_PER_MINUTE", DEFAULTS.api_requests_per_minute, float),
        api_tokens_per_minute=number("API_TOKENS_PER_MINUTE", DEFAULTS.api_tokens_per_minute, float),
        api_top_k=api_top_k,
        api_concurrency=number("API_CONCURRENCY", DEFAULTS.api_concurrency),
        api_timeout_seconds=number("API_TIMEOUT_SECONDS", DEFAULTS.api_timeout_seconds, float),
        api_max_retries=number("API_MAX_RETRIES", DEFAULTS.api_max_retries, zero_ok=True),
        api_backoff_seconds=number("API_BACKOFF_SECONDS", DEFAULTS.api_backoff_seconds, float),
        api_backoff_max_seconds=number("API_BACKOFF_MAX_SECONDS", DEFAULTS.api_backoff_max_seconds, float),
        api_retry_seconds=number("API_RETRY_SECONDS", DEFAULTS.api_retry_seconds, float, zero_ok=True),
        api_price_input_per_mtok=number("API_PRICE_INPUT_PER_MTOK", DEFAULTS.api_price_input_per_mtok, float, zero_ok=True),
        api_price_output_per_mtok=number("API_PRICE_OUTPUT_PER_MTOK", DEFAULTS.api_price_output_per_mtok, float, zero_ok=True),
        embedded_threads=number("EMBEDDED_THREADS", DEFAULTS.embedded_threads),
        embedded_slots=number("EMBEDDED_SLOTS", DEFAULTS.embedded_slots),
        embedded_ctx_per_slot=number("EMBEDDED_CTX_PER_SLOT", DEFAULTS.embedded_ctx_per_slot),
        embedded_cache_ram_mib=number("EMBEDDED_CACHE_RAM_MIB", DEFAULTS.embedded_cache_ram_mib, zero_ok=True),
        source=where,
    )
