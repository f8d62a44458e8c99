"""The embedded route on the real SmolLM2-135M model (llama.cpp in-process). Pools are kept tiny: ~300 tokens/s."""
import json
import signal
import time
import subprocess
import sys

import pytest

from core.llm_api.llm import ModelAPI
from core.llm_api.settings import Settings
from src.pipeline.label_scores import token_label
from src.prompts.prompts import leave_one_out_prompts
from src.search.annealing import seed_claims
from src.data.testbeds import load_testbed_claims
from src.config.run_config import PromptConfig
from src.pipeline.pool_scoring import PoolScorer
from tests.cli_helpers import ICM_SCRIPT, SMALL_EMBEDDED, environment, run_script, start_script
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def tqa_pool(data_dir):
    claims, _, _ = load_testbed_claims("truthfulQA", data_dir, None, True)
    import random
    return list(seed_claims(claims[:6], 6, random.Random(0)).values())


def test_true_and_false_lead_the_top_logprobs_when_the_space_is_in_the_label(embedded_api, tqa_pool):
    prompts = leave_one_out_prompts(tqa_pool, "space-in-label", "reference")
    for top in embedded_api.next_token_logprobs(prompts):
        tokens = [token for token, _ in top]
        assert " True" in tokens and " False" in tokens
        assert {token_label(t, "whole") for t in tokens[:2]} == {True, False}, tokens[:5]


def test_the_reference_trailing_space_pushes_the_labels_down(embedded_api, tqa_pool):
    prompts = leave_one_out_prompts(tqa_pool, "reference", "reference")
    for top in embedded_api.next_token_logprobs(prompts):
        assert token_label(top[0][0], "whole") is None, "SmolLM2 was expected to prefer a non-label token here"


def test_a_pool_score_is_one_call_of_the_engine(embedded_api, tqa_pool):
    scorer = PoolScorer(embedded_api, PromptConfig(prompt_layout="reference"))
    claims = {c.uid: c for c in tqa_pool}
    before = embedded_api.stats.requests, embedded_api.stats.prompts
    scores = scorer.pool_scores(claims)
    assert embedded_api.stats.requests - before[0] == 1
    assert embedded_api.stats.prompts - before[1] == len(tqa_pool)
    assert set(scores) == set(claims) and all(abs(s) > 0 for s in scores.values())
    assert scorer.pool_scores(claims) == scores and embedded_api.stats.requests - before[0] == 1


def test_deterministic_mode_is_bit_identical_across_repeats_and_batching(tqa_pool):
    prompts = leave_one_out_prompts(tqa_pool[:4], "space-in-label", "reference")
    with ModelAPI(deterministic=True, settings=Settings(embedded_slots=2, embedded_ctx_per_slot=2048), show_progress=False) as api:
        batched = api.next_token_logprobs(prompts)
        again = api.next_token_logprobs(prompts)
        alone = [api.next_token_logprobs([p])[0] for p in prompts[:2]]
        assert batched == again
        assert alone == batched[:2]
        assert api.stats.computed_tokens == api.stats.prompt_tokens  # nothing was served from the cache


def test_a_pool_too_long_for_the_context_stops_with_what_to_change(tmp_path):
    # llama.cpp's smallest context is 256 tokens; 16 demo claims make ~380-token prompts.
    result = run_script(ICM_SCRIPT, "--testbed", "demo", "--batch_size", "16", "--num_seed", "16", "--K", "1",
                        "--output-dir", tmp_path / "out", "--no-progress",
                        env={"EMBEDDED_SLOTS": "1", "EMBEDDED_CTX_PER_SLOT": "256"}, timeout=300)
    assert result.returncode == 2
    assert "does not fit the embedded model's 256-token context. Lower --batch_size (now 16)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "log.jsonl").exists()  # nothing left to block the next attempt


# Repeated because interrupting llama.cpp mid-call once crashed the process now and then.
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_between_iterations_and_keeps_the_labels(tmp_path, stop_signal):
    out = tmp_path / "out"
    process = start_script(ICM_SCRIPT, "--testbed", "demo", "--batch_size", "4", "--num_seed", "2", "--K", "1000",
                           "--output-dir", out, "--no-progress", env=SMALL_EMBEDDED)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "log.jsonl").is_file() or not (out / "log.jsonl").read_text():
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.2)
    process.send_signal(stop_signal)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + stop_signal, stderr
    summary = json.loads((out / "summary.json").read_text())
    logged = (out / "log.jsonl").read_text().splitlines()
    assert summary["stopped_early"] == f"stopped by {stop_signal.name}"
    assert "stopping after this iteration" in stderr
    assert summary["iterations"] == len(logged) >= 1
    assert len((out / "labels.jsonl").read_text().splitlines()) == 4


