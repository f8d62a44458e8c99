import math
import random

import pytest

from src.search.ICM_tools import (
    calculate_accuracy, decision_options, get_energy, get_temperature, metropolis_accept,
    pick_two_inconsistent_claims, update_assign_based_on_decision,
)


def claim(uid, label, cid=0, key=None, gold=None, score=0.0):
    return {"uid": uid, "label": label, "consistency_id": cid, "consistency_key": key, "vanilla_label": gold, "score": score}


def as_data(*claims):
    return {c["uid"]: c for c in claims}


def pair_set(pairs):
    return {(p["claim_1"]["uid"], p["claim_2"]["uid"], p["type"]) for p in pairs.values()}


def test_gsm8k_style_group_finds_contradictions_and_implications():
    # Two solutions reach "600", one "83", one "84": same answer must agree, different answers can't both be True.
    data = as_data(claim(0, 1, key="600"), claim(1, 0, key="600"), claim(2, 1, key="83"), claim(3, 0, key="84"))
    assert pair_set(pick_two_inconsistent_claims(data)) == {
        (0, 1, "implication"), (0, 2, "contradiction"),
    }


def test_both_false_is_fine_for_claims_but_not_for_comparisons():
    claims = as_data(claim(0, 0, key="A"), claim(1, 0, key="B"))
    assert pick_two_inconsistent_claims(claims) == {}
    comparisons = as_data(claim(0, 0, key="A>B"), claim(1, 0, key="B>A"))
    assert pair_set(pick_two_inconsistent_claims(comparisons)) == {(0, 1, "contradiction")}


def test_rules_stay_inside_a_group_and_skip_unlabeled_and_keyless_claims():
    data = as_data(
        claim(0, 1, cid=0, key="x"), claim(1, 1, cid=1, key="y"),  # different groups: no rule
        claim(2, None, cid=0, key="z"),  # unlabeled
        claim(3, 1, cid=0, key=None),  # no key: takes part in no rule
    )
    assert pick_two_inconsistent_claims(data) == {}


def test_shuffle_uses_the_given_rng_and_keeps_all_pairs():
    data = as_data(*[claim(i, 1, key=str(i)) for i in range(5)])  # 10 contradictions
    plain = pick_two_inconsistent_claims(data)
    shuffled = pick_two_inconsistent_claims(data, random.Random(1))
    assert sorted(plain) == sorted(shuffled) == list(range(10))
    assert pair_set(plain) == pair_set(shuffled)
    assert [p["claim_2"]["uid"] for p in shuffled.values()] == [
        p["claim_2"]["uid"] for p in pick_two_inconsistent_claims(data, random.Random(1)).values()
    ]


def test_decision_options_follow_the_reference_order():
    contradiction = {"type": "contradiction", "claim_1": claim(0, 1, key="a"), "claim_2": claim(1, 1, key="b")}
    assert decision_options(contradiction) == [(0, 1), (1, 0)]
    assert decision_options(contradiction, allow_both_false=True) == [(0, 1), (1, 0), (0, 0)]
    comparative = {"type": "contradiction", "claim_1": claim(0, 0, key="A>B"), "claim_2": claim(1, 0, key="B>A")}
    assert decision_options(comparative, allow_both_false=True) == [(0, 1), (1, 0)]
    implication = {"type": "implication", "claim_1": claim(0, 1, key="a"), "claim_2": claim(1, 0, key="a")}
    assert decision_options(implication) == [(0, 0), (1, 1)]


def test_update_assign_copies_and_relabels_only_the_pair():
    data = as_data(claim(0, 1, key="a"), claim(1, 1, key="b"), claim(2, 1, key="c"))
    pair = pick_two_inconsistent_claims(as_data(data[0], data[1]))[0]
    updated = update_assign_based_on_decision(data, pair, (0, 1))
    assert [updated[i]["label"] for i in range(3)] == [0, 1, 1]
    assert [data[i]["label"] for i in range(3)] == [1, 1, 1]


def test_calculate_accuracy_by_hand():
    data = as_data(claim(0, 1, gold=1, score=2.0), claim(1, 0, gold=1, score=1.0), claim(2, 0, gold=0, score=-3.0))
    metric = calculate_accuracy(data, {0: "pair"})
    # Signed scores: 2, -1, 3 -> mean 4/3; two of three labels match gold.
    assert metric["train_prob"] == pytest.approx(4 / 3)
    assert metric["train_accuracy"] == pytest.approx(2 / 3)
    assert metric["inconsistent_num"] == 1
    assert metric["train_size"] == 3
    assert calculate_accuracy(as_data(claim(0, 1, score=1.0)), {})["train_accuracy"] is None


def test_energy_and_temperature_by_hand():
    assert get_energy({"train_prob": 0.5, "inconsistent_num": 3}, alpha=30) == pytest.approx(12.0)
    assert get_temperature(0, 10, 0.01, 0.99, "log") == pytest.approx(10.0)
    assert get_temperature(9, 10, 0.01, 0.99, "log") == pytest.approx(10 / (1 + 2 * math.log(10)))
    assert get_temperature(10, 10, 0.01, 0.9, "exp") == pytest.approx(10 * 0.9 ** 10)
    assert get_temperature(10_000, 10, 0.01, 0.9, "exp") == 0.01
    with pytest.raises(ValueError, match="schedule"):
        get_temperature(1, 10, 0.01, 0.9, "linear")


def test_metropolis_never_overflows_and_follows_the_rule():
    assert metropolis_accept(1e6, 1e-9, 0.999)  # exp(1e15) would overflow
    assert metropolis_accept(0.0, 0.01, 0.999)
    assert metropolis_accept(-1.0, 1.0, math.exp(-1.0) - 1e-9)
    assert not metropolis_accept(-1.0, 1.0, math.exp(-1.0) + 1e-9)
    assert not metropolis_accept(-1e6, 1e-9, 0.0)
