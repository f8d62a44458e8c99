"""The one place a request body is built, for every route: ``/v1/completions`` and ``/tokenize``.

We only ever need the next token's logprobs: ``max_tokens`` 1, greedy, and either the top-k (``logprobs``)
or the exact logprobs of the label tokens (vLLM's ``logprob_token_ids``, with ``logprobs`` equal to their
number). Fields a hosted API would refuse as unknown are sent only where the route says the server takes them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

MAX_TOKENS = 1  # ICM reads only the next token's logprobs: every answer generates one token


@dataclass(frozen=True)
class CompletionRequest:
    model: Optional[str]  # None: the server has one model and takes no name (llama.cpp in-process)
    top_k: int
    label_token_ids: Optional[tuple[int, ...]] = None  # exact logprobs of these tokens instead of the top-k
    cache_prompt: Optional[bool] = None  # llama.cpp's prefix-reuse switch; None: don't send the field

    def body(self, prompt: Union[str, Sequence[str]]) -> dict[str, Any]:
        """The request for one prompt (a string) or several (a list, answered one choice per prompt)."""
        body: dict[str, Any] = {"prompt": prompt if isinstance(prompt, str) else list(prompt), "max_tokens": MAX_TOKENS,
                                "temperature": 0.0}
        if self.model is not None:
            body["model"] = self.model
        if self.label_token_ids:
            body.update(logprobs=len(self.label_token_ids), logprob_token_ids=list(self.label_token_ids))
        else:
            body["logprobs"] = self.top_k
        if self.cache_prompt is not None:
            body["cache_prompt"] = self.cache_prompt
        return body


def tokenize_body(model: Optional[str], text: str) -> dict[str, Any]:
    """A ``/tokenize`` request for ``text`` without special tokens (vLLM reads "prompt", llama.cpp "content")."""
    return {"model": model, "prompt": text, "content": text, "add_special_tokens": False}
