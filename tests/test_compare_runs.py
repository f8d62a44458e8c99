"""Evaluation across labellers: per-item correctness in eval.json, reuse of a matching eval.json, several runs
and sweeps compared (test accuracy, performance gap recovered, pool-label accuracy, lines per labeller), the
interval arithmetic against scipy.stats, and the comparison figure.

No model is loaded: runs are written by tests/fake_runs.py, and evaluate.py scores with the synthetic model
(planted gold labels, demonstrations that pull the answer), under the run's own route and model name.
"""
import json
import math
import shutil
import sys

import numpy as np
import pytest
from scipy import stats

from core.llm_api.llm import ModelAPI
from core.llm_api.settings import Settings
from src.data.testbeds import TESTBED_SPECS, demo_records, normalise_records
from src.evaluation import comparison
from src.evaluation.comparison import (
    comparison_report,
    comparison_table,
    gap_recovered,
    pool_label_accuracy,
    t_interval,
)
from src.evaluation.evaluation import bootstrap_accuracy, run_condition_name
from tests.cli_helpers import call
from tests.fake_runs import make_run
from src.benchmarks.synthetic_model import SyntheticModel

EMBEDDED_MODEL = "SmolLM2-135M-Instruct.Q4_1"  # what fake_runs.make_run records as the run's model


@pytest.fixture(autouse=True)
def close_figures():
    yield
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


class EmbeddedSynthetic(SyntheticModel):
    """The synthetic model under the name of the route and model the fake runs recorded."""
    name, model = "embedded", EMBEDDED_MODEL

    def describe(self) -> dict:
        return {}


@pytest.fixture
def scoring(monkeypatch):
    """evaluate.py's ScoringPipeline replaced by one on the synthetic model; returns the pipelines opened."""
    from src.experiments import evaluate

    claims = normalise_records(demo_records(), TESTBED_SPECS["demo"], "demo", True)
    opened = []

    class SyntheticPipeline:
        def __init__(self, options, settings):
            self.model_api = ModelAPI(settings=Settings(), route=EmbeddedSynthetic(claims, [c["label"] for c in claims], seed=5))
            opened.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.model_api.close()

    monkeypatch.setattr(evaluate, "ScoringPipeline", SyntheticPipeline)
    return opened


def demo_run(folder, seed, labeller="icm"):
    return make_run(folder, ["--testbed", "demo", "--batch_size", "8", "--num_seed", "8", "--K", "2", "--seed", str(seed),
                             "--labeller", labeller])


def evaluate_cli(argv, capsys):
    from src.experiments import evaluate

    return call(evaluate, [*argv, "--no-progress"], capsys)


def read(path):
    return json.loads(path.read_text())


def error_line(stderr):
    assert "Traceback" not in stderr, stderr
    [line] = [line for line in stderr.splitlines() if line.startswith("error:")]
    return line


# -- the arithmetic, against scipy.stats -------------------------------------------------------------------------

def by_hand_gap(zero, gold, run):
    return (np.mean(run) - np.mean(zero)) / (np.mean(gold) - np.mean(zero))


def test_gap_recovered_halfway_and_its_interval_is_scipys_paired_bootstrap():
    # 40 test items: zero-shot right on 20, golden on 36, the run on 28: half of the gap.
    zero = [1] * 20 + [0] * 20
    gold = [1] * 20 + [1] * 16 + [0] * 4
    run = [1] * 20 + [1] * 8 + [0] * 12
    gap = gap_recovered(zero, gold, run, seed=11, resamples=999)
    assert gap["value"] == pytest.approx(0.5) and gap["reason"] is None
    direct = stats.bootstrap((np.array(zero), np.array(gold), np.array(run)), by_hand_gap, paired=True, vectorized=False,
                             confidence_level=0.95, n_resamples=999, method="percentile", rng=np.random.default_rng(11))
    assert (gap["ci_low"], gap["ci_high"]) == pytest.approx((direct.confidence_interval.low, direct.confidence_interval.high))
    assert gap["ci_low"] < 0.5 < gap["ci_high"]
    # Paired: the items are resampled jointly. Shuffling the run's items apart from the others changes the interval.
    unpaired = gap_recovered(zero, gold, run[::-1], seed=11, resamples=999)
    assert unpaired["value"] == pytest.approx(0.5)
    assert (unpaired["ci_low"], unpaired["ci_high"]) != pytest.approx((gap["ci_low"], gap["ci_high"]))


