"""The companion scripts keep ICM.py's promise: bad input or a damaged file gets one ``error:`` line and exit
code 2, no traceback, nothing half-written, inputs never modified, and no tool writes over its own inputs.

Runs are written without a model (tests/fake_runs.py); scripts are called in-process unless a signal or a
whole process is the point. A model server, where one is needed, is a pretend one that never scores."""
import json
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from src.experiments import ICM, evaluate, plot
from src.run_directory.run_outputs import jsonl
from tests.cli_helpers import call, load_script, refused, snapshot, start_script
from tests.dropping_server import MODEL, DroppingServer
from tests.fake_runs import make_run, make_shards

export_labels = load_script("export_labels")
merge_labels = load_script("merge_labels")


@pytest.fixture
def run(tmp_path) -> Path:
    return make_run(tmp_path / "run")


# -- damaged run files ---------------------------------------------------------------------------------------

def damage(name: str, text: str):
    return lambda folder: (folder / name).write_text(text)


def damage_line(name: str, number: int, text: str):
    def apply(folder: Path) -> None:
        lines = (folder / name).read_text().splitlines()
        lines[number] = text
        (folder / name).write_text("\n".join(lines) + "\n")
    return apply


# (what is done to the run, what the error line must say)
FAULTS = {
    "summary.json not JSON": (damage("summary.json", '{"testbed": "demo", "sett'), ["summary.json is damaged (not JSON"]),
    "summary.json a list": (damage("summary.json", "[1, 2]"), ["summary.json is damaged (it holds [1, 2], not an object)"]),
    "run.json not JSON": (damage("run.json", "{not json"), ["run.json is damaged (not JSON"]),
    "run.json null": (damage("run.json", "null"), ["run.json is damaged (it holds null, not an object)"]),
    "labels.jsonl line 2 garbage": (damage_line("labels.jsonl", 1, "garbage"),
                                    ["labels.jsonl line 2 is damaged (not JSON", "line(s) follow it"]),
    # labels.jsonl is written atomically, so unlike log.jsonl a cut last line is damage, not a crash.
    "labels.jsonl last line cut short": (damage_line("labels.jsonl", -1, '{"uid": 7, "record": 3'),
                                         ["labels.jsonl line", "is damaged (not JSON", "(the last line)"]),
    "labels.jsonl label of 7": (damage_line("labels.jsonl", 0, json.dumps({"uid": 0, "consistency_id": 1, "prompt": "p", "label": 7})),
                                ["labels.jsonl line 1 is damaged (its label is 7"]),
    # Python's json reads NaN and Infinity; the hf export then failed writing them back (a traceback).
    "labels.jsonl score NaN": (damage_line("labels.jsonl", 0, '{"uid": 0, "consistency_id": 1, "prompt": "p", "label": true, "score": NaN}'),
                               ["labels.jsonl line 1 is damaged (its score is NaN, not a finite number or null)"]),
    "labels.jsonl label_mass Infinity": (damage_line("labels.jsonl", 0, '{"uid": 0, "consistency_id": 1, "prompt": "p", "label": true, "label_mass": Infinity}'),
                                         ["labels.jsonl line 1 is damaged (its label_mass is Infinity"]),
    "labels.jsonl not UTF-8": (lambda folder: (folder / "labels.jsonl").write_bytes(b'{"uid": "caf\xe9"}\n'),
                               ["labels.jsonl is damaged (not UTF-8 text"]),
}
# What each script reads: a fault in a file it does not read is no fault for it.
READS = {"evaluate": {"summary.json", "run.json", "labels.jsonl"}, "export": {"summary.json", "run.json", "labels.jsonl"},
         "merge": {"summary.json", "run.json", "labels.jsonl"}}


def run_script(name: str, folder: Path, tmp_path: Path, capsys) -> tuple[int, str]:
    if name == "evaluate":
        return call(evaluate, ["--run-dir", folder, "--no-progress"], capsys)
    if name == "export":
        return call(export_labels, [folder, "--format", "sft"], capsys)
    return call(merge_labels, [folder.parent / "shard0", folder, "--output", tmp_path / "merged"], capsys)


