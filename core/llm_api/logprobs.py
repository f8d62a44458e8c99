"""Parse next-token logprobs out of completion responses, whatever shape the server uses.

Two shapes exist in the wild:
- vLLM / OpenAI legacy completions: ``logprobs.top_logprobs`` is a list (one per generated token) of
  ``{token_string: logprob}`` dicts;
- llama.cpp and chat-style: ``logprobs.content`` is a list (one per generated token) of objects whose
  ``top_logprobs`` is a list of ``{token, logprob, ...}``.
A dict collapses tokens that decode alike, so the common form is a list of (token, logprob) pairs.
"""
from __future__ import annotations

from typing import Any, Sequence

# vLLM sends -inf as this sentinel; treat anything at or below it as impossible.
VLLM_NEG_INF = -9999.0

NextTokenLogprobs = list[tuple[str, float]]


class MalformedResponse(ValueError):
    """The server answered, but not with what a logprobs completion must hold.

    ``retryable`` tells a garbled answer (worth asking again) from one the server will always give.
    """

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def parse_choice_logprobs(choice: dict[str, Any]) -> NextTokenLogprobs:
    """Top-k logprobs of the first generated token of one completion choice."""
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        raise MalformedResponse(
            f"choice {choice.get('index')} has no logprobs; the server must be asked for logprobs and allow them"
        )
    content = logprobs.get("content")
    if isinstance(content, list) and content:
        entries = content[0].get("top_logprobs") or []
        return [
            (str(e["token"]), float(e["logprob"]))
            for e in entries
            if float(e["logprob"]) > VLLM_NEG_INF
        ]
    top = logprobs.get("top_logprobs")
    if isinstance(top, list) and top and isinstance(top[0], dict):
        return [(str(tok), float(lp)) for tok, lp in top[0].items() if float(lp) > VLLM_NEG_INF]
    raise MalformedResponse(
        f"choice {choice.get('index')} carries logprobs in no known shape (keys: {sorted(logprobs)})"
    )


def choices_in_prompt_order(choices: Sequence[dict[str, Any]], n_prompts: int) -> list[dict[str, Any]]:
    """Match choices to prompts by their ``index`` field; servers may answer out of order."""
    if len(choices) != n_prompts:
        raise MalformedResponse(f"sent {n_prompts} prompts but got {len(choices)} choices back", retryable=True)
    ordered: list[dict[str, Any] | None] = [None] * n_prompts
    for choice in choices:
        index = choice.get("index")
        if not isinstance(index, int) or not 0 <= index < n_prompts or ordered[index] is not None:
            raise MalformedResponse(f"choice index {index!r} is missing, out of range or repeated", retryable=True)
        ordered[index] = choice
    return ordered  # type: ignore[return-value]


def parse_completion_logprobs(response: dict[str, Any], n_prompts: int) -> list[NextTokenLogprobs]:
    """Per prompt, in prompt order, the top-k logprobs of the next token."""
    if "error" in response:
        error = response["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
        raise MalformedResponse(f"server error: {message}")
    choices = response.get("choices")
    if not isinstance(choices, list):
        raise MalformedResponse("response has no 'choices' list", retryable=True)
    return [parse_choice_logprobs(c) for c in choices_in_prompt_order(choices, n_prompts)]
