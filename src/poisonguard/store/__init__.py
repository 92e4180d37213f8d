"""The store: the one package that touches the disk for a dataset's batches and outcomes.

Layout under the store root (owner-only: the folder is mode 0700, files 0600)::

    ledger.sqlite            batches, files, reviews, blocklist, landing memo, reference
                             versions, audit chain (the embedded ledger)
    anchor.json              the audit chain's head, keyed (see ``audit``)
    reference/version-<n>.parquet  reference version n's sample: the rows the detectors
                             are fitted on (see ``samples``)
    clean/<batch>.parquet    rows that joined the training set, one file per batch
                             (plus one per release or re-scan hold: ``<batch>.release-<n>``,
                             ``<batch>.rescan-<n>``)
    quarantine/<batch>.parquet  held rows, with scores and reasons
                             (an erasure rewrites a file as ``<batch>.forget-<n>``)
    rejected/<batch>/        the rejected file as it arrived, plus reason.json
                             (both purged after the ages ``[retention]`` sets)
    reports/                 per-batch reports
    staging/                 scratch space between flow tasks
    .lock, .run.lock         the write lock and the run lock (of the embedded ledger;
                             a PostgreSQL ledger holds advisory locks instead)

and beside it ``<store>.key``: the audit key (32 random bytes, owner-only; its
place can be set with ``dataset.audit_key``). ``clean/``, ``quarantine/``,
``rejected/``, ``reference/`` and ``anchor.json`` are the store's data files: ``[store] data`` can
put them in another folder or on any fsspec filesystem (``files.DataFiles``),
for several runners sharing one store; the rest stays in the store's folder.

Rows are named by keyed hashes (``Store.row_hashes``): the blocklist, the audit
entries and every table's ``pg_row_hash`` hold SipHash-2-4 under a row-hash key
derived from the audit key (``schema.row_hash_key``), never stored, so a leaked
ledger confirms no guessed row. Every file and folder the store creates is
owner-only from its creation, whatever the umask (``files.make_private_dirs``,
``files.create_private``).

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

Modules:

``core``
    ``Store`` (opening, reading, commits, reviews, the files' checks) and
    ``open_store``, the one way library code and flows open a store.
``revisions``
    Changes after a commit: reference versions, revocations, re-scan holds.
``erasure``
    A data subject's rows taken out of every file (``Store.forget``): files rewritten
    without them, one ledger transaction, the old files deleted, the ledger compacted.
``retention``
    Quarantine and rejected data past the ages ``[retention]`` sets: what is due,
    and the purge (files listed as ``purged``, one audit entry, then the bytes).
``samples``
    Each reference version's sample file, drawn (``poisonguard.sampling``) and written
    with the version; what fitting reads.
``ledger``
    The ``Ledger`` protocol and the records it keeps; ``sql``: the SQL both ledgers
    speak; ``sqlite``: ``SqliteLedger``, the embedded default; ``postgres``:
    ``PostgresLedger``, the ledger in a PostgreSQL database for runners on several
    hosts, with advisory locks (imported only by stores whose config names it).
``audit``
    The keyed audit chain and its anchor.
``files``
    Atomic writes, Parquet I/O, file hashes, ``DataFiles`` (the data files, local
    or through fsspec), crash points for the kill tests.
``landing``
    The landing folder on disk: listing, settling, copying and reading batch files.
``staging``
    A batch's files between flow tasks, and recovery after a process died.
``schema``
    The ``pg_`` columns the store's tables carry.
``locking``
    The re-entrant write lock, file locks, and staging folders' owners.
"""

