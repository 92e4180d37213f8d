"""The landing folder on disk: listing it, waiting for files to settle, copying and reading them.

The rules these follow (what is a batch, a source folder, a file still being
written) are ``poisonguard.landing``'s; this module applies them to the folder.
A landed file is opened without following links and copied into the store's
staging area as it is hashed (:func:`snapshot`); the copy is what is read
(:func:`read_batch`), judged and kept.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from poisonguard.errors import BatchError, StoreError, shown
from poisonguard.landing import (
    BATCH_SUFFIXES,
    Entry,
    batch_suffix,
    in_progress,
    is_source_name,
)
from poisonguard.store.files import create_private, make_private_dirs

_CHUNK = 1 << 20


def _skip_reason(name: str, st: os.stat_result) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link: poisonguard reads only regular files and never follows links"
    if stat.S_ISDIR(st.st_mode):
        return "a folder: batches are files in the landing folder or in a source folder in it"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a device, pipe or socket)"
    if batch_suffix(name) is None:
        return (
            "not a batch file: poisonguard reads "
            + ", ".join(BATCH_SUFFIXES[:-1])
            + f" and {BATCH_SUFFIXES[-1]} files"
        )
    return None


def survey(landing: Path) -> list[Entry]:
    """Every entry of the landing folder and of its source folders but in-progress names,
    sorted by name (a source folder's entries are named ``<source>/<file>``).

    A folder whose name is not a source name is skipped, as is any folder inside a
    source folder; a source folder that cannot be listed is skipped with the reason.

    Raises
    ------
    StoreError
        When the landing folder does not exist or cannot be listed.
    """
    try:
        names = sorted(os.listdir(landing))
    except FileNotFoundError:
        raise StoreError(f"landing folder {landing} does not exist") from None
    except OSError as exc:
        raise StoreError(f"landing folder {landing} cannot be listed: {exc.strerror}") from exc
    entries = []
    for name, path, st in _entries(landing, names, ""):
        if stat.S_ISDIR(st.st_mode) and is_source_name(name):
            try:
                inside = sorted(os.listdir(path))
            except OSError as exc:
                reason = f"a source folder that cannot be listed: {exc.strerror}"
                entries.append(Entry(name, path, st.st_size, st.st_mtime_ns, reason))
                continue
            entries.extend(
                Entry(sub, sub_path, sub_st.st_size, sub_st.st_mtime_ns, _skip_reason(sub, sub_st))
                for sub, sub_path, sub_st in _entries(path, inside, f"{name}/")
            )
            continue
        skip = _skip_reason(name, st)
        if stat.S_ISDIR(st.st_mode):
            skip = (
                "a folder whose name is not a source name (letters, digits, '.', '_' and '-', "
                "at most 64, not named like a batch file)"
            )
        entries.append(Entry(name, path, st.st_size, st.st_mtime_ns, skip))
    return sorted(entries, key=lambda e: e.name)


def _entries(folder: Path, names: list[str], prefix: str) -> list[tuple[str, Path, os.stat_result]]:
    """``(prefix + name, path, lstat)`` of each name in ``folder`` but in-progress ones."""
    out = []
    for name in names:
        if in_progress(name):
            continue
        path = folder / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue  # gone between listing and looking: a rename in progress
        out.append((prefix + name, path, st))
    return out


def entry_for(path: str | Path) -> Entry:
    """A file given by path (not found by ``survey``), as a landing entry."""
    path = Path(path)
    st = os.lstat(path)
    return Entry(path.name, path, st.st_size, st.st_mtime_ns)


def settled(
    entries: list[Entry],
    settle_seconds: float,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[list[Entry], list[Entry]]:
    """Split batch files into those whole enough to take and those still changing.

    A file is taken when its size and modification time have not changed for
    ``settle_seconds``. Files modified more recently are looked at again after
    waiting (once, at most ``settle_seconds``); those that changed meanwhile are
    left for a later run.

    Returns
    -------
    (ready, changing) : two lists of Entry
    """
    if settle_seconds <= 0 or not entries:
        return list(entries), []
    now = clock()
    young = [e for e in entries if now - e.mtime_ns / 1e9 < settle_seconds]
    if not young:
        return list(entries), []
    sleep(
        max(0.0, min(settle_seconds, max(settle_seconds - (now - e.mtime_ns / 1e9) for e in young)))
    )
    changing = set()
    for e in young:
        try:
            st = os.lstat(e.path)
        except FileNotFoundError:
            changing.add(e.name)
            continue
        if (st.st_size, st.st_mtime_ns) != (e.size, e.mtime_ns):
            changing.add(e.name)
    return [e for e in entries if e.name not in changing], [
        e for e in entries if e.name in changing
    ]


class Unsettled(Exception):
    """The file changed while it was read; it is left for a later run."""


class Unreadable(Exception):
    """The landed file cannot be opened or read (its own fault, not the store's)."""


def snapshot(entry: Entry, folder: Path) -> tuple[Path, str]:
    """Copy a landed file into ``folder`` while hashing it; the copy and its SHA-256.

    The file is opened without following links and must keep the size and
    modification time ``survey`` saw, before and after the copy.

    Raises
    ------
    Unsettled
        When the file changed (or vanished) since it was surveyed, or while read.
    Unreadable
        When it cannot be opened or read.
    OSError
        When the copy cannot be written (the store's disk, not the file).
    """
    make_private_dirs(folder)
    try:
        fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError as exc:
        raise Unsettled(entry.name) from exc
    except OSError as exc:
        raise Unreadable(exc.strerror or type(exc).__name__) from exc
    h = hashlib.sha256()
    dest = folder / f"landed{batch_suffix(entry.name) or ''}"
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise Unsettled(entry.name)
        if (before.st_size, before.st_mtime_ns) != (entry.size, entry.mtime_ns):
            raise Unsettled(entry.name)
        copied = 0
        out = create_private(dest)
        try:
            while True:
                try:
                    chunk = os.read(fd, _CHUNK)
                except OSError as exc:
                    raise Unreadable(exc.strerror or type(exc).__name__) from exc
                if not chunk:
                    break
                h.update(chunk)
                os.write(out, chunk)
                copied += len(chunk)
            os.fsync(out)
        finally:
            os.close(out)
        after = os.fstat(fd)
        if copied != before.st_size or (after.st_size, after.st_mtime_ns) != (
            before.st_size,
            before.st_mtime_ns,
        ):
            raise Unsettled(entry.name)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    return dest, h.hexdigest()


# ----------------------------------------------------------------------------- reading


def _plain_type(t: pa.DataType) -> pa.DataType | None:
    """The flat type a column is read as, or None when poisonguard cannot use it."""
    if pa.types.is_dictionary(t):
        return _plain_type(t.value_type)
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return pa.float64() if pa.types.is_float16(t) else t
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_timestamp(t):
        return t
    if pa.types.is_date(t):
        return pa.timestamp("ms")
    if pa.types.is_decimal(t):
        return pa.float64()
    if pa.types.is_null(t):
        return pa.float64()
    return None


_KIND_TEXT = "a flat column of numbers, text, booleans, dates or times"


def _flatten(table: pa.Table, source: str) -> pa.Table:
    """Dictionary, date and decimal columns as plain ones; nested or binary ones refused."""
    columns = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        want = _plain_type(column.type)
        if want is None:
            what = (
                "bytes that are not UTF-8 text" if pa.types.is_binary(column.type) else column.type
            )
            raise BatchError(
                source,
                f"column {shown(str(name))!r} holds {what}; expected {_KIND_TEXT}",
                column=str(name),
            )
        if pa.types.is_dictionary(column.type):
            column = pc.cast(column, column.type.value_type)
        if column.type != want:
            try:
                column = pc.cast(column, want)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise BatchError(
                    source,
                    f"column {shown(str(name))!r} of type {column.type} cannot be read as {want} "
                    f"({_first_line(exc)})",
                    column=str(name),
                ) from exc
        columns.append(column)
    return pa.table(columns, names=table.column_names)


def _first_line(exc: BaseException, limit: int = 160) -> str:
    """An error's first line without quoted content (CSV errors quote the offending row)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"(Expected \d+ columns?, got \d+).*", r"\1", text)
    return shown(text, limit)


def _csv_stream(path: Path, suffix: str) -> pa.NativeFile:
    return pa.input_stream(path, compression="gzip" if suffix == ".csv.gz" else None)


def _csv_header(path: Path, suffix: str) -> list[str | None]:
    """A CSV file's column names, or an empty list when even they cannot be read."""
    try:
        with pacsv.open_csv(_csv_stream(path, suffix)) as reader:
            return list(reader.schema.names)
    except (pa.ArrowException, OSError):
        return []


def _kind_of(path: Path, name: str | None) -> tuple[str, str, str]:
    """A batch file's name as shown, its suffix and its kind (``Parquet`` or ``CSV``)."""
    source = shown(name if name is not None else path.name)
    suffix = batch_suffix(name if name is not None else path.name)
    if suffix is None:
        raise BatchError(source, f"unknown file kind; expected one of {', '.join(BATCH_SUFFIXES)}")
    return source, suffix, "Parquet" if suffix in (".parquet", ".pq") else "CSV"


def _unreadable(exc: BaseException, path: Path, suffix: str, source: str, kind: str) -> BatchError:
    """The error of a batch file that cannot be read, naming the CSV column when there is one."""
    what = _first_line(exc)
    at = re.search(r"In CSV column #(\d+)", str(exc))
    column = _csv_header(path, suffix)[int(at.group(1))] if at else None
    if column is not None and at is not None:
        what = what.replace(at.group(0), f"in column {shown(column)!r}")
    return BatchError(source, f"not a readable {kind} file ({what})", column=column)


def read_batch(
    path: Path, *, name: str | None = None, strings: list[str] | None = None
) -> pd.DataFrame:
    """Read a batch file (Parquet or CSV, plain or gzip) into a frame of flat columns.

    Parameters
    ----------
    path : Path
        The file to read (the staged copy of a landed file, or any path).
    name : str, optional
        The name to judge its kind by and show in messages (default ``path.name``).
    strings : list of str, optional
        Columns a CSV reader must keep as text (CSV has no types: a column of zip
        codes would otherwise arrive as integers).

    Raises
    ------
    BatchError
        Naming the file (and the column, when there is one), when it is empty,
        unreadable, of an unknown kind, has no rows, or holds a column poisonguard
        cannot judge (nested, binary).
    """
    path = Path(path)
    source, suffix, kind = _kind_of(path, name)
    try:
        if path.stat().st_size == 0:
            raise BatchError(source, f"the file is empty; expected a {kind} table with a header")
        if kind == "CSV":
            types = {c: pa.string() for c in strings or []}
            table = pacsv.read_csv(
                _csv_stream(path, suffix), convert_options=pacsv.ConvertOptions(column_types=types)
            )
        else:
            table = pq.read_table(path)
        table = _flatten(table, source)
        frame = table.to_pandas()
    except BatchError:
        raise
    except (pa.ArrowException, OSError, ValueError, OverflowError, TypeError) as exc:
        raise _unreadable(exc, path, suffix, source, kind) from exc
    if len(frame) == 0:
        raise BatchError(source, "the file has a header but no rows; expected at least one row")
    return frame


def is_large(path: Path, *, name: str | None = None, chunk_bytes: int, chunk_rows: int) -> bool:
    """True when a batch file is read in chunks (``read_chunks``): it is larger than
    ``chunk_bytes``, or a Parquet file (by its footer) of more than ``chunk_rows`` rows.

    A file whose footer cannot be read is not large: ``read_batch`` rejects it whole.
    """
    path = Path(path)
    if path.stat().st_size > chunk_bytes:
        return True
    if batch_suffix(name if name is not None else path.name) not in (".parquet", ".pq"):
        return False
    try:
        return int(pq.ParquetFile(path).metadata.num_rows) > chunk_rows
    except (pa.ArrowException, OSError):
        return False


def read_chunks(
    path: Path,
    *,
    name: str | None = None,
    strings: list[str] | None = None,
    chunk_bytes: int,
    chunk_rows: int,
) -> Iterator[pa.Table]:
    """Read a batch file a chunk at a time, as Arrow tables of flat columns, every chunk with
    the types of the first (what ``read_batch`` reads whole, in pieces).

    Parquet is read in batches of about ``chunk_bytes`` of uncompressed data, at most
    ``chunk_rows`` rows; CSV in blocks of ``chunk_bytes`` with the column types fixed from
    the first block (pyarrow's streaming reader), each block cut to ``chunk_rows`` rows.

    Raises
    ------
    BatchError
        As ``read_batch`` does, when the error is met (a CSV cell that does not fit its
        column's type in a later block is met there).
    """
    path = Path(path)
    source, suffix, kind = _kind_of(path, name)
    rows = 0
    schema: pa.Schema | None = None
    try:
        if path.stat().st_size == 0:
            raise BatchError(source, f"the file is empty; expected a {kind} table with a header")
        for table in _raw_chunks(path, suffix, kind, strings or [], chunk_bytes, chunk_rows):
            table = _flatten(table, source)
            if schema is None:
                schema = table.schema
            elif table.schema != schema:
                table = table.cast(schema)
            rows += table.num_rows
            yield table
    except BatchError:
        raise
    except (pa.ArrowException, OSError, ValueError, OverflowError, TypeError) as exc:
        raise _unreadable(exc, path, suffix, source, kind) from exc
    if rows == 0:
        raise BatchError(source, "the file has a header but no rows; expected at least one row")


def _raw_chunks(
    path: Path, suffix: str, kind: str, strings: list[str], chunk_bytes: int, chunk_rows: int
) -> Iterator[pa.Table]:
    if kind == "Parquet":
        file = pq.ParquetFile(path)
        meta = file.metadata
        size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        per_row = max(1, size // max(meta.num_rows, 1))
        batch_size = max(1, min(chunk_rows, chunk_bytes // per_row))
        for batch in file.iter_batches(batch_size=batch_size):
            yield pa.Table.from_batches([batch])
        return
    reader = pacsv.open_csv(
        _csv_stream(path, suffix),
        read_options=pacsv.ReadOptions(block_size=chunk_bytes),
        convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in strings}),
    )
    with reader:
        for batch in reader:
            table = pa.Table.from_batches([batch])
            for start in range(0, table.num_rows, chunk_rows):
                yield table.slice(start, chunk_rows)
