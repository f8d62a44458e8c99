"""The search's pure parts: the consistency rules (src/search/consistency.py) and the energy (src/search/energy.py)."""
import math
import random

import pytest

from src.search.consistency import InconsistentPair, decision_options, inconsistent_pairs, relabel_pair
from src.search.energy import annealing_temperature, labelling_energy, labelling_metric, metropolis_accept
from tests.claim_factory import by_uid, claim


def pair_set(pairs):
    return {(p.first.uid, p.second.uid, p.kind) for p in pairs}


def test_gsm8k_style_group_finds_contradictions_and_implications():
    # Two solutions reach "600", one "83", one "84": same answer must agree, different answers can't both be True.
    data = by_uid(claim(0, 1, key="600"), claim(1, 0, key="600"), claim(2, 1, key="83"), claim(3, 0, key="84"))
    assert pair_set(inconsistent_pairs(data)) == {
        (0, 1, "implication"), (0, 2, "contradiction"),
    }


def test_both_false_is_fine_for_claims_but_not_for_comparisons():
    claims = by_uid(claim(0, 0, key="A"), claim(1, 0, key="B"))
    assert inconsistent_pairs(claims) == []
    comparisons = by_uid(claim(0, 0, key="A>B"), claim(1, 0, key="B>A"))
    assert pair_set(inconsistent_pairs(comparisons)) == {(0, 1, "contradiction")}


def test_rules_stay_inside_a_group_and_skip_unlabeled_and_keyless_claims():
    data = by_uid(
        claim(0, 1, group=0, key="x"), claim(1, 1, group=1, key="y"),  # different groups: no rule
        claim(2, None, group=0, key="z"),  # unlabeled
        claim(3, 1, group=0, key=None),  # no key: takes part in no rule
    )
    assert inconsistent_pairs(data) == []


def test_shuffle_uses_the_given_rng_and_keeps_all_pairs():
    data = by_uid(*[claim(i, 1, key=str(i)) for i in range(5)])  # 10 contradictions
    plain = inconsistent_pairs(data)
    shuffled = inconsistent_pairs(data, random.Random(1))
    assert len(plain) == len(shuffled) == 10
    assert pair_set(plain) == pair_set(shuffled)
    assert [p.second.uid for p in shuffled] == [p.second.uid for p in inconsistent_pairs(data, random.Random(1))]
    assert shuffled != plain  # the shuffle moved something


def test_pairs_name_their_group():
    [pair] = inconsistent_pairs(by_uid(claim(0, 1, group="g7", key="a"), claim(1, 1, group="g7", key="b")))
    assert pair.group_id == "g7"


def test_decision_options_follow_the_reference_order():
    contradiction = InconsistentPair(claim(0, 1, key="a"), claim(1, 1, key="b"), "contradiction")
    assert decision_options(contradiction) == [(0, 1), (1, 0)]
    assert decision_options(contradiction, allow_both_false=True) == [(0, 1), (1, 0), (0, 0)]
    comparative = InconsistentPair(claim(0, 0, key="A>B"), claim(1, 0, key="B>A"), "contradiction")
    assert decision_options(comparative, allow_both_false=True) == [(0, 1), (1, 0)]
    implication = InconsistentPair(claim(0, 1, key="a"), claim(1, 0, key="a"), "implication")
    assert decision_options(implication) == [(0, 0), (1, 1)]


def test_relabel_pair_copies_and_relabels_only_the_pair():
    data = by_uid(claim(0, 1, key="a"), claim(1, 1, key="b"), claim(2, 1, key="c"))
    pair = inconsistent_pairs(by_uid(data[0], data[1]))[0]
    updated = relabel_pair(data, pair, (0, 1))
    assert [updated[i].label for i in range(3)] == [0, 1, 1]
    assert [data[i].label for i in range(3)] == [1, 1, 1]
    assert updated[2] is data[2] and updated[0] == data[0].relabelled(0)


def test_labelling_metric_by_hand():
    # Claims 0 and 1 share a key but not a label (one broken implication); claim 2 is alone in its group.
    data = by_uid(claim(0, 1, key="a", gold=1), claim(1, 0, key="a", gold=1), claim(2, 0, group=1, key="a", gold=0),
                  claim(3, None, gold=1))
    metric = labelling_metric(data, {0: 2.0, 1: 1.0, 2: -3.0}, "mean")
    # Signed scores: 2, -1, 3 -> mean 4/3; two of three labels match gold; the unlabelled claim counts nowhere.
    assert metric == {"train_accuracy": pytest.approx(2 / 3), "train_prob": pytest.approx(4 / 3), "inconsistent_num": 1,
                      "train_size": 3, "train_predict_distribution": {"1": 1, "0": 2}}
    assert labelling_metric(data, {0: 2.0, 1: 1.0, 2: -3.0}, "sum")["train_prob"] == pytest.approx(4.0)
    assert labelling_metric(by_uid(claim(0, 1)), {0: 1.0}, "mean")["train_accuracy"] is None
    assert labelling_metric(by_uid(claim(0, None)), {}, "mean")["train_prob"] == 0.0


def test_energy_and_temperature_by_hand():
    assert labelling_energy({"train_prob": 0.5, "inconsistent_num": 3}, alpha=30) == pytest.approx(12.0)
    assert annealing_temperature(0, 10, 0.01, 0.99, "log") == pytest.approx(10.0)
    assert annealing_temperature(9, 10, 0.01, 0.99, "log") == pytest.approx(10 / (1 + 2 * math.log(10)))
    assert annealing_temperature(10, 10, 0.01, 0.9, "exp") == pytest.approx(10 * 0.9 ** 10)
    assert annealing_temperature(10_000, 10, 0.01, 0.9, "exp") == 0.01
    with pytest.raises(ValueError, match="schedule"):
        annealing_temperature(1, 10, 0.01, 0.9, "linear")


def test_metropolis_never_overflows_and_follows_the_rule():
    assert metropolis_accept(1e6, 1e-9, 0.999)  # exp(1e15) would overflow
    assert metropolis_accept(0.0, 0.01, 0.999)
    assert metropolis_accept(-1.0, 1.0, math.exp(-1.0) - 1e-9)
    assert not metropolis_accept(-1.0, 1.0, math.exp(-1.0) + 1e-9)
    assert not metropolis_accept(-1e6, 1e-9, 0.0)
