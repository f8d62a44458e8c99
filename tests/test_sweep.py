"""sweep.py: a grid of ordinary runs under one folder, resumable, one cell at a time if asked, aggregated into
two CSVs and a figure. Model-free (the stand-in pipeline) except the last test, which runs the CI's small sweep
on the embedded model."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scipy import stats

from src.experiments import plot, sweep
from src.run_directory.run_directory import RunDirectory
from src.sweep import cell_runs
from src.evaluation.comparison import gap_recovered
from src.evaluation.no_gold_signals import seed_signals
from src.sweep.aggregate import CELL_COLUMNS, SUMMARY_COLUMNS, eval_columns, summarise
from src.sweep.grid import expand, parse_axes
from tests.conftest import REPO_ROOT, SMALL_EMBEDDED, run_outcome
from tests.stand_in_pipeline import use_stand_in

SHARED = ["--testbed", "demo", "--batch_size", "8", "--num_seed", "2", "--K", "3", "--no-progress"]
GRID = ["--seeds", "1", "2", "--alphas", "10", "30"]
NAMES = ["demo/alpha=10,seed=1", "demo/alpha=10,seed=2", "demo/alpha=30,seed=1", "demo/alpha=30,seed=2"]


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    return use_stand_in(monkeypatch, tmp_path)


def run_sweep(capsys, *argv) -> tuple[int, str, str]:
    code = sweep.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def csv_rows(path: Path) -> list[dict]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def assert_refused(code: int, err: str, message: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "Traceback" not in err


# --- the grid ---------------------------------------------------------------------------------------------------

def test_the_grid_is_the_product_of_its_axes_seed_fastest_with_readable_names():
    axes = parse_axes({"seed": ["1", "2"], "labeller": ["icm", "bootstrap-consistency"], "alpha": ["30"],
                       "true_share": ["0.2", "none"], "testbed": ["truthfulQA"]})
    cells = expand(axes, testbed="gsm8k")
    assert len(cells) == 8 and [c.index for c in cells] == list(range(8))
    assert cells[0].name == "truthfulQA/labeller=icm,alpha=30,true_share=0.2,seed=1"
    assert cells[1].name == "truthfulQA/labeller=icm,alpha=30,true_share=0.2,seed=2"
    assert cells[2].name == "truthfulQA/labeller=icm,alpha=30,true_share=none,seed=1"
    assert cells[7].name == "truthfulQA/labeller=bootstrap-consistency,alpha=30,true_share=none,seed=2"
    assert cells[0].flags() == ["--testbed", "truthfulQA", "--labeller", "icm", "--alpha", "30", "--true-share", "0.2",
                                "--seed", "1"]
    assert "--true-share" not in cells[2].flags()  # none: the pool as drawn
    assert expand(parse_axes({"seed": ["5"]}), testbed="demo")[0].name == "demo/seed=5"


def test_list_prints_every_cell_with_its_index_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "sweep"
    code, stdout, _ = run_sweep(capsys, "--out", out, *GRID, "--list", "--", *SHARED)
    assert code == 0
    assert stdout.splitlines() == [f"{i}\tnew\t{name}" for i, name in enumerate(NAMES)]
    assert not out.exists()


# --- running, skipping, resuming ----------------------------------------------------------------------------------

def test_every_cell_is_an_ordinary_run_with_its_settings_and_the_sweep_is_aggregated(stand_in, tmp_path, capsys):
    out = tmp_path / "sweep"
    code, _, err = run_sweep(capsys, "--out", out, *GRID, "--", *SHARED)
    assert code == 0, err
    record = json.loads((out / "sweep.json").read_text())
    assert record["axes"] == {"alpha": [10.0, 30.0], "seed": [1, 2]}
    assert [c["name"] for c in record["cells"]] == NAMES
    assert record["shared_settings"] == {"testbed": "demo", "batch_size": 8, "num_seed": 2, "K": 3}
    for name in NAMES:
        settings = json.loads((out / name / "run.json").read_text())["settings"]
        alpha, seed = name.split("/")[1].split(",")
        assert settings["alpha"] == float(alpha.split("=")[1]) and settings["seed"] == int(seed.split("=")[1])
        assert settings["K"] == 3 and settings["batch_size"] == 8 and settings["labeller"] == "icm"
        assert json.loads((out / name / "summary.json").read_text())["iterations"] == 3
    assert len(stand_in.instances) == 4
    # The companion scripts work on a cell unchanged.
    assert plot.main([str(out / NAMES[0])]) == 0 and (out / NAMES[0] / "progress.png").is_file()
    rows = csv_rows(out / "sweep.csv")
    assert [r["cell"] for r in rows] == NAMES and list(rows[0]) == CELL_COLUMNS
    for row, name in zip(rows, NAMES):
        labels = [json.loads(line) for line in (out / name / "labels.jsonl").read_text().splitlines()]
        labelled = [r for r in labels if r["label"] is not None]
        assert float(row["pool_label_accuracy"]) == pytest.approx(
            sum(r["label"] == r["gold_label"] for r in labelled) / len(labelled))
        summary = json.loads((out / name / "summary.json").read_text())
        assert float(row["final_energy"]) == pytest.approx(summary["final"]["energy"])
        per_claim = summary["cost"]["per_labelled_claim"]
        assert float(row["computed_tokens_per_claim"]) == pytest.approx(per_claim["computed_prompt_tokens"])
        assert float(row["requests_per_claim"]) == pytest.approx(per_claim["requests"])
        assert row["dollars"] == ""  # not the hosted API: no price
        assert row["state"] == "done" and row["testbed"] == "demo" and row["test_accuracy"] == ""  # no eval.json
    summary_rows = csv_rows(out / "sweep_summary.csv")
    assert list(summary_rows[0]) == SUMMARY_COLUMNS
    assert [(r["alpha"], r["cells"], r["done"], r["pool_label_accuracy_n"]) for r in summary_rows] == \
        [("10.0", "2", "2", "2"), ("30.0", "2", "2", "2")]
    seeds = [float(r["pool_label_accuracy"]) for r in rows[:2]]
    assert float(summary_rows[0]["pool_label_accuracy_mean"]) == pytest.approx(sum(seeds) / 2)
    assert (out / "sweep.png").stat().st_size > 10_000


def test_the_summary_reports_the_seeds_agreement_on_one_pool_and_the_drift_of_each_cell(stand_in, tmp_path, capsys):
    # With --pool-seed every seed labels the same pool, so their labels can be compared (up to the global flip).
    out = tmp_path / "sweep"
    code, _, err = run_sweep(capsys, "--out", out, "--seeds", "1", "2", "3", "--", *SHARED, "--pool-seed", "4")
    assert code == 0, err
    dirs = [out / f"demo/seed={seed}" for seed in (1, 2, 3)]
    expected = seed_signals(dirs)
    (line,) = csv_rows(out / "sweep_summary.csv")
    assert int(line["seed_pairs_compared"]) == 3 and int(line["seed_pairs_flipped"]) == expected["agreement"]["flipped"]
    assert 0.5 <= float(line["seed_agreement_mean"]) <= 1
    assert float(line["seed_agreement_mean"]) == pytest.approx(expected["agreement"]["mean"])
    assert float(line["final_energy_mean"]) == pytest.approx(expected["energy"]["mean"])
    for row, run_dir in zip(csv_rows(out / "sweep.csv"), dirs):
        log = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
        shares = [x["share_true"] for x in log if x["share_true"] is not None]
        assert float(row["share_true_drift"]) == pytest.approx(shares[-1] - shares[0])


def fake_eval_json(cell: Path, labels_sha256) -> dict:
    """An eval.json as evaluate.py writes it for ``cell``'s labels (``labels_sha256``; None: recorded without it)."""
    zero, gold, own = [1] * 5 + [0] * 5, [1] * 9 + [0], [1] * 8 + [0] * 2
    report = {"run_condition": "ICM labels", "seed": 0, "labels_used": {"sha256": labels_sha256}, "conditions": {
        "zero-shot": {"accuracy": 0.5, "correct": zero}, "gold labels": {"accuracy": 0.9, "correct": gold},
        "ICM labels": {"accuracy": 0.8, "ci_low": 0.6, "ci_high": 1.0, "n": 10, "correct": own}}}
    if labels_sha256 is None:
        del report["labels_used"]
    (cell / "eval.json").write_text(json.dumps(report))
    return report


