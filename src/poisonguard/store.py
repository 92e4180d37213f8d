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


def read_batch(path: Path) -> pd.DataFrame:
    """Read a landed batch (Parquet or CSV) with pyarrow.

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
            table = pacsv.read_csv(path)
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

    def batch_by_sha_of(self, path: Path) -> BatchRecord | None:
        """The ledger's record of a file's content, if it has one."""
        return self.batch_by_sha(sha256_file(path))

    def batch(self, batch_id: str) -> BatchRecord | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM batches WHERE batch_id = ?", (batch_id,)).fetchone()
        return BatchRecord(**dict(row)) if row else None

    def batches(self) -> list[BatchRecord]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM batches ORDER BY started_at, batch_id").fetchall()
        return [BatchRecord(**dict(r)) for r in rows]

    def files(self, kind: str | None = None) -> list[FileRecord]:
        query, args = "SELECT path, batch_id, kind, sha256, rows FROM files", ()
        if kind is not None:
            query, args = query + " WHERE kind = ?", (kind,)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY created_at, path", args).fetchall()
        return [FileRecord(**dict(r)) for r in rows]

    def read(self, record: FileRecord) -> pd.DataFrame:
        """A file the store wrote, as a frame."""
        return pq.read_table(self.root / record.path).to_pandas()

    def clean_frame(self) -> pd.DataFrame:
        """The whole clean training set, in the order it was committed."""
        frames = [self.read(f) for f in self.files("clean")]
        frames = [f for f in frames if len(f)]
        if not frames:
            return pd.DataFrame()
        return pd.concat(frames, ignore_index=True)

    # -- writing -------------------------------------------------------------
    def recover(self) -> list[Path]:
        """Remove what a killed run left behind: files the ledger does not list, scratch.

        Returns
        -------
        list of Path
            The files removed.
        """
        known = {f.path for f in self.files()}
        removed: list[Path] = []
        for sub in ("clean", "quarantine"):
            for p in (self.root / sub).iterdir():
                rel = p.relative_to(self.root).as_posix()
                if rel not in known:
                    p.unlink()
                    removed.append(p)
        with self._connect() as db:
            rejected = {r[0] for r in db.execute("SELECT batch_id FROM batches").fetchall()}
        for p in (self.root / "rejected").iterdir():
            if p.name not in rejected:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                removed.append(p)
        staging = self.root / "staging"
        for p in staging.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
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
        if outcome.rows_in is not None and n_clean + n_quar + outcome.rows_rejected != outcome.rows_in:
            raise StoreError(
                f"batch {outcome.batch_id}: {n_clean} clean + {n_quar} quarantined + "
                f"{outcome.rows_rejected} rejected != {outcome.rows_in} rows in"
            )
        written: list[tuple[str, str, int]] = []
        for kind, frame in (("clean", outcome.clean), ("quarantine", outcome.quarantine)):
            if frame is None:
                continue
            data = parquet_bytes(frame)
            rel = f"{kind}/{outcome.batch_id}.parquet"
            atomic_write_bytes(self.root / rel, data)
            written.append((rel, hashlib.sha256(data).hexdigest(), len(frame)))
            crash_point(f"after-{kind}-file")

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
            if db.execute(
                "SELECT 1 FROM batches WHERE sha256 = ?", (outcome.sha256,)
            ).fetchone():
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
        return record

    def reject(
        self, source: Path, *, batch_id: str, sha256: str, reason: str, rows_in: int | None,
        started_at: str = "",
    ) -> BatchRecord:
        """Keep a rejected batch file as it arrived, with its reason, and record it."""
        folder = self.root / "rejected" / batch_id
        atomic_write_bytes(folder / source.name, source.read_bytes())
        atomic_write_bytes(
            folder / "reason.json",
            (json.dumps({"source": str(source), "reason": reason, "sha256": sha256}, indent=2)
             + "\n").encode(),
        )
        return self.commit(
            Outcome(
                batch_id=batch_id,
                sha256=sha256,
                source=str(source),
                status="rejected",
                rows_in=rows_in,
                rows_rejected=rows_in or 0,
                reason=reason,
                started_at=started_at,
            )
        )

    # -- audit chain ---------------------------------------------------------
    @staticmethod
    def _entry_hash(prev: str, at: str, action: str, batch_id: str | None, actor: str,
                    detail: str) -> str:
        payload = json.dumps([prev, at, action, batch_id, actor, detail], separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()

    def _append_audit(
        self, db: sqlite3.Connection, action: str, batch_id: str | None, actor: str,
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

    def audit(self, action: str, *, actor: str, batch_id: str | None = None,
              detail: dict[str, Any] | None = None) -> None:
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
                prev, entry["at"], entry["action"], entry["batch_id"], entry["actor"],
                entry["detail"],
            )
            if entry["hash"] != expected:
                return f"audit entry {entry['seq']} ({entry['action']}) was altered: hash mismatch"
            prev = entry["hash"]
        return None
