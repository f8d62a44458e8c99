"""What the search maximises: the metric of a labelling, its energy, the temperature and the acceptance rule.

The metric is computed here, on the search's side, from the scorer's leave-one-out scores: the scorer only
scores (src/pipeline/pool_scoring.py).
"""
from __future__ import annotations

import math
from typing import Any, Literal, Mapping

import numpy as np

from src.data.claims import Claims, labelled_claims
from src.search.consistency import inconsistent_pairs

MutualPredictabilityReduce = Literal["mean", "sum"]
# A labelling's metric: its keys are written as they are to checkpoint.json, log.jsonl and summary.json
# (train_prob, train_accuracy, ... are the reference's names, kept as file formats).
LabellingMetric = dict[str, Any]


def labelling_metric(claims: Claims, scores: Mapping[int, float], mp_reduce: MutualPredictabilityReduce) -> LabellingMetric:
    """The search metric of a labelling, given each labelled claim's leave-one-out score (uid -> log-odds of True).

    - ``train_prob``: the mutual predictability, the mean of each labelled claim's score signed by its label, as in
      the reference code (its calculate_accuracy), or their sum (``mp_reduce="sum"``), as the paper writes it;
      0.0 with nothing labelled.
    - ``inconsistent_num``: how many labelled pairs break a consistency rule (src/search/consistency.py).
    - ``train_accuracy``: agreement with gold over the labelled claims whose gold is known; None when none is.
    - ``train_size``: labelled claims; ``train_predict_distribution``: how many are labelled 1 and 0.
    Raises KeyError when a labelled claim has no score.
    """
    labelled = labelled_claims(claims)
    signed = [scores[c.uid] if c.label == 1 else -scores[c.uid] for c in labelled]
    with_gold = [c for c in labelled if c.gold_label is not None]
    reduce = {"mean": np.mean, "sum": np.sum}[mp_reduce]
    return {
        "train_accuracy": float(np.mean([c.label == c.gold_label for c in with_gold])) if with_gold else None,
        "train_prob": float(reduce(signed)) if signed else 0.0,
        "inconsistent_num": len(inconsistent_pairs(claims)),
        "train_size": len(labelled),
        "train_predict_distribution": {
            "1": sum(c.label == 1 for c in labelled), "0": sum(c.label == 0 for c in labelled)
        },
    }


def labelling_energy(metric: Mapping[str, Any], alpha: float) -> float:
    """U = alpha * mutual predictability - number of inconsistent pairs (the reference's get_energy)."""
    return alpha * metric["train_prob"] - metric["inconsistent_num"]


def annealing_temperature(
    iteration: int, initial_temp: float, final_temp: float, decay_rate: float, schedule: str = "exp"
) -> float:
    """The temperature after ``iteration`` accepted flips (the reference's get_temperature). Raises ValueError for
    a schedule other than "log" or "exp"."""
    if schedule == "exp":
        return max(final_temp, initial_temp * (decay_rate ** iteration))
    if schedule == "log":
        return max(final_temp, initial_temp / (1 + 2 * np.log(1 + iteration)))
    raise ValueError(f"unknown temperature schedule {schedule!r}: use 'log' or 'exp'")


def metropolis_accept(delta_energy: float, temperature: float, uniform_draw: float) -> bool:
    """Accept a move whose energy changes by ``delta_energy``.

    An improvement is accepted without computing exp(delta/T), which overflows for small T.
    """
    if delta_energy >= 0:
        return True
    return uniform_draw < math.exp(delta_energy / temperature)