def test_an_eval_json_of_other_labels_than_the_cells_leaves_its_test_columns_empty(stand_in, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert run_sweep(capsys, "--out", out, "--seeds", "1", "2", "3", "--", *SHARED)[0] == 0
    cells = [out / f"demo/seed={seed}" for seed in (1, 2, 3)]
    for cell in cells:
        fake_eval_json(cell, hashlib.sha256((cell / "labels.jsonl").read_bytes()).hexdigest())
    # Cell 1 ran on after it was evaluated (its labels changed, as a resume with more rounds changes them);
    # cell 2's eval.json predates the labels' hash.
    rows = [json.loads(line) for line in (cells[1] / "labels.jsonl").read_text().splitlines()]
    rows[0]["label"] = not rows[0]["label"]
    (cells[1] / "labels.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    fake_eval_json(cells[2], None)
    code, _, err = run_sweep(capsys, "--out", out, "--aggregate")
    assert code == 0, err
    fresh, stale, unhashed = csv_rows(out / "sweep.csv")
    assert float(fresh["test_accuracy"]) == 0.8 and float(fresh["gap_recovered"]) == pytest.approx(0.75)
    for row in (stale, unhashed):
        assert all(row[name] == "" for name in ("test_accuracy", "test_ci_low", "n_test", "zero_shot_accuracy",
                                                "gold_accuracy", "gap_recovered", "gap_recovered_ci_low"))
        assert row["pool_label_accuracy"] != ""  # the cell's own files are still read
    assert "cell 1 (demo/seed=2): its eval.json was made from other labels than its labels.jsonl holds now" in err
    assert f"Evaluate it again: python src/experiments/evaluate.py --run-dir {cells[1]}" in err
    assert "cell 2 (demo/seed=3): its eval.json records no hash of the labels it evaluated" in err
    [line] = csv_rows(out / "sweep_summary.csv")
    assert line["test_accuracy_n"] == "1" and float(line["test_accuracy_mean"]) == 0.8


def test_a_damaged_cell_is_left_out_of_its_settings_seed_signals_only(stand_in, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert run_sweep(capsys, "--out", out, "--seeds", "1", "2", "3", "--", *SHARED, "--pool-seed", "4")[0] == 0
    dirs = [out / f"demo/seed={seed}" for seed in (1, 2, 3)]
    expected = seed_signals(dirs[:2])
    with (dirs[2] / "labels.jsonl").open("a") as labels:
        labels.write("{not json\n")
    code, _, err = run_sweep(capsys, "--out", out, "--aggregate")
    assert code == 0, err
    (line,) = csv_rows(out / "sweep_summary.csv")
    assert line["seed_pairs_compared"] == "1" and int(line["seed_pairs_flipped"]) == expected["agreement"]["flipped"]
    assert float(line["seed_agreement_mean"]) == pytest.approx(expected["agreement"]["mean"])
    assert float(line["final_energy_mean"]) == pytest.approx(expected["energy"]["mean"])
    assert float(line["inconsistent_num_mean"]) == pytest.approx(expected["inconsistent_num"]["mean"])
    assert float(line["share_true_drift_mean"]) == pytest.approx(expected["share_true_drift"]["mean"])
    assert "cell 2 (demo/seed=3) is left out of its setting's seed signals" in err


def test_the_same_command_again_skips_finished_cells(stand_in, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert run_sweep(capsys, "--out", out, *GRID, "--", *SHARED)[0] == 0
    before = {name: run_outcome(out / name) for name in NAMES}
    code, _, err = run_sweep(capsys, "--out", out, *GRID, "--", *SHARED)
    assert code == 0, err
    assert len(stand_in.instances) == 4  # no new run
    assert err.count("done, skipped") == 4
    assert {name: run_outcome(out / name) for name in NAMES} == before


def test_a_cell_stopped_midway_is_resumed_to_the_uninterrupted_result(monkeypatch, tmp_path, capsys):
    clean = tmp_path / "uninterrupted"
    use_stand_in(monkeypatch, tmp_path)
    assert run_sweep(capsys, "--out", clean, "--seeds", "1", "--", *SHARED)[0] == 0
    out = tmp_path / "sweep"
    use_stand_in(monkeypatch, tmp_path, fail_after=4)  # the server goes down after the seeds' first iterations
    code, _, err = run_sweep(capsys, "--out", out, "--seeds", "1", "--", *SHARED)
    assert code == 2 and "error: cell 0 (demo/seed=1): " in err and "the stand-in server is down" in err
    assert cell_runs.cell_state(out / "demo/seed=1") == "partial" and not (out / "sweep.csv").exists()
    use_stand_in(monkeypatch, tmp_path)
    code, _, err = run_sweep(capsys, "--out", out, "--seeds", "1", "--", *SHARED)
    assert code == 0, err
    assert "cell 0 (demo/seed=1): resuming" in err and "resuming " in err  # the run's own --resume
    assert run_outcome(out / "demo/seed=1") == run_outcome(clean / "demo/seed=1")
    assert (out / "sweep.csv").is_file()


def test_cell_I_runs_that_cell_only_with_or_without_the_grid(stand_in, tmp_path, capsys):
    out = tmp_path / "sweep"
    code, _, err = run_sweep(capsys, "--out", out, *GRID, "--cell", "2", "--", *SHARED)
    assert code == 0, err
    assert [n for n in NAMES if (out / n / "summary.json").exists()] == [NAMES[2]]
    assert not (out / "sweep.csv").exists()  # a lone cell doesn't aggregate: the array's other jobs are running
    code, _, err = run_sweep(capsys, "--out", out, "--cell", "1")  # the recorded sweep
    assert code == 0, err
    assert [n for n in NAMES if (out / n / "summary.json").exists()] == [NAMES[1], NAMES[2]]
    code, stdout, _ = run_sweep(capsys, "--out", out, "--list")
    assert [line.split("\t")[1] for line in stdout.splitlines()] == ["new", "done", "done", "new"]
    assert_refused(*run_sweep(capsys, "--out", out, "--cell", "4")[::2], "--cell 4: the sweep in")


def test_a_cell_another_process_is_running_is_skipped_and_the_rest_run(stand_in, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert run_sweep(capsys, "--out", out, *GRID, "--cell", "0", "--", *SHARED)[0] == 0  # the array's first task
    with RunDirectory(out / NAMES[1]).lock():  # as the task running cell 1 holds it
        code, _, err = run_sweep(capsys, "--out", out, *GRID, "--", *SHARED)
    assert code == 0, err
    assert f"note: cell 1 ({NAMES[1]}) is being run by another process" in err
    assert [cell_runs.cell_state(out / n) for n in NAMES] == ["done", "new", "done", "done"]
    assert not (out / "sweep.csv").exists() and "aggregate once they are" in err


@pytest.mark.parametrize("axis, flag, value", [("--seeds", "--seed", "3"), ("--alphas", "--alpha", "5"),
                                                ("--labellers", "--labeller", "icm"),
                                                ("--true-shares", "--true-share", "0.5"),
                                                ("--testbeds", "--testbed", "demo")])
def test_an_axis_given_again_after_the_separator_is_refused_by_name(tmp_path, capsys, axis, flag, value):
    out = tmp_path / "sweep"
    code, _, err = run_sweep(capsys, "--out", out, axis, value, "--", flag, value)
    assert_refused(code, err, f"{flag} after -- is an axis of this sweep ({axis})")
    assert not out.exists()


def test_bad_values_are_refused_with_the_flag_to_fix(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert_refused(*run_sweep(capsys, "--out", out, "--alphas", "30", "0")[::2], "--alphas 0: --alpha 0")
    assert_refused(*run_sweep(capsys, "--out", out, "--seeds", "1", "1")[::2], "--seeds lists 1 twice")
    assert_refused(*run_sweep(capsys, "--out", out, "--seeds", "1", "--", "--output-dir", "x")[::2], "--output-dir after --")
    assert_refused(*run_sweep(capsys, "--out", out, "--seeds", "1", "--", "--K", "-1")[::2], "after --: --K -1")
    assert_refused(*run_sweep(capsys, "--out", out, "--cell", "0")[::2], "holds no sweep.json")
    assert not out.exists()


def test_a_changed_grid_is_refused_and_added_values_extend_the_sweep(stand_in, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert run_sweep(capsys, "--out", out, "--seeds", "1", "2", "--", *SHARED)[0] == 0
    record = (out / "sweep.json").read_text()
    changed = [SHARED[:-2] + ["5", "--no-progress"], "--K is 3, this command's 5"]
    for argv, message in [(["--seeds", "1", "2", "--", *changed[0]], changed[1]),
                          (["--seeds", "1", "--", *SHARED], "its --seeds also holds 2"),
                          (["--seeds", "1", "2", "--alphas", "30", "--", *SHARED], "it varies --seeds, this command --alphas --seeds"),
                          (["--seeds", "1", "2", "--", *SHARED, "--allow-both-false"], "--allow-both-false is not given")]:
        code, _, err = run_sweep(capsys, "--out", out, *argv)
        assert_refused(code, err, message)
        assert "holds another sweep" in err
        assert (out / "sweep.json").read_text() == record
    code, _, err = run_sweep(capsys, "--out", out, "--seeds", "3", "1", "2", "--", *SHARED)
    assert code == 0, err
    assert "1 new cell(s)" in err and err.count("done, skipped") == 2
    cells = json.loads((out / "sweep.json").read_text())["cells"]
    assert [(c["index"], c["name"]) for c in cells] == [(0, "demo/seed=1"), (1, "demo/seed=2"), (2, "demo/seed=3")]
    assert len(csv_rows(out / "sweep.csv")) == 3


def test_a_bad_cell_is_refused_before_anything_is_recorded(stand_in, tmp_path, capsys):
    out = tmp_path / "sweep"
    code, _, err = run_sweep(capsys, "--out", out, "--labellers", "icm", "random", "--", *SHARED, "--paper-mode")
    assert_refused(code, err, "cell 1 (demo/labeller=random): --labeller random contradicts --paper-mode")
    assert not (out / "sweep.json").exists() and stand_in.instances == []


def test_a_sweep_whose_first_cell_never_started_takes_the_corrected_flags(stand_in, tmp_path, capsys):
    out = tmp_path / "sweep"
    wrong = ["--testbed", "custom", "--data", str(tmp_path / "missing.json"), *SHARED[2:]]
    code, _, err = run_sweep(capsys, "--out", out, "--seeds", "1", "--", *wrong)
    assert code == 2 and "error: cell 0 (custom/seed=1): " in err
    code, _, err = run_sweep(capsys, "--out", out, "--seeds", "1", "--", *SHARED)
    assert code == 0, err
    assert json.loads((out / "sweep.json").read_text())["shared_settings"]["testbed"] == "demo"
    assert cell_runs.cell_state(out / "demo/seed=1") == "done"


def test_a_new_sweep_is_not_mixed_into_a_run_or_other_files(stand_in, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert_refused(*run_sweep(capsys, "--out", taken, "--seeds", "1", "--", *SHARED)[::2], "holds other files")
    assert sorted(p.name for p in taken.iterdir() if p.name != ".sweep.lock") == ["notes.txt"]


# --- aggregation arithmetic ---------------------------------------------------------------------------------------

def test_the_summary_groups_done_cells_over_seeds():
    base = {"testbed": "demo", "labeller": "icm", "true_share": None, "test_accuracy": None, "gap_recovered": None}
    rows = [{**base, "alpha": 30.0, "seed": s, "state": "done", "pool_label_accuracy": v} for s, v in [(1, 0.5), (2, 0.7), (3, 0.9)]]
    rows += [{**base, "alpha": 30.0, "seed": 4, "state": "partial", "pool_label_accuracy": 0.0},
             {**base, "alpha": 10.0, "seed": 1, "state": "done", "pool_label_accuracy": 0.8}]
    first, second = summarise(rows)
    low, high = stats.t.interval(0.95, 2, loc=0.7, scale=stats.sem([0.5, 0.7, 0.9]))
    assert (first["cells"], first["done"], first["pool_label_accuracy_n"]) == (4, 3, 3)
    assert (first["pool_label_accuracy_mean"], first["pool_label_accuracy_ci_low"], first["pool_label_accuracy_ci_high"]) \
        == pytest.approx((0.7, low, high))
    assert first["test_accuracy_n"] == 0 and first["test_accuracy_mean"] is None
    assert (second["alpha"], second["pool_label_accuracy_mean"], second["pool_label_accuracy_ci_low"]) == (10.0, 0.8, None)


def test_eval_json_gives_test_accuracy_and_gap_recovered_with_its_paired_interval():
    # Ten test items: zero-shot gets 5 right, golden 9, the run's labels 8, so the gap recovered is (8-5)/(9-5).
    zero, gold, own = [1] * 5 + [0] * 5, [1] * 9 + [0], [1] * 8 + [0] * 2
    report = {"run_condition": "bootstrap-consistency labels", "seed": 3, "conditions": {
        "zero-shot": {"accuracy": 0.5, "correct": zero}, "random labels": {"accuracy": 0.6, "correct": [1] * 6 + [0] * 4},
        "gold labels": {"accuracy": 0.9, "correct": gold},
        "bootstrap-consistency labels": {"accuracy": 0.8, "ci_low": 0.6, "ci_high": 1.0, "n": 10, "correct": own}}}
    columns = eval_columns(report)
    assert columns["test_accuracy"] == 0.8 and (columns["test_ci_low"], columns["test_ci_high"]) == (0.6, 1.0)
    expected = gap_recovered(zero, gold, own, seed=3)
    assert columns["gap_recovered"] == pytest.approx(0.75) == expected["value"]
    assert (columns["gap_recovered_ci_low"], columns["gap_recovered_ci_high"]) == (expected["ci_low"], expected["ci_high"])
    no_gap = eval_columns({**report, "conditions": {**report["conditions"], "gold labels": {"accuracy": 0.5, "correct": zero}}})
    assert no_gap["gap_recovered"] is None  # gold no better than zero-shot: no gap to recover
    # Golden below zero-shot (zero-shot 50%, golden 20%): no gap either, though a run at 20% would be "100%" by the
    # ratio and one at 50% "-0%".
    below = [1] * 2 + [0] * 8
    for run in (below, zero):
        flipped = eval_columns({**report, "conditions": {**report["conditions"], "gold labels": {"accuracy": 0.2, "correct": below},
                                                         "bootstrap-consistency labels": {**report["conditions"]["bootstrap-consistency labels"], "correct": run}}})
        assert (flipped["gap_recovered"], flipped["gap_recovered_ci_low"], flipped["gap_recovered_ci_high"]) == (None, None, None)
        assert flipped["test_accuracy"] == 0.8 and flipped["gold_accuracy"] == 0.2  # the accuracies are still given
    older = {"conditions": {name: {k: v for k, v in c.items() if k != "correct"} for name, c in report["conditions"].items()}}
    assert eval_columns(older) == {}  # no run_condition, no per-item correctness: nothing guessed


# --- cells as processes ---------------------------------------------------------------------------------------------

@pytest.fixture
def stand_in_processes(monkeypatch):
    monkeypatch.setattr(cell_runs, "ICM_COMMAND", [sys.executable, str(REPO_ROOT / "tests" / "stand_in_icm.py")])


def test_jobs_run_cells_as_processes_with_the_same_results(stand_in_processes, stand_in, tmp_path, capsys):
    serial = tmp_path / "serial"
    assert run_sweep(capsys, "--out", serial, *GRID, "--", *SHARED)[0] == 0
    out = tmp_path / "parallel"
    code, _, err = run_sweep(capsys, "--out", out, *GRID, "--jobs", "2", "--", *SHARED)
    assert code == 0, err
    assert err.count(": started, process ") == 4 and (out / "logs" / "cell-3.log").is_file()
    for name in NAMES:
        assert run_outcome(out / name) == run_outcome(serial / name)
    assert (out / "sweep.csv").is_file()


def test_sigterm_stops_every_cell_it_started_and_the_same_command_resumes_them(tmp_path):
    out = tmp_path / "sweep"
    script = (f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r}); from src.sweep import cell_runs; "
              f"cell_runs.ICM_COMMAND = [sys.executable, {str(REPO_ROOT / 'tests' / 'stand_in_icm.py')!r}]; "
              "from src.experiments import sweep; from core.process_exit import exit_process; exit_process(sweep.main())")
    argv = [sys.executable, "-c", script, "--out", str(out), *GRID, "--jobs", "2", "--",
            *SHARED[:-2], "40", "--no-progress"]
    env = {**os.environ, "STAND_IN_SECONDS_PER_REQUEST": "0.05"}
    sweeper = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True)
    pids = []
    for line in sweeper.stderr:
        if ": started, process " in line:
            pids.append(int(line.split("process ")[1].split(",")[0]))
        if len(pids) == 2:
            break
    deadline = time.monotonic() + 60
    while not all((out / n / "checkpoint.json").exists() for n in NAMES[:2]) and time.monotonic() < deadline:
        time.sleep(0.1)
    sweeper.send_signal(signal.SIGTERM)
    rest = sweeper.communicate(timeout=90)[1]
    assert sweeper.returncode == 143, rest
    assert "stopping 2 running cell(s)" in rest and "run the same command again" in rest
    for pid in pids:  # every cell it started has ended
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert [cell_runs.cell_state(out / n) for n in NAMES] == ["partial", "partial", "new", "new"]
    finish = subprocess.run(argv, cwd=REPO_ROOT, env={**os.environ}, capture_output=True, text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr
    assert [cell_runs.cell_state(out / n) for n in NAMES] == ["done"] * 4
    assert "resuming" in (out / "logs" / "cell-0.log").read_text()


# --- the CI's small sweep on the embedded model -------------------------------------------------------------------

@pytest.mark.model
def test_a_small_sweep_of_two_seeds_and_two_labellers_on_the_embedded_model(tmp_path):
    """2 seeds x 2 labellers on the smallest pool. Until the random labeller lands (issue 23, item 1) its cells
    run ICM; the assertions hold either way."""
    out = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "src" / "experiments" / "sweep.py"), "--out", str(out), "--seeds", "1", "2",
         "--labellers", "icm", "random", "--", "--testbed", "demo", "--batch_size", "4", "--num_seed", "2", "--K", "2",
         "--no-progress"],
        cwd=REPO_ROOT, env={**os.environ, **SMALL_EMBEDDED}, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    rows = csv_rows(out / "sweep.csv")
    assert [(r["labeller"], r["seed"], r["state"]) for r in rows] == \
        [("icm", "1", "done"), ("icm", "2", "done"), ("random", "1", "done"), ("random", "2", "done")]
    for row in rows:
        summary = json.loads((out / row["cell"] / "summary.json").read_text())
        assert summary["route"] == "embedded" and summary["settings"]["labeller"] == row["labeller"]
        assert 0 <= float(row["pool_label_accuracy"]) <= 1 and int(row["labelled"]) >= 2
    summary_rows = csv_rows(out / "sweep_summary.csv")
    assert [(r["labeller"], r["done"]) for r in summary_rows] == [("icm", "2"), ("random", "2")]
    for r in summary_rows:
        accuracies = [float(x["pool_label_accuracy"]) for x in rows if x["labeller"] == r["labeller"]]
        assert float(r["pool_label_accuracy_mean"]) == pytest.approx(sum(accuracies) / 2)
    assert (out / "sweep.png").is_file()
