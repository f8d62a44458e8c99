"""Few-shot judge prompts: demonstrations (claim + label word) followed by the claim to judge.

Label styles:
- ``space-in-label`` (default): "... I think this claim is" + " True". BPE models predict " True" as one
  token, so the label's probability sits on one token.
- ``reference``: the reference's "... I think this claim is " + "True", whose trailing space makes BPE
  models predict a bare continuation (SmolLM2 puts most mass on digits).
"""
from __future__ import annotations

from typing import Literal, Sequence

LabelStyle = Literal["space-in-label", "reference"]
LABEL_WORDS = {1: "True", 0: "False"}
DEMO_SEPARATOR = "\n\n"


def query_text(claim: dict, style: LabelStyle) -> str:
    return claim["prompt"] + (" " if style == "reference" else "")


def demonstration_text(claim: dict, style: LabelStyle) -> str:
    space = "" if style == "reference" else " "
    return query_text(claim, style) + space + LABEL_WORDS[claim["label"]] + DEMO_SEPARATOR


def judge_prompt(claim: dict, demonstrations: Sequence[dict], style: LabelStyle) -> str:
    return "".join(demonstration_text(d, style) for d in demonstrations) + query_text(claim, style)


def leave_one_out_prompts(pool: Sequence[dict], style: LabelStyle) -> list[str]:
    """For each labeled claim, the prompt that judges it from all the others, in pool order."""
    demos = [demonstration_text(c, style) for c in pool]
    return [
        "".join(demos[:i]) + "".join(demos[i + 1:]) + query_text(claim, style)
        for i, claim in enumerate(pool)
    ]
