"""--data in the formats researchers keep data in (JSON list, JSON Lines, CSV, Parquet, a saved Hugging Face
dataset), --columns, and the schema checks every format goes through. No model: loading either succeeds and is
compared, or fails before any model call (the stand-in pipeline records whether it was ever built)."""
import json
import math
import os
import socket

import pytest

from src.experiments import ICM
from src.run_directory.run_outputs import OUTPUT_FILES
from src.data.testbeds import TESTBED_SPECS, DataError, load_testbed_claims, normalise_records
from tests.conftest import REPO_ROOT
from tests.stand_in_pipeline import use_stand_in

RECORDS = [
    {"question": "What is 2 + 2?", "choice": "4", "label": True, "consistency_id": 0, "consistency_key": "4"},
    {"question": "What is 2 + 2?", "choice": "5", "label": False, "consistency_id": 0, "consistency_key": "5"},
    {"question": "Capital of France?", "choice": "Paris, the city on the Seine", "label": True, "consistency_id": 1, "consistency_key": "Paris"},
    {"question": "Capital of France?", "choice": "Lyon", "label": False, "consistency_id": 1, "consistency_key": "Lyon"},
]
# The claim fields the search reads, which every format must give alike.
READ_FIELDS = ("question", "choice", "prompt", "label", "consistency_id", "consistency_key", "record")


def write_formats(folder, records):
    """The same records as a JSON list, JSON Lines, CSV, Parquet and a save_to_disk folder."""
    import datasets

    (folder / "data.json").write_text(json.dumps(records))
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    columns = list(records[0])
    (folder / "data.csv").write_text(",".join(columns) + "\n" + "".join(
        ",".join(f'"{r[c]}"' if isinstance(r[c], str) else str(r[c]) for c in columns) + "\n" for r in records))
    table = datasets.Dataset.from_list(records)
    table.to_parquet(str(folder / "data.parquet"))
    table.save_to_disk(str(folder / "saved"))
    return ["data.json", "data.jsonl", "data.csv", "data.parquet", "saved"]


@pytest.fixture
def isolated_hf_home(tmp_path, monkeypatch):
    """Point the Hugging Face caches at an empty folder, and refuse any network connection."""
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))

    def no_network(*args, **kwargs):
        raise AssertionError("reading --data tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    return home


def test_every_format_gives_the_same_claims_and_leaves_nothing_behind(tmp_path, isolated_hf_home):
    data = tmp_path / "data"
    data.mkdir()
    names = write_formats(data, RECORDS)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    repo_before = sorted(os.listdir(REPO_ROOT))
    loaded = {}
    for name in names:
        claims, source, from_test = load_testbed_claims("custom", None, data / name, True)
        loaded[name] = [{f: c.get(f) for f in READ_FIELDS} for c in claims]
        assert source == str(data / name) and not from_test
    assert loaded["data.json"][2]["prompt"] == "Question: Capital of France?\nClaim: Paris, the city on the Seine\nI think this claim is"
    for name in names[1:]:
        assert loaded[name] == loaded["data.json"], name
    # No cache folder in the data folder, the repository or the Hugging Face home.
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    assert sorted(os.listdir(REPO_ROOT)) == repo_before
    assert not isolated_hf_home.exists() or not any(isolated_hf_home.rglob("*"))


def test_columns_map_a_files_own_names_onto_the_claim_fields(tmp_path, isolated_hf_home):
    csv = tmp_path / "mine.csv"
    csv.write_text("qid,q,answer_text,is_true,question\n"
                   "7,What is 2 + 2?,4,1,ignored\n7,What is 2 + 2?,5,0,ignored\n8,Capital of France?,Paris,1,ignored\n")
    from src.data.record_files import parse_columns

    columns = parse_columns("question=q, choice=answer_text,label=is_true,consistency_id=qid")
    claims, _, _ = load_testbed_claims("custom", None, csv, True, columns)
    assert [(c["question"], c["choice"], c["label"], c["consistency_id"]) for c in claims] == [
        ("What is 2 + 2?", "4", 1, 7), ("What is 2 + 2?", "5", 0, 7), ("Capital of France?", "Paris", 1, 8)]
    assert "qid" not in claims[0] and "answer_text" not in claims[0]  # renamed, not copied
    # A JSON list takes the same mapping.
    listed = tmp_path / "mine.json"
    listed.write_text(json.dumps([{"q": "Q?", "a": "yes", "g": 0}, {"q": "Q?", "a": "no", "g": 0}]))
    claims, _, _ = load_testbed_claims("custom", None, listed, True, parse_columns("question=q,choice=a,consistency_id=g"))
    assert [c["prompt"] for c in claims] == ["Question: Q?\nClaim: yes\nI think this claim is", "Question: Q?\nClaim: no\nI think this claim is"]


def test_an_empty_cell_in_a_number_column_keeps_the_others_whole(tmp_path, isolated_hf_home):
    # pandas reads an integer column with a gap as floats (1.0); the gap is an unknown gold label.
    csv = tmp_path / "gaps.csv"
    csv.write_text("question,choice,label,consistency_id\nQ?,a,1,3\nQ?,b,,3\nR?,c,0,4\n")
    claims, _, _ = load_testbed_claims("custom", None, csv, True)
    assert [(c["label"], c["consistency_id"]) for c in claims] == [(1, 3), (None, 3), (0, 4)]


def test_a_custom_pair_shows_the_model_both_responses():
    pair = {"question": "Write a haiku.", "choice": "Leaves fall", "choice_2": "I can't", "consistency_id": 0,
            "consistency_key": "A>B"}
    [claim] = normalise_records([pair], TESTBED_SPECS["custom"], "pairs.json", True)
    assert claim["prompt"] == ("Question: Write a haiku.\nAnswer 1: Leaves fall\nAnswer 2: I can't\n"
                               "Claim: Answer 1 is better than Answer 2.\nI think this claim is")
    single = {k: v for k, v in pair.items() if k != "choice_2"}
    [claim] = normalise_records([single], TESTBED_SPECS["custom"], "pairs.json", True)
    assert claim["prompt"] == "Question: Write a haiku.\nClaim: Leaves fall\nI think this claim is"


def test_the_papers_data_still_loads(data_dir):
    # The release's GSM8K holds one empty final answer: it is a consistency key, not text the model is shown.
    claims, _, _ = load_testbed_claims("gsm8k", data_dir, None, True)
    assert sum(c["consistency_key"] == "" for c in claims) == 1
    for testbed in ("truthfulQA", "alpaca", "truthfulQA-preference"):
        assert load_testbed_claims(testbed, data_dir, None, True)[0]


def saved_dataset_dict(folder):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS), "test": datasets.Dataset.from_list(RECORDS)}).save_to_disk(str(folder))


