"""The store: the one module that touches the disk for batches and their outcomes.

Layout under the store root::

    ledger.sqlite            batches, files, audit chain (standard-library sqlite3)
    clean/<batch>.parquet    rows that joined the training set, one file per batch
    quarantine/<batch>.parquet  held rows, with scores and reasons
    rejected/<batch>/        the rejected file as it arrived, plus reason.json
    reports/                 per-batch reports
    staging/                 scratch space between flow tasks

Every file is written to a temporary name, fsynced and renamed; the ledger row
is committed last. A file the ledger does not list is an orphan of a killed run
and ``recover()`` removes it, so a re-run ends with the same store as an
uninterrupted run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from poisonguard.errors import BatchError, StoreError

BATCH_SUFFIXES = (".parquet", ".pq", ".csv")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    status TEXT NOT NULL,
    rows_in INTEGER,
    rows_clean INTEGER NOT NULL DEFAULT 0,
    rows_quarantined INTEGER NOT NULL DEFAULT 0,
    rows_rejected INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL REFERENCES batches(batch_id),
    kind TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    rows INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS reviews (
    batch_id TEXT NOT NULL REFERENCES batches(batch_id),
    pg_row INTEGER NOT NULL,
    action TEXT NOT NULL,
    actor TEXT NOT NULL,
    note TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (batch_id, pg_row)
);
CREATE TABLE IF NOT EXISTS blocklist (
    row_hash TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL,
    pg_row INTEGER NOT NULL,
    actor TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    action TEXT NOT NULL,
    batch_id TEXT,
    actor TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
"""

GENESIS = "0" * 64


#: Fault injection for the kill-and-rerun tests: ``POISONGUARD_CRASH_AT=<point>[:<n>]``
#: makes the process kill itself (SIGKILL, no clean-up) the n-th time (default
#: the first) it reaches that point.
CRASH_ENV = "POISONGUARD_CRASH_AT"
_crash_counts: dict[str, int] = {}
# Store root -> (the clean files read so far, their rows): see Store.clean_frame.
_clean_frames: dict[str, tuple[tuple[FileRecord, ...], pd.DataFrame]] = {}


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


# --------------------------------------------------------------------------- reading batches


