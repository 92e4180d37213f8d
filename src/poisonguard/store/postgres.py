"""``PostgresLedger``: the ledger in a PostgreSQL database, shared by runners on several hosts.

A store's ledger is one PostgreSQL schema (``[store] schema``, by default
``poisonguard_<dataset>``) holding the embedded ledger's tables with the same
meaning. What differs is this module's business:

``ledger_meta``
    One row: the schema version (SQLite keeps it in ``user_version``). Created
    and migrated step by step as SQLite's, each step in one transaction that
    also holds the row (``SELECT ... FOR UPDATE``), so two runners never
    migrate at once.
``audit_head``
    One row: the audit chain's last ``seq`` and ``hash`` (``GENESIS`` at 0). An
    append reads it with ``SELECT ... FOR UPDATE`` (``audit_head`` in a
    transaction) and moves it in the same transaction as the entry, only if it
    is still the entry's ``prev_hash``; the entry takes the next ``seq``. A
    second runner's append waits for the first to commit and then follows its
    entry, so the chain cannot fork; ``audit.prev_hash`` is unique besides, so
    the database itself refuses two entries after one.
insertion order
    ``batches`` and ``files`` carry an identity column ``ord`` where SQLite has
    its ``rowid``; counts that hold nanoseconds or bytes are ``BIGINT``.

Locks are session-level advisory locks keyed from the schema's name (one key
for the write lock, one for the run lock), each held on a connection of its own
for as long as it is held. PostgreSQL frees them when that session ends, so a
runner that dies leaves no stale lock behind; every session sets TCP keepalives
on both ends (``KEEPALIVE``), so one whose host vanished ends within about a
minute. A write transaction of a process that holds the write lock checks, just
before it commits, that the lock's session is still alive, and rolls back
otherwise. Reads share one connection per process, checked first after it sat
idle (a worker between scheduled runs).

Every ``psycopg`` error leaves this module as a ``StoreError`` that names the
ledger by its ``location``: the URL without its password.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import astuple
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from poisonguard.config import SCHEMA_NAME, shown_url
from poisonguard.errors import StoreError
from poisonguard.store.ledger import GENESIS, SCHEMA_VERSION, AuditEntry, audit_moved, check_version
from poisonguard.store.locking import ReentrantLock
from poisonguard.store.sql import BASE_SCHEMA_VERSION, SCHEMA_STEPS, SqlRecords, SqlTransaction

#: Seconds a connection attempt waits, unless the URL says (``connect_timeout``).
CONNECT_TIMEOUT = 10
#: TCP keepalives on both ends of every connection, unless the URL sets them: a peer that
#: vanished without closing its connection (a host lost, a network cut) is found within
#: about a minute, so that the server frees the advisory locks of a runner whose host
#: died instead of holding them for the operating system's two hours.
KEEPALIVE = {"idle": 30, "interval": 10, "count": 3}
#: A connection reads share is checked first when it has been idle this long (seconds).
READER_IDLE = 60.0

_SCHEMA = (
    """CREATE TABLE ledger_meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
)""",
    """CREATE TABLE batches (
    batch_id TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    status TEXT NOT NULL,
    rows_in BIGINT,
    rows_clean BIGINT NOT NULL DEFAULT 0,
    rows_quarantined BIGINT NOT NULL DEFAULT 0,
    rows_rejected BIGINT NOT NULL DEFAULT 0,
    reason TEXT,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    ord BIGINT GENERATED ALWAYS AS IDENTITY
)""",
    """CREATE TABLE files (
    path TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL REFERENCES batches(batch_id),
    kind TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    rows BIGINT,
    created_at TEXT NOT NULL,
    ord BIGINT GENERATED ALWAYS AS IDENTITY
)""",
    """CREATE TABLE reviews (
    batch_id TEXT NOT NULL REFERENCES batches(batch_id),
    pg_row BIGINT NOT NULL,
    action TEXT NOT NULL,
    actor TEXT NOT NULL,
    note TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (batch_id, pg_row)
)""",
    """CREATE TABLE blocklist (
    row_hash TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL,
    pg_row BIGINT NOT NULL,
    actor TEXT NOT NULL,
    at TEXT NOT NULL
)""",
    """CREATE TABLE landed (
    name TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    mtime_ns BIGINT NOT NULL,
    sha256 TEXT,
    batch_id TEXT,
    outcome TEXT NOT NULL,
    reason TEXT,
    at TEXT NOT NULL
)""",
    """CREATE TABLE audit (
    seq BIGINT PRIMARY KEY,
    at TEXT NOT NULL,
    action TEXT NOT NULL,
    batch_id TEXT,
    actor TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL UNIQUE,
    hash TEXT NOT NULL,
    mac TEXT NOT NULL
)""",
    """CREATE TABLE audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
)""",
)


def advisory_key(schema: str, purpose: str) -> int:
    """The advisory lock key of one of a store's locks: 64 bits of a hash of its schema
    and purpose (advisory keys are per database, so the schema names the store)."""
    digest = hashlib.sha256(f"poisonguard\0{schema}\0{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class _Dialect:
    """What PostgreSQL says differently from the SQL both ledgers speak (``sql``)."""

    _PARAM = "%s"
    _ORDER = "ord"
    _HEAD_QUERY = "SELECT seq, hash FROM audit_head"


class _Transaction(_Dialect, SqlTransaction):
    """``LedgerTransaction`` on one connection inside one PostgreSQL transaction."""

    # The head stays this transaction's from the read to the commit: another writer's
    # append waits here, then reads the head this one leaves.
    _HEAD_QUERY = "SELECT seq, hash FROM audit_head FOR UPDATE"

    def add_audit(self, entry: AuditEntry) -> None:
        # Moves the head only if it is still the entry's prev_hash: under READ COMMITTED a
        # writer that reached the row after another's commit sees the moved head here.
        moved = self._run(
            "UPDATE audit_head SET seq = seq + 1, hash = ? WHERE hash = ? RETURNING seq",
            entry.hash,
            entry.prev_hash,
        ).fetchone()
        if moved is None:
            raise StoreError(audit_moved(entry))
        self._run(
            "INSERT INTO audit (seq, at, action, batch_id, actor, detail, prev_hash, hash, mac) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            moved["seq"],
            *astuple(entry),
        )

    def _version(self) -> int:
        # The row stays this transaction's: a second runner's migration waits, then finds
        # nothing left to do.
        return int(self._run("SELECT version FROM ledger_meta FOR UPDATE").fetchone()["version"])

    def _set_version(self, version: int) -> None:
        self._run("UPDATE ledger_meta SET version = ?", version)


class AdvisoryLock(ReentrantLock):
    """``ReentrantLock`` held with a session-level advisory lock on a connection of its own."""

    def __init__(self, ledger: PostgresLedger, key: int) -> None:
        super().__init__()
        self.ledger = ledger
        self.key = key
        self.conn: psycopg.Connection[Any] | None = None

    def _try_acquire(self) -> bool:
        if self.conn is None:
            self.conn = self.ledger.connect(autocommit=True)
        with self.ledger.errors():
            row = self.conn.execute(
                "SELECT pg_try_advisory_lock(%s) AS taken", (self.key,)
            ).fetchone()
        return bool(row and row["taken"])

    def _abandon(self) -> None:
        if self.conn is not None:
            self.conn.close()  # the session's advisory locks go with it
            self.conn = None

    def _release(self) -> None:
        with contextlib.suppress(psycopg.Error):
            if self.conn is not None:
                self.conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        self._abandon()

    def check_alive(self) -> None:
        """Raise when this process holds the lock but its session is gone (and the lock
        with it): a write made now might interleave with another runner's.

        Raises
        ------
        StoreError
            When the lock's session no longer answers.
        """
        if self.depth == 0 or self.conn is None:
            return
        try:
            self.conn.execute("SELECT 1")
        except psycopg.Error as exc:
            raise StoreError(
                f"lost the write lock of the ledger {self.ledger.location}: its session ended "
                f"({self.ledger.scrubbed(exc)}); nothing of this transaction was written"
            ) from exc


_LOCKS: dict[tuple[str, int], AdvisoryLock] = {}
_LOCKS_GUARD = threading.Lock()


class PostgresLedger(_Dialect, SqlRecords):
    """The ledger in a PostgreSQL database: one schema, advisory locks.

    Parameters
    ----------
    url : str
        A libpq connection URL (``postgresql://user@host:5432/db``). A password in
        it is used, never shown; libpq's ``PGPASSWORD`` and ``~/.pgpass`` work too.
    schema : str
        The PostgreSQL schema that holds this store's ledger.

    Attributes
    ----------
    location : str
        The URL without its password, and the schema.
    """

    def __init__(self, url: str, schema: str) -> None:
        if not SCHEMA_NAME.fullmatch(schema):
            raise StoreError(
                f"the ledger schema {schema!r} is not a schema name poisonguard uses "
                "(lower-case letters, digits and '_', not starting with 'pg_')"
            )
        self.url = url
        self.schema = schema
        self.location = f"{shown_url(url)} (schema {schema})"
        try:
            self._password = conninfo_to_dict(url).get("password")
        except psycopg.ProgrammingError as exc:
            raise StoreError(f"the ledger URL {shown_url(url)} cannot be read") from exc
        self._reader: psycopg.Connection[dict[str, Any]] | None = None
        self._reader_pid = 0
        self._reader_used = 0.0
        self._reader_guard = threading.RLock()

    # -- connections ----------------------------------------------------------
    def scrubbed(self, exc: BaseException) -> str:
        """An error's first line, without the password should libpq have repeated it."""
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return text.replace(str(self._password), "***") if self._password else text

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Turn ``psycopg`` errors into ``StoreError`` naming the ledger."""
        try:
            yield
        except psycopg.Error as exc:
            raise StoreError(f"the ledger {self.location}: {self.scrubbed(exc)}") from exc

    def connect(self, *, autocommit: bool = False) -> psycopg.Connection[dict[str, Any]]:
        """A new connection whose ``search_path`` is the ledger's schema.

        Raises
        ------
        StoreError
            When the server cannot be reached or refuses the login.
        """
        given = conninfo_to_dict(self.url)
        server = [f"-c search_path={self.schema}"]  # a checked name (SCHEMA_NAME)
        server += [f"-c tcp_keepalives_{k}={v}" for k, v in KEEPALIVE.items()]
        params: dict[str, Any] = {
            "application_name": "poisonguard",
            "options": " ".join([str(given.get("options", "")), *server]).strip(),
            "connect_timeout": CONNECT_TIMEOUT,
            "keepalives": 1,
            **{f"keepalives_{k}": v for k, v in KEEPALIVE.items()},
        }
        params = {k: v for k, v in params.items() if k == "options" or k not in given}
        with self.errors():
            return psycopg.connect(self.url, autocommit=autocommit, row_factory=dict_row, **params)

    @contextlib.contextmanager
    def _db(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        # Reads share one autocommit connection per process (threads take turns).
        with self._reader_guard, self.errors():
            reader = self._reader
            if reader is not None and time.monotonic() - self._reader_used > READER_IDLE:
                try:  # a long idle connection may have been closed by the server or a firewall
                    reader.execute("SELECT 1")
                except psycopg.Error:
                    with contextlib.suppress(psycopg.Error):
                        reader.close()
                    reader = None
            if reader is None or reader.closed or reader.broken or self._reader_pid != os.getpid():
                reader = self._reader = self.connect(autocommit=True)
                self._reader_pid = os.getpid()
            try:
                yield reader
            except psycopg.OperationalError:
                self._reader = None
                with contextlib.suppress(psycopg.Error):
                    reader.close()
                raise
            finally:
                self._reader_used = time.monotonic()

    def close(self) -> None:
        """Close the connection reads share (a later read opens another)."""
        with self._reader_guard:
            if self._reader is not None and self._reader_pid == os.getpid():
                self._reader.close()
            self._reader = None

    # -- the Ledger protocol ----------------------------------------------------
    def exists(self) -> bool:
        row = self._one("SELECT 1 AS found FROM pg_namespace WHERE nspname = ?", self.schema)
        return row is not None

    def create(self, version: int = SCHEMA_VERSION) -> None:
        check_version(version, BASE_SCHEMA_VERSION)
        with self.errors(), self.connect() as db, db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key(self.schema, "create"),))
            db.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
            )
            known = db.execute("SELECT to_regclass('ledger_meta') AS t").fetchone()
            if known and known["t"] is not None:
                return  # another process created it meanwhile
            statements = [s for to, step in SCHEMA_STEPS if to <= version for s in step]
            for statement in (*_SCHEMA, *statements):
                db.execute(statement)
            db.execute("INSERT INTO ledger_meta (id, version) VALUES (1, %s)", (version,))
            db.execute("INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, %s)", (GENESIS,))

    def schema_version(self) -> int:
        found = self._one(
            "SELECT to_regclass('ledger_meta') AS meta, to_regclass('audit') AS audit, "
            "to_regclass('audit_head') AS head"
        )
        if found is None or None in found.values():
            raise StoreError(
                f"{self.location}: cannot be opened as a poisonguard ledger (the schema has no "
                "ledger_meta, audit or audit_head table)"
            )
        row = self._one("SELECT version FROM ledger_meta")
        version = int(row["version"]) if row else -1
        if not BASE_SCHEMA_VERSION <= version <= SCHEMA_VERSION:
            raise StoreError(
                f"{self.location}: ledger schema {version}, this poisonguard reads "
                f"{BASE_SCHEMA_VERSION} to {SCHEMA_VERSION}; it was written by another version "
                "(create a new store with `poisonguard init`)"
            )
        return version

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_Transaction]:
        with self.errors(), self.connect() as db, db.transaction():
            yield _Transaction(db)
            self._write_lock().check_alive()

    def compact(self) -> None:
        # The tables an erasure deletes from or rewrites, each rewritten without dead row
        # versions; MVCC's write-ahead log, replicas and backups are beyond reach.
        with self.errors(), self.connect(autocommit=True) as db:
            db.execute("VACUUM (FULL) batches, files, reviews, blocklist, landed")

    def _write_lock(self) -> AdvisoryLock:
        """The process's one write lock on this ledger."""
        key = advisory_key(self.schema, "write")
        with _LOCKS_GUARD:
            ident = (self.location, key)
            if ident not in _LOCKS:
                _LOCKS[ident] = AdvisoryLock(self, key)
            return _LOCKS[ident]

    def write_lock(self, wait: float, what: str) -> contextlib.AbstractContextManager[bool]:
        return self._write_lock().held(wait, what)

    @contextlib.contextmanager
    def run_lock(self) -> Iterator[None]:
        key = advisory_key(self.schema, "run")
        conn = self.connect(autocommit=True)
        try:
            with self.errors():
                row = conn.execute("SELECT pg_try_advisory_lock(%s) AS taken", (key,)).fetchone()
            if not (row and row["taken"]):
                raise StoreError(f"another poisonguard run holds the run lock of {self.location}")
            yield
        finally:
            conn.close()  # the session's advisory lock goes with it


_LEDGERS: dict[tuple[str, str], PostgresLedger] = {}


def postgres_ledger(url: str, schema: str) -> PostgresLedger:
    """The process's one ``PostgresLedger`` of a URL and schema, so that every store opened
    on it (one per flow task) shares its connection for reads and its write lock."""
    with _LOCKS_GUARD:
        if (url, schema) not in _LEDGERS:
            _LEDGERS[url, schema] = PostgresLedger(url, schema)
        return _LEDGERS[url, schema]
