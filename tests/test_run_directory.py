"""The run directory's one owner (src/run_directory/run_directory.py): every file a run leaves is one it names,
its writes are atomic and follow the umask, a crash or failure at the write's seam leaves the old file, and the
lock keeps a second process out. Model-free and in-process: whole runs go through ICM.main on the stand-in
route (tests/stand_in_pipeline.py)."""
import errno
import json
import os
import signal
from collections import Counter

import pytest

from core import crash_points
from src.experiments import ICM
from src.run_directory.run_directory import (
    CHECKPOINT_FILE,
    LABELS_FILE,
    LOG_FILE,
    RUN_FILE,
    RUN_OWN_FILES,
    SUMMARY_FILE,
    RunDirectory,
    atomic_path,
    write_atomically,
)
from src.run_directory.run_lock import OutputDirLocked
from tests.stand_in_pipeline import use_stand_in

RUN = ["--testbed", "demo", "--batch_size", "8", "--num_seed", "2", "--no-progress"]


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    monkeypatch.delenv("ICM_CRASH_AT", raising=False)
    return use_stand_in(monkeypatch, tmp_path)


def icm(capsys, *argv) -> tuple[int, str]:
    code = ICM.main([*RUN, *argv])
    return code, capsys.readouterr().err


@pytest.fixture
def umask():
    """Set the process's umask for one test, and put the old one back."""
    old = os.umask(0o022)
    os.umask(old)

    def set_to(mask: int) -> int:
        os.umask(mask)
        return mask

    yield set_to
    os.umask(old)


# -- the names ----------------------------------------------------------------------------------------------------

def test_the_class_names_every_file_of_a_run(tmp_path):
    files = RunDirectory(tmp_path)
    named = {
        files.run_file: "run.json", files.checkpoint_file: "checkpoint.json", files.log_file: "log.jsonl",
        files.labels_file: "labels.jsonl", files.summary_file: "summary.json", files.cache_file: "responses.sqlite",
        files.lock_file: ".lock", files.eval_file: "eval.json", files.eval_figure: "eval.png",
        files.progress_figure: "progress.png", files.export_file("sft"): "export_sft.jsonl",
    }
    assert {path: path.name for path in named} == named and all(path.parent == tmp_path for path in named)
    assert [p.name for p in files.own_files()] == list(RUN_OWN_FILES)
    assert set(RUN_OWN_FILES) == {"run.json", "checkpoint.json", "log.jsonl", "labels.jsonl", "summary.json",
                                  "responses.sqlite"}


def test_everything_a_run_and_its_resume_leave_is_a_file_the_class_names(stand_in, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = icm(capsys, "--K", "2", "--output-dir", str(out))
    assert code == 0, err
    code, err = icm(capsys, "--resume", str(out), "--K", "3")  # the resume rewrites run.json for the new K
    assert code == 0, err
    files = RunDirectory(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p.name for p in (files.run_file, files.checkpoint_file, files.log_file, files.labels_file, files.summary_file))
    assert json.loads(files.run_file.read_text())["settings"]["K"] == 3
    assert f"wrote {out}/{LABELS_FILE}, {LOG_FILE}, {SUMMARY_FILE}" in err


# -- atomic writes ------------------------------------------------------------------------------------------------

def test_a_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    files = RunDirectory(tmp_path)
    files.labels_file.write_text("old\n")
    files.write(files.labels_file, "new ünïcode\n" * 1000)
    assert files.labels_file.read_text(encoding="utf-8") == "new ünïcode\n" * 1000
    assert [p.name for p in tmp_path.iterdir()] == [LABELS_FILE] and files.temporaries() == []


@pytest.mark.parametrize("fault", ["OSError", "KeyboardInterrupt"])
def test_a_failure_at_the_seam_keeps_the_old_content_and_leaves_no_temporary(tmp_path, fault):
    seen = []

    def fail(path):
        seen.append([p.read_text() for p in RunDirectory(tmp_path).temporaries()])  # the whole new text, not yet renamed
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) if fault == "OSError" else KeyboardInterrupt()

    files = RunDirectory(tmp_path, before_rename=fail)
    files.checkpoint_file.write_text("old")
    with pytest.raises(OSError if fault == "OSError" else KeyboardInterrupt) as raised:
        files.write(files.checkpoint_file, "the new checkpoint")
    assert seen == [["the new checkpoint"]]
    assert files.checkpoint_file.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]
    if fault == "OSError":
        assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(files.checkpoint_file)


