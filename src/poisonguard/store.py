"""The store: the one module that touches the disk for a dataset's outcomes.

Layout under the store root (owner-only: the folder is mode 0700, files 0600)::

    ledger.sqlite            batches, files, reviews, blocklist, landing memo, reference
                             versions, audit chain
    anchor.json              the audit chain's head, keyed (see below)
    clean/<batch>.parquet    rows that joined the training set, one file per batch
                             (plus one per release or re-scan hold: ``<batch>.release-<n>``,
                             ``<batch>.rescan-<n>``)
    quarantine/<batch>.parquet  held rows, with scores and reasons
    rejected/<batch>/        the rejected file as it arrived, plus reason.json
    reports/                 per-batch reports
    staging/                 scratch space between flow tasks

and beside it ``<store>.key``: the audit key (32 random bytes, owner-only; its
place can be set with ``dataset.audit_key``).

Writes are atomic: every file goes to a temporary name, is fsynced and renamed;
the ledger transaction that lists it commits last. A file the ledger does not
list, left by a process that died mid-commit, is removed by ``recover()``.

The audit chain is anchored outside the ledger: every entry carries the SHA-256
of the one before and an HMAC of its own hash under the audit key, which never
enters the ledger; ``anchor.json`` holds the latest head and the head the gate
last vouched for, also under the key. Rewriting entries (even with the chain
recomputed), truncating the chain or deleting the ledger is therefore detected
by anyone holding the key (``verify_audit``), and the gate cross-checks the
ledger's files, row counts and blocklist against the entries that wrote them.

Every change to the store happens under one exclusive lock (``writing()``), so
concurrent reviews, runs and gates serialise instead of interleaving.

The reference the detectors are fitted on is pinned: a numbered version lists
the clean files it holds, with a digest of their hashes. Version 1 is the seed;
a new version is made only by an explicit step (``promote``), each with an
audit entry. Accepted rows join the training set at once, the reference only
when promoted.

Files are never rewritten. A clean file that leaves the training set keeps its
bytes and its place, and the ledger lists it under another kind: ``revoked``
when a reviewer revoked its batch (``revoke``), ``superseded`` when a re-scan
moved some of its rows back to quarantine and wrote the others to a new clean
file (``hold_rescanned``). The training set is the files of kind ``clean``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from poisonguard.errors import ReviewError, StoreError, shown
from poisonguard.landing import source_of
from poisonguard.sources import BatchCounts, Event

#: The ledger schema this code reads and writes: the base schema (version 2) and
#: every step of ``_SCHEMA_STEPS``.
SCHEMA_VERSION = 3
SUBFOLDERS = ("clean", "quarantine", "rejected", "reports", "staging")
#: How long a writer waits for another process's lock before giving up.
LOCK_WAIT = 60.0

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
    rows INTEGER,
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
CREATE TABLE IF NOT EXISTS landed (
    name TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT,
    batch_id TEXT,
    outcome TEXT NOT NULL,
    reason TEXT,
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
    hash TEXT NOT NULL,
    mac TEXT NOT NULL
);
"""

