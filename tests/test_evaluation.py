"""Evaluating labels: the conditions, the intervals, the figures and the fine-tuning export."""
import json
import os

import pytest

from core.llm_api.llm import ModelAPI
from core.llm_api.settings import Settings
from src.config.run_config import PromptConfig
from src.evaluation.evaluation import CHANCE, bootstrap_accuracy, demonstration_sets, evaluate_conditions
from src.data.testbeds import TESTBED_SPECS, demo_records, normalise_records
from src.experiments import plot
from tests.cli_helpers import ICM_SCRIPT, SMALL_EMBEDDED, call, load_script, run_script
from src.benchmarks.synthetic_model import SyntheticModel

export_labels = load_script("export_labels")


def synthetic_split():
    claims = normalise_records(demo_records(), TESTBED_SPECS["demo"], "demo", True)
    for uid, claim in enumerate(claims):
        claim["uid"] = uid
    demos = [{**c, "gold_label": c["label"]} for c in claims[:16]]
    test = claims[16:]
    model = SyntheticModel(claims, [c["label"] for c in claims], seed=3)
    return demos, test, model


def test_gold_beats_random_beats_chance_where_the_scorer_makes_it_so():
    demos, test, model = synthetic_split()
    api = ModelAPI(settings=Settings(), route=model)
    wrong_icm = [{**d, "label": 1 - d["gold_label"]} for d in demos]  # an ICM run that got everything backwards
    prompts = PromptConfig()
    results = evaluate_conditions(api, test, wrong_icm, label_style=prompts.label_style, token_match=prompts.token_match, seed=1)
    assert list(results) == ["zero-shot", "random labels", "gold labels", "ICM labels"]
    assert results["gold labels"].accuracy > results["random labels"].accuracy > CHANCE
    assert results["ICM labels"].accuracy < CHANCE  # backwards demonstrations pull the model the wrong way
    for result in results.values():
        assert result.n == len(test)
        assert result.ci_low <= result.accuracy <= result.ci_high
    # One batched call per condition, each holding every test prompt.
    assert model.batch_sizes == [len(test)] * 4


def test_every_condition_shows_the_same_demonstrations_in_the_same_order():
    demos, _, _ = synthetic_split()
    sets = demonstration_sets(demos, seed=0)
    assert sets["zero-shot"] == []
    for name in ("random labels", "gold labels", "ICM labels"):
        assert [d["uid"] for d in sets[name]] == [d["uid"] for d in demos]
    assert [d["label"] for d in sets["gold labels"]] == [d["gold_label"] for d in demos]
    no_gold = [{**d, "gold_label": None} for d in demos]
    assert demonstration_sets(no_gold, seed=0)["gold labels"] is None


def test_bootstrap_interval_by_hand():
    result = bootstrap_accuracy([True] * 30 + [False] * 10, seed=0)
    assert result.accuracy == 0.75 and result.n == 40
    assert 0.6 < result.ci_low < 0.75 < result.ci_high < 0.9
    assert bootstrap_accuracy([True] * 5).ci_low == bootstrap_accuracy([True] * 5).ci_high == 1.0


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    result = run_script(ICM_SCRIPT, "--testbed", "demo", "--batch_size", "8", "--num_seed", "4", "--K", "4",
                        "--output-dir", out, "--no-progress", env=SMALL_EMBEDDED)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def stand_in_run(tmp_path_factory):
    """A finished run of the same shape as ``small_run``, scored in-process by the stand-in route: for the tests
    that read a run's files (plot, export) rather than its scores."""
    from src.experiments import ICM
    from tests.stand_in_pipeline import use_stand_in

    out = tmp_path_factory.mktemp("eval-stand-in") / "run"
    with pytest.MonkeyPatch.context() as patch:
        use_stand_in(patch, out.parent)
        code = ICM.main(["--testbed", "demo", "--batch_size", "8", "--num_seed", "4", "--K", "4", "--output-dir", str(out),
                         "--no-progress"])
    assert code == 0
    return out


@pytest.mark.model
def test_evaluate_on_the_embedded_model_writes_eval_json_and_png(small_run):
    result = run_script("src/experiments/evaluate.py", "--run-dir", small_run, "--limit", "12", "--no-progress",
                        env=SMALL_EMBEDDED)
    assert result.returncode == 0, result.stderr
    report = json.loads((small_run / "eval.json").read_text())
    assert set(report["conditions"]) == {"zero-shot", "random labels", "gold labels", "ICM labels"}
    assert report["n_test"] == 12 and report["excluded_pool_claims"] == 8  # the pool's groups are not test data
    for condition in report["conditions"].values():
        assert condition["n"] == 12 and condition["ci_low"] <= condition["accuracy"] <= condition["ci_high"]
    assert (small_run / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_overlays_runs(stand_in_run, tmp_path, capsys):
    output = tmp_path / "progress.png"
    code, stderr = call(plot, [stand_in_run, stand_in_run, "--output", output], capsys)
    assert code == 0, stderr
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, stderr = call(plot, [tmp_path], capsys)
    assert code == 2 and "has no log.jsonl" in stderr


def export(run, fmt, tmp_path):
    output = tmp_path / f"{fmt}.jsonl"
    assert export_labels.main([str(run), "--format", fmt, "--output", str(output)]) == 0
    return output


def test_sft_export_pairs_each_claim_prompt_with_its_label_token(stand_in_run, tmp_path):
    labelled = [json.loads(l) for l in (stand_in_run / "labels.jsonl").read_text().splitlines() if json.loads(l)["label"] is not None]
    rows = [json.loads(l) for l in export(stand_in_run, "sft", tmp_path).read_text().splitlines()]
    assert len(rows) == len(labelled) >= 4
    for row, claim in zip(rows, labelled):
        assert row == {"prompt": claim["prompt"], "completion": " True" if claim["label"] else " False"}
        assert row["prompt"].endswith("I think this claim is")


def test_hf_export_loads_with_datasets(stand_in_run, tmp_path):
    datasets = pytest.importorskip("datasets")
    path = export(stand_in_run, "hf", tmp_path)
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    loaded = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf-cache"))
    labelled = [json.loads(l) for l in (stand_in_run / "labels.jsonl").read_text().splitlines() if json.loads(l)["label"] is not None]
    assert loaded.num_rows == len(labelled)
    assert loaded["label"] == [c["label"] for c in labelled]
    assert {"prompt", "question", "choice", "consistency_id", "gold_label"} <= set(loaded.column_names)
