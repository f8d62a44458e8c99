"""The vLLM route over real HTTP, against llama.cpp's server started by scripts/serve_local.py."""
import io
import json
import os
import subprocess
import sys
import unittest.mock
from contextlib import redirect_stderr, redirect_stdout

import pytest

from core.llm_api.base_llm import ScoringError
from core.llm_api.llm import ModelAPI
from core.llm_api.settings import Settings
from src.pipeline.label_scores import label_logodds
from src.prompts.prompts import leave_one_out_prompts
from src.search.annealing import seed_claims
from src.data.testbeds import TESTBED_SPECS, demo_records, normalise_records
from tests.cli_helpers import ICM_SCRIPT, load_script, run_script
from tests.conftest import CTX, REPO_ROOT, SLOTS, free_port, start_local_server

vllm_health_check = load_script("test_vllm_server")


def http_api(url: str, **kwargs) -> ModelAPI:
    settings_fields = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith("vllm_")}
    return ModelAPI(settings=Settings(vllm_base_url=url, **settings_fields), **kwargs)


@pytest.fixture(scope="module")
def demo_prompts():
    claims = normalise_records(demo_records()[:5], TESTBED_SPECS["demo"], "demo", True)
    import random
    return leave_one_out_prompts(list(seed_claims(claims, 4, random.Random(0)).values())[:4], "space-in-label", "reference")


def health_check(*args: str, secrets=None) -> subprocess.CompletedProcess:
    """scripts/test_vllm_server.py's main in this process: its exit code, stdout and stderr."""
    stdout, stderr = io.StringIO(), io.StringIO()
    settings_file = {"ICM_SECRETS_FILE": str(secrets)} if secrets is not None else {}
    with unittest.mock.patch.dict(os.environ, settings_file), redirect_stdout(stdout), redirect_stderr(stderr):
        code = vllm_health_check.main(list(args))
    return subprocess.CompletedProcess(["test_vllm_server.py", *args], code, stdout.getvalue(), stderr.getvalue())


def test_health_check_passes_every_check_against_the_local_server(local_server):
    result = health_check("--base-url", local_server)
    assert result.returncode == 0, result.stdout
    # Seven checks and the prefix-cache self-test's two lines (llama.cpp's cache drift may make the first a ⚠).
    assert result.stdout.count("✓") + result.stdout.count("⚠") == 9 and "✗" not in result.stdout
    assert "✓ ' True' and ' False' among the top next tokens of a claim prompt" in result.stdout


BROKEN_SERVERS = {  # switches -> what the health check must say (each as real servers have been reported to answer)
    "token ids as keys": ({"token_id_keys": True}, "restart it without --return-tokens-as-token-ids"),
    "sentinels": ({"vllm_shape": True, "sentinel_after_top": True}, "raising --max-logprobs won't help"),
    "a logprob as a string": ({"vllm_shape": True, "bad_logprob": "string"}, "not finite numbers <= 0"),
    "Infinity": ({"bad_logprob": "infinity"}, "not finite numbers <= 0"),
    "no label words": ({"drop_label_words_from": 1}, "' True' and ' False' not among them"),
    "llama.cpp's own format": ({"own_format": True}, "does not answer in the OpenAI format"),
}


