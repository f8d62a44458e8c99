"""Scale out: the paper's sharding into independent ICM batches, merging them, and several vLLM endpoints."""
import json
import shutil
import signal
import subprocess
import time
from collections import Counter

import pytest

from src.data.testbeds import TESTBED_SPECS, DataError, load_testbed_claims, shard_pool
from src.experiments import ICM
from tests.cli_helpers import SMALL_EMBEDDED, call, load_script, start_script
from tests.conftest import REPO_ROOT, start_local_server
from tests.http_test_server import ForwardingTestServer
from tests.stand_in_pipeline import use_stand_in

merge_labels = load_script("merge_labels")


def test_shards_are_disjoint_cover_the_data_keep_groups_whole_and_are_stable(data_dir):
    claims, source, _ = load_testbed_claims("truthfulQA", data_dir, None, True)
    spec = TESTBED_SPECS["truthfulQA"]
    shards = [shard_pool(claims, spec, 10, i, seed=7, source=source) for i in range(10)]
    records = [c["record"] for shard in shards for c in shard]
    assert sorted(records) == list(range(len(claims)))  # disjoint and covering
    for shard in shards:
        assert set(Counter(c["consistency_id"] for c in shard).values()) == {4}  # whole groups
        assert abs(len(shard) - len(claims) / 10) <= 4
    assert [c["record"] for c in shard_pool(claims, spec, 10, 3, seed=7, source=source)] == [c["record"] for c in shards[3]]
    assert [c["record"] for c in shard_pool(claims, spec, 10, 3, seed=8, source=source)] != [c["record"] for c in shards[3]]


def test_bad_shard_requests_are_refused(data_dir):
    claims, source, _ = load_testbed_claims("truthfulQA", data_dir, None, True)
    spec = TESTBED_SPECS["truthfulQA"]
    with pytest.raises(DataError, match="--batch-index 5 must be between 0 and --num-batches 5 - 1"):
        shard_pool(claims, spec, 5, 5, 0, source)
    with pytest.raises(DataError, match="more than the 652 consistency groups"):
        shard_pool(claims, spec, 1000, 0, 0, source)


def shard_run(out, index: int, *flags: str) -> None:
    """Shard ``index`` of 4 of a demo run, by ICM.py in this process on the stand-in route: merging reads the
    files ICM.py writes, whatever model scored them."""
    code = ICM.main(["--testbed", "demo", "--num-batches", "4", "--batch-index", str(index), "--num_seed", "2", "--K", "2",
                     *flags, "--output-dir", str(out), "--no-progress", "--deterministic"])
    assert code == 0


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_stand_in(monkeypatch, root)
        for index in range(4):
            shard_run(root / f"shard{index}", index)
    return [root / f"shard{index}" for index in range(4)]


@pytest.fixture
def merge(capsys):
    def run(*runs, output) -> subprocess.CompletedProcess:
        code, stderr = call(merge_labels, [*runs, "--output", output], capsys)
        return subprocess.CompletedProcess(["merge_labels.py"], code, "", stderr)
    return run


def test_sharded_jobs_merge_into_one_labels_file(demo_shards, tmp_path, merge):
    result = merge(*demo_shards, output=tmp_path / "merged")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(l) for l in (tmp_path / "merged" / "labels.jsonl").read_text().splitlines()]
    assert sorted(r["record"] for r in rows) == list(range(64))  # every demo claim, once
    summary = json.loads((tmp_path / "merged" / "summary.json").read_text())
    assert summary["num_batches"] == 4 and summary["claims"] == 64 and len(summary["shards"]) == 4


