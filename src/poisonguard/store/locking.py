"""Locks between processes: the re-entrant write lock both ledgers share, the file locks of
the embedded ledger, and whether a staging folder's owner lives.

``ReentrantLock`` is the write lock's behaviour, whatever holds it between
processes: re-entrant within a process, threads taking turns, a deadline for
another process's hold. ``FileLock`` holds it with ``flock`` on a file beside
the embedded ledger; ``PostgresLedger`` with a PostgreSQL advisory lock.
``flock`` locks belong to an open file, so two opens of one lock file in one
process would not exclude each other: each lock file has one ``FileLock`` per
process (``lock_for``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from poisonguard.errors import StoreError

#: How often a writer waiting for another process's lock tries again, in seconds.
RETRY_SECONDS = 0.05


class ReentrantLock:
    """An exclusive lock between processes, re-entrant within the process (threads take turns).

    Subclasses say how to take the lock between processes without waiting
    (``_try_acquire``) and how to let it go (``_release``).
    """

    def __init__(self) -> None:
        self.mutex = threading.RLock()
        self.depth = 0

    def _try_acquire(self) -> bool:
        """Take the lock between processes if no other process holds it; whether it was taken."""
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def _abandon(self) -> None:
        """Give up after waiting in vain (free what ``_try_acquire`` opened)."""

    @contextlib.contextmanager
    def held(self, wait: float, what: str) -> Iterator[bool]:
        """Hold the lock; yields True when this is the outermost hold.

        Raises
        ------
        StoreError
            When another process holds it for longer than ``wait`` seconds.
        """
        deadline = time.monotonic() + wait
        if not self.mutex.acquire(timeout=max(wait, 0.0)):
            raise StoreError(f"{what} is busy in this process; gave up after {wait:.0f} s")
        try:
            if self.depth == 0:
                while not self._try_acquire():
                    if time.monotonic() >= deadline:
                        self._abandon()
                        raise StoreError(
                            f"{what} is busy: another poisonguard process is changing it "
                            f"(waited {wait:.0f} s); try again"
                        )
                    time.sleep(RETRY_SECONDS)
            self.depth += 1
            try:
                yield self.depth == 1
            finally:
                self.depth -= 1
                if self.depth == 0:
                    self._release()
        finally:
            self.mutex.release()


class FileLock(ReentrantLock):
    """``ReentrantLock`` held with ``flock`` on a file."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.fd: int | None = None

    def _try_acquire(self) -> bool:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _abandon(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        self._abandon()


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


# --------------------------------------------------------------------------- owners of work


def this_owner() -> str:
    """This process as a staging folder's owner: its id and its host's name."""
    return f"{os.getpid()} {socket.gethostname()}"


def owner_alive(owner: str) -> bool | None:
    """Whether the process an owner names (``this_owner``) runs: None when it ran on
    another host, where its process ids mean nothing here. A bare process id (an older
    poisonguard's marker) is a process of this host.

    Raises
    ------
    ValueError
        When ``owner`` names no process.
    """
    pid, _, host = owner.strip().partition(" ")
    if host and host != socket.gethostname():
        return None
    return pid_alive(int(pid))


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
