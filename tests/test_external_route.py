"""The hosted-API route: rate limits, 429/5xx/timeouts, the rollback flag and the API key, over real HTTP.

The answers come from llama.cpp's server (scripts/serve_local.py); the forwarding test server in front of it
enforces the limits and injects the faults.
"""
import json
import subprocess
import time
from pathlib import Path

import pytest

from core.llm_api.base_llm import ScoringError
from core.llm_api.llm import ModelAPI, RouteUnavailable, choose_route
from core.llm_api.rate_limits import RateLimiter, parse_reset
from core.llm_api.settings import Settings
from src.config.run_config import PromptConfig, RouteConfig
from src.pipeline.pipeline import ScoringOptions, ScoringPipeline
from tests.cli_helpers import ICM_SCRIPT, run_script

MODEL = "SmolLM2-135M-Instruct.Q4_1"
KEY = "sk-test-4f9c2e7d1b"


def hosted(url: str, **settings) -> ModelAPI:
    base = dict(llama_api_base=url, api_key=KEY, api_backoff_seconds=0.05)
    base.update(settings)
    return ModelAPI(MODEL, settings=Settings(**base))


def numbered_prompts(n: int) -> list[str]:
    return [f"Item {i}: the number after {i} is" for i in range(n)]


def test_a_200_prompt_batch_stays_within_the_request_limit(forwarding):
    server = forwarding(requests_per_second=20)
    prompts = numbered_prompts(200)
    with hosted(server.url, api_requests_per_minute=1200) as api:
        answers = api.next_token_logprobs(prompts)
        described = api.describe()
    assert len(answers) == 200 and all(answers)
    accepted_prompts = [s.body["prompt"] for s in server.accepted]
    assert sorted(accepted_prompts) == sorted(prompts)  # none lost, none scored twice
    elapsed = server.accepted_at[-1] - server.accepted_at[0]
    assert 199 / elapsed <= 20.0
    busiest_second = max(sum(1 for t in server.accepted_at if 0 <= t - start < 1.0) for start in server.accepted_at)
    assert busiest_second <= 20
    assert server.refused_429 <= 10  # the client paces itself; 429s are the exception
    assert described["requests_per_minute"] == 1200 and described["route"] == "external"


def test_above_the_limit_429s_are_waited_out_and_every_prompt_is_answered_once(forwarding):
    server = forwarding(requests_per_second=10)
    prompts = numbered_prompts(40)
    with hosted(server.url, api_requests_per_minute=60_000, api_concurrency=32) as api:
        answers = api.next_token_logprobs(prompts)
        rate_limited = api.describe()["rate_limited"]
    assert server.refused_429 > 0 and rate_limited == server.refused_429
    assert sorted(s.body["prompt"] for s in server.accepted) == sorted(prompts)
    assert len(answers) == 40
    # Retry-After: 1 paused everyone, so no second saw more than the limit go through.
    assert max(sum(1 for t in server.accepted_at if 0 <= t - s < 1.0) for s in server.accepted_at) <= 10
    plain = forwarding()
    with hosted(plain.url) as api:
        assert api.next_token_logprobs(prompts[:5]) == answers[:5]


def test_5xx_and_timeouts_recover_within_the_retry_bound(forwarding):
    flaky = forwarding(fail_first=2)
    with hosted(flaky.url, api_max_retries=3) as api:
        assert len(api.next_token_logprobs(["1, 2, 3,"])) == 1
        assert api.describe()["retries"] == 2
    slow = forwarding(stall_first=1, stall_seconds=8)
    with hosted(slow.url, api_max_retries=3, api_timeout_seconds=3) as api:
        assert len(api.next_token_logprobs(["1, 2, 3,"])) == 1
        assert api.describe()["retries"] == 1


def test_past_the_retry_bound_the_error_names_the_endpoint_and_last_status(forwarding):
    down = forwarding(fail_first=100)
    with hosted(down.url, api_max_retries=2) as api:
        with pytest.raises(ScoringError) as failure:
            api.next_token_logprobs(["1, 2, 3,"])
    assert f"{down.url}/v1/completions failed 3 times in a row; last: HTTP 503" in str(failure.value)
    assert "API_MAX_RETRIES" in str(failure.value)
    assert len(down.completions()) == 3
    stalled = forwarding(stall_first=100, stall_seconds=3)
    with hosted(stalled.url, api_max_retries=1, api_timeout_seconds=0.5) as api:
        with pytest.raises(ScoringError, match="failed 2 times in a row; last: connection lost or timed out .TimeoutError"):
            api.next_token_logprobs(["1, 2, 3,"])


@pytest.mark.parametrize("fault", ["truncate_first", "nonjson_first"])
def test_a_200_whose_body_is_cut_short_or_not_json_is_asked_again(forwarding, fault):
    plain = forwarding()
    with hosted(plain.url) as api:
        expected = api.next_token_logprobs(["1, 2, 3,"])
    garbled = forwarding(**{fault: 2})
    with hosted(garbled.url, api_max_retries=3) as api:
        assert api.next_token_logprobs(["1, 2, 3,"]) == expected
        assert api.describe()["retries"] == 2
    always = forwarding(**{fault: 100})
    with hosted(always.url, api_max_retries=1) as api:
        with pytest.raises(ScoringError, match="failed 2 times in a row; last: answered 200 with an unusable body"):
            api.next_token_logprobs(["1, 2, 3,"])


