"""Watch a search's model calls for a benchmark: which prompts went out, in how many requests, and for what.

``CallRecorder`` stands in for the ModelAPI and passes every call on; ``MeasuredScorer`` wraps a scorer and
files the calls it causes under a phase: a pool score, a prediction or a decision query.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

from core.llm_api.logprobs import NextTokenLogprobs


@dataclass
class CallGroup:
    phase: str  # "pool", "predict" or "decision"
    prompts: list[str] = field(default_factory=list)
    requests: int = 0


class CallRecorder:
    def __init__(self, model_api: Any) -> None:
        self.model_api = model_api
        self.groups: list[CallGroup] = []
        self.recording = True  # off: pass calls on without keeping their prompts (long memory runs)
        self._open: Optional[CallGroup] = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model_api, name)

    def next_token_logprobs(self, prompts: Sequence[str]) -> list[NextTokenLogprobs]:
        before = self.model_api.stats.requests
        answers = self.model_api.next_token_logprobs(prompts)
        if self._open is not None:
            self._open.prompts.extend(prompts)
            self._open.requests += self.model_api.stats.requests - before
        return answers

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """File the calls made inside under ``name``; a phase that made no request (a memo hit) is dropped."""
        group = CallGroup(name)
        self._open = group
        try:
            yield
        finally:
            self._open = None
            if group.requests and self.recording:
                self.groups.append(group)

    def groups_of(self, phase: str) -> list[CallGroup]:
        return [g for g in self.groups if g.phase == phase]


class MeasuredScorer:
    """A scorer whose calls are filed by phase; everything else passes through."""

    def __init__(self, scorer: Any, recorder: CallRecorder) -> None:
        self.scorer = scorer
        self.recorder = recorder

    def __getattr__(self, name: str) -> Any:
        return getattr(self.scorer, name)

    def pool_scores(self, claims: dict) -> dict[int, float]:
        with self.recorder.phase("pool"):
            return self.scorer.pool_scores(claims)

    def predict_score(self, example: Any, claims: dict) -> float:
        with self.recorder.phase("predict"):
            return self.scorer.predict_score(example, claims)

    def decision_query(self) -> None:
        with self.recorder.phase("decision"):
            self.scorer.decision_query()
