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
from collections.abc import Iterator
from dataclasses import astuple
from pathlib import Path

from poisonguard.errors import StoreError
from poisonguard.store.files import create_private
from poisonguard.store.ledger import GENESIS, SCHEMA_VERSION, AuditEntry, audit_moved, check_version
from poisonguard.store.locking import lock_for, run_lock
from poisonguard.store.sql import BASE_SCHEMA_VERSION, SCHEMA_STEPS, SqlRecords, SqlTransaction

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


class _Transaction(SqlTransaction):
    """``LedgerTransaction`` on one connection inside ``BEGIN IMMEDIATE``."""

    def add_audit(self, entry: AuditEntry) -> None:
        # One writer at a time (BEGIN IMMEDIATE): the head read before this is still the head,
        # unless the caller read it elsewhere; then the entry would fork the chain.
        head = self.audit_head()
        if (head[1] if head else GENESIS) != entry.prev_hash:
            raise StoreError(audit_moved(entry))
        self._run(
            "INSERT INTO audit (at, action, batch_id, actor, detail, prev_hash, hash, mac) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            *astuple(entry),
        )

    def _version(self) -> int:
        # BEGIN IMMEDIATE already holds the whole ledger.
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _set_version(self, version: int) -> None:
        self._conn.execute(f"PRAGMA user_version = {int(version)}")


class SqliteLedger(SqlRecords):
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
            # A deleted record's bytes are overwritten, whatever SQLite's build default (erasure).
            db.execute("PRAGMA secure_delete=ON")
            yield db
        finally:
            db.close()

    def exists(self) -> bool:
        return self.path.is_file()

    def create(self, version: int = SCHEMA_VERSION) -> None:
        check_version(version, BASE_SCHEMA_VERSION)
        # Made owner-only before SQLite opens it; its -wal and -shm files take its mode.
        os.close(create_private(self.path, exclusive=True))
        with self._db() as db:
            db.executescript(_SCHEMA)
            for to, statements in SCHEMA_STEPS:
                for statement in statements if to <= version else ():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {version}")

    def schema_version(self) -> int:
        try:
            with self._db() as db:
                version = int(db.execute("PRAGMA user_version").fetchone()[0])
                tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{self.path}: cannot be opened as a poisonguard ledger ({exc})"
            ) from exc
        if "audit" not in tables or not BASE_SCHEMA_VERSION <= version <= SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: ledger schema {version}, this poisonguard reads "
                f"{BASE_SCHEMA_VERSION} to {SCHEMA_VERSION}; it was written by another version "
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

    def compact(self) -> None:
        # VACUUM rebuilds the file from the live records (no free pages, no free space in a
        # page keeps a deleted record's bytes); the checkpoint moves it out of the
        # write-ahead log, which TRUNCATE then empties.
        with self._db() as db:
            db.execute("VACUUM")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def copy_to(self, root: Path) -> None:
        """A consistent snapshot of the ledger (SQLite's online backup, safe while a run
        writes) as the ledger of the store folder ``root``."""
        source = sqlite3.connect(self.path, timeout=30)
        os.close(create_private(root / LEDGER_FILE))
        target = sqlite3.connect(root / LEDGER_FILE)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
