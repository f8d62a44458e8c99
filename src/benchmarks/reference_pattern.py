"""The reference code's request pattern, reproduced on our engines so benchmarks can compare the two.

It sends the same prompts (reference layout) but:
- each prompt as a request of its own,
- one decision query per inconsistent pair in every consistency-fix round (the reference asks the model a
  placeholder prompt there and never uses the answer),
- nothing reused: every pool score and every prediction goes to the model again.
Only ``scripts/benchmark_icm.py`` uses it; a real run never should.
"""
from __future__ import annotations

from core.llm_api.llm import ModelAPI
from src.config.run_config import PromptConfig
from src.data.claims import Claim, labelled_claims
from src.pipeline.label_scores import TokenMatch, label_logodds
from src.prompts.prompts import LabelStyle, judge_prompt, leave_one_out_prompts
from src.search.annealing import Claims, ICMSearch
from src.search.consistency import InconsistentPair

# What the reference's decision query sends (its get_decision_prompt).
DECISION_PROMPT = "dummy prompt"


class ReferencePatternScorer:
    def __init__(self, model_api: ModelAPI, prompts: PromptConfig) -> None:
        """``prompts``: the label style and token match to score with; the layout is always the reference's."""
        model_api.send_prompts_singly()
        self.model_api = model_api
        self.label_style: LabelStyle = prompts.label_style
        self.token_match: TokenMatch = prompts.token_match
        self.prompt_layout = "reference"
        self.pool_scores_computed = 0
        self.pool_scores_reused = 0
        self.decision_queries = 0

    def pool_scores(self, claims: Claims) -> dict[int, float]:
        pool = labelled_claims(claims)
        logprobs = self.model_api.next_token_logprobs(leave_one_out_prompts(pool, self.label_style, "reference"))
        self.pool_scores_computed += 1
        return {c.uid: label_logodds(lp, self.token_match) for c, lp in zip(pool, logprobs)}

    def predict_score(self, example: Claim, claims: Claims) -> float:
        demonstrations = [c for c in labelled_claims(claims) if c.uid != example.uid]
        [logprobs] = self.model_api.next_token_logprobs([judge_prompt(example, demonstrations, self.label_style)])
        return label_logodds(logprobs, self.token_match)

    def decision_query(self) -> None:
        self.model_api.next_token_logprobs([DECISION_PROMPT])
        self.decision_queries += 1


class ReferencePatternSearch(ICMSearch):
    """The same search, plus the reference's unused decision query for each inconsistent pair."""

    scorer: ReferencePatternScorer

    def inconsistent_pairs(self, claims: Claims) -> list[InconsistentPair]:
        pairs = super().inconsistent_pairs(claims)
        for _ in pairs:
            self.scorer.decision_query()
        return pairs