def test_a_200_that_answers_one_prompt_with_no_choice_stops_at_once(forwarding):
    # A wrong choice count is a fixed property of the server, not a glitch: asking again can't cure it.
    garbled = forwarding(drop_choice_first=100)
    with hosted(garbled.url, api_max_retries=3) as api:
        with pytest.raises(ScoringError, match="unusable answer .sent 1 prompts but got 0 choices back"):
            api.next_token_logprobs(["1, 2, 3,"])
        assert api.describe()["retries"] == 0
    assert len(garbled.completions()) == 1


def test_retries_are_bounded_in_time_with_a_note_while_waiting(forwarding, capsys):
    down = forwarding(fail_first=10**6)
    started = time.monotonic()
    with hosted(down.url, api_max_retries=None, api_retry_seconds=2.0, api_backoff_seconds=0.1, api_backoff_max_seconds=0.5) as api:
        with pytest.raises(ScoringError) as failure:
            api.next_token_logprobs(["1, 2, 3,"])
    assert 2.0 <= time.monotonic() - started < 10.0
    assert "times over 2 s" in str(failure.value) and "API_RETRY_SECONDS" in str(failure.value)
    assert len(down.completions()) >= 5  # capped backoff: many tries in the budget
    assert "is not answering (HTTP 503); retrying for up to" in capsys.readouterr().err


def test_provider_headers_lower_the_limits_and_pause_an_empty_quota():
    limiter = RateLimiter(requests_per_minute=600, tokens_per_minute=None, max_pause_seconds=300.0)
    limiter.update_from_headers({"x-ratelimit-limit-requests": "300", "x-ratelimit-limit-tokens": "40000"})
    assert limiter.requests_per_minute == 300 and limiter.tokens_per_minute == 40000
    limiter.update_from_headers({"x-ratelimit-limit-requests": "900"})
    assert limiter.requests_per_minute == 300  # never raised above what we were told
    assert [parse_reset(v) for v in ("1s", "6m0s", "20ms", "2.5", "soon")] == [1.0, 360.0, 0.02, 2.5, None]


def test_headers_from_a_real_answer_reach_the_limiter(forwarding):
    server = forwarding(extra_headers={"x-ratelimit-limit-requests": "120"})
    with hosted(server.url, api_requests_per_minute=6000) as api:
        api.next_token_logprobs(["1, 2, 3,"])
        assert api.describe()["requests_per_minute"] == 120


def options(route: RouteConfig) -> ScoringOptions:
    return ScoringOptions(route, PromptConfig(), show_progress=False, cache_dir=None)


def test_only_the_external_route_is_throttled(local_server):
    both = Settings(llama_api_base=local_server, vllm_base_url=local_server)
    with ScoringPipeline(options(RouteConfig(model=MODEL, use_vllm=False, requests_per_minute=120)), both) as p:
        described = p.model_api.describe()
        assert described["route"] == "external" and described["requests_per_minute"] == 120  # the flag's limit
    with ScoringPipeline(options(RouteConfig(requests_per_minute=120)), both) as p:
        described = p.model_api.describe()
        assert described["route"] == "vllm" and "requests_per_minute" not in described
    assert choose_route(Settings()) == "embedded"
    assert choose_route(Settings(llama_api_base="http://x")) == "external"
    with pytest.raises(RouteUnavailable, match="LLAMA_API_BASE is not set"):
        choose_route(Settings(vllm_base_url="http://x"), use_vllm=False)
    with pytest.raises(RouteUnavailable, match="--use-vllm needs VLLM_BASE_URL"):
        choose_route(Settings(llama_api_base="http://x"), use_vllm=True)


def run_icm(tmp_path: Path, env_extra: dict, *flags: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "run"
    result = run_script(ICM_SCRIPT, "--testbed", "demo", "--batch_size", "4", "--num_seed", "2", "--K", "2",
                        "--output-dir", out, "--no-progress", *flags, env=env_extra)
    return result, out


def test_no_vllm_rolls_back_to_the_hosted_api_and_never_shows_the_key(forwarding, tmp_path):
    vllm, hosted_api = forwarding(), forwarding()
    env = {"VLLM_BASE_URL": vllm.url, "LLAMA_API_BASE": hosted_api.url, "API_KEY": KEY}
    result, out = run_icm(tmp_path, env, "--no-vllm", "--model", MODEL)
    assert result.returncode == 0, result.stderr
    assert vllm.seen == []  # not even a model listing
    assert len(hosted_api.completions()) >= 1 and all(s.n_prompts == 1 for s in hosted_api.completions())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["route"] == "external" and summary["endpoint"] == hosted_api.url
    assert KEY not in result.stdout + result.stderr
    assert all(KEY.encode() not in p.read_bytes() for p in out.iterdir())  # the response cache included

    default, out_default = run_icm(tmp_path / "default", env)
    assert default.returncode == 0, default.stderr
    assert json.loads((out_default / "summary.json").read_text())["route"] == "vllm"
    assert len(hosted_api.completions()) == len(hosted_api.accepted)  # the second run sent it nothing new
    assert len(vllm.completions()) >= 1


def test_a_server_echoing_the_key_in_an_error_never_gets_it_into_our_output(forwarding, tmp_path):
    echo = forwarding(echo_key_with_401=True)
    with hosted(echo.url) as api:
        with pytest.raises(ScoringError) as refused:
            api.next_token_logprobs(["1, 2,"])
    assert "401" in str(refused.value) and "API_KEY" in str(refused.value) and KEY not in str(refused.value)
    result, out = run_icm(tmp_path, {"LLAMA_API_BASE": echo.url, "API_KEY": KEY}, "--model", MODEL)
    assert result.returncode == 2 and "API_KEY" in result.stderr
    assert KEY not in result.stdout + result.stderr
    assert not out.exists() or all(KEY.encode() not in p.read_bytes() for p in out.iterdir())