def test_gap_recovered_is_undefined_when_golden_equals_zero_shot():
    gap = gap_recovered([1, 0, 1, 0], [0, 1, 1, 0], [1, 1, 1, 0])
    assert gap["value"] is None and gap["ci_low"] is None and gap["ci_high"] is None
    assert "equal" in gap["reason"] and "50.0%" in gap["reason"]


def test_gap_recovered_has_no_interval_when_resamples_close_the_gap():
    # Golden beats zero-shot on one item of five: most resamples leave it out, and there the ratio is 0/0.
    gap = gap_recovered([1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], resamples=500)
    assert gap["value"] == pytest.approx(1.0)
    assert gap["ci_low"] is None and gap["ci_high"] is None and "of 500 resamples" in gap["reason"]


def test_gap_recovered_is_undefined_when_golden_is_below_zero_shot():
    # Zero-shot right on 15 of 20 items (75%), golden on 5 (25%): there is no gap to recover, whatever the run got.
    zero, gold = [1] * 15 + [0] * 5, [1] * 5 + [0] * 15
    for run in (gold, zero, [1] * 20):  # at golden's accuracy (was "100%"), at zero-shot's (was "-0.0%"), above both
        gap = gap_recovered(zero, gold, run, resamples=200)
        assert (gap["value"], gap["ci_low"], gap["ci_high"]) == (None, None, None)
        assert gap["reason"] == ("golden labels do not beat zero-shot here (25.0% vs 75.0%): there is no gap to recover")


def test_resamples_where_golden_does_not_beat_zero_shot_are_undefined():
    # A batch of three resamples (rows): golden above zero-shot, equal, below. Only the first has a ratio.
    zero = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=float)
    gold = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=float)
    run = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=float)
    ratios = comparison._gap_statistic(zero, gold, run)
    assert ratios[0] == pytest.approx(0.5) and math.isnan(ratios[1]) and math.isnan(ratios[2])
    # A gap of one item in eight: many resamples drop it or turn it round, so there is no interval, and the
    # reason says so in the existing words.
    gap = gap_recovered([1, 1, 1, 0, 1, 0, 0, 0], [1, 1, 1, 1, 0, 1, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0], resamples=300)
    assert gap["value"] == pytest.approx((6 - 4) / (5 - 4)) and gap["ci_low"] is None and gap["ci_high"] is None
    assert "golden does not beat zero-shot in" in gap["reason"] and "of 300 resamples" in gap["reason"]


def test_a_gap_that_rounds_to_zero_is_never_printed_as_minus_zero():
    gap = gap_recovered([1] * 5 + [0] * 5, [1] * 9 + [0], [1] * 5 + [0] * 5, resamples=200)  # at zero-shot: 0, not −0
    assert gap["value"] == 0 and math.copysign(1, gap["value"]) == 1
    interval = {"accuracy": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 10}
    run = {"run_dir": "a", "labeller": "icm", "seed": 1, "test_accuracy": interval, "pool_label_accuracy": None,
           "gap_recovered": {"value": -0.0, "ci_low": -0.00004, "ci_high": 0.2}}
    line = {"testbed": "demo", "labeller": "icm", "runs": 2, "test_accuracy": {**interval, "mean": 0.5},
            "gap_recovered": {"mean": -0.0, "ci_low": -0.0003, "ci_high": 0.1}, "pool_label_accuracy": None}
    table = comparison_table({"runs": [run], "labellers": [line]})
    assert "-0.0" not in table and "0.0%" in table
    assert comparison.percent_text(-0.0) == comparison.percent_text(-0.00001) == "0.0"
    assert comparison.percent_text(-0.0006) == "-0.1" and comparison.percent_text(-0.0, "5.1f") == "  0.0"


