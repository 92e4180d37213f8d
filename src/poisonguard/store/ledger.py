"""The ledger: what the store records about its files, behind one protocol.

The ledger holds batches, the files the store wrote (hash, row count, kind),
reviews, the blocklist, the landing memo, the reference versions and the audit
chain. The store decides what to record and checks every rule; a ledger only
keeps records and answers questions about them, inside transactions. The
protocols below are the operations the store needs, in its terms: a backend
keeps its query language, its schema and its locks to itself.

``SqliteLedger`` (``poisonguard.store.sqlite``) is the embedded default, a
SQLite file inside the store; ``PostgresLedger`` (``poisonguard.store.postgres``)
keeps the same records in a PostgreSQL database, so that runners on several
hosts share one store. ``open_store`` chooses one from the config
(``[store] ledger``), and ``tests/test_ledger_contract.py`` holds both to this
protocol.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from poisonguard.store.files import now

#: The ledger schema this code reads and writes. A backend brings an older ledger
#: to it in one transaction (``LedgerTransaction.upgrade``).
SCHEMA_VERSION = 5

#: Where a batch's rows are counted (``LedgerTransaction.move_rows``).
ROW_COUNTS = ("clean", "quarantined", "rejected")

#: The kind of a file an erasure rewrote (``erasure``): listed, its bytes deleted.
ERASED = "erased"
#: The kind of a file a retention purge removed (``retention``): listed, its bytes deleted.
PURGED = "purged"
#: The kinds of files the ledger still lists whose bytes are gone on purpose.
GONE = frozenset({ERASED, PURGED})

#: The ``prev_hash`` of the audit chain's first entry.
GENESIS = "0" * 64


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


def file_records(batch_id: str, written: Iterable[tuple[str, str, int | None]]) -> list[FileRecord]:
    """Files one change wrote, ``(path, sha256, rows)`` each, as records; a file's kind is
    its folder (``clean/...``, ``quarantine/...``, ``rejected/...``)."""
    return [FileRecord(p, batch_id, p.split("/")[0], h, n) for p, h, n in written]


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
class Review:
    """A reviewer's decision on one quarantined row (``release`` or ``reject``)."""

    batch_id: str
    pg_row: int
    action: str
    actor: str
    note: str
    at: str


@dataclass(frozen=True)
class Blocked:
    """One blocklist entry: a rejected row's content hash and the first rejection of it."""

    row_hash: str
    batch_id: str
    pg_row: int
    actor: str
    at: str


@dataclass(frozen=True)
class AuditEntry:
    """One entry of the audit chain as it is appended (its ``seq`` is the ledger's to give).

    ``hash`` is the SHA-256 of the entry and the one before (``prev_hash``);
    ``mac`` is its HMAC under the audit key, which never enters the ledger.
    """

    at: str
    action: str
    batch_id: str | None
    actor: str
    detail: str
    prev_hash: str
    hash: str
    mac: str


@dataclass(frozen=True)
class ReferenceSample:
    """A reference version's sample: the file of the rows its detectors are fitted on.

    Attributes
    ----------
    path : str
        Relative to the store's data files (``reference/version-<n>.parquet``).
    sha256 : str
    rows : int
    rule : str
        How it was drawn (``sampling.SampleRule.to_json``).
    """

    path: str
    sha256: str
    rows: int
    rule: str


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
    sample : ReferenceSample or None
        Its sample (written with the version); None for a version an older
        poisonguard wrote and the migration could not sample (``Store._migrate_to_5``).
    """

    version: int
    digest: str
    rows: int
    files: tuple[FileRecord, ...]
    actor: str
    note: str
    at: str
    sample: ReferenceSample | None = None

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


def check_version(version: int, oldest: int) -> None:
    """Refuse to create a ledger at a schema version a backend cannot write.

    Raises
    ------
    ValueError
        When ``version`` is not between ``oldest`` (the oldest schema the backend
        migrates) and ``SCHEMA_VERSION``.
    """
    if not oldest <= version <= SCHEMA_VERSION:
        raise ValueError(
            f"The 'version' parameter of create() must be in [{oldest}, {SCHEMA_VERSION}]. "
            f"Got {version!r} instead."
        )


def audit_moved(entry: AuditEntry) -> str:
    """Why an append was refused: the chain's head is no longer the entry it follows."""
    return (
        f"the audit chain's head is no longer {entry.prev_hash[:12]}..., the entry this "
        f"{entry.action!r} entry follows: another writer appended meanwhile; nothing was written "
        "(appending after it would fork the chain)"
    )


