"""Bad input: a one-line error naming what to fix, exit code 2, no traceback, and nothing left behind that
blocks a re-run (or, for a run being resumed, its files exactly as they were)."""
import json
import shutil
from pathlib import Path

import pytest

from src.experiments import ICM
from src.run_directory.run_outputs import OUTPUT_FILES
from tests.cli_helpers import call
from tests.stand_in_pipeline import use_stand_in
from tests.conftest import closed_port_url


def run_icm(capsys, *args) -> tuple[int, str]:
    """ICM.py's main in this process: its exit code and stderr."""
    return call(ICM, args, capsys)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def assert_refused(result: tuple[int, str], message: str, out: Path = None) -> None:
    """Exit 2, one line that starts with "error:" and says ``message``, no traceback, and no run files in ``out``."""
    code, stderr = result
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert message in lines[0], stderr
    if out is not None:
        assert not [name for name in OUTPUT_FILES if (out / name).exists()], "a failed start left files that block a re-run"


CASES = {
    "odd num_seed": (["--testbed", "demo", "--num_seed", "3", "--batch_size", "8"], "--num_seed 3 must be even"),
    "num_seed above batch": (["--testbed", "demo", "--num_seed", "10", "--batch_size", "8"], "larger than --batch_size"),
    "batch not a group multiple": (["--testbed", "demo", "--batch_size", "6", "--num_seed", "2"], "multiple of demo's group size 4"),
    "batch above data": (["--testbed", "demo", "--batch_size", "128", "--num_seed", "2"], "larger than the 64 records"),
    "zero temperature": (["--testbed", "demo", "--initial_T", "0"], "--initial_T 0.0 must be a positive number"),
    "negative final temperature": (["--testbed", "demo", "--final_T", "-1"], "--final_T -1.0 must be a positive number"),
    "no data dir": (["--testbed", "truthfulQA"], "reads its data from --data-dir"),
    "missing data dir": (["--testbed", "gsm8k", "--data-dir", "/nonexistent/icm"], "is not a directory"),
    "custom without data": (["--testbed", "custom"], "--testbed custom needs --data FILE"),
    "gguf that is not there": (["--testbed", "demo", "--batch_size", "4", "--num_seed", "2", "--model", "/nope/m.gguf"], "needs a .gguf file path"),
    "final temperature above the initial": (["--testbed", "demo", "--initial_T", "1", "--final_T", "5"], "--final_T 5.0 is above --initial_T 1.0"),
    "negative request limit": (["--testbed", "demo", "--requests-per-minute", "-5"], "--requests-per-minute -5.0 must be a positive number"),
    "token limit not a number": (["--testbed", "demo", "--tokens-per-minute", "nan"], "--tokens-per-minute nan must be a finite number"),
    "alpha not a number": (["--testbed", "demo", "--alpha", "nan"], "--alpha nan must be a finite number"),
    "negative repair rounds": (["--testbed", "demo", "--consistency_fix_K", "-1"], "--consistency_fix_K -1 must not be negative"),
    "negative post-flip rounds": (["--testbed", "demo", "--post-flip-fix-K", "-2"], "--post-flip-fix-K -2 must not be negative"),
    "shard index alone": (["--testbed", "demo", "--batch-index", "1"], "--num-batches and --batch-index go together"),
    "shard index out of range": (["--testbed", "demo", "--num-batches", "2", "--batch-index", "2"], "--batch-index 2 must be between 0 and --num-batches 2 - 1"),
    "paper mode contradicted": (["--testbed", "demo", "--paper-mode", "--label-style", "space-in-label"], "--label-style space-in-label contradicts --paper-mode"),
    "data dir is a file": (["--testbed", "gsm8k", "--data-dir", "/etc/hostname"], "is not a directory"),
    "secrets is a folder": (["--testbed", "demo", "--batch_size", "4", "--num_seed", "2", "--secrets", "/tmp"], "--secrets /tmp: no such file"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_flags(case, tmp_path, capsys):
    args, message = CASES[case]
    result = run_icm(capsys, *args, "--output-dir", str(tmp_path / "out"))
    assert_refused(result, message, tmp_path / "out")


def test_unknown_testbed_and_scheduler_are_refused_by_the_parser(capsys):
    for flags, word in ((["--testbed", "mmlu"], "--testbed"), (["--scheduler", "cosine"], "--scheduler")):
        code, stderr = run_icm(capsys, *flags)
        assert code == 2 and word in stderr and "Traceback" not in stderr


BAD_FILES = {
    "malformed json": ('[{"question": "q", ', "not valid JSON (line 1"),
    "not a list": ('{"question": "q"}', "expected a JSON list"),
    "empty list": ("[]", "the list of records is empty"),
    "missing field": ('[{"question": "q", "consistency_id": 0}]', "record 0: missing field(s) choice"),
    "wrong label type": ('[{"question": "q", "choice": "c", "consistency_id": 0, "label": "yes"}]', "record 0: label 'yes' must be true/false or 1/0"),
    "bad consistency id": ('[{"question": "q", "choice": "c", "consistency_id": [1]}]', "consistency_id [1] must be an integer or a string"),
    "lone surrogate": ('[{"question": "q\\ud800", "choice": "c", "consistency_id": 0}, {"question": "q", "choice": "d", "consistency_id": 0}]',
                       "record 0: field 'question' holds half of a UTF-16 surrogate pair"),
    "deeply nested": ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply to read"),
    "nested field deeply nested": ('[{"question": "q", "choice": "c", "consistency_id": 0, "meta": ' + "[" * 900 + "]" * 900 + "}]",
                                   "record 0: nested too deeply"),
    "record not an object": ("[1, 2]", "record 0: expected an object"),
    "field not text": ('[{"question": {"a": 1}, "choice": "c", "consistency_id": 0}]', "field 'question' must be text"),
    "no group fits the batch": (json.dumps([{"question": "q", "choice": f"c{i}", "consistency_id": i // 3} for i in range(6)]),
                                "--batch_size 2 holds no whole consistency group"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_custom_data(case, tmp_path, capsys):
    text, message = BAD_FILES[case]
    data = write(tmp_path / "data.json", text)
    result = run_icm(capsys, "--testbed", "custom", "--data", str(data), "--batch_size", "2", "--num_seed", "2",
                     "--output-dir", str(tmp_path / "out"))
    assert_refused(result, message, tmp_path / "out")
    assert str(data) in result[1]
    # The same data is refused the same way on every try: nothing was left that turns it into a resume problem.
    assert_refused(run_icm(capsys, "--testbed", "custom", "--data", str(data), "--batch_size", "2", "--num_seed", "2",
                           "--output-dir", str(tmp_path / "out")), message, tmp_path / "out")


def test_a_finished_run_is_never_overwritten_silently(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    write(out / "labels.jsonl", json.dumps({"uid": 0}) + "\n")
    code, stderr = run_icm(capsys, "--testbed", "demo", "--batch_size", "4", "--num_seed", "2", "--output-dir", str(out))
    assert code == 2 and "already holds a run" in stderr and "--overwrite" in stderr
    assert (out / "labels.jsonl").read_text() == json.dumps({"uid": 0}) + "\n"


DEMO = ["--testbed", "demo", "--batch_size", "4", "--num_seed", "2"]
# (flags, environment, files to write {name: bytes}, what the error must say). {dir} is the test's folder.
MORE_CASES = {
    "groups smaller than the testbed's": (
        ["--testbed", "truthfulQA", "--data", "{dir}/small.json", "--batch_size", "4", "--num_seed", "2"], {},
        {"small.json": json.dumps([{"question": "q", "choice": f"c{i}", "label": i % 2, "consistency_id": 0} for i in range(3)]).encode()},
        "consistency_id 0 has 3 records; --testbed truthfulQA needs exactly 4 per group"),
    "data file not UTF-8": (["--testbed", "custom", "--data", "{dir}/latin.json"], {}, {"latin.json": '[{"question": "café"}]'.encode("latin-1")},
                            "not UTF-8 text"),
    "resume without a run": (["--resume", "{dir}"], {}, {}, "no run.json there, so no run to resume"),
    "resume a damaged run": (["--resume", "{dir}"], {}, {"run.json": b"{not json"}, "run.json is damaged (not JSON)"),
    "unreachable server": (["--testbed", "demo", "--batch_size", "4", "--num_seed", "2"], {"VLLM_BASE_URL": closed_port_url(), "VLLM_RETRY_SECONDS": "0"}, {},
                           "cannot connect to http://127.0.0.1:"),
    "bad number in the settings": (["--testbed", "demo", "--batch_size", "4", "--num_seed", "2"], {"EMBEDDED_SLOTS": "four"}, {}, "EMBEDDED_SLOTS='four' (in "),
    "secrets file missing": (["--testbed", "demo", "--batch_size", "4", "--num_seed", "2", "--secrets", "{dir}/nope"], {}, {}, "--secrets {dir}/nope: no such file"),
    "rollback with no hosted API": (["--testbed", "demo", "--batch_size", "4", "--num_seed", "2", "--no-vllm"], {"VLLM_BASE_URL": "http://127.0.0.1:9"}, {}, "LLAMA_API_BASE is not set"),
    "use-vllm with no server": (["--testbed", "demo", "--batch_size", "4", "--num_seed", "2", "--use-vllm"], {}, {}, "--use-vllm needs VLLM_BASE_URL"),
    "hosted API with no model": (["--testbed", "demo", "--batch_size", "4", "--num_seed", "2"], {"LLAMA_API_BASE": "http://127.0.0.1:9"}, {}, "the hosted API route needs --model"),
    "decay out of range": (["--testbed", "demo", "--decay", "0"], {}, {}, "--decay 0.0 must be in (0, 1]"),
    "negative K": (["--testbed", "demo", "--K", "-1"], {}, {}, "--K -1 must not be negative"),
    "output dir is a file": (["--testbed", "demo", "--batch_size", "4", "--num_seed", "2", "--output-dir", "{dir}/afile"], {},
                             {"afile": b"x"}, "{dir}/afile can't hold the run: File exists"),
    "output dir under a file": (["--testbed", "demo", "--batch_size", "4", "--num_seed", "2", "--output-dir", "{dir}/afile/run"], {},
                                {"afile": b"x"}, "{dir}/afile/run can't hold the run: Not a directory"),
    "cache dir is a file": (["--testbed", "demo", "--batch_size", "4", "--num_seed", "2", "--cache-dir", "{dir}/afile"], {},
                            {"afile": b"x"}, "the response cache {dir}/afile/responses.sqlite can't be used"),
    "corrupt response cache": (["--testbed", "demo", "--batch_size", "4", "--num_seed", "2", "--cache-dir", "{dir}"], {},
                               {"responses.sqlite": b"this is not a database" * 100}, "move it aside (a new cache starts empty)"),
    "only a comma for the vLLM URL": (DEMO, {"VLLM_BASE_URL": ","}, {}, "VLLM_BASE_URL=',' (in "),
    "vLLM URL without a scheme": (DEMO, {"VLLM_BASE_URL": "127.0.0.1:8000"}, {}, "does not start with http:// or https://. Write it as http://HOST:PORT"),
    "vLLM URL with a bad port": (DEMO, {"VLLM_BASE_URL": "http://127.0.0.1:80a"}, {}, "VLLM_BASE_URL='http://127.0.0.1:80a'"),
    "hosted URL with a bad port": (DEMO, {"LLAMA_API_BASE": "localhost:abc"}, {}, "LLAMA_API_BASE='localhost:abc'"),
    "hosted URL with no host": (DEMO, {"LLAMA_API_BASE": "http://"}, {}, "LLAMA_API_BASE='http://' (in "),
    "password in a bad URL is not shown": (DEMO, {"VLLM_BASE_URL": "http://me:hunter2@127.0.0.1:port"}, {},
                                           "VLLM_BASE_URL='http://127.0.0.1:port'"),
    "secrets file not UTF-8": ([*DEMO, "--secrets", "{dir}/SECRETS"], {}, {"SECRETS": "VLLM_BASE_URL=http://caf\xe9".encode("latin-1")},
                               "{dir}/SECRETS is not UTF-8 text"),
    "empty gguf": (["--testbed", "demo", "--batch_size", "4", "--num_seed", "2", "--model", "{dir}/m.gguf"], {}, {"m.gguf": b""}, "is empty, so it is not a GGUF model file"),
    "gguf of junk": (["--testbed", "demo", "--batch_size", "4", "--num_seed", "2", "--model", "{dir}/m.gguf"], {}, {"m.gguf": b"<html>404</html>"},
                     "does not start with the GGUF header"),
    "API key with a newline": ([*DEMO, "--model", "m"], {"LLAMA_API_BASE": "http://127.0.0.1:9", "API_KEY": "sk-live-123\nsk"}, {},
                               "API_KEY (in "),
    "vLLM key with a newline": (DEMO, {"VLLM_BASE_URL": "http://127.0.0.1:9", "VLLM_API_KEY": "tok\r\n"}, {}, "VLLM_API_KEY (in "),
    "timeout not a number": (DEMO, {"VLLM_TIMEOUT_SECONDS": "nan"}, {}, "VLLM_TIMEOUT_SECONDS='nan' (in "),
    "top-k of zero": (DEMO, {"API_TOP_K": "0"}, {}, "API_TOP_K='0' (in "),
    "negative retry count": (DEMO, {"VLLM_MAX_RETRIES": "-1"}, {}, "must be 0 or more"),
    "seeds more than the pool holds": (["--testbed", "custom", "--data", "{dir}/threes.json", "--batch_size", "4", "--num_seed", "4"], {},
                                       {"threes.json": json.dumps([{"question": "q", "choice": f"c{i}", "consistency_id": i // 3} for i in range(6)]).encode()},
                                       "--num_seed 4 is larger than the pool"),
}


@pytest.mark.parametrize("case", sorted(MORE_CASES))
def test_more_bad_input(case, tmp_path, capsys, monkeypatch):
    flags, env_extra, files, message = MORE_CASES[case]
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    for name, value in env_extra.items():
        monkeypatch.setenv(name, value)
    flags = [f.format(dir=tmp_path) for f in flags]
    out = [] if "--resume" in flags else ["--output-dir", str(tmp_path / "out")]
    if "--output-dir" in flags:
        out = []
    result = run_icm(capsys, *flags, *out)
    assert_refused(result, message.format(dir=tmp_path), tmp_path / "out")
    for secret in ("hunter2", "sk-live-123", "tok"):
        assert secret not in result[1] or secret in message


@pytest.mark.model
def test_unknown_model_on_the_server(local_server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VLLM_BASE_URL", local_server)
    code, stderr = run_icm(capsys, "--testbed", "demo", "--batch_size", "4", "--num_seed", "2", "--model", "meta-llama/Llama-3.1-8B", "--output-dir", str(tmp_path / "o"))
    assert code == 2
    assert "--model 'meta-llama/Llama-3.1-8B' is not served at" in stderr and "Traceback" not in stderr


def small_run(out: Path, K: int) -> None:
    """A finished demo run, by ICM.py in this process on the stand-in route: what resume checks is the run's files
    and flags, which are the same whatever model scored them."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_stand_in(monkeypatch, out.parent)
        code = ICM.main(["--testbed", "demo", "--batch_size", "4", "--num_seed", "2", "--K", str(K), "--no-progress",
                         "--output-dir", str(out)])
    assert code == 0


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    small_run(out, K=2)
    return out


def edit_json(name: str, change):
    def apply(out: Path) -> None:
        path = out / name
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return apply


def write_file(name: str, text: str):
    return lambda out: (out / name).write_text(text)


def checkpoint_of_another_run(out: Path) -> None:
    other = out.parent / "other"
    small_run(other, K=1)
    shutil.copy(other / "checkpoint.json", out / "checkpoint.json")


def replace_log_line(number: int, text: str):
    def apply(out: Path) -> None:
        lines = (out / "log.jsonl").read_text().splitlines()
        lines[number] = text
        (out / "log.jsonl").write_text("".join(line + "\n" for line in lines if line))
    return apply


# What is done to a finished run before --resume, the extra flags, and what the error must say.
RESUME_CASES = {
    "checkpoint of only a format": (write_file("checkpoint.json", '{"format": 1}'), [], "does not belong to the run"),
    "checkpoint an empty list": (write_file("checkpoint.json", "[]"), [], "checkpoint.json is damaged (it holds [], not an object)"),
    "checkpoint not JSON": (write_file("checkpoint.json", '{"format": 2, "iter'), [], "checkpoint.json is damaged (not JSON)"),
    "checkpoint of a future format": (edit_json("checkpoint.json", lambda c: {**c, "format": 99}), [], "has format 99, which this version"),
    "bad random state": (edit_json("checkpoint.json", lambda c: {**c, "rng": [3, [1, 2], None]}), [], "the random generator's state can't be restored"),
    "label of 7": (edit_json("checkpoint.json", lambda c: {**c, "labels": {**c["labels"], "0": 7}}), [], "label of claim 0: 7"),
    "iteration as text": (edit_json("checkpoint.json", lambda c: {**c, "iteration": "5"}), [], "iteration '5' is not a whole number"),
    "more flips than iterations": (edit_json("checkpoint.json", lambda c: {**c, "flip_cnt": 9}), [], "flip_cnt 9 is not a whole number up to the iteration"),
    "metric missing": (edit_json("checkpoint.json", lambda c: {**c, "metric": {}}), [], "the metric lacks one of"),
    "checkpoint of another run": (checkpoint_of_another_run, [], "belongs to another run"),
    "run.json of null": (write_file("run.json", "null"), [], "run.json is damaged (it holds null, not an object)"),
    "run.json without settings": (edit_json("run.json", lambda r: {k: v for k, v in r.items() if k != "settings"}), [], "no settings or pool fingerprint"),
    "garbage in the middle of the log": (replace_log_line(0, "garbage"), [], "log.jsonl line 1 is damaged and 1 line(s) follow it"),
    "a log line missing": (replace_log_line(0, ""), [], "line 1 is iteration 1 where iteration 0 belongs"),
    "log cut short": (replace_log_line(1, ""), [], "holds 1 of the 2 iterations the checkpoint has done"),
    "K below the iterations done": (lambda out: None, ["--K", "1"], "--K 1 is below the 2 iterations this run has done"),
    "another output dir": (lambda out: None, ["--output-dir", "{dir}/elsewhere"], "would be ignored: drop --output-dir"),
    "--overwrite with --resume": (lambda out: None, ["--overwrite"], "continues the run, and --overwrite would replace it"),
    "changed settings": (lambda out: None, ["--alpha", "3"], "the run was started with --alpha 30.0, not 3.0"),
}


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_damaged_or_mismatched_runs_are_refused_on_resume_and_kept_as_they_were(case, finished_run, tmp_path, capsys,
                                                                                monkeypatch):
    damage, flags, message = RESUME_CASES[case]
    use_stand_in(monkeypatch, tmp_path)  # should a resume get as far as scoring, it scores as the run did
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    damage(out)
    capsys.readouterr()  # what a damage that runs ICM.py printed is not the resume's
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = run_icm(capsys, "--resume", str(out), *[f.format(dir=tmp_path) for f in flags])
    assert_refused(result, message)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing lost, nothing cut


def test_there_are_at_least_sixty_bad_input_cases():
    # + the parser, overwrite and unknown-model tests
    assert len(CASES) + len(BAD_FILES) + len(MORE_CASES) + len(RESUME_CASES) + 3 >= 60
