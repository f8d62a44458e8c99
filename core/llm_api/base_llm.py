"""What every model route provides: a list of prompts in, each prompt's next-token top-k logprobs out."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol, Sequence

from core.llm_api.logprobs import NextTokenLogprobs

DEFAULT_TOP_K = 20


class ScoringError(RuntimeError):
    """The route could not score the prompts; the message says why and what to change."""


@dataclass
class RouteStats:
    """Counters a route keeps for the run summary and the benchmarks."""

    requests: int = 0
    prompts: int = 0
    prompt_tokens: int = 0  # all prompt tokens the engine was given
    computed_tokens: int = 0  # the part it had to compute (not served from its prefix cache)
    engine_seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


class ScoringRoute(Protocol):
    name: str
    model: str
    stats: RouteStats

    def next_token_logprobs(self, prompts: Sequence[str]) -> list[NextTokenLogprobs]:
        """One batched request for all prompts; results in prompt order."""
        ...

    def close(self) -> None:
        ...
