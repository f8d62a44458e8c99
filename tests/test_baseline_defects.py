"""A fresh user's review of issue 23's labellers: pool scores summed over resumes, --num_seed not refused for the
baselines, bootstrap's cycles, a stop within a round's repair, single-point runs visible in the figures, and the
messages. Model-free: the synthetic model through ICM.main in-process (tests/test_baselines.py's fixtures)."""
import json
import signal
from types import SimpleNamespace

import pytest

from core.llm_api.llm import ModelAPI
from src.experiments import ICM, plot, sweep
from src.pipeline.pool_scoring import PoolScorer
from src.run import Checkpointer
from src.run_directory.run_status import run_progress
from src.search.annealing import ICMSearch
from tests.test_baselines import (DEMO, FailingSyntheticModel, SyntheticPipeline, label_run, labels, resume, rows,
                                  summary, synthetic)  # noqa: F401  (synthetic: the autouse fixture)


class ContrarianPipeline(SyntheticPipeline):
    """The synthetic model turned contrarian: demonstrations vote against the labels of similar claims, so a
    bootstrap round turns over the labels it is shown and, on demo seed 2 with 8 claims, the labels oscillate
    between two labellings (a cycle of length 2) instead of settling."""

    def __init__(self, options, settings) -> None:
        self.route = FailingSyntheticModel(DEMO, [r["label"] for r in DEMO], seed=0, prior_weight=0.0,
                                           prior_noise=0.05, icl_weight=-3.0)
        self.model_api = ModelAPI(settings=settings, route=self.route)
        self.scorer = PoolScorer(self.model_api, options.prompts)


def stop_after_round_1(monkeypatch, signal_number=signal.SIGTERM):
    save = Checkpointer.__call__

    def stopped(checkpointer: Checkpointer) -> None:
        save(checkpointer)
        if checkpointer.saved_iteration == 1:
            signal.raise_signal(signal_number)

    monkeypatch.setattr(Checkpointer, "__call__", stopped)


# 1. Pool scores are counted over every invocation of the run.

def test_pool_scores_computed_is_the_whole_runs_after_a_resume(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        stop_after_round_1(patch)
        label_run(out, capsys, "bootstrap-consistency", "--bootstrap-rounds", "10", expect=128 + signal.SIGTERM)
    first = summary(out)
    assert first["pool_scores_computed"] == first["cost"]["run"]["pool_scores_computed"] >= 2
    resume(out, capsys)
    found = summary(out)
    this = found["cost"]["this_invocation"]
    assert this["pool_scores_computed"] >= 1 and found["cost"]["run"]["invocations"] == 2
    for name in ("pool_scores_computed", "pool_scores_reused", "single_predictions_computed",
                 "batch_predictions_computed", "requests"):
        assert found[name] == found["cost"]["run"][name] == first[name] + this[name], name
    assert found["pool_scores_computed"] > this["pool_scores_computed"]
    assert found["wall_seconds"] == found["cost"]["run"]["wall_seconds"]


def test_the_sweep_csv_reads_the_runs_pool_scores_not_the_last_invocations(tmp_path):
    from src.sweep.aggregate import _read_summary

    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"final": {}, "pool_scores_computed": 7, "pool_scores_reused": 1, "wall_seconds": 4.13,
                                "cost": {"run": {"pool_scores_computed": 19, "pool_scores_reused": 3,
                                                 "wall_seconds": 369.13}}}))
    result = SimpleNamespace(row={})
    _read_summary(path, result, tmp_path)
    assert (result.row["pool_scores_computed"], result.row["pool_scores_reused"], result.row["wall_seconds"]) == \
        (19, 3, 369.13)
    # A summary whose cost block predates these totals: the top-level fields are all there is.
    path.write_text(json.dumps({"final": {}, "pool_scores_computed": 7, "cost": {"run": {"requests": 9}}}))
    _read_summary(path, result, tmp_path)
    assert result.row["pool_scores_computed"] == 7


# 2. A baseline ignores --num_seed, so it doesn't refuse it.

@pytest.mark.parametrize("flags", [(), ("--num_seed", "8"), ("--num_seed", "3")])
def test_a_baseline_does_not_refuse_a_num_seed_it_ignores(flags, tmp_path, capsys):
    err = label_run(tmp_path / "run", capsys, "bootstrap", *flags, batch_size=4)
    assert "error:" not in err and len(labels(tmp_path / "run")) == 4
    if flags:
        assert "note: --labeller bootstrap ignores --num_seed" in err


