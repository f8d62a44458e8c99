"""Faults from the scoring server, injected in front of llama.cpp's real server: each is retried with bounded
backoff where asking again can help, or stops the run at once with the cause and the fix where it can't."""
import json
import signal
import subprocess
import time

import pytest

from core.llm_api.base_llm import ScoringError
from core.llm_api.llm import ModelAPI
from core.llm_api.settings import Settings
from tests.cli_helpers import ICM_SCRIPT, start_script
from tests.conftest import free_port, start_local_server

PROMPTS = ["Item 1: the number after 1 is", "Item 2: the number after 2 is", "Item 3: the number after 3 is"]

TRANSIENT = {  # switch -> what the final error says once the retries are spent
    "fail_first": "answered 503",
    "reset_first": "connection lost",
    "stall_first": "did not answer within",
    "truncate_first": "not JSON (cut short?)",
    "nonjson_first": "not JSON",
}


def client(url: str, fault: str = "", **settings) -> ModelAPI:
    # A short timeout only where a stall is the fault: elsewhere a busy machine must not add retries. Even there it
    # leaves a loaded 2-core machine 5 s for a real answer, and the stall (10 s) outlasts it.
    base = dict(vllm_base_url=url, vllm_backoff_seconds=0.05, vllm_timeout_seconds=5.0 if fault == "stall_first" else 60.0)
    base.update(settings)
    return ModelAPI(settings=Settings(**base), deterministic=True)


def switches(fault: str, count: int) -> dict:
    return {fault: count, **({"stall_seconds": 10.0} if fault == "stall_first" else {})}


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
    ((400, "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens"), "a prompt is longer than the model's context"),
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


def icm_over_http(url: str, out, env_extra=None, K: int = 6) -> subprocess.Popen:
    """A demo run over HTTP as its own process. K=6: a run caught at its first log line has 5 iterations left."""
    env = {"VLLM_BASE_URL": url, "VLLM_BACKOFF_SECONDS": "0.5", "VLLM_MAX_RETRIES": "8", **(env_extra or {})}
    return start_script(ICM_SCRIPT, "--testbed", "demo", "--batch_size", "8", "--num_seed", "2", "--K", K,
                        "--deterministic", "--output-dir", out, "--no-progress", env=env)


@pytest.mark.model
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


@pytest.mark.model
def test_a_run_started_while_the_server_is_down_waits_for_it(tmp_path):
    port = str(free_port())
    run = icm_over_http(f"http://127.0.0.1:{port}", tmp_path / "waited",
                        {"VLLM_MAX_RETRIES": "", "VLLM_RETRY_SECONDS": "300", "VLLM_BACKOFF_MAX_SECONDS": "1"}, K=2)
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
    return start_local_server(port=port)


CONTEXT_REFUSALS = {  # how servers and the proxies in front of them say "the prompt is too long"
    "vLLM front end, 400": (400, '{"error": {"message": "This model\'s maximum context length is 8192 tokens. However, you requested 9000 tokens"}}'),
    "vLLM engine, 400": (400, '{"error": {"message": "The decoder prompt (length 9000) is longer than the maximum model length of 8192. Make sure that `max_model_len` is no smaller than the number of text tokens."}}'),
    "engine wording under a 500": (500, '{"error": {"message": "The decoder prompt (length 9000) is longer than the maximum model length of 8192."}}'),
    "FastAPI detail, 422": (422, '{"detail": "prompt is too long: 9000 tokens > 8192 maximum"}'),
    "a list of details": (400, '{"detail": [{"loc": ["body", "prompt"], "msg": "Input exceeds the available context size (9000 > 8192)"}]}'),
    "a string error, 413": (413, '{"error": "context_length_exceeded"}'),
    "plain text, 502 from a proxy": (502, "upstream said: This model's maximum context length is 8192 tokens"),
    "llama.cpp, 400": (400, '{"error": {"code": 400, "message": "the request exceeds the available context size, try increasing it", "type": "exceed_context_size_error"}}'),
}


