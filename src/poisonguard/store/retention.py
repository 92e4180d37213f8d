"""Retention: quarantine and rejected data past their age, purged with one audit entry.

``[retention]`` (``config.RetentionSettings``) sets how long the store keeps the
rows that never joined the training set. What is purged, and when its age starts:

* **rejected**: a batch rejected whole (``rejected/<batch>/``: the file as it
  arrived and its reason), from its commit in the ledger; a revoked batch (its
  revoked clean files and its quarantine files), from the revocation. Both after
  ``rejected_days``.
* **quarantine**: a committed batch's held rows (its ``quarantine/`` files), as
  one unit, once every row is due: a released row ``quarantine_days`` after its
  release (its copy in the training set stays), a rejected row ``rejected_days``
  after its rejection. The age counts from the review decision, not from the
  commit, because a row must be kept while it awaits review and for the chosen
  time after someone judged it (the time an appeal or an audit of that decision
  needs). A row nobody reviewed counts from when it was held; with
  ``unreviewed = "keep"`` it is never purged but shown as overdue for review,
  with ``"purge"`` it goes after ``quarantine_days`` and is counted as rejected
  (not blocklisted: nobody judged it).

Times come from the ledger (a batch's commit, a review's time) and the audit
chain (when a file was written, when a batch was revoked), never from file
times, which a copy or a restore changes. ``now`` is a parameter.

A purge is one ledger transaction: the purged files stay listed, under the kind
``purged`` with the hash and row count they had (the history stays; the gate and
``Store.verify_files`` know they are gone on purpose), the rows of unreviewed
purged rows move from quarantined to rejected, and one ``purge`` audit entry names
the batches, row counts and files (no row values). The bytes are removed after
that transaction commits: the ledger's mark is the purge's marker, so a purge
killed midway leaves files marked purged whose bytes are still there, and the next
purge (or the next run's) removes them first. Batch reports of purged batches go
too. The blocklist stays: the hash of every rejected row, so a purged row sent
again is still refused (``pipeline.held_as_purged``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from poisonguard.errors import param_error
from poisonguard.store.files import crash_point
from poisonguard.store.ledger import GONE, PURGED, BatchRecord, FileRecord, Review

if TYPE_CHECKING:
    from poisonguard.config import RetentionSettings
    from poisonguard.store.core import Store

#: What a purge removes, by what the batch's data is.
DUE_KINDS = ("quarantine", "rejected")

_DAY = 86400.0


def utc_now() -> datetime:
    """The clock retention reads when no ``now`` is given (the CLI's and a run's)."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Due:
    """One batch's quarantine or rejected data that is past its age.

    Attributes
    ----------
    batch_id : str
    kind : str
        ``"quarantine"`` (a committed batch's held rows) or ``"rejected"`` (a batch
        rejected whole, or revoked).
    rows : int
        Its rows: a batch's held rows (reviewed or not), a rejected or revoked
        batch's rejected rows (0 for a file that could not be read as rows).
    since : str
        The time its age counts from (ISO 8601): the latest review decision, the
        time its rows were held (unreviewed ones), or its rejection.
    age_days : float
        Days from ``since`` to the time asked about.
    unreviewed : int
        Rows still awaiting review (0 for rejected data).
    files : tuple of str
        The data files a purge removes.
    purge : bool
        True: a purge removes it now. False: rows nobody reviewed are past
        ``quarantine_days`` and kept (``unreviewed = "keep"``): overdue for review.
    """

    batch_id: str
    kind: str
    rows: int
    since: str
    age_days: float
    unreviewed: int
    files: tuple[str, ...]
    purge: bool

    @property
    def reviewed(self) -> bool:
        """Every row of it was decided (a rejection counts)."""
        return self.unreviewed == 0

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "files": list(self.files), "reviewed": self.reviewed}


@dataclass(frozen=True)
class RetentionPlan:
    """What retention asks for at one time (``plan``).

    Attributes
    ----------
    items : tuple of Due
        Data past its age: to purge, or kept as overdue for review.
    leftover : tuple of str
        Bytes of data already purged that are still there (a purge killed midway):
        data files, and ``reports/...`` of purged batches. The next purge removes them.
    """

    items: tuple[Due, ...]
    leftover: tuple[str, ...]

    @property
    def due(self) -> tuple[Due, ...]:
        """What a purge removes now."""
        return tuple(d for d in self.items if d.purge)

    @property
    def overdue(self) -> tuple[Due, ...]:
        """Held rows nobody reviewed, past ``quarantine_days`` and kept."""
        return tuple(d for d in self.items if not d.purge)


