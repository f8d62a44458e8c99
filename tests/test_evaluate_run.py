"""evaluate.py on a run: the right test data (pool left out by content), the run's own model, the run's lock
and labels, --overwrite taking a run's derived files with it, and what the figures show.

No model is loaded: ICM.py and evaluate.py get a fake scoring pipeline, and run directories are written by hand
where a run's output is all that matters.
"""
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from core.llm_api.base_llm import RouteStats, ScoringRoute
from core.llm_api.llm import ModelAPI
from core.llm_api.settings import Settings
from src.data.testbeds import TESTBED_SPECS, demo_records, normalise_records
from src.pipeline.pool_scoring import PoolScorer
from tests.cli_helpers import call, load_script

EMBEDDED_MODEL = "SmolLM2-135M-Instruct.Q4_1"


@pytest.fixture(autouse=True)
def close_figures():
    # The environment is cleaned for every test by conftest.py.
    yield
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")  # the figures the tests inspect


class ConstantRoute(ScoringRoute):
    """Answers every prompt alike; remembers what it was asked."""

    def __init__(self, name: str, model: str, endpoint=None, on_call=None) -> None:
        self.name, self.model, self.endpoint, self.on_call = name, model, endpoint, on_call
        self.stats = RouteStats()
        self.prompts: list[str] = []

    def next_token_logprobs(self, prompts):
        if self.on_call is not None:
            self.on_call()
        self.prompts.extend(prompts)
        return [[(" True", -0.4), (" False", -1.2)] for _ in prompts]

    def describe(self) -> dict:
        return {"endpoint": self.endpoint} if self.endpoint else {}


def fake_pipeline(monkeypatch, module, name="embedded", model=EMBEDDED_MODEL, endpoint=None, on_call=None) -> list:
    """Replace ``module``'s ScoringPipeline with one on a ConstantRoute; returns the pipelines opened."""
    opened = []

    class FakePipeline:
        def __init__(self, options, settings):
            self.options, self.route = options, name
            self.constant = ConstantRoute(name, model, endpoint, on_call)
            self.model_api = ModelAPI(settings=Settings(), route=self.constant, cache_dir=options.cache_dir)
            self.scorer = PoolScorer(self.model_api, options.prompts)
            opened.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.model_api.close()

    monkeypatch.setattr(module, "ScoringPipeline", FakePipeline)
    return opened


def gsm8k_records() -> list[dict]:
    """A GSM8K-shaped test file (solution in ``cot``, no ``choice``), 16 groups of 4."""
    return [{"question": r["question"], "cot": r["choice"], "answer": r["consistency_key"], "label": r["label"],
             "consistency_id": r["consistency_id"]} for r in demo_records()]


def icm_main(argv):
    from src.experiments import ICM

    return ICM.main([*argv, "--no-progress"])


