import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.http_test_server import ForwardingTestServer

REPO_ROOT = Path(__file__).resolve().parents[1]

# The paper's data lives beside the checkout (../shared/data/icm), never inside it.
SHARED_DATA = Path(os.environ.get("ICM_DATA_DIR", REPO_ROOT.parent / "shared" / "data" / "icm"))


# What core/llm_api/settings.py reads from the environment: the route URLs, their keys and every tuning knob
# (VLLM_*, API_*, LLAMA_*, EMBEDDED_*), the settings file's path, and the crash hook. A researcher's shell usually
# holds some of them (VLLM_BASE_URL above all); each test starts without any.
ROUTE_PREFIXES = ("VLLM_", "API_", "LLAMA_", "EMBEDDED_")
TEST_HOOKS = ("ICM_CRASH_AT",)


def route_variables(environ) -> list[str]:
    """The names in ``environ`` that choose or tune a model route, or hook into a run."""
    return [name for name in environ if name.startswith(ROUTE_PREFIXES) or name in TEST_HOOKS]


def clean(monkeypatch: pytest.MonkeyPatch, secrets_file: Path) -> None:
    for name in route_variables(os.environ):
        monkeypatch.delenv(name)
    monkeypatch.setenv("ICM_SECRETS_FILE", str(secrets_file))


@pytest.fixture(scope="session", autouse=True)
def clean_session_environment(tmp_path_factory):
    """The session's servers and models (set up before any test's own fixtures) start clean too."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        clean(monkeypatch, tmp_path_factory.getbasetemp() / "no-such-SECRETS")
        yield


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path_factory):
    """Every test sees no route variable or key and no settings file, whatever the shell running pytest holds
    (and whatever an earlier test left in os.environ). Subprocesses started from a test inherit the same."""
    clean(monkeypatch, tmp_path_factory.getbasetemp() / "no-such-SECRETS")


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (for a server that is down, or one about to start)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def run_outcome(out: Path) -> tuple:
    """What a finished run in ``out`` produced: labels, log, final metrics, iterations and flips."""
    summary = json.loads((out / "summary.json").read_text())
    return ((out / "labels.jsonl").read_text(), (out / "log.jsonl").read_text(),
            summary["final"], summary["iterations"], summary["flip_cnt"])


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the ICM data at {SHARED_DATA}")
        pytest.skip(f"no ICM data at {SHARED_DATA}; set ICM_DATA_DIR")
    return SHARED_DATA


@pytest.fixture(scope="session")
def embedded_api():
    """One real SmolLM2 model for the whole session: loading it per test would waste the time budget."""
    from core.llm_api.llm import ModelAPI
    from core.llm_api.settings import Settings

    api = ModelAPI(settings=Settings(embedded_slots=2, embedded_ctx_per_slot=4096), show_progress=False)
    yield api
    api.close()


# The demo run the crash, resume and write-failure tests compare against: one real-model run for the session.
DEMO_RUN = ["--testbed", "demo", "--batch_size", "8", "--num_seed", "2", "--K", "6", "--deterministic", "--no-progress"]
SMALL_EMBEDDED = {"EMBEDDED_SLOTS": "2", "EMBEDDED_CTX_PER_SLOT": "2048"}


@pytest.fixture(scope="session")
def uninterrupted_demo_run(tmp_path_factory) -> Path:
    """A finished ``DEMO_RUN`` on the embedded model (two 2048-token slots). Copy it before changing it."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "src" / "experiments" / "ICM.py"), *DEMO_RUN, "--output-dir", str(out)],
                            cwd=REPO_ROOT, env={**os.environ, **SMALL_EMBEDDED}, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_demo_run, tmp_path_factory) -> Path:
    """This module's own copy of the session's uninterrupted demo run."""
    copy = tmp_path_factory.mktemp("uninterrupted-copy") / "run"
    shutil.copytree(uninterrupted_demo_run, copy)
    return copy


# llama.cpp's own server over the embedded model, for the HTTP routes; small, so tests stay fast.
SLOTS, CTX = 2, 2048


def start_local_server(*extra: str, port: str = "0"):
    """scripts/serve_local.py on ``port`` (0: any free one): the process and its URL, once it serves."""
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "scripts" / "serve_local.py"), "--port", port, "--slots", str(SLOTS),
         "--ctx-per-slot", str(CTX), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = process.stdout.readline()
    if "serving" not in line:
        process.kill()
        raise RuntimeError(f"serve_local.py did not start: {line!r} {process.stderr.read()}")
    return process, line.split(" at ")[1].split()[0]


