"""One process per output directory: an exclusive lock held for the run's whole life.

Two runs writing one directory would interleave their log lines and delete each other's temporary files.
The lock is ``flock`` on the run's lock file (RunDirectory.lock_file): the kernel drops it when its process dies, however it dies, so a
lock left by a killed run never blocks a resume. The file holds the owner's process id, for the message a
second process prints.
"""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Optional

from core.errors import UserError


class OutputDirLocked(UserError):
    def __init__(self, message: str, holder: str = "unknown") -> None:
        super().__init__(message)
        self.holder = holder  # the process id written in the lock file, or "unknown"


class OutputDirUnusable(UserError):
    pass


class RunLock:
    """Take it with RunDirectory(out).lock(): ``out`` is the folder (made if missing), ``path`` its lock file."""

    def __init__(self, out: Path, path: Path) -> None:
        self.out = out
        self.path = path
        self._fd: Optional[int] = None
        self._made_dir = False

    def __enter__(self) -> "RunLock":
        self._made_dir = not self.out.exists()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self._lock()
        except OSError as exc:
            if self._made_dir:
                self._remove_dir()
            raise OutputDirUnusable(f"{self.out} can't hold the run: {exc.strerror or exc}"
                                    f"{f' ({exc.filename})' if exc.filename and str(exc.filename) != str(self.out) else ''}. "
                                    "Choose a directory you can write (--output-dir)") from None
        return self

    def _lock(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                holder = self._holder()
                raise OutputDirLocked(f"{self.out} is in use by another ICM run (process {holder}): wait for it "
                                      "to finish or stop it, or choose another --output-dir", holder) from None
            # The holder before us may have removed the file as it let go; a lock on a removed file guards nothing.
            if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                break
            os.close(fd)
        self._fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())

    def _remove_dir(self) -> None:
        try:
            self.out.rmdir()  # a run that failed before writing anything leaves no empty folder behind
        except OSError:
            pass

    def _holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def __exit__(self, *exc: object) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # before letting go, so no one locks a file about to vanish
        except OSError:
            pass  # a folder that became unwritable keeps the file; an unlocked file blocks no one
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
        if self._made_dir:
            self._remove_dir()