def test_a_baseline_does_not_refuse_a_num_seed_larger_than_the_pool_drawn(tmp_path, capsys):
    # The demo's 64 claims in 16 shards: 4 claims each. ICM refuses --num_seed 8 there; a baseline labels the 4.
    shard = ("--num-batches", "16", "--batch-index", "0", "--num_seed", "8")
    err = label_run(tmp_path / "icm", capsys, "icm", *shard, expect=2)
    assert "error: --num_seed 8 is larger than this shard's 4 claims" in err
    label_run(tmp_path / "random", capsys, "random", *shard)
    assert len(labels(tmp_path / "random")) == 4
    err = label_run(tmp_path / "icm4", capsys, "icm", batch_size=4, expect=2)
    assert "error: --num_seed 8 is larger than --batch_size 4" in err


# 3. Bootstrap stops on a cycle and keeps its best labelling, whatever the round limit's parity.

def test_bootstrap_that_oscillates_keeps_the_cycles_best_labelling_whatever_the_round_limit(tmp_path, capsys,
                                                                                           monkeypatch):
    monkeypatch.setattr("src.run.ScoringPipeline", ContrarianPipeline)
    for labeller in ("bootstrap", "bootstrap-consistency"):
        found = {}
        for limit in (10, 11):
            out = tmp_path / f"{labeller}-{limit}"
            err = label_run(out, capsys, labeller, "--bootstrap-rounds", str(limit), seed=2, batch_size=8)
            found[limit] = labels(out)
            result, log = summary(out), rows(out / "log.jsonl")
            assert (result["converged"], result["cycle_length"]) == (False, 2)
            assert result["rounds"] == len(log) == 3 < limit
            assert "cycle of 2 labellings" in err and f"after round {result['kept_round']}" in err
            # The cycle is the labellings after rounds 1 and 2 (round 3 repeated round 1's); the kept one is the
            # higher in energy, and the last log line is the labels the run ends with.
            cycle_energies = {1: log[0]["energy"], 2: log[1]["energy"]}
            assert result["kept_round"] == max(cycle_energies, key=lambda r: (cycle_energies[r], -r))
            assert result["final"]["energy"] == log[-1]["energy"] == cycle_energies[result["kept_round"]]
            assert (log[-1]["cycle_length"], log[-1]["kept_round"]) == (2, result["kept_round"])
            assert log[0]["cycle_length"] is None
            if labeller == "bootstrap":
                # Choosing costs no model call: the start and the cycle's two labellings, each scored once.
                assert result["pool_scores_computed"] == 3
            assert run_progress(out).finished
        assert found[10] == found[11], labeller