@pytest.fixture(scope="session")
def local_server():
    process, url = start_local_server()
    yield url
    process.terminate()
    process.wait(30)


@pytest.fixture
def forwarding(local_server):
    servers = []

    def make(**switches) -> ForwardingTestServer:
        server = ForwardingTestServer(local_server, **switches)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


# A test that asks for one of these fixtures uses the real SmolLM2 (llama.cpp's server behind them, or the model
# loaded in this process), so it is a `model` test without saying so itself.
MODEL_FIXTURES = {"embedded_api", "local_server", "forwarding", "uninterrupted_demo_run", "uninterrupted"}


# The slow tier: tests that each take 10 s or more on 2 cores because they start, kill, restart or wait for real
# processes (a run killed at a crash point and resumed, a server restarted mid-run, a signal during a retry wait,
# a full disk), or run a whole script on the real model. `pytest -m "not slow"` (the README's test command) leaves
# them out; `.ci/run` runs them after it (`pytest -m slow`). Seconds: measured on an idle 2-core machine
# (`pytest -m model --durations=40`), setup included.
SLOW_TESTS = {
    "tests/test_benchmark.py::test_benchmark_script_compares_the_two_patterns_and_writes_json": 61,
    "tests/test_benchmark.py::test_engine_tokenizer_and_counters_agree_on_a_trie_ordered_batch": 26,
    "tests/test_benchmark.py::test_prompts_sent_singly_are_one_request_each_with_the_same_answers": 18,
    "tests/test_reliability.py::test_a_second_run_or_a_resume_on_a_live_directory_stops_at_once_and_names_the_holder": 52,
    "tests/test_reliability.py::test_sigterm_during_a_retry_wait_stops_the_run_at_once_and_it_resumes_to_the_same_result": 35,
    "tests/test_reliability.py::test_after_a_context_overflow_the_advised_smaller_batch_starts_in_the_same_directory": 23,
    "tests/test_reliability.py::test_a_run_killed_during_its_first_scoring_is_replaced_by_the_same_command": 15,
    "tests/test_reliability.py::test_a_real_write_failure_mid_run_stops_cleanly_and_the_run_resumes_exactly": 25,
    "tests/test_reliability.py::test_a_lock_left_by_a_killed_run_does_not_block_its_resume": 25,
    "tests/test_reliability.py::test_a_full_disk_stops_with_the_checkpoint_intact_and_the_run_resumes_exactly": 12,
    "tests/test_reliability.py::test_a_failed_start_leaves_nothing_that_blocks_the_same_command": 12,
    "tests/test_faults.py::test_a_server_restarted_mid_run_loses_nothing": 29,
    "tests/test_faults.py::test_https_to_a_plain_http_port_stops_at_once": 22,
    "tests/test_faults.py::test_a_run_started_while_the_server_is_down_waits_for_it": 16,
    "tests/test_evaluation.py::test_evaluate_on_the_embedded_model_writes_eval_json_and_png": 42,
    "tests/test_scale_out.py::test_two_endpoints_share_the_work_and_survive_losing_one": 26,
    "tests/test_embedded_model.py::test_a_second_ctrl_c_during_a_batch_exits_130_at_once_with_the_files_written": 17,
    "tests/test_resume.py::test_killed_run_resumes_to_the_uninterrupted_result": 75,
    "tests/test_resume.py::test_killed_before_anything_was_computed_says_so_and_a_rerun_works": 10,
    "tests/test_external_route.py::test_a_200_prompt_batch_stays_within_the_request_limit": 14,
    "tests/test_vllm_route.py::test_a_server_that_rejects_list_prompts_is_detected_once": 11,
    # Four embedded runs (2 seeds x 2 labellers); measured 208 s at a load of 5.5 on 2 cores, where one such run took 55 s.
    "tests/test_sweep.py::test_a_small_sweep_of_two_seeds_and_two_labellers_on_the_embedded_model": 208,
    "tests/test_sweep.py::test_sigterm_stops_every_cell_it_started_and_the_same_command_resumes_them": 15,
}


def pytest_collection_modifyitems(items):
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)
        if item.nodeid.split("[")[0] in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
