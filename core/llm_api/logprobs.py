"""Parse next-token logprobs out of completion responses, whatever shape the server uses, and refuse any
answer that does not hold log-probabilities.

Two shapes exist in the wild:
- vLLM / OpenAI legacy completions: ``logprobs.top_logprobs`` is a list (one per generated token) of
  ``{token_string: logprob}`` dicts;
- llama.cpp and chat-style: ``logprobs.content`` is a list (one per generated token) of objects whose
  ``top_logprobs`` is a list of ``{token, logprob, ...}``.
A dict collapses tokens that decode alike, so the common form is a list of (token, logprob) pairs.

Every entry is checked before it can become a score or a cache entry: a token text (not a ``token_id:N``
key), and a logprob that is a finite number <= 0. Values at or below SENTINEL_AT_OR_BELOW are vLLM's
stand-in for -inf (-9999.0) and are dropped; an answer left with fewer than two entries holds no
comparison of the labels and is refused. Each refusal names its row of core/llm_api/faults.py.
"""
from __future__ import annotations

import math
import re
from typing import Any, Sequence

NextTokenLogprobs = list[tuple[str, float]]

# vLLM sends -inf as -9999.0. No next-token logprob of a real model is anywhere near -1000 (that is e^-1000),
# so anything at or below it is a stand-in for "impossible", not a value.
SENTINEL_AT_OR_BELOW = -1000.0
# A logprob of the top token can round to slightly above 0; anything more is not a log-probability.
POSITIVE_ROUNDING = 1e-3
# Every route asks for at least this many entries (API_TOP_K >= 2): one True/False comparison needs two.
MIN_ENTRIES = 2
TOKEN_ID_KEY = re.compile(r"^token_id:-?\d+$")


class MalformedResponse(ValueError):
    """The server answered, but not with what a logprobs completion must hold.

    ``fault`` names the row of core/llm_api/faults.py FAULTS. ``retryable`` tells a garbled answer (worth
    asking again) from one the server will always give.
    """

    def __init__(self, message: str, fault: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.fault = fault
        self.retryable = retryable


def _checked_entry(token: Any, logprob: Any, where: str) -> tuple[str, float] | None:
    """(token, logprob) if the entry is a real one, None for a -inf stand-in; MalformedResponse otherwise."""
    if not isinstance(token, str):
        raise MalformedResponse(f"{where} has a top-k entry with no token text ({token!r})", "not a log-probability")
    if TOKEN_ID_KEY.match(token):
        raise MalformedResponse(
            f"{where} names its tokens by id ({token!r}), not by text, so the label words can't be read: the server "
            "was started with --return-tokens-as-token-ids; restart it without that flag", "token ids as keys")
    if isinstance(logprob, bool) or not isinstance(logprob, (int, float)):
        raise MalformedResponse(f"{where} gives the logprob of {token!r} as {logprob!r}, not a number", "not a log-probability")
    value = float(logprob)
    if not math.isfinite(value) or value > POSITIVE_ROUNDING:
        raise MalformedResponse(f"{where} gives the logprob of {token!r} as {logprob!r}, which is not a log-probability "
                                "(it must be a finite number <= 0)", "not a log-probability")
    if value <= SENTINEL_AT_OR_BELOW:
        return None
    return token, min(value, 0.0)


def parse_choice_logprobs(choice: Any, min_entries: int = MIN_ENTRIES) -> NextTokenLogprobs:
    """Top-k logprobs of the first generated token of one completion choice, checked. Fewer than ``min_entries``
    real entries is a broken answer (a caller that asked for named tokens checks for those instead)."""
    if not isinstance(choice, dict):
        raise MalformedResponse(f"a choice is a {type(choice).__name__}, not an object", "not an OpenAI completions body")
    where = f"choice {choice.get('index')}"
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        raise MalformedResponse(f"{where} has no logprobs; the server must be asked for logprobs and allow them", "no logprobs")
    content = logprobs.get("content")
    top = logprobs.get("top_logprobs")
    if isinstance(content, list) and content and isinstance(content[0], dict):
        entries = content[0].get("top_logprobs")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise MalformedResponse(f"{where}: logprobs.content[0].top_logprobs is not a list of objects", "logprobs in no known shape")
        raw = [(e.get("token"), e.get("logprob")) for e in entries]
    elif isinstance(top, list) and top and isinstance(top[0], dict):
        raw = list(top[0].items())
    else:
        raise MalformedResponse(f"{where} carries logprobs in no known shape (keys: {sorted(logprobs)})", "logprobs in no known shape")
    checked = [_checked_entry(token, logprob, where) for token, logprob in raw]
    kept = [entry for entry in checked if entry is not None]
    if len(kept) < min_entries:
        dropped = len(checked) - len(kept)
        stand_ins = f" ({dropped} were -inf stand-ins such as -9999.0)" if dropped else ""
        raise MalformedResponse(f"{where} holds {len(kept)} usable logprob(s) of the {len(checked)} it lists{stand_ins}: "
                                "a True/False comparison needs at least two; the server's logprobs are broken",
                                "sentinel values")
    return kept


def choices_in_prompt_order(choices: Sequence[Any], n_prompts: int) -> list[dict[str, Any]]:
    """Match choices to prompts by their ``index`` field; servers may answer out of order.

    A wrong count or a missing or repeated index is a fixed property of the server, not a glitch: for a
    list, the caller falls back to one prompt per request.
    """
    fault = "choice indices wrong" if n_prompts > 1 else "choice count wrong for one prompt"
    if len(choices) != n_prompts:
        raise MalformedResponse(f"sent {n_prompts} prompts but got {len(choices)} choices back", fault)
    ordered: list[dict[str, Any] | None] = [None] * n_prompts
    for choice in choices:
        index = choice.get("index") if isinstance(choice, dict) else None
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n_prompts or ordered[index] is not None:
            raise MalformedResponse(f"choice index {index!r} is missing, out of range or repeated", fault)
        ordered[index] = choice
    return ordered  # type: ignore[return-value]


def parse_completion_logprobs(response: Any, n_prompts: int, min_entries: int = MIN_ENTRIES) -> list[NextTokenLogprobs]:
    """Per prompt, in prompt order, the checked top-k logprobs of the next token.

    Raises MalformedResponse naming the fault; a 200 whose body carries an ``error`` raises it with the
    server's message (the caller classifies that message as it would a non-200 answer).
    """
    if not isinstance(response, dict):
        raise MalformedResponse(f"answered with a JSON {type(response).__name__}, not an OpenAI completions object: the "
                                "endpoint is not OpenAI-compatible (older llama.cpp servers answer /completions in their own "
                                "format; point the URL at a server with /v1/completions)", "not an OpenAI completions body")
    if "error" in response:
        error = response["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
        raise ServerSaidError(f"server error: {message}", str(message))
    choices = response.get("choices")
    if not isinstance(choices, list):
        raise MalformedResponse(f"answered 200 with no 'choices' list (keys: {sorted(response)[:8]}): the endpoint is not "
                                "OpenAI-compatible (older llama.cpp servers answer in their own format; point the URL at a "
                                "server with /v1/completions)", "not an OpenAI completions body")
    return [parse_choice_logprobs(c, min_entries) for c in choices_in_prompt_order(choices, n_prompts)]


class ServerSaidError(MalformedResponse):
    """A 200 whose body is an error: ``server_message`` is to be classified like a non-200 answer's."""

    def __init__(self, message: str, server_message: str) -> None:
        super().__init__(message, "request refused")
        self.server_message = server_message
