"""The SQL both ledgers speak: every read of ``LedgerView`` and most writes of
``LedgerTransaction``, over a DB-API connection (``sqlite3``'s or ``psycopg``'s).

The schema's migration steps are shared too (``SCHEMA_STEPS``). Queries are
written with ``?`` placeholders; a backend whose driver takes another
style (psycopg's ``%s``) sets ``_PARAM``. Where the dialects part, a backend sets
the column that keeps insertion order (``_ORDER``: SQLite's ``rowid``) and how the
audit chain's head is read (``_HEAD_QUERY``), and writes its own ``add_audit``
and how the schema version is kept (``_version``, ``_set_version``): the head's lock
and the version are each backend's own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields
from typing import Any

from poisonguard.store.ledger import (
    ROW_COUNTS,
    SCHEMA_VERSION,
    AuditEntry,
    BatchRecord,
    Blocked,
    FileRecord,
    Landed,
    ReferenceSample,
    ReferenceVersion,
    Review,
)

# --------------------------------------------------------------------------- schema step 2 -> 3
# The pinned reference (issue 11, item 1): the versions of the rows the detectors
# are fitted on, and the version that judged each batch. One step of its own, so
# that other steps merge beside it. (SQLite reads BIGINT as its INTEGER.)
_REFERENCE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS reference_versions (
    version INTEGER PRIMARY KEY,
    digest TEXT NOT NULL,
    rows BIGINT NOT NULL,
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

# --------------------------------------------------------------------------- schema step 3 -> 4
# Keyed row hashes (issue 13, item 3): no table changes; the store's data step re-keys the
# blocklist (``Store._migrate_to_4``).
_KEYED_HASHES_SCHEMA: tuple[str, ...] = ()

# --------------------------------------------------------------------------- schema step 4 -> 5
# The reference sample (issue 12, item 2): each version's sample file, the rows the
# detectors are fitted on, with its hash, row count and the rule that drew it.
_SAMPLE_SCHEMA = tuple(
    f"ALTER TABLE reference_versions ADD COLUMN {column}"
    for column in (
        "sample_path TEXT",
        "sample_sha256 TEXT",
        "sample_rows BIGINT",
        "sample_rule TEXT",
    )
)

#: The oldest ledger schema this code migrates, and the steps after it, in order:
#: (the version a step reaches, its statements), the same for both ledgers. Each step's
#: data step is the store's (``upgrade``'s ``step``).
BASE_SCHEMA_VERSION = 2
SCHEMA_STEPS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (3, _REFERENCE_SCHEMA),
    (4, _KEYED_HASHES_SCHEMA),
    (5, _SAMPLE_SCHEMA),
)

_BATCH_COLUMNS = tuple(f.name for f in fields(BatchRecord))
_LANDED_COLUMNS = tuple(f.name for f in fields(Landed))
_FILE_COLUMNS = "path, batch_id, kind, sha256, rows"
_SAMPLE_FIELDS = tuple(f.name for f in fields(ReferenceSample))
_AUDIT_COLUMNS = "seq, at, action, batch_id, actor, detail, prev_hash, hash, mac"


def _marks(n: int) -> str:
    return ", ".join("?" * n)


class SqlRecords:
    """The reads of ``LedgerView``, over whatever connection ``_db`` gives."""

    #: The driver's placeholder.
    _PARAM = "?"
    #: The column that keeps the order rows were inserted in.
    _ORDER = "rowid"
    #: The audit chain's last ``seq`` and ``hash`` (no row, or ``seq`` 0, for an empty chain).
    _HEAD_QUERY = "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"

    def _db(self) -> contextlib.AbstractContextManager[Any]:
        raise NotImplementedError

    def _sql(self, query: str) -> str:
        return query if self._PARAM == "?" else query.replace("?", self._PARAM)

    def _all(self, query: str, *args: Any) -> list[dict[str, Any]]:
        with self._db() as db:
            return [dict(r) for r in db.execute(self._sql(query), args).fetchall()]

    def _one(self, query: str, *args: Any) -> dict[str, Any] | None:
        with self._db() as db:
            row = db.execute(self._sql(query), args).fetchone()
        return None if row is None else dict(row)

    def _where(
        self, query: str, column: str, value: str | None, order: str
    ) -> list[dict[str, Any]]:
        """``query``'s rows, those whose ``column`` is ``value`` when it is given, in ``order``."""
        if value is None:
            return self._all(f"{query} ORDER BY {order}")
        return self._all(f"{query} WHERE {column} = ? ORDER BY {order}", value)

    def _batches(self, where: str, *args: Any) -> list[BatchRecord]:
        rows = self._all(f"SELECT {', '.join(_BATCH_COLUMNS)} FROM batches {where}", *args)
        return [BatchRecord(**r) for r in rows]

    def batch(self, batch_id: str) -> BatchRecord | None:
        return next(iter(self._batches("WHERE batch_id = ?", batch_id)), None)

    def batch_by_sha(self, sha256: str) -> BatchRecord | None:
        return next(iter(self._batches("WHERE sha256 = ?", sha256)), None)

    def batches(self) -> list[BatchRecord]:
        return self._batches("ORDER BY started_at, batch_id")

    def committed(self) -> list[BatchRecord]:
        return self._batches(
            f"WHERE status = 'committed' ORDER BY finished_at DESC, {self._ORDER} DESC"
        )

    def files(self, kind: str | None = None) -> list[FileRecord]:
        query = f"SELECT {_FILE_COLUMNS} FROM files"
        rows = self._where(query, "kind", kind, f"created_at, {self._ORDER}")
        return [FileRecord(**r) for r in rows]

    def reviews(self, batch_id: str | None = None) -> list[Review]:
        query = "SELECT batch_id, pg_row, action, actor, note, at FROM reviews"
        return [
            Review(**r) for r in self._where(query, "batch_id", batch_id, "at, batch_id, pg_row")
        ]

    def blocked(self) -> list[Blocked]:
        rows = self._all(
            "SELECT row_hash, batch_id, pg_row, actor, at FROM blocklist "
            "ORDER BY at, batch_id, pg_row"
        )
        return [Blocked(**r) for r in rows]

    def landed(self) -> dict[str, Landed]:
        rows = self._all(f"SELECT {', '.join(_LANDED_COLUMNS)} FROM landed ORDER BY at, name")
        return {r["name"]: Landed(**r) for r in rows}

    def landed_entry(self, name: str) -> Landed | None:
        row = self._one(f"SELECT {', '.join(_LANDED_COLUMNS)} FROM landed WHERE name = ?", name)
        return Landed(**row) if row else None

    def references(
        self, version: int | None = None, *, every: bool = False
    ) -> list[ReferenceVersion]:
        # Every column: a migration's earlier step reads versions before the sample's exist.
        query = "SELECT * FROM reference_versions"
        if every:
            heads = self._all(f"{query} ORDER BY version")
        elif version is None:
            heads = self._all(f"{query} ORDER BY version DESC LIMIT 1")
        else:
            heads = self._all(f"{query} WHERE version = ?", version)
        out = []
        for head in heads:
            rows = self._all(
                "SELECT f.path, f.batch_id, f.kind, f.sha256, f.rows FROM reference_files r "
                "JOIN files f ON f.path = r.path WHERE r.version = ? ORDER BY r.position",
                head["version"],
            )
            sampled = [head.pop(f"sample_{c}", None) for c in _SAMPLE_FIELDS]
            sample = ReferenceSample(*sampled) if sampled[1] is not None else None
            files = tuple(FileRecord(**r) for r in rows)
            out.append(ReferenceVersion(files=files, sample=sample, **head))
        return out

    def audit_log(self) -> list[dict[str, Any]]:
        return self._all(f"SELECT {_AUDIT_COLUMNS} FROM audit ORDER BY seq")

    def audit_since(self, seq: int) -> list[dict[str, Any]]:
        return self._all(f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE seq > ? ORDER BY seq", seq)

    def audit_head(self) -> tuple[int, str] | None:
        row = self._one(self._HEAD_QUERY)
        if row is None or row["seq"] == 0:
            return None
        return int(row["seq"]), str(row["hash"])


class SqlTransaction(SqlRecords):
    """``LedgerTransaction`` on one connection inside one transaction; a backend adds
    ``add_audit`` and ``upgrade``."""

    def __init__(self, db: Any) -> None:
        self._conn = db

    @contextlib.contextmanager
    def _db(self) -> Iterator[Any]:
        yield self._conn

    def _run(self, query: str, *args: Any) -> Any:
        """Execute one statement; its cursor."""
        return self._conn.execute(self._sql(query), args)

    def _many(self, query: str, params: Sequence[Sequence[Any]]) -> None:
        if params:
            self._conn.cursor().executemany(self._sql(query), params)

    def add_batch(self, record: BatchRecord) -> None:
        self._run(
            f"INSERT INTO batches ({', '.join(_BATCH_COLUMNS)}) "
            f"VALUES ({_marks(len(_BATCH_COLUMNS))})",
            *(getattr(record, c) for c in _BATCH_COLUMNS),
        )

    def add_files(self, files: Sequence[FileRecord], at: str) -> None:
        self._many(
            f"INSERT INTO files ({_FILE_COLUMNS}, created_at) VALUES ({_marks(6)})",
            [(f.path, f.batch_id, f.kind, f.sha256, f.rows, at) for f in files],
        )

    def set_kind(self, paths: Sequence[str], kind: str, *, was: str | None = None) -> None:
        if was is None:
            self._many("UPDATE files SET kind = ? WHERE path = ?", [(kind, p) for p in paths])
        else:
            self._many(
                "UPDATE files SET kind = ? WHERE path = ? AND kind = ?",
                [(kind, p, was) for p in paths],
            )

    def move_rows(self, batch_id: str, n: int, source: str, target: str) -> None:
        if source not in ROW_COUNTS or target not in ROW_COUNTS:
            raise ValueError(f"rows move between {ROW_COUNTS}; got {source!r} -> {target!r}")
        to, fro = f"rows_{target}", f"rows_{source}"
        self._run(
            f"UPDATE batches SET {to} = {to} + ?, {fro} = {fro} - ? WHERE batch_id = ?",
            n,
            n,
            batch_id,
        )

    def revoke_batch(self, batch_id: str, reason: str) -> None:
        self._run(
            "UPDATE batches SET status = 'revoked', rows_rejected = rows_rejected + "
            "rows_clean + rows_quarantined, rows_clean = 0, rows_quarantined = 0, "
            "reason = ? WHERE batch_id = ?",
            reason,
            batch_id,
        )

    def forget_rows(
        self, batch_id: str, clean: int, quarantined: int, rejected: int, *, rows_in: int
    ) -> None:
        self._run(
            "UPDATE batches SET rows_in = rows_in - ?, rows_clean = rows_clean - ?, "
            "rows_quarantined = rows_quarantined - ?, rows_rejected = rows_rejected - ? "
            "WHERE batch_id = ?",
            rows_in,
            clean,
            quarantined,
            rejected,
            batch_id,
        )

    def add_reviews(self, reviews: Sequence[Review]) -> None:
        self._many(
            f"INSERT INTO reviews (batch_id, pg_row, action, actor, note, at) VALUES ({_marks(6)})",
            [(r.batch_id, r.pg_row, r.action, r.actor, r.note, r.at) for r in reviews],
        )

    def drop_reviews(self, batch_id: str, rows: Sequence[int]) -> None:
        self._many(
            "DELETE FROM reviews WHERE batch_id = ? AND pg_row = ?", [(batch_id, r) for r in rows]
        )

    def block(self, entries: Sequence[Blocked]) -> None:
        self._many(
            f"INSERT INTO blocklist (row_hash, batch_id, pg_row, actor, at) VALUES ({_marks(5)}) "
            "ON CONFLICT (row_hash) DO NOTHING",
            [(b.row_hash, b.batch_id, b.pg_row, b.actor, b.at) for b in entries],
        )

    def unblock(self, row_hashes: Sequence[str]) -> None:
        self._many("DELETE FROM blocklist WHERE row_hash = ?", [(h,) for h in row_hashes])

    def remember(self, landed: Landed) -> None:
        updates = ", ".join(f"{c} = excluded.{c}" for c in _LANDED_COLUMNS if c != "name")
        self._run(
            f"INSERT INTO landed ({', '.join(_LANDED_COLUMNS)}) "
            f"VALUES ({_marks(len(_LANDED_COLUMNS))}) ON CONFLICT (name) DO UPDATE SET {updates}",
            *(getattr(landed, c) for c in _LANDED_COLUMNS),
        )

    def add_reference(self, ref: ReferenceVersion) -> None:
        self._run(
            "INSERT INTO reference_versions (version, digest, rows, actor, note, at) "
            f"VALUES ({_marks(6)})",
            ref.version,
            ref.digest,
            ref.rows,
            ref.actor,
            ref.note,
            ref.at,
        )
        if ref.sample is not None:
            self.set_sample(ref.version, ref.sample)
        self._many(
            "INSERT INTO reference_files (version, position, path) VALUES (?, ?, ?)",
            [(ref.version, i, f.path) for i, f in enumerate(ref.files)],
        )

    def set_sample(self, version: int, sample: ReferenceSample | None) -> None:
        sets = ", ".join(f"sample_{c} = ?" for c in _SAMPLE_FIELDS)
        self._run(
            f"UPDATE reference_versions SET {sets} WHERE version = ?",
            *(None if sample is None else getattr(sample, c) for c in _SAMPLE_FIELDS),
            version,
        )

    def add_audit(self, entry: AuditEntry) -> None:
        raise NotImplementedError

    def _version(self) -> int:
        """The schema version, held until the transaction ends."""
        raise NotImplementedError

    def _set_version(self, version: int) -> None:
        raise NotImplementedError

    def upgrade(self, step: Callable[[int, int], None]) -> None:
        version = self._version()
        for to, statements in SCHEMA_STEPS:
            if to <= version:
                continue  # another process migrated meanwhile
            for statement in statements:
                self._conn.execute(statement)
            step(version, to)
            version = to
        self._set_version(SCHEMA_VERSION)
