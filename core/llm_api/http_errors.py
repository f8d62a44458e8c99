"""What an HTTP error from a completions server means, in words that say what to change."""
from __future__ import annotations

from typing import Optional
from urllib.parse import urlsplit, urlunsplit

from core.llm_api.base_llm import ScoringError


class HTTPStatusError(ScoringError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    @property
    def retryable(self) -> bool:
        return self.status >= 500 or self.status == 429


class TransientError(ScoringError):
    """A fault that asking again may cure: a dropped connection, a timeout, a garbled body."""


def explain_status(status: int, body: str, url: str, key_setting: str, top_k: int) -> str:
    lowered = body.lower()
    if "maximum context length" in lowered or "exceeds the available context size" in lowered:
        return (f"{url} answered {status}: a prompt is longer than the server's context. Lower --batch_size, "
                "or restart the server with a larger --max-model-len")
    if "max allowed" in lowered and "logprobs" in lowered:
        return f"{url} answered {status}: the server caps logprobs below the {top_k} we ask for. Restart vLLM with --max-logprobs {top_k}"
    if status in (401, 403):
        return f"{url} answered {status}: the API key was refused or is missing. Check {key_setting}"
    return f"{url} answered {status}: {body[:300]}"


def redact(text: str, secret: Optional[str]) -> str:
    """``text`` with the secret replaced: a server may echo a key back in an error body."""
    return text.replace(secret, "***") if secret else text


def redact_url(url: str) -> str:
    """The URL without any user:password part, for logs and summaries."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))


class EndpointDown(ScoringError):
    """An endpoint kept failing after its retries: another endpoint may take its work."""
