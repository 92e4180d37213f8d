"""Changes after a commit: the pinned reference's versions, revocations and re-scan holds.

A new reference version is made only by an explicit step (``promote``), each
with an audit entry; a revocation takes a batch out of the training set and the
reference for good; a re-scan hold moves accepted rows back into quarantine.
Each writes its files first (a hold's new clean and quarantine files; nothing
for the others), then one ledger transaction with its audit entries. ``Store``
offers them as its methods.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from poisonguard.errors import ReviewError, StoreError, shown
from poisonguard.landing import source_of
from poisonguard.store.files import crash_point, now
from poisonguard.store.ledger import (
    BatchRecord,
    Blocked,
    FileRecord,
    LedgerTransaction,
    ReferenceVersion,
    Review,
    file_records,
    reference_digest,
)
from poisonguard.store.samples import write_sample

if TYPE_CHECKING:
    from poisonguard.store.core import Store


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


# --------------------------------------------------------------------------- the pinned reference


def promote(
    store: Store,
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
    version's sample file (``samples.write_sample``: from the current sample and
    the added files only) is written first, then the version and its audit entry
    (``reference``) in one transaction.

    Parameters
    ----------
    store : Store
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
    with store.transaction() as tx:
        (current,) = tx.references() or (None,)
        if current is None:
            raise ReviewError(
                f"the store {store.root} has no reference to promote into: seed it with "
                "`poisonguard init --sample TRUSTED`"
            )
        held = {f.path for f in current.files}
        clean = tx.files("clean")
        added: list[FileRecord] = []
        for batch_id in wanted:
            rec = tx.batch(batch_id)
            if rec is None:
                raise ReviewError(
                    f"no batch {shown(batch_id)!r} in {store.ledger.location}; "
                    "`poisonguard status` lists the batches"
                )
            new = [f for f in clean if f.batch_id == batch_id and f.path not in held]
            refused = _not_promotable(rec, new, current.version)
            if refused:
                raise ReviewError(f"batch {batch_id} {refused}")
            added += new
        _check_source_share(tx, [*current.files, *added], wanted, max_source_share)
        return add_reference(store, tx, added, actor=actor.strip(), note=note)


def _check_source_share(
    tx: LedgerTransaction,
    files: list[FileRecord],
    promoted: list[str],
    max_source_share: float,
) -> None:
    """Refuse a reference in which a source of the promoted batches holds too large a share."""
    batches = {b.batch_id: (b.source, b.status) for b in tx.batches()}
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


def add_reference(
    store: Store,
    tx: LedgerTransaction,
    added: list[FileRecord],
    *,
    actor: str,
    note: str,
    without: str | None = None,
    replaced: dict[str, FileRecord] | None = None,
    sampled: bool = True,
) -> ReferenceVersion:
    """Write the next reference version (the current one's files but those of batch
    ``without``, each file of ``replaced`` in its place by its new one, then ``added``), its
    sample file (``samples.write_sample``; drawn afresh when files were replaced; not when
    ``sampled`` is False: a migration step before the ledger keeps samples) and its audit
    entry, inside the caller's transaction."""
    (current,) = tx.references() or (None,)
    swap = replaced or {}
    kept = [
        swap.get(f.path, f) for f in (current.files if current else ()) if f.batch_id != without
    ]
    files = (*kept, *added)
    version = 1 if current is None else current.version + 1
    ref = ReferenceVersion(
        version=version,
        digest=reference_digest(f.sha256 for f in files),
        rows=sum(f.rows or 0 for f in files),
        files=files,
        actor=actor,
        note=note,
        at=now(),
        sample=write_sample(store, version, files, current) if sampled else None,
    )
    tx.add_reference(ref)
    batches = list(dict.fromkeys(f.batch_id for f in added)) or ([without] if without else [])
    detail = {
        **ref.summary(),
        "added": list(dict.fromkeys(f.batch_id for f in added)),
        "files": [f.path for f in files],
        "note": note,
        **({"removed": [without]} if without else {}),
        **({"sample": asdict(ref.sample)} if ref.sample else {}),
    }
    # The entry names its batch when it adds or removes one (the seed, a single
    # promotion, a revocation).
    store._chain.append(tx, "reference", batches[0] if len(batches) == 1 else None, actor, detail)
    return ref


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


# --------------------------------------------------------------------------- revocation


