"""Locks on files: the embedded ledger's write lock and run lock, and whether a process lives.

``flock`` locks belong to an open file, so two opens of one lock file in one
process would not exclude each other: each lock file has one ``FileLock`` per
process (``lock_for``), re-entrant, with threads taking turns.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from poisonguard.errors import StoreError


class FileLock:
    """An exclusive lock on a file, re-entrant within the process (threads take turns)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mutex = threading.RLock()
        self.depth = 0
        self.fd: int | None = None

    @contextlib.contextmanager
    def held(self, wait: float, what: str) -> Iterator[bool]:
        """Hold the lock; yields True when this is the outermost hold."""
        deadline = time.monotonic() + wait
        if not self.mutex.acquire(timeout=max(wait, 0.0)):
            raise StoreError(f"{what} is busy in this process; gave up after {wait:.0f} s")
        try:
            if self.depth == 0:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            os.close(fd)
                            raise StoreError(
                                f"{what} is busy: another poisonguard process is changing it "
                                f"(waited {wait:.0f} s); try again"
                            ) from None
                        time.sleep(0.05)
                self.fd = fd
            self.depth += 1
            try:
                yield self.depth == 1
            finally:
                self.depth -= 1
                if self.depth == 0 and self.fd is not None:
                    fcntl.flock(self.fd, fcntl.LOCK_UN)
                    os.close(self.fd)
                    self.fd = None
        finally:
            self.mutex.release()


_LOCKS: dict[str, FileLock] = {}
_LOCKS_GUARD = threading.Lock()


def lock_for(path: Path) -> FileLock:
    """The process's one lock on ``path``."""
    key = str(path.resolve())
    with _LOCKS_GUARD:
        if key not in _LOCKS:
            _LOCKS[key] = FileLock(path)
        return _LOCKS[key]


@contextlib.contextmanager
def run_lock(path: Path) -> Iterator[None]:
    """Hold ``path``'s lock for one run, or fail at once when another process holds it.

    Raises
    ------
    StoreError
        When another process holds the lock.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise StoreError(f"another poisonguard run holds {path}") from exc
        yield
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