@pytest.mark.parametrize("name", sorted(BROKEN_SERVERS))
def test_health_check_diagnoses_servers_whose_answers_hold_no_label_information(forwarding, name):
    switches, diagnosis = BROKEN_SERVERS[name]
    result = health_check("--base-url", forwarding(**switches).url)
    assert result.returncode == 1, result.stdout
    assert diagnosis in result.stdout, result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_health_check_refuses_a_url_without_a_scheme_in_one_line():
    result = health_check("--base-url", "127.0.0.1:8000")
    assert result.returncode == 2 and result.stderr.startswith("error: --base-url") and "http://HOST:PORT" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, words", [
    (("--timeout", "abc"), "argument --timeout: invalid float value: 'abc'"),
    (("--bogus",), "unrecognized arguments: --bogus"),
    ((), "no server to check: pass --base-url or set VLLM_BASE_URL"),
])
def test_health_check_refuses_bad_flags_and_no_url_in_one_line(args, words, tmp_path):
    result = health_check(*args, secrets=tmp_path / "none")
    assert result.returncode == 2 and result.stderr.startswith("error: ") and words in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_health_check_checks_every_server_of_a_list_and_sends_a_urls_credentials(local_server):
    closed = f"http://127.0.0.1:{free_port()}"
    both = health_check("--base-url", f"{local_server},{closed}")
    # The advice names where the URL came from; each server is checked under its own heading.
    assert both.returncode == 1 and both.stdout.count("-- http://127.0.0.1") == 2
    # The live server: its seven checks and the self-test's two lines (a cache drift may make one a ⚠).
    assert both.stdout.count("✓") + both.stdout.count("⚠") == 9
    assert "nothing listens on 127.0.0.1" in both.stdout and "fix the port in --base-url" in both.stdout
    # urllib took user:pw@host for a host name; the credentials now go as a header and never into the output.
    with_credentials = health_check("--base-url", local_server.replace("http://", "http://user:s3cret-9@"))
    assert with_credentials.returncode == 0, with_credentials.stdout
    assert "s3cret-9" not in with_credentials.stdout + with_credentials.stderr


def test_health_check_diagnoses_a_closed_port_and_a_wrong_model(local_server):
    closed = health_check("--base-url", f"http://127.0.0.1:{free_port()}")
    assert closed.returncode == 1 and "nothing listens on 127.0.0.1" in closed.stdout
    wrong = health_check("--base-url", local_server, "--model", "meta-llama/Llama-3.1-8B")
    assert wrong.returncode == 1 and "model name mismatch" in wrong.stdout


def test_icm_over_http_sends_one_request_per_pool_score(forwarding, tmp_path):
    server = forwarding()
    out = tmp_path / "run"
    # Without the response cache: with it, a pool score may find some prompts already answered and send
    # only the rest (still one request, or none).
    result = run_script(ICM_SCRIPT, "--testbed", "demo", "--batch_size", "4", "--num_seed", "2", "--K", "4",
                        "--output-dir", out, "--no-progress", "--no-cache", env={"VLLM_BASE_URL": server.url})
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["route"] == "vllm" and summary["endpoint"] == server.url
    completions = server.completions()
    assert len(completions) == summary["requests"]
    # The search's requests, then (if any claim was left unlabelled) one batch predicting those claims.
    search = completions[:len(completions) - summary["batch_predictions_computed"]]
    pool_requests = [s for s in search if s.n_prompts > 1]
    assert len(pool_requests) == summary["pool_scores_computed"] >= 1
    assert all(s.n_prompts == 1 for s in search if s not in pool_requests)
    for seen in completions:
        assert seen.body["max_tokens"] == 1 and seen.body["logprobs"] == 20 and seen.body["temperature"] == 0
    assert summary["prompt_tokens"] > summary["prompts_scored"]  # counted from the server's /metrics


def test_with_the_response_cache_a_pool_score_is_at_most_one_request(forwarding, tmp_path):
    server = forwarding()
    out = tmp_path / "run"
    result = run_script(ICM_SCRIPT, "--testbed", "demo", "--batch_size", "8", "--num_seed", "2", "--K", "6",
                        "--output-dir", out, "--no-progress", env={"VLLM_BASE_URL": server.url})
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    unlabeled_predictions = sum(1 for line in (out / "log.jsonl").read_text().splitlines() if json.loads(line)["old_label"] is None)
    assert len(server.completions()) == summary["requests"] <= (summary["pool_scores_computed"] + unlabeled_predictions
                                                                + summary["batch_predictions_computed"])
    assert summary["prompts_scored"] == summary["response_cache"]["misses"]


