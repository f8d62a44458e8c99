"""Test-set accuracy of many-shot prompting with a run's labels, against the paper's baselines.

Every condition uses the same demonstrations in the same order (the run's labelled claims, in pool order);
only their labels differ: none (zero-shot), random, gold, or the run's own (its labeller's). Each condition's
test prompts go to the model in one batched call.
"""
from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np
from scipy import stats

from core.llm_api.llm import ModelAPI
from src.data.claims import Claim, claim_from_label_row
from src.pipeline.label_scores import TokenMatch, label_evidence, median
from src.prompts.prompts import LabelStyle, judge_prompt

CONDITIONS = ("zero-shot", "random labels", "gold labels", "ICM labels")
ICM_CONDITION = "ICM labels"  # the run's own labels, for an ICM run (the name eval.json always had)
CHANCE = 0.5


def run_condition_name(labeller: Optional[str]) -> str:
    """The name of the condition that shows the run's own labels: "ICM labels" for an ICM run (``labeller`` None
    or "icm", as runs recorded before baselines existed), else "<labeller> labels". A run of the random labeller
    gets "random-labeller labels", apart from the "random labels" condition that every evaluation has."""
    if labeller in (None, "icm"):
        return ICM_CONDITION
    name = f"{labeller} labels"
    return f"{labeller}-labeller labels" if name in CONDITIONS else name


@dataclass(frozen=True)
class ConditionResult:
    accuracy: float
    ci_low: float
    ci_high: float
    n: int
    # Answers whose top-k held neither label token: counted as wrong, never as a guess of False.
    no_label_answers: int = 0
    label_mass_median: Optional[float] = None  # see src/pipeline/label_scores.py
    # 1/0 per test item, in the order of eval.json's "test_items": what a paired comparison resamples.
    correct: tuple[int, ...] = ()

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "ci_low": self.ci_low, "ci_high": self.ci_high, "n": self.n,
                "no_label_answers": self.no_label_answers, "label_mass_median": self.label_mass_median,
                "correct": list(self.correct)}


def bootstrap_accuracy(correct: Sequence[bool], seed: int = 0, resamples: int = 2000) -> ConditionResult:
    """Accuracy with a 95% percentile-bootstrap interval; ``correct`` (1/0 per test item) is kept in the result."""
    values = np.asarray(correct, dtype=float)
    accuracy = float(values.mean())
    kept = tuple(int(bool(c)) for c in correct)
    if values.min() == values.max():  # every resample is the same: the interval is the point
        return ConditionResult(accuracy, accuracy, accuracy, len(values), correct=kept)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interval = stats.bootstrap((values,), np.mean, confidence_level=0.95, n_resamples=resamples,
                                   method="percentile", random_state=np.random.default_rng(seed)).confidence_interval
    return ConditionResult(accuracy, float(interval.low), float(interval.high), len(values), correct=kept)


def demonstration_sets(demos: Sequence[dict], seed: int, own_condition: str = ICM_CONDITION) -> dict[str, Optional[list[dict]]]:
    """The demonstrations of each condition: the same claims in the same order, labelled differently. The run's
    own labels are under ``own_condition`` (run_condition_name).

    A condition is None when it can't be built (gold labels unknown for some demonstration).
    """
    coin = random.Random(seed)
    has_gold = all(d.get("gold_label") is not None for d in demos)
    return {
        "zero-shot": [],
        "random labels": [{**d, "label": coin.randint(0, 1)} for d in demos],
        "gold labels": [{**d, "label": int(d["gold_label"])} for d in demos] if has_gold else None,
        own_condition: [{**d, "label": int(d["label"])} for d in demos],
    }


def evaluate_conditions(
    model_api: ModelAPI,
    test_claims: Sequence[dict],
    demos: Sequence[dict],
    *,
    label_style: LabelStyle,
    token_match: TokenMatch,
    seed: int = 0,
    own_condition: str = ICM_CONDITION,
) -> dict[str, ConditionResult]:
    """Accuracy on ``test_claims`` (testbed records, each with a gold ``label``) under every condition that can be
    built; ``demos`` are labels.jsonl rows, and their own labels are the condition ``own_condition``."""
    results = {}
    judged = [Claim.from_record(record, uid) for uid, record in enumerate(test_claims)]
    for name, shown in demonstration_sets(demos, seed, own_condition).items():
        if shown is None:
            continue
        shown_claims = [claim_from_label_row(row) for row in shown]
        prompts = [judge_prompt(claim, shown_claims, label_style) for claim in judged]
        logprobs = model_api.next_token_logprobs(prompts)  # one batched call per condition
        evidence = [label_evidence(lp, token_match) for lp in logprobs]
        correct = [e.informative and (e.logodds > 0) == bool(c["label"]) for c, e in zip(test_claims, evidence)]
        result = bootstrap_accuracy(correct, seed)
        results[name] = replace(result, no_label_answers=sum(not e.informative for e in evidence),
                                label_mass_median=median([e.mass for e in evidence]))
    return results