@pytest.mark.parametrize("script", sorted(READS))
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_damaged_run_file_is_refused_in_one_line_and_nothing_is_written(script, fault, tmp_path, capsys):
    apply, words = FAULTS[fault]
    if fault.split(" ")[0] not in READS[script]:
        pytest.skip(f"{script} does not read that file")
    folder = make_shards(tmp_path)[1] if script == "merge" else make_run(tmp_path / "run")
    apply(folder)
    before = snapshot(tmp_path)
    code, err = run_script(script, folder, tmp_path, capsys)
    refused(code, err, *words)
    assert snapshot(tmp_path) == before  # nothing written, nothing changed


def test_plot_leaves_out_a_log_line_cut_short_by_a_crash_with_a_note(run, capsys):
    with (run / "log.jsonl").open("a") as log:
        log.write('{"iter": 2, "energy": 3.')  # a crash while appending: no newline, half a record
    code, err = call(plot, [run], capsys)
    assert code == 0, err
    assert "log.jsonl line 3, the last, is cut short" in err and "left out" in err
    assert (run / "progress.png").stat().st_size > 0


@pytest.mark.parametrize("line, message", [
    ("garbage", "log.jsonl line 1 is damaged (not JSON"),
    ('{"iter": "one", "energy": 1.0}', "log.jsonl line 1 is damaged (its iter is 'one', not an iteration number)"),
    ('{"iter": 0, "energy": "high"}', "log.jsonl line 1 is damaged (its energy is 'high', not a number)"),
])
def test_plot_refuses_a_damaged_log_line_in_the_middle_by_its_number(run, line, message, capsys):
    damage_line("log.jsonl", 0, line)(run)
    code, err = call(plot, [run], capsys)
    refused(code, err, message, "1 line(s) follow it")
    assert not (run / "progress.png").exists()


# -- the response cache ---------------------------------------------------------------------------------------