def revoke(store: Store, batch_id: str, *, actor: str, note: str) -> Revocation:
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
    the ``reference`` one), is one ledger transaction; the only file written is
    that new version's sample, drawn from every file it keeps.

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
    with store.writing():
        rec = store.batch(batch_id)
        if rec is None:
            raise ReviewError(
                f"no batch {shown(batch_id)!r} in {store.ledger.location}; "
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
        files = [f for f in store.files("clean") if f.batch_id == batch_id]
        clean = [store.read(f) for f in files]
        held = store.quarantine_frame(batch_id)
        done = set(store.reviews(batch_id)["pg_row"].astype(int))
        pending = held[~held["pg_row"].isin(done)] if len(held) else held
        if len(pending) != rec.rows_quarantined:
            raise StoreError(
                f"batch {batch_id}: the ledger counts {rec.rows_quarantined} rows awaiting "
                f"review, its quarantine files {len(pending)}; run `poisonguard gate`"
            )
        parts = [p for p in (*clean, pending) if len(p)]
        # From the rows' content under the store's key (see Store.commit_review), a file at a
        # time: a frame's dtypes, which the canonical form follows, are its file's.
        gone = pd.DataFrame(
            {
                "pg_row": np.concatenate(
                    [np.zeros(0, np.int64)] + [p["pg_row"].to_numpy(dtype=np.int64) for p in parts]
                ),
                "pg_row_hash": np.concatenate(
                    [np.zeros(0, object)] + [store.row_hashes(p) for p in parts]
                ),
            }
        )
        return _record_revocation(store, rec, files, gone, pending, actor, note)


def _record_revocation(
    store: Store,
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
    with store.transaction() as tx:
        tx.revoke_batch(rec.batch_id, f"revoked on {at[:10]} by {actor}: {note}")
        tx.set_kind([f.path for f in files], "revoked")
        tx.add_reviews([Review(rec.batch_id, r, "reject", actor, note, at) for r in rejected])
        tx.block(
            [
                Blocked(h, rec.batch_id, int(r), actor, at)
                for h, r in zip(hashes, gone["pg_row"].tolist(), strict=True)
            ]
        )
        detail = {
            "rows_revoked": rec.rows_clean,
            "rejected": rejected,
            "revoked_files": [f.path for f in files],
            "row_hashes": hashes,
            "note": note,
        }
        store._chain.append(tx, "revoke", rec.batch_id, actor, detail)
        (current,) = tx.references() or (None,)
        reference = None
        if current is not None and rec.batch_id in current.batch_ids:
            reference = add_reference(
                store,
                tx,
                [],
                actor=actor,
                note=f"revoked {rec.batch_id}: {note}",
                without=rec.batch_id,
            )
        crash_point("revoke-before-ledger-commit")
    return Revocation(
        rec.batch_id, rec.rows_clean, len(rejected), tuple(f.path for f in files), reference
    )


# --------------------------------------------------------------------------- re-scan holds


def hold_rescanned(store: Store, flagged: pd.DataFrame, *, actor: str, note: str) -> dict[str, int]:
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
    store : Store
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
    with store.writing(), contextlib.ExitStack() as undo:
        holds = write_holds(store, flagged, undo, note)
        with store.transaction() as tx:
            record_holds(store, tx, holds, actor)
            crash_point("rescan-before-ledger-commit")
    return holds.done()


@dataclass(frozen=True)
class Holds:
    """A re-scan hold with its files written, awaiting the ledger transaction that lists them
    (``write_holds``, then ``record_holds``)."""

    plans: tuple[_Hold, ...]
    written: tuple[list[tuple[str, str, int | None]], ...]
    markers: tuple[Path, ...]
    note: str

    def done(self) -> dict[str, int]:
        """Rows held per batch; clears the files' staging markers (after the ledger commit)."""
        for marker in self.markers:
            shutil.rmtree(marker, ignore_errors=True)
        return {p.batch_id: len(p.moved) for p in self.plans}


def write_holds(
    store: Store, flagged: pd.DataFrame, undo: contextlib.ExitStack, note: str
) -> Holds:
    """Plan a re-scan hold of ``flagged`` (as ``hold_rescanned`` takes it) and write its
    files, under the write lock the caller holds; ``note`` says why (recorded). Each batch's files are undone through
    ``undo`` if the caller fails before its ledger transaction commits.

    Raises
    ------
    ReviewError
        As ``hold_rescanned``.
    """
    if flagged.empty:
        return Holds((), (), (), note)
    current = store.reference()
    pinned = {f.path for f in current.files} if current is not None else set()
    clean = [f for f in store.files("clean") if f.path not in pinned]
    taken = {f.path for f in store.files()}
    plans, markers = [], []
    for batch_id, rows in flagged.groupby("pg_batch", sort=False):
        plan = _plan_hold(store, str(batch_id), rows, clean, taken)
        marker = store.staging_dir(plan.name)
        undo.enter_context(store._undone_on_error(marker))
        plans.append(plan)
        markers.append(marker)
    written = tuple(
        store._write_files(p.name, (("clean", p.kept), ("quarantine", p.moved))) for p in plans
    )
    return Holds(tuple(plans), written, tuple(markers), note)


def _plan_hold(
    store: Store, batch_id: str, rows: pd.DataFrame, clean: list[FileRecord], taken: set[str]
) -> _Hold:
    """Which files one batch's re-scan hold supersedes, and the rows of its new files."""
    rec = store.batch(batch_id)
    if rec is None or rec.status != "committed":
        raise ReviewError(
            f"batch {shown(batch_id)} is not a committed batch of {store.ledger.location} "
            f"({'unknown' if rec is None else rec.status}); run `poisonguard rescan` again"
        )
    wanted = {int(r) for r in rows["pg_row"].tolist()}
    frames = [(f, store.read(f)) for f in clean if f.batch_id == batch_id]
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


def record_holds(store: Store, tx: LedgerTransaction, holds: Holds, actor: str) -> None:
    """List a written hold's files in the ledger transaction ``tx``, move its rows' counts
    from clean to quarantined and append one ``rescan`` audit entry per batch."""
    at = now()
    for plan, files in zip(holds.plans, holds.written, strict=True):
        rows = sorted(int(r) for r in plan.moved["pg_row"].tolist())
        held = set(rows)
        reopened = sorted(
            int(r.pg_row)
            for r in tx.reviews(plan.batch_id)
            if r.action == "release" and r.pg_row in held
        )
        tx.drop_reviews(plan.batch_id, reopened)
        tx.set_kind(plan.superseded, "superseded", was="clean")
        tx.add_files(file_records(plan.batch_id, files), at)
        tx.move_rows(plan.batch_id, len(rows), "clean", "quarantined")
        detail = {
            "rows": rows,
            "files": {p: h for p, h, _ in files},
            "superseded": list(plan.superseded),
            "reopened": reopened,
            "note": holds.note,
        }
        store._chain.append(tx, "rescan", plan.batch_id, actor, detail)