def test_http_and_in_process_scores_agree_in_deterministic_mode(local_server, demo_prompts):
    with http_api(local_server, deterministic=True) as api:
        over_http = api.next_token_logprobs(demo_prompts)
    with ModelAPI(deterministic=True, settings=Settings(embedded_slots=SLOTS, embedded_ctx_per_slot=CTX), show_progress=False) as api:
        in_process = api.next_token_logprobs(demo_prompts)
    for a, b in zip(over_http, in_process):
        assert abs(label_logodds(a, "whole") - label_logodds(b, "whole")) <= 0.01
        shared = dict(a).keys() & dict(b).keys()
        assert len(shared) >= 15
        assert max(abs(dict(a)[t] - dict(b)[t]) for t in shared) <= 0.01


def test_choices_answered_out_of_order_are_matched_by_index(forwarding, demo_prompts):
    shuffling = forwarding(shuffle_choices=True)
    with http_api(shuffling.url, deterministic=True) as api:
        shuffled = api.next_token_logprobs(demo_prompts)
    plain = forwarding()
    with http_api(plain.url, deterministic=True) as api:
        ordered = api.next_token_logprobs(demo_prompts)
    assert shuffled == ordered
    assert len({label_logodds(x, "whole") for x in ordered}) > 1  # the test could tell a mix-up apart


def test_a_server_that_rejects_list_prompts_is_detected_once(forwarding, demo_prompts, capsys):
    refusing = forwarding(reject_lists=400)
    with http_api(refusing.url, deterministic=True) as api:
        first = api.next_token_logprobs(demo_prompts)
        second = api.next_token_logprobs(demo_prompts)
        assert api._route.list_prompts_supported is False
    assert capsys.readouterr().err.count("refuses a list of prompts (HTTP 400)") == 1
    lists = [s for s in refusing.completions() if s.n_prompts > 1]
    assert len(lists) == 1  # tried once, then never again
    assert len(refusing.completions()) == 1 + 2 * len(demo_prompts)
    plain = forwarding()
    with http_api(plain.url, deterministic=True) as api:
        assert first == second == api.next_token_logprobs(demo_prompts)


def test_a_transient_500_on_the_first_list_keeps_lists(forwarding, demo_prompts, capsys):
    # One 500 says nothing about lists: it is retried, and every later pool score is still one request.
    flaky = forwarding(fail_first=1, fail_status=500)
    with http_api(flaky.url, deterministic=True, vllm_backoff_seconds=0.05) as api:
        first = api.next_token_logprobs(demo_prompts)
        second = api.next_token_logprobs(demo_prompts)
        assert api._route.list_prompts_supported is True
    assert [s.n_prompts for s in flaky.completions()] == [len(demo_prompts)] * 3  # the failed one, its retry, the second
    assert "list" not in capsys.readouterr().err
    assert first == second


def test_a_bare_500_to_every_list_falls_back_to_one_prompt_per_request(forwarding, demo_prompts, capsys):
    # llama-cpp-python's server answers a bare 500 to any list. One 500 says nothing (see above); after two, the
    # client asks a one-line probe and the list once more, then each prompt alone: all answered, so lists are
    # what the server can't take. A dead engine, which answers 500 to everything, never gets this far.
    refusing = forwarding(reject_lists=500)
    with http_api(refusing.url, deterministic=True, vllm_backoff_seconds=0.05) as api:
        first = api.next_token_logprobs(demo_prompts)
        second = api.next_token_logprobs(demo_prompts)
        assert api._route.list_prompts_supported is False
    n = len(demo_prompts)
    assert [s.n_prompts for s in refusing.completions()] == [n, n, 1, n] + [1] * n + [1] * n
    assert capsys.readouterr().err.count("but answers each of them alone; sending prompts one per request") == 1
    plain = forwarding()
    with http_api(plain.url, deterministic=True) as api:
        assert first == second == api.next_token_logprobs(demo_prompts)


