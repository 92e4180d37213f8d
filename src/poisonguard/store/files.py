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
from collections.abc import Iterable, Iterator
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


class RowGroupWriter:
    """A Parquet file written a row group at a time, atomically: the rows go to a temporary
    file beside ``path`` (``.<name>.<random>.tmp``, which ``staging.recover`` removes when a
    process dies), which ``close`` fsyncs and renames; ``abort`` removes it.

    Every table written is cast to the schema of the first (or to ``schema``), so that a
    chunk whose column holds no values keeps the column's type.

    Use as a context manager: the file is renamed into place when the block ends without
    an error, and removed when it raises.
    """

    def __init__(self, path: Path, schema: pa.Schema | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name[:100]}.", suffix=".tmp", dir=self.path.parent
        )
        os.close(fd)
        self.tmp = Path(tmp)
        self.schema = schema
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None

    def write(self, rows: pd.DataFrame | pa.Table) -> None:
        """Append ``rows`` as one row group (or several, past pyarrow's row-group size)."""
        if isinstance(rows, pd.DataFrame):
            table = pa.Table.from_pandas(rows, schema=self.schema, preserve_index=False)
        else:
            table = rows if self.schema is None else rows.cast(self.schema)
        if self._writer is None:
            self.schema = table.schema
            self._writer = pq.ParquetWriter(self.tmp, table.schema)
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> Path:
        """Finish the file (an empty one when nothing was written needs ``schema``) and
        rename it into place; its path."""
        if self._writer is None:
            if self.schema is None:
                raise ValueError(f"{self.path}: nothing written and no schema to write")
            self._writer = pq.ParquetWriter(self.tmp, self.schema)
        self._writer.close()
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)
        _fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        """Remove the temporary file."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> RowGroupWriter:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def row_groups(path: Path, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """A Parquet file's row groups in order, one Arrow table each."""
    file = pq.ParquetFile(path)
    for i in range(file.metadata.num_row_groups):
        yield file.read_row_group(i, columns=columns)


def row_group_sizes(path: Path) -> list[int]:
    """The number of rows of each of a Parquet file's row groups, from its footer."""
    meta = pq.ParquetFile(path).metadata
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def stream_files(
    root: Path,
    name: str,
    parts: Iterable[tuple[pa.Table, pa.Table]],
    schemas: tuple[pa.Schema, pa.Schema],
) -> list[tuple[str, str, int | None]]:
    """Write ``clean/<name>.parquet`` and ``quarantine/<name>.parquet`` under ``root`` a chunk
    at a time (``parts``: one (clean rows, held rows) pair per chunk, row groups of the
    two files), each atomically (``RowGroupWriter``); (path, sha256, rows) of each.

    A process killed between row groups (crash point ``between-row-groups``) leaves
    only temporary files, which ``staging.recover`` removes.
    """
    kinds = ("clean", "quarantine")
    writers = [
        RowGroupWriter(root / kind / f"{name}.parquet", s)
        for kind, s in zip(kinds, schemas, strict=True)
    ]
    try:
        for i, pair in enumerate(parts):
            if i:
                crash_point("between-row-groups")
            for writer, rows in zip(writers, pair, strict=True):
                if rows.num_rows:
                    writer.write(rows)
        written: list[tuple[str, str, int | None]] = []
        for kind, writer in zip(kinds, writers, strict=True):
            path = writer.close()
            written.append((f"{kind}/{name}.parquet", sha256_file(path), writer.rows))
            crash_point(f"after-{kind}-file")
        return written
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