# --------------------------------------------------------------------------- the protocols


class LedgerView(Protocol):
    """What the store reads from its ledger: a ledger answers it, and so does a transaction
    (seeing its own writes). Lists come in the order stated, which callers rely on."""

    def batch(self, batch_id: str) -> BatchRecord | None:
        """One batch, or None."""
        ...

    def batch_by_sha(self, sha256: str) -> BatchRecord | None:
        """The batch of this content hash, or None."""
        ...

    def batches(self) -> list[BatchRecord]:
        """Every batch, by the time it started, then its id."""
        ...

    def committed(self) -> list[BatchRecord]:
        """The batches of status ``committed``, the last committed first."""
        ...

    def files(self, kind: str | None = None) -> list[FileRecord]:
        """The files of one kind (default every file), in the order they were recorded."""
        ...

    def reviews(self, batch_id: str | None = None) -> list[Review]:
        """Review decisions (of one batch, or every one), by time, batch and row."""
        ...

    def blocked(self) -> list[Blocked]:
        """The blocklist, by the time of the rejection, batch and row."""
        ...

    def landed(self) -> dict[str, Landed]:
        """The landing memo by name (by the time it was remembered, then the name)."""
        ...

    def landed_entry(self, name: str) -> Landed | None:
        """What the landing memo holds for one name, or None."""
        ...

    def references(
        self, version: int | None = None, *, every: bool = False
    ) -> list[ReferenceVersion]:
        """Reference versions: ``every`` one (oldest first), or one (``version``, default the
        highest); an empty list when there is none."""
        ...

    def audit_log(self) -> list[dict[str, Any]]:
        """Every audit entry as a dict of its fields (``seq`` first), oldest first."""
        ...

    def audit_since(self, seq: int) -> list[dict[str, Any]]:
        """The audit entries after ``seq`` (``seq`` 0: every one), as ``audit_log``, oldest first."""
        ...

    def audit_head(self) -> tuple[int, str] | None:
        """The last audit entry's ``seq`` and ``hash``; None for an empty chain."""
        ...


class LedgerTransaction(LedgerView, Protocol):
    """One write transaction: everything in it is recorded together, or nothing is."""

    def add_batch(self, record: BatchRecord) -> None:
        """Record a new batch."""
        ...

    def add_files(self, files: Sequence[FileRecord], at: str) -> None:
        """Record files the store wrote."""
        ...

    def set_kind(self, paths: Sequence[str], kind: str, *, was: str | None = None) -> None:
        """List files under another kind (only those of kind ``was``, when given)."""
        ...

    def move_rows(self, batch_id: str, n: int, source: str, target: str) -> None:
        """Move ``n`` of a batch's rows from one count of ``ROW_COUNTS`` to another."""
        ...

    def revoke_batch(self, batch_id: str, reason: str) -> None:
        """Mark a batch ``revoked``: every row of it counts as rejected, with ``reason``."""
        ...

    def forget_rows(
        self, batch_id: str, clean: int, quarantined: int, rejected: int, *, rows_in: int
    ) -> None:
        """Take erased rows out of a batch: ``rows_in`` fewer arrived, and each count of
        ``ROW_COUNTS`` loses its share."""
        ...

    def add_reviews(self, reviews: Sequence[Review]) -> None:
        """Record review decisions (one per batch and row)."""
        ...

    def drop_reviews(self, batch_id: str, rows: Sequence[int]) -> None:
        """Forget the decisions on these rows of a batch (they are to be reviewed again)."""
        ...

    def block(self, entries: Sequence[Blocked]) -> None:
        """Add rows to the blocklist; a hash already on it keeps its first entry."""
        ...

    def unblock(self, row_hashes: Sequence[str]) -> None:
        """Take these hashes off the blocklist (an erasure's rows; the migration that re-keys it
        puts each row back under its keyed hash)."""
        ...

    def remember(self, landed: Landed) -> None:
        """Remember a landing-folder name (replacing what was remembered of it)."""
        ...

    def add_reference(self, ref: ReferenceVersion) -> None:
        """Record a new reference version, its files in their order, and its sample."""
        ...

    def set_sample(self, version: int, sample: ReferenceSample | None) -> None:
        """Record the sample of a reference version written without one (a migration), or
        drop a version's sample (None: an erasure took rows it held)."""
        ...

    def add_audit(self, entry: AuditEntry) -> None:
        """Append an entry to the audit chain. ``entry.prev_hash`` was read from
        ``audit_head`` in this transaction, and no other writer may append in between
        (a backend holds the head from that read to the commit).

        Raises
        ------
        StoreError
            When ``entry.prev_hash`` is not the chain's head (``GENESIS`` for an empty
            chain): the entry would fork the chain, and nothing is written.
        """
        ...

    def upgrade(self, step: Callable[[int, int], None]) -> None:
        """Bring the ledger's schema to ``SCHEMA_VERSION``, one step at a time, calling
        ``step(from, to)`` after each (the store's data step and audit entry)."""
        ...


