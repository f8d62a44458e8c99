"""A deterministic stand-in for a language model, for testing the search rather than the model.

It reads the prompts the project builds (demonstrations, then the claim to judge) and answers with
" True"/" False" logprobs from a planted model: each claim has a weak prior towards its planted label and
a feature; in-context demonstrations vote by feature similarity, as a model that learns from examples would.
"""
from __future__ import annotations

import math
import random
from typing import Sequence

from core.llm_api.base_llm import RouteStats, ScoringRoute
from src.data.claims import Claim
from src.prompts.prompts import DEMO_SEPARATOR


class SyntheticModel(ScoringRoute):
    name = "synthetic"
    model = "planted"

    def __init__(self, claims: Sequence[dict | Claim], planted: Sequence[int], seed: int = 0,
                 prior_weight: float = 0.6, prior_noise: float = 0.6, icl_weight: float = 1.0) -> None:
        rng = random.Random(seed)
        self.feature, self.prior = {}, {}
        for claim, label in zip(claims, planted):
            sign = 1 if label else -1
            # Testbed records or pool Claims: the model only knows a claim by its text.
            key = self._claim_text(claim.text if isinstance(claim, Claim) else claim["prompt"])
            self.feature[key] = sign + rng.gauss(0, 0.3)
            self.prior[key] = prior_weight * sign + rng.gauss(0, prior_noise)
        self.icl_weight = icl_weight
        self.stats = RouteStats()
        self.batch_sizes: list[int] = []

    @staticmethod
    def _claim_text(block: str) -> str:
        """A claim's identity: its question and claim lines (the same claim text recurs across questions)."""
        lines = block.split("\n")
        return "\n".join(line for line in lines if line.startswith(("Question: ", "Claim: ")))

    @staticmethod
    def _blocks(prompt: str) -> list[str]:
        """The prompt's demonstrations and its query. A claim's own text may hold the separator (GSM8K solutions
        have paragraphs), so a piece that doesn't start a new question belongs to the block before it."""
        blocks: list[str] = []
        for piece in prompt.split(DEMO_SEPARATOR):
            if blocks and not piece.startswith("Question: "):
                blocks[-1] += DEMO_SEPARATOR + piece
            else:
                blocks.append(piece)
        return blocks

    def logodds(self, prompt: str) -> float:
        *demos, query = self._blocks(prompt)
        q = self._claim_text(query)
        if q not in self.prior:  # not a judge prompt (the reference's decision query): no opinion
            return 0.0
        vote = 0.0
        for block in demos:
            label = 1 if block.endswith(" True") else -1
            vote += self.feature[q] * self.feature[self._claim_text(block)] * label
        return self.prior[q] + self.icl_weight * vote / max(1, len(demos))

    def next_token_logprobs(self, prompts: Sequence[str]):
        self.stats.requests += 1
        self.stats.prompts += len(prompts)
        self.batch_sizes.append(len(prompts))
        out = []
        for prompt in prompts:
            s = self.logodds(prompt)
            log_true = -math.log1p(math.exp(-s)) if s > -30 else s
            log_false = -math.log1p(math.exp(s)) if s < 30 else -s
            out.append([(" True", log_true), (" False", log_false), (" maybe", -6.0)])
        return out

    def close(self) -> None:
        pass
