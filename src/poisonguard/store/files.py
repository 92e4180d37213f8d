"""Bytes on disk: atomic writes, Parquet tables, file hashes, and the kill tests' crash points.

Every file poisonguard writes goes through :func:`atomic_write_bytes` (a temporary
name in the same folder, fsync, rename, fsync of the folder), so a reader sees the
old file or the whole new one, never half of one. Tables are Parquet without the
pandas index (:func:`parquet_bytes`, :func:`write_table`, :func:`read_parquet`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

#: Fault injection for the kill-and-rerun tests: ``POISONGUARD_CRASH_AT=<point>[:<n>]``
#: makes the process kill itself (SIGKILL, no clean-up) the n-th time (default
#: the first) it reaches that point.
CRASH_ENV = "POISONGUARD_CRASH_AT"
_crash_counts: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Die here, as a killed process would, when the environment asks for it."""
    want = os.environ.get(CRASH_ENV)
    if not want or want.split(":")[0] != name:
        return
    _crash_counts[name] = _crash_counts.get(name, 0) + 1
    nth = int(want.split(":")[1]) if ":" in want else 1
    if _crash_counts[name] == nth:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def now() -> str:
    """The current UTC time as an ISO-8601 string, as the ledger stores it."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_disk_full(exc: BaseException) -> bool:
    """True for the OSError a full disk raises."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


# --------------------------------------------------------------------------- atomic writes


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 0600) so that readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_new_key(path: Path) -> None:
    """Create an audit key file: 32 random bytes as hex, owner-only; an existing file is an error.

    Raises
    ------
    FileExistsError
        When ``path`` exists (a key is never overwritten).
    """
    write_new_secret(path, (secrets.token_hex(32) + "\n").encode())


def write_new_secret(path: Path, data: bytes) -> None:
    """Create ``path`` owner-only (0600) holding ``data``; an existing file is an error.

    Raises
    ------
    FileExistsError
        When ``path`` exists (a secret is never overwritten).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def temporary_folder(prefix: str) -> Iterator[Path]:
    """A private folder that is removed with everything in it when the block ends."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


# --------------------------------------------------------------------------- Parquet tables


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """A frame as Parquet bytes, without the pandas index."""
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    return bytes(sink.getvalue().to_pybytes())


def write_table(path: Path, frame: pd.DataFrame) -> None:
    """Write a frame as a Parquet file, atomically (``atomic_write_bytes``)."""
    atomic_write_bytes(path, parquet_bytes(frame))


def read_parquet(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """A Parquet file poisonguard wrote (staging or store), as a frame."""
    return pq.read_table(path, columns=columns).to_pandas()


def table_from_bytes(data: bytes) -> pd.DataFrame:
    """Parquet bytes already in memory (and already checked) as a frame."""
    return pq.read_table(pa.BufferReader(data)).to_pandas()


def parquet_rows(path: Path) -> int:
    """A Parquet file's row count, from its footer."""
    return int(pq.ParquetFile(path).metadata.num_rows)


def parquet_columns(path: Path) -> list[str]:
    """A Parquet file's column names, from its footer."""
    return list(pq.read_schema(path).names)
