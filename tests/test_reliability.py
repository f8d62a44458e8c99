"""The run as a whole under faults: one process per output directory, waits that a stop ends, a failed
start that blocks nothing, writes that fail (a full disk, a folder made read-only), and credentials that
never leave the process. Each test runs the real CLI on the embedded model or over HTTP to llama.cpp."""
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from core.interrupts import WaitInterrupted, ask_to_stop, clear_stop
from core.llm_api.llm import ModelAPI
from core.llm_api.retry_waits import RetryPolicy
from core.llm_api.settings import Settings, SettingsError, load_settings
from src.run_directory.run_outputs import OUTPUT_FILES
from src.experiments import ICM
from tests.cli_helpers import ICM_SCRIPT, SMALL_EMBEDDED, call, load_script, run_script, start_script
from tests.conftest import DEMO_RUN as RUN
from tests.conftest import closed_port_url
from tests.conftest import run_outcome as outcome

export_labels = load_script("export_labels")


def icm(*args: str, **env: str) -> subprocess.CompletedProcess:
    """ICM.py as its own process, on the embedded model unless ``env`` names a server."""
    return run_script(ICM_SCRIPT, *args, env={**SMALL_EMBEDDED, **env}, timeout=900)


def start_icm(*args: str, stderr_file: Path, **env: str) -> subprocess.Popen:
    with stderr_file.open("w") as stderr:  # the child keeps its own copy of the file
        return start_script(ICM_SCRIPT, *args, env={**SMALL_EMBEDDED, **env}, stdout=subprocess.DEVNULL, stderr=stderr)