@dataclass(frozen=True)
class Purge:
    """What one purge did (``purge``).

    Attributes
    ----------
    purged : tuple of Due
        The data it purged (empty when nothing was due).
    files : tuple of str
        Data files and reports removed, an interrupted purge's leftovers included.
    rows : int
        Rows purged.
    finished : tuple of str
        Leftovers of an earlier, interrupted purge it removed first.
    """

    purged: tuple[Due, ...]
    files: tuple[str, ...]
    rows: int
    finished: tuple[str, ...] = ()


def plan(store: Store, settings: RetentionSettings, now: datetime | None = None) -> RetentionPlan:
    """What is past its age at ``now`` (default the clock), and leftovers of earlier purges.

    Raises
    ------
    ParamError
        When ``now`` has no time zone.
    """
    now = _checked(now)
    records = store.files()
    by_batch: dict[str, list[FileRecord]] = defaultdict(list)
    for f in records:
        by_batch[f.batch_id].append(f)
    written, revoked = _times(store.audit_log())
    reviews: dict[str, list[Review]] = defaultdict(list)
    for r in store.ledger.reviews():
        reviews[r.batch_id].append(r)
    items = []
    for rec in store.batches():
        kept = [f for f in by_batch.get(rec.batch_id, []) if f.kind not in GONE]
        if rec.status in ("rejected", "revoked"):
            since = rec.finished_at if rec.status == "rejected" else revoked.get(rec.batch_id)
            item = _rejected(rec, kept, since, settings, now)
        elif rec.status == "committed":
            held = [f for f in kept if f.kind == "quarantine"]
            item = _quarantine(rec, held, reviews[rec.batch_id], written, settings, now)
        else:
            item = None
        if item is not None:
            items.append(item)
    return RetentionPlan(tuple(items), tuple(_leftover(store, records)))


def purge(
    store: Store, settings: RetentionSettings, *, actor: str, now: datetime | None = None
) -> Purge:
    """Purge what is due at ``now`` (default the clock): one ledger transaction, then the bytes.

    Leftovers of an interrupted purge are removed first. Nothing is written (no
    audit entry) when nothing is due.

    Raises
    ------
    ReviewError
        For an empty ``actor``.
    ParamError
        When ``now`` has no time zone.
    """
    from poisonguard.errors import ReviewError

    if not actor.strip():
        raise ReviewError("a purge needs the name of who purges (--by NAME)")
    with store.writing():
        asked = plan(store, settings, now)
        finished = _remove(store, asked.leftover)
        due = asked.due
        if not due:
            return Purge((), finished, 0, finished)
        paths = [p for d in due for p in d.files]
        reports = [
            f"reports/{p.name}" for d in due for p in store.report_paths(d.batch_id) if p.exists()
        ]
        rows = sum(d.rows for d in due)
        with store.transaction() as tx:
            tx.set_kind(paths, PURGED)
            for d in due:
                if d.unreviewed:
                    tx.move_rows(d.batch_id, d.unreviewed, "quarantined", "rejected")
            detail = {
                "batches": [
                    {
                        "batch_id": d.batch_id,
                        "kind": d.kind,
                        "rows": d.rows,
                        "unreviewed": d.unreviewed,
                        "since": d.since,
                        "files": list(d.files),
                    }
                    for d in due
                ],
                "rows": rows,
                "purged_files": paths,
                "reports": reports,
                "policy": {
                    "quarantine_days": settings.quarantine_days,
                    "rejected_days": settings.rejected_days,
                    "unreviewed": settings.unreviewed,
                },
            }
            batch = due[0].batch_id if len(due) == 1 else None
            store._chain.append(tx, "purge", batch, actor.strip(), detail)
            crash_point("purge-before-ledger-commit")
        removed = _remove(store, [*paths, *reports])
    return Purge(due, finished + removed, rows, finished)


