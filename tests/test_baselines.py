"""The cheap labellers beside ICM (issue 23, item 1): random, bootstrap and bootstrap-consistency, run through
ICM.main in-process on the synthetic model (src/benchmarks/synthetic_model.py, the demo testbed's gold labels planted), so
each run writes the run directory an ICM run writes, in well under a second."""
import json
import random
import signal
from pathlib import Path
from typing import Optional

import pytest

from core.llm_api.base_llm import ScoringError
from core.llm_api.llm import ModelAPI
from src.config.run_config import RunConfig, SearchConfig
from src.data.testbeds import TESTBED_SPECS, demo_records, normalise_records
from src.experiments import ICM
from src.pipeline.pool_scoring import PoolScorer
from src.run import Checkpointer, default_output_dir
from src.run_directory.run_status import run_progress
from src.search.baselines import initial_claims
from src.benchmarks.synthetic_model import SyntheticModel

BASELINES = ("random", "bootstrap", "bootstrap-consistency")
DEMO = normalise_records(demo_records(), TESTBED_SPECS["demo"], "demo", True)


class FailingSyntheticModel(SyntheticModel):
    """The synthetic model, down after ``fail_after`` requests (None: never)."""

    def __init__(self, *args, fail_after: Optional[int] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fail_after = fail_after

    def next_token_logprobs(self, prompts):
        if self.fail_after is not None and self.stats.requests >= self.fail_after:
            raise ScoringError("the synthetic server is down")
        return super().next_token_logprobs(prompts)


class SyntheticPipeline:
    """Built as run.py builds a ScoringPipeline: a PoolScorer over the synthetic model, whose planted labels are
    the demo testbed's gold labels."""

    fail_after: Optional[int] = None

    def __init__(self, options, settings) -> None:
        self.route = FailingSyntheticModel(DEMO, [r["label"] for r in DEMO], seed=0, fail_after=self.fail_after)
        self.model_api = ModelAPI(settings=settings, route=self.route)
        self.scorer = PoolScorer(self.model_api, options.prompts)

    def __enter__(self) -> "SyntheticPipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.model_api.close()


@pytest.fixture(autouse=True)
def synthetic(monkeypatch):
    monkeypatch.setattr(SyntheticPipeline, "fail_after", None)
    monkeypatch.setattr("src.run.ScoringPipeline", SyntheticPipeline)


def label_run(out: Path, capsys, labeller: str, *flags: str, seed: int = 1, batch_size: int = 32,
              expect: int = 0) -> str:
    code = ICM.main(["--testbed", "demo", "--batch_size", str(batch_size), "--seed", str(seed), "--labeller", labeller,
                     "--output-dir", str(out), "--no-progress", *flags])
    err = capsys.readouterr().err
    assert code == expect, err
    return err


def resume(out: Path, capsys, *flags: str, expect: int = 0) -> str:
    code = ICM.main(["--resume", str(out), "--no-progress", *flags])
    err = capsys.readouterr().err
    assert code == expect, err
    return err


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def labels(out: Path) -> list[Optional[bool]]:
    return [row["label"] for row in rows(out / "labels.jsonl")]


def gold_accuracy(out: Path) -> float:
    found = rows(out / "labels.jsonl")
    return sum(row["label"] == row["gold_label"] for row in found) / len(found)


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_bootstrap_recovers_planted_labels_that_random_labels_do_not(tmp_path, capsys):
    for seed in (1, 2, 3):
        accuracy = {}
        for labeller in BASELINES:
            out = tmp_path / f"{labeller}-{seed}"
            label_run(out, capsys, labeller, seed=seed)
            accuracy[labeller] = gold_accuracy(out)
        assert accuracy["random"] <= 0.65, (seed, accuracy)
        for bootstrap in ("bootstrap", "bootstrap-consistency"):
            assert accuracy[bootstrap] >= 0.9, (seed, accuracy)
            assert accuracy[bootstrap] - accuracy["random"] >= 0.3, (seed, accuracy)


def test_random_labels_are_balanced_reproducible_per_seed_and_scored_once(tmp_path, capsys):
    runs = {}
    for name, seed in (("a", 5), ("again", 5), ("other", 6)):
        out = tmp_path / name
        label_run(out, capsys, "random", seed=seed)
        runs[name] = labels(out)
        assert sum(runs[name]) == len(runs[name]) // 2 == 16  # every claim labelled, half of them True
        found = summary(out)
        assert found["pool_scores_computed"] == 1 and found["batch_predictions_computed"] == 0
        assert found["single_predictions_computed"] == 0
        assert found["final"]["labeled"] == found["final"]["pool_size"] == 32
        [line] = rows(out / "log.jsonl")
        assert (line["iter"], line["changed"], line["flip_cnt"], line["share_true"]) == (0, 0, 0, 0.5)
        assert line["energy"] == found["final"]["energy"]
        assert all(row["score"] is not None and row["label_mass"] is not None for row in rows(out / "labels.jsonl"))
    assert runs["a"] == runs["again"]
    assert runs["a"] != runs["other"]


def test_random_labels_of_an_odd_pool_give_the_extra_claim_false():
    pool = DEMO[:7]
    for seed in range(5):
        claims = initial_claims(pool, SearchConfig(labeller="random"), 8, random.Random(seed))
        assert sorted(c.label for c in claims.values()) == [0, 0, 0, 0, 1, 1, 1]
        assert all(c.seed for c in claims.values())


def test_the_baselines_start_from_the_labels_icm_seeds_with(tmp_path):
    """One shuffle of the run's RNG, as ICM draws its seed labels: ICM seeding the whole pool draws the same."""
    pool = DEMO[:8]
    icm = initial_claims(pool, SearchConfig(), 8, random.Random(3))
    for labeller in BASELINES:
        assert initial_claims(pool, SearchConfig(labeller=labeller), 2, random.Random(3)) == icm


@pytest.mark.parametrize("labeller", ["bootstrap", "bootstrap-consistency"])
def test_bootstrap_stops_when_labels_stop_changing(labeller, tmp_path, capsys):
    out = tmp_path / "run"
    label_run(out, capsys, labeller, "--bootstrap-rounds", "10")
    found, log = summary(out), rows(out / "log.jsonl")
    assert found["labeller"] == labeller and found["converged"] is True
    assert found["rounds"] == found["iterations"] == len(log) < 10
    assert [line["iter"] for line in log] == list(range(len(log)))
    assert log[-1]["changed"] == 0 and all(line["changed"] > 0 for line in log[:-1])
    assert [line["flip_cnt"] for line in log] == [sum(line["changed"] for line in log[:i + 1]) for i in range(len(log))]
    if labeller == "bootstrap":
        # Round r scores the labels round r-1 made (the first, the random start): one pool score a round.
        assert found["pool_scores_computed"] == found["rounds"]
    else:
        assert log[-1]["inconsistent_num"] == 0
    progress = run_progress(out)
    assert progress.finished and progress.planned == 10 and progress.iterations < 10


def test_bootstrap_respects_its_round_limit(tmp_path, capsys):
    out = tmp_path / "run"
    label_run(out, capsys, "bootstrap", "--bootstrap-rounds", "1")
    found, [line] = summary(out), rows(out / "log.jsonl")
    assert (found["rounds"], found["converged"]) == (1, False)
    assert line["changed"] > 0
    assert found["pool_scores_computed"] == 2  # the start, and the final labels for the record
    assert run_progress(out).finished


def run_keys(out: Path) -> tuple[set, set, set, set]:
    found = summary(out)
    return ({key for row in rows(out / "labels.jsonl") for key in row}, {key for line in rows(out / "log.jsonl") for key in line},
            set(found), set(found["final"]))


def test_a_baseline_writes_the_run_directory_an_icm_run_writes(tmp_path, capsys):
    label_run(tmp_path / "icm", capsys, "icm", "--num_seed", "8", "--K", "6")
    icm_labels, icm_log, icm_summary, icm_final = run_keys(tmp_path / "icm")
    assert "share_true" in icm_log and summary(tmp_path / "icm")["labeller"] == "icm"
    for labeller in BASELINES:
        out = tmp_path / labeller
        label_run(out, capsys, labeller)
        found_labels, found_log, found_summary, found_final = run_keys(out)
        assert found_labels == icm_labels
        assert found_log == icm_log | {"changed", "cycle_length", "kept_round"}
        extra = {"converged", "rounds", "cycle_length", "kept_round"} if labeller != "random" else set()
        assert found_summary == icm_summary | extra
        assert found_final == icm_final
        assert summary(out)["labeller"] == labeller
        assert {p.name for p in out.iterdir()} >= {"labels.jsonl", "log.jsonl", "summary.json", "run.json", "checkpoint.json"}


@pytest.mark.parametrize("labeller", ["icm", *BASELINES])
def test_every_log_line_gives_the_share_of_true_labels(labeller, tmp_path, capsys):
    out = tmp_path / "run"
    label_run(out, capsys, labeller, "--num_seed", "8", "--K", "8")
    log = rows(out / "log.jsonl")
    assert log and all(0 <= line["share_true"] <= 1 for line in log)
    final = [row["label"] for row in rows(out / "labels.jsonl") if row["label"] is not None]
    assert log[-1]["share_true"] == sum(final) / len(final)
    assert log[-1]["labelled"] == len(final)


@pytest.mark.parametrize("labeller", ["bootstrap", "bootstrap-consistency"])
def test_an_interrupted_bootstrap_run_resumes_to_the_labels_of_an_uninterrupted_one(labeller, tmp_path, capsys,
                                                                                    monkeypatch):
    """Stopped between rounds (SIGTERM), then resumed: the same rounds, log and labels as a run never stopped
    (bootstrap-consistency's repair draws from the RNG, which the checkpoint carries)."""
    whole = tmp_path / "whole"
    label_run(whole, capsys, labeller, "--bootstrap-rounds", "10")
    rounds = summary(whole)["rounds"]
    assert rounds >= 2
    cut = tmp_path / "cut"
    save = Checkpointer.__call__

    def preempted_after_the_first_round(checkpointer: Checkpointer) -> None:
        save(checkpointer)
        if checkpointer.saved_iteration == 1:
            signal.raise_signal(signal.SIGTERM)  # what a preempted cluster job receives

    with monkeypatch.context() as patch:
        patch.setattr(Checkpointer, "__call__", preempted_after_the_first_round)
        label_run(cut, capsys, labeller, "--bootstrap-rounds", "10", expect=128 + signal.SIGTERM)
    assert summary(cut)["iterations"] == 1 and summary(cut)["stopped_early"]
    assert not run_progress(cut).finished
    err = resume(cut, capsys)
    assert "resuming" in err and "round" in err
    assert labels(cut) == labels(whole)
    assert rows(cut / "log.jsonl") == rows(whole / "log.jsonl")
    assert {k: summary(cut)[k] for k in ("rounds", "converged", "flip_cnt")} == \
        {k: summary(whole)[k] for k in ("rounds", "converged", "flip_cnt")}
    assert run_progress(cut).finished


def test_a_bootstrap_run_stopped_by_its_limit_goes_on_with_a_higher_limit(tmp_path, capsys):
    whole = tmp_path / "whole"
    label_run(whole, capsys, "bootstrap-consistency", "--bootstrap-rounds", "10")
    short = tmp_path / "short"
    label_run(short, capsys, "bootstrap-consistency", "--bootstrap-rounds", "1")
    assert summary(short)["converged"] is False
    resume(short, capsys, "--bootstrap-rounds", "10")
    assert labels(short) == labels(whole) and summary(short)["converged"] is True
    assert json.loads((short / "run.json").read_text())["settings"]["bootstrap_rounds"] == 10
    # A converged run resumed stays converged: no round is added, whatever the limit.
    log = rows(short / "log.jsonl")
    resume(short, capsys, "--bootstrap-rounds", "20")
    assert rows(short / "log.jsonl") == log and summary(short)["rounds"] == len(log)
    # A limit below the rounds done is refused, as a --K below ICM's iterations is.
    err = resume(short, capsys, "--bootstrap-rounds", "1", expect=2)
    assert "error: --bootstrap-rounds 1 is below the" in err


def test_flags_a_labeller_ignores_are_noted_not_refused(tmp_path, capsys):
    err = label_run(tmp_path / "random", capsys, "random", "--K", "50", "--initial_T", "5")
    assert "note: --labeller random ignores --K, --initial_T" in err
    err = label_run(tmp_path / "icm", capsys, "icm", "--K", "2", "--num_seed", "4", "--bootstrap-rounds", "3")
    assert "note: --labeller icm ignores --bootstrap-rounds" in err
    err = label_run(tmp_path / "bootstrap", capsys, "bootstrap-consistency", "--consistency_fix_K", "3")
    assert "note: --labeller" not in err


def test_icm_and_the_baselines_of_one_pool_get_their_own_default_folders():
    folders = {default_output_dir(RunConfig().with_settings(labeller=labeller)).name
               for labeller in ("icm", *BASELINES)}
    assert folders == {"gsm8k-K3000-bs256-seed27565976", "gsm8k-random-bs256-seed27565976",
                       "gsm8k-bootstrap-bs256-seed27565976", "gsm8k-bootstrap-consistency-bs256-seed27565976"}