def damaged_past_its_first_page(path: Path) -> None:
    """A real cache whose later pages are overwritten: it opens, and fails on the first lookup."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE answers (key TEXT PRIMARY KEY, logprobs TEXT NOT NULL)")
    db.executemany("INSERT INTO answers VALUES (?, ?)", [(f"{i:064x}", json.dumps([[" True", -0.5]] * 20)) for i in range(3000)])
    db.commit()
    db.close()
    size = path.stat().st_size
    with path.open("r+b") as file:
        for offset in range(size // 2 // 4096 * 4096, size, 4096):
            file.seek(offset)
            file.write(b"\xff" * 64)


CACHES = {"not a database": lambda path: path.write_bytes(b"this is not a database" * 100),
          "damaged past its first page": damaged_past_its_first_page}


@pytest.mark.parametrize("kind", sorted(CACHES))
def test_evaluate_reports_a_corrupt_response_cache_and_its_advice_works(kind, tmp_path, monkeypatch, capsys):
    with DroppingServer() as server:  # lists a model, never scores: a cache lookup comes first
        run = make_run(tmp_path / "run", route="vllm", model=MODEL, endpoint=server.url)
        CACHES[kind](run / "responses.sqlite")
        monkeypatch.setenv("VLLM_BASE_URL", server.url)
        monkeypatch.setenv("VLLM_RETRY_SECONDS", "0")
        code, err = call(evaluate, ["--run-dir", run, "--no-progress"], capsys)
        refused(code, err, f"the response cache {run / 'responses.sqlite'} can't be used", "--cache-dir", "--no-cache")
        assert not (run / "eval.json").exists()
        # The flags the advice names exist, and take the damaged cache out of the way: what stops the run now is the
        # server, which drops every answer.
        for flags in (["--no-cache"], ["--cache-dir", tmp_path / "fresh"]):
            code, err = call(evaluate, ["--run-dir", run, "--no-progress", *flags], capsys)
            refused(code, err, "/v1/completions")
            assert "response cache" not in err


def test_icm_reports_a_cache_damaged_past_its_first_page_in_one_line(tmp_path, monkeypatch, capsys):
    damaged_past_its_first_page(tmp_path / "responses.sqlite")
    with DroppingServer() as server:
        monkeypatch.setenv("VLLM_BASE_URL", server.url)
        code, err = call(ICM, ["--testbed", "demo", "--batch_size", "4", "--num_seed", "2", "--K", "1", "--no-progress",
                               "--output-dir", tmp_path / "out", "--cache-dir", tmp_path], capsys)
        assert server.completions == 0  # stopped at the cache, before asking the model
    refused(code, err, "can't be used (database disk image is malformed)", "--no-cache")


# -- settings and servers -------------------------------------------------------------------------------------

def test_evaluate_refuses_a_server_url_without_a_scheme(run, monkeypatch, capsys):
    monkeypatch.setenv("VLLM_BASE_URL", "127.0.0.1:8000")
    code, err = call(evaluate, ["--run-dir", run, "--no-progress"], capsys)
    refused(code, err, "VLLM_BASE_URL='127.0.0.1:8000'", "does not start with http:// or https://")


@pytest.mark.parametrize("script", ["benchmark_icm", "measure_order_sensitivity"])
def test_scripts_with_a_base_url_refuse_one_without_a_scheme(script, data_dir, capsys, monkeypatch):
    monkeypatch.setenv("VLLM_RETRY_SECONDS", "1")  # if the URL were taken, trying it would not take long
    code, err = call(load_script(script), ["--base-url", "127.0.0.1:8000", "--data-dir", data_dir], capsys)
    refused(code, err, "--base-url='127.0.0.1:8000'", "does not start with http:// or https://")


@pytest.mark.parametrize("route", ["vllm", "external"])
def test_evaluate_reports_a_connection_dropped_after_the_headers_in_one_line(route, tmp_path, monkeypatch, capsys):
    with DroppingServer() as server:
        run = make_run(tmp_path / "run", route=route, model=MODEL, endpoint=server.url)
        if route == "vllm":
            monkeypatch.setenv("VLLM_BASE_URL", server.url)
            monkeypatch.setenv("VLLM_RETRY_SECONDS", "0")
        else:
            monkeypatch.setenv("LLAMA_API_BASE", server.url)
            monkeypatch.setenv("API_MAX_RETRIES", "0")
        code, err = call(evaluate, ["--run-dir", run, "--no-progress", "--model", MODEL], capsys)
        assert server.completions >= 1  # it did get as far as scoring
    refused(code, err, "ClientPayloadError")
    assert not (run / "eval.json").exists() and not (run / "eval.png").exists()


# -- no tool writes over its own inputs -----------------------------------------------------------------------

def test_merge_refuses_an_output_that_is_inside_or_around_a_shard(tmp_path, capsys, monkeypatch):
    shards = make_shards(tmp_path / "shards")
    (tmp_path / "link").symlink_to(shards[0])
    other_run = make_run(tmp_path / "another-run")
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    outputs = {
        shards[0]: "is the shard",
        Path("shards/shard0/"): "is the shard",           # relative, with a trailing slash
        Path("shards/../shards/shard0"): "is the shard",
        tmp_path / "link": "is the shard",                 # a symlink to it
        shards[1] / "merged": "lies inside the shard",
        tmp_path / "shards": "holds the shard",            # the folder the shards are in
        other_run: "holds an ICM.py run",                  # a run that is not a shard
    }
    for output, message in outputs.items():
        code, err = call(merge_labels, [*shards, "--output", output], capsys)
        refused(code, err, message)
    assert snapshot(tmp_path) == before
    # A folder of its own is fine, and so is merging again into it.
    for _ in range(2):
        code, err = call(merge_labels, [*shards, "--output", tmp_path / "merged"], capsys)
        assert code == 0, err
    assert snapshot(tmp_path / "shards") == {k: v for k, v in before.items() if str(k).startswith(str(tmp_path / "shards"))}


def test_a_merge_into_a_shard_then_a_second_merge_no_longer_fails(tmp_path, capsys):
    # The report's case: --output s0 replaced shard 0's labels and summary, and the next merge failed.
    shards = make_shards(tmp_path, 4)
    code, err = call(merge_labels, [*shards, "--output", shards[0]], capsys)
    refused(code, err, "is the shard")
    code, err = call(merge_labels, [*shards, "--output", tmp_path / "merged"], capsys)
    assert code == 0, err


def test_export_and_plot_refuse_an_output_onto_a_run_file_or_the_data(tmp_path, capsys):
    data = tmp_path / "claims.json"
    data.write_text(json.dumps([{"question": f"q{i}", "choice": f"c{i}", "consistency_id": i // 2, "label": i % 2}
                                for i in range(8)]))
    run = make_run(tmp_path / "run", ["--testbed", "custom", "--data", str(data), "--batch_size", "8", "--num_seed", "8", "--K", "2"])
    other = make_run(tmp_path / "other")
    before = snapshot(tmp_path)
    outputs = {(run / "labels.jsonl", "is the run's labels.jsonl"), (run / "summary.json", "is the run's summary.json"),
               (run / "log.jsonl", "is the run's log.jsonl"), (other / "labels.jsonl", "would replace a run's own labels.jsonl")}
    on_data = {(data, "is the data file")}
    for script, argv, more in ((export_labels, [run, "--format", "hf"], on_data), (plot, [run], on_data)):
        for output, message in outputs | more:
            code, err = call(script, [*argv, "--output", output], capsys)
            refused(code, err, message)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", ["progress.txt", "progress", "progress.jsonl"])
def test_plot_refuses_an_output_name_that_names_no_figure_format(run, tmp_path, name, capsys):
    # matplotlib picks the format by the ending, and raised a traceback for one it doesn't know.
    before = snapshot(tmp_path)
    code, err = call(plot, [run, "--output", tmp_path / name], capsys)
    refused(code, err, f"--output {tmp_path / name}: a figure's name must end in one of", ".png", ".pdf")
    assert snapshot(tmp_path) == before


def test_evaluate_refuses_outputs_onto_its_inputs(run, tmp_path, capsys):
    test_data = run / "eval.json"  # evaluate writes eval.json there
    test_data.write_text("[]")
    before = snapshot(tmp_path)
    code, err = call(evaluate, ["--run-dir", run, "--test-data", test_data, "--no-progress"], capsys)
    refused(code, err, f"--run-dir {run / 'eval.json'} is the --test-data file {test_data}")
    code, err = call(evaluate, ["--run-dir", run, "--cache-dir", run / "labels.jsonl", "--no-progress"], capsys)
    refused(code, err, "--cache-dir", "is the run's labels.jsonl")
    assert snapshot(tmp_path) == before


def test_icm_refuses_an_output_dir_that_holds_its_data_or_a_cache_on_its_files(tmp_path, capsys):
    data = tmp_path / "data" / "claims.json"
    data.parent.mkdir()
    data.write_text(json.dumps([{"question": "q", "choice": f"c{i}", "consistency_id": i // 2} for i in range(8)]))
    custom = ["--testbed", "custom", "--data", str(data), "--batch_size", "4", "--num_seed", "2"]
    before = snapshot(tmp_path)
    cases = (([*custom, "--output-dir", tmp_path / "data"], "--output-dir", "holds the data file"),
             ([*custom, "--output-dir", tmp_path], "--output-dir", "holds the data file"),
             (["--testbed", "gsm8k", "--data-dir", tmp_path / "data", "--output-dir", tmp_path / "data"], "holds the data file"),
             ([*custom, "--output-dir", tmp_path / "out", "--cache-dir", tmp_path / "out" / "labels.jsonl"], "is the run's labels.jsonl"),
             ([*custom, "--output-dir", tmp_path / "out", "--cache-dir", data], "--cache-dir", "is the data file"))
    for argv, *words in cases:
        code, err = call(ICM, argv, capsys)
        refused(code, err, *words)
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("script, flags", [("benchmark_icm", []), ("measure_order_sensitivity", []),
                                           ("simulate_prefix_cache", ["--pools", "16"])])
def test_measurement_scripts_refuse_a_json_output_onto_the_data(script, flags, tmp_path, capsys):
    data = tmp_path / "train_truthfulqa.json"
    data.write_text("[]")
    code, err = call(load_script(script), ["--data-dir", tmp_path, *flags, "--json", data], capsys)
    refused(code, err, "--json", "is the data file")
    assert data.read_text() == "[]"


def test_the_model_conversion_refuses_an_out_folder_that_holds_its_input_or_is_not_its_own(tmp_path, capsys):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    convert = load_script("convert_smollm2_to_hf")  # refuses before it sets its signal handlers
    for out, message in ((tmp_path, "holds the input --gguf"), (tmp_path / "notes", "is not a finished conversion")):
        code, err = call(convert, ["--gguf", gguf, "--out", out], capsys)
        refused(code, err, message)
    assert gguf.read_bytes() == b"GGUF" and (tmp_path / "notes" / "keep.txt").read_text() == "mine"


# -- signals while writing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_large_export_leaves_no_temporary_file_and_no_half_export(stop, tmp_path):
    run = make_run(tmp_path / "run")
    rows = [json.loads(line) for line in (run / "labels.jsonl").read_text().splitlines()]
    # About 90 MB of export, as in the report: long enough to be caught while it is written.
    padding = "x" * 20_000
    (run / "labels.jsonl").write_text(jsonl({**rows[i % len(rows)], "uid": i, "prompt": f"{padding}{i}"} for i in range(4_500)))
    process = start_script("scripts/export_labels.py", run, "--format", "sft")
    deadline = time.monotonic() + 120
    while not list(run.glob(".export_sft.jsonl.*.tmp")):  # the write has begun
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.001)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    assert "Traceback" not in stderr
    assert not list(run.glob(".*.tmp"))  # the temporary file is gone
    if process.returncode == 0:
        # On a loaded machine the poll above can see the temporary file late, and the signal then lands after
        # the export was renamed into place: the export must then be whole.
        assert len((run / "export_sft.jsonl").read_text().splitlines()) == 4_500
    else:
        assert process.returncode == 128 + stop, stderr
        assert not (run / "export_sft.jsonl").exists()  # no export, rather than half of one


def test_a_figure_is_replaced_whole_or_not_at_all(tmp_path):
    from src.run_directory.run_directory import atomic_path

    figure = tmp_path / "progress.png"
    figure.write_bytes(b"the old figure")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(figure) as temporary:
            temporary.write_bytes(b"half a new")
            raise KeyboardInterrupt  # Ctrl-C, or SIGTERM turned into an exception, mid-write
    assert figure.read_bytes() == b"the old figure" and [p.name for p in tmp_path.iterdir()] == ["progress.png"]
    with atomic_path(figure) as temporary:
        temporary.write_bytes(b"the new figure")
    assert figure.read_bytes() == b"the new figure" and [p.name for p in tmp_path.iterdir()] == ["progress.png"]


def test_an_output_of_the_wrong_kind_gets_advice_that_fits(tmp_path, capsys):
    # "File exists" and "Is a directory" were told to check that the path exists.
    shards = make_shards(tmp_path)
    taken = tmp_path / "merged"
    taken.write_text("someone's file\n")
    code, err = call(merge_labels, [*shards, "--output", taken], capsys)
    refused(code, err, "a file is where a folder is needed")
    assert taken.read_text() == "someone's file\n"
    run = make_run(tmp_path / "run")
    code, err = call(export_labels, [run, "--format", "sft", "--output", tmp_path], capsys)
    refused(code, err, "a folder is where a file is needed")