def purged_batches(store: Store) -> set[str]:
    """Batches some of whose data was purged (their rows may be gone from the files)."""
    return {f.batch_id for f in store.files(PURGED)}


# --------------------------------------------------------------------------- the rules


def _rejected(
    rec: BatchRecord,
    kept: list[FileRecord],
    since: str | None,
    settings: RetentionSettings,
    now: datetime,
) -> Due | None:
    """A batch rejected whole or revoked: due ``rejected_days`` after its rejection."""
    if not kept or settings.rejected_days is None or since is None:
        return None
    age = _age(since, now)
    if age < settings.rejected_days:
        return None
    return Due(
        rec.batch_id,
        "rejected",
        rec.rows_rejected,
        since,
        age,
        0,
        tuple(f.path for f in kept),
        purge=True,
    )


def _quarantine(
    rec: BatchRecord,
    held: list[FileRecord],
    decisions: list[Review],
    written: dict[str, str],
    settings: RetentionSettings,
    now: datetime,
) -> Due | None:
    """A committed batch's held rows: due when each row is (see the module's notes)."""
    if not held:
        return None
    # (the time a group's age counts from, the days it waits) per group of rows
    groups: list[tuple[str, int | None]] = []
    for action, days in (
        ("release", settings.quarantine_days),
        ("reject", settings.rejected_days),
    ):
        times = [r.at for r in decisions if r.action == action]
        if times:
            groups.append((max(times, key=_parsed), days))
    held_at = max((written.get(f.path, rec.finished_at) for f in held), key=_parsed)
    waiting = rec.rows_quarantined
    overdue = (
        waiting > 0
        and settings.quarantine_days is not None
        and _age(held_at, now) >= settings.quarantine_days
    )
    if waiting:
        groups.append(
            (held_at, settings.quarantine_days if settings.unreviewed == "purge" else None)
        )
    due = all(days is not None and _age(at, now) >= days for at, days in groups)
    if not (due or overdue):
        return None
    since = max((at for at, _ in groups), key=_parsed)
    return Due(
        rec.batch_id,
        "quarantine",
        waiting + len(decisions),
        since,
        _age(since, now),
        waiting,
        tuple(f.path for f in held),
        purge=due,
    )


def _times(log: Iterable[dict[str, Any]]) -> tuple[dict[str, str], dict[str, str]]:
    """From the audit chain: when each data file was written, and when each batch was revoked."""
    written: dict[str, str] = {}
    revoked: dict[str, str] = {}
    for entry in log:
        action = entry["action"]
        if action not in ("ingest", "rescan", "release", "revoke"):
            continue
        if action == "revoke":
            revoked.setdefault(entry["batch_id"], entry["at"])
            continue
        files = json.loads(entry["detail"]).get("files")
        if isinstance(files, dict):
            written.update((path, entry["at"]) for path in files)
    return written, revoked


def _leftover(store: Store, records: list[FileRecord]) -> list[str]:
    """Bytes of purged data still there: data files, and reports of purged batches."""
    gone = [f for f in records if f.kind == PURGED]
    found = [f.path for f in gone if store.data.exists(f.path)]
    for batch_id in dict.fromkeys(f.batch_id for f in gone):
        found += [f"reports/{p.name}" for p in store.report_paths(batch_id) if p.exists()]
    return found


def _remove(store: Store, paths: Iterable[str]) -> tuple[str, ...]:
    """Remove data files and reports (``reports/...``); a rejected batch's emptied folder too."""
    removed = []
    for rel in paths:
        if rel.startswith("reports/"):
            (store.root / rel).unlink(missing_ok=True)
        else:
            store.data.remove(rel)
            folder = rel.rpartition("/")[0]
            if rel.startswith("rejected/") and not store.data.find(folder):
                store.data.remove_tree(folder)
        removed.append(rel)
        crash_point("purge-between-files")
    return tuple(removed)


def _checked(now: datetime | None) -> datetime:
    if now is None:
        return utc_now()
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise param_error("now", "retention", "a datetime with a time zone", now)
    return now


def _parsed(at: str) -> datetime:
    return datetime.fromisoformat(at)


def _age(at: str, now: datetime) -> float:
    """Days from the ledger time ``at`` to ``now``."""
    return (now - _parsed(at)) / timedelta(seconds=_DAY)
