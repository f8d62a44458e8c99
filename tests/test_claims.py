"""The typed Claim: built from testbed records, relabelled by copy, and written to labels.jsonl and checkpoint.json
exactly as the dict claims were."""
import dataclasses
import json
import random

import pytest

from src.data.claims import Claim, claim_from_label_row, label_row, labelled_claims, share_of_true
from src.data.testbeds import TESTBED_SPECS, normalise_records
from src.run_directory.checkpoint import load_checkpoint, pool_fingerprint, restore_state, save_checkpoint
from src.run_directory.run_directory import RunDirectory
from src.run_directory.run_outputs import jsonl, label_rows
from src.search.annealing import SearchState, seed_claims
from tests.claim_factory import by_uid, claim

# A record as the data may hold it: extra fields, and its text fields in another order than labels.jsonl's.
RECORD = {"answer": "42", "extra": [1, 2], "choice_2": "B", "question": "Q?", "choice": "A", "label": True,
          "consistency_id": "g1"}


def alpaca_claims():
    return normalise_records([RECORD, {**RECORD, "choice": "B", "choice_2": "A", "label": False}],
                             TESTBED_SPECS["alpaca"], "test", True)


def test_a_record_becomes_a_claim_under_the_named_fields():
    [first, _] = alpaca_claims()
    made = Claim.from_record(first, uid=3, label=0, seed=True)
    assert (made.uid, made.text, made.group_id, made.consistency_key, made.gold_label, made.label, made.seed, made.record) == (
        3, first["prompt"], "g1", "A>B", 1, 0, True, 0)
    assert made.data_text == (("question", "Q?"), ("choice", "A"), ("choice_2", "B"), ("answer", "42"))
    assert made.has_data_field("choice_2") and not made.has_data_field("cot")


def test_relabelling_makes_a_new_claim_and_leaves_the_old_one():
    original = claim(0, 1, key="a")
    relabelled = original.relabelled(0)
    assert (original.label, relabelled.label) == (1, 0)
    assert dataclasses.replace(relabelled, label=1) == original
    with pytest.raises(dataclasses.FrozenInstanceError):
        original.label = 0  # type: ignore[misc]


def test_the_label_row_has_the_keys_and_order_labels_jsonl_always_had():
    pool = seed_claims(alpaca_claims(), 2, random.Random(0))
    row = label_row(pool[0], 0.25, 0.9)
    assert list(row) == ["uid", "record", "consistency_id", "question", "choice", "choice_2", "answer", "prompt", "label",
                         "gold_label", "score", "label_mass", "labelled_by_search", "initial_random_label"]
    assert row["prompt"] == pool[0].text and row["consistency_id"] == "g1" and row["gold_label"] is True
    assert row["label"] is bool(pool[0].label) and row["initial_random_label"] is True and row["labelled_by_search"] is True
    unlabelled = label_row(claim(5, None, gold=None), None, None)
    assert (unlabelled["label"], unlabelled["gold_label"], unlabelled["labelled_by_search"], unlabelled["initial_random_label"]) == (
        None, None, False, False)
    assert "question" not in unlabelled  # text fields the data didn't have are not written as null
    assert jsonl(label_rows(pool, {0: 0.25}, {0: 0.9})).splitlines()[0] == json.dumps(row, ensure_ascii=False)


def test_a_label_row_reads_back_as_the_claim_but_its_consistency_key():
    pool = seed_claims(alpaca_claims(), 2, random.Random(0))
    for made in pool.values():
        assert claim_from_label_row(label_row(made, 1.0, 1.0)) == dataclasses.replace(made, consistency_key=None)


def test_a_checkpoint_restores_the_claims_it_saved(tmp_path):
    pool = seed_claims(alpaca_claims(), 2, random.Random(0))
    searched = {0: pool[0].relabelled(1 - pool[0].label), 1: pool[1].relabelled(None)}
    metric = {"train_prob": 0.5, "inconsistent_num": 0, "train_accuracy": None, "train_size": 1}
    run = {"format": 2, "run_id": "r", "pool_fingerprint": pool_fingerprint(pool)}
    files = RunDirectory(tmp_path)
    save_checkpoint(files, run, SearchState(searched, metric, iteration=3, flip_cnt=1), random.Random(1))
    saved = load_checkpoint(files, run)
    assert saved["labels"] == {"0": searched[0].label, "1": None}
    state, _ = restore_state(saved, pool, files.checkpoint_file)
    assert state.claims == searched and (state.iteration, state.flip_cnt, state.metric) == (3, 1, metric)


def test_the_fingerprint_reads_the_claims_fields_under_their_file_names():
    pool = seed_claims(alpaca_claims(), 2, random.Random(0))
    fingerprint = pool_fingerprint(pool)
    assert fingerprint.split()[0] == "v2"
    assert [part.split("=")[0] for part in fingerprint.split()[1:]] == ["prompt", "consistency_id", "consistency_key", "vanilla_label"]
    for field, value in (("text", "other"), ("group_id", "g2"), ("consistency_key", "B>A"), ("gold_label", 0)):
        changed = {**pool, 0: dataclasses.replace(pool[0], **{field: value})}
        assert pool_fingerprint(changed) != fingerprint, field
    assert pool_fingerprint({**pool, 0: pool[0].relabelled(None)}) == fingerprint  # labels are the search's own


def test_labelled_claims_are_the_labelled_ones_in_uid_order():
    claims = {4: claim(4, 0), 1: claim(1, None), 0: claim(0, 1), 2: claim(2, 1)}
    assert [c.uid for c in labelled_claims(claims)] == [0, 2, 4]
    assert labelled_claims(by_uid(claim(0, None))) == []


def test_share_of_true_leaves_unlabelled_claims_out_and_reads_ints_and_bools_alike():
    assert share_of_true([1, 0, None, True]) == 2 / 3
    assert share_of_true([False, 0, None]) == 0.0
    assert share_of_true([None, None]) is None and share_of_true([]) is None
