"""The logical-consistency rules of a labelling: which labelled pairs break them, and how a pair is relabelled.

Within a consistency group (``Claim.group_id``), two claims with keys (``Claim.consistency_key``; None: the claim
takes part in no rule) are inconsistent when:
- different keys, both True: a contradiction (two different answers can't both be right);
- different comparative keys (A>B vs B>A), both False: a contradiction (one of the two orders is right);
- the same key, different labels: an implication broken (equivalent claims share a label).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal, Optional

from src.data.claims import Claim, Claims, GroupId, labelled_claims

COMPARATIVE_KEYS = ("A>B", "B>A")
PairKind = Literal["contradiction", "implication"]


@dataclass(frozen=True)
class InconsistentPair:
    first: Claim  # the reference's claim_1: the earlier of the two in uid order
    second: Claim  # claim_2
    kind: PairKind  # the reference's "type"

    @property
    def group_id(self) -> GroupId:
        return self.first.group_id


def inconsistent_pairs(claims: Claims, rng: Optional[random.Random] = None) -> list[InconsistentPair]:
    """Every pair of labelled claims in one group whose labels break a rule, group by group in uid order.

    The reference (its pick_two_inconsistent_claims) shuffles the pairs; pass ``rng`` for that, or leave it
    None to keep group order.
    """
    groups: dict[GroupId, list[Claim]] = {}
    for claim in labelled_claims(claims):
        groups.setdefault(claim.group_id, []).append(claim)
    pairs: list[InconsistentPair] = []
    for group in groups.values():
        for i, first in enumerate(group):
            for second in group[i + 1:]:
                kind = _violation(first, second)
                if kind is not None:
                    pairs.append(InconsistentPair(first, second, kind))
    if rng is not None:
        rng.shuffle(pairs)
    return pairs


def _violation(first: Claim, second: Claim) -> Optional[PairKind]:
    key_1, key_2 = first.consistency_key, second.consistency_key
    if key_1 is None or key_2 is None:
        return None
    if key_1 != key_2:
        both_true = first.label == second.label == 1
        both_false_comparative = key_1 in COMPARATIVE_KEYS and first.label == second.label == 0
        return "contradiction" if both_true or both_false_comparative else None
    return "implication" if first.label != second.label else None


def decision_options(pair: InconsistentPair, allow_both_false: bool = False) -> list[tuple[int, int]]:
    """The labellings of (first, second) that the consistency fix tries, in the reference's order.

    The reference tries a decision score of 0 then 1, and keeps the first on ties. For a non-comparative
    contradiction it never tries both False; ``allow_both_false`` adds that option.
    """
    if pair.kind == "implication":
        return [(0, 0), (1, 1)]
    options = [(0, 1), (1, 0)]
    if allow_both_false and pair.first.consistency_key not in COMPARATIVE_KEYS:
        options.append((0, 0))
    return options


def relabel_pair(claims: Claims, pair: InconsistentPair, labels: tuple[int, int]) -> dict[int, Claim]:
    """A copy of ``claims`` (uid -> claim) with the pair's two claims relabelled (the reference's
    update_assign_based_on_decision)."""
    updated = dict(claims)
    for claim, label in ((pair.first, labels[0]), (pair.second, labels[1])):
        updated[claim.uid] = claims[claim.uid].relabelled(label)
    return updated