def test_a_failing_write_names_the_file_not_its_temporary_and_keeps_the_old_content(tmp_path, monkeypatch):
    files = RunDirectory(tmp_path)
    files.summary_file.write_text("old")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError) as raised:
        files.write(files.summary_file, "new")
    assert raised.value.filename == str(files.summary_file)
    assert files.summary_file.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == [SUMMARY_FILE]


def test_a_process_killed_at_the_seam_leaves_the_old_file_and_a_temporary_that_the_next_holder_removes(tmp_path):
    files = RunDirectory(tmp_path)
    files.run_file.write_text("old")
    child = os.fork()
    if child == 0:  # pragma: no cover - the child is killed before it could report
        try:
            RunDirectory(tmp_path, before_rename=lambda path: os.kill(os.getpid(), signal.SIGKILL)).write(
                files.run_file, "new")
        finally:
            os._exit(1)
    _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert files.run_file.read_text() == "old"
    [leftover] = files.temporaries()
    assert leftover.read_text() == "new" and leftover.name.startswith(f".{RUN_FILE}.")
    with files.lock():
        files.remove_leftover_temporaries()
    assert [p.name for p in tmp_path.iterdir()] == [RUN_FILE]


def test_the_injected_crash_point_fails_the_named_state_write_and_the_checkpoint_stays_intact(stand_in, tmp_path,
                                                                                            capsys, monkeypatch):
    # run.json is the 1st state write, the seeds' checkpoint the 2nd, iteration 0's the 3rd: the 4th fails.
    monkeypatch.setattr(crash_points, "_seen", Counter())
    monkeypatch.setenv("ICM_CRASH_AT", "checkpoint-write:4:ENOSPC")
    out = tmp_path / "run"
    code, err = icm(capsys, "--K", "3", "--output-dir", str(out))
    assert code == 2, err
    assert f"{out}/{CHECKPOINT_FILE} is intact at iteration 1" in err
    files = RunDirectory(out)
    assert json.loads(files.checkpoint_file.read_text())["iteration"] == 1 and files.temporaries() == []
    monkeypatch.delenv("ICM_CRASH_AT")
    code, err = icm(capsys, "--resume", str(out))
    assert code == 0, err
    assert [json.loads(line)["iter"] for line in files.log_file.read_text().splitlines()] == [0, 1, 2]


# -- permissions --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_the_files_a_run_writes_follow_the_umask(stand_in, tmp_path, capsys, umask, mask):
    umask(mask)
    out = tmp_path / "run"
    code, err = icm(capsys, "--K", "1", "--output-dir", str(out))
    assert code == 0, err
    for name in (LABELS_FILE, SUMMARY_FILE, RUN_FILE, CHECKPOINT_FILE, LOG_FILE):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_atomic_writes_and_figures_follow_the_umask(tmp_path, umask):
    mask = umask(0o002)
    write_atomically(tmp_path / "report.json", "{}\n")
    with atomic_path(tmp_path / "figure.png") as temporary:
        temporary.write_bytes(b"png")
    for name in ("report.json", "figure.png"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


# -- the lock -----------------------------------------------------------------------------------------------------

def test_the_lock_keeps_a_second_holder_out_names_the_first_and_goes_when_released(tmp_path):
    out = tmp_path / "run"
    files = RunDirectory(out)
    with files.lock():
        assert files.lock_file.read_text() == f"{os.getpid()}\n"
        with pytest.raises(OutputDirLocked) as second, RunDirectory(out).lock():
            pass
        assert second.value.holder == str(os.getpid())
    assert not files.lock_file.exists() and not out.exists()  # a folder the lock made, and nothing else used, goes
    with RunDirectory(out).lock():
        files.write(files.summary_file, "{}")
    assert [p.name for p in out.iterdir()] == [SUMMARY_FILE]