def test_gap_recovered_refuses_conditions_on_different_items():
    with pytest.raises(ValueError):
        gap_recovered([1, 0], [1, 1, 0], [1, 0])


def test_bootstrap_accuracy_is_scipys_percentile_bootstrap_and_keeps_the_items():
    correct = [1] * 27 + [0] * 13
    result = bootstrap_accuracy(correct, seed=4, resamples=1500)
    direct = stats.bootstrap((np.array(correct, dtype=float),), np.mean, confidence_level=0.95, n_resamples=1500,
                             method="percentile", random_state=np.random.default_rng(4)).confidence_interval
    assert (result.ci_low, result.ci_high) == pytest.approx((direct.low, direct.high))
    assert result.correct == tuple(correct) and result.as_dict()["correct"] == correct


def test_t_interval_across_runs_is_the_student_t_interval():
    values = [0.61, 0.72, 0.66, 0.70]
    line = t_interval(values)
    half = stats.t.ppf(0.975, df=3) * np.std(values, ddof=1) / math.sqrt(4)
    assert line["mean"] == pytest.approx(np.mean(values)) and line["n"] == 4
    assert (line["ci_low"], line["ci_high"]) == pytest.approx((np.mean(values) - half, np.mean(values) + half))
    assert t_interval([0.5]) == {"mean": 0.5, "ci_low": None, "ci_high": None, "n": 1}  # one run: no spread to measure
    assert t_interval([0.5, 0.5]) == {"mean": 0.5, "ci_low": 0.5, "ci_high": 0.5, "n": 2}
    assert t_interval([]) is None


def test_pool_label_accuracy_counts_labelled_claims_with_gold():
    rows = [{"label": True, "gold_label": True}, {"label": False, "gold_label": True}, {"label": None, "gold_label": False},
            {"label": True, "gold_label": None}, {"label": False, "gold_label": False}]
    assert pool_label_accuracy(rows) == {"accuracy": pytest.approx(2 / 3), "n": 3}
    assert pool_label_accuracy([{"label": True, "gold_label": None}]) is None


def test_the_runs_condition_is_named_after_its_labeller_and_icm_keeps_its_old_name():
    assert run_condition_name(None) == run_condition_name("icm") == "ICM labels"
    assert run_condition_name("bootstrap-consistency") == "bootstrap-consistency labels"
    assert run_condition_name("random") == "random-labeller labels"  # not the evaluation's own "random labels"


# -- eval.json -----------------------------------------------------------------------------------------------------

def test_eval_json_keeps_each_conditions_correctness_per_test_item(tmp_path, scoring, capsys):
    run = demo_run(tmp_path / "boot", 1, "bootstrap-consistency")
    code, stderr = evaluate_cli(["--run-dir", run, "--limit", "30", "--seed", "3"], capsys)
    assert code == 0, stderr
    report = read(run / "eval.json")
    assert report["labeller"] == "bootstrap-consistency" and report["run_condition"] == "bootstrap-consistency labels"
    assert list(report["conditions"]) == ["zero-shot", "random labels", "gold labels", "bootstrap-consistency labels"]
    assert len(report["test_items"]) == len(set(report["test_items"])) == report["n_test"] == 30
    pool_groups = {json.loads(line)["consistency_id"] for line in (run / "labels.jsonl").read_text().splitlines()}
    claims = normalise_records(demo_records(), TESTBED_SPECS["demo"], "demo", True)
    assert not {claims[i]["consistency_id"] for i in report["test_items"]} & pool_groups  # items are test claims
    for result in report["conditions"].values():
        assert len(result["correct"]) == 30 and set(result["correct"]) <= {0, 1}
        assert sum(result["correct"]) / 30 == pytest.approx(result["accuracy"])
    rows = [json.loads(line) for line in (run / "labels.jsonl").read_text().splitlines()]
    assert report["pool_label_accuracy"] == pool_label_accuracy(rows)


