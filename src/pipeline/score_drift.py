"""How far one way of scoring moves the label log-odds (log P(True) - log P(False), nats) of the same prompts from
another, and what that does to the labels: the arithmetic of the health check's prefix-cache self-test
(scripts/test_vllm_server.py).

A label is ``score > 0`` (as the search sets it). A drift of d can flip any label whose score lies within d of
0, and no other.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

# A drift above this is more than a float32 engine's rounding: the project holds exact and top-20 label logprobs
# to 1e-3 on real vLLM, and over HTTP and in-process within 0.01 in deterministic mode. At SmolLM2-135M's scores
# it also reaches almost no label: of 144 leave-one-out scores from 18 small TruthfulQA runs on the embedded
# engine, none lay within 0.01 nats of 0 (2.8% within 0.06, 4.9% within 0.1): for a small drift d, about 0.5·d of
# the labels are within its reach.
DRIFT_TOLERANCE_NATS = 0.01
# Above the tolerance, a drift that reaches at least this share of the scored labels (it is as large as their median
# |score|) fails the check: those labels then say as much about the cache as about the model. Below it, a warning:
# llama.cpp's prompt cache moves SmolLM2's scores by about 0.13 nats, which reaches the odd borderline label (the
# project accepts that outside --deterministic), while the median |score| of the self-test's prompts is about 0.5.
FAIL_AT_FLIP_SHARE = 0.5

Verdict = Literal["pass", "warn", "fail"]


@dataclass(frozen=True)
class ScoreDrift:
    """Scores of ``scored`` prompts taken one way (the reference) and again another way, compared.

    ``largest``: the largest |other - reference| over the prompts, in nats. ``could_flip``: prompts whose reference
    score lies within ``largest`` of 0, so that a drift that large can change their label (every flipped prompt
    among them). ``flipped``: prompts whose label did change in some other scoring."""

    scored: int
    largest: float
    could_flip: int
    flipped: int

    def verdict(self, tolerance: float = DRIFT_TOLERANCE_NATS, fail_share: float = FAIL_AT_FLIP_SHARE) -> Verdict:
        """"pass" up to ``tolerance`` nats; above it "fail" when at least ``fail_share`` of the prompts could flip,
        else "warn"."""
        if self.largest <= tolerance:
            return "pass"
        return "fail" if self.could_flip >= fail_share * self.scored else "warn"


def score_drift(reference: Sequence[float], *others: Sequence[float]) -> ScoreDrift:
    """Compare ``reference`` scores (nats, one per prompt) with one or more other scorings of the same prompts.

    Raises ValueError when a scoring has another length or a score is not a finite number: a drift of NaN
    would pass every threshold."""
    if not others:
        raise ValueError("nothing to compare the reference scores with")
    for scores in (reference, *others):
        if len(scores) != len(reference):
            raise ValueError(f"{len(scores)} scores against {len(reference)} reference scores: each scoring must score every prompt")
        if not all(math.isfinite(s) for s in scores):
            raise ValueError("a score is not a finite number")
    moved = [max(abs(other[i] - reference[i]) for other in others) for i in range(len(reference))]
    largest = max(moved, default=0.0)
    flipped = [any((other[i] > 0) != (reference[i] > 0) for other in others) for i in range(len(reference))]
    could_flip = sum(1 for score, flip in zip(reference, flipped) if flip or abs(score) < largest)
    return ScoreDrift(scored=len(reference), largest=largest, could_flip=could_flip, flipped=sum(flipped))