GOOD = '{"question": "q", "choice": "fine", "consistency_id": 0}'  # makes a group of two with the bad record
# name -> (file name, how to make it, extra flags, what the error must say). {path} is the data file.
REFUSED = {
    "CSV with an open quote": ("bad.csv", 'question,choice,consistency_id\n"open,c,0\n', [], "{path}: can't be read as CSV (ParserError"),
    "JSON Lines cut short": ("bad.jsonl", '{"question": "q", "choice": "c", "consistency_id": 0}\n{"question": \n', [], "{path}: can't be read as JSON Lines"),
    "empty JSON Lines": ("empty.jsonl", "", [], "{path}: the file is empty"),
    "CSV with a header only": ("header.csv", "question,choice,consistency_id\n", [], "{path}: holds no records"),
    "CSV not UTF-8": ("latin.csv", "question,choice,consistency_id\ncaf\xe9,c,0\n".encode("latin-1"), [], "{path}: not UTF-8 text; save the CSV file as UTF-8"),
    "not Parquet": ("fake.parquet", "not parquet at all", [], "{path}: can't be read as Parquet"),
    "unknown format": ("data.xlsx", "PK", [], "{path}: can't tell its format from the name: --data reads a JSON list (.json)"),
    "folder not saved by datasets": ("plain", None, [], "{path} is a folder, but not one written by Dataset.save_to_disk"),
    "saved DatasetDict": ("splits", saved_dataset_dict, [], "{path} holds a DatasetDict with splits train, test: point --data at one split's folder"),
    "mapped column missing": ("m.csv", "q,c,g\nQ?,a,0\n", ["--columns", "question=q,choice=answer_text,consistency_id=g"],
                              "{path}: no column 'answer_text' for --columns choice=answer_text; its columns are c, g, q"),
    "column mapped twice": ("m.csv", "q,c,g\nQ?,a,0\n", ["--columns", "question=q,choice=q"], "--columns maps column 'q' onto both question and choice"),
    "field mapped twice": ("m.csv", "q,c,g\nQ?,a,0\n", ["--columns", "question=q,question=c"], "--columns maps question twice"),
    "unknown field": ("m.csv", "q,c,g\nQ?,a,0\n", ["--columns", "qestion=q"], "'qestion' is not a claim field; map columns onto question, choice"),
    "pair without =": ("m.csv", "q,c,g\nQ?,a,0\n", ["--columns", "question:q"], "write FIELD=COLUMN pairs separated by commas"),
    "boolean as text": ("b.jsonl", '{"question": true, "choice": "c", "consistency_id": 0}\n' + GOOD + "\n", [], "{path}, record 0: field 'question' is true, a boolean, not text"),
    "boolean claim in a JSON list": ("b.json", '[{"question": "q", "choice": false, "consistency_id": 0}, ' + GOOD + "]", [], "record 0: field 'choice' is false, a boolean, not text"),
    "NaN claim in a JSON list": ("n.json", '[{"question": "q", "choice": "c", "consistency_id": 0}, {"question": "q", "choice": NaN, "consistency_id": 0}]', [],
                                 "record 1: field 'choice' is empty (NaN, as an empty cell of a CSV or table reads)"),
    "empty cell in a CSV": ("e.csv", "question,choice,consistency_id\nq,a,0\nq,,0\n", [], "{path}, record 1: field 'choice' is empty (null, as an empty cell"),
    "empty question": ("e.json", '[{"question": "", "choice": "c", "consistency_id": 0}, ' + GOOD + "]", [], "record 0: field 'question' is empty: every claim needs its text"),
    "blank claim": ("e.jsonl", '{"question": "q", "choice": "  \\n", "consistency_id": 0}\n' + GOOD + "\n", [], "record 0: field 'choice' is empty: every claim needs its text"),
    "empty second response": ("p.json", '[{"question": "q", "choice": "a", "choice_2": "", "consistency_id": 0}, ' + GOOD + "]", [], "record 0: field 'choice_2' is empty: a pair needs its second response"),
    "NaN gold label": ("l.json", '[{"question": "q", "choice": "c", "consistency_id": 0, "label": NaN}, ' + GOOD + "]", [], "record 0: label is NaN, which is how an empty table cell reads"),
    "gold key without gold": ("t.json", json.dumps([{"question": "q", "choice": f"c{i}", "consistency_id": 0, "label": None if i == 2 else i % 2} for i in range(4)]),
                              ["--testbed", "truthfulQA", "--batch_size", "4"], "record 2: no gold label, but --testbed truthfulQA derives its consistency key from it"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_bad_data_is_refused_in_one_line_before_any_model_call(case, tmp_path, monkeypatch, capsys):
    name, content, flags, message = REFUSED[case]
    stand_in = use_stand_in(monkeypatch, tmp_path)
    path = tmp_path / name
    if content is None:
        path.mkdir()
        (path / "data.csv").write_text("question,choice,consistency_id\nq,c,0\n")
    elif callable(content):
        content(path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    capsys.readouterr()  # what making the file printed
    testbed = [] if "--testbed" in flags else ["--testbed", "custom"]
    out = tmp_path / "out"
    size = [] if "--batch_size" in flags else ["--batch_size", "2"]
    code = ICM.main([*testbed, *flags, *size, "--data", str(path), "--num_seed", "2", "--K", "1", "--output-dir", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert message.format(path=path) in lines[0]
    assert not stand_in.instances, "the model was reached"
    assert not [n for n in OUTPUT_FILES if (out / n).exists()]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if out not in p.parents and p != out) == before


def test_columns_without_data_is_refused(tmp_path, monkeypatch, capsys):
    use_stand_in(monkeypatch, tmp_path)
    assert ICM.main(["--testbed", "demo", "--columns", "question=q", "--output-dir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == "error: --columns names the columns of --data FILE: pass --data, or drop --columns"


def test_a_run_reads_jsonl_with_columns_and_its_resume_keeps_them(tmp_path, monkeypatch, capsys):
    stand_in = use_stand_in(monkeypatch, tmp_path)
    data = tmp_path / "pool.jsonl"
    data.write_text("".join(json.dumps({"q": r["question"], "text": r["choice"], "gold": r["label"], "group": r["consistency_id"]}) + "\n"
                            for r in RECORDS))
    out = tmp_path / "out"
    flags = ["--testbed", "custom", "--data", str(data), "--columns", "question=q,choice=text,label=gold,consistency_id=group"]
    assert ICM.main([*flags, "--batch_size", "4", "--num_seed", "2", "--K", "1", "--output-dir", str(out)]) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    assert sorted(r["choice"] for r in rows) == sorted(r["choice"] for r in RECORDS)
    assert {r["uid"]: r["gold_label"] for r in rows} == {r["uid"]: {r2["choice"]: r2["label"] for r2 in RECORDS}[r["choice"]] for r in rows}
    assert json.loads((out / "run.json").read_text())["settings"]["columns"] == "question=q,choice=text,label=gold,consistency_id=group"
    assert ICM.main(["--resume", str(out), "--K", "2"]) == 0, capsys.readouterr().err
    assert len(stand_in.instances) == 2
    assert [json.loads(line)["iter"] for line in (out / "log.jsonl").read_text().splitlines()] == [0, 1]


def test_numbers_stay_text_but_not_infinite_ones():
    ok = {"question": 12, "choice": 3.5, "consistency_id": 0}
    [claim] = normalise_records([ok], TESTBED_SPECS["custom"], "n.json", True)
    assert claim["prompt"] == "Question: 12\nClaim: 3.5\nI think this claim is"
    with pytest.raises(DataError, match="field 'choice' is inf, not text"):
        normalise_records([{**ok, "choice": math.inf}], TESTBED_SPECS["custom"], "n.json", True)


def test_a_csv_cell_is_shown_as_written(tmp_path):
    csv = tmp_path / "prices.csv"
    csv.write_text("question,choice,consistency_id,consistency_key\nPrice?,4.50,1,007\nPrice?,12,1,7\n")
    claims, _, _ = load_testbed_claims("custom", None, csv, True)
    assert [c["choice"] for c in claims] == ["4.50", "12"] and [c["consistency_key"] for c in claims] == ["007", "7"]
