"""What an OpenAI-compatible server offers, found out by asking it: its model and context length, its version,
whether it gives exact logprobs for named tokens, and its prompt-token counters.

Only the model matters for a run. The rest is optional: a probe that stalls, fails or answers garbage
gives "unknown" (None) and a note on stderr, and never stops a run.
"""
from __future__ import annotations

import sys
from typing import Any, Awaitable, Callable, Optional

from core.llm_api.base_llm import ScoringError
from core.llm_api.completions_request import CompletionRequest, tokenize_body
from core.llm_api.engine_metrics import parse_metrics, prompt_token_counters
from core.llm_api.logprobs import MalformedResponse, parse_completion_logprobs

# (method, path, JSON body or None, timeout in seconds) -> the decoded JSON answer; raises ScoringError.
Fetch = Callable[[str, str, Optional[dict], float], Awaitable[Any]]
# (path, timeout) -> the answer's text; raises ScoringError.
FetchText = Callable[[str, float], Awaitable[str]]

# The probes are small: a server that takes longer than this is not up yet, or the endpoint is optional.
PROBE_TIMEOUT_SECONDS = 30.0
METRICS_TIMEOUT_SECONDS = 10.0
LABEL_TOKEN_VARIANTS = (" True", " False", "True", "False", " true", " false", "true", "false")
# Asked once with logprob_token_ids: the label tokens are never this prompt's top tokens, so an answer that
# holds exactly them proves the server honoured the field (one that ignores it answers with its top-k).
EXACT_LOGPROBS_PROBE = "The capital of France is"


def note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr, flush=True)


async def served_model(fetch: Fetch, shown_url: str, requested: Optional[str]) -> tuple[str, Optional[int]]:
    """(the model to use, its context length in tokens if the server says) from /v1/models."""
    answer = await fetch("GET", "/v1/models", None, PROBE_TIMEOUT_SECONDS)
    listed = answer.get("data") if isinstance(answer, dict) else None
    models = [m for m in listed if isinstance(m, dict) and isinstance(m.get("id"), str)] if isinstance(listed, list) else []
    served = [m["id"] for m in models]
    if requested is None:
        if not served:
            raise ScoringError(f"{shown_url}/v1/models lists no model; pass --model")
        requested = served[0]
    elif served and requested not in served:
        raise ScoringError(f"--model {requested!r} is not served at {shown_url}; it serves: {', '.join(served)}")
    context = next((m.get("max_model_len") for m in models if m["id"] == requested), None)
    return requested, context if isinstance(context, int) and not isinstance(context, bool) and context > 0 else None


async def server_version(fetch: Fetch, shown_url: str) -> Optional[str]:
    """The server's version from /version; None for a server without one (llama.cpp) or one that fails."""
    try:
        answer = await fetch("GET", "/version", None, PROBE_TIMEOUT_SECONDS)
    except ScoringError as exc:
        if "answered 404" not in str(exc):  # llama.cpp simply has no /version
            note(f"{shown_url}/version did not answer usefully ({exc}); server version unknown")
        return None
    version = answer.get("version") if isinstance(answer, dict) else None
    if not isinstance(version, str):
        note(f"{shown_url}/version answered {str(answer)[:60]!r}, which names no version; server version unknown")
        return None
    return version


async def exact_label_tokens(fetch: Fetch, model: str) -> Optional[dict[int, str]]:
    """{token id: text} of the label tokens, if the server gives exact logprobs for named ids
    (``logprob_token_ids``); None otherwise. The feature is tried, not inferred from a version: vLLM 0.32 has
    it, other servers don't."""
    tokens: dict[int, str] = {}
    for text in LABEL_TOKEN_VARIANTS:
        try:
            answer = await fetch("POST", "/tokenize", tokenize_body(model, text), PROBE_TIMEOUT_SECONDS)
        except ScoringError:
            return None  # no /tokenize: not a vLLM
        ids = answer.get("tokens") if isinstance(answer, dict) else None
        if isinstance(ids, list) and len(ids) == 1 and isinstance(ids[0], int) and ids[0] not in tokens:
            tokens[ids[0]] = text
    if not tokens:
        return None
    request = CompletionRequest(model, top_k=len(tokens), label_token_ids=tuple(tokens))
    try:
        [returned] = parse_completion_logprobs(await fetch("POST", "/v1/completions", request.body(EXACT_LOGPROBS_PROBE),
                                                           PROBE_TIMEOUT_SECONDS), 1)
    except (ScoringError, MalformedResponse):
        return None
    # vLLM adds the sampled token to the named ones; a server that ignored the field sent its top-k instead.
    seen = {token for token, _ in returned}
    return tokens if set(tokens.values()) <= seen and len(seen) <= len(tokens) + 1 else None


async def token_counters(fetch_text: FetchText) -> Optional[tuple[float, float]]:
    """(prompt tokens given to the engine, of which served from its prefix cache) from /metrics, or None
    when the server doesn't report them or /metrics fails."""
    try:
        return prompt_token_counters(parse_metrics(await fetch_text("/metrics", METRICS_TIMEOUT_SECONDS)))
    except ScoringError:
        return None
