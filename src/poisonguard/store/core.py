"""The Store: a dataset's files and its ledger, changed together.

The store writes its files first, each atomically, and the ledger transaction
that lists them commits last; a file the ledger does not list, left by a process
that died mid-commit, is removed by ``recover()``. Every change happens under
one exclusive lock (``writing()``), so concurrent reviews, runs and gates
serialise instead of interleaving.

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
The one exception is erasure (``forget``, ``erasure``): a file holding a data
subject's rows is replaced by a new one without them, listed as ``erased`` and
deleted.

The ledger is a ``Ledger``: the embedded ``SqliteLedger`` unless the config names
a PostgreSQL one (``PostgresLedger``, ``[store] ledger``); the audit chain is
``AuditChain``'s; the staging area and recovery are ``staging``'s; the
changes after a commit (promotion, revocation, re-scan holds) are ``revisions``'.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import threading
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from poisonguard.errors import GateError, ReviewError, StoreError, shown
from poisonguard.landing import Entry, source_of
from poisonguard.sampling import SampleRule, rule_for, sample_key
from poisonguard.sources import BatchCounts, Event, SourceReplay, SourceTest
from poisonguard.store import erasure, retention, revisions
from poisonguard.store.audit import (
    ANCHOR,
    AuditChain,
    blocklist_in,
    default_key_path,
    entry_hash,
)
from poisonguard.store.erasure import Erasure
from poisonguard.store.files import (
    DataFiles,
    copy_private_tree,
    crash_point,
    make_private_dirs,
    now,
    parquet_bytes,
    sha256_file,
    stream_files,
    table_from_bytes,
    write_new_key,
)
from poisonguard.store.ids import IdOwners
from poisonguard.store.landing import Unreadable, Unsettled, snapshot
from poisonguard.store.ledger import (
    ERASED,
    PURGED,
    SCHEMA_VERSION,
    BatchRecord,
    Blocked,
    FileRecord,
    Landed,
    Ledger,
    LedgerTransaction,
    ReferenceSample,
    ReferenceVersion,
    Review,
    copy_ledger,
    file_records,
)
from poisonguard.store.revisions import Revocation
from poisonguard.store.samples import (
    SAMPLES,
    draw_afresh,
    drawn_by,
    read_sample,
    sample_files,
    write_sample,
)
from poisonguard.store.schema import (
    data_columns,
    hex_digits,
    row_hash_key,
    row_hashes,
    row_keys,
)
from poisonguard.store.sqlite import LEDGER_FILE, SqliteLedger
from poisonguard.store.staging import disown, recover, staging_dir

if TYPE_CHECKING:
    from datetime import datetime

    from poisonguard.config import Config, LedgerSettings, RetentionSettings
    from poisonguard.subject import Subject

SUBFOLDERS = ("clean", "quarantine", "rejected", "reports", "staging")
#: The folders of the files the ledger lists, one kind each: the store's data files, where
#: ``[store] data`` puts them (the store's folder unless it says). ``reference/`` holds the
#: reference versions' samples (``samples``).
LISTED = ("clean", "quarantine", "rejected", SAMPLES)
#: The folders that stay in the store's own folder, wherever its data files are.
LOCAL = ("reports", "staging")
#: How long a writer waits for another process's lock before giving up.
LOCK_WAIT = 60.0
#: What a commit takes back with it (``Store.commit``): the rows accepted earlier to hold for
#: review, as ``hold_rescanned`` takes them, and why.
TakeBack = Callable[[], tuple[pd.DataFrame, str]]

# Store root and slot ("clean", "reference", "rejected") -> (the files read so far, their rows):
# see Store._frame_of.
_kept_frames: dict[str, tuple[tuple[FileRecord, ...], pd.DataFrame]] = {}
# The same for the id index of each store root and id column: see Store.id_owners.
_kept_ids: dict[str, tuple[tuple[FileRecord, ...], IdOwners]] = {}


@dataclass
class _History:
    """The source events read from one ledger's audit chain, up to the entry ``seq`` whose
    hash is ``hash``, and the per-source tests run over them, per test settings, with the
    number of events each has taken."""

    seq: int
    hash: str
    events: list[Event]
    replays: dict[SourceTest, tuple[int, SourceReplay]]


# Per ledger (its location): its _History. Entries are only ever appended, and each hash
# covers the one before, so a chain whose entry at that ``seq`` has the same hash holds the
# same entries up to it: only later ones are read (``Store.source_events``). Threads of one
# process (a served flow's runs, status) share it under the lock.
_kept_events: dict[str, _History] = {}
_kept_events_lock = threading.Lock()


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


# --------------------------------------------------------------------------- the store


class Store:
    """A store: Parquet files (in its folder, or where ``data`` says), a ledger (in its
    folder, or in PostgreSQL) and an audit key.

    Library code and flows open a store with ``open_store(config)``; a bare
    ``Store(folder)`` is for tests.

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
    ledger : Ledger, optional
        The ledger (default the embedded ``SqliteLedger`` in ``root``).
    data : str or Path, optional
        Where the data files (``clean/``, ``quarantine/``, ``rejected/``,
        ``reference/`` and the audit anchor) live: a folder or an fsspec URL
        (``DataFiles``); default ``root``. Reports and the staging area stay in ``root``.
    sampling : SampleRule, optional
        How the samples of new reference versions are drawn (default
        ``sampling.rule_for(None)``: the default limit, no label); ``open_store`` gives
        the config's.

    Attributes
    ----------
    ledger_path : Path
        Where the embedded ledger's file is (``<root>/ledger.sqlite``), whichever
        ledger the store has; messages name ``ledger.location``.

    Raises
    ------
    StoreError
        When the store does not exist (and ``create`` is False), its ledger is
        missing or unreadable, or it was written by an incompatible version.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        key_path: str | Path | None = None,
        create: bool = False,
        ledger: Ledger | None = None,
        data: str | Path | None = None,
        sampling: SampleRule | None = None,
    ) -> None:
        self.root = Path(root)
        self.sampling = sampling if sampling is not None else rule_for(None)
        self._markers: list[Path] = []  # staging markers of sample files: see transaction()
        self.key_path = Path(key_path) if key_path is not None else default_key_path(self.root)
        self.ledger: Ledger = ledger if ledger is not None else SqliteLedger(self.root)
        self.data = DataFiles(data if data is not None else self.root)
        self.ledger_path = self.root / LEDGER_FILE
        self._chain = AuditChain(self.key_path, self.data)
        self.anchor_path = self._chain.anchor_path
        self._window_files: dict[str, pd.DataFrame] = {}  # see source_rows
        self._row_key: bytes | None = None  # see row_hashes
        if not self.ledger.exists():
            if not create:
                raise StoreError(self._missing_ledger())
            self._create()
        else:
            self._make_folders()
        if self.ledger.schema_version() < SCHEMA_VERSION:
            self._migrate()

    # The audit entry's hash, as the chain computes it (tests build entries with it).
    _entry_hash = staticmethod(entry_hash)

    def _missing_ledger(self) -> str:
        if self.key_path.exists():
            return (
                f"the ledger {self.ledger.location} is missing, but the audit key "
                f"{self.key_path} shows a store was created there: it was deleted or moved"
            )
        embedded = isinstance(self.ledger, SqliteLedger)
        return (
            f"no poisonguard store at {self.root} "
            f"({'no ledger.sqlite' if embedded else f'no ledger in {self.ledger.location}'}): "
            f"check dataset.store{'' if embedded else ' and [store]'} in the config, or create "
            "the store with `poisonguard init`"
        )

    def _create(self) -> None:
        if self.key_path.exists():
            raise StoreError(
                f"the audit key {self.key_path} already exists but the store {self.root} has no "
                "ledger: the store was deleted or moved; remove the key only if you mean to "
                "start a new store there"
            )
        make_private_dirs(self.root)
        os.chmod(self.root, 0o700)  # a folder made before (empty: the ledger is not there yet)
        self._make_folders()
        self.ledger.create()
        write_new_key(self.key_path)

    def _make_folders(self) -> None:
        for sub in LOCAL:
            make_private_dirs(self.root / sub)
        for sub in LISTED:
            self.data.makedirs(sub)

    def _migrate(self) -> None:
        """Bring an older ledger to ``SCHEMA_VERSION``: every step in one transaction.

        Each step runs its statements and its data step, and is recorded in the
        audit chain (``migrate``). Another process that migrated meanwhile leaves
        nothing to do.
        """
        with self.transaction() as tx:

            def step(version: int, to: int) -> None:
                detail = _MIGRATIONS[to](self, tx)
                self._chain.append(
                    tx, "migrate", None, "poisonguard", {"from": version, "to": to, **detail}
                )

            tx.upgrade(step)

    def _migrate_to_3(self, tx: LedgerTransaction) -> dict[str, Any]:
        """Version 1 of the reference: the ledger's seed batches, as a fresh store has it."""
        seeds = [b.batch_id for b in tx.batches() if b.status == "seed"]
        files = [f for f in tx.files("clean") if f.batch_id in seeds]
        if not files:
            return {"reference": None}
        ref = revisions.add_reference(
            self, tx, files, actor="poisonguard", note="the seed (migration)", sampled=False
        )
        return {"reference": ref.summary()}

    def _migrate_to_4(self, tx: LedgerTransaction) -> dict[str, Any]:
        """Key the blocklist: each entry's row, read from the file that holds it, hashed
        under the store's row-hash key (``row_hashes``), replaces its unkeyed hash.

        The audit entry records the keyed blocklist, which the gate replays from then on
        (``audit.blocklist_in``). Entries and files written before keep the unkeyed
        hashes they were written with: the chain and the files are never rewritten.

        Raises
        ------
        StoreError
            When the blocklist is not the one the audit chain recorded, or names a row
            no file holds: it cannot be re-keyed, and nothing is migrated.
        """
        listed = tx.blocked()
        if {b.row_hash for b in listed} != blocklist_in(tx.audit_log()):
            raise StoreError(
                f"{self.ledger.location}: the blocklist is not the one the audit chain "
                "recorded, so it cannot be re-keyed; restore the ledger from a backup, or "
                "run `poisonguard gate` with the poisonguard that wrote it to see what changed"
            )
        batches = {b.batch_id for b in listed}
        keyed: dict[tuple[str, int], tuple[str, str]] = {}
        for record in tx.files():
            if record.kind not in ("quarantine", "revoked") or record.batch_id not in batches:
                continue
            rows = self.read(record)
            pairs = zip(
                rows["pg_row"].tolist(),
                rows["pg_row_hash"].astype(str).tolist(),
                self.row_hashes(rows).tolist(),
                strict=True,
            )
            for pg_row, was, now_keyed in pairs:
                keyed[(record.batch_id, int(pg_row))] = (was, now_keyed)
        moved = []
        for b in listed:
            was, now_keyed = keyed.get((b.batch_id, int(b.pg_row)), (None, ""))
            if was != b.row_hash:
                where = (
                    "no quarantine or revoked file holds it"
                    if was is None
                    else ("its file's pg_row_hash is another")
                )
                raise StoreError(
                    f"{self.ledger.location}: the blocklist names row {b.pg_row} of batch "
                    f"{b.batch_id}, but {where}, so it cannot be re-keyed; restore the batch's "
                    "files and the ledger from a backup"
                )
            moved.append(Blocked(now_keyed, b.batch_id, b.pg_row, b.actor, b.at))
        tx.unblock([b.row_hash for b in listed])
        tx.block(moved)
        return {"blocklist": sorted({b.row_hash for b in moved}), "row_hashes": "keyed"}

    def _migrate_to_5(self, tx: LedgerTransaction) -> dict[str, Any]:
        """The current reference version's sample, drawn from its files (older versions keep
        none: nothing fits on them). A version whose files cannot be read as recorded keeps
        none either, and says why; fitting on it then reads the whole reference
        (``sample_frame``), where the same problem stops it."""
        (current,) = tx.references() or (None,)
        if current is None:
            return {"sample": None}
        try:
            sample = write_sample(self, current.version, current.files, None)
        except (GateError, StoreError, OSError) as exc:
            return {"sample": None, "version": current.version, "why": str(exc)}
        tx.set_sample(current.version, sample)
        return {"sample": {"version": current.version, **asdict(sample)}}

    # -- keyed hashes ----------------------------------------------------------
    def row_hashes(self, frame: pd.DataFrame, columns: list[str] | None = None) -> np.ndarray:
        """Keyed content hashes of rows (16 hex digits each), under this store's row-hash key.

        The one place that decides the key every hash the store keeps is made
        with: ``schema.row_hash_key`` of the audit key (HMAC-SHA-256, never
        stored or printed), through ``schema.row_hashes`` (SipHash-2-4 of each
        row's 64-bit digest). Rows, ids and values the ledger, the audit chain,
        the files' ``pg_row_hash`` and reasons name are hashed here.

        Parameters
        ----------
        frame : DataFrame
        columns : list of str, optional
            The columns to hash (default the data columns, ``schema.data_columns``).

        Raises
        ------
        StoreError
            When the audit key is missing or is not a poisonguard key.
        """
        if self._row_key is None:
            self._row_key = row_hash_key(self._chain.key())
        cols = data_columns(frame) if columns is None else columns
        return row_hashes(frame, cols, key=self._row_key)

    def value_hashes(self, values: pd.Series) -> np.ndarray:
        """Keyed hashes of single values compared as text (an id column's): how the store
        names an id without keeping it (``value_keys`` as 16 hex digits)."""
        return hex_digits(self.value_keys(values))

    def value_keys(self, values: pd.Series) -> np.ndarray:
        """``value_hashes`` as uint64 (``row_hashes`` of the values as one text column)."""
        if self._row_key is None:
            self._row_key = row_hash_key(self._chain.key())
        text = pd.DataFrame({"value": values.astype("string").reset_index(drop=True)})
        return row_keys(text, ["value"], key=self._row_key)

    # -- locks and transactions ----------------------------------------------
    @contextlib.contextmanager
    def writing(self, wait: float = LOCK_WAIT) -> Iterator[None]:
        """Hold the store's write lock (re-entrant); the outermost hold first recovers.

        Raises
        ------
        StoreError
            When another process holds the lock for longer than ``wait`` seconds.
        """
        with self.ledger.write_lock(wait, f"the store {self.root}") as outermost:
            if outermost:
                self.recover()
            yield

    @contextlib.contextmanager
    def transaction(self) -> Iterator[LedgerTransaction]:
        """One write transaction on the ledger, under the write lock; commits together.

        When it appended to the audit chain, the anchor is moved to the new head
        after the commit. A sample file written in it (``samples.write_sample``) is
        removed when it rolls back.
        """
        with self.writing():
            self._chain.appended = False
            self._markers = []
            try:
                with self.ledger.transaction() as tx:
                    yield tx
            except BaseException:
                if self._markers:  # a sample file no version will list
                    for marker in self._markers:
                        disown(marker)
                    self.recover()
                raise
            for marker in self._markers:
                shutil.rmtree(marker, ignore_errors=True)
            if self._chain.appended:
                self._chain.write_anchor(self.ledger)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the store's run lock (one run at a time), after clearing what a dead run left.

        Raises
        ------
        StoreError
            At once, when another run holds it.
        """
        with self.ledger.run_lock():
            with self.writing():
                # No run and no change is in progress anywhere: what other hosts left is dead.
                self.recover(other_hosts=True)
            yield

    # -- reading -------------------------------------------------------------
    def batch_by_sha(self, sha256: str) -> BatchRecord | None:
        return self.ledger.batch_by_sha(sha256)

    def batch(self, batch_id: str) -> BatchRecord | None:
        return self.ledger.batch(batch_id)

    def batches(self) -> list[BatchRecord]:
        return self.ledger.batches()

    def files(self, kind: str | None = None) -> list[FileRecord]:
        return self.ledger.files(kind)

    def read(self, record: FileRecord, columns: list[str] | None = None) -> pd.DataFrame:
        """A table the store wrote, as a frame."""
        return self.data.read_table(record.path, columns)

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
        cols = ["batch_id", "pg_row", "action", "actor", "note", "at"]
        return pd.DataFrame([r.__dict__ for r in self.ledger.reviews(batch_id)], columns=cols)

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
        listed = self.ledger.blocked()
        if not listed:
            return pd.DataFrame()
        entries = pd.DataFrame(
            [(b.batch_id, b.pg_row, b.at, b.actor) for b in listed],
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
        # A purged row's content is gone on purpose; its hash stays on the blocklist
        # (``purged_blocklist``), so an exact copy is still refused.
        lost = lost[~lost["pg_batch"].isin(retention.purged_batches(self))]
        found = found[found["_merge"] == "both"]
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
            the row is in the training set now (in one of its batch's clean files: accepted
            when its batch was committed, or released by a reviewer, and not since held
            by a re-scan or revoked). Empty when the source sent nothing before.
        """
        if limit <= 0:
            return pd.DataFrame()
        batches = [b.batch_id for b in self.ledger.committed() if source_of(b.source) == source]
        listed = {f.path: f for f in self.ledger.files()}
        training: dict[str, list[str]] = {}  # each batch's clean files: its training rows
        for f in listed.values():
            if f.kind == "clean":
                training.setdefault(f.batch_id, []).append(f.path)
        parts: list[pd.DataFrame] = []
        taken = 0
        # Committed files never change: the files of the last window are kept, so a run
        # judging batch after batch reads only the files its source committed since.
        kept, self._window_files = self._window_files, {}

        def read(rel: str) -> pd.DataFrame:
            frame = kept[rel] if rel in kept else self.data.read_table(rel)
            self._window_files[rel] = frame
            return frame

        for batch_id in batches:
            frames = []
            arrived = erasure.as_arrived(listed, "clean", batch_id)
            live = training.get(batch_id, [])
            # Usually the clean file it arrived in is the batch's only one; otherwise its
            # training rows are those of every clean file it has now.
            whole = live == [arrived]
            rows_in = None if whole else np.concatenate([[], *(read(r)["pg_row"] for r in live)])
            for kind in ("clean", "quarantine"):
                rel = arrived if kind == "clean" else erasure.as_arrived(listed, kind, batch_id)
                if rel is None:
                    continue
                frame = read(rel)
                if kind == "quarantine":
                    frame = frame[~frame["pg_stage"].isin(list(skip_stages))]
                if rows_in is None:
                    accepted = np.full(len(frame), kind == "clean")
                else:
                    accepted = np.isin(frame["pg_row"].to_numpy(), rows_in)
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
        return {b.row_hash for b in self.ledger.blocked()}

    def purged_blocklist(self) -> dict[str, Blocked]:
        """The blocklist entries whose row's content was purged (``retention``), by row hash:
        ``rejected_rows`` no longer has them, so they are matched by hash alone."""
        purged = retention.purged_batches(self)
        return {b.row_hash: b for b in self.ledger.blocked() if b.batch_id in purged}

    def landed(self) -> dict[str, Landed]:
        """What the ledger remembers of each landing-folder name, by name."""
        return self.ledger.landed()

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

    def sample_key(self) -> str:
        """The key of the reference samples' row priorities, derived from the audit key (so
        that no one without it can predict, or steer rows into, a sample)."""
        return sample_key(self._chain.key())

    def sample_digest(self, reference: ReferenceVersion, rule: SampleRule) -> str:
        """What names the rows ``sample_frame`` gives: the sample file's SHA-256, or the
        version's digest and the rule when the file was drawn under another rule."""
        sample = drawn_by(reference, rule)
        return sample.sha256 if sample is not None else f"{reference.digest}\0{rule.to_json()}"

    def sample_frame(self, reference: ReferenceVersion, rule: SampleRule) -> pd.DataFrame:
        """The sample of a reference version that ``rule`` draws: its sample file, read
        verified, when it was drawn under ``rule``; else drawn from every file of the version
        (read verified), as a new version would draw it (``samples.draw_afresh``).

        Raises
        ------
        StoreError
            When the sample file is missing or changed.
        GateError
            When a file of the version changed (drawing afresh).
        """
        sample = drawn_by(reference, rule)
        if sample is None:
            return draw_afresh(self, reference, rule)
        return read_sample(self, reference, sample)

    def reference(self, version: int | None = None) -> ReferenceVersion | None:
        """A reference version (default the current one, the highest); None if there is none.

        Raises
        ------
        ReviewError
            When ``version`` is given and the ledger has no such version.
        """
        found = self.ledger.references(version)
        if version is not None and not found:
            raise ReviewError(f"{self.ledger.location}: no reference version {version}")
        return found[-1] if found else None

    def references(self) -> list[ReferenceVersion]:
        """Every reference version, the first (the seed) first."""
        return self.ledger.references(every=True)

    def id_owners(self, id_column: str) -> IdOwners:
        """Each id in the clean training set, by its keyed hash (``value_keys``), and the
        batch that holds it (``ids.IdOwners``).

        Only the id and batch columns are read, and the index is kept for the process
        like ``clean_frame``: a later call reads only the files committed since.
        """
        files = tuple(self.files("clean"))
        key = f"{self.root.resolve()}\0{id_column}"
        known, owners = _kept_ids.get(key, ((), IdOwners.empty()))
        if files[: len(known)] != known:
            known, owners = (), IdOwners.empty()
        for record in files[len(known) :]:
            if id_column not in self.column_names(record):
                continue
            part = self.read(record, columns=[id_column, "pg_batch"])
            owners = owners.extended(self.value_keys(part[id_column]), part["pg_batch"].to_numpy())
        _kept_ids[key] = (files, owners)
        return owners

    # -- the files as written ------------------------------------------------
    def file_exists(self, record: FileRecord) -> bool:
        """Whether a file the ledger lists is in the store (and is a file)."""
        return self.data.is_file(record.path)

    def column_names(self, record: FileRecord) -> list[str]:
        """A table's column names, from its Parquet footer."""
        return self.data.columns(record.path)

    def read_verified(self, record: FileRecord) -> pd.DataFrame:
        """A table's rows, read from bytes whose SHA-256 is the ledger's (``read_verified``)."""
        return read_verified(self.data, record)

    def training_sample(
        self, files: tuple[FileRecord, ...], rule: SampleRule
    ) -> tuple[pd.DataFrame, int]:
        """At most ``rule.limit`` rows of ``files``, the sample a resolved ``rule`` draws under
        the store's key, and how many rows the files hold (``samples.sample_files``)."""
        return sample_files(self, files, rule)

    def verify_files(self) -> list[str]:
        """Every listed file is there as written; nothing else sits among them.

        Each file the ledger lists must exist, have the SHA-256 and row count it
        was written with, and each batch's clean and quarantined rows must all be
        in its files; a file in ``clean/``, ``quarantine/`` or ``rejected/`` that
        the ledger does not list is named. Files listed as ``purged`` are gone on
        purpose (``retention``); of a batch whose held rows were purged, only the
        reviewed rows still in its quarantine files are counted. Returns every
        problem found, one line each (the gate's reasons).
        """
        reasons: list[str] = []
        every = self.files()
        records = [f for f in every if f.kind != PURGED]
        purged = {f.batch_id for f in every if f.kind == PURGED}
        rows_by_batch: dict[tuple[str, str], int] = defaultdict(int)
        # A row a re-scan held again after its release is in two quarantine files: count it once.
        held_by_batch: dict[str, set[int]] = defaultdict(set)
        for f in records:
            if f.kind == ERASED:
                if self.data.exists(f.path):
                    reasons.append(
                        f"{f.path}: erased, but still in the store; run `poisonguard forget` "
                        "again to finish the erasure"
                    )
                continue
            if not self.data.is_file(f.path) or self.data.is_link(f.path):
                reasons.append(f"{f.path}: listed in the ledger but missing from the store")
                continue
            digest = self.data.sha256(f.path)
            if digest != f.sha256:
                reasons.append(
                    f"{f.path}: changed behind poisonguard's back (SHA-256 {digest[:12]}..., "
                    f"ledger has {f.sha256[:12]}...)"
                )
                continue
            if f.rows is None:
                continue
            rows = self.data.rows(f.path)
            if rows != f.rows:
                reasons.append(f"{f.path}: has {rows} rows, the ledger recorded {f.rows}")
            rows_by_batch[(f.batch_id, f.kind)] += rows
            if f.kind == "quarantine":
                held_rows = self.data.read_table(f.path, ["pg_row"])["pg_row"].tolist()
                held_by_batch[f.batch_id].update(held_rows)
        samples = [s for s in (r.sample for r in self.references()) if s is not None]
        reasons += self._verify_samples(samples)
        listed = {f.path for f in every} | {s.path for s in samples}
        for kind in LISTED:
            for rel in self.data.find(kind):
                if rel not in listed:
                    reasons.append(f"{rel}: not written by poisonguard (not in the ledger)")
        reviewed: dict[str, set[int]] = defaultdict(set)
        for r in self.ledger.reviews():
            reviewed[r.batch_id].add(int(r.pg_row))
        for rec in self.batches():
            if rec.status == "rejected":
                continue
            clean = rows_by_batch.get((rec.batch_id, "clean"), 0)
            holding = held_by_batch.get(rec.batch_id, set())
            done = reviewed[rec.batch_id]
            held = len(holding)
            want_held = rec.rows_quarantined + len(
                done & holding if rec.batch_id in purged else done
            )
            if clean != rec.rows_clean or held != want_held:
                reasons.append(
                    f"batch {rec.batch_id}: its files hold {clean} clean and {held} quarantined "
                    f"rows, the ledger counts {rec.rows_clean} and {want_held}"
                )
        return reasons

    def _verify_samples(self, samples: list[ReferenceSample]) -> list[str]:
        """Each reference sample is there with the hash and row count it was written with."""
        reasons = []
        for s in samples:
            if not self.data.is_file(s.path) or self.data.is_link(s.path):
                reasons.append(f"{s.path}: a reference sample the ledger lists, missing")
            elif (digest := self.data.sha256(s.path)) != s.sha256:
                reasons.append(
                    f"{s.path}: changed behind poisonguard's back (SHA-256 {digest[:12]}..., "
                    f"ledger has {s.sha256[:12]}...)"
                )
            elif (rows := self.data.rows(s.path)) != s.rows:
                reasons.append(f"{s.path}: has {rows} rows, the ledger recorded {s.rows}")
        return reasons

    @property
    def reports_dir(self) -> Path:
        """``reports/``: each batch's HTML and JSON report."""
        return self.root / "reports"

    def report_paths(self, batch_id: str) -> tuple[Path, Path]:
        """Where a batch's HTML and JSON reports live."""
        return self.reports_dir / f"{batch_id}.html", self.reports_dir / f"{batch_id}.json"

    # -- writing -------------------------------------------------------------
    def recover(self, *, other_hosts: bool = False) -> list[Path | str]:
        """Remove what a process that died mid-commit left behind, and nothing else
        (``staging.recover``; ``other_hosts`` only under the run lock and the write lock);
        the files and folders removed."""
        return recover(self.root, self.ledger, self.data, other_hosts=other_hosts)

    def staging_dir(self, name: str) -> Path:
        """``staging/<name>/``, marked as this process's (see ``recover``)."""
        return staging_dir(self.root, name)

    def snapshot(self, entry: Entry) -> tuple[Path, str]:
        """Copy a landed file into a scratch folder of the staging area as it is hashed
        (``landing.snapshot``); the copy and its SHA-256.

        Raises
        ------
        Unsettled, Unreadable
            As ``landing.snapshot`` does; the scratch folder is removed then.
        """
        scratch = self.staging_dir(f"landing-{secrets.token_hex(6)}")
        try:
            return snapshot(entry, scratch)
        except (Unsettled, Unreadable):
            shutil.rmtree(scratch, ignore_errors=True)
            raise

    def discard(self, copy: Path) -> None:
        """Drop a landed file's copy (``snapshot``) with its scratch folder."""
        shutil.rmtree(copy.parent, ignore_errors=True)

    def stage(self, copy: Path, batch_id: str) -> Path:
        """Move a landed file's copy into its batch's staging folder; the copy's new path."""
        folder = self.staging_dir(batch_id)
        landed = folder / copy.name
        os.replace(copy, landed)
        self.discard(copy)
        return landed

    def commit(self, outcome: Outcome, takeback: TakeBack | None = None) -> BatchRecord:
        """Write a batch's outcome: files first (atomically), then one ledger transaction.

        ``takeback``, when given, is asked under the write lock for the rows accepted
        earlier that this batch takes back out of the training set (``pg_batch``,
        ``pg_row``, ``pg_reason``, as ``hold_rescanned`` takes them) and why; they are
        held in the same ledger transaction as the batch's commit, so no crash leaves the
        batch in the ledger and them in the training set.

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
            with contextlib.ExitStack() as undo:
                undo.enter_context(self._undone_on_error(marker))
                written = self._write_files(
                    outcome.batch_id, (("clean", outcome.clean), ("quarantine", outcome.quarantine))
                )
                holds = self._take_back(takeback, undo)
                return self._record(outcome, written, n_clean, n_quar, marker, holds)

    def commit_chunks(
        self,
        outcome: Outcome,
        parts: Iterable[tuple[pa.Table, pa.Table]],
        schemas: tuple[pa.Schema, pa.Schema],
        takeback: TakeBack | None = None,
    ) -> BatchRecord:
        """``commit`` for a batch too large to hold: its clean and held rows arrive a chunk at
        a time (``parts``, one (clean, quarantine) pair per chunk, with ``schemas``) and are
        streamed into the two files as row groups (``files.stream_files``); the ledger
        transaction still commits last. ``outcome.clean`` and ``outcome.quarantine`` are not
        read; ``takeback`` is ``commit``'s.

        Raises
        ------
        StoreError
            As ``commit``: when the rows written do not account for every input row, or
            the batch is already in the ledger.
        """
        with self.writing():
            if self.batch_by_sha(outcome.sha256) is not None:
                raise StoreError(f"batch {outcome.batch_id}: its content is already in the ledger")
            marker = self.staging_dir(outcome.batch_id)
            with contextlib.ExitStack() as undo:
                undo.enter_context(self._undone_on_error(marker))
                if self.data.local is not None:
                    written = stream_files(self.data.local, outcome.batch_id, parts, schemas)
                else:  # an object store takes whole files: stream beside, then one PUT each
                    written = stream_files(marker, outcome.batch_id, parts, schemas)
                    for rel, _, _ in written:
                        self.data.move_in(marker / rel, rel)
                n_clean, n_quar = (int(n or 0) for _, _, n in written)
                if outcome.rows_in is not None and n_clean + n_quar != outcome.rows_in:
                    raise StoreError(
                        f"batch {outcome.batch_id}: {n_clean} clean + {n_quar} quarantined "
                        f"!= {outcome.rows_in} rows in"
                    )
                holds = self._take_back(takeback, undo)
                return self._record(outcome, written, n_clean, n_quar, marker, holds)

    @contextlib.contextmanager
    def _undone_on_error(self, marker: Path) -> Iterator[None]:
        """On an error before the ledger commit, remove what this commit wrote (a full disk)."""
        try:
            yield
        except BaseException:
            disown(marker)  # no live owner: recover() may take it
            self.recover()
            raise

    def _take_back(
        self, takeback: TakeBack | None, undo: contextlib.ExitStack
    ) -> revisions.Holds | None:
        """The rows a commit takes back, planned and their files written (``commit``)."""
        if takeback is None:
            return None
        flagged, note = takeback()
        if flagged.empty:
            return None
        return revisions.write_holds(self, flagged, undo, note)

    def _record(
        self,
        outcome: Outcome,
        written: list[tuple[str, str, int | None]],
        n_clean: int,
        n_quar: int,
        marker: Path,
        holds: revisions.Holds | None = None,
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
        with self.transaction() as tx:
            tx.add_batch(record)
            tx.add_files(file_records(outcome.batch_id, written), finished)
            if outcome.landed is not None:
                self._remember(tx, outcome.landed, outcome.sha256, outcome.batch_id, "batch", None)
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
            self._chain.append(tx, "ingest", outcome.batch_id, "poisonguard", detail)
            if holds is not None:
                revisions.record_holds(self, tx, holds, "poisonguard")
            if outcome.status == "seed":
                seeded = [f for f in file_records(outcome.batch_id, written) if f.kind == "clean"]
                revisions.add_reference(self, tx, seeded, actor="poisonguard", note="the seed")
            crash_point("before-ledger-commit")
        crash_point("after-ledger-commit")
        shutil.rmtree(marker, ignore_errors=True)
        if holds is not None:
            holds.done()
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
            self.data.write(rel, data)
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
        folder = f"rejected/{outcome.batch_id}"
        self.data.makedirs(folder)
        kept = f"{folder}/{file_name}"
        digest = sha256_file(Path(landed_copy))
        staging = (self.root / "staging").resolve()
        if Path(landed_copy).resolve().is_relative_to(staging):
            self.data.move_in(Path(landed_copy), kept)
        else:
            self.data.write(kept, Path(landed_copy).read_bytes())
        reason = {"file": outcome.source, "reason": outcome.reason, "sha256": outcome.sha256}
        text = (json.dumps(reason, indent=2) + "\n").encode()
        self.data.write(f"{folder}/reason.json", text)
        written: list[tuple[str, str, int | None]] = [
            (kept, digest, None),
            (f"{folder}/reason.json", hashlib.sha256(text).hexdigest(), None),
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
        with self.transaction() as tx:
            known = tx.landed_entry(landed[0])
            if known is not None and (known.size, known.mtime_ns) == (landed[1], landed[2]):
                return False
            self._remember(tx, landed, sha256, batch_id, "skipped", reason)
            return True

    @staticmethod
    def _remember(
        tx: LedgerTransaction,
        landed: tuple[str, int, int],
        sha256: str | None,
        batch_id: str | None,
        outcome: str,
        reason: str | None,
    ) -> None:
        tx.remember(Landed(*landed, sha256, batch_id, outcome, reason, now()))

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
        with self.transaction() as tx:
            asked = set(pg_rows)
            done = sum(1 for r in tx.reviews(batch_id) if r.pg_row in asked)
            if done:
                raise StoreError(
                    f"batch {batch_id}: {done} of these rows were reviewed meanwhile; "
                    "nothing was written, look again with `poisonguard review show`"
                )
            tx.move_rows(batch_id, n, "quarantined", "clean" if action == "release" else "rejected")
            tx.add_files(file_records(batch_id, written), at)
            tx.add_reviews([Review(batch_id, r, action, actor, note, at) for r in pg_rows])
            # From the rows' content under the store's key, not their files' pg_row_hash:
            # a file written before the store's hashes were keyed carries unkeyed ones.
            hashes = self.row_hashes(rows).tolist() if action == "reject" else []
            if action == "reject":
                tx.block(
                    [
                        Blocked(h, batch_id, r, actor, at)
                        for h, r in zip(hashes, pg_rows, strict=True)
                    ]
                )
            detail = {
                "rows": pg_rows,
                "note": note,
                "files": {p: h for p, h, _ in written},
                **({"row_hashes": hashes} if action == "reject" else {}),
            }
            self._chain.append(tx, action, batch_id, actor, detail)
            crash_point("review-before-ledger-commit")

    # -- the pinned reference, revocation and re-scan holds (see ``revisions``) --
    def promote(
        self,
        batch_ids: Sequence[str],
        *,
        actor: str,
        note: str = "",
        max_source_share: float = 1.0,
    ) -> ReferenceVersion:
        """Make a new reference version: the current one plus these batches' clean files
        (``revisions.promote``)."""
        return revisions.promote(
            self, batch_ids, actor=actor, note=note, max_source_share=max_source_share
        )

    def revoke(self, batch_id: str, *, actor: str, note: str) -> Revocation:
        """Take a committed batch out of the training set and the reference, for good
        (``revisions.revoke``)."""
        return revisions.revoke(self, batch_id, actor=actor, note=note)

    def due(
        self, settings: RetentionSettings, now: datetime | None = None
    ) -> retention.RetentionPlan:
        """What ``[retention]`` says is past its age at ``now`` (``retention.plan``)."""
        return retention.plan(self, settings, now)

    def purge(
        self, settings: RetentionSettings, *, actor: str, now: datetime | None = None
    ) -> retention.Purge:
        """Purge the quarantine and rejected data past its age, with a ``purge`` audit entry
        (``retention.purge``)."""
        return retention.purge(self, settings, actor=actor, now=now)

    def hold_rescanned(self, flagged: pd.DataFrame, *, actor: str, note: str) -> dict[str, int]:
        """Move rows a re-scan flagged out of the training set into quarantine, awaiting
        review (``revisions.hold_rescanned``); rows held per batch."""
        return revisions.hold_rescanned(self, flagged, actor=actor, note=note)

    # -- erasure (see ``erasure``) -------------------------------------------
    def forget(
        self, subject: Subject, *, actor: str, note: str = "", dry_run: bool = False
    ) -> Erasure:
        """Erase a data subject's rows from every file of the store in one commit
        (``erasure.forget``), and from what this process keeps of the store's files."""
        done = erasure.forget(self, subject, actor=actor, note=note, dry_run=dry_run)
        if not dry_run:
            prefix = f"{self.root.resolve()}\0"
            for kept in (_kept_frames, _kept_ids):
                for key in [k for k in kept if k.startswith(prefix)]:
                    del kept[key]
            self._window_files.clear()
        return done

    # -- audit chain ---------------------------------------------------------
    def audit(
        self,
        action: str,
        *,
        actor: str,
        batch_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append one entry to the audit chain in its own transaction."""
        with self.transaction() as tx:
            self._chain.append(tx, action, batch_id, actor, detail or {})

    def audit_log(self) -> list[dict[str, Any]]:
        """Every audit entry as a dict of its fields, oldest first."""
        return self.ledger.audit_log()

    def source_events(self) -> list[Event]:
        """Every batch's evidence and every cleared alarm, per landing source, in ledger order.

        Read from the audit chain, which the gate verifies: a batch's counts
        (``source_evidence`` in its ingest entry) and ``source_clear`` entries.
        Seed batches are not a source's evidence.
        """
        with _kept_events_lock:
            return list(self._history().events)

    def source_replay(self, test: SourceTest) -> SourceReplay:
        """The per-source tests run over every source event (``source_events``), a copy the
        caller may add to: ``.states()`` is ``source_states(store.source_events(), test)``."""
        with _kept_events_lock:
            history = self._history()
            taken, replay = history.replays.get(test, (0, SourceReplay(test)))
            replay.add(history.events[taken:])
            history.replays[test] = (len(history.events), replay)
            return replay.copy()

    def _history(self) -> _History:
        """The source events and tests of this ledger, with the audit entries written since
        they were last read in this process added (``_kept_events``, whose lock the caller
        holds): a batch's cost does not grow with the store's history."""
        key = self.ledger.location
        history = _kept_events.get(key)
        seq = 0 if history is None else history.seq
        entries = self.ledger.audit_since(max(seq - 1, 0))
        if history is not None and (
            not entries or (entries[0]["seq"], entries[0]["hash"]) != (seq, history.hash)
        ):
            # Not the chain read before (a store made again in the same place): all of it.
            history, entries = None, self.ledger.audit_log()
        elif history is not None:
            entries = entries[1:]
        if history is None:
            history = _History(0, "", [], {})
        if entries:
            history.events.extend(_source_events(entries))
            history.seq, history.hash = int(entries[-1]["seq"]), str(entries[-1]["hash"])
            _kept_events[key] = history
        return history

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
        return self._chain.head(self.ledger)

    def vouch(self, head: dict[str, Any]) -> None:
        """Record in the anchor that the gate vouched for the chain up to ``head``."""
        with self.writing():
            self._chain.write_anchor(self.ledger, vouched=head)

    def verify_audit(self, log: list[dict[str, Any]] | None = None) -> str | None:
        """Check the chain, its keyed MACs and its anchor; the first problem, or None
        (``AuditChain.verify``). ``log``: the chain as read by the caller (``audit_log``),
        so that every check of one gate reads one chain."""
        return self._chain.verify(self.ledger, log)


#: The data step of each schema step, by the version it reaches (see ``Store._migrate``).
_MIGRATIONS: dict[int, Callable[[Store, LedgerTransaction], dict[str, Any]]] = {
    3: Store._migrate_to_3,
    4: Store._migrate_to_4,
    5: Store._migrate_to_5,
}


# --------------------------------------------------------------------------- opening and copying


def _source_events(entries: Iterable[dict[str, Any]]) -> list[Event]:
    """The source events among audit entries (``Store.source_events``)."""
    events = []
    for entry in entries:
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


def open_store(
    config: Config | str | Path, *, create: bool = False, ledger: LedgerSettings | None = None
) -> Store:
    """The store a config names (its folder, ledger and audit key), or the store in a folder.

    Every command, flow and library function opens its store here, so that where a
    store's parts live is decided in one place.

    Parameters
    ----------
    config : Config, or path
        A dataset's config, or a store's folder (its key in the default place).
    create : bool
        Create the store if it does not exist (``poisonguard init``).
    ledger : LedgerSettings, optional
        With a folder: its PostgreSQL ledger (default the embedded one). A config
        names its own (``[store]``).

    Raises
    ------
    StoreError
        As ``Store`` does.
    """
    if isinstance(config, str | Path):
        return Store(config, create=create, ledger=ledger_for(config, ledger))
    return Store(
        config.store,
        key_path=config.audit_key,
        create=create,
        ledger=ledger_for(config.store, config.ledger),
        data=config.data,
        sampling=rule_for(config),
    )


def ledger_for(root: str | Path, settings: LedgerSettings | None) -> Ledger:
    """The ledger of the store in ``root``: PostgreSQL's when ``settings`` name one, else the
    embedded one in the folder."""
    if settings is None:
        return SqliteLedger(root)
    # psycopg is imported only by stores whose ledger is PostgreSQL.
    from poisonguard.store.postgres import postgres_ledger

    return postgres_ledger(settings.url, settings.schema)


def has_store(root: str | Path, ledger: LedgerSettings | None = None) -> bool:
    """Whether a store was created in the folder ``root`` with this ledger (default the
    embedded one), without opening it."""
    return ledger_for(root, ledger).exists()


def copy_store(
    root: str | Path,
    dest: str | Path,
    key_path: str | Path,
    ledger: LedgerSettings | None = None,
    data: str | Path | None = None,
) -> None:
    """Copy a store to the folder ``dest``, with a new audit key at ``key_path``.

    The copy is a store of one folder, whose ledger is the embedded one and whose
    data files are in it, wherever the original's are (``data``). An embedded ledger is copied as
    a consistent snapshot (even while a run writes); a PostgreSQL ledger
    (``ledger``) record by record (``copy_ledger``) while the store's write lock is
    held, so that no change lands mid-copy. The store's files are copied byte for
    byte (not ``staging/`` or lock files). Nothing of the original is written.
    """
    root, dest = Path(root), Path(dest)
    source = ledger_for(root, ledger)
    with contextlib.ExitStack() as held:
        if not isinstance(source, SqliteLedger):
            held.enter_context(source.write_lock(LOCK_WAIT, f"the store {root}"))
        copy_private_tree(root, dest, skip=("staging", ".lock", ".run.lock", f"{LEDGER_FILE}*"))
        make_private_dirs(dest / "staging")
        if data is not None:
            files, copied = DataFiles(data), DataFiles(dest)
            for rel in [a for kind in LISTED for a in files.find(kind)] + [ANCHOR]:
                copied.write(rel, files.read_bytes(rel))
        if isinstance(source, SqliteLedger):
            source.copy_to(dest)
        else:
            copy_ledger(source, SqliteLedger(dest))
    write_new_key(Path(key_path))


def read_verified(data: DataFiles | str | Path, record: FileRecord) -> pd.DataFrame:
    """A table's rows, read from bytes whose SHA-256 is the ledger's.

    ``data`` is the store's data files, or their folder or URL (a manifest's ``data``).

    Raises
    ------
    GateError
        When the file's bytes are not those the ledger recorded (it changed
        after the gate checked it).
    """
    return table_from_bytes(verified_bytes(data, record))


def verified_bytes(data: DataFiles | str | Path, record: FileRecord) -> bytes:
    """A file's bytes, checked against the SHA-256 the ledger recorded (``read_verified``).

    Raises
    ------
    GateError
        When they are not those the ledger recorded.
    """
    files = data if isinstance(data, DataFiles) else DataFiles(data)
    content = files.read_bytes(record.path)
    if hashlib.sha256(content).hexdigest() != record.sha256:
        raise GateError([f"{record.path}: changed while the training set was read"])
    return content