def wait_for(condition, process: subprocess.Popen, what: str, seconds: float = 300.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def logged_lines(out: Path) -> int:
    log = out / "log.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


def logged_iterations(out: Path) -> list[int]:
    return [json.loads(line)["iter"] for line in (out / "log.jsonl").read_text().splitlines()]


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# -- one process per output directory ------------------------------------------------------------------------

@pytest.mark.model
def test_a_second_run_or_a_resume_on_a_live_directory_stops_at_once_and_names_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    first = start_icm(*RUN, "--K", "12", "--output-dir", str(out), stderr_file=tmp_path / "first.err")
    try:
        wait_for(lambda: logged_lines(out) >= 1, first, "the first log line")
        # The refused attempts run in this process: the lock is held by another process all the same.
        for attempt in ([*RUN, "--K", "12", "--output-dir", str(out)], ["--resume", str(out)], [*RUN, "--output-dir", str(out), "--overwrite"]):
            code, stderr = call(ICM, attempt, capsys)
            assert code == 2
            assert error_lines(stderr) == [f"error: {out} is in use by another ICM run (process {first.pid}): wait for "
                                                  "it to finish or stop it, or choose another --output-dir"]
        assert first.wait(600) == 0, (tmp_path / "first.err").read_text()
    finally:
        if first.poll() is None:
            first.kill()
    assert logged_iterations(out) == list(range(12))  # every iteration once: nothing from the refused processes
    assert not (out / ".lock").exists()


def test_a_lock_left_by_a_killed_run_does_not_block_its_resume(uninterrupted, tmp_path):
    out = tmp_path / "run"
    killed = icm(*RUN, "--output-dir", str(out), ICM_CRASH_AT="after-log:3")
    assert killed.returncode == -9
    assert (out / ".lock").read_text().strip().isdigit()  # the dead process's id is still in the file
    resumed = icm("--resume", str(out), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert outcome(out) == outcome(uninterrupted)


# -- waits are bounded, and a stop ends them ------------------------------------------------------------------

def test_backoff_is_capped_however_many_tries_have_failed():
    import random

    for prefix, cap in (("VLLM", 10.0), ("API", 30.0)):
        policy = RetryPolicy(prefix, backoff_seconds=1.0, backoff_max_seconds=cap, retry_seconds=600.0, max_retries=None)
        delays = [policy.delay(failures, random.Random(failures)) for failures in range(60)]
        assert max(delays) <= cap and delays[-1] == cap
        assert delays[0] < 2.0  # it still starts short


@pytest.mark.parametrize("route", ["vllm", "external"])
def test_a_stop_ends_a_retry_wait_within_a_second(forwarding, route):
    down = forwarding(fail_first=10**9)
    if route == "vllm":
        settings = Settings(vllm_base_url=down.url, vllm_backoff_seconds=60.0, vllm_backoff_max_seconds=60.0)
        api = ModelAPI(settings=settings, deterministic=True)
    else:
        settings = Settings(llama_api_base=down.url, api_backoff_seconds=60.0, api_backoff_max_seconds=60.0)
        api = ModelAPI("SmolLM2-135M-Instruct.Q4_1", settings=settings)
    timer = threading.Timer(1.0, ask_to_stop)
    started = time.monotonic()
    timer.start()
    try:
        with api, pytest.raises(WaitInterrupted):
            api.next_token_logprobs(["1, 2, 3,"])
    finally:
        timer.cancel()
        clear_stop()
    assert time.monotonic() - started < 1.0 + 1.5  # the stop came at 1 s; the wait it cut was up to 90 s
    assert len(down.completions()) == 1


def http_run(out: Path, K: int = 8) -> list[str]:
    return [*RUN, "--K", str(K), "--output-dir", str(out)]


def test_sigterm_during_a_retry_wait_stops_the_run_at_once_and_it_resumes_to_the_same_result(forwarding, tmp_path,
                                                                                           capsys):
    server = forwarding()
    env = dict(VLLM_BASE_URL=server.url)
    baseline = icm(*http_run(tmp_path / "baseline"), **env)
    assert baseline.returncode == 0, baseline.stderr
    out, err = tmp_path / "run", tmp_path / "run.err"
    run = start_icm(*http_run(out), stderr_file=err, VLLM_BACKOFF_SECONDS="60",
                    VLLM_BACKOFF_MAX_SECONDS="60", VLLM_RETRY_SECONDS="600", **env)
    try:
        wait_for(lambda: logged_lines(out) >= 2, run, "two iterations")
        server.fail_first = 10**9  # every completion from now on fails: the run waits to retry
        wait_for(lambda: "is not answering" in err.read_text(), run, "the retry note")
        stopped_at = time.monotonic()
        run.send_signal(signal.SIGTERM)
        assert run.wait(30) == 128 + signal.SIGTERM
        assert time.monotonic() - stopped_at < 5.0, "SIGTERM waited for the retry backoff (up to 60 s)"
    finally:
        if run.poll() is None:
            run.kill()
    stderr = err.read_text()
    assert "keeping the labels found so far; resume with --resume" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_early"] == "stopped by SIGTERM" and summary["iterations"] < 8
    capsys.readouterr()
    code, stderr = call(export_labels, [out, "--format", "hf"], capsys)
    assert code == 0 and "these are its partial labels" in stderr
    server.fail_first = 0
    resumed = icm("--resume", str(out), "--no-progress", **env)
    assert resumed.returncode == 0, resumed.stderr
    assert outcome(out)[:3] == outcome(tmp_path / "baseline")[:3]
    code, stderr = call(export_labels, [out, "--format", "hf"], capsys)
    assert code == 0 and "partial" not in stderr


def test_sigterm_while_waiting_for_the_server_at_start_leaves_nothing_behind(tmp_path):
    out, err = tmp_path / "run", tmp_path / "run.err"
    run = start_icm(*http_run(out), stderr_file=err, VLLM_BASE_URL=closed_port_url(), VLLM_RETRY_SECONDS="600")
    try:
        wait_for(lambda: "is not answering" in err.read_text(), run, "the retry note", seconds=60)
        run.send_signal(signal.SIGTERM)
        assert run.wait(10) == 128 + signal.SIGTERM
    finally:
        if run.poll() is None:
            run.kill()
    assert "keeping the labels" not in err.read_text()  # nothing was kept, so it doesn't say so
    assert not [name for name in OUTPUT_FILES if (out / name).exists()]


def test_the_model_list_probe_at_start_has_a_short_timeout(forwarding, monkeypatch, capsys):
    from core.llm_api import server_probe

    monkeypatch.setattr(server_probe, "PROBE_TIMEOUT_SECONDS", 0.5)
    slow = forwarding(stall_model_list_once=8.0)
    started = time.monotonic()
    settings = Settings(vllm_base_url=slow.url, vllm_timeout_seconds=900.0, vllm_backoff_seconds=0.1)
    with ModelAPI(settings=settings) as api:
        assert api.model
    assert time.monotonic() - started < 5.0  # not the 8 s stall, let alone the 900 s scoring timeout
    assert "did not answer a start-up probe within 0.5 s" in capsys.readouterr().err


# -- a failed start blocks nothing ----------------------------------------------------------------------------

def test_a_failed_start_leaves_nothing_that_blocks_the_same_command(local_server, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    flags = [*RUN, "--K", "2", "--output-dir", str(out)]
    monkeypatch.setenv("VLLM_BASE_URL", closed_port_url())
    monkeypatch.setenv("VLLM_RETRY_SECONDS", "0")
    code, stderr = call(ICM, flags, capsys)
    assert code == 2 and len(error_lines(stderr)) == 1
    assert not [name for name in OUTPUT_FILES if (out / name).exists()]
    monkeypatch.delenv("VLLM_RETRY_SECONDS")
    again = icm(*flags, VLLM_BASE_URL=local_server)
    assert again.returncode == 0, again.stderr


def test_after_a_context_overflow_the_advised_smaller_batch_starts_in_the_same_directory(local_server, tmp_path):
    long_text = " ".join(f"word{i}" for i in range(200))  # about 600 tokens: four claims overflow a 2048 context
    records = [{"question": long_text, "choice": f"choice {i}", "consistency_id": i // 2} for i in range(8)]
    data = tmp_path / "long.json"
    data.write_text(json.dumps(records))
    out = tmp_path / "run"
    common = ["--testbed", "custom", "--data", str(data), "--K", "1", "--no-progress", "--output-dir", str(out)]
    overflow = icm(*common, "--batch_size", "4", "--num_seed", "4", VLLM_BASE_URL=local_server)
    assert overflow.returncode == 2
    assert "Lower --batch_size" in error_lines(overflow.stderr)[0]
    smaller = icm(*common, "--batch_size", "2", "--num_seed", "2", VLLM_BASE_URL=local_server)
    assert smaller.returncode == 0, smaller.stderr


@pytest.mark.model
def test_a_run_killed_during_its_first_scoring_is_replaced_by_the_same_command(tmp_path):
    out = tmp_path / "run"
    killed = icm(*RUN, "--K", "2", "--output-dir", str(out), ICM_CRASH_AT="batch:1")
    assert killed.returncode == -9 and (out / "run.json").exists() and not (out / "checkpoint.json").exists()
    again = icm(*RUN, "--K", "2", "--output-dir", str(out))
    assert again.returncode == 0, again.stderr
    assert "never finished its first scoring" in again.stderr


# -- writes that fail -----------------------------------------------------------------------------------------

def test_a_full_disk_stops_with_the_checkpoint_intact_and_the_run_resumes_exactly(uninterrupted, tmp_path):
    out = tmp_path / "run"
    full = icm(*RUN, "--output-dir", str(out), ICM_CRASH_AT="checkpoint-write:4:ENOSPC")
    assert full.returncode == 2
    [line] = error_lines(full.stderr)
    assert "No space left on device" in line and f"resume with --resume {out}" in line
    saved = int(re.search(r"checkpoint.json is intact at iteration (\d+)", line).group(1))
    assert json.loads((out / "checkpoint.json").read_text())["iteration"] == saved
    assert "No space left on device" in json.loads((out / "summary.json").read_text())["stopped_early"]
    resumed = icm("--resume", str(out), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert outcome(out) == outcome(uninterrupted)


def mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"this machine can't mount a small file system for the test: {mounted.stderr.strip()}")


def fill(folder: Path) -> None:
    """Take every free byte of the file system ``folder`` is on."""
    with (folder / "filler").open("wb", buffering=0) as filler:
        for size in (65536, 4096, 1):
            try:
                while True:
                    filler.write(b"\0" * size)
            except OSError:
                pass


def make_unwritable(folder: Path) -> None:
    """No new file in ``folder`` from now on (the files already open stay writable, as after a permission change)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("this machine can't make a folder immutable for the test (chattr +i)")


def make_writable(folder: Path) -> None:
    if os.geteuid() != 0:
        folder.chmod(0o755)
    else:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.mark.parametrize("fault", ["disk full", "made unwritable"])
def test_a_real_write_failure_mid_run_stops_cleanly_and_the_run_resumes_exactly(uninterrupted, tmp_path, fault):
    disk = tmp_path / "disk"
    if fault == "disk full":
        mount_tmpfs(disk, "4m")
    try:
        out, err = disk / "run", tmp_path / "run.err"
        run = start_icm(*RUN, "--K", "6", "--output-dir", str(out), stderr_file=err)
        try:
            wait_for(lambda: logged_lines(out) >= 1, run, "the first iteration")
            run.send_signal(signal.SIGSTOP)  # the fault comes mid-run, not after the run's last write
            try:
                if fault == "disk full":
                    fill(disk)
                else:
                    make_unwritable(out)
            finally:
                run.send_signal(signal.SIGCONT)
            assert run.wait(300) == 2
        finally:
            if run.poll() is None:
                run.kill()
        [line] = error_lines(err.read_text())
        assert ("No space left on device" in line or "disk is full" in line) if fault == "disk full" else (
            "Operation not permitted" in line or "Permission denied" in line)
        assert "checkpoint.json is intact at iteration" in line and f"--resume {out}" in line
        if fault == "disk full":
            (disk / "filler").unlink()
        else:
            make_writable(out)
        resumed = icm("--resume", str(out), "--no-progress")
        assert resumed.returncode == 0, resumed.stderr
        assert outcome(out) == outcome(uninterrupted)
    finally:
        if fault == "disk full":
            subprocess.run(["umount", str(disk)], capture_output=True)
        elif (disk / "run").exists():
            make_writable(disk / "run")


def read_only_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "readonly"
    if os.geteuid() != 0:
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    mount_tmpfs(folder, "64k")
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    return folder


def test_a_read_only_output_dir_is_refused_before_any_work(tmp_path, capsys):
    folder = read_only_folder(tmp_path)
    try:
        code, stderr = call(ICM, [*RUN, "--output-dir", folder / "run"], capsys)
        assert code == 2
        [line] = error_lines(stderr)
        assert f"{folder / 'run'} can't hold the run" in line and "Choose a directory you can write" in line
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


# -- secrets ---------------------------------------------------------------------------------------------------

def test_credentials_in_a_server_url_reach_no_message_and_no_file(forwarding, tmp_path):
    server = forwarding()
    url = server.url.replace("http://", "http://alice:pa55word@")
    out, err = tmp_path / "run", tmp_path / "run.err"
    run = start_icm(*http_run(out, K=30), stderr_file=err, VLLM_BASE_URL=url, VLLM_MAX_RETRIES="1",
                    VLLM_BACKOFF_SECONDS="0.05")
    try:
        wait_for(lambda: logged_lines(out) >= 1, run, "the first iteration")
        server.fail_first = 10**9
        assert run.wait(300) == 2
    finally:
        if run.poll() is None:
            run.kill()
    stderr = err.read_text()
    assert error_lines(stderr) and server.url in stderr and "pa55word" not in stderr and "alice" not in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["endpoint"] == server.url and "answered 503" in summary["stopped_early"]
    assert all(b"pa55word" not in path.read_bytes() for path in out.iterdir() if path.is_file())
    unreachable = icm(*http_run(tmp_path / "other", K=1), VLLM_BASE_URL=closed_port_url().replace("//", "//bob:s3cret@"),
                      VLLM_RETRY_SECONDS="0")
    assert unreachable.returncode == 2 and "cannot connect" in unreachable.stderr and "s3cret" not in unreachable.stderr


def test_a_settings_file_with_a_key_that_others_can_read_is_warned_about(tmp_path, capsys):
    secrets = tmp_path / "SECRETS"
    secrets.write_text("API_KEY=sk-private-77\n")
    secrets.chmod(0o644)
    assert load_settings(secrets).api_key == "sk-private-77"
    warning = capsys.readouterr().err
    assert f"chmod 600 {secrets}" in warning and "API_KEY" in warning and "sk-private-77" not in warning
    secrets.chmod(0o600)
    load_settings(secrets)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("url_name, key_name", [("VLLM_BASE_URL", "VLLM_API_KEY"), ("LLAMA_API_BASE", "API_KEY")])
def test_a_url_with_credentials_and_a_key_is_refused_at_start_without_showing_either(url_name, key_name, tmp_path,
                                                                                   monkeypatch):
    # Both become the Authorization header; aiohttp refused the pair at the first request, with a traceback.
    secrets = tmp_path / "SECRETS"
    secrets.write_text(f"{url_name}=http://u:pw-77@127.0.0.1:9\n{key_name}=sk-key-77\n")
    secrets.chmod(0o600)
    with pytest.raises(SettingsError) as refused:
        load_settings(secrets)
    message = str(refused.value)
    assert f"holds a user:password@ and {key_name} is set too" in message
    assert "pw-77" not in message and "sk-key-77" not in message
    secrets.write_text(f"{url_name}=http://u:pw-77@127.0.0.1:9\n")
    assert load_settings(secrets) is not None  # the URL's credentials alone are fine