class Ledger(LedgerView, Protocol):
    """A store's ledger: its records, its transactions and its locks.

    Attributes
    ----------
    location : str
        Where the ledger lives, as messages name it (a file, a database).
    """

    location: str

    def exists(self) -> bool:
        """Whether the ledger was created."""
        ...

    def create(self, version: int = SCHEMA_VERSION) -> None:
        """Create an empty ledger at ``SCHEMA_VERSION`` (or at an older ``version`` the
        backend migrates from, as an older poisonguard would have: the migration tests)."""
        ...

    def schema_version(self) -> int:
        """The schema version of an existing ledger.

        Raises
        ------
        StoreError
            When it cannot be read as a poisonguard ledger, or was written by a
            version this code neither reads nor migrates.
        """
        ...

    def transaction(self) -> AbstractContextManager[LedgerTransaction]:
        """One write transaction: committed when the block ends, rolled back on an error."""
        ...

    def write_lock(self, wait: float, what: str) -> AbstractContextManager[bool]:
        """Hold the store's write lock, re-entrant within a process; yields True for the
        outermost hold.

        Raises
        ------
        StoreError
            When another process holds it for longer than ``wait`` seconds.
        """
        ...

    def run_lock(self) -> AbstractContextManager[None]:
        """Hold the store's run lock (one run at a time).

        Raises
        ------
        StoreError
            At once, when another process holds it.
        """
        ...

    def compact(self) -> None:
        """Rewrite the ledger's storage so that deleted records leave no bytes behind, as far
        as the backend can promise (outside a transaction; an erasure's last step). SQLite:
        ``VACUUM`` and an emptied write-ahead log. PostgreSQL: ``VACUUM (FULL)`` of the
        tables an erasure changes; its write-ahead log, replicas and backups keep old row
        versions until they age out (docs/privacy.md)."""
        ...


# --------------------------------------------------------------------------- copying


def copy_ledger(source: LedgerView, target: Ledger) -> None:
    """Copy every record of one ledger into a new one, in one transaction of the target.

    Lists keep their order: files in the order they were recorded (all with the
    copy's time), the audit chain entry by entry (so it verifies as the source's
    did, under the source's key).
    """
    target.create()
    with target.transaction() as tx:
        for batch in source.batches():
            tx.add_batch(batch)
        tx.add_files(source.files(), now())
        tx.add_reviews(source.reviews())
        tx.block(source.blocked())
        for landed in source.landed().values():
            tx.remember(landed)
        for ref in source.references(every=True):
            tx.add_reference(ref)
        for e in source.audit_log():
            tx.add_audit(
                AuditEntry(
                    e["at"],
                    e["action"],
                    e["batch_id"],
                    e["actor"],
                    e["detail"],
                    e["prev_hash"],
                    e["hash"],
                    e["mac"],
                )
            )