def test_merge_refuses_runs_that_do_not_belong_together(demo_shards, tmp_path, merge, monkeypatch):
    missing = merge(*demo_shards[:3], output=tmp_path / "m1")
    assert missing.returncode == 2 and "shard(s) 3 of 4 missing" in missing.stderr
    twice = merge(demo_shards[0], demo_shards[0], *demo_shards[1:], output=tmp_path / "m2")
    assert twice.returncode == 2 and "shard 0 is given twice" in twice.stderr
    other = tmp_path / "other"
    use_stand_in(monkeypatch, tmp_path)
    shard_run(other, 3, "--alpha", "5")
    mismatched = merge(*demo_shards[:3], other, output=tmp_path / "m3")
    assert mismatched.returncode == 2 and "alpha=5.0" in mismatched.stderr and "not shards of one run" in mismatched.stderr
    overlapping = tmp_path / "overlap"
    shutil.copytree(demo_shards[3], overlapping)
    rows = [json.loads(l) for l in (overlapping / "labels.jsonl").read_text().splitlines()]
    rows[0]["record"] = json.loads((demo_shards[0] / "labels.jsonl").read_text().splitlines()[0])["record"]
    (overlapping / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    overlap = merge(*demo_shards[:3], overlapping, output=tmp_path / "m4")
    assert overlap.returncode == 2 and "is in both" in overlap.stderr
    unfinished = tmp_path / "unfinished"
    shutil.copytree(demo_shards[3], unfinished)
    summary = json.loads((unfinished / "summary.json").read_text())
    (unfinished / "summary.json").write_text(json.dumps({**summary, "stopped_early": "stopped by SIGINT", "iterations": 1}))
    stopped = merge(*demo_shards[:3], unfinished, output=tmp_path / "m5")
    assert stopped.returncode == 2 and "did not finish" in stopped.stderr and "--resume" in stopped.stderr
    plain = merge(REPO_ROOT, output=tmp_path / "m6")
    assert plain.returncode == 2 and "no run.json" in plain.stderr


def run_over(urls: str, out, K: int = 6) -> subprocess.Popen:
    """A demo run over HTTP as its own process. K=6: caught at its second log line, it has 4 iterations left."""
    return start_script("src/experiments/ICM.py", "--testbed", "demo", "--batch_size", "8", "--num_seed", "2", "--K", K,
                        "--deterministic", "--output-dir", out, "--no-progress",
                        env={**SMALL_EMBEDDED, "VLLM_BASE_URL": urls, "VLLM_BACKOFF_SECONDS": "0.2"})


def test_two_endpoints_share_the_work_and_survive_losing_one(local_server, tmp_path):
    second, second_url = start_local_server()
    front_a, front_b = ForwardingTestServer(local_server), ForwardingTestServer(second_url)
    front_a.start(), front_b.start()
    try:
        single = run_over(local_server, tmp_path / "single")
        assert single.wait(600) == 0, single.stderr.read()
        both = run_over(f"{front_a.url},{front_b.url}", tmp_path / "both")
        log = tmp_path / "both" / "log.jsonl"
        deadline = time.time() + 300
        while time.time() < deadline and not (log.exists() and log.read_text().count("\n") >= 2):
            assert both.poll() is None, both.stderr.read()
            time.sleep(0.05)
        assert front_a.completions() and front_b.completions()  # both received requests
        split = [s.n_prompts for s in front_a.completions() + front_b.completions() if s.n_prompts > 1]
        assert split, "a pool score was split across the endpoints"
        second.send_signal(signal.SIGKILL)  # one replica dies mid-run
        second.wait(30)
        assert both.poll() is None, "the run ended before the endpoint was killed: the test proves nothing"
        _, stderr = both.communicate(timeout=600)
        assert both.returncode == 0, stderr
        assert "is down" in stderr
    finally:
        front_a.stop()
        front_b.stop()
        if second.poll() is None:
            second.terminate()
    assert (tmp_path / "both" / "labels.jsonl").read_text() == (tmp_path / "single" / "labels.jsonl").read_text()
    summary = json.loads((tmp_path / "both" / "summary.json").read_text())
    assert summary["failovers"] >= 1 and len(summary["requests_per_endpoint"]) == 2
