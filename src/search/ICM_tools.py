"""Pure functions of the ICM search, under the reference code's names and return shapes.

A claim is a dict with at least ``uid``, ``label`` (1, 0 or None when unlabeled), ``consistency_id`` and
``consistency_key`` (None: the claim takes part in no logical-consistency rule). ``vanilla_label`` holds the
gold label when known and is used only for reporting, never for the search.
"""
from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import Any, Iterable, Optional

import numpy as np

COMPARATIVE_KEYS = ("A>B", "B>A")

Claim = dict[str, Any]
Pair = dict[str, Any]


def _labeled(claims: Iterable[Claim]) -> list[Claim]:
    return [c for c in claims if c.get("label") is not None]


def pick_two_inconsistent_claims(data: dict, rng: Optional[random.Random] = None) -> dict[int, Pair]:
    """Every pair of labeled claims in one consistency group whose labels break a rule.

    - Different keys, both True: contradiction (two different answers can't both be right).
    - Different comparative keys (A>B vs B>A), both False: contradiction (one of the two orders is right).
    - Same key, different labels: implication (equivalent claims share a label).
    The reference shuffles the pairs; pass ``rng`` for that, or leave it None to keep group order.
    """
    groups: dict[Any, list[Claim]] = defaultdict(list)
    for claim in _labeled(data.values()):
        groups[claim["consistency_id"]].append(claim)

    pairs: list[Pair] = []
    for group in groups.values():
        for i, first in enumerate(group):
            for second in group[i + 1:]:
                kind = _violation(first, second)
                if kind is not None:
                    pairs.append(
                        {"claim_1": first, "claim_2": second,
                         "consistency_id": first["consistency_id"], "type": kind}
                    )
    if rng is not None:
        rng.shuffle(pairs)
    return dict(enumerate(pairs))


def _violation(first: Claim, second: Claim) -> Optional[str]:
    key_1, key_2 = first.get("consistency_key"), second.get("consistency_key")
    if key_1 is None or key_2 is None:
        return None
    if key_1 != key_2:
        both_true = first["label"] == second["label"] == 1
        both_false_comparative = key_1 in COMPARATIVE_KEYS and first["label"] == second["label"] == 0
        return "contradiction" if both_true or both_false_comparative else None
    return "implication" if first["label"] != second["label"] else None


def decision_options(pair: Pair, allow_both_false: bool = False) -> list[tuple[int, int]]:
    """The labellings of (claim_1, claim_2) that the consistency fix tries, in the reference's order.

    The reference tries a decision score of 0 then 1, and keeps the first on ties. For a non-comparative
    contradiction it never tries both False; ``allow_both_false`` adds that option.
    """
    if pair["type"] == "implication":
        return [(0, 0), (1, 1)]
    options = [(0, 1), (1, 0)]
    if allow_both_false and pair["claim_1"].get("consistency_key") not in COMPARATIVE_KEYS:
        options.append((0, 0))
    return options


def update_assign_based_on_decision(data: dict, pair: Pair, labels: tuple[int, int]) -> dict:
    """A copy of ``data`` (uid -> claim) with the pair's two claims relabelled."""
    updated = dict(data)
    for claim, label in ((pair["claim_1"], labels[0]), (pair["claim_2"], labels[1])):
        updated[claim["uid"]] = {**data[claim["uid"]], "label": label}
    return updated


def get_energy(metric: dict, alpha: float) -> float:
    """U = alpha * mutual predictability - number of inconsistent pairs."""
    return alpha * metric["train_prob"] - metric["inconsistent_num"]


def get_temperature(
    iteration: int, initial_temp: float, final_temp: float, decay_rate: float, schedule: str = "exp"
) -> float:
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


def calculate_accuracy(train_data: dict, inconsistent_pairs: dict, mp_reduce: str = "mean") -> dict:
    """The search metric of a scored pool.

    ``train_prob`` is the mutual predictability: the mean of each claim's score signed by its label, as in the
    reference code, or their sum (``mp_reduce="sum"``), as the paper writes it. ``train_accuracy`` is agreement
    with gold, over claims whose gold is known (None when none is).
    """
    labeled = _labeled(train_data.values())
    signed = [c["score"] if c["label"] == 1 else -c["score"] for c in labeled]
    with_gold = [c for c in labeled if c.get("vanilla_label") is not None]
    reduce = {"mean": np.mean, "sum": np.sum}[mp_reduce]
    return {
        "train_accuracy": float(np.mean([c["label"] == c["vanilla_label"] for c in with_gold])) if with_gold else None,
        "train_prob": float(reduce(signed)) if signed else 0.0,
        "inconsistent_num": len(inconsistent_pairs),
        "train_size": len(labeled),
        "train_predict_distribution": {
            "1": sum(c["label"] == 1 for c in labeled), "0": sum(c["label"] == 0 for c in labeled)
        },
    }
