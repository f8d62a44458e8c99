"""Bad input: a one-line error naming what to fix, exit code 2, no traceback, and no output written."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

ICM = [sys.executable, str(REPO_ROOT / "src" / "experiments" / "ICM.py")]


def run_icm(*args, cwd=REPO_ROOT, env=None):
    return subprocess.run([*ICM, *args], capture_output=True, text=True, cwd=cwd, timeout=120, env=env)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


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
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_flags(case, tmp_path):
    args, message = CASES[case]
    result = run_icm(*args, "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "log.jsonl").exists()


def test_unknown_testbed_and_scheduler_are_refused_by_the_parser():
    for flags, word in ((["--testbed", "mmlu"], "--testbed"), (["--scheduler", "cosine"], "--scheduler")):
        result = run_icm(*flags)
        assert result.returncode == 2 and word in result.stderr and "Traceback" not in result.stderr


BAD_FILES = {
    "malformed json": ('[{"question": "q", ', "not valid JSON (line 1"),
    "not a list": ('{"question": "q"}', "expected a JSON list"),
    "empty list": ("[]", "the list of records is empty"),
    "missing field": ('[{"question": "q", "consistency_id": 0}]', "record 0: missing field(s) choice"),
    "wrong label type": ('[{"question": "q", "choice": "c", "consistency_id": 0, "label": "yes"}]', "record 0: label 'yes' must be true/false or 1/0"),
    "bad consistency id": ('[{"question": "q", "choice": "c", "consistency_id": [1]}]', "consistency_id [1] must be an integer or a string"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_custom_data(case, tmp_path):
    text, message = BAD_FILES[case]
    data = write(tmp_path / "data.json", text)
    result = run_icm("--testbed", "custom", "--data", str(data), "--batch_size", "2", "--num_seed", "2",
                     "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    assert str(data) in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_finished_run_is_never_overwritten_silently(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    write(out / "labels.jsonl", json.dumps({"uid": 0}) + "\n")
    result = run_icm("--testbed", "demo", "--batch_size", "4", "--num_seed", "2", "--output-dir", str(out))
    assert result.returncode == 2 and "already holds a run" in result.stderr and "--overwrite" in result.stderr
    assert (out / "labels.jsonl").read_text() == json.dumps({"uid": 0}) + "\n"


def closed_port_url() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


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
}


@pytest.mark.parametrize("case", sorted(MORE_CASES))
def test_more_bad_input(case, tmp_path):
    flags, env_extra, files, message = MORE_CASES[case]
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_BASE_URL", "LLAMA_API_BASE", "API_KEY")}
    env.update(env_extra)
    flags = [f.format(dir=tmp_path) for f in flags]
    out = [] if "--resume" in flags else ["--output-dir", str(tmp_path / "out")]
    result = run_icm(*flags, *out, env=env)
    assert result.returncode == 2, result.stderr
    assert message.format(dir=tmp_path) in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_unknown_model_on_the_server(local_server, tmp_path):
    env = {**os.environ, "VLLM_BASE_URL": local_server}
    result = run_icm("--testbed", "demo", "--batch_size", "4", "--num_seed", "2", "--model", "meta-llama/Llama-3.1-8B", "--output-dir", str(tmp_path / "o"), env=env)
    assert result.returncode == 2
    assert "--model 'meta-llama/Llama-3.1-8B' is not served at" in result.stderr and "Traceback" not in result.stderr


def test_there_are_at_least_twenty_bad_input_cases():
    assert len(CASES) + len(BAD_FILES) + len(MORE_CASES) + 4 >= 20  # + parser, overwrite and unknown-model tests
