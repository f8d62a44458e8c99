import json
import random
from collections import Counter

import pytest

from src.data.testbeds import (
    TESTBED_SPECS, DataError, demo_records, load_testbed_claims, normalise_records, sample_pool,
)


def test_gsm8k_uses_the_solution_as_claim_and_normalises_mixed_labels(data_dir):
    claims, source, from_test = load_testbed_claims("gsm8k", data_dir, None, True)
    assert from_test and source.endswith("test_gsm8k.json")
    raw = json.loads((data_dir / "test_gsm8k.json").read_text())
    assert {type(r["label"]) for r in raw} == {bool, int}  # the file really mixes them
    assert {c["label"] for c in claims} == {0, 1}
    first = claims[0]
    assert first["prompt"] == f"Question: {raw[0]['question']}\nClaim: {raw[0]['cot']}\nI think this claim is"
    assert first["consistency_key"] == raw[0]["answer"]


def test_truthfulqa_key_leaks_gold_only_in_paper_mode(data_dir):
    paper, _, _ = load_testbed_claims("truthfulQA", data_dir, None, True)
    assert {(c["label"], c["consistency_key"]) for c in paper} == {(1, "A"), (0, "B")}
    no_gold, _, _ = load_testbed_claims("truthfulQA", data_dir, None, False)
    assert {c["consistency_key"] for c in no_gold} == {None}


@pytest.mark.parametrize("testbed", ["alpaca", "truthfulQA-preference"])
def test_structural_comparative_key_gives_the_gold_partition(data_dir, testbed):
    paper, _, _ = load_testbed_claims(testbed, data_dir, None, True)
    structural, _, _ = load_testbed_claims(testbed, data_dir, None, False)
    for group_start in range(0, 200, 2):
        a, b = paper[group_start:group_start + 2]
        x, y = structural[group_start:group_start + 2]
        assert (a["consistency_key"] == b["consistency_key"]) == (x["consistency_key"] == y["consistency_key"])
        assert x["consistency_key"] in ("A>B", "B>A")


def test_alpaca_template_drops_newlines_from_responses():
    record = {"question": "Q?", "choice": "line one\nline two", "choice_2": "other", "label": True, "consistency_id": 0}
    [claim] = normalise_records([record], TESTBED_SPECS["alpaca"], "x.json", True)
    assert "Response 1: line oneline two\nResponse 2: other\n" in claim["prompt"]


def test_pool_is_whole_groups_and_the_same_for_the_same_seed(data_dir):
    claims, source, _ = load_testbed_claims("truthfulQA", data_dir, None, True)
    pool = sample_pool(claims, TESTBED_SPECS["truthfulQA"], 32, random.Random(7), source)
    assert len(pool) == 32
    assert set(Counter(c["consistency_id"] for c in pool).values()) == {4}
    again = sample_pool(claims, TESTBED_SPECS["truthfulQA"], 32, random.Random(7), source)
    assert pool == again
    other = sample_pool(claims, TESTBED_SPECS["truthfulQA"], 32, random.Random(8), source)
    assert pool != other


def test_demo_testbed_is_built_in_and_consistent():
    records = demo_records()
    assert len(records) == 64
    groups = Counter(r["consistency_id"] for r in records)
    assert set(groups.values()) == {4}
    for cid in groups:
        group = [r for r in records if r["consistency_id"] == cid]
        assert sum(r["label"] for r in group) == 2
        assert len({r["consistency_key"] for r in group if r["label"]}) == 1  # both true claims agree


def test_uneven_groups_are_refused_for_fixed_size_testbeds_and_allowed_for_custom(data_dir):
    claims, source, _ = load_testbed_claims("custom", None, data_dir / "test_truthfulqa.json", True)
    with pytest.raises(DataError, match="needs exactly 4 per group"):
        sample_pool(claims, TESTBED_SPECS["truthfulQA"], 8, random.Random(0), source)
    pool = sample_pool(claims, TESTBED_SPECS["custom"], 40, random.Random(0), source)
    ids = [c["consistency_id"] for c in pool]
    assert 0 < len(pool) <= 40
    for cid in set(ids):  # whole groups only
        assert ids.count(cid) == sum(c["consistency_id"] == cid for c in claims)
