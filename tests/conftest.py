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


def pytest_collection_modifyitems(items):
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)
