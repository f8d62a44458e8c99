"""What an HTTP error from a completions server means, in words that say what to change."""
from __future__ import annotations

from core.llm_api.base_llm import ScoringError


class HTTPStatusError(ScoringError):
    def __init__(self, status: int, message: str, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body  # the server's own words, for telling one kind of refusal from another

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


class EndpointDown(ScoringError):
    """An endpoint kept failing after its retries: another endpoint may take its work."""