def test_a_resumed_bootstrap_finds_the_cycle_an_uninterrupted_one_finds(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("src.run.ScoringPipeline", ContrarianPipeline)
    whole = tmp_path / "whole"
    label_run(whole, capsys, "bootstrap", seed=2, batch_size=8)
    cut = tmp_path / "cut"
    with monkeypatch.context() as patch:
        stop_after_round_1(patch)
        label_run(cut, capsys, "bootstrap", seed=2, batch_size=8, expect=128 + signal.SIGTERM)
    assert json.loads((cut / "checkpoint.json").read_text())["seen"][0]["round"] == 0
    resume(cut, capsys)
    assert labels(cut) == labels(whole) and rows(cut / "log.jsonl") == rows(whole / "log.jsonl")
    keys = ("converged", "rounds", "cycle_length", "kept_round")
    assert {k: summary(cut)[k] for k in keys} == {k: summary(whole)[k] for k in keys}
    # A resumed run that stopped on its cycle stays stopped, whatever the limit.
    resume(cut, capsys, "--bootstrap-rounds", "20")
    assert rows(cut / "log.jsonl") == rows(whole / "log.jsonl")


def test_a_checkpoint_without_the_labellings_seen_still_resumes(tmp_path, capsys, monkeypatch):
    """A checkpoint written before the labellings were kept: the run goes on, remembering from its round on."""
    monkeypatch.setattr("src.run.ScoringPipeline", ContrarianPipeline)
    cut = tmp_path / "cut"
    with monkeypatch.context() as patch:
        stop_after_round_1(patch)
        label_run(cut, capsys, "bootstrap", seed=2, batch_size=8, expect=128 + signal.SIGTERM)
    checkpoint = json.loads((cut / "checkpoint.json").read_text())
    del checkpoint["seen"]
    (cut / "checkpoint.json").write_text(json.dumps(checkpoint))
    resume(cut, capsys)
    assert summary(cut)["cycle_length"] == 2 and run_progress(cut).finished


# 4. The first Ctrl-C stops a baseline within its round's repair.

def test_ctrl_c_stops_bootstrap_consistency_inside_the_repair(tmp_path, capsys, monkeypatch):
    whole = tmp_path / "whole"
    label_run(whole, capsys, "bootstrap-consistency")
    repair = ICMSearch.fix_inconsistency
    tried = []

    def interrupted(self, claims, metric, rounds=None):
        if metric is not None and metric["inconsistent_num"] > 0 and not tried:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C as the repair starts
        result = repair(self, claims, metric, rounds)
        tried.append(True)
        return result

    cut = tmp_path / "cut"
    with monkeypatch.context() as patch:
        patch.setattr(ICMSearch, "fix_inconsistency", interrupted)
        err = label_run(cut, capsys, "bootstrap-consistency", expect=128 + signal.SIGINT)
    assert not tried  # the repair stopped at its first evaluation, not after its rounds
    found = summary(cut)
    assert found["iterations"] == 0 and found["stopped_early"]
    assert found["pool_scores_computed"] == 2  # the start and the round's labelling: none of the repair's
    assert "resume" in err
    resume(cut, capsys)
    assert labels(cut) == labels(whole) and rows(cut / "log.jsonl") == rows(whole / "log.jsonl")


# 5. A run of one round is seen in the figures, and their titles name the labellers.

def test_a_random_run_is_drawn_with_markers_under_its_labellers_name(tmp_path, capsys, monkeypatch):
    from src.evaluation.figures import progress_figure

    out = tmp_path / "random"
    label_run(out, capsys, "random")
    drawn = []
    monkeypatch.setattr(plot, "progress_chart", lambda runs, path: drawn.append(runs))
    assert plot.main([str(out)]) == 0
    [[run]] = drawn
    assert run.labeller == "random" and len(run.log) == 1
    figure = progress_figure([run])
    for axis in figure.axes:
        drawn_lines = [line for line in axis.lines if len(line.get_xdata())]
        assert drawn_lines and all(line.get_marker() not in (None, "None", "") for line in drawn_lines)
    title = figure._suptitle.get_text()
    assert "random" in title and "ICM search" not in title


def test_the_sweep_figure_marks_a_cell_of_one_round(tmp_path, monkeypatch):
    import src.sweep.sweep_figure as sweep_figure_module
    from src.sweep.aggregate import CELL_COLUMNS, CellResult, summarise

    row = {**dict.fromkeys(CELL_COLUMNS), "testbed": "demo", "labeller": "random", "alpha": 30.0, "seed": 1,
           "state": "done", "pool_label_accuracy": 0.5}
    result = CellResult(cell=None, row=row, log=[{"iter": 0, "train_accuracy": 0.5}])
    kept = []
    monkeypatch.setattr(sweep_figure_module.plt, "close", kept.append)
    sweep_figure_module.sweep_figure([result], summarise([row]), tmp_path / "sweep.png")
    [figure] = kept
    curves = figure.axes[-1]
    [line] = curves.lines
    assert line.get_marker() not in (None, "None", "")


# 6. Messages.

def test_sweep_help_keeps_its_examples_line_continuation(capsys):
    with pytest.raises(SystemExit):
        sweep.main(["--help"])
    text = capsys.readouterr().out
    assert "--labellers icm bootstrap-consistency \\\n" in text


@pytest.mark.parametrize("given, named, unnamed", [
    (("--true-share", "0.5"), "--true-share draws one pool", "--pool-seed"),
    (("--pool-seed", "3"), "--pool-seed draws one pool", "--true-share"),
    (("--true-share", "0.5", "--pool-seed", "3"), "--true-share and --pool-seed draw one pool", None),
])
def test_the_refusal_of_pool_options_with_shards_names_the_ones_given(given, named, unnamed, tmp_path, capsys):
    code = ICM.main(["--testbed", "demo", *given, "--num-batches", "2", "--batch-index", "0",
                     "--output-dir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"error: {named}" in err
    if unnamed:
        assert unnamed not in err


def test_paper_mode_refuses_a_baseline_before_noting_its_unused_flags(tmp_path, capsys):
    code = ICM.main(["--testbed", "demo", "--labeller", "random", "--num_seed", "4", "--paper-mode",
                     "--output-dir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "note:" not in err
