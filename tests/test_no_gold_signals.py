"""Signals without gold (src/evaluation/no_gold_signals.py) on run directories written by hand: seed agreement up
to the global flip, share of True over iterations, violations left and final energy."""
import json
from pathlib import Path
from typing import Optional, Sequence

import pytest

from src.cli.cli_errors import UserError
from src.evaluation.no_gold_signals import label_agreement, run_labels, run_signals, seed_signals, share_true_drift
from tests.fake_runs import make_run


def claim(text: str, label: Optional[bool], group: int = 0, record: int = 0, gold: Optional[bool] = None) -> dict:
    """A labels.jsonl row with the fields the signals read (and a gold label they must not read)."""
    return {"uid": record, "record": record, "consistency_id": group, "prompt": f"Claim: {text}\nI think this claim is",
            "label": label, "gold_label": gold, "score": 0.1}


def write_run(out: Path, rows: Sequence[dict], shares: Optional[Sequence[Optional[float]]] = None,
              final: Optional[dict] = None, stopped_early: Optional[str] = None) -> Path:
    """A run directory: labels.jsonl of ``rows``, a log.jsonl with one line per share (``shares`` None: no log),
    and a summary.json with ``final`` (None: no summary)."""
    out.mkdir(parents=True)
    (out / "labels.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    if shares is not None:
        lines = [{"iter": i, "energy": -1.0, "train_accuracy": 0.5, "share_true": share} for i, share in enumerate(shares)]
        (out / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    if final is not None:
        (out / "summary.json").write_text(json.dumps({"final": final, "stopped_early": stopped_early}))
    return out


TEXTS = ["a", "b", "c", "d"]


def labelled(tmp_path: Path, name: str, labels: Sequence[Optional[bool]], texts: Sequence[str] = TEXTS, **kwargs) -> Path:
    return write_run(tmp_path / name, [claim(t, label, group=i // 2, record=i) for i, (t, label) in
                                       enumerate(zip(texts, labels))], **kwargs)


def agreement(tmp_path: Path, first: Sequence[Optional[bool]], second: Sequence[Optional[bool]], **kwargs) -> dict:
    return label_agreement(run_labels(labelled(tmp_path, "first", first)),
                           run_labels(labelled(tmp_path, "second", second, **kwargs)))


def test_identical_labels_agree_fully(tmp_path):
    assert agreement(tmp_path, [True, False, True, False], [True, False, True, False]) == {
        "shared": 4, "raw": 1.0, "agreement": 1.0, "orientation": "same"}


def test_labels_flipped_everywhere_agree_fully_up_to_the_flip(tmp_path):
    assert agreement(tmp_path, [True, False, True, True], [False, True, False, False]) == {
        "shared": 4, "raw": 0.0, "agreement": 1.0, "orientation": "flipped"}


@pytest.mark.parametrize("second, raw, agreed, orientation", [
    ([True, False, True, True], 0.75, 0.75, "same"),
    ([False, True, False, False], 0.25, 0.75, "flipped"),
    ([True, True, False, False], 0.5, 0.5, "same"),  # a tie reads as "same"
])
def test_partial_agreement_is_taken_the_better_way_round(tmp_path, second, raw, agreed, orientation):
    result = agreement(tmp_path, [True, False, True, False], second)
    assert (result["shared"], result["raw"], result["agreement"], result["orientation"]) == (4, raw, agreed, orientation)


def test_only_claims_labelled_in_both_runs_count(tmp_path):
    result = agreement(tmp_path, [True, None, True, False], [True, False, None, True])
    assert (result["shared"], result["raw"], result["agreement"]) == (2, 0.5, 0.5)


def test_runs_with_no_claim_in_common_have_no_agreement_rather_than_zero(tmp_path):
    result = agreement(tmp_path, [True, False, True, False], [True, False, True, False], texts=["w", "x", "y", "z"])
    assert result == {"shared": 0, "raw": None, "agreement": None, "orientation": None}
    nothing_labelled = agreement(tmp_path / "none", [True, False, True, False], [None, None, None, None])
    assert nothing_labelled["agreement"] is None


def test_claims_are_matched_by_group_and_text_not_by_position_or_record(tmp_path):
    first = write_run(tmp_path / "first", [claim("a", True, 0, 0), claim("b", False, 0, 1), claim("c", True, 1, 2)])
    # Listed in another order with other uids and records; "c" here is in another group, so another claim.
    second = write_run(tmp_path / "second", [claim("c", False, 7, 0), claim("b", False, 0, 5), claim("a", True, 0, 9)])
    result = label_agreement(run_labels(first), run_labels(second))
    assert (result["shared"], result["raw"]) == (2, 1.0)


def test_a_claim_listed_twice_is_matched_occurrence_by_occurrence(tmp_path):
    first = write_run(tmp_path / "first", [claim("a", True, 0, 0), claim("a", False, 0, 1)])
    second = write_run(tmp_path / "second", [claim("a", True, 0, 0), claim("a", True, 0, 1)])
    result = label_agreement(run_labels(first), run_labels(second))
    assert (result["shared"], result["raw"]) == (2, 0.5)


def test_the_share_of_true_over_iterations_gives_its_drift_and_range(tmp_path):
    run = labelled(tmp_path, "run", [True] * 4, shares=[None, 0.5, 0.625, 0.375, 0.75])
    assert share_true_drift(run) == {"first": 0.5, "last": 0.75, "drift": 0.25, "min": 0.375, "max": 0.75,
                                     "range": 0.375, "iterations": 4}
    falling = labelled(tmp_path, "falling", [True] * 4, shares=[0.75, 0.5, 0.25])
    assert share_true_drift(falling)["drift"] == -0.5 and share_true_drift(falling)["range"] == 0.5


def test_a_log_without_share_true_gives_none_and_nothing_is_recomputed(tmp_path):
    old = make_run(tmp_path / "old")  # ICM.py's files from before share_true was logged
    assert share_true_drift(old) is None and run_signals(old)["share_true"] is None
    mixed = labelled(tmp_path, "mixed", [True] * 4, shares=[0.5, 0.5])
    lines = (mixed / "log.jsonl").read_text().splitlines()
    line = json.loads(lines[0])
    del line["share_true"]
    (mixed / "log.jsonl").write_text("\n".join([json.dumps(line), *lines[1:]]) + "\n")
    assert share_true_drift(mixed) is None
    assert share_true_drift(labelled(tmp_path, "nolog", [True] * 4)) is None
    assert share_true_drift(labelled(tmp_path, "never", [None] * 4, shares=[None, None])) is None


def test_one_runs_signals(tmp_path):
    run = labelled(tmp_path, "run", [True, False, None, True], shares=[0.5, 2 / 3],
                   final={"energy": -3.5, "inconsistent_num": 2, "train_accuracy": 0.9}, stopped_early="SIGTERM")
    signals = run_signals(run)
    assert signals == {"run": str(run), "labelled": 3, "pool_size": 4, "final_share_true": 2 / 3,
                       "share_true": share_true_drift(run), "inconsistent_num": 2, "energy": -3.5,
                       "stopped_early": "SIGTERM"}
    assert signals["share_true"]["drift"] == pytest.approx(2 / 3 - 0.5)
    bare = run_signals(labelled(tmp_path, "bare", [None] * 4))  # no summary, nothing labelled
    assert (bare["energy"], bare["inconsistent_num"], bare["final_share_true"], bare["labelled"]) == (None, None, None, 0)


def test_the_signals_never_read_gold(tmp_path):
    rows = [claim(t, label, gold=gold) for t, label, gold in (("a", True, True), ("b", False, True))]
    swapped = [{**row, "gold_label": not row["gold_label"]} for row in rows]
    assert (run_signals(write_run(tmp_path / "gold", rows)) | {"run": ""}
            == run_signals(write_run(tmp_path / "swapped", swapped)) | {"run": ""})


def test_the_signals_of_several_seeds(tmp_path):
    def final(energy: float, violations: int) -> dict:
        return {"energy": energy, "inconsistent_num": violations}

    one = labelled(tmp_path, "one", [True, False, True, False], shares=[0.5, 0.5], final=final(-1.0, 0))
    two = labelled(tmp_path, "two", [False, True, False, True], shares=[0.5, 0.75], final=final(-3.0, 2))
    three = labelled(tmp_path, "three", [True, False, True, True], shares=[1.0, 0.75], final=final(-2.0, 1))
    elsewhere = labelled(tmp_path, "elsewhere", [True] * 4, texts=["w", "x", "y", "z"])  # no summary, no log
    signals = seed_signals([one, two, three, elsewhere])
    assert [run["run"] for run in signals["runs"]] == [str(one), str(two), str(three), str(elsewhere)]
    by_pair = {tuple(Path(d).name for d in pair["runs"]): pair for pair in signals["agreement"]["pairs"]}
    assert len(by_pair) == 6
    assert (by_pair["one", "two"]["agreement"], by_pair["one", "two"]["orientation"]) == (1.0, "flipped")
    assert (by_pair["one", "three"]["agreement"], by_pair["one", "three"]["orientation"]) == (0.75, "same")
    assert (by_pair["two", "three"]["agreement"], by_pair["two", "three"]["orientation"]) == (0.75, "flipped")
    assert all(by_pair[name, "elsewhere"]["agreement"] is None for name in ("one", "two", "three"))
    assert signals["agreement"]["mean"] == pytest.approx((1.0 + 0.75 + 0.75) / 3)  # the disjoint pairs left out
    assert signals["agreement"]["flipped"] == 2
    assert signals["energy"] == {"mean": -2.0, "min": -3.0, "max": -1.0, "runs": 3}
    assert signals["inconsistent_num"] == {"mean": 1, "min": 0, "max": 2, "runs": 3}
    assert signals["share_true_drift"] == {"mean": pytest.approx(0), "min": -0.25, "max": 0.25, "runs": 3}


def test_runs_that_share_nothing_have_no_mean_agreement(tmp_path):
    signals = seed_signals([labelled(tmp_path, "one", [True] * 4),
                            labelled(tmp_path, "two", [True] * 4, texts=["w", "x", "y", "z"])])
    assert signals["agreement"]["mean"] is None and signals["agreement"]["flipped"] == 0
    assert signals["energy"] is None and signals["share_true_drift"] is None


def test_what_cant_be_read_is_refused_by_name(tmp_path):
    with pytest.raises(UserError, match="give two or more run directories"):
        seed_signals([labelled(tmp_path, "one", [True] * 4)])
    with pytest.raises(UserError, match=f"^{tmp_path / 'empty'} has no labels.jsonl"):
        run_signals(tmp_path / "empty")
    damaged = labelled(tmp_path, "damaged", [True] * 4)
    (damaged / "labels.jsonl").write_text('{"label": 7, "prompt": "x", "consistency_id": 0}\n')
    with pytest.raises(UserError, match="labels.jsonl line 1 is damaged"):
        run_signals(damaged)