def read_batch(path: Path, strings: list[str] | None = None) -> pd.DataFrame:
    """Read a landed batch (Parquet or CSV) with pyarrow.

    ``strings`` names columns a CSV reader must keep as text (CSV has no types:
    a column of zip codes would otherwise arrive as integers).

    Raises
    ------
    BatchError
        Naming the file, when it is empty, unreadable or of an unknown kind.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in BATCH_SUFFIXES:
        raise BatchError(str(path), f"unknown file kind {suffix!r}; expected .parquet or .csv")
    try:
        if path.stat().st_size == 0:
            raise BatchError(str(path), "the file is empty; expected a Parquet or CSV table")
        if suffix == ".csv":
            types = {c: pa.string() for c in strings or []}
            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=types))
        else:
            table = pq.read_table(path)
    except BatchError:
        raise
    except (pa.ArrowException, OSError) as exc:
        kind = "CSV" if suffix == ".csv" else "Parquet"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BatchError(str(path), f"not a readable {kind} file ({first})") from exc
    return table.to_pandas()


def find_batches(landing: Path) -> list[Path]:
    """Batch files in the landing folder, sorted by name (the processing order)."""
    if not landing.is_dir():
        raise StoreError(f"landing folder {landing} does not exist")
    return sorted(
        p
        for p in landing.iterdir()
        if p.is_file() and p.suffix.lower() in BATCH_SUFFIXES and not p.name.startswith(".")
    )


# --------------------------------------------------------------------------- atomic writes


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """A frame as Parquet bytes, without the pandas index."""
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    return bytes(sink.getvalue().to_pybytes())


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class BatchRecord:
    """One ledger row: a batch and where its rows went."""

    batch_id: str
    sha256: str
    source: str
    status: str
    rows_in: int | None
    rows_clean: int
    rows_quarantined: int
    rows_rejected: int
    reason: str | None
    started_at: str
    finished_at: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class FileRecord:
    """A file the store wrote, with the hash and row count it had when written."""

    path: str
    batch_id: str
    kind: str
    sha256: str
    rows: int


@dataclass(frozen=True)
class Outcome:
    """Where one batch's rows go: the input to ``Store.commit``.

    ``clean`` and ``quarantine`` are frames (possibly empty); their row counts
    plus ``rows_rejected`` must add up to ``rows_in``.
    """

    batch_id: str
    sha256: str
    source: str
    status: str
    rows_in: int | None
    clean: pd.DataFrame | None = None
    quarantine: pd.DataFrame | None = None
    rows_rejected: int = 0
    reason: str | None = None
    started_at: str = ""
    detail: dict[str, Any] | None = None


# --------------------------------------------------------------------------- the store


class Store:
    """A local store: Parquet files plus a SQLite ledger.

    Parameters
    ----------
    root : path
        The store's folder; created on first use.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        for sub in ("clean", "quarantine", "rejected", "reports", "staging"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.ledger_path = self.root / "ledger.sqlite"
        with self._connect() as db:
            db.executescript(_SCHEMA)

    # -- connection ----------------------------------------------------------
    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.ledger_path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        try:
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on the ledger; everything inside commits together."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # -- reading -------------------------------------------------------------
    def batch_by_sha(self, sha256: str) -> BatchRecord | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM batches WHERE sha256 = ?", (sha256,)).fetchone()
        return BatchRecord(**dict(row)) if row else None

    def batch(self, batch_id: str) -> BatchRecord | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM batches WHERE batch_id = ?", (batch_id,)).fetchone()
        return BatchRecord(**dict(row)) if row else None

    def batches(self) -> list[BatchRecord]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM batches ORDER BY started_at, batch_id").fetchall()
        return [BatchRecord(**dict(r)) for r in rows]

    def files(self, kind: str | None = None) -> list[FileRecord]:
        query, args = "SELECT path, batch_id, kind, sha256, rows FROM files", tuple[str, ...]()
        if kind is not None:
            query, args = query + " WHERE kind = ?", (kind,)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY created_at, path", args).fetchall()
        return [FileRecord(**dict(r)) for r in rows]

    def read(self, record: FileRecord) -> pd.DataFrame:
        """A file the store wrote, as a frame."""
        return pq.read_table(self.root / record.path).to_pandas()

    def quarantine_frame(self, batch_id: str) -> pd.DataFrame:
        """A batch's quarantined rows (empty when it has none)."""
        frames = [self.read(f) for f in self.files("quarantine") if f.batch_id == batch_id]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def reviews(self, batch_id: str | None = None) -> pd.DataFrame:
        """Review decisions: batch_id, pg_row, action, actor, note, at."""
        query, args = "SELECT * FROM reviews", tuple[str, ...]()
        if batch_id is not None:
            query, args = query + " WHERE batch_id = ?", (batch_id,)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY at, batch_id, pg_row", args).fetchall()
        cols = ["batch_id", "pg_row", "action", "actor", "note", "at"]
        return pd.DataFrame([dict(r) for r in rows], columns=cols)

    def blocked(self, row_hashes: list[str]) -> dict[str, tuple[str, str]]:
        """Which of these row hashes a reviewer rejected before: hash -> (date, reviewer)."""
        out: dict[str, tuple[str, str]] = {}
        with self._connect() as db:
            for i in range(0, len(row_hashes), 500):
                chunk = row_hashes[i : i + 500]
                marks = ",".join("?" * len(chunk))
                for r in db.execute(
                    f"SELECT row_hash, at, actor FROM blocklist WHERE row_hash IN ({marks})", chunk
                ):
                    out[r[0]] = (r[1], r[2])
        return out

    def clean_frame(self) -> pd.DataFrame:
        """The whole clean training set, in the order it was committed.

        Committed files never change, so the frame is kept for the process and a
        later call reads only the files committed since (a flow judging batch after
        batch re-reads nothing). Callers get a shallow copy: pandas' copy-on-write
        keeps their changes out of the kept frame. The gate, not this, checks the
        files' hashes.
        """
        files = tuple(self.files("clean"))
        key = str(self.root.resolve())
        known, frame = _clean_frames.get(key, ((), pd.DataFrame()))
        if files[: len(known)] != known:
            known, frame = (), pd.DataFrame()
        frames = [f for f in (self.read(r) for r in files[len(known) :]) if len(f)]
        if frames:
            frame = pd.concat([frame, *frames] if len(frame) else frames, ignore_index=True)
        _clean_frames[key] = (files, frame)
        # A new object sharing the kept data: copy-on-write copies it if the caller writes.
        return frame.copy(deep=False)

    # -- writing -------------------------------------------------------------
    def recover(self) -> list[Path]:
        """Remove what a killed run left behind, and nothing else.

        Every commit starts by creating ``staging/<batch>/`` and ends by removing
        it after the ledger transaction. A staging folder that is still there
        marks a batch whose commit may have been cut short: its files are removed
        unless the ledger lists them. Temporary files of interrupted atomic writes
        go too. Files nobody wrote through poisonguard are left for the gate to
        report.

        Returns
        -------
        list of Path
            The files and folders removed.
        """
        known = {f.path for f in self.files()}
        with self._connect() as db:
            batches = {r[0] for r in db.execute("SELECT batch_id FROM batches").fetchall()}
        removed: list[Path] = []
        for sub in ("clean", "quarantine", "rejected"):
            for p in (self.root / sub).glob(".*.tmp"):
                p.unlink()
                removed.append(p)
        for marker in sorted((self.root / "staging").iterdir()):
            batch_id = marker.name
            for sub in ("clean", "quarantine"):
                p = self.root / sub / f"{batch_id}.parquet"
                if p.exists() and p.relative_to(self.root).as_posix() not in known:
                    p.unlink()
                    removed.append(p)
            rejected = self.root / "rejected" / batch_id
            if rejected.exists() and batch_id not in batches:
                shutil.rmtree(rejected)
                removed.append(rejected)
            shutil.rmtree(marker) if marker.is_dir() else marker.unlink()
        return removed

    def staging_dir(self, batch_id: str) -> Path:
        path = self.root / "staging" / batch_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def commit(self, outcome: Outcome) -> BatchRecord:
        """Write a batch's outcome: files first (atomically), then one ledger transaction.

        Raises
        ------
        StoreError
            When the outcome does not account for every input row, or the batch
            is already in the ledger under another id.
        """
        n_clean = 0 if outcome.clean is None else len(outcome.clean)
        n_quar = 0 if outcome.quarantine is None else len(outcome.quarantine)
        if (
            outcome.rows_in is not None
            and n_clean + n_quar + outcome.rows_rejected != outcome.rows_in
        ):
            raise StoreError(
                f"batch {outcome.batch_id}: {n_clean} clean + {n_quar} quarantined + "
                f"{outcome.rows_rejected} rejected != {outcome.rows_in} rows in"
            )
        marker = self.staging_dir(outcome.batch_id)
        written = self._write_files(
            outcome.batch_id, (("clean", outcome.clean), ("quarantine", outcome.quarantine))
        )

        finished = now()
        record = BatchRecord(
            batch_id=outcome.batch_id,
            sha256=outcome.sha256,
            source=outcome.source,
            status=outcome.status,
            rows_in=outcome.rows_in,
            rows_clean=n_clean,
            rows_quarantined=n_quar,
            rows_rejected=outcome.rows_rejected,
            reason=outcome.reason,
            started_at=outcome.started_at or finished,
            finished_at=finished,
        )
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM batches WHERE sha256 = ?", (outcome.sha256,)).fetchone():
                raise StoreError(f"batch {outcome.batch_id}: its content is already in the ledger")
            db.execute(
                "INSERT INTO batches VALUES (:batch_id, :sha256, :source, :status, :rows_in, "
                ":rows_clean, :rows_quarantined, :rows_rejected, :reason, :started_at, "
                ":finished_at)",
                record.as_dict(),
            )
            db.executemany(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)",
                [(p, outcome.batch_id, p.split("/")[0], h, n, finished) for p, h, n in written],
            )
            detail = {
                "source": outcome.source,
                "sha256": outcome.sha256,
                "status": outcome.status,
                "rows_in": outcome.rows_in,
                "rows_clean": n_clean,
                "rows_quarantined": n_quar,
                "rows_rejected": outcome.rows_rejected,
                "files": {p: h for p, h, _ in written},
                **(outcome.detail or {}),
            }
            self._append_audit(db, "ingest", outcome.batch_id, "poisonguard", detail)
            crash_point("before-ledger-commit")
        crash_point("after-ledger-commit")
        shutil.rmtree(marker, ignore_errors=True)
        return record

    def _write_files(
        self, name: str, frames: tuple[tuple[str, pd.DataFrame | None], ...]
    ) -> list[tuple[str, str, int]]:
        """Write ``<kind>/<name>.parquet`` atomically for each frame; (path, sha256, rows) each."""
        written: list[tuple[str, str, int]] = []
        for kind, frame in frames:
            if frame is None:
                continue
            data = parquet_bytes(frame)
            rel = f"{kind}/{name}.parquet"
            atomic_write_bytes(self.root / rel, data)
            written.append((rel, hashlib.sha256(data).hexdigest(), len(frame)))
            crash_point(f"after-{kind}-file")
        return written

    def commit_review(
        self,
        batch_id: str,
        action: str,
        rows: pd.DataFrame,
        *,
        actor: str,
        note: str,
    ) -> None:
        """Record a reviewer's release or rejection of quarantined rows, atomically.

        Released rows are written as a new clean file (``clean/<batch>.release-<n>.parquet``)
        exactly as the flow commits a batch: file first, then one ledger transaction
        that lists the file, moves the row counts, records each row's review and
        appends to the audit chain. Rejected rows' content hashes join the blocklist.
        """
        if action not in ("release", "reject"):
            raise ValueError(f"unknown review action {action!r}")
        at = now()
        n = len(rows)
        written: list[tuple[str, str, int]] = []
        marker = None
        if action == "release":
            seq = len([f for f in self.files("clean") if f.batch_id == batch_id])
            name = f"{batch_id}.release-{seq}"
            marker = self.staging_dir(name)
            written = self._write_files(name, (("clean", rows),))
        with self.transaction() as db:
            moved = (
                ("rows_clean", "rows_quarantined")
                if action == "release"
                else ("rows_rejected", "rows_quarantined")
            )
            db.execute(
                f"UPDATE batches SET {moved[0]} = {moved[0]} + ?, {moved[1]} = {moved[1]} - ? "
                "WHERE batch_id = ?",
                (n, n, batch_id),
            )
            db.executemany(
                "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?)",
                [(p, batch_id, "clean", h, k, at) for p, h, k in written],
            )
            db.executemany(
                "INSERT INTO reviews VALUES (?, ?, ?, ?, ?, ?)",
                [(batch_id, int(r), action, actor, note, at) for r in rows["pg_row"].tolist()],
            )
            if action == "reject":
                db.executemany(
                    "INSERT OR IGNORE INTO blocklist VALUES (?, ?, ?, ?, ?)",
                    [
                        (h, batch_id, int(r), actor, at)
                        for h, r in zip(
                            rows["pg_row_hash"].tolist(), rows["pg_row"].tolist(), strict=True
                        )
                    ],
                )
            detail = {
                "rows": [int(r) for r in rows["pg_row"].tolist()],
                "note": note,
                "files": {p: h for p, h, _ in written},
            }
            self._append_audit(db, action, batch_id, actor, detail)
        if marker is not None:
            shutil.rmtree(marker, ignore_errors=True)

    def reject(self, source: Path, outcome: Outcome) -> BatchRecord:
        """Keep a rejected batch file as it arrived, with its reason, and record it."""
        self.staging_dir(outcome.batch_id)
        folder = self.root / "rejected" / outcome.batch_id
        atomic_write_bytes(folder / source.name, source.read_bytes())
        reason = {"source": str(source), "reason": outcome.reason, "sha256": outcome.sha256}
        atomic_write_bytes(folder / "reason.json", (json.dumps(reason, indent=2) + "\n").encode())
        return self.commit(outcome)

    # -- audit chain ---------------------------------------------------------
    @staticmethod
    def _entry_hash(
        prev: str, at: str, action: str, batch_id: str | None, actor: str, detail: str
    ) -> str:
        payload = json.dumps([prev, at, action, batch_id, actor, detail], separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()

    def _append_audit(
        self,
        db: sqlite3.Connection,
        action: str,
        batch_id: str | None,
        actor: str,
        detail: dict[str, Any],
    ) -> None:
        last = db.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        prev = last[0] if last else GENESIS
        at = now()
        text = json.dumps(detail, sort_keys=True, default=str)
        digest = self._entry_hash(prev, at, action, batch_id, actor, text)
        db.execute(
            "INSERT INTO audit (at, action, batch_id, actor, detail, prev_hash, hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (at, action, batch_id, actor, text, prev, digest),
        )

    def audit(
        self,
        action: str,
        *,
        actor: str,
        batch_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append one entry to the audit chain in its own transaction."""
        with self.transaction() as db:
            self._append_audit(db, action, batch_id, actor, detail or {})

    def audit_log(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM audit ORDER BY seq").fetchall()
        return [dict(r) for r in rows]

    def verify_audit(self) -> str | None:
        """Check the hash chain; return a description of the first broken entry, or None."""
        prev = GENESIS
        for entry in self.audit_log():
            if entry["prev_hash"] != prev:
                return f"audit entry {entry['seq']} does not follow entry before it (prev_hash)"
            expected = self._entry_hash(
                prev,
                entry["at"],
                entry["action"],
                entry["batch_id"],
                entry["actor"],
                entry["detail"],
            )
            if entry["hash"] != expected:
                return f"audit entry {entry['seq']} ({entry['action']}) was altered: hash mismatch"
            prev = entry["hash"]
        return None