@pytest.mark.parametrize("cwd", [REPO_ROOT, REPO_ROOT / "src" / "experiments"])
def test_icm_command_runs_on_the_embedded_model_and_writes_its_three_files(tmp_path, cwd):
    out = tmp_path / "run"
    # The script itself, started from the repository root and from its own folder (the README's two forms).
    result = subprocess.run(
        [sys.executable, "ICM.py" if cwd != REPO_ROOT else "src/experiments/ICM.py", "--testbed", "demo",
         "--batch_size", "4", "--num_seed", "2", "--K", "3", "--output-dir", str(out), "--no-progress"],
        cwd=cwd, env=environment(**SMALL_EMBEDDED), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "route: embedded" in result.stderr
    labels = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert [row["uid"] for row in labels] == [0, 1, 2, 3]
    assert all(row["label"] in (True, False, None) and row["gold_label"] in (True, False) for row in labels)
    assert sum(row["label"] is not None for row in labels) >= 2
    assert [r["iter"] for r in log] == [0, 1, 2]
    assert summary["route"] == "embedded" and summary["model"].startswith("SmolLM2-135M")
    assert summary["iterations"] == 3 and summary["requests"] >= 1 and summary["prompt_tokens"] > 0
    assert summary["final"]["labeled"] == sum(row["label"] is not None for row in labels)


def test_a_second_ctrl_c_during_a_batch_exits_130_at_once_with_the_files_written(tmp_path):
    # The second SIGINT lands while llama.cpp computes a batch in a worker thread. It once segfaulted (exit 139 in 8 of
    # 11 tries): Python 3.11 marks a thread whose join() a Ctrl-C interrupts as stopped though it runs on, so the model
    # was freed, and exit() tore llama.cpp down, under the batch. Each pool score here is one batch of a few seconds
    # (6 claims, all labelled, no prompt-cache reuse). Three runs are stopped in their first scoring (right after the
    # route line, nothing to write yet), one mid-search (after its first log line, with files to write); repeated,
    # as the crash came most of the time, not always.
    data = tmp_path / "claims.json"
    data.write_text(json.dumps([{"question": f"Story {i}: a traveller walks from the mill past the river to the village. "
                                             "How many bridges?", "choice": f"{i % 3 + 1} bridges.", "consistency_id": i}
                                for i in range(6)]))
    abandoned = 0
    for attempt, when in enumerate(["first scoring"] * 3 + ["mid-search"]):
        out = tmp_path / f"run{attempt}"
        process = start_script(ICM_SCRIPT, "--testbed", "custom", "--data", data, "--batch_size", "6", "--num_seed", "6",
                               "--K", "1000", "--deterministic", "--no-progress", "--output-dir", out,
                               env={"EMBEDDED_SLOTS": "1"}, stdout=subprocess.DEVNULL)
        if when == "first scoring":
            assert "route: embedded" in process.stderr.readline()  # the first pool score starts now
            time.sleep(0.5)
        else:
            deadline = time.time() + 300
            while not ((out / "log.jsonl").is_file() and (out / "log.jsonl").read_text()):
                assert process.poll() is None and time.time() < deadline, process.communicate()
                time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=300)
        # 130 from the run's own handler; or, when the second Ctrl-C lands after the interpreter has handed SIGINT
        # back to the system (the run already finished writing, CI saw it once under load), death by SIGINT, which
        # a shell reports as the same 130. Either way: ended at once by Ctrl-C, and no crash (139) or hang.
        assert process.returncode in (130, -signal.SIGINT), f"attempt {attempt} ({when}): exit {process.returncode}\n{stderr}"
        assert "Traceback" not in stderr
        abandoned += "not waiting for the llama.cpp batch that was interrupted" in stderr
        if when == "mid-search":
            summary = json.loads((out / "summary.json").read_text())
            assert summary["stopped_early"] and summary["iterations"] >= 1
            assert len((out / "labels.jsonl").read_text().splitlines()) == 6
        else:
            assert not (out / "run.json").exists()  # nothing was scored: nothing left that blocks a re-run
    assert abandoned, "no second Ctrl-C landed during a batch: the test did not test what it is for"
