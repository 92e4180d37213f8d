"""Bytes on disk: atomic writes, Parquet tables, file hashes, the store's data files, and the
kill tests' crash points.

Every file poisonguard writes locally goes through :func:`atomic_write_bytes` (a
temporary name in the same folder, fsync, rename, fsync of the folder), so a reader
sees the old file or the whole new one, never half of one. Tables are Parquet
without the pandas index (:func:`parquet_bytes`, :func:`write_table`,
:func:`read_parquet`). The files the ledger lists and the audit anchor live where
:class:`DataFiles` says: a local folder, or any fsspec filesystem.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import pickle
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from poisonguard.errors import GateError, StoreError

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


#: The modes of every file and folder the store creates: owner-only.
FILE_MODE = 0o600
FOLDER_MODE = 0o700


def make_private_dirs(path: Path) -> None:
    """Make a folder and any missing parent, each owner-only (0700) from the moment it exists.

    ``Path.mkdir(parents=True, mode=...)`` gives the parents it makes the umask's
    mode, not ``mode``; each missing level is made here with ``FOLDER_MODE``, which a
    umask can only narrow, then set to exactly ``FOLDER_MODE`` while still empty.
    Folders that already exist are left as they are.
    """
    path = Path(path)
    missing = []
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, FOLDER_MODE)
        except FileExistsError:
            if not folder.is_dir():
                raise
            continue  # another process made it meanwhile
        os.chmod(folder, FOLDER_MODE)


def create_private(path: Path, *, exclusive: bool = False) -> int:
    """Open ``path`` for writing, created owner-only (0600) if it is new; the descriptor.

    An existing file is truncated (its mode kept), or, with ``exclusive``, an error
    (``FileExistsError``).
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), FILE_MODE)