def evaluate_main(argv):
    from src.experiments import evaluate

    return evaluate.main([*argv, "--no-progress"])


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture
def gsm8k_tree(tmp_path):
    """tmp/data/test_gsm8k.json and a checkout-like tree tmp/repo/src/experiments."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "test_gsm8k.json").write_text(json.dumps(gsm8k_records()))
    (tmp_path / "repo" / "src" / "experiments").mkdir(parents=True)
    return tmp_path


def gsm8k_run_from_src_experiments(tree: Path, monkeypatch, capsys) -> Path:
    """The README's second form: ICM.py started in src/experiments with a relative --data-dir."""
    from src import run as run_module  # where ICM.py's run builds its ScoringPipeline

    fake_pipeline(monkeypatch, run_module)
    out = tree / "repo" / "results" / "gsm"
    monkeypatch.chdir(tree / "repo" / "src" / "experiments")
    assert icm_main(["--testbed", "gsm8k", "--data-dir", "../../../data", "--batch_size", "8", "--num_seed", "2",
                     "--K", "2", "--output-dir", str(out)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    return out


# -- 1. the pool left out of the test data, decided by content ---------------------------------------------------

def test_run_json_records_absolute_data_paths_and_the_pool_sources_hash(gsm8k_tree, monkeypatch, capsys):
    out = gsm8k_run_from_src_experiments(gsm8k_tree, monkeypatch, capsys)
    source = gsm8k_tree / "data" / "test_gsm8k.json"
    assert json.loads((out / "run.json").read_text())["data"] == {
        "data_dir": str((gsm8k_tree / "data").resolve()), "data": None, "pool_source": str(source.resolve()),
        "pool_source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
    }


def test_a_run_started_with_a_relative_data_dir_resumes_from_another_folder(gsm8k_tree, monkeypatch, capsys):
    out = gsm8k_run_from_src_experiments(gsm8k_tree, monkeypatch, capsys)
    monkeypatch.chdir(gsm8k_tree / "repo")  # where ../../../data names no folder
    assert icm_main(["--resume", str(out), "--K", "3"]) == 0, capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["iterations"] == 3


def test_a_gsm8k_run_started_in_src_experiments_has_its_pool_left_out_when_evaluated_from_the_root(gsm8k_tree, monkeypatch, capsys):
    from src.experiments import evaluate

    out = gsm8k_run_from_src_experiments(gsm8k_tree, monkeypatch, capsys)
    fake_pipeline(monkeypatch, evaluate)
    monkeypatch.chdir(gsm8k_tree / "repo")
    assert evaluate_main(["--run-dir", "results/gsm", "--data-dir", "../data"]) == 0, capsys.readouterr().err
    report = json.loads((out / "eval.json").read_text())
    assert report["excluded_pool_claims"] == 8 and report["pool_is_test_data"] is True
    assert report["n_test"] == 64 - 8
    assert report["test_source"] == str((gsm8k_tree / "data" / "test_gsm8k.json").resolve())


def test_a_copy_of_the_pool_source_elsewhere_is_the_same_data(gsm8k_tree, monkeypatch, capsys):
    from src.experiments import evaluate

    out = gsm8k_run_from_src_experiments(gsm8k_tree, monkeypatch, capsys)
    moved = gsm8k_tree / "elsewhere" / "renamed.json"
    moved.parent.mkdir()
    shutil.copy(gsm8k_tree / "data" / "test_gsm8k.json", moved)
    fake_pipeline(monkeypatch, evaluate)
    assert evaluate_main(["--run-dir", str(out), "--test-data", str(moved)]) == 0, capsys.readouterr().err
    assert json.loads((out / "eval.json").read_text())["excluded_pool_claims"] == 8


def test_content_hash_of_a_file_and_of_a_saved_dataset_folder(tmp_path):
    from src.data.data_provenance import content_hash

    file = tmp_path / "records.json"
    file.write_bytes(b'[{"question": "q"}]')
    assert content_hash(file) == hashlib.sha256(file.read_bytes()).hexdigest()  # what sha256sum prints

    def dataset(folder: Path, order: list[str]) -> Path:
        folder.mkdir()
        for name in order:
            (folder / name).write_text(f"content of {name}")
        return folder

    first = dataset(tmp_path / "a", ["data-00000-of-00001.arrow", "dataset_info.json", "state.json"])
    second = dataset(tmp_path / "b", ["state.json", "dataset_info.json", "data-00000-of-00001.arrow"])
    assert content_hash(first) == content_hash(second)  # sorted, not in the order the files were made
    (second / "cache-1a2b.arrow").write_text("what datasets writes when it maps the dataset")
    (second / ".DS_Store").write_text("not data")
    assert content_hash(first) == content_hash(second)
    (second / "state.json").write_text("changed")
    assert content_hash(first) != content_hash(second)
    (second / "state.json").write_text("content of state.json")
    (second / "state.json").rename(second / "renamed.json")
    assert content_hash(first) != content_hash(second)  # a file's name is part of the folder's content


def demo_rows(groups=(0, 1)) -> list[dict]:
    claims = normalise_records(demo_records(), TESTBED_SPECS["demo"], "demo", True)
    rows = []
    for uid, claim in enumerate(c for c in claims if c["consistency_id"] in groups):
        rows.append({"uid": uid, "record": claim["record"], "consistency_id": claim["consistency_id"],
                     "question": claim["question"], "choice": claim["choice"], "prompt": claim["prompt"],
                     "label": bool(claim["label"]) if uid % 4 != 3 else None, "gold_label": bool(claim["label"]),
                     "score": None, "seed": uid < 2})
    return rows


def write_run(out: Path, *, testbed="demo", route="embedded", model=EMBEDDED_MODEL, endpoint=None, iterations=6, K=6,
              stopped_early=None, data=None, data_source="built-in demo", settings=None, rows=None) -> Path:
    """A run directory as ICM.py leaves it (the fields evaluate.py reads)."""
    out.mkdir(parents=True, exist_ok=True)
    settings = {"testbed": testbed, "seed": 7, "K": K, "model": None, "use_vllm": None, "data_dir": None,
                "data": None, **(settings or {})}
    run = {"format": 2, "run_id": "0" * 32, "settings": settings, "pool_fingerprint": "f" * 64}
    if data is not None:
        run["data"] = data
    (out / "run.json").write_text(json.dumps(run))
    summary = {"testbed": testbed, "data_source": data_source, "settings": settings, "route": route, "model": model,
               "stopped_early": stopped_early, "iterations": iterations}
    if endpoint is not None:
        summary["endpoint"] = endpoint
    (out / "summary.json").write_text(json.dumps(summary))
    (out / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (rows or demo_rows())))
    return out


def gsm8k_old_run(tree: Path, data_source: str) -> Path:
    """A GSM8K run from before run.json recorded its data: paths as typed, no hash."""
    claims = normalise_records(gsm8k_records(), TESTBED_SPECS["gsm8k"], "x", True)
    rows = [{"uid": i, "consistency_id": c["consistency_id"], "prompt": c["prompt"], "label": bool(c["label"]),
             "gold_label": bool(c["label"])} for i, c in enumerate(claims[:8])]
    return write_run(tree / "repo" / "results" / "old", testbed="gsm8k", data_source=data_source, rows=rows,
                     settings={"data_dir": "../../../data"})


def test_an_old_run_whose_pool_source_was_relative_is_refused_with_the_flag_that_settles_it(gsm8k_tree, monkeypatch, capsys):
    from src.experiments import evaluate

    out = gsm8k_old_run(gsm8k_tree, "../../../data/test_gsm8k.json")
    opened = fake_pipeline(monkeypatch, evaluate)
    monkeypatch.chdir(gsm8k_tree / "repo")
    assert evaluate_main(["--run-dir", str(out), "--data-dir", "../data"]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert "../../../data/test_gsm8k.json" in line and "relative" in line and "--pool-source FILE" in line
    assert not (out / "eval.json").exists() and not opened
    # Told which file the pool came from, it compares contents and leaves the pool out.
    assert evaluate_main(["--run-dir", str(out), "--data-dir", "../data", "--pool-source", "../data/test_gsm8k.json"]) == 0
    assert json.loads((out / "eval.json").read_text())["excluded_pool_claims"] == 8


def test_an_old_run_with_a_relative_data_dir_asks_for_the_data_dir(gsm8k_tree, monkeypatch, capsys):
    from src.experiments import evaluate

    out = gsm8k_old_run(gsm8k_tree, str(gsm8k_tree / "data" / "test_gsm8k.json"))
    fake_pipeline(monkeypatch, evaluate)
    monkeypatch.chdir(gsm8k_tree)  # where "../../../data" would name some other folder, or none
    assert evaluate_main(["--run-dir", str(out)]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert "--data-dir '../../../data' is relative" in line and "pass --data-dir DIR" in line


def test_an_old_run_whose_absolute_pool_source_still_exists_evaluates(gsm8k_tree, monkeypatch, capsys):
    from src.experiments import evaluate

    out = gsm8k_old_run(gsm8k_tree, str(gsm8k_tree / "data" / "test_gsm8k.json"))
    fake_pipeline(monkeypatch, evaluate)
    assert evaluate_main(["--run-dir", str(out), "--data-dir", str(gsm8k_tree / "data")]) == 0, capsys.readouterr().err
    report = json.loads((out / "eval.json").read_text())
    assert report["excluded_pool_claims"] == 8
    assert report["pool_source_sha256"] == report["test_sha256"] is not None


def test_a_pool_source_flag_that_contradicts_run_json_is_refused(gsm8k_tree, monkeypatch, capsys):
    from src.experiments import evaluate

    out = gsm8k_run_from_src_experiments(gsm8k_tree, monkeypatch, capsys)
    other = gsm8k_tree / "other.json"
    other.write_text(json.dumps(gsm8k_records()[:8]))
    fake_pipeline(monkeypatch, evaluate)
    assert evaluate_main(["--run-dir", str(out), "--pool-source", str(other)]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert "is not the data the run's pool was drawn from" in line


# -- 2. the run's own route and model ----------------------------------------------------------------------------

def test_a_vllm_run_is_not_scored_by_the_embedded_model(tmp_path, monkeypatch, capsys):
    from src.experiments import evaluate

    out = write_run(tmp_path / "run", route="vllm", model="meta-llama/Llama-3.1-8B", endpoint="http://gpu-1:8000")
    opened = fake_pipeline(monkeypatch, evaluate)
    assert evaluate_main(["--run-dir", str(out)]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert "meta-llama/Llama-3.1-8B" in line and "VLLM_BASE_URL" in line and "--allow-other-model" in line
    assert not opened and not (out / "eval.json").exists()  # refused before any model was opened


def test_an_embedded_run_is_not_scored_by_a_server_that_happens_to_be_configured(tmp_path, monkeypatch, capsys):
    from src.experiments import evaluate

    out = write_run(tmp_path / "run", route="embedded")
    monkeypatch.setenv("VLLM_BASE_URL", "http://127.0.0.1:9")
    opened = fake_pipeline(monkeypatch, evaluate, name="vllm", model="some-served-model", endpoint="http://127.0.0.1:9")
    assert evaluate_main(["--run-dir", str(out)]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert "unset VLLM_BASE_URL" in line and "--allow-other-model" in line
    assert not opened and not (out / "eval.json").exists()


def test_another_model_on_the_runs_route_is_refused_before_any_test_prompt(tmp_path, monkeypatch, capsys):
    from src.experiments import evaluate

    out = write_run(tmp_path / "run", route="embedded", model="my-finetune.Q8_0")
    opened = fake_pipeline(monkeypatch, evaluate)
    assert evaluate_main(["--run-dir", str(out)]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert "my-finetune.Q8_0" in line and EMBEDDED_MODEL in line and "--allow-other-model" in line
    assert opened and opened[0].constant.prompts == [] and not (out / "eval.json").exists()


def test_allow_other_model_evaluates_and_eval_json_records_the_difference(tmp_path, monkeypatch, capsys):
    from src.experiments import evaluate

    out = write_run(tmp_path / "run", route="vllm", model="meta-llama/Llama-3.1-8B", endpoint="http://gpu-1:8000")
    fake_pipeline(monkeypatch, evaluate)
    assert evaluate_main(["--run-dir", str(out), "--allow-other-model"]) == 0
    assert "warning: evaluating with" in capsys.readouterr().err
    report = json.loads((out / "eval.json").read_text())
    assert (report["route"], report["model"], report["endpoint"]) == ("embedded", EMBEDDED_MODEL, None)
    assert report["run_model"] == {"route": "vllm", "model": "meta-llama/Llama-3.1-8B", "endpoint": "http://gpu-1:8000"}
    assert report["differs_from_run"] == {"route": True, "model": True, "endpoint": True}


def test_a_vllm_run_is_scored_by_its_own_model_and_eval_json_says_where(tmp_path, monkeypatch, capsys):
    from src.experiments import evaluate

    out = write_run(tmp_path / "run", route="vllm", model="meta-llama/Llama-3.1-8B", endpoint="http://gpu-1:8000")
    monkeypatch.setenv("VLLM_BASE_URL", "http://127.0.0.1:9")
    opened = fake_pipeline(monkeypatch, evaluate, name="vllm", model="meta-llama/Llama-3.1-8B", endpoint="http://127.0.0.1:9")
    assert evaluate_main(["--run-dir", str(out)]) == 0, capsys.readouterr().err
    assert opened[0].options.use_vllm is True and opened[0].options.model == "meta-llama/Llama-3.1-8B"
    report = json.loads((out / "eval.json").read_text())
    assert (report["route"], report["model"], report["endpoint"]) == ("vllm", "meta-llama/Llama-3.1-8B", "http://127.0.0.1:9")
    assert report["differs_from_run"] == {"route": False, "model": False, "endpoint": True}


# -- 4. a live or stopped run --------------------------------------------------------------------------------------

def test_a_live_run_is_refused_at_once_naming_its_process(tmp_path, monkeypatch, capsys):
    from src.experiments import evaluate
    from src.run_directory.run_directory import RunDirectory

    out = write_run(tmp_path / "run", iterations=5, K=6)
    opened = fake_pipeline(monkeypatch, evaluate)
    with RunDirectory(out).lock():  # what a live ICM.py holds
        assert evaluate_main(["--run-dir", str(out)]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert f"is in use by process {os.getpid()}" in line
    assert not opened and not (out / "eval.json").exists()


def test_evaluation_holds_the_runs_lock_while_it_scores(tmp_path, monkeypatch, capsys):
    from src.experiments import evaluate
    from src.run_directory.run_directory import RunDirectory
    from src.run_directory.run_lock import OutputDirLocked

    out = write_run(tmp_path / "run")
    refused = []

    def try_to_start_a_resume():
        try:
            with RunDirectory(out).lock():
                refused.append(False)
        except OutputDirLocked:
            refused.append(True)

    fake_pipeline(monkeypatch, evaluate, on_call=try_to_start_a_resume)
    assert evaluate_main(["--run-dir", str(out)]) == 0, capsys.readouterr().err
    assert refused and all(refused)
    assert not (out / ".lock").exists()  # and lets go afterwards


def test_a_stopped_run_is_evaluated_with_a_warning_and_eval_json_names_its_labels(tmp_path, monkeypatch, capsys):
    from src.experiments import evaluate

    out = write_run(tmp_path / "run", iterations=5, K=6, stopped_early="stopped by SIGINT")
    fake_pipeline(monkeypatch, evaluate)
    assert evaluate_main(["--run-dir", str(out)]) == 0
    assert "stopped at iteration 5 of 6 (stopped by SIGINT): these are its partial labels" in capsys.readouterr().err
    assert json.loads((out / "eval.json").read_text())["labels_used"] == {
        "sha256": hashlib.sha256((out / "labels.jsonl").read_bytes()).hexdigest(), "iterations": 5, "K": 6,
        "finished": False, "stopped_early": "stopped by SIGINT"}


def test_a_finished_run_is_evaluated_without_a_warning(tmp_path, monkeypatch, capsys):
    from src.experiments import evaluate

    out = write_run(tmp_path / "run", iterations=6, K=6)
    fake_pipeline(monkeypatch, evaluate)
    assert evaluate_main(["--run-dir", str(out)]) == 0
    assert "warning" not in capsys.readouterr().err
    labels = json.loads((out / "eval.json").read_text())["labels_used"]
    assert labels["finished"] is True and labels["iterations"] == 6


def test_export_and_evaluate_warn_alike_on_a_stopped_run(tmp_path, capsys):
    out = write_run(tmp_path / "run", iterations=5, K=6, stopped_early="stopped by SIGTERM")
    code, stderr = call(load_script("export_labels"), [out, "--format", "sft"], capsys)
    assert code == 0, stderr
    assert "stopped at iteration 5 of 6 (stopped by SIGTERM): these are its partial labels" in stderr


def test_partial_run_warning_survives_a_damaged_summary(tmp_path, capsys):
    from src.run_directory.run_status import warn_if_partial

    (tmp_path / "summary.json").write_text('{"iterations": 3, "sett')
    assert warn_if_partial(tmp_path).finished is False
    assert "can't tell whether the run" in capsys.readouterr().err


# -- 7. --overwrite takes the files made from the old run with it --------------------------------------------------

DERIVED = ("eval.json", "eval.png", "progress.png", "export_sft.jsonl", "export_hf.jsonl")


def demo_icm(out: Path, *extra: str):
    return icm_main(["--testbed", "demo", "--batch_size", "8", "--num_seed", "2", "--K", "2", "--output-dir", str(out), *extra])


def test_overwrite_removes_every_file_made_from_the_previous_run_and_keeps_the_cache(tmp_path, monkeypatch, capsys):
    from src import run as run_module  # where ICM.py's run builds its ScoringPipeline

    fake_pipeline(monkeypatch, run_module)
    out = tmp_path / "run"
    assert demo_icm(out) == 0
    for name in DERIVED:
        (out / name).write_text("from the previous run")
    (out / "notes.txt").write_text("the researcher's own")
    assert (out / "responses.sqlite").exists()
    assert demo_icm(out, "--overwrite") == 0, capsys.readouterr().err
    assert not [name for name in DERIVED if (out / name).exists()]
    assert (out / "responses.sqlite").exists() and (out / "notes.txt").exists() and (out / "labels.jsonl").exists()


def test_a_new_run_does_not_mix_with_derived_files_left_from_an_old_one(tmp_path, monkeypatch, capsys):
    from src import run as run_module  # where ICM.py's run builds its ScoringPipeline

    fake_pipeline(monkeypatch, run_module)
    out = tmp_path / "run"
    out.mkdir()
    (out / "eval.json").write_text("{}")
    (out / "progress.png").write_text("from an old run")
    assert demo_icm(out) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert "eval.json, progress.png" in line and "--overwrite" in line
    assert not (out / "labels.jsonl").exists()
    assert demo_icm(out, "--overwrite") == 0
    assert not (out / "eval.json").exists() and not (out / "progress.png").exists()


# -- figures -------------------------------------------------------------------------------------------------------

RESULTS = {name: {"accuracy": 0.6, "ci_low": 0.5, "ci_high": 0.7, "n": 40}
           for name in ("zero-shot", "random labels", "gold labels", "ICM labels")}


def test_eval_png_draws_the_majority_class_rate_not_chance():
    from src.evaluation.figures import accuracy_figure

    figure = accuracy_figure(RESULTS, "title", 0.575)
    [line] = [line for line in figure.axes[0].get_lines() if not line.get_label().startswith("_")]  # not error bars
    assert list(line.get_ydata()) == pytest.approx([57.5, 57.5])
    assert "majority class" in line.get_label() and "57.5%" in line.get_label()


def test_evaluate_draws_its_majority_rate_and_names_the_run_and_seed(tmp_path, monkeypatch, capsys):
    from src.experiments import evaluate

    out = write_run(tmp_path / "my-run")
    unbalanced = tmp_path / "test.json"  # 16 True, 8 False: the majority class is 2/3
    unbalanced.write_text(json.dumps([r for r in demo_records() if 2 <= r["consistency_id"] < 6
                                      or (6 <= r["consistency_id"] < 10 and r["label"])]))
    fake_pipeline(monkeypatch, evaluate)
    drawn = []
    monkeypatch.setattr(evaluate, "accuracy_chart", lambda results, title, rate, path: drawn.append((title, rate)))
    assert evaluate_main(["--run-dir", str(out), "--test-data", str(unbalanced)]) == 0, capsys.readouterr().err
    [(title, rate)] = drawn
    assert rate == json.loads((out / "eval.json").read_text())["majority_class_rate"] == pytest.approx(2 / 3)
    assert "my-run" in title and "--seed 7" in title


def progress_log(iterations: int, gold: bool) -> list[dict]:
    return [{"iter": i, "energy": -1.0 + 0.1 * i, "inconsistent_num": 0,
             "train_accuracy": 0.5 + 0.01 * i if gold else None} for i in range(iterations)]


def test_progress_figure_counts_in_whole_numbers_and_keeps_a_zero_line_off_the_axis():
    from src.evaluation.figures import RunLog, progress_figure

    figure = progress_figure([RunLog("tqa", 7, progress_log(3, gold=True))])
    energy, agreement, inconsistent = figure.axes
    low, high = inconsistent.get_ylim()
    assert low < 0 < high and high >= 1  # a line at 0 sits above the axis, with room over it
    visible = [t for t in inconsistent.get_yticks() if low <= t <= high]
    assert visible and all(float(t).is_integer() for t in visible)
    start, end = inconsistent.get_xlim()
    iteration_ticks = [t for t in inconsistent.get_xticks() if start <= t <= end]
    assert iteration_ticks and all(float(t).is_integer() for t in iteration_ticks)
    agreement_text = " ".join([agreement.get_ylabel(), agreement.get_title(loc="left"), *[t.get_text() for t in agreement.texts]])
    assert "labelled so far" in agreement_text and "grows" in agreement_text
    assert "no gold labels" not in agreement_text
    title = figure._suptitle.get_text()
    assert "tqa" in title and "--seed 7" in title


def test_agreement_that_never_moves_is_drawn_on_a_readable_axis():
    from src.evaluation.figures import RunLog, progress_figure

    log = [{**r, "train_accuracy": 1.0} for r in progress_log(4, gold=True)]
    low, high = progress_figure([RunLog("flat", 1, log)]).axes[1].get_ylim()
    assert low < 100 < high and high - low >= 10  # not 99.96 to 100.04


def test_progress_figure_says_no_gold_labels_instead_of_a_blank_panel():
    from src.evaluation.figures import RunLog, progress_figure

    figure = progress_figure([RunLog("custom-run", 3, progress_log(4, gold=False))])
    agreement = figure.axes[1]
    assert "no gold labels" in [t.get_text() for t in agreement.texts]
    assert list(agreement.get_yticks()) == []


def test_plot_names_each_run_by_its_directory_and_seed(tmp_path, monkeypatch, capsys):
    from src.experiments import plot

    out = write_run(tmp_path / "seed-run")
    (out / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in progress_log(3, gold=True)))
    drawn = []
    monkeypatch.setattr(plot, "progress_chart", lambda runs, path: drawn.append((runs, path)))
    assert plot.main([str(out)]) == 0
    [(runs, path)] = drawn
    # Drawn to a temporary file beside progress.png, then moved into place.
    assert [(r.name, r.seed) for r in runs] == [("seed-run", 7)] and path.parent == out
    assert f"wrote {out / 'progress.png'}" in capsys.readouterr().out
