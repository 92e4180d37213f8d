"""``SqliteLedger``: the embedded ledger, a SQLite file inside the store.

The store's folder holds ``ledger.sqlite`` (write-ahead log, full fsync), and
beside it the lock files ``.lock`` (every change to the store, see
``Store.writing``) and ``.run.lock`` (one run at a time), held with ``flock``.
A write transaction is ``BEGIN IMMEDIATE`` ... ``COMMIT``. The schema's version
is SQLite's ``user_version``; an older ledger is migrated step by step.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from poisonguard.errors import StoreError
from poisonguard.store.ledger import (
    ROW_COUNTS,
    SCHEMA_VERSION,
    AuditEntry,
    BatchRecord,
    Blocked,
    FileRecord,
    Landed,
    ReferenceVersion,
    Review,
)
from poisonguard.store.locking import lock_for, run_lock

#: The ledger's file in the store's folder.
LEDGER_FILE = "ledger.sqlite"
#: What a failing ledger raises beyond ``StoreError`` (the command line names it).
LEDGER_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error,)

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
#: (the version a step reaches, its statements). Each step's data step is the store's
#: (``upgrade``'s ``step``).
_BASE_SCHEMA_VERSION = 2
_SCHEMA_STEPS: tuple[tuple[int, tuple[str, ...]], ...] = ((3, _REFERENCE_SCHEMA),)


class _Records:
    """The reads of ``LedgerView``, over whatever connection ``_db`` gives."""

    def _db(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _all(self, query: str, *args: Any) -> list[sqlite3.Row]:
        with self._db() as db:
            return db.execute(query, args).fetchall()

    def _one(self, query: str, *args: Any) -> sqlite3.Row | None:
        with self._db() as db:
            row: sqlite3.Row | None = db.execute(query, args).fetchone()
        return row

    def _where(self, query: str, column: str, value: str | None, order: str) -> list[sqlite3.Row]:
        """``query``'s rows, those whose ``column`` is ``value`` when it is given, in ``order``."""
        if value is None:
            return self._all(f"{query} ORDER BY {order}")
        return self._all(f"{query} WHERE {column} = ? ORDER BY {order}", value)

    def batch(self, batch_id: str) -> BatchRecord | None:
        row = self._one("SELECT * FROM batches WHERE batch_id = ?", batch_id)
        return BatchRecord(**dict(row)) if row else None

    def batch_by_sha(self, sha256: str) -> BatchRecord | None:
        row = self._one("SELECT * FROM batches WHERE sha256 = ?", sha256)
        return BatchRecord(**dict(row)) if row else None

    def batches(self) -> list[BatchRecord]:
        rows = self._all("SELECT * FROM batches ORDER BY started_at, batch_id")
        return [BatchRecord(**dict(r)) for r in rows]

    def committed(self) -> list[BatchRecord]:
        rows = self._all(
            "SELECT * FROM batches WHERE status = 'committed' ORDER BY finished_at DESC, rowid DESC"
        )
        return [BatchRecord(**dict(r)) for r in rows]

    def files(self, kind: str | None = None) -> list[FileRecord]:
        query = "SELECT path, batch_id, kind, sha256, rows FROM files"
        return [
            FileRecord(**dict(r)) for r in self._where(query, "kind", kind, "created_at, rowid")
        ]

    def reviews(self, batch_id: str | None = None) -> list[Review]:
        rows = self._where("SELECT * FROM reviews", "batch_id", batch_id, "at, batch_id, pg_row")
        return [Review(**dict(r)) for r in rows]

    def blocked(self) -> list[Blocked]:
        rows = self._all("SELECT * FROM blocklist ORDER BY at, batch_id, pg_row")
        return [Blocked(**dict(r)) for r in rows]

    def landed(self) -> dict[str, Landed]:
        rows = self._all("SELECT * FROM landed ORDER BY at, name")
        return {r["name"]: Landed(**dict(r)) for r in rows}

    def landed_entry(self, name: str) -> Landed | None:
        row = self._one("SELECT * FROM landed WHERE name = ?", name)
        return Landed(**dict(row)) if row else None

    def references(
        self, version: int | None = None, *, every: bool = False
    ) -> list[ReferenceVersion]:
        with self._db() as db:
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

    def audit_log(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._all("SELECT * FROM audit ORDER BY seq")]

    def audit_head(self) -> tuple[int, str] | None:
        row = self._one("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        return None if row is None else (int(row[0]), str(row[1]))


class _Transaction(_Records):
    """``LedgerTransaction`` on one connection inside ``BEGIN IMMEDIATE``."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._conn = db

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        yield self._conn

    def add_batch(self, record: BatchRecord) -> None:
        columns = list(record.as_dict())
        self._conn.execute(
            f"INSERT INTO batches ({', '.join(columns)}) "
            f"VALUES ({', '.join(':' + c for c in columns)})",
            record.as_dict(),
        )

    def add_files(self, files: Sequence[FileRecord], at: str) -> None:
        self._conn.executemany(
            "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?)",
            [(f.path, f.batch_id, f.kind, f.sha256, f.rows, at) for f in files],
        )

    def set_kind(self, paths: Sequence[str], kind: str, *, was: str | None = None) -> None:
        if was is None:
            self._conn.executemany(
                "UPDATE files SET kind = ? WHERE path = ?", [(kind, p) for p in paths]
            )
        else:
            self._conn.executemany(
                "UPDATE files SET kind = ? WHERE path = ? AND kind = ?",
                [(kind, p, was) for p in paths],
            )

    def move_rows(self, batch_id: str, n: int, source: str, target: str) -> None:
        if source not in ROW_COUNTS or target not in ROW_COUNTS:
            raise ValueError(f"rows move between {ROW_COUNTS}; got {source!r} -> {target!r}")
        to, fro = f"rows_{target}", f"rows_{source}"
        self._conn.execute(
            f"UPDATE batches SET {to} = {to} + ?, {fro} = {fro} - ? WHERE batch_id = ?",
            (n, n, batch_id),
        )

    def revoke_batch(self, batch_id: str, reason: str) -> None:
        self._conn.execute(
            "UPDATE batches SET status = 'revoked', rows_rejected = rows_rejected + "
            "rows_clean + rows_quarantined, rows_clean = 0, rows_quarantined = 0, "
            "reason = ? WHERE batch_id = ?",
            (reason, batch_id),
        )

    def add_reviews(self, reviews: Sequence[Review]) -> None:
        self._conn.executemany(
            "INSERT INTO reviews VALUES (?, ?, ?, ?, ?, ?)",
            [(r.batch_id, r.pg_row, r.action, r.actor, r.note, r.at) for r in reviews],
        )

    def drop_reviews(self, batch_id: str, rows: Sequence[int]) -> None:
        self._conn.executemany(
            "DELETE FROM reviews WHERE batch_id = ? AND pg_row = ?", [(batch_id, r) for r in rows]
        )

    def block(self, entries: Sequence[Blocked]) -> None:
        self._conn.executemany(
            "INSERT OR IGNORE INTO blocklist VALUES (?, ?, ?, ?, ?)",
            [(b.row_hash, b.batch_id, b.pg_row, b.actor, b.at) for b in entries],
        )

    def remember(self, landed: Landed) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO landed VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                landed.name,
                landed.size,
                landed.mtime_ns,
                landed.sha256,
                landed.batch_id,
                landed.outcome,
                landed.reason,
                landed.at,
            ),
        )

    def add_reference(self, ref: ReferenceVersion) -> None:
        self._conn.execute(
            "INSERT INTO reference_versions VALUES (?, ?, ?, ?, ?, ?)",
            (ref.version, ref.digest, ref.rows, ref.actor, ref.note, ref.at),
        )
        self._conn.executemany(
            "INSERT INTO reference_files VALUES (?, ?, ?)",
            [(ref.version, i, f.path) for i, f in enumerate(ref.files)],
        )

    def add_audit(self, entry: AuditEntry) -> None:
        # One writer at a time (BEGIN IMMEDIATE): the head read before this is still the head.
        self._conn.execute(
            "INSERT INTO audit (at, action, batch_id, actor, detail, prev_hash, hash, mac) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.at,
                entry.action,
                entry.batch_id,
                entry.actor,
                entry.detail,
                entry.prev_hash,
                entry.hash,
                entry.mac,
            ),
        )

    def upgrade(self, step: Callable[[int, int], None]) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        for to, statements in _SCHEMA_STEPS:
            if to <= version:
                continue  # another process migrated meanwhile
            for statement in statements:
                self._conn.execute(statement)
            step(version, to)
            version = to
        self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


class SqliteLedger(_Records):
    """The embedded ledger: ``<root>/ledger.sqlite``, locked with files beside it.

    Parameters
    ----------
    root : path
        The store's folder.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.path = self.root / LEDGER_FILE
        self.location = str(self.path)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    def exists(self) -> bool:
        return self.path.is_file()

    def create(self) -> None:
        with self._db() as db:
            db.executescript(_SCHEMA)
            for _, statements in _SCHEMA_STEPS:
                for statement in statements:
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        os.chmod(self.path, 0o600)

    def schema_version(self) -> int:
        try:
            with self._db() as db:
                version = int(db.execute("PRAGMA user_version").fetchone()[0])
                tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{self.path}: cannot be opened as a poisonguard ledger ({exc})"
            ) from exc
        if "audit" not in tables or not _BASE_SCHEMA_VERSION <= version <= SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: ledger schema {version}, this poisonguard reads "
                f"{_BASE_SCHEMA_VERSION} to {SCHEMA_VERSION}; it was written by another version "
                "(create a new store with `poisonguard init`)"
            )
        return version

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_Transaction]:
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield _Transaction(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def write_lock(self, wait: float, what: str) -> contextlib.AbstractContextManager[bool]:
        return lock_for(self.root / ".lock").held(wait, what)

    def run_lock(self) -> contextlib.AbstractContextManager[None]:
        return run_lock(self.root / ".run.lock")

    def copy_to(self, root: Path) -> None:
        """A consistent snapshot of the ledger (SQLite's online backup, safe while a run
        writes) as the ledger of the store folder ``root``."""
        source = sqlite3.connect(self.path, timeout=30)
        target = sqlite3.connect(root / LEDGER_FILE)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