def test_batches_are_split_only_past_the_prompts_per_request_cap(forwarding, demo_prompts):
    server = forwarding()
    with http_api(server.url, deterministic=True, vllm_max_prompts_per_request=3) as api:
        chunked = api.next_token_logprobs(demo_prompts)
    assert [s.n_prompts for s in server.completions()] == [3, 1]
    whole = forwarding()
    with http_api(whole.url, deterministic=True) as api:
        assert api.next_token_logprobs(demo_prompts) == chunked
    assert [s.n_prompts for s in whole.completions()] == [4]


def test_exact_label_logprobs_are_used_when_the_server_honours_them_whatever_its_version(forwarding, demo_prompts):
    server = forwarding(pretend_vllm_version="0.32.0", honour_logprob_token_ids=True)
    with http_api(server.url) as api:
        assert api.describe()["label_logprobs"] == "exact"
        [scored] = api.next_token_logprobs(demo_prompts[:1])
    probe, request = server.completions()  # the feature is tried once, then used
    assert probe.body["logprob_token_ids"] == request.body["logprob_token_ids"]
    tokenized = [s.body["prompt"] for s in server.seen if s.path == "/tokenize"]
    assert " True" in tokenized and " False" in tokenized
    ids = request.body["logprob_token_ids"]
    assert len(ids) == len(set(ids)) >= 2 and request.body["logprobs"] == len(ids)
    assert {token for token, _ in scored} >= {" True", " False"} and len(scored) <= len(ids) + 1
    ignores = forwarding(pretend_vllm_version="0.33.0")  # a newer version that ignores the field
    with http_api(ignores.url) as api:
        assert api.describe()["label_logprobs"] == "top-k"


@pytest.mark.model
def test_api_key_is_sent_and_never_shown():
    process, url = start_local_server("--api-key", "sk-test-very-secret")
    try:
        with http_api(url, vllm_api_key="sk-test-very-secret", deterministic=True) as api:
            assert len(api.next_token_logprobs(["1, 2, 3,"])) == 1
        with pytest.raises(ScoringError) as refused:
            http_api(url, vllm_api_key="wrong-key")
        assert "VLLM_API_KEY" in str(refused.value) and "wrong-key" not in str(refused.value)
        assert "sk-test-very-secret" not in repr(Settings(vllm_api_key="sk-test-very-secret"))
    finally:
        process.terminate()
        process.wait(30)


def test_unknown_model_and_unreachable_server_say_what_to_fix(local_server):
    with pytest.raises(ScoringError, match="is not served at .* it serves: SmolLM2"):
        http_api(local_server, model="meta-llama/Llama-3.1-8B")
    with pytest.raises(ScoringError, match="cannot connect to .* is the server running.*raise VLLM_RETRY_SECONDS"):
        http_api(f"http://127.0.0.1:{free_port()}", vllm_retry_seconds=0.5, vllm_backoff_seconds=0.1)


def test_launch_script_dry_run_prints_a_prefix_caching_tensor_parallel_command():
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "launch_vllm_server.sh"), "70B", "--dry-run", "--port", "8001"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    assert words[:3] == ["vllm", "serve", "meta-llama/Llama-3.1-70B"]
    assert "--enable-prefix-caching" in words
    assert int(words[words.index("--tensor-parallel-size") + 1]) >= 4
    assert words[-2:] == ["--port", "8001"]  # extra arguments come last, overriding the preset
    unknown = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "launch_vllm_server.sh"), "9B", "--dry-run"],
                             capture_output=True, text=True, env=env, timeout=60)
    assert unknown.returncode != 0 and "choose one of 8B, 70B, 405B" in unknown.stderr


