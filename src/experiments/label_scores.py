"""Turn next-token logprobs into a label score: log P(True) - log P(False)."""
from __future__ import annotations

import math
from typing import Literal, Optional

from core.llm_api.logprobs import NextTokenLogprobs

TokenMatch = Literal["whole", "substring"]

# The reference adds this to each side so that a side absent from the top-k is very unlikely, not impossible.
PROB_FLOOR = 1e-5


def token_label(token: str, match: TokenMatch = "whole") -> Optional[bool]:
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


def label_logodds(top_logprobs: NextTokenLogprobs, match: TokenMatch = "whole") -> float:
    """Signed confidence that the label is True; 0 when neither label is in the top-k."""
    mass = {True: PROB_FLOOR, False: PROB_FLOOR}
    found = False
    for token, logprob in top_logprobs:
        vote = token_label(token, match)
        if vote is not None:
            mass[vote] += math.exp(logprob)
            found = True
    if not found:
        return 0.0
    return math.log(mass[True]) - math.log(mass[False])