@pytest.mark.parametrize("name", sorted(CONTEXT_REFUSALS))
def test_context_length_refusals_stop_at_once_whatever_the_shape(forwarding, name):
    from core.llm_api.faults import PromptTooLong

    faulty = forwarding(error_body=CONTEXT_REFUSALS[name])
    with client(faulty.url) as api:
        with pytest.raises(PromptTooLong) as refused:
            api.next_token_logprobs(PROMPTS)
        assert api.describe()["retries"] == 0
    assert "longer than the model's context" in str(refused.value) and "--max-model-len" in refused.value.server_fix
    assert len(faulty.completions()) == 1  # never taken for "lists refused", never retried
    assert "one per request" not in str(refused.value)


def test_the_context_advice_fits_the_run(forwarding, tmp_path, monkeypatch, capsys):
    from src.experiments import ICM

    faulty = forwarding(error_body=CONTEXT_REFUSALS["vLLM engine, 400"])
    monkeypatch.setenv("VLLM_BASE_URL", faulty.url)
    monkeypatch.setenv("ICM_SECRETS_FILE", str(tmp_path / "none"))
    assert ICM.main(["--testbed", "demo", "--batch_size", "8", "--num_seed", "2", "--K", "2", "--no-progress",
                     "--output-dir", str(tmp_path / "pool")]) == 2
    assert "Lower --batch_size (now 8)" in capsys.readouterr().err
    assert ICM.main(["--testbed", "demo", "--num-batches", "2", "--batch-index", "0", "--num_seed", "2", "--K", "2",
                     "--no-progress", "--output-dir", str(tmp_path / "shard")]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "more shards (--num-batches, now 2)" in last and "--batch_size" not in last


@pytest.mark.parametrize("server", ["aiohttp", "llama.cpp"])
def test_https_to_a_plain_http_port_stops_at_once(forwarding, local_server, server):
    # aiohttp answers a TLS hello with a plain 400 (the handshake fails at once); llama.cpp's server keeps the
    # connection open without a word (the handshake hangs until the connect timeout). Both say "plain HTTP".
    url = forwarding().url if server == "aiohttp" else local_server
    started = time.monotonic()
    with pytest.raises(ScoringError, match=r"cannot talk TLS to https://127\.0\.0\.1:\d+.*(write|Write) http://"):
        ModelAPI(settings=Settings(vllm_base_url=url.replace("http://", "https://")), deterministic=True)
    assert time.monotonic() - started < 60  # not the 600 s retry budget for a server that is down


def test_a_poisoned_prompt_is_found_and_named(forwarding, tmp_path, monkeypatch, capsys):
    # A server that answers 500 to any request holding one prompt (its logprobs can't be written as JSON): the
    # prompt is found by sending each alone, and the run stops naming its claim, instead of retrying for 600 s.
    import random

    from src.experiments import ICM
    from src.data.testbeds import TESTBED_SPECS, demo_records, normalise_records, sample_pool

    claims = normalise_records(demo_records(), TESTBED_SPECS["demo"], "demo", True)
    pool = sample_pool(claims, TESTBED_SPECS["demo"], 8, random.Random(1), "demo")
    faulty = forwarding(poison=f"Claim: {pool[5]['choice']}\n")
    monkeypatch.setenv("VLLM_BASE_URL", faulty.url)
    monkeypatch.setenv("ICM_SECRETS_FILE", str(tmp_path / "none"))
    started = time.monotonic()
    assert ICM.main(["--testbed", "demo", "--batch_size", "8", "--num_seed", "8", "--K", "1", "--seed", "1",
                     "--no-progress", "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "fails on 1 prompt(s) of 8 every time" in err[-1]
    assert "NaN or infinity" in err[-1] and "(record " in err[-1]
    assert time.monotonic() - started < 120
    lists = [s for s in faulty.completions() if s.n_prompts > 1]
    assert len(lists) == 3  # the list twice, then once more after the probe answered: never for the whole budget


def test_a_request_that_fails_for_good_takes_its_siblings_down_quietly(forwarding, capsys):
    # Three requests in flight: two meet 503s and wait to retry, one is refused for good. The refusal ends the
    # pool score; the other two must be cancelled, not left to wake up to a closed session and report it after
    # the run has said its last word.
    faulty = forwarding(fail_first=10_000, refuse="Item 2")
    api = client(faulty.url, vllm_max_prompts_per_request=1, vllm_backoff_seconds=0.5)
    with pytest.raises(ScoringError, match="answered 404"):
        api.next_token_logprobs(PROMPTS)
    capsys.readouterr()
    before_close = [s.body["prompt"] for s in faulty.completions()]
    api.close()
    time.sleep(1.0)
    assert capsys.readouterr().err == ""
    # A first attempt already on the wire may be recorded late on a loaded machine (CI saw that once); what must
    # not happen is a retry: a prompt sent again after the score ended, which the 0.5 s back-off would show here.
    after_close = [s.body["prompt"] for s in faulty.completions()][len(before_close):]
    assert not set(after_close) & set(before_close), after_close
    assert len(after_close) == len(set(after_close)), after_close


def test_optional_probes_that_stall_or_answer_garbage_never_stop_a_run(forwarding, tmp_path, monkeypatch, capsys):
    # /metrics (token counts) and /version are statistics: a stall or garbage gives "unknown" and a note, never an
    # error, and never a missing summary.json.
    from core.llm_api import server_probe
    from src.experiments import ICM

    monkeypatch.setattr(server_probe, "METRICS_TIMEOUT_SECONDS", 0.5)
    server = forwarding(metrics_stall=3.0, version_body="<html>not json</html>")
    monkeypatch.setenv("VLLM_BASE_URL", server.url)
    monkeypatch.setenv("ICM_SECRETS_FILE", str(tmp_path / "none"))
    out = tmp_path / "run"
    assert ICM.main(["--testbed", "demo", "--batch_size", "4", "--num_seed", "2", "--K", "2", "--no-progress",
                     "--output-dir", str(out)]) == 0
    err = capsys.readouterr().err
    assert "server version unknown" in err and "engine token counts are unknown" in err and "error" not in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["server_version"] is None and summary["stopped_early"] is None


def test_one_unreachable_endpoint_among_several_does_not_stop_the_start(forwarding, capsys):
    server = forwarding()
    down = f"http://127.0.0.1:{free_port()}"
    with ModelAPI(settings=Settings(vllm_base_url=f"{down},{server.url}", vllm_backoff_seconds=0.05), deterministic=True) as api:
        assert len(api.next_token_logprobs(PROMPTS)) == 3
        assert api.describe()["requests_per_endpoint"][server.url] >= 1
    assert f"{down} is down" in capsys.readouterr().err


@pytest.mark.model
def test_a_claim_longer_than_the_context_alone_is_refused_by_record(tmp_path, monkeypatch, capsys):
    # No pool size can fit it, so "lower --batch_size" would be advice that can't work: name the record instead.
    from src.experiments import ICM

    records = [{"question": f"What is {i} + 1?", "choice": f"It is {i + 1}.", "consistency_id": i} for i in range(4)]
    records[2]["choice"] = "It is a long story. " * 400  # about 2,400 tokens, over a 1,024-token context
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    monkeypatch.setenv("EMBEDDED_CTX_PER_SLOT", "1024")
    assert ICM.main(["--testbed", "custom", "--data", str(data), "--batch_size", "4", "--num_seed", "2", "--K", "1",
                     "--no-progress", "--output-dir", str(tmp_path / "run")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: {data}, record 2: its claim alone is") and "1,024-token context" in last
    assert "--batch_size" not in last
