"""SIGKILL a real run at five points, resume each, and get exactly what an uninterrupted run gets."""
import json
import subprocess

import pytest

from tests.cli_helpers import ICM_SCRIPT, SMALL_EMBEDDED, run_script
from tests.conftest import DEMO_RUN as RUN
from tests.conftest import run_outcome as outcome

pytestmark = pytest.mark.model  # every run here is on the embedded model; the uninterrupted one is conftest's


def icm(*args, crash_at=None):
    """ICM.py as its own process: a crash point kills it."""
    return run_script(ICM_SCRIPT, *args, env={**SMALL_EMBEDDED, **({"ICM_CRASH_AT": crash_at} if crash_at else {})},
                      timeout=900)


@pytest.mark.parametrize("crash_at", [
    "checkpoint-write:2",  # in the middle of writing the first checkpoint, right after the seeds were scored
    "batch:3",             # while llama.cpp is computing a batch
    "after-log:2",         # a log line written, its checkpoint not yet
    "checkpoint-write:5",  # in the middle of a later checkpoint write
    "batch:6",             # a later batch
])
def test_killed_run_resumes_to_the_uninterrupted_result(uninterrupted, tmp_path, crash_at):
    out = tmp_path / "run"
    killed = icm(*RUN, "--output-dir", str(out), crash_at=crash_at)
    assert killed.returncode == -9, f"the crash point {crash_at} was never reached: {killed.stderr}"
    resumed = icm("--resume", str(out), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert outcome(out) == outcome(uninterrupted)
    logged = [json.loads(line)["iter"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert logged == list(range(6))  # no line lost, none twice
    assert not list(out.glob(".*.tmp"))


def test_killed_before_anything_was_computed_says_so_and_a_rerun_works(tmp_path):
    out = tmp_path / "run"
    killed = icm(*RUN, "--output-dir", str(out), crash_at="checkpoint-write:1")  # writing run.json
    assert killed.returncode == -9
    resumed = icm("--resume", str(out))
    assert resumed.returncode == 2 and "no run.json there, so no run to resume" in resumed.stderr
    assert icm(*RUN, "--K", "1", "--output-dir", str(out)).returncode == 0


def test_resume_refuses_other_settings_and_can_extend_K(uninterrupted, tmp_path):
    changed = icm("--resume", str(uninterrupted), "--alpha", "5")
    assert changed.returncode == 2
    assert "the run was started with --alpha 30.0, not 5.0; drop --alpha to resume it" in changed.stderr
    same = icm("--resume", str(uninterrupted), "--alpha", "30", "--testbed", "demo", "--no-progress")
    assert same.returncode == 0, same.stderr
    assert "resuming" in same.stderr
    copy = tmp_path / "longer"
    subprocess.run(["cp", "-r", str(uninterrupted), str(copy)], check=True)
    longer = icm("--resume", str(copy), "--K", "8", "--no-progress")
    assert longer.returncode == 0, longer.stderr
    assert [json.loads(line)["iter"] for line in (copy / "log.jsonl").read_text().splitlines()] == list(range(8))
    assert json.loads((copy / "run.json").read_text())["settings"]["K"] == 8  # the run now means to go to 8
    # The first six iterations were answered from the response cache: nothing new was asked for them.
    assert json.loads((copy / "summary.json").read_text())["response_cache"]["hits"] > 0


def test_a_repeated_run_is_answered_from_the_response_cache(uninterrupted, tmp_path):
    out = tmp_path / "again"
    again = icm(*RUN, "--output-dir", str(out), "--cache-dir", str(uninterrupted))
    assert again.returncode == 0, again.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"] == 0 and summary["response_cache"]["misses"] == 0
    assert outcome(out)[:3] == outcome(uninterrupted)[:3]