from poisonguard.store.audit import GENESIS, AuditChain, blocklist_in, default_key_path
from poisonguard.store.core import (
    LISTED,
    LOCK_WAIT,
    SUBFOLDERS,
    Outcome,
    Store,
    TakeBack,
    copy_store,
    has_store,
    open_store,
    read_verified,
)
from poisonguard.store.erasure import Erasure, FileErasure
from poisonguard.store.files import (
    CRASH_ENV,
    RowGroupWriter,
    atomic_write_bytes,
    copy_private_tree,
    crash_point,
    drop_shared,
    is_disk_full,
    load_shared,
    make_private_dirs,
    now,
    parquet_bytes,
    read_parquet,
    read_row_group,
    row_group_sizes,
    sha256_file,
    share_value,
    temporary_folder,
    write_new_secret,
    write_table,
)
from poisonguard.store.ids import IdOwners
from poisonguard.store.landing import (
    Unreadable,
    Unsettled,
    entry_for,
    is_large,
    read_batch,
    read_chunks,
    settled,
    snapshot,
    survey,
)
from poisonguard.store.ledger import (
    ERASED,
    GONE,
    PURGED,
    SCHEMA_VERSION,
    AuditEntry,
    BatchRecord,
    Blocked,
    FileRecord,
    Landed,
    Ledger,
    LedgerTransaction,
    LedgerView,
    ReferenceSample,
    ReferenceVersion,
    Review,
    reference_digest,
)
from poisonguard.store.retention import Due, Purge, RetentionPlan
from poisonguard.store.revisions import Revocation
from poisonguard.store.schema import (
    PROVENANCE,
    add_provenance,
    data_columns,
    hex_digits,
    row_hash_key,
    row_hashes,
    row_keys,
    siphash24,
)
from poisonguard.store.sqlite import LEDGER_ERRORS, SqliteLedger
from poisonguard.store.staging import (
    Staged,
    decision_tables,
    decision_writer,
    partition_chunks,
    read_decision,
    read_decision_meta,
    read_evidence,
    rows_writer,
    stage_rows,
    stage_written,
    write_decision,
    write_decision_meta,
    write_evidence,
)

__all__ = [
    "CRASH_ENV",
    "ERASED",
    "GENESIS",
    "GONE",
    "LEDGER_ERRORS",
    "LISTED",
    "LOCK_WAIT",
    "PROVENANCE",
    "PURGED",
    "SCHEMA_VERSION",
    "SUBFOLDERS",
    "AuditChain",
    "AuditEntry",
    "BatchRecord",
    "Blocked",
    "Due",
    "Erasure",
    "FileErasure",
    "FileRecord",
    "IdOwners",
    "Landed",
    "Ledger",
    "LedgerTransaction",
    "LedgerView",
    "Outcome",
    "Purge",
    "ReferenceSample",
    "ReferenceVersion",
    "RetentionPlan",
    "Review",
    "Revocation",
    "RowGroupWriter",
    "SqliteLedger",
    "Staged",
    "Store",
    "TakeBack",
    "Unreadable",
    "Unsettled",
    "add_provenance",
    "atomic_write_bytes",
    "blocklist_in",
    "copy_private_tree",
    "copy_store",
    "crash_point",
    "data_columns",
    "decision_tables",
    "decision_writer",
    "default_key_path",
    "drop_shared",
    "entry_for",
    "has_store",
    "hex_digits",
    "is_disk_full",
    "is_large",
    "load_shared",
    "make_private_dirs",
    "now",
    "open_store",
    "parquet_bytes",
    "partition_chunks",
    "read_batch",
    "read_chunks",
    "read_decision",
    "read_decision_meta",
    "read_evidence",
    "read_parquet",
    "read_row_group",
    "read_verified",
    "reference_digest",
    "row_group_sizes",
    "row_hash_key",
    "row_hashes",
    "row_keys",
    "rows_writer",
    "settled",
    "sha256_file",
    "share_value",
    "siphash24",
    "snapshot",
    "stage_rows",
    "stage_written",
    "survey",
    "temporary_folder",
    "write_decision",
    "write_decision_meta",
    "write_evidence",
    "write_new_secret",
    "write_table",
]