def test_launch_script_scales_with_vllm_own_parallelism():
    env = {**os.environ, "PYTHON": sys.executable}
    script = str(REPO_ROOT / "scripts" / "launch_vllm_server.sh")
    replicas = subprocess.run(["bash", script, "8B", "--data-parallel", "4", "--dry-run"], capture_output=True, text=True, env=env, timeout=60)
    assert replicas.returncode == 0 and "--data-parallel-size 4" in replicas.stdout
    nodes = subprocess.run(["bash", script, "405B", "--nodes", "2", "--dry-run"], capture_output=True, text=True, env=env, timeout=60)
    words = nodes.stdout.split()
    assert words[words.index("--pipeline-parallel-size") + 1] == "2" and words[words.index("--tensor-parallel-size") + 1] == "8"
    assert words[words.index("--distributed-executor-backend") + 1] == "ray"
    bad = subprocess.run(["bash", script, "8B", "--nodes", "two", "--dry-run"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "--nodes takes a whole number" in bad.stderr


def test_launch_script_cpu_preset_starts_the_api_server_module_of_the_vllm_venv(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "VLLM_PYTHON": "/opt/vllm-cpu/bin/python"}
    script = str(REPO_ROOT / "scripts" / "launch_vllm_server.sh")
    dry = subprocess.run(["bash", script, "cpu", "--dry-run", "--block-size", "32"], capture_output=True, text=True, env=env, timeout=60)
    assert dry.returncode == 0, dry.stderr
    words = dry.stdout.split()
    start = words.index("/opt/vllm-cpu/bin/python")
    assert "VLLM_CPU_KVCACHE_SPACE=2" in words[:start]  # the preset's environment comes first
    assert words[start + 1:start + 3] == ["-m", "vllm.entrypoints.openai.api_server"]  # not `vllm serve`
    assert words[words.index("--model") + 1].endswith("models/smollm2-135m-hf")
    assert "--enable-prefix-caching" in words and "--gpu-memory-utilization" not in words
    assert words[-2:] == ["--block-size", "32"]
    missing = subprocess.run(["bash", script, "cpu"], capture_output=True, text=True, timeout=60,
                             env={**env, "VLLM_PYTHON": str(tmp_path / "no-such-python")})
    assert missing.returncode == 2 and "run scripts/setup_vllm_cpu.sh" in missing.stderr


def test_launch_script_checks_the_cpu_model_folder_whatever_the_form_of_its_path(tmp_path):
    # The cpu preset's path is relative (models/smollm2-135m-hf). Before the conversion, vLLM must not be started
    # with it: it would take the path for a Hugging Face model id and fail minutes later, offline.
    import shutil

    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "configs").mkdir()
    for name in ("scripts/launch_vllm_server.sh", "scripts/vllm_preset.py", "configs/vllm_config.yaml"):
        shutil.copy(REPO_ROOT / name, repo / name)
    env = {**os.environ, "PYTHON": sys.executable, "VLLM_PYTHON": sys.executable}
    result = subprocess.run(["bash", str(repo / "scripts" / "launch_vllm_server.sh"), "cpu", "--port", str(free_port())],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"model folder {repo}/models/smollm2-135m-hf does not exist" in result.stderr
    assert "convert_smollm2_to_hf.py" in result.stderr and "starting:" not in result.stderr


@pytest.mark.model
def test_the_model_conversion_says_which_python_to_use_and_skips_a_finished_folder(tmp_path):
    script = str(REPO_ROOT / "scripts" / "convert_smollm2_to_hf.py")
    # The project venv has no transformers, on purpose: the conversion belongs to .venv-vllm.
    refused = subprocess.run([sys.executable, script, "--out", str(tmp_path / "hf")], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and ".venv-vllm/bin/python" in refused.stderr
    assert not (tmp_path / "hf").exists()
    done = tmp_path / "done"
    done.mkdir()
    (done / "converted_from.json").write_text("{}")
    skipped = subprocess.run([sys.executable, script, "--out", str(done)], capture_output=True, text=True, timeout=60)
    assert skipped.returncode == 0 and "already converted" in skipped.stderr
