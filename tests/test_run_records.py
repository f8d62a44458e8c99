"""What a run records and checks about its data: the resume's fingerprint covers every field the search reads,
the gold-derived consistency key is announced and recorded, labels.jsonl and log.jsonl name their fields
plainly and give a score for every claim, and no progress bar writes into a log. Whole runs go through
ICM.main in-process on the stand-in route (tests/stand_in_pipeline.py), in well under a second each."""
import hashlib
import json

import pytest

from core.llm_api.base_llm import ScoringError
from core.llm_api.llm import ModelAPI
from core.llm_api.settings import Settings
from src.experiments import ICM
from src.config.run_config import PromptConfig
from src.data.claims import claim_from_label_row
from src.pipeline.pool_scoring import PoolScorer
from tests.stand_in_pipeline import PromptHashRoute, use_stand_in

# Two TruthfulQA-style groups of four claims, two true answers in each.
TQA = [{"question": f"Question {g}?", "choice": f"answer {g}.{i}", "label": i in (0, 2), "consistency_id": g}
       for g in range(2) for i in range(4)]


def write(path, records):
    path.write_text(json.dumps(records))
    return path


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_icm(capsys, *argv) -> tuple[int, str]:
    code = ICM.main(list(argv))
    return code, capsys.readouterr().err


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    return use_stand_in(monkeypatch, tmp_path)


def start(tmp_path, capsys, testbed="truthfulQA", records=TQA, *flags, K=2):
    data = write(tmp_path / "data.json", records)
    out = tmp_path / "run"
    code, err = run_icm(capsys, "--testbed", testbed, "--data", str(data), "--batch_size", "8", "--num_seed", "2",
                        "--K", str(K), "--output-dir", str(out), *flags)
    assert code == 0, err
    return data, out, err


def swap_gold(records):
    """The gold labels of group 0 changed; with the gold-derived key, its consistency rules change with them."""
    return [{**r, "label": not r["label"]} if r["consistency_id"] == 0 and r["choice"].endswith((".0", ".1")) else r
            for r in records]


