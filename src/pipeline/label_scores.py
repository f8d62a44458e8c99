"""Turn next-token logprobs into a label score, log P(True) - log P(False), and say how much the answer
tells about the labels at all.

``label_mass`` is the probability the answer puts on the two labels' tokens together (every token that votes
True or False under the run's token match): near 1 when the model answers the question as a True/False
judgement, near 0 when it mostly wants to say something else, and then its log-odds compare two small,
noisy numbers. With top-k logprobs it is a lower bound (a label outside the top-k counts 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

from core.llm_api.logprobs import NextTokenLogprobs

TokenMatch = Literal["whole", "substring"]
# What to do with an answer whose top-k holds neither label token: "stop" the run (an answer with no label
# information never becomes a score), or the reference's "floor" (both sides at PROB_FLOOR: a score of 0).
LabelAbsent = Literal["stop", "floor"]
LABEL_ABSENT_CHOICES = ("stop", "floor")

# The reference adds this to each side so that a side absent from the top-k is very unlikely, not impossible.
PROB_FLOOR = 1e-5
# Below this median label mass the model puts more probability on other tokens than on " True" and " False"
# together: it is more likely to say something else than to answer, so its scores say little. SmolLM2-135M
# with the label space in the token measured 0.93-0.95 with 8-16 demonstrations (0.31 zero-shot); with the
# reference's template, whose trailing space makes it predict digits, 0.07-0.10.
LOW_LABEL_MASS = 0.5


def token_label(token: str, match: TokenMatch) -> Optional[bool]:
    """True/False if the token votes for that label, None if it votes for neither.

    ``substring`` is the reference's rule; it counts tokens such as "untrue" as True.
    """
    text = token.lower()
    if match == "whole":
        text = text.strip()
        if text == "true":
            return True
        if text == "false":
            return False
        return None
    says_true, says_false = "true" in text, "false" in text
    return None if says_true == says_false else says_true


@dataclass(frozen=True)
class LabelEvidence:
    """What one answer says about the labels: the probability on True tokens and on False tokens, and which
    of the two appeared in it at all."""

    true_mass: float
    false_mass: float
    saw_true: bool
    saw_false: bool

    @property
    def informative(self) -> bool:
        """Whether a label token appears at all: an answer with neither tells nothing about the labels."""
        return self.saw_true or self.saw_false

    @property
    def mass(self) -> float:
        return self.true_mass + self.false_mass

    @property
    def logodds(self) -> float:
        """log(P(True) + floor) - log(P(False) + floor), the reference's score; 0 when neither label appears."""
        return math.log(self.true_mass + PROB_FLOOR) - math.log(self.false_mass + PROB_FLOOR)


def label_evidence(top_logprobs: NextTokenLogprobs, match: TokenMatch) -> LabelEvidence:
    mass = {True: 0.0, False: 0.0}
    seen = {True: False, False: False}
    for token, logprob in top_logprobs:
        vote = token_label(token, match)
        if vote is not None:
            mass[vote] += math.exp(logprob)
            seen[vote] = True
    return LabelEvidence(mass[True], mass[False], seen[True], seen[False])


def label_logodds(top_logprobs: NextTokenLogprobs, match: TokenMatch) -> float:
    """Signed confidence that the label is True; 0 when neither label is in the top-k."""
    return label_evidence(top_logprobs, match).logodds


def holds_a_label(match: TokenMatch):
    """A predicate for the response cache: keep only answers that say something about the labels."""
    return lambda answer: label_evidence(answer, match).informative


def median(values: Sequence[float]) -> Optional[float]:
    ordered = sorted(values)
    if not ordered:
        return None
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def low_mass_warning(masses: Sequence[float], label_style: str) -> Optional[str]:
    """A warning when the median label mass is below LOW_LABEL_MASS, saying what that means and what to check."""
    typical = median(masses)
    if typical is None or typical >= LOW_LABEL_MASS:
        return None
    hint = (" The reference template (--label-style reference, set by --paper-mode) ends in a space, which makes BPE "
            "models predict a bare continuation instead of a label." if label_style == "reference" else
            " Check that the model is a base model and that the prompt suits it.")
    return (f"the model puts a median of {100 * typical:.1f}% of its next-token probability on the label tokens (below "
            f"{100 * LOW_LABEL_MASS:.0f}%): it is more likely to say something else than True or False, so its scores say "
            f"little about the labels.{hint}")