def test_an_icm_run_keeps_the_icm_labels_condition(tmp_path, scoring, capsys):
    run = demo_run(tmp_path / "icm", 1)
    assert evaluate_cli(["--run-dir", run, "--limit", "8"], capsys)[0] == 0
    report = read(run / "eval.json")
    assert report["run_condition"] == "ICM labels" and "ICM labels" in report["conditions"]


def test_a_matching_eval_json_is_reused_and_anything_that_changes_the_result_scores_again(tmp_path, scoring, capsys):
    run = demo_run(tmp_path / "run", 1)
    assert evaluate_cli(["--run-dir", run, "--limit", "10"], capsys)[0] == 0
    assert len(scoring) == 1
    first = (run / "eval.json").read_bytes()
    code, stderr = evaluate_cli(["--run-dir", run, "--limit", "10"], capsys)
    assert code == 0 and "reusing" in stderr
    assert len(scoring) == 1 and (run / "eval.json").read_bytes() == first  # no model opened, nothing rewritten
    for flags in (["--limit", "11"], ["--limit", "10", "--seed", "1"], ["--limit", "10", "--max-demos", "3"],
                  ["--limit", "10", "--rescore"]):
        opened = len(scoring)
        assert evaluate_cli(["--run-dir", run, *flags], capsys)[0] == 0
        assert len(scoring) == opened + 1, flags
    # New labels (a resumed run) are evaluated anew.
    assert evaluate_cli(["--run-dir", run, "--limit", "10"], capsys)[0] == 0
    opened = len(scoring)
    rows = [json.loads(line) for line in (run / "labels.jsonl").read_text().splitlines()]
    rows[0]["label"] = not rows[0]["label"]
    (run / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert evaluate_cli(["--run-dir", run, "--limit", "10"], capsys)[0] == 0
    assert len(scoring) == opened + 1


def test_an_eval_json_of_an_older_version_is_not_reused(tmp_path, scoring, capsys):
    run = demo_run(tmp_path / "run", 1)
    assert evaluate_cli(["--run-dir", run, "--limit", "10"], capsys)[0] == 0
    report = read(run / "eval.json")
    for result in report["conditions"].values():
        del result["correct"]
    (run / "eval.json").write_text(json.dumps(report))
    assert evaluate_cli(["--run-dir", run, "--limit", "10"], capsys)[0] == 0
    assert len(scoring) == 2 and "correct" in read(run / "eval.json")["conditions"]["zero-shot"]


# -- comparing runs ------------------------------------------------------------------------------------------------

def four_runs(folder):
    return [demo_run(folder / f"{labeller}-seed{seed}", seed, labeller)
            for labeller in ("icm", "bootstrap") for seed in (1, 2)]


def test_several_runs_are_compared_per_run_and_per_labeller(tmp_path, scoring, capsys):
    runs = four_runs(tmp_path / "runs")
    out = tmp_path / "comparison"
    code, stderr = evaluate_cli(["--run-dir", *runs, "--compare-out", out, "--limit", "40"], capsys)
    assert code == 0, stderr
    comparison = read(out / "comparison.json")
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [(r["labeller"], r["seed"]) for r in comparison["runs"]] == [("icm", 1), ("icm", 2), ("bootstrap", 1), ("bootstrap", 2)]
    for entry, run in zip(comparison["runs"], runs):
        report = read(run / "eval.json")
        own, zero, gold = (report["conditions"][name] for name in (report["run_condition"], "zero-shot", "gold labels"))
        assert entry["alpha"] == 30.0 and entry["true_share"] is None and entry["n_test"] == 40
        assert entry["test_accuracy"] == {key: own[key] for key in ("accuracy", "ci_low", "ci_high", "n")}
        if gold["accuracy"] == zero["accuracy"]:
            assert entry["gap_recovered"]["value"] is None
        else:
            expected = (own["accuracy"] - zero["accuracy"]) / (gold["accuracy"] - zero["accuracy"])
            assert entry["gap_recovered"]["value"] == pytest.approx(expected)
            assert entry["gap_recovered"] == gap_recovered(zero["correct"], gold["correct"], own["correct"], seed=0)
        rows = [json.loads(line) for line in (run / "labels.jsonl").read_text().splitlines()]
        assert entry["pool_label_accuracy"] == pool_label_accuracy(rows)
    lines = {line["labeller"]: line for line in comparison["labellers"]}
    assert set(lines) == {"icm", "bootstrap"}
    for labeller, line in lines.items():
        members = [r for r in comparison["runs"] if r["labeller"] == labeller]
        assert line["runs"] == 2 and line["seeds"] == [1, 2]
        assert line["test_accuracy"] == t_interval(r["test_accuracy"]["accuracy"] for r in members)
        assert line["pool_label_accuracy"] == t_interval(r["pool_label_accuracy"]["accuracy"] for r in members)
    [panel] = comparison["figure"]
    assert [bar["bar"] for bar in panel["bars"]] == ["zero-shot", "bootstrap", "ICM", "golden labels"]


def test_settings_that_change_results_part_runs_and_paths_do_not():
    base = {"testbed": "demo", "seed": 1, "labeller": "bootstrap"}
    same = comparison.result_settings(base)
    assert "seed" not in same and same["K"] == 3000 and same["bootstrap_rounds"] == 10 and same["pool_seed"] is None
    assert comparison.result_settings({**base, "seed": 2, "data_dir": "/elsewhere", "cache_dir": "/c", "no_cache": True}) == same
    for change in ({"pool_seed": 7}, {"bootstrap_rounds": 3}, {"K": 5}, {"alpha": 10.0}, {"true_share": 0.2}):
        assert comparison.result_settings({**base, **change}) != same, change


def report_with(zero, gold, own, condition="random-labeller labels"):
    def result(correct):
        accuracy = sum(correct) / len(correct)
        return {"accuracy": accuracy, "ci_low": accuracy, "ci_high": accuracy, "n": len(correct), "correct": correct}

    return {"testbed": "demo", "model": "m", "run_condition": condition, "n_test": len(zero), "seed": 0,
            "test_items": list(range(len(zero))), "pool_label_accuracy": None,
            "conditions": {"zero-shot": result(zero), "gold labels": result(gold), condition: result(own)}}


def test_golden_below_zero_shot_gives_no_gap_per_run_or_per_line():
    # The reviewer's case: zero-shot 75%, golden 25%; runs at 25% had "100%" recovered, one at 75% "-0.0%".
    zero, gold = [1] * 15 + [0] * 5, [1] * 5 + [0] * 15
    evaluated = [(f"runs/r{seed}", {"testbed": "demo", "labeller": "random", "seed": seed}, report_with(zero, gold, own), False)
                 for seed, own in ((1, gold), (2, gold), (3, zero))]
    result = comparison_report(evaluated, resamples=200)
    for run in result["runs"]:
        assert run["gap_recovered"]["value"] is None and "do not beat zero-shot" in run["gap_recovered"]["reason"]
    [line] = result["labellers"]
    assert line["gap_recovered"] is None and line["gap_recovered_undefined_runs"] == 3
    table = comparison_table(result)
    assert "100.0" not in table and "-0.0" not in table  # no "100%" recovered, no "-0.0%"


def test_runs_drawn_from_different_data_are_different_lines():
    # Same settings, seeds 1 and 2, but pools drawn from two data files (paths dropped, contents told by sha256).
    zero, gold, own = [1] * 5 + [0] * 5, [1] * 9 + [0], [1] * 8 + [0] * 2
    evaluated = [(f"runs/r{seed}", {"testbed": "custom", "labeller": "random", "seed": seed, "data": f"/data/{digest}.json"},
                  {**report_with(zero, gold, own), "pool_source_sha256": digest * 16}, False)
                 for seed, digest in ((1, "a" * 4), (2, "b" * 4))]
    lines = comparison_report(evaluated, resamples=100)["labellers"]
    assert [(line["runs"], line["label"]) for line in lines] == [(1, "pool_data=" + "a" * 12), (1, "pool_data=" + "b" * 12)]


def test_runs_of_different_settings_or_repeated_seeds_are_not_pooled(tmp_path, scoring, capsys):
    # The reviewer's four bootstrap runs: pool seed none vs 7, --bootstrap-rounds 10 vs 3, and seed 1 three times;
    # plus a copy of the first run (seed 1 again, same settings) and a second seed of the first setting.
    def bootstrap_run(name, seed, *flags):
        return make_run(tmp_path / "runs" / name, ["--testbed", "demo", "--batch_size", "8", "--num_seed", "8", "--K", "2",
                                                  "--seed", str(seed), "--labeller", "bootstrap", *flags])

    first = bootstrap_run("plain-1", 1)
    pool_seeded = bootstrap_run("pool7-1", 1, "--pool-seed", "7")
    fewer_rounds = bootstrap_run("rounds3-1", 1, "--bootstrap-rounds", "3")
    second = bootstrap_run("plain-2", 2, "--data-dir", str(tmp_path))  # a path is not a setting that parts runs
    copy = tmp_path / "runs" / "plain-1-copy"
    shutil.copytree(first, copy)
    out = tmp_path / "comparison"
    code, stderr = evaluate_cli(["--run-dir", first, pool_seeded, fewer_rounds, second, copy, "--compare-out", out,
                                 "--limit", "8"], capsys)
    assert code == 0, stderr
    comparison = read(out / "comparison.json")
    assert len(comparison["labellers"]) == 3  # plain (seeds 1, 1, 2), pool seed 7, three bootstrap rounds
    lines = {line["label"]: line for line in comparison["labellers"]}
    assert set(lines) == {"bootstrap_rounds=10, pool_seed=none", "bootstrap_rounds=10, pool_seed=7",
                          "bootstrap_rounds=3, pool_seed=none"}
    plain = lines["bootstrap_rounds=10, pool_seed=none"]
    assert plain["runs"] == 3 and sorted(plain["seeds"]) == [1, 1, 2] and plain["repeated_seeds"] == [1]
    assert "seed 1 appears more than once" in plain["interval_note"]
    assert plain["test_accuracy"]["ci_low"] is None and plain["test_accuracy"]["ci_high"] is None
    assert plain["test_accuracy"]["mean"] == pytest.approx(
        np.mean([r["test_accuracy"]["accuracy"] for r in comparison["runs"] if r["run_dir"] in plain["run_dirs"]]))
    for label in ("bootstrap_rounds=10, pool_seed=7", "bootstrap_rounds=3, pool_seed=none"):
        assert lines[label]["runs"] == 1 and lines[label]["interval_note"] is None
    [warning] = [line for line in stderr.splitlines() if line.startswith("warning: bootstrap")]
    assert "seed 1 appears more than once" in warning and str(copy) in warning and str(first) in warning
    [panel] = comparison["figure"]
    names = [bar["bar"] for bar in panel["bars"]]
    assert names[0] == "zero-shot" and names[-1] == "golden labels" and len(names) == 5
    assert "bootstrap\nbootstrap_rounds=10\npool_seed=7" in names
    [plain_bar] = [bar for bar in panel["bars"] if bar["bar"] == "bootstrap\nbootstrap_rounds=10\npool_seed=none"]
    assert plain_bar["runs"] == 3 and plain_bar["ci_low"] is None and plain_bar["interval"].startswith("none: seed 1")
    # Without the copy, the first setting's two seeds are two samples again, with a t-interval.
    shutil.rmtree(copy)
    assert evaluate_cli(["--run-dir", first, second, "--compare-out", out, "--limit", "8"], capsys)[0] == 0
    [line] = read(out / "comparison.json")["labellers"]
    assert line["runs"] == 2 and line["label"] == "" and line["test_accuracy"] == t_interval(
        r["test_accuracy"]["accuracy"] for r in read(out / "comparison.json")["runs"])


def test_the_comparison_table_is_printed(tmp_path, scoring, capsys):
    runs = four_runs(tmp_path / "runs")[:2]
    from src.experiments import evaluate

    code = evaluate.main([*["--run-dir", *map(str, runs)], "--compare-out", str(tmp_path / "out"), "--limit", "8",
                          "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "gap recovered" in out and "icm" in out and "runs=2" in out


def test_a_sweep_folder_is_compared_into_itself_and_a_second_call_scores_nothing(tmp_path, scoring, capsys):
    sweep = tmp_path / "sweep"
    runs = four_runs(sweep / "demo")
    (sweep / "notes").mkdir()  # a folder without labels.jsonl is not a run
    code, stderr = evaluate_cli(["--sweep", sweep, "--limit", "12"], capsys)
    assert code == 0, stderr
    comparison = read(sweep / "comparison.json")
    assert sorted(r["run_dir"] for r in comparison["runs"]) == sorted(str(r) for r in runs)
    assert not any(r["eval_reused"] for r in comparison["runs"]) and len(scoring) == 4
    code, stderr = evaluate_cli(["--sweep", sweep, "--limit", "12"], capsys)
    assert code == 0 and len(scoring) == 4  # every eval.json reused
    again = read(sweep / "comparison.json")
    assert all(r["eval_reused"] for r in again["runs"])
    assert again["labellers"] == comparison["labellers"]


def test_compare_runs_is_callable_without_the_command_line(tmp_path, scoring):
    from src.experiments.evaluate import EvaluationOptions, compare_runs

    runs = four_runs(tmp_path / "runs")
    comparison = compare_runs(runs, EvaluationOptions(limit=8))
    assert len(comparison["runs"]) == 4 and comparison["evaluation"]["limit"] == 8
    assert not (tmp_path / "runs" / "comparison.json").exists()  # no out: nothing written but eval.json


# -- bad input -----------------------------------------------------------------------------------------------------

def test_a_sweep_folder_without_runs_is_one_error(tmp_path, scoring, capsys):
    (tmp_path / "empty" / "cell").mkdir(parents=True)
    code, stderr = evaluate_cli(["--sweep", tmp_path / "empty"], capsys)
    assert code == 2 and "no run directories under it" in error_line(stderr)
    assert not (tmp_path / "empty" / "comparison.json").exists() and not scoring
    code, stderr = evaluate_cli(["--sweep", tmp_path / "missing"], capsys)
    assert code == 2 and "no such folder" in error_line(stderr)


def test_a_run_without_labels_among_several_is_refused_before_any_scoring(tmp_path, scoring, capsys):
    good = demo_run(tmp_path / "good", 1)
    bad = tmp_path / "bad"
    bad.mkdir()
    code, stderr = evaluate_cli(["--run-dir", good, bad, "--compare-out", tmp_path / "out"], capsys)
    assert code == 2
    line = error_line(stderr)
    assert str(bad) in line and "no labels.jsonl there" in line
    assert not scoring and not (good / "eval.json").exists() and not (tmp_path / "out").exists()


def test_several_runs_need_a_place_for_the_comparison(tmp_path, scoring, capsys):
    runs = four_runs(tmp_path / "runs")[:2]
    code, stderr = evaluate_cli(["--run-dir", *runs], capsys)
    assert code == 2 and "--compare-out DIR" in error_line(stderr) and not scoring
    code, stderr = evaluate_cli(["--run-dir", runs[0], "--sweep", tmp_path / "runs"], capsys)
    assert code == 2 and "not allowed with" in error_line(stderr)


def test_the_comparison_is_not_written_over_a_data_file(tmp_path, scoring, capsys):
    run = demo_run(tmp_path / "run", 1)
    data = tmp_path / "data"
    data.mkdir()
    (data / "comparison.json").write_text("[]")  # a data file that happens to have that name
    code, stderr = evaluate_cli(["--run-dir", run, "--compare-out", data, "--data-dir", data], capsys)
    assert code == 2 and "--compare-out" in error_line(stderr)
    assert (data / "comparison.json").read_text() == "[]" and not scoring


def test_the_comparison_is_not_written_into_a_run_directory(tmp_path, scoring, capsys):
    runs = four_runs(tmp_path / "runs")[:2]
    before = sorted(p.name for p in runs[0].iterdir())
    code, stderr = evaluate_cli(["--run-dir", *runs, "--compare-out", runs[0]], capsys)
    assert code == 2 and stderr.count("error:") == 1
    line = error_line(stderr)
    assert f"--compare-out {runs[0]} is a run directory" in line and f"--compare-out {tmp_path / 'runs' / 'comparison'}" in line
    assert sorted(p.name for p in runs[0].iterdir()) == before and not scoring  # refused before any scoring
    # A sweep folder that is itself one run: the comparison has nowhere of its own to go.
    code, stderr = evaluate_cli(["--sweep", runs[1]], capsys)
    assert code == 2 and f"--sweep {runs[1]} is itself a run directory" in error_line(stderr)
    assert "pass --compare-out DIR" in error_line(stderr) and not (runs[1] / "comparison.json").exists()
    # compare_runs, called from a script, refuses it too.
    from src.experiments.evaluate import EvaluationError, compare_runs

    with pytest.raises(EvaluationError, match="is a run directory"):
        compare_runs(runs, out=runs[1])
    assert not scoring


# -- the figure ----------------------------------------------------------------------------------------------------

def test_the_comparison_figure_draws_each_bar_with_its_interval():
    from src.evaluation.figures import comparison_figure

    bars = [{"bar": "zero-shot", "kind": "zero-shot", "mean": 0.5, "ci_low": 0.4, "ci_high": 0.6, "runs": 1},
            {"bar": "bootstrap+consistency", "kind": "bootstrap-consistency", "mean": 0.7, "ci_low": 0.65, "ci_high": 0.8, "runs": 3},
            {"bar": "ICM", "kind": "icm", "mean": 0.75, "ci_low": None, "ci_high": None, "runs": 1},
            {"bar": "golden labels", "kind": "gold", "mean": 0.9, "ci_low": 0.85, "ci_high": 0.95, "runs": 1}]
    figure = comparison_figure([{"testbed": "demo", "model": "m", "bars": bars}, {"testbed": "gsm8k", "model": "m", "bars": bars}],
                               "title")
    assert len(figure.axes) == 2
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.get_xticklabels()] == [b["bar"] for b in bars]
    assert [p.get_height() for p in axes.patches] == pytest.approx([50, 70, 75, 90])
    [bar_container] = [c for c in axes.containers if hasattr(c, "errorbar")]
    segments = bar_container.errorbar.lines[2][0].get_segments()  # the vertical error bars, one per bar
    assert [tuple(s[:, 1]) for s in segments] == [pytest.approx((40, 60)), pytest.approx((65, 80)), pytest.approx((75, 75)),
                                                   pytest.approx((85, 95))]
    assert "n=3" in [t.get_text() for t in axes.texts]