# testbed and flags, how the data is edited, and which kinds of field the refusal must name.
EDITS = {
    "gold labels under the gold-derived key": (("truthfulQA",), swap_gold,
                                               "the consistency keys (the consistency rules) and the gold labels changed"),
    "gold labels alone (monitoring)": (("truthfulQA", "--no-gold-consistency"), swap_gold, "(the gold labels changed;"),
    "consistency keys alone": (("custom",), lambda rs: [{**r, "consistency_key": r["choice"][-1]} for r in rs],
                               "(the consistency keys (the consistency rules) changed;"),
    "claim text": (("custom",), lambda rs: [{**r, "choice": r["choice"].upper()} for r in rs], "(the claims' text (their prompts) changed;"),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_a_resume_over_data_whose_rules_changed_is_refused_and_says_what_changed(case, stand_in, tmp_path, capsys):
    (testbed, *flags), edit, message = EDITS[case]
    records = [{**r, "consistency_key": "yes" if r["label"] else f"no{i}"} for i, r in enumerate(TQA)] if testbed == "custom" else TQA
    data, out, _ = start(tmp_path, capsys, testbed, records, *flags)
    write(data, edit(records))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, err = run_icm(capsys, "--resume", str(out), "--K", "3")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "the data no longer gives the pool this run was labelling" in lines[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert len(stand_in.instances) == 1  # the resume never reached the model


def v1_fingerprint(labels_path) -> str:
    """The fingerprint runs recorded before it was versioned: uid, group and prompt of each claim."""
    digest = hashlib.sha256()
    for row in rows(labels_path):
        digest.update(json.dumps([row["uid"], row["consistency_id"], row["prompt"]]).encode())
    return digest.hexdigest()


def test_a_run_recorded_with_the_old_fingerprint_still_resumes_and_is_checked_the_old_way(stand_in, tmp_path, capsys):
    data, out, _ = start(tmp_path, capsys)
    old = v1_fingerprint(out / "labels.jsonl")
    for name in ("run.json", "checkpoint.json"):
        saved = json.loads((out / name).read_text())
        (out / name).write_text(json.dumps({**saved, "pool_fingerprint": old}))
    code, err = run_icm(capsys, "--resume", str(out), "--K", "3")
    assert code == 0, err
    assert "was started by an older icm, whose check of the data covers claims, groups and prompts" in err
    assert json.loads((out / "checkpoint.json").read_text())["pool_fingerprint"] == old
    write(data, [{**r, "choice": r["choice"] + "!"} for r in TQA])
    code, err = run_icm(capsys, "--resume", str(out), "--K", "4")
    assert code == 2 and "the data no longer gives the pool this run was labelling (other claims, groups or prompts" in err


def test_a_gold_derived_consistency_key_is_announced_and_recorded(stand_in, tmp_path, capsys):
    _, out, err = start(tmp_path, capsys)
    notes = [line for line in err.splitlines() if "derives its consistency key from the gold labels" in line]
    assert len(notes) == 1 and notes[0].startswith("note: ") and "--no-gold-consistency" in notes[0]
    assert json.loads((out / "run.json").read_text())["settings"]["consistency_key_from_gold"] is True
    assert json.loads((out / "summary.json").read_text())["settings"]["consistency_key_from_gold"] is True
    for flags, testbed in ((["--no-gold-consistency"], "truthfulQA"), ([], "custom")):
        other = tmp_path / testbed / "x"
        other.parent.mkdir(exist_ok=True)
        _, out, err = start(other.parent, capsys, testbed, TQA, *flags)
        assert "derives its consistency key from the gold labels" not in err
        assert json.loads((out / "summary.json").read_text())["settings"]["consistency_key_from_gold"] is False


def test_every_claim_gets_a_score_and_the_fields_say_what_they_hold(stand_in, tmp_path, capsys):
    _, out, _ = start(tmp_path, capsys, "custom", TQA, K=1)
    labels, log = rows(out / "labels.jsonl"), rows(out / "log.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    unlabelled = [r for r in labels if r["label"] is None]
    assert unlabelled, "the run labelled every claim: the test proves nothing"
    assert all(isinstance(r["score"], float) for r in labels)
    assert all(r["labelled_by_search"] == (r["label"] is not None) for r in labels)
    assert sum(r["initial_random_label"] for r in labels) == 2 and all("seed" not in r for r in labels)
    assert all("pool_size" not in r and r["labelled"] == summary["final"]["labeled"] for r in log[-1:])
    assert summary["final"]["pool_size"] == len(labels) == 8
    # The unlabelled claims went to the model together, in one batched call at the end.
    route = stand_in.instances[0].stand_in
    assert summary["batch_predictions_computed"] == 1 and len(route.batches[-1]) == len(unlabelled)
    # Each unlabelled claim's score is its prediction from all the labelled claims, as the search would make it.
    claims = {r["uid"]: claim_from_label_row(r) for r in labels}
    scorer = PoolScorer(ModelAPI(settings=Settings(), route=PromptHashRoute()), PromptConfig(prompt_layout="tree"))
    for row in labels:
        assert row["score"] == pytest.approx(scorer.predict_score(claims[row["uid"]], claims), abs=1e-12)


def test_a_run_stopped_by_the_model_asks_it_nothing_more(tmp_path, monkeypatch, capsys):
    stand_in = use_stand_in(monkeypatch, tmp_path, fail_after=3)
    data = write(tmp_path / "data.json", TQA)
    out = tmp_path / "run"
    code, err = run_icm(capsys, "--testbed", "custom", "--data", str(data), "--batch_size", "8", "--num_seed", "2",
                        "--K", "20", "--output-dir", str(out))
    assert code == 2 and "the stand-in server is down" in err
    route = stand_in.instances[0].stand_in
    assert route.attempts == 4  # three answered, the one that failed, and nothing after it
    labels = rows(out / "labels.jsonl")
    assert len(labels) == 8 and all(r["labelled_by_search"] == (r["label"] is not None) for r in labels)


def test_a_failed_final_prediction_keeps_the_finished_labels(stand_in, tmp_path, monkeypatch, capsys):
    def server_down(self, claims):
        raise ScoringError("the server went away")

    monkeypatch.setattr(PoolScorer, "predict_unlabeled", server_down)
    data = write(tmp_path / "data.json", TQA)
    out = tmp_path / "run"
    code, err = run_icm(capsys, "--testbed", "custom", "--data", str(data), "--batch_size", "8", "--num_seed", "2",
                        "--K", "1", "--output-dir", str(out))
    assert code == 0, err
    assert "could not be scored (the server went away); their score is null" in err
    labels = rows(out / "labels.jsonl")
    assert len(labels) == 8 and json.loads((out / "summary.json").read_text())["stopped_early"] is None
    assert all(r["score"] is not None for r in labels if r["labelled_by_search"])


def test_no_progress_bar_writes_into_a_log(stand_in, tmp_path, capsys):
    # capsys stands in for a log file: stderr is not a terminal.
    err = start(tmp_path, capsys, "custom", TQA, K=3)[2]
    assert stand_in.instances[0].options.show_progress is False
    assert "\r" not in err and "\x1b[" not in err and "ICM search" not in err


def test_evaluation_draws_no_progress_bar_into_a_log_either(stand_in, tmp_path, monkeypatch, capsys):
    from src.experiments import evaluate

    _, out, _ = start(tmp_path, capsys, "custom", TQA, K=2)
    test = write(tmp_path / "test.json", [{**r, "consistency_id": r["consistency_id"] + 10} for r in TQA])
    monkeypatch.setattr(evaluate, "ScoringPipeline", stand_in)
    code = evaluate.main(["--run-dir", str(out), "--test-data", str(test), "--allow-other-model"])  # the stand-in route
    err = capsys.readouterr().err
    assert code == 0, err
    assert stand_in.instances[-1].options.show_progress is False
    assert "\r" not in err and "\x1b[" not in err


def test_the_hf_export_carries_the_renamed_fields_for_new_and_old_runs(stand_in, tmp_path, capsys):
    from tests.cli_helpers import call, load_script

    export_labels = load_script("export_labels")
    _, out, _ = start(tmp_path, capsys, "custom", TQA, K=1)

    def exported() -> list[dict]:
        target = tmp_path / "export.jsonl"
        code, stderr = call(export_labels, [out, "--format", "hf", "--output", target], capsys)
        assert code == 0, stderr
        return rows(target)

    labelled = [r for r in rows(out / "labels.jsonl") if r["labelled_by_search"]]
    new = exported()
    assert [(r["uid"], r["score"], r["initial_random_label"]) for r in new] == [
        (r["uid"], r["score"], r["initial_random_label"]) for r in labelled]
    # labels.jsonl as versions before the rename wrote it
    old_rows = [{("seed" if k == "initial_random_label" else k): v for k, v in r.items() if k != "labelled_by_search"}
                for r in rows(out / "labels.jsonl")]
    (out / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old_rows))
    assert exported() == new


def test_a_run_on_data_without_gold_labels_resumes(stand_in, tmp_path, capsys):
    # With no gold label anywhere, agreement with gold is null in the checkpoint's metric: that is no damage.
    unlabelled = [{k: v for k, v in r.items() if k != "label"} for r in TQA]
    _, out, _ = start(tmp_path, capsys, "custom", unlabelled)
    assert json.loads((out / "checkpoint.json").read_text())["metric"]["train_accuracy"] is None
    code, err = run_icm(capsys, "--resume", str(out), "--K", "4")
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["iterations"] == 4


def test_a_refused_start_leaves_a_run_without_a_checkpoint_as_it_was(stand_in, tmp_path, capsys):
    # A folder holding run.json, log.jsonl, labels.jsonl and summary.json but no checkpoint.json: a new run there
    # without --overwrite is refused, and must not delete the run's files on its way out.
    data, out, _ = start(tmp_path, capsys)
    (out / "checkpoint.json").unlink()
    before = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file() and path.name != ".lock"}
    code, err = run_icm(capsys, "--testbed", "truthfulQA", "--data", str(data), "--batch_size", "8", "--num_seed", "2",
                        "--K", "2", "--output-dir", str(out))
    assert code == 2 and "already holds a run" in err
    after = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file() and path.name != ".lock"}
    assert after == before


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_custom_run_is_evaluated_on_test_data_in_its_own_format_and_columns(suffix, stand_in, tmp_path, monkeypatch,
                                                                               capsys):
    # evaluate.py read only a JSON list and ignored the run's --columns: such a run couldn't be evaluated as it was.
    from src.experiments import evaluate

    renamed = [{"q": r["question"], "a": r["choice"], "gold": r["label"], "qid": r["consistency_id"]} for r in TQA]
    columns = "question=q,choice=a,label=gold,consistency_id=qid"
    data = write(tmp_path / "data.json", renamed)
    out = tmp_path / "run"
    code, err = run_icm(capsys, "--testbed", "custom", "--data", str(data), "--columns", columns, "--batch_size", "8",
                        "--num_seed", "2", "--K", "2", "--output-dir", str(out))
    assert code == 0, err
    test_rows = [{**r, "qid": r["qid"] + 10} for r in renamed]
    test = tmp_path / f"test{suffix}"
    if suffix == ".jsonl":
        test.write_text("".join(json.dumps(r) + "\n" for r in test_rows))
    else:
        test.write_text("q,a,gold,qid\n" + "".join(f"{r['q']},{r['a']},{str(r['gold']).lower()},{r['qid']}\n" for r in test_rows))
    monkeypatch.setattr(evaluate, "ScoringPipeline", stand_in)
    code = evaluate.main(["--run-dir", str(out), "--test-data", str(test), "--allow-other-model", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert json.loads((out / "eval.json").read_text())["n_test"] == len(TQA)
