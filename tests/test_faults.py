"""Faults from the scoring server, injected in front of llama.cpp's real server: each is retried with bounded
backoff where asking again can help, or stops the run at once with the cause and the fix where it can't."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from core.llm_api.base_llm import ScoringError
from core.llm_api.llm import ModelAPI
from core.llm_api.settings import Settings
from tests.conftest import REPO_ROOT, free_port, start_local_server

PROMPTS = ["Item 1: the number after 1 is", "Item 2: the number after 2 is", "Item 3: the number after 3 is"]

TRANSIENT = {  # switch -> what the final error says once the retries are spent
    "fail_first": "answered 503",
    "reset_first": "connection lost",
    "stall_first": "did not answer within",
    "truncate_first": "not JSON (cut short?)",
    "nonjson_first": "not JSON",
    "drop_choice_first": "sent 3 prompts but got 2 choices back",
}


def client(url: str, fault: str = "", **settings) -> ModelAPI:
    # A short timeout only where a stall is the fault: elsewhere a busy machine must not add retries.
    base = dict(vllm_base_url=url, vllm_backoff_seconds=0.05, vllm_timeout_seconds=3.0 if fault == "stall_first" else 60.0)
    base.update(settings)
    return ModelAPI(settings=Settings(**base), deterministic=True)


def switches(fault: str, count: int) -> dict:
    return {fault: count, **({"stall_seconds": 8.0} if fault == "stall_first" else {})}


@pytest.mark.parametrize("fault", sorted(TRANSIENT))
def test_transient_faults_are_retried_and_the_answers_are_right(forwarding, fault):
    plain = forwarding()
    with client(plain.url) as api:
        expected = api.next_token_logprobs(PROMPTS)
    faulty = forwarding(**switches(fault, 2))
    with client(faulty.url, fault, vllm_max_retries=3) as api:
        assert api.next_token_logprobs(PROMPTS) == expected
        assert api.describe()["retries"] == 2
    assert len(faulty.completions()) == 3


@pytest.mark.parametrize("fault", sorted(TRANSIENT))
def test_past_the_retry_bound_the_error_names_the_cause(forwarding, fault):
    faulty = forwarding(**switches(fault, 100))
    with client(faulty.url, fault, vllm_max_retries=2) as api:
        with pytest.raises(ScoringError) as failure:
            api.next_token_logprobs(PROMPTS)
    message = str(failure.value)
    assert f"{faulty.url}/v1/completions failed 3 times in a row; last:" in message
    assert TRANSIENT[fault] in message and "VLLM_MAX_RETRIES" in message
    assert len(faulty.completions()) == 3


@pytest.mark.parametrize("answer, advice", [
    ((400, "Requested sample logprobs of 20, which is greater than max allowed: 5"), "Restart vLLM with --max-logprobs 20"),
    ((400, "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens"), "Lower --batch_size, or restart the server with a larger --max-model-len"),
    ((404, "The model `llama` does not exist."), "answered 404: "),
])
def test_faults_that_asking_again_cannot_cure_stop_at_once(forwarding, answer, advice):
    faulty = forwarding(error_answer=answer)
    with client(faulty.url, vllm_max_retries=5) as api:
        with pytest.raises(ScoringError, match=advice.replace("(", r"\(").replace(")", r"\)")):
            api.next_token_logprobs(PROMPTS)
        assert api.describe()["retries"] == 0
    assert len(faulty.completions()) == 1


def test_missing_logprobs_stop_at_once(forwarding):
    faulty = forwarding(drop_logprobs=True)
    with client(faulty.url, vllm_max_retries=5) as api:
        with pytest.raises(ScoringError, match="has no logprobs; the server must be asked for logprobs and allow them"):
            api.next_token_logprobs(PROMPTS)
    assert len(faulty.completions()) == 1


def test_a_server_gone_mid_run_is_retried_then_named(forwarding):
    server = forwarding()
    with client(server.url, vllm_max_retries=2) as api:
        server.stop()
        with pytest.raises(ScoringError, match=r"failed 3 times in a row; last: cannot connect to .* is the server running"):
            api.next_token_logprobs(PROMPTS)
    server.start = lambda: None  # already stopped; the fixture's stop() must not fail
    server.stop = lambda: None


def test_retries_are_bounded_in_time_with_a_note_while_waiting(forwarding, capsys):
    faulty = forwarding(fail_first=10_000)
    started = time.monotonic()
    with client(faulty.url, vllm_retry_seconds=2.0, vllm_backoff_seconds=0.1, vllm_backoff_max_seconds=0.5) as api:
        with pytest.raises(ScoringError) as failure:
            api.next_token_logprobs(PROMPTS)
    elapsed = time.monotonic() - started
    assert 2.0 <= elapsed < 10.0
    assert "times over 2 s" in str(failure.value) and "VLLM_RETRY_SECONDS" in str(failure.value)
    # capped backoff: many tries in the budget, not a few ever-longer sleeps
    assert len(faulty.completions()) >= 5
    assert "is not answering (" in capsys.readouterr().err


def test_a_dead_engine_behind_an_open_connection_is_noticed_by_health_polling(forwarding):
    # The first completion never answers (as vLLM's HTTP side does once its engine died on SIGTERM), and
    # /health says the engine is gone: the client must give that request up in seconds and ask again.
    faulty = forwarding(stall_first=1, stall_seconds=8.0, unhealthy_while_stalling=2)
    with client(faulty.url, vllm_timeout_seconds=600.0, vllm_health_poll_seconds=0.5, vllm_max_retries=3) as api:
        answers = api.next_token_logprobs(PROMPTS)
        assert api.describe()["retries"] == 1
    hung, retried = faulty.completions()
    assert retried.at - hung.at < 5.0  # given up well before the stalled answer could have come
    assert len(answers) == len(PROMPTS)


def icm_over_http(url: str, out, env_extra=None) -> subprocess.Popen:
    env = {**os.environ, "VLLM_BASE_URL": url, "VLLM_BACKOFF_SECONDS": "0.5", "VLLM_MAX_RETRIES": "8", **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, "src/experiments/ICM.py", "--testbed", "demo", "--batch_size", "8", "--num_seed", "2",
         "--K", "12", "--deterministic", "--output-dir", str(out), "--no-progress"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_a_server_restarted_mid_run_loses_nothing(tmp_path):
    first_server, url = start_local_server()
    try:
        baseline = icm_over_http(url, tmp_path / "baseline")
        assert baseline.wait(600) == 0, baseline.stderr.read()
        run = icm_over_http(url, tmp_path / "restarted")
        log = tmp_path / "restarted" / "log.jsonl"
        deadline = time.time() + 300
        while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 1):
            assert run.poll() is None, run.stderr.read()
            time.sleep(0.05)
        first_server.send_signal(signal.SIGKILL)  # the server dies mid-run
        first_server.wait(30)
        assert run.poll() is None, "the run ended before the server was killed: the test proves nothing"
        time.sleep(3.0)
        port = url.rsplit(":", 1)[1]
        second_server, second_url = start_local_server_on(port)
        try:
            assert run.wait(600) == 0, run.stderr.read()
        finally:
            second_server.terminate()
            second_server.wait(30)
    finally:
        if first_server.poll() is None:
            first_server.terminate()
    restarted, base = tmp_path / "restarted", tmp_path / "baseline"
    assert (restarted / "labels.jsonl").read_text() == (base / "labels.jsonl").read_text()
    assert (restarted / "log.jsonl").read_text() == (base / "log.jsonl").read_text()
    summary = json.loads((restarted / "summary.json").read_text())
    assert summary["retries"] >= 1 and summary["stopped_early"] is None


def test_a_run_started_while_the_server_is_down_waits_for_it(tmp_path):
    port = str(free_port())
    run = icm_over_http(f"http://127.0.0.1:{port}", tmp_path / "waited",
                        {"VLLM_MAX_RETRIES": "", "VLLM_RETRY_SECONDS": "300", "VLLM_BACKOFF_MAX_SECONDS": "1"})
    time.sleep(3.0)
    assert run.poll() is None, run.stderr.read()
    server, _ = start_local_server_on(port)
    try:
        _, stderr = run.communicate(timeout=600)
    finally:
        server.terminate()
        server.wait(30)
    assert run.returncode == 0, stderr
    assert "is not answering (cannot connect" in stderr and "VLLM_RETRY_SECONDS" in stderr
    assert (tmp_path / "waited" / "labels.jsonl").exists()


def start_local_server_on(port: str):
    from tests.conftest import CTX, SLOTS

    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "scripts" / "serve_local.py"), "--port", port, "--slots", str(SLOTS),
         "--ctx-per-slot", str(CTX)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = process.stdout.readline()
    assert "serving" in line, process.stderr.read()
    return process, line.split(" at ")[1].split()[0]