def write_private(path: Path, data: bytes) -> None:
    """Write a small file in place, owner-only from its creation (a staging folder's
    marker: not atomic, see ``atomic_write_bytes`` for that)."""
    with os.fdopen(create_private(Path(path)), "wb") as f:
        f.write(data)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 0600) so that readers see the old file or the whole new one.

    Folders it makes are owner-only (``make_private_dirs``); the temporary file is
    created 0600 (``tempfile.mkstemp``), so the bytes are never readable by others.
    """
    path = Path(path)
    make_private_dirs(path.parent)
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
    make_private_dirs(path.parent)
    fd = create_private(path, exclusive=True)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def copy_private_tree(root: Path, dest: Path, skip: tuple[str, ...] = ()) -> None:
    """Copy a folder's tree byte for byte, every folder and file owner-only from its creation
    (``shutil.copytree`` makes them with the umask's mode first); names matching ``skip``
    (glob patterns) are left out, at any depth."""
    ignore = shutil.ignore_patterns(*skip)
    make_private_dirs(dest)
    for folder, subfolders, names in os.walk(root):
        here = Path(folder)
        left_out = ignore(folder, [*subfolders, *names])
        subfolders[:] = [d for d in subfolders if d not in left_out]
        target = dest / here.relative_to(root)
        make_private_dirs(target)
        for name in names:
            if name in left_out:
                continue
            with (
                open(here / name, "rb") as src,
                os.fdopen(create_private(target / name), "wb") as out,
            ):
                shutil.copyfileobj(src, out)


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


# --------------------------------------------------------------------------- the data files


class DataFiles:
    """Where a store's data files live: the folders the ledger lists (``clean/``,
    ``quarantine/``, ``rejected/``) and the audit anchor, in a local folder or on any
    filesystem fsspec reaches. Paths given to its methods are relative (``clean/b1.parquet``).

    Parameters
    ----------
    url : str or Path
        A folder, or an fsspec URL: ``file://`` (what a bare path means),
        ``memory://`` (tests), ``s3://``, ``gs://``, ``abfs://``... (with that
        filesystem's fsspec package installed: s3fs, gcsfs, adlfs).

    Notes
    -----
    What a write guarantees a reader, by where the files live:

    a local folder (``file://``, an NFS or SMB mount too)
        :func:`atomic_write_bytes`: a temporary name in the same folder, fsync,
        rename, fsync of the folder. A reader sees the old file or the whole new
        one; on NFS the rename is atomic on the server, and close-to-open
        consistency shows other hosts the whole file once renamed. Reads go to
        pyarrow's own reader, and links are never followed (a link where a file
        should be is reported, never read).
    an object store (S3, GCS, Azure Blob)
        One PUT per file (fsspec's ``pipe_file``, ``put_file``): an object appears
        whole or not at all. Object stores have no rename (a copy and a delete are
        not atomic), so none is used. S3, GCS and Azure Blob show a write to every
        reader at once (strong read-after-write consistency).
    ``memory://``
        A dict in this process: whole values, and only this process sees them.
    any other fsspec filesystem
        One ``pipe_file``, as atomic as that filesystem makes it.

    On every one, a file is written before the ledger lists it, its hash is in
    the ledger, and the gate reads only bytes whose hash matches: a reader that
    caught a file half-written would be refused, never fed.
    """

    def __init__(self, url: str | Path) -> None:
        self.url = str(url)
        try:
            self.fs, root = fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as exc:
            raise StoreError(
                f"the store's data location {self.url} cannot be opened: {exc}"
            ) from exc
        self.root = root.rstrip("/")
        #: The folder, when the files are local (the store's own atomic writes and reads).
        self.local: Path | None = Path(root) if isinstance(self.fs, LocalFileSystem) else None

    def where(self, rel: str = "") -> Path | str:
        """A file's place as messages name it: its local path, or its URL."""
        if self.local is not None:
            return self.local / rel if rel else self.local
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return f"{protocol}://{self._path(rel).lstrip('/')}"

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def makedirs(self, rel: str) -> None:
        """Make a folder (owner-only when local; object stores have none to make)."""
        if self.local is not None:
            make_private_dirs(self.local / rel)
        else:
            self.fs.makedirs(self._path(rel), exist_ok=True)

    def write(self, rel: str, data: bytes) -> None:
        """Write a whole file, as atomically as the filesystem allows (see the class notes)."""
        if self.local is not None:
            atomic_write_bytes(self.local / rel, data)
        else:
            self.fs.pipe_file(self._path(rel), data)

    def move_in(self, source: Path, rel: str) -> None:
        """Move a local file in (a rename when it can be one, else a whole copy, then the
        source is removed)."""
        if self.local is not None:
            dest = self.local / rel
            make_private_dirs(dest.parent)
            try:
                os.replace(source, dest)
                _fsync_dir(dest.parent)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                atomic_write_bytes(dest, source.read_bytes())
        else:
            self.fs.put_file(str(source), self._path(rel))
        source.unlink(missing_ok=True)

    def read_bytes(self, rel: str) -> bytes:
        if self.local is not None:
            return (self.local / rel).read_bytes()
        return bytes(self.fs.cat_file(self._path(rel)))

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def read_table(self, rel: str, columns: list[str] | None = None) -> pd.DataFrame:
        """A Parquet file as a frame."""
        if self.local is not None:
            return read_parquet(self.local / rel, columns)
        return pq.read_table(self._path(rel), columns=columns, filesystem=self.fs).to_pandas()

    def is_file(self, rel: str) -> bool:
        """Whether a file is there (locally, following a link)."""
        if self.local is not None:
            return (self.local / rel).is_file()
        return bool(self.fs.isfile(self._path(rel)))

    def is_link(self, rel: str) -> bool:
        """Whether a link is there (only local folders have them)."""
        return self.local is not None and (self.local / rel).is_symlink()

    def exists(self, rel: str) -> bool:
        if self.local is not None:
            return (self.local / rel).exists()
        return bool(self.fs.exists(self._path(rel)))

    def sha256(self, rel: str) -> str:
        """Hex SHA-256 of a file's bytes."""
        if self.local is not None:
            return sha256_file(self.local / rel)
        h = hashlib.sha256()
        with self.fs.open(self._path(rel), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    def verified_row_groups(self, rel: str, sha256: str) -> Iterator[pd.DataFrame]:
        """A Parquet file a row group at a time, read through one open handle whose bytes
        were first hashed (streamed) and found to be ``sha256``: one row group is held at
        once, not the file. A local file written to in place while it is read (its size or
        modification time changed) fails too.

        Raises
        ------
        GateError
            When the bytes are not those, or the file changed while it was read.
        """
        changed = GateError([f"{rel}: changed while the training set was read"])
        with (
            self.local.joinpath(rel).open("rb")
            if self.local is not None
            else self.fs.open(self._path(rel), "rb") as handle
        ):
            digest = hashlib.sha256()
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
            if digest.hexdigest() != sha256:
                raise changed
            before = _stamp(handle)
            handle.seek(0)
            parquet = pq.ParquetFile(handle)
            for index in range(parquet.num_row_groups):
                yield parquet.read_row_group(index).to_pandas()
            if _stamp(handle) != before:
                raise changed

    def _parquet(self, rel: str) -> pq.ParquetFile:
        if self.local is not None:
            return pq.ParquetFile(self.local / rel)
        return pq.ParquetFile(self._path(rel), filesystem=self.fs)

    def rows(self, rel: str) -> int:
        """A Parquet file's row count, from its footer."""
        return int(self._parquet(rel).metadata.num_rows)

    def columns(self, rel: str) -> list[str]:
        """A Parquet file's column names, from its footer."""
        return list(self._parquet(rel).schema_arrow.names)

    def find(self, folder: str) -> list[str]:
        """Every entry below a folder that is not a folder (locally, links count as entries,
        even to folders), as relative paths, sorted."""
        if self.local is not None:
            base = self.local / folder
            found = [
                p.relative_to(self.local).as_posix()
                for p in base.rglob("*")
                if p.is_symlink() or not p.is_dir()
            ]
            return sorted(found)
        if not self.fs.exists(self._path(folder)):
            return []
        prefix = self.root + "/"
        names = self.fs.find(self._path(folder), withdirs=False)
        return sorted(str(n)[len(prefix) :] for n in names if str(n).startswith(prefix))

    def remove(self, rel: str) -> None:
        """Remove a file, if it is there."""
        if self.local is not None:
            (self.local / rel).unlink(missing_ok=True)
        elif self.fs.exists(self._path(rel)):
            self.fs.rm_file(self._path(rel))

    def remove_tree(self, rel: str) -> None:
        """Remove a folder and everything in it, if it is there."""
        if self.local is not None:
            shutil.rmtree(self.local / rel, ignore_errors=True)
        elif self.fs.exists(self._path(rel)):
            self.fs.rm(self._path(rel), recursive=True)

    def temporaries(self, folder: str) -> list[str]:
        """Temporary files interrupted local writes left in a folder (none elsewhere: an
        object store's write leaves nothing half-made)."""
        if self.local is None:
            return []
        return sorted(
            p.relative_to(self.local).as_posix() for p in (self.local / folder).glob(".*.tmp")
        )


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
        make_private_dirs(self.path.parent)
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


def _stamp(handle: object) -> tuple[int, int] | None:
    """A local file's size and modification time (None for a remote handle)."""
    try:
        info = os.fstat(handle.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None
    return info.st_size, info.st_mtime_ns


def read_row_group(path: str | Path, index: int, columns: list[str] | None = None) -> pd.DataFrame:
    """Row group ``index`` of a Parquet file, as a frame (a cluster's worker reads its part of
    a staged batch by path)."""
    return pq.ParquetFile(path).read_row_group(index, columns=columns).to_pandas()


def share_value(value: Any, folder: Path | None) -> tuple[str, str]:
    """``value`` pickled into a new owner-only file in ``folder`` (a staged batch's folder,
    which a commit or ``staging.recover`` removes), for a cluster's workers to load with
    ``load_shared``; its path and its bytes' sha256."""
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    fd, path = tempfile.mkstemp(prefix=".shared-", suffix=".pickle", dir=folder)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path, hashlib.sha256(data).hexdigest()


def load_shared(path: str, digest: str) -> Any:
    """The value ``share_value`` wrote to ``path``, once its bytes are the ones it wrote."""
    data = Path(path).read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise StoreError(f"{path}: the shared file changed after it was written")
    return pickle.loads(data)  # written by this process's batch; its digest checked above


def drop_shared(paths: Iterable[str]) -> None:
    """Remove files ``share_value`` wrote."""
    for path in paths:
        Path(path).unlink(missing_ok=True)


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
