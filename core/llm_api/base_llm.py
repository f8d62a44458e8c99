"""What every model route provides: a list of prompts in, each prompt's next-token top-k logprobs out."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

from core.errors import UserError
from core.llm_api.logprobs import NextTokenLogprobs
from core.llm_api.redaction import scrub_credentials

DEFAULT_TOP_K = 20


class ScoringError(RuntimeError, UserError):
    """The route could not score the prompts; the message says why and what to change.

    Messages name URLs, so any credentials written into one (http://user:password@host) are taken out here,
    whichever route or library built the text.
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(scrub_credentials(str(message)))


@dataclass
class RouteStats:
    """Counters a route keeps for the run summary and the benchmarks."""

    requests: int = 0
    prompts: int = 0
    prompt_tokens: int = 0  # all prompt tokens the engine was given
    computed_tokens: int = 0  # the part it had to compute (not served from its prefix cache)
    # Routes that read each answer's ``usage`` (the hosted API) count what the provider bills: generated tokens
    # (usage.completion_tokens, else max_tokens), and how many answers gave no count of their own.
    completion_tokens: int = 0
    completion_tokens_assumed: int = 0  # answers without usage.completion_tokens, counted as max_tokens
    prompt_tokens_estimated: int = 0  # answers without usage.prompt_tokens, counted from the prompt's length
    engine_seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


class ScoringRoute:
    """The interface every model route offers ModelAPI. Routes override what they can do; the defaults say
    what a route without that ability does, so callers never need to ask a route what it is."""

    name: str = "route"
    model: str = ""
    stats: RouteStats
    top_k: int = DEFAULT_TOP_K
    # The label tokens' ids when the route asks the engine for exactly those logprobs; None means top-k.
    label_token_ids: Optional[list[int]] = None
    # The longest prompt the model takes, in tokens, where the route knows it.
    context_tokens: Optional[int] = None

    def open(self) -> None:
        """Connect: ask the server what it offers (constructors do no network I/O)."""

    def next_token_logprobs(self, prompts: Sequence[str]) -> list[NextTokenLogprobs]:
        """One batched request for all prompts; results in prompt order, each answer checked
        (core/llm_api/logprobs.py). Raises ScoringError; PromptsRejected names positions in ``prompts``."""
        raise NotImplementedError

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's token ids from the engine's own tokenizer."""
        raise ScoringError(f"the {self.name} route offers no tokenizer")

    def send_prompts_singly(self) -> None:
        """From now on, one request per prompt (the reference code's pattern; only benchmarks want it)."""

    def refresh_engine_stats(self) -> None:
        """Bring the token counts in ``stats`` up to date (server routes read the engine's /metrics)."""

    def describe(self) -> dict:
        """Route-specific facts for summary.json: endpoint, server version, retries. No secrets."""
        return {}

    def close(self) -> None:
        pass
