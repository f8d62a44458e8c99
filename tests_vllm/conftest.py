"""The integration tier: tests against a real vLLM built for CPU. Run by scripts/run_vllm_integration.sh (and
.ci/run after the fast tests), never by the main test command: installing and starting vLLM takes minutes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests_vllm.vllm_server import REPO_ROOT, CPUVLLMServer

MODEL_DIR = REPO_ROOT / "models" / "smollm2-135m-hf"
SHARED_DATA = Path(os.environ.get("ICM_DATA_DIR", REPO_ROOT.parent / "shared" / "data" / "icm"))
# Small enough for 2 CPU cores, big enough for a real search: two TruthfulQA groups, 12 iterations.
ICM_FLAGS = ["--testbed", "truthfulQA", "--batch_size", "8", "--num_seed", "4", "--K", "12", "--seed", "3",
             "--no-progress", "--no-cache"]


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    if not (MODEL_DIR / "config.json").is_file():
        pytest.fail(f"no converted model at {MODEL_DIR}: run scripts/run_vllm_integration.sh, which converts it")
    server = CPUVLLMServer(tmp_path_factory.mktemp("vllm-logs"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"no ICM data at {SHARED_DATA}; set ICM_DATA_DIR")
    return SHARED_DATA


def run_icm(url: str, out: Path, data_dir: Path, *extra: str, env_extra=None, wait: bool = True):
    env = {k: v for k, v in os.environ.items() if k not in ("LLAMA_API_BASE", "API_KEY", "VLLM_MAX_RETRIES")}
    env.update({"VLLM_BASE_URL": url, **(env_extra or {})})
    command = [sys.executable, str(REPO_ROOT / "src" / "experiments" / "ICM.py"), *ICM_FLAGS, "--data-dir", str(data_dir),
               "--output-dir", str(out), *extra]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return process
    stdout, stderr = process.communicate(timeout=1800)
    assert process.returncode == 0, stderr
    return json.loads((out / "summary.json").read_text())