# --------------------------------------------------------------------------- schema step 2 -> 3
# The pinned reference (issue 11, item 1): the versions of the rows the detectors
# are fitted on, and the version that judged each batch. One step of its own, so
# that other steps merge beside it.
_REFERENCE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS reference_versions (
    version INTEGER PRIMARY KEY,
    digest TEXT NOT NULL,
    rows INTEGER NOT NULL,
    actor TEXT NOT NULL,
    note TEXT NOT NULL,
    at TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS reference_files (
    version INTEGER NOT NULL REFERENCES reference_versions(version),
    position INTEGER NOT NULL,
    path TEXT NOT NULL REFERENCES files(path),
    PRIMARY KEY (version, position)
)""",
    "ALTER TABLE batches ADD COLUMN reference_version INTEGER",
)

#: The oldest ledger schema this code migrates, and the steps after it, in order:
#: (the version a step reaches, its statements). Its data step is ``_MIGRATIONS``.
_BASE_SCHEMA_VERSION = 2
_SCHEMA_STEPS: tuple[tuple[int, tuple[str, ...]], ...] = ((3, _REFERENCE_SCHEMA),)

GENESIS = "0" * 64


#: Fault injection for the kill-and-rerun tests: ``POISONGUARD_CRASH_AT=<point>[:<n>]``
#: makes the process kill itself (SIGKILL, no clean-up) the n-th time (default
#: the first) it reaches that point.
CRASH_ENV = "POISONGUARD_CRASH_AT"
_crash_counts: dict[str, int] = {}
# Store root and slot ("clean", "reference", "rejected") -> (the files read so far, their rows):
# see Store._frame_of.
_kept_frames: dict[str, tuple[tuple[FileRecord, ...], pd.DataFrame]] = {}


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


def default_key_path(root: Path) -> Path:
    """Where a store's audit key lives unless configured: ``<store>.key`` beside the store."""
    root = Path(root)
    return root.parent / f"{root.name}.key"


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


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """A frame as Parquet bytes, without the pandas index."""
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    return bytes(sink.getvalue().to_pybytes())


def read_parquet(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """A Parquet file poisonguard wrote (staging or store), as a frame."""
    return pq.read_table(path, columns=columns).to_pandas()


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class BatchRecord:
    """One ledger row: a batch and where its rows went.

    ``reference_version`` is the reference version whose fitted detectors judged
    the batch's rows (None for the seed, a batch rejected whole, a batch none of
    whose rows reached the detectors, and batches a version-2 ledger recorded).
    """

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
    reference_version: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class FileRecord:
    """A file the store wrote, with the hash and row count it had when written.

    ``rows`` is None for files that are not tables of rows (a rejected file's
    original bytes, its reason).
    """

    path: str
    batch_id: str
    kind: str
    sha256: str
    rows: int | None


@dataclass(frozen=True)
class Landed:
    """What the ledger remembers of one landing-folder name (see ``Store.landed``)."""

    name: str
    size: int
    mtime_ns: int
    sha256: str | None
    batch_id: str | None
    outcome: str
    reason: str | None
    at: str


@dataclass(frozen=True)
class Outcome:
    """Where one batch's rows go: the input to ``Store.commit``.

    ``clean`` and ``quarantine`` are frames (possibly empty); their row counts
    plus ``rows_rejected`` must add up to ``rows_in``. ``landed`` is the landing
    entry (name, size, mtime_ns) the batch came from, remembered with it;
    ``reference_version`` the reference version that judged its rows.
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
    landed: tuple[str, int, int] | None = None
    reference_version: int | None = None


@dataclass(frozen=True)
class ReferenceVersion:
    """One version of the pinned reference: the clean files the detectors are fitted on.

    Attributes
    ----------
    version : int
        1 for the seed, one more for each promotion.
    digest : str
        ``reference_digest`` of its files' hashes.
    rows : int
    files : tuple of FileRecord
        In the order they joined the reference (the seed's first).
    actor, note, at : str
        Who made the version, why, and when (ISO 8601).
    """

    version: int
    digest: str
    rows: int
    files: tuple[FileRecord, ...]
    actor: str
    note: str
    at: str

    @property
    def batch_ids(self) -> tuple[str, ...]:
        """The batches whose clean rows it holds, in the order they joined."""
        return tuple(dict.fromkeys(f.batch_id for f in self.files))

    def summary(self) -> dict[str, Any]:
        """Version, digest, rows and batches, as the manifest, status and audit entry name it."""
        return {
            "version": self.version,
            "digest": self.digest,
            "rows": self.rows,
            "batches": list(self.batch_ids),
        }


def reference_digest(sha256s: Iterable[str]) -> str:
    """A reference's content digest: SHA-256 over its files' SHA-256s, sorted, one a line."""
    return hashlib.sha256("".join(f"{h}\n" for h in sorted(sha256s)).encode()).hexdigest()


@dataclass(frozen=True)
class Revocation:
    """What revoking a batch did (``Store.revoke``).

    Attributes
    ----------
    batch_id : str
    rows_revoked : int
        Clean rows (released ones included) taken out of the training set.
    rows_rejected : int
        Rows that were awaiting review, rejected with the batch.
    files : tuple of str
        The clean files now listed as ``revoked`` (their bytes kept).
    reference : ReferenceVersion or None
        The new reference version without the batch, when the batch was in the
        current one; None otherwise.
    already : str or None
        When the batch had been revoked before (nothing changed then): when, by
        whom and why.
    """

    batch_id: str
    rows_revoked: int
    rows_rejected: int
    files: tuple[str, ...]
    reference: ReferenceVersion | None
    already: str | None = None


@dataclass(frozen=True)
class _Hold:
    """One batch's part of a re-scan hold: the files it supersedes and the rows of its new ones."""

    batch_id: str
    name: str
    superseded: tuple[str, ...]
    kept: pd.DataFrame | None
    moved: pd.DataFrame


# --------------------------------------------------------------------------- locking


class _ProcessLock:
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


_LOCKS: dict[str, _ProcessLock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock_for(path: Path) -> _ProcessLock:
    key = str(path.resolve())
    with _LOCKS_GUARD:
        if key not in _LOCKS:
            _LOCKS[key] = _ProcessLock(path)
        return _LOCKS[key]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------- the store


class Store:
    """A local store: Parquet files, a SQLite ledger and an audit key beside them.

    Parameters
    ----------
    root : path
        The store's folder.
    key_path : path, optional
        The audit key file (default ``<root>.key`` beside the store).
    create : bool
        Create the store (folders, ledger, key) if it does not exist. Only
        ``poisonguard init`` does; every other command opens an existing store,
        so that a mistyped path is an error instead of an empty training set.

    Raises
    ------
    StoreError
        When the store does not exist (and ``create`` is False), its ledger is
        missing or unreadable, or it was written by an incompatible version.
    """

    def __init__(
        self, root: str | Path, *, key_path: str | Path | None = None, create: bool = False
    ) -> None:
        self.root = Path(root)
        self.key_path = Path(key_path) if key_path is not None else default_key_path(self.root)
        self.ledger_path = self.root / "ledger.sqlite"
        self.anchor_path = self.root / "anchor.json"
        self._key: bytes | None = None
        self._appended = False
        self._window_files: dict[str, pd.DataFrame] = {}  # see source_rows
        if not self.ledger_path.is_file():
            if not create:
                raise StoreError(self._missing_ledger())
            self._create()
        else:
            for sub in SUBFOLDERS:
                (self.root / sub).mkdir(mode=0o700, exist_ok=True)
        self._check_schema()

    @classmethod
    def of(cls, config: Any, *, create: bool = False) -> Store:
        """The store a ``Config`` names (its folder and audit key)."""
        return cls(config.store, key_path=getattr(config, "audit_key", None), create=create)

    def _missing_ledger(self) -> str:
        if self.key_path.exists():
            return (
                f"the ledger {self.ledger_path} is missing, but the audit key {self.key_path} "
                "shows a store was created there: it was deleted or moved"
            )
        return (
            f"no poisonguard store at {self.root} (no ledger.sqlite): check dataset.store in "
            "the config, or create the store with `poisonguard init`"
        )

    def _create(self) -> None:
        if self.key_path.exists():
            raise StoreError(
                f"the audit key {self.key_path} already exists but the store {self.root} has no "
                "ledger: the store was deleted or moved; remove the key only if you mean to "
                "start a new store there"
            )
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        for sub in SUBFOLDERS:
            (self.root / sub).mkdir(mode=0o700, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)
            for _, statements in _SCHEMA_STEPS:
                for statement in statements:
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        os.chmod(self.ledger_path, 0o600)
        self.key_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _check_schema(self) -> None:
        try:
            with self._connect() as db:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{self.ledger_path}: cannot be opened as a poisonguard ledger ({exc})"
            ) from exc
        if "audit" not in tables or not _BASE_SCHEMA_VERSION <= version <= SCHEMA_VERSION:
            raise StoreError(
                f"{self.ledger_path}: ledger schema {version}, this poisonguard reads "
                f"{_BASE_SCHEMA_VERSION} to {SCHEMA_VERSION}; it was written by another version "
                "(create a new store with `poisonguard init`)"
            )
        if version < SCHEMA_VERSION:
            self._migrate()

    def _migrate(self) -> None:
        """Bring an older ledger to ``SCHEMA_VERSION``: every step in one transaction.

        Each step runs its statements and its data step, and is recorded in the
        audit chain (``migrate``). Another process that migrated meanwhile leaves
        nothing to do.
        """
        with self.transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for to, statements in _SCHEMA_STEPS:
                if to <= version:
                    continue
                for statement in statements:
                    db.execute(statement)
                detail = _MIGRATIONS[to](self, db)
                self._append_audit(
                    db, "migrate", None, "poisonguard", {"from": version, "to": to, **detail}
                )
                version = to
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _migrate_to_3(self, db: sqlite3.Connection) -> dict[str, Any]:
        """Version 1 of the reference: the ledger's seed batches, as a fresh store has it."""
        seeds = [r[0] for r in db.execute("SELECT batch_id FROM batches WHERE status = 'seed'")]
        files = [f for f in self._files(db, "clean") if f.batch_id in seeds]
        if not files:
            return {"reference": None}
        ref = self._add_reference(db, files, actor="poisonguard", note="the seed (migration)")
        return {"reference": ref.summary()}

    # -- connection ----------------------------------------------------------
    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.ledger_path, timeout=30, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def writing(self, wait: float = LOCK_WAIT) -> Iterator[None]:
        """Hold the store's write lock (re-entrant); the outermost hold first recovers.

        Raises
        ------
        StoreError
            When another process holds the lock for longer than ``wait`` seconds.
        """
        lock = _lock_for(self.root / ".lock")
        with lock.held(wait, f"the store {self.root}") as outermost:
            if outermost:
                self.recover()
            yield

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on the ledger, under the write lock; commits together.

        When it appended to the audit chain, the anchor is moved to the new head
        after the commit.
        """
        with self.writing(), self._connect() as db:
            self._appended = False
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            if self._appended:
                self._write_anchor(db)

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
        with self._connect() as db:
            return self._files(db, kind)

    @staticmethod
    def _files(db: sqlite3.Connection, kind: str | None = None) -> list[FileRecord]:
        query, args = "SELECT path, batch_id, kind, sha256, rows FROM files", tuple[str, ...]()
        if kind is not None:
            query, args = query + " WHERE kind = ?", (kind,)
        rows = db.execute(query + " ORDER BY created_at, rowid", args).fetchall()
        return [FileRecord(**dict(r)) for r in rows]

    def read(self, record: FileRecord, columns: list[str] | None = None) -> pd.DataFrame:
        """A table the store wrote, as a frame."""
        return read_parquet(self.root / record.path, columns)

    def quarantine_frame(self, batch_id: str) -> pd.DataFrame:
        """A batch's quarantined rows, each as last held (empty when it has none).

        A row a re-scan held again (``hold_rescanned``) after a reviewer had
        released it is in two quarantine files; the later holding is the one
        that awaits review.
        """
        frames = [self.read(f) for f in self.files("quarantine") if f.batch_id == batch_id]
        if not frames:
            return pd.DataFrame()
        rows = pd.concat(frames, ignore_index=True)
        return rows.drop_duplicates("pg_row", keep="last").reset_index(drop=True)

    def reviews(self, batch_id: str | None = None) -> pd.DataFrame:
        """Review decisions: batch_id, pg_row, action, actor, note, at."""
        query, args = "SELECT * FROM reviews", tuple[str, ...]()
        if batch_id is not None:
            query, args = query + " WHERE batch_id = ?", (batch_id,)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY at, batch_id, pg_row", args).fetchall()
        cols = ["batch_id", "pg_row", "action", "actor", "note", "at"]
        return pd.DataFrame([dict(r) for r in rows], columns=cols)

    def rejected_rows(self) -> pd.DataFrame:
        """The rows on the blocklist, as they arrived, oldest rejection first.

        A rejected row's content lives where it was held: its batch's quarantine
        file, or for a revoked batch's clean rows its revoked clean file; the store
        never rewrites either. The blocklist names the row (one per
        distinct content hash, with the first reviewer who rejected it), so the
        rows survive restarts and can be compared on whatever scale the current
        trusted rows give.

        Returns
        -------
        DataFrame
            The data columns, ``pg_batch`` and ``pg_row``, and ``pg_rejected_at``
            and ``pg_rejected_by`` (ISO time and reviewer); empty when nothing was
            rejected.
        """
        with self._connect() as db:
            listed = db.execute(
                "SELECT batch_id, pg_row, at, actor FROM blocklist ORDER BY at, batch_id, pg_row"
            ).fetchall()
        if not listed:
            return pd.DataFrame()
        entries = pd.DataFrame(
            [tuple(r) for r in listed],
            columns=["pg_batch", "pg_row", "pg_rejected_at", "pg_rejected_by"],
        )
        batches = set(entries["pg_batch"])
        # Quarantine files never change: kept like the clean frame, so a run judging batch
        # after batch reads each rejected batch's file once, not once per batch.
        files = tuple(
            f for f in self.files() if f.kind in ("quarantine", "revoked") and f.batch_id in batches
        )
        rows = self._frame_of("rejected", files)
        if rows.empty:
            rows = pd.DataFrame(columns=["pg_batch", "pg_row"])
        # A released row of a revoked batch, or one held again by a re-scan, is in two files.
        rows = rows.drop_duplicates(["pg_batch", "pg_row"], keep="last")
        keep = [c for c in rows.columns if not str(c).startswith("pg_")]
        found = entries.merge(
            rows[[*keep, "pg_batch", "pg_row"]],
            on=["pg_batch", "pg_row"],
            how="left",
            indicator=True,
        )
        lost = found[found["_merge"] != "both"]
        if len(lost):
            # A rejection that cannot be matched any more would let its row back in: fail closed.
            raise StoreError(
                f"the blocklist names row {lost['pg_row'].iloc[0]} of batch "
                f"{lost['pg_batch'].iloc[0]} ({len(lost)} such rows), but no quarantine file of "
                f"the store {self.root} holds it; run `poisonguard gate` to see what changed"
            )
        return found[[*keep, "pg_batch", "pg_row", "pg_rejected_at", "pg_rejected_by"]]

    def source_rows(
        self, source: str, limit: int, *, skip_stages: Collection[str] = ()
    ) -> pd.DataFrame:
        """The last ``limit`` rows one landing source sent in its committed batches, newest first.

        A batch's rows are its clean file's and its quarantine file's (rows a
        reviewer released or rejected count once, as they arrived; release files
        are not read again). Batches are taken newest first (by when they were
        committed), and within a batch its last rows first, until ``limit`` rows.

        Parameters
        ----------
        source : str
            A landing source (``landing.source_of`` of the batches' names).
        limit : int
            At most this many rows (0: none).
        skip_stages : collection of str
            Quarantined rows held at these stages (``pg_stage``) are left out and
            do not count towards ``limit``.

        Returns
        -------
        DataFrame
            The rows' data columns, ``pg_batch``, ``pg_row`` and ``pg_accepted``: whether
            the row is in the training set (accepted when its batch was committed, or
            released by a reviewer). Empty when the source sent nothing before.
        """
        if limit <= 0:
            return pd.DataFrame()
        with self._connect() as db:
            batches = [
                r[0]
                for r in db.execute(
                    "SELECT batch_id, source FROM batches WHERE status = 'committed' "
                    "ORDER BY finished_at DESC, rowid DESC"
                ).fetchall()
                if source_of(r[1]) == source
            ]
            paths = {r[0] for r in db.execute("SELECT path FROM files")}
            released = {
                (r[0], int(r[1]))
                for r in db.execute("SELECT batch_id, pg_row FROM reviews WHERE action = 'release'")
            }
        parts: list[pd.DataFrame] = []
        taken = 0
        # Committed files never change: the files of the last window are kept, so a run
        # judging batch after batch reads only the files its source committed since.
        kept, self._window_files = self._window_files, {}
        for batch_id in batches:
            frames = []
            for kind in ("clean", "quarantine"):
                rel = f"{kind}/{batch_id}.parquet"
                if rel not in paths:
                    continue
                frame = kept[rel] if rel in kept else read_parquet(self.root / rel)
                self._window_files[rel] = frame
                if kind == "quarantine":
                    frame = frame[~frame["pg_stage"].isin(list(skip_stages))]
                    keys = zip(frame["pg_batch"].tolist(), frame["pg_row"].tolist(), strict=True)
                    accepted = [(b, int(r)) in released for b, r in keys]
                else:
                    accepted = [True] * len(frame)
                keep = [c for c in frame.columns if not str(c).startswith("pg_")]
                frames.append(
                    frame[[*keep, "pg_batch", "pg_row"]].assign(
                        pg_accepted=np.asarray(accepted, dtype=bool)
                    )
                )
            if not frames:
                continue
            rows = pd.concat(frames, ignore_index=True).sort_values("pg_row", ascending=False)
            parts.append(rows.head(limit - taken))
            taken += len(parts[-1])
            if taken >= limit:
                break
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    def blocklist(self) -> set[str]:
        """Every row hash a reviewer rejected."""
        with self._connect() as db:
            return {r[0] for r in db.execute("SELECT row_hash FROM blocklist")}

    def landed(self) -> dict[str, Landed]:
        """What the ledger remembers of each landing-folder name, by name."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM landed ORDER BY at, name").fetchall()
        return {r["name"]: Landed(**dict(r)) for r in rows}

    def clean_frame(self) -> pd.DataFrame:
        """The whole clean training set, in the order it was committed.

        Committed files never change, so the frame is kept for the process and a
        later call reads only the files committed since (a flow judging batch after
        batch re-reads nothing). Callers get a shallow copy: pandas' copy-on-write
        keeps their changes out of the kept frame. The gate, not this, checks the
        files' hashes.
        """
        return self._frame_of("clean", tuple(self.files("clean")))

    def reference_frame(self, reference: ReferenceVersion) -> pd.DataFrame:
        """The rows of one reference version, read from its clean files in their order.

        Kept like ``clean_frame``: a version that extends the one read before
        (a promotion) reads only the files it adds.
        """
        return self._frame_of("reference", reference.files)

    def _frame_of(self, slot: str, files: tuple[FileRecord, ...]) -> pd.DataFrame:
        """The rows of ``files``, kept per store and slot; reads only files not kept yet."""
        key = f"{self.root.resolve()}\0{slot}"
        known, frame = _kept_frames.get(key, ((), pd.DataFrame()))
        if files[: len(known)] != known:
            known, frame = (), pd.DataFrame()
        frames = [f for f in (self.read(r) for r in files[len(known) :]) if len(f)]
        if frames:
            frame = pd.concat([frame, *frames] if len(frame) else frames, ignore_index=True)
        _kept_frames[key] = (files, frame)
        # A new object sharing the kept data: copy-on-write copies it if the caller writes.
        return frame.copy(deep=False)

    def reference(self, version: int | None = None) -> ReferenceVersion | None:
        """A reference version (default the current one, the highest); None if there is none.

        Raises
        ------
        ReviewError
            When ``version`` is given and the ledger has no such version.
        """
        with self._connect() as db:
            found = self._references(db, version)
        if version is not None and not found:
            raise ReviewError(f"{self.ledger_path}: no reference version {version}")
        return found[-1] if found else None

    def references(self) -> list[ReferenceVersion]:
        """Every reference version, the first (the seed) first."""
        with self._connect() as db:
            return self._references(db, None, every=True)

    @staticmethod
    def _references(
        db: sqlite3.Connection, version: int | None, *, every: bool = False
    ) -> list[ReferenceVersion]:
        """The versions asked for: one (``version``, or the highest), or ``every`` one."""
        if every:
            heads = db.execute("SELECT * FROM reference_versions ORDER BY version").fetchall()
        elif version is None:
            heads = db.execute(
                "SELECT * FROM reference_versions ORDER BY version DESC LIMIT 1"
            ).fetchall()
        else:
            heads = db.execute(
                "SELECT * FROM reference_versions WHERE version = ?", (version,)
            ).fetchall()
        out = []
        for head in heads:
            rows = db.execute(
                "SELECT f.path, f.batch_id, f.kind, f.sha256, f.rows FROM reference_files r "
                "JOIN files f ON f.path = r.path WHERE r.version = ? ORDER BY r.position",
                (head["version"],),
            ).fetchall()
            files = tuple(FileRecord(**dict(r)) for r in rows)
            out.append(ReferenceVersion(files=files, **dict(head)))
        return out

    def id_owners(self, id_column: str) -> dict[str, str]:
        """Each id in the clean training set (as text) and the batch that holds it."""
        trained = self.clean_frame()
        if id_column not in trained.columns:
            return {}
        ids = trained[id_column].astype("string").tolist()
        return dict(zip(ids, trained["pg_batch"].tolist(), strict=True))

    # -- writing -------------------------------------------------------------
    def recover(self) -> list[Path]:
        """Remove what a process that died mid-commit left behind, and nothing else.

        Every commit starts by creating ``staging/<name>/`` (holding its owner's
        process id) and ends by removing it after the ledger transaction. A
        staging folder whose owner is gone marks a commit that may have been cut
        short: its files are removed unless the ledger lists them. Temporary files
        of interrupted atomic writes go too. Files nobody wrote through
        poisonguard are left for the gate to report.

        Returns
        -------
        list of Path
            The files and folders removed.
        """
        removed: list[Path] = []
        markers = []
        for marker in sorted((self.root / "staging").iterdir()):
            owner = _owner(marker)
            if owner is not None and _pid_alive(owner):
                continue  # a live process (this one included) is mid-way through it
            markers.append(marker)
        if not markers:
            for sub in ("clean", "quarantine"):
                for p in (self.root / sub).glob(".*.tmp"):
                    p.unlink(missing_ok=True)
                    removed.append(p)
            return removed
        known = {f.path for f in self.files()}
        with self._connect() as db:
            batches = {r[0] for r in db.execute("SELECT batch_id FROM batches").fetchall()}
        for sub in ("clean", "quarantine"):
            for p in (self.root / sub).glob(".*.tmp"):
                p.unlink(missing_ok=True)
                removed.append(p)
        for marker in markers:
            name = marker.name
            for sub in ("clean", "quarantine"):
                p = self.root / sub / f"{name}.parquet"
                if p.exists() and p.relative_to(self.root).as_posix() not in known:
                    p.unlink()
                    removed.append(p)
            rejected = self.root / "rejected" / name
            if rejected.exists() and name not in batches:
                shutil.rmtree(rejected)
                removed.append(rejected)
            shutil.rmtree(marker) if marker.is_dir() else marker.unlink()
        return removed

    def staging_dir(self, name: str) -> Path:
        """``staging/<name>/``, marked as this process's (see ``recover``)."""
        path = self.root / "staging" / name
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        (path / ".owner").write_text(str(os.getpid()))
        return path

    def commit(self, outcome: Outcome) -> BatchRecord:
        """Write a batch's outcome: files first (atomically), then one ledger transaction.

        Raises
        ------
        StoreError
            When the outcome does not account for every input row, or the batch
            is already in the ledger.
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
        with self.writing():
            if self.batch_by_sha(outcome.sha256) is not None:
                raise StoreError(f"batch {outcome.batch_id}: its content is already in the ledger")
            marker = self.staging_dir(outcome.batch_id)
            with self._undone_on_error(marker):
                written = self._write_files(
                    outcome.batch_id, (("clean", outcome.clean), ("quarantine", outcome.quarantine))
                )
                return self._record(outcome, written, n_clean, n_quar, marker)

    @contextlib.contextmanager
    def _undone_on_error(self, marker: Path) -> Iterator[None]:
        """On an error before the ledger commit, remove what this commit wrote (a full disk)."""
        try:
            yield
        except BaseException:
            (marker / ".owner").unlink(missing_ok=True)  # no live owner: recover() may take it
            self.recover()
            raise

    def _record(
        self,
        outcome: Outcome,
        written: list[tuple[str, str, int | None]],
        n_clean: int,
        n_quar: int,
        marker: Path,
    ) -> BatchRecord:
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
            reference_version=outcome.reference_version,
        )
        with self.transaction() as db:
            columns = list(record.as_dict())
            db.execute(
                f"INSERT INTO batches ({', '.join(columns)}) "
                f"VALUES ({', '.join(':' + c for c in columns)})",
                record.as_dict(),
            )
            db.executemany(
                "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?)",
                [(p, outcome.batch_id, p.split("/")[0], h, n, finished) for p, h, n in written],
            )
            if outcome.landed is not None:
                self._remember(db, outcome.landed, outcome.sha256, outcome.batch_id, "batch", None)
            detail = {
                "source": outcome.source,
                "sha256": outcome.sha256,
                "status": outcome.status,
                "rows_in": outcome.rows_in,
                "rows_clean": n_clean,
                "rows_quarantined": n_quar,
                "rows_rejected": outcome.rows_rejected,
                "files": {p: h for p, h, _ in written},
                "reference_version": outcome.reference_version,
                **(outcome.detail or {}),
            }
            self._append_audit(db, "ingest", outcome.batch_id, "poisonguard", detail)
            if outcome.status == "seed":
                seeded = [
                    FileRecord(p, outcome.batch_id, "clean", h, n)
                    for p, h, n in written
                    if p.startswith("clean/")
                ]
                self._add_reference(db, seeded, actor="poisonguard", note="the seed")
            crash_point("before-ledger-commit")
        crash_point("after-ledger-commit")
        shutil.rmtree(marker, ignore_errors=True)
        return record

    def _write_files(
        self, name: str, frames: tuple[tuple[str, pd.DataFrame | None], ...]
    ) -> list[tuple[str, str, int | None]]:
        """Write ``<kind>/<name>.parquet`` atomically for each frame; (path, sha256, rows) each."""
        written: list[tuple[str, str, int | None]] = []
        for kind, frame in frames:
            if frame is None:
                continue
            data = parquet_bytes(frame)
            rel = f"{kind}/{name}.parquet"
            atomic_write_bytes(self.root / rel, data)
            written.append((rel, hashlib.sha256(data).hexdigest(), len(frame)))
            crash_point(f"after-{kind}-file")
        return written

    def reject(self, landed_copy: Path, file_name: str, outcome: Outcome) -> BatchRecord:
        """Keep a rejected batch's bytes as they arrived, with its reason, and record it.

        ``landed_copy`` is the file to keep (moved, not copied, when it lies in
        the store's staging area); ``file_name`` is the safe name to keep it under.
        """
        with self.writing():
            if self.batch_by_sha(outcome.sha256) is not None:
                raise StoreError(f"batch {outcome.batch_id}: its content is already in the ledger")
            marker = self.staging_dir(outcome.batch_id)
            with self._undone_on_error(marker):
                return self._keep_rejected(landed_copy, file_name, outcome, marker)

    def _keep_rejected(
        self, landed_copy: Path, file_name: str, outcome: Outcome, marker: Path
    ) -> BatchRecord:
        folder = self.root / "rejected" / outcome.batch_id
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        kept = folder / file_name
        staging = (self.root / "staging").resolve()
        if Path(landed_copy).resolve().is_relative_to(staging):
            os.replace(landed_copy, kept)
        else:
            atomic_write_bytes(kept, Path(landed_copy).read_bytes())
        reason = {"file": outcome.source, "reason": outcome.reason, "sha256": outcome.sha256}
        text = (json.dumps(reason, indent=2) + "\n").encode()
        atomic_write_bytes(folder / "reason.json", text)
        written: list[tuple[str, str, int | None]] = [
            (kept.relative_to(self.root).as_posix(), sha256_file(kept), None),
            (f"rejected/{outcome.batch_id}/reason.json", hashlib.sha256(text).hexdigest(), None),
        ]
        return self._record(outcome, written, 0, 0, marker)

    def remember_skip(
        self,
        landed: tuple[str, int, int],
        reason: str,
        sha256: str | None = None,
        batch_id: str | None = None,
    ) -> bool:
        """Remember a landing entry that is not a batch (or repeats one), with the reason.

        Returns True when this entry (name, size, time) was not remembered before.
        """
        with self.transaction() as db:
            row = db.execute(
                "SELECT size, mtime_ns FROM landed WHERE name = ?", (landed[0],)
            ).fetchone()
            if row is not None and (row[0], row[1]) == (landed[1], landed[2]):
                return False
            self._remember(db, landed, sha256, batch_id, "skipped", reason)
            return True

    @staticmethod
    def _remember(
        db: sqlite3.Connection,
        landed: tuple[str, int, int],
        sha256: str | None,
        batch_id: str | None,
        outcome: str,
        reason: str | None,
    ) -> None:
        db.execute(
            "INSERT OR REPLACE INTO landed VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (*landed, sha256, batch_id, outcome, reason, now()),
        )

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
        exactly as a batch is committed: file first, then one ledger transaction
        that lists the file, moves the row counts, records each row's review and
        appends to the audit chain. Rejected rows' content hashes join the
        blocklist. Callers hold ``writing()`` from reading the rows' state to here.

        Raises
        ------
        StoreError
            When one of the rows was reviewed meanwhile (nothing is written then).
        """
        if action not in ("release", "reject"):
            raise ValueError(f"unknown review action {action!r}")
        at = now()
        pg_rows = [int(r) for r in rows["pg_row"].tolist()]
        with self.writing():
            name = f"{batch_id}.{action}"
            if action == "release":
                taken = {f.path for f in self.files()}  # revoked and superseded ones too
                seq = 0
                while f"clean/{batch_id}.release-{seq}.parquet" in taken:
                    seq += 1
                name = f"{batch_id}.release-{seq}"
            marker = self.staging_dir(name)
            with self._undone_on_error(marker):
                written = self._write_files(name, (("clean", rows),)) if action == "release" else []
                self._record_review(batch_id, action, rows, pg_rows, written, actor, note, at)
            shutil.rmtree(marker, ignore_errors=True)

    def _record_review(
        self,
        batch_id: str,
        action: str,
        rows: pd.DataFrame,
        pg_rows: list[int],
        written: list[tuple[str, str, int | None]],
        actor: str,
        note: str,
        at: str,
    ) -> None:
        n = len(pg_rows)
        with self.transaction() as db:
            marks = ",".join("?" * len(pg_rows))
            done = db.execute(
                f"SELECT COUNT(*) FROM reviews WHERE batch_id = ? AND pg_row IN ({marks})",
                (batch_id, *pg_rows),
            ).fetchone()[0]
            if done:
                raise StoreError(
                    f"batch {batch_id}: {done} of these rows were reviewed meanwhile; "
                    "nothing was written, look again with `poisonguard review show`"
                )
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
                [(batch_id, r, action, actor, note, at) for r in pg_rows],
            )
            hashes = [str(h) for h in rows["pg_row_hash"].tolist()]
            if action == "reject":
                db.executemany(
                    "INSERT OR IGNORE INTO blocklist VALUES (?, ?, ?, ?, ?)",
                    [(h, batch_id, r, actor, at) for h, r in zip(hashes, pg_rows, strict=True)],
                )
            detail = {
                "rows": pg_rows,
                "note": note,
                "files": {p: h for p, h, _ in written},
                **({"row_hashes": hashes} if action == "reject" else {}),
            }
            self._append_audit(db, action, batch_id, actor, detail)
            crash_point("review-before-ledger-commit")

    # -- the pinned reference ------------------------------------------------
    def promote(
        self,
        batch_ids: Sequence[str],
        *,
        actor: str,
        note: str = "",
        max_source_share: float = 1.0,
    ) -> ReferenceVersion:
        """Make a new reference version: the current one plus these batches' clean files.

        Only committed batches with clean rows and no rows awaiting review can
        join, and only files not yet in the reference are added (rows a reviewer
        released after an earlier promotion join with a later one). The new
        version and its audit entry (``reference``) are written in one transaction.

        Parameters
        ----------
        batch_ids : sequence of str
        actor : str
            Who promotes (recorded).
        note : str
            Why (recorded).
        max_source_share : float
            The share of the new version's rows that batches of one landing source
            (``landing.source_of``) may hold at most; the seed belongs to none.

        Raises
        ------
        ReviewError
            For no batches or no actor, an unknown batch, one rejected whole, with no
            clean rows, rows awaiting review or already in the reference, a store
            with no reference, or a promotion past ``max_source_share``; nothing is
            written then.
        """
        if not actor.strip():
            raise ReviewError("promoting to the reference needs the promoter's name (--actor)")
        wanted = list(dict.fromkeys(batch_ids))
        if not wanted:
            raise ReviewError("name at least one batch to promote to the reference")
        with self.transaction() as db:
            (current,) = self._references(db, None) or (None,)
            if current is None:
                raise ReviewError(
                    f"the store {self.root} has no reference to promote into: seed it with "
                    "`poisonguard init --sample TRUSTED`"
                )
            held = {f.path for f in current.files}
            clean = self._files(db, "clean")
            added: list[FileRecord] = []
            for batch_id in wanted:
                row = db.execute("SELECT * FROM batches WHERE batch_id = ?", (batch_id,))
                rec = row.fetchone()
                if rec is None:
                    raise ReviewError(
                        f"no batch {shown(batch_id)!r} in {self.ledger_path}; "
                        "`poisonguard status` lists the batches"
                    )
                new = [f for f in clean if f.batch_id == batch_id and f.path not in held]
                refused = _not_promotable(BatchRecord(**dict(rec)), new, current.version)
                if refused:
                    raise ReviewError(f"batch {batch_id} {refused}")
                added += new
            self._check_source_share(db, [*current.files, *added], wanted, max_source_share)
            return self._add_reference(db, added, actor=actor.strip(), note=note)

    def _check_source_share(
        self,
        db: sqlite3.Connection,
        files: list[FileRecord],
        promoted: list[str],
        max_source_share: float,
    ) -> None:
        """Refuse a reference in which a source of the promoted batches holds too large a share."""
        batches = {
            r[0]: (r[1], r[2]) for r in db.execute("SELECT batch_id, source, status FROM batches")
        }
        total = sum(f.rows or 0 for f in files)
        by_source: dict[str, int] = {}
        for f in files:
            name, status = batches[f.batch_id]
            if status != "seed":
                key = source_of(name)
                by_source[key] = by_source.get(key, 0) + (f.rows or 0)
        for source in dict.fromkeys(source_of(batches[b][0]) for b in promoted):
            share = by_source.get(source, 0) / total if total else 0.0
            if share > max_source_share:
                raise ReviewError(
                    f"promoting {', '.join(promoted)} would give the source {shown(source)!r} "
                    f"{by_source[source]:,} of the reference's {total:,} rows ({share:.1%}); "
                    f"reference.max_source_share allows {max_source_share:.1%}"
                )

    def _add_reference(
        self,
        db: sqlite3.Connection,
        added: list[FileRecord],
        *,
        actor: str,
        note: str,
        without: str | None = None,
    ) -> ReferenceVersion:
        """Write the next reference version (the current one's files but those of batch
        ``without``, then ``added``) and its audit entry, inside the caller's transaction."""
        (current,) = self._references(db, None) or (None,)
        kept = [f for f in (current.files if current else ()) if f.batch_id != without]
        files = (*kept, *added)
        ref = ReferenceVersion(
            version=1 if current is None else current.version + 1,
            digest=reference_digest(f.sha256 for f in files),
            rows=sum(f.rows or 0 for f in files),
            files=files,
            actor=actor,
            note=note,
            at=now(),
        )
        db.execute(
            "INSERT INTO reference_versions VALUES (?, ?, ?, ?, ?, ?)",
            (ref.version, ref.digest, ref.rows, ref.actor, ref.note, ref.at),
        )
        db.executemany(
            "INSERT INTO reference_files VALUES (?, ?, ?)",
            [(ref.version, i, f.path) for i, f in enumerate(files)],
        )
        batches = list(dict.fromkeys(f.batch_id for f in added)) or ([without] if without else [])
        detail = {
            **ref.summary(),
            "added": list(dict.fromkeys(f.batch_id for f in added)),
            "files": [f.path for f in files],
            "note": note,
            **({"removed": [without]} if without else {}),
        }
        # The entry names its batch when it adds or removes one (the seed, a single
        # promotion, a revocation).
        self._append_audit(
            db, "reference", batches[0] if len(batches) == 1 else None, actor, detail
        )
        return ref

    # -- revocation and re-scan holds ----------------------------------------
    def revoke(self, batch_id: str, *, actor: str, note: str) -> Revocation:
        """Take a committed batch out of the training set and the reference, for good.

        A revoked batch is judged bad as a whole, so its rows are treated like rows
        a reviewer rejected: its clean files (released rows' included) are listed
        as ``revoked`` (their bytes stay, for the audit and the blocklist), its
        rows still awaiting review are rejected, and every row's content hash
        joins the blocklist, so that near-copies arriving later are held
        (``pipeline.held_by_blocklist``). The batch's counts move to rejected and
        its status becomes ``revoked``. When the batch is in the current
        reference, a new version without it is written, so that later batches
        are judged without it. All of it, with the ``revoke`` audit entry (and
        the ``reference`` one), is one ledger transaction; no file is written.

        Revoking a revoked batch changes nothing (``Revocation.already`` says
        when it was revoked).

        Raises
        ------
        ReviewError
            For no actor or note, an unknown batch, a batch rejected whole, or
            the seed (the trust anchor: give the store another seed instead).
        """
        if not actor.strip():
            raise ReviewError("revoking a batch needs the reviewer's name (--actor)")
        if not note.strip():
            raise ReviewError("revoking a batch needs a note saying why (--note TEXT)")
        actor, note = actor.strip(), note.strip()
        with self.writing():
            rec = self.batch(batch_id)
            if rec is None:
                raise ReviewError(
                    f"no batch {shown(batch_id)!r} in {self.ledger_path}; "
                    "`poisonguard status` lists the batches"
                )
            if rec.status == "revoked":
                return Revocation(batch_id, 0, 0, (), None, already=rec.reason)
            if rec.status == "rejected":
                raise ReviewError(
                    f"batch {batch_id} was rejected whole; none of its rows is in the training "
                    "set to revoke"
                )
            if rec.status == "seed":
                raise ReviewError(
                    f"batch {batch_id} is the trusted seed, the reference every other batch is "
                    "judged against; it cannot be revoked (seed a new store instead)"
                )
            files = [f for f in self.files("clean") if f.batch_id == batch_id]
            clean = [self.read(f, ["pg_row", "pg_row_hash"]) for f in files]
            held = self.quarantine_frame(batch_id)
            done = set(self.reviews(batch_id)["pg_row"].astype(int))
            pending = held[~held["pg_row"].isin(done)] if len(held) else held
            if len(pending) != rec.rows_quarantined:
                raise StoreError(
                    f"batch {batch_id}: the ledger counts {rec.rows_quarantined} rows awaiting "
                    f"review, its quarantine files {len(pending)}; run `poisonguard gate`"
                )
            gone = pd.concat([*clean, pending.reindex(columns=["pg_row", "pg_row_hash"])])
            return self._record_revocation(rec, files, gone, pending, actor, note)

    def _record_revocation(
        self,
        rec: BatchRecord,
        files: list[FileRecord],
        gone: pd.DataFrame,
        pending: pd.DataFrame,
        actor: str,
        note: str,
    ) -> Revocation:
        at = now()
        rejected = [int(r) for r in pending["pg_row"].tolist()] if len(pending) else []
        hashes = [str(h) for h in gone["pg_row_hash"].tolist()]
        with self.transaction() as db:
            db.execute(
                "UPDATE batches SET status = 'revoked', rows_rejected = rows_rejected + "
                "rows_clean + rows_quarantined, rows_clean = 0, rows_quarantined = 0, "
                "reason = ? WHERE batch_id = ?",
                (f"revoked on {at[:10]} by {actor}: {note}", rec.batch_id),
            )
            db.executemany(
                "UPDATE files SET kind = 'revoked' WHERE path = ?", [(f.path,) for f in files]
            )
            db.executemany(
                "INSERT INTO reviews VALUES (?, ?, 'reject', ?, ?, ?)",
                [(rec.batch_id, r, actor, note, at) for r in rejected],
            )
            db.executemany(
                "INSERT OR IGNORE INTO blocklist VALUES (?, ?, ?, ?, ?)",
                [
                    (h, rec.batch_id, int(r), actor, at)
                    for h, r in zip(hashes, gone["pg_row"].tolist(), strict=True)
                ],
            )
            detail = {
                "rows_revoked": rec.rows_clean,
                "rejected": rejected,
                "revoked_files": [f.path for f in files],
                "row_hashes": hashes,
                "note": note,
            }
            self._append_audit(db, "revoke", rec.batch_id, actor, detail)
            (current,) = self._references(db, None) or (None,)
            reference = None
            if current is not None and rec.batch_id in current.batch_ids:
                reference = self._add_reference(
                    db,
                    [],
                    actor=actor,
                    note=f"revoked {rec.batch_id}: {note}",
                    without=rec.batch_id,
                )
            crash_point("revoke-before-ledger-commit")
        return Revocation(
            rec.batch_id, rec.rows_clean, len(rejected), tuple(f.path for f in files), reference
        )

    def hold_rescanned(self, flagged: pd.DataFrame, *, actor: str, note: str) -> dict[str, int]:
        """Move rows a re-scan flagged out of the training set into quarantine, awaiting review.

        For each batch, the clean files that hold flagged rows are listed as
        ``superseded`` (their bytes kept) and replaced by
        ``clean/<batch>.rescan-<n>.parquet`` with their other rows; the flagged
        rows go to ``quarantine/<batch>.rescan-<n>.parquet`` with ``pg_stage``
        ``rescan`` and their reasons. Files are written first, then one ledger
        transaction lists them, moves the batches' counts from clean to
        quarantined and appends one ``rescan`` audit entry per batch, as a batch
        commit does. A flagged row a reviewer had released gets its review back
        (the entry records it), so it is reviewed again like any held row.

        Parameters
        ----------
        flagged : DataFrame
            ``pg_batch``, ``pg_row`` and ``pg_reason`` of each row to hold; other
            ``pg_`` columns (``pg_suspicion``, ``pg_score_<detector>``) are kept.
        actor, note : str
            Who holds them and why (recorded).

        Returns
        -------
        dict of str to int
            Rows held per batch.

        Raises
        ------
        ReviewError
            When a row is not in a clean file of its committed batch outside the
            current reference (it moved since the re-scan); nothing is written.
        """
        if flagged.empty:
            return {}
        with self.writing(), contextlib.ExitStack() as undo:
            current = self.reference()
            pinned = {f.path for f in current.files} if current is not None else set()
            clean = [f for f in self.files("clean") if f.path not in pinned]
            taken = {f.path for f in self.files()}
            plans = []
            for batch_id, rows in flagged.groupby("pg_batch", sort=False):
                plan = self._plan_hold(str(batch_id), rows, clean, taken)
                marker = self.staging_dir(plan.name)
                undo.enter_context(self._undone_on_error(marker))
                plans.append((plan, marker))
            written = [
                self._write_files(p.name, (("clean", p.kept), ("quarantine", p.moved)))
                for p, _ in plans
            ]
            self._record_holds([p for p, _ in plans], written, actor, note)
        for _, marker in plans:
            shutil.rmtree(marker, ignore_errors=True)
        return {p.batch_id: len(p.moved) for p, _ in plans}

    def _plan_hold(
        self, batch_id: str, rows: pd.DataFrame, clean: list[FileRecord], taken: set[str]
    ) -> _Hold:
        """Which files one batch's re-scan hold supersedes, and the rows of its new files."""
        rec = self.batch(batch_id)
        if rec is None or rec.status != "committed":
            raise ReviewError(
                f"batch {shown(batch_id)} is not a committed batch of {self.ledger_path} "
                f"({'unknown' if rec is None else rec.status}); run `poisonguard rescan` again"
            )
        wanted = {int(r) for r in rows["pg_row"].tolist()}
        frames = [(f, self.read(f)) for f in clean if f.batch_id == batch_id]
        hit = [(f, frame) for f, frame in frames if frame["pg_row"].isin(wanted).any()]
        found = set().union(*(set(frame["pg_row"].tolist()) for _, frame in hit)) & wanted
        if found != wanted:
            raise ReviewError(
                f"batch {batch_id}: row {min(wanted - found)} is not in its clean files outside "
                "the reference any more; run `poisonguard rescan` again"
            )
        both = pd.concat([frame for _, frame in hit], ignore_index=True)
        moving = both["pg_row"].isin(wanted)
        extra = rows.drop(columns=["pg_batch"]).assign(pg_stage="rescan")
        moved = both[moving].merge(extra, on="pg_row", how="left", validate="one_to_one")
        seq = 0
        while {f"{k}/{batch_id}.rescan-{seq}.parquet" for k in ("clean", "quarantine")} & taken:
            seq += 1
        kept = both[~moving].reset_index(drop=True)
        return _Hold(
            batch_id,
            f"{batch_id}.rescan-{seq}",
            tuple(f.path for f, _ in hit),
            kept if len(kept) else None,
            moved.reset_index(drop=True),
        )

    def _record_holds(
        self,
        plans: list[_Hold],
        written: list[list[tuple[str, str, int | None]]],
        actor: str,
        note: str,
    ) -> None:
        at = now()
        with self.transaction() as db:
            for plan, files in zip(plans, written, strict=True):
                rows = sorted(int(r) for r in plan.moved["pg_row"].tolist())
                marks = ",".join("?" * len(rows))
                reopened = [
                    int(r[0])
                    for r in db.execute(
                        f"SELECT pg_row FROM reviews WHERE batch_id = ? AND action = 'release' "
                        f"AND pg_row IN ({marks}) ORDER BY pg_row",
                        (plan.batch_id, *rows),
                    )
                ]
                db.executemany(
                    "DELETE FROM reviews WHERE batch_id = ? AND pg_row = ?",
                    [(plan.batch_id, r) for r in reopened],
                )
                db.executemany(
                    "UPDATE files SET kind = 'superseded' WHERE path = ? AND kind = 'clean'",
                    [(p,) for p in plan.superseded],
                )
                db.executemany(
                    "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?)",
                    [(p, plan.batch_id, p.split("/")[0], h, n, at) for p, h, n in files],
                )
                db.execute(
                    "UPDATE batches SET rows_clean = rows_clean - ?, "
                    "rows_quarantined = rows_quarantined + ? WHERE batch_id = ?",
                    (len(rows), len(rows), plan.batch_id),
                )
                detail = {
                    "rows": rows,
                    "files": {p: h for p, h, _ in files},
                    "superseded": list(plan.superseded),
                    "reopened": reopened,
                    "note": note,
                }
                self._append_audit(db, "rescan", plan.batch_id, actor, detail)
            crash_point("rescan-before-ledger-commit")

    # -- audit chain ---------------------------------------------------------
    def _audit_key(self) -> bytes:
        if self._key is None:
            try:
                text = self.key_path.read_text().strip()
            except FileNotFoundError:
                raise StoreError(
                    f"the audit key {self.key_path} is missing: the audit chain can be neither "
                    "extended nor verified"
                ) from None
            if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
                raise StoreError(f"the audit key {self.key_path} is not a poisonguard key")
            self._key = bytes.fromhex(text)
        return self._key

    def _mac(self, text: str) -> str:
        return hmac.new(self._audit_key(), text.encode(), hashlib.sha256).hexdigest()

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
            "INSERT INTO audit (at, action, batch_id, actor, detail, prev_hash, hash, mac) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (at, action, batch_id, actor, text, prev, digest, self._mac(digest)),
        )
        self._appended = True

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

    def source_events(self) -> list[Event]:
        """Every batch's evidence and every cleared alarm, per landing source, in ledger order.

        Read from the audit chain, which the gate verifies: a batch's counts
        (``source_evidence`` in its ingest entry) and ``source_clear`` entries.
        Seed batches are not a source's evidence.
        """
        events = []
        for entry in self.audit_log():
            if entry["action"] not in ("ingest", "source_clear"):
                continue
            detail = json.loads(entry["detail"])
            if entry["action"] == "source_clear":
                events.append(Event(str(detail["source"]), cleared=True))
            elif detail.get("status") != "seed":
                counts = detail.get("source_evidence")
                events.append(
                    Event(
                        source_of(str(detail["source"])),
                        entry["batch_id"],
                        detail.get("rows_in"),
                        None if counts is None else BatchCounts.from_dict(counts),
                    )
                )
        return events

    def clear_source(self, source: str, *, actor: str, note: str) -> None:
        """Restart a landing source's sequential test (and the pooled one), with an audit entry."""
        with self.writing():
            known = {e.source for e in self.source_events()}
            if source not in known:
                raise ReviewError(
                    f"no landing source {shown(source)!r} in the store {self.root}; "
                    f"known: {', '.join(sorted(map(shown, known))) or 'none'}"
                )
            self.audit("source_clear", actor=actor, detail={"source": source, "note": note})

    def head(self) -> dict[str, Any] | None:
        """The audit chain's last entry as ``{"seq", "hash", "mac"}``; None when empty."""
        with self._connect() as db:
            row = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        if row is None:
            return None
        return {"seq": int(row[0]), "hash": row[1], "mac": self._mac(f"{row[0]}:{row[1]}")}

    def _read_anchor(self) -> dict[str, Any]:
        try:
            data = json.loads(self.anchor_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {"broken": True}
        return data if isinstance(data, dict) else {"broken": True}

    def _write_anchor(self, db: sqlite3.Connection, vouched: dict[str, Any] | None = None) -> None:
        row = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        anchor = self._read_anchor()
        anchor.pop("broken", None)
        if row is not None:
            anchor["head"] = {
                "seq": int(row[0]),
                "hash": row[1],
                "mac": self._mac(f"{row[0]}:{row[1]}"),
            }
        if vouched is not None:
            anchor["vouched"] = vouched
        atomic_write_bytes(self.anchor_path, (json.dumps(anchor, indent=2) + "\n").encode())

    def vouch(self, head: dict[str, Any]) -> None:
        """Record in the anchor that the gate vouched for the chain up to ``head``."""
        with self.writing(), self._connect() as db:
            self._write_anchor(db, vouched=head)

    def verify_audit(self) -> str | None:
        """Check the chain, its keyed MACs and its anchor; the first problem, or None.

        The chain must be unbroken from the first entry, every entry's MAC must
        match the audit key, and the anchored head and the head the gate last
        vouched for must both still be in it (so truncation and deletion are
        errors, not an intact shorter chain).
        """
        try:
            self._audit_key()
        except StoreError as exc:
            return str(exc)
        prev = GENESIS
        by_seq: dict[int, str] = {}
        log = self.audit_log()
        for entry in log:
            if entry["prev_hash"] != prev:
                return f"audit entry {entry['seq']} does not follow the entry before it (prev_hash)"
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
            if not hmac.compare_digest(entry["mac"] or "", self._mac(entry["hash"])):
                return (
                    f"audit entry {entry['seq']} ({entry['action']}) was not written with this "
                    "store's audit key (MAC mismatch): the chain was rewritten"
                )
            by_seq[int(entry["seq"])] = entry["hash"]
            prev = entry["hash"]
        if not log:
            return f"the audit chain in {self.ledger_path} is empty; a store has at least its seed"
        anchor = self._read_anchor()
        if not anchor or anchor.get("broken"):
            state = "missing" if not anchor else "unreadable"
            return f"the audit anchor {self.anchor_path} is {state}"
        for what in ("head", "vouched"):
            mark = anchor.get(what)
            if mark is None and what == "vouched":
                continue
            problem = self._check_mark(mark, by_seq, what)
            if problem:
                return problem
        return None

    def _check_mark(self, mark: Any, by_seq: dict[int, str], what: str) -> str | None:
        label = "anchored head" if what == "head" else "head the gate last vouched for"
        try:
            seq, digest, mac = int(mark["seq"]), str(mark["hash"]), str(mark["mac"])
        except (TypeError, KeyError, ValueError):
            return f"the audit anchor {self.anchor_path} has no valid {what}"
        if not hmac.compare_digest(mac, self._mac(f"{seq}:{digest}")):
            return f"the {label} in {self.anchor_path} was not written with this store's key"
        if by_seq.get(seq) != digest:
            have = max(by_seq) if by_seq else 0
            return (
                f"the {label} (entry {seq}, {digest[:12]}...) is not in the audit chain, which "
                f"ends at entry {have}: entries were removed or rewritten"
            )
        return None


def _not_promotable(rec: BatchRecord, new: list[FileRecord], current: int) -> str | None:
    """Why a batch cannot join the reference now (given its clean files not in it); None if it can."""
    if rec.status == "rejected":
        return "was rejected whole; it has no clean rows to promote"
    if rec.status == "revoked":
        return f"was revoked ({rec.reason}); it has no rows in the training set to promote"
    if rec.rows_quarantined:
        return (
            f"has {rec.rows_quarantined} rows awaiting review; review them first "
            f"(`poisonguard review show {rec.batch_id}`)"
        )
    if rec.rows_clean == 0:
        return "has no clean rows to promote"
    if not new:
        return f"is already in reference version {current}"
    return None


#: The data step of each schema step, by the version it reaches (see ``Store._migrate``).
_MIGRATIONS: dict[int, Callable[[Store, sqlite3.Connection], dict[str, Any]]] = {
    3: Store._migrate_to_3,
}


def _owner(marker: Path) -> int | None:
    try:
        return int((marker / ".owner").read_text())
    except (OSError, ValueError):
        return None


def is_disk_full(exc: BaseException) -> bool:
    """True for the OSError a full disk raises."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
