"""Erasure: a data subject's rows taken out of every file the store keeps (``Store.forget``).

Files are otherwise never rewritten (``core``); erasure is the one exception, made
the way a re-scan hold replaces a file. Each file holding a row of the subject
(clean, quarantine, revoked and superseded tables; a rejected batch's file as it
arrived, CSV or Parquet) is written again without those rows under a new name
(``<kind>/<batch>.forget-<n>.parquet``, ``rejected/<batch>.forget-<n>/<file>``),
atomically, from a staging folder of that name. Then ONE ledger transaction lists
the new files (same kind as the file they replace), lists the old ones as
``erased``, takes the rows out of their batches' counts, drops their reviews and
their blocklist entries, appends a ``forget`` audit entry and, when the current
reference held a replaced file, a new reference version with the new file in its
place (so a guard fitted on the old version is never reused). Only after the
commit are the old files deleted; the ledger is compacted last
(``Ledger.compact``), so that deleted records leave no bytes behind.

The audit entry holds the subject only as keyed hashes (HMAC under the audit key,
with the ``DOMAIN`` prefix), the columns it names, rows removed per batch and the
file names: never a value. Reports of the affected batches (and any report whose
bytes hold one of the subject's values) are deleted, not re-rendered: a report is
a view of a batch as judged, and the gate never reads one.

A process killed mid-way is finished or undone by the next writer: before the
commit, its new files are unlisted and ``staging.recover`` removes them with their
staging folder; after it, ``recover`` deletes the files listed as ``erased`` still
on disk, and running ``forget`` again compacts the ledger.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import re
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from poisonguard.errors import ReviewError, StoreError, shown
from poisonguard.landing import batch_suffix
from poisonguard.store.files import crash_point, now, parquet_bytes
from poisonguard.store.ledger import ERASED, GONE, FileRecord, LedgerTransaction, ReferenceVersion
from poisonguard.store.revisions import add_reference
from poisonguard.store.samples import read_sample, sample_name
from poisonguard.subject import Subject

if TYPE_CHECKING:
    from poisonguard.store.core import Store

#: The prefix of the keyed hashes an erasure records (so they match no other HMAC the key makes).
DOMAIN = "poisonguard-forget"
_FORGET = re.compile(r"\.forget-\d+$")
_REASON = "reason.json"


@dataclass(frozen=True)
class FileErasure:
    """One file an erasure rewrote (or deleted whole).

    Attributes
    ----------
    path : str
        The file as it was (listed as ``erased`` afterwards).
    batch_id, kind : str
    rows : int or None
        Rows taken out (None: a rejected file that could not be read as a table,
        deleted whole because its bytes held one of the subject's values).
    replaced_by : str or None
        The new file without those rows; None when deleted whole.
    """

    path: str
    batch_id: str
    kind: str
    rows: int | None
    replaced_by: str | None


@dataclass(frozen=True)
class Erasure:
    """What ``Store.forget`` did (or, with ``dry_run``, would do).

    Attributes
    ----------
    subject : str
        The subject's keyed hash, as the audit entry records it.
    files : tuple of FileErasure
    rows_by_batch : dict of str to int
        Distinct rows taken out of each batch.
    reports : tuple of str
        Reports deleted (paths relative to the store).
    reference : ReferenceVersion or None
        The new reference version, when the current one held a rewritten file.
    residues : tuple of str
        Places outside the rows that still hold one of the subject's values (free
        text such as a review note, which the audit chain keeps), one line each.
    dry_run : bool
    """

    subject: str
    files: tuple[FileErasure, ...]
    rows_by_batch: dict[str, int]
    reports: tuple[str, ...] = ()
    reference: ReferenceVersion | None = None
    residues: tuple[str, ...] = ()
    dry_run: bool = False

    @property
    def rows(self) -> int:
        """Rows taken out in all."""
        return sum(self.rows_by_batch.values())


@dataclass
class _Plan:
    """One file to rewrite: its record, its new content and name, and the rows taken out."""

    record: FileRecord
    content: bytes | None  # None: deleted whole
    rows: int | None  # rows left in a table the store wrote; None otherwise
    removed: list[int] = field(default_factory=list)  # pg_row of each row taken out
    n_removed: int | None = 0
    name: str = ""
    new_path: str | None = None


def keyed(store: Store, text: str) -> str:
    """An HMAC of ``text`` under the store's audit key, in the erasure's domain."""
    return store._chain.mac(f"{DOMAIN}\0{text}")


def subject_hashes(store: Store, subject: Subject) -> tuple[str, list[str]]:
    """The subject's keyed hash, and one per value an equality names (``column\\0value``), so
    that whether a person's value was erased can be answered later by whoever holds the key."""
    return keyed(store, subject.canonical()), [
        keyed(store, f"{c}\0{v}") for c, v in subject.values()
    ]


# --------------------------------------------------------------------------- the erasure


def forget(
    store: Store, subject: Subject, *, actor: str, note: str = "", dry_run: bool = False
) -> Erasure:
    """Erase the subject's rows from every file of the store, in one commit (module docstring).

    Parameters
    ----------
    store : Store
    subject : Subject
        Which rows (``poisonguard.subject``).
    actor : str
        Who asks (recorded).
    note : str
        Why (recorded; it may not hold one of the subject's values).
    dry_run : bool
        Only find what would be erased; nothing is written.

    Raises
    ------
    ReviewError
        For no actor, a note or actor holding one of the subject's values, or a column
        no file of the store has (naming the store's columns).
    StoreError
        When work of a live process sits in the staging area (it may hold the rows).
    """
    actor = actor.strip()
    if not actor:
        raise ReviewError("erasing a subject needs the name of who asks (--by NAME)")
    for column, value in subject.values():
        if holds(note, [value]) or holds(actor, [value]):
            raise ReviewError(
                f"the note or name holds the {shown(column)} value being erased; the audit "
                "log keeps both for good: leave the value out"
            )
    with store.exclusive(), store.writing():
        _check_columns(store, subject)
        busy = sorted(p.name for p in (store.root / "staging").iterdir())
        if busy:
            raise StoreError(
                f"staging/{busy[0]} in {store.root} is work a live process has in flight and may "
                "hold the subject's rows; let it finish, then run forget again"
            )
        plans = _plan(store, subject)
        mac, _ = subject_hashes(store, subject)
        if dry_run:
            return Erasure(mac, _done(plans), _rows_by_batch(plans), dry_run=True)
        _name(store, plans)
        dropped = _samples_holding(store, subject)
        names = [*dict.fromkeys(p.name for p in plans), *(sample_name(v) for v in dropped)]
        markers = [store.staging_dir(n) for n in names]
        with contextlib.ExitStack() as undo:
            for marker in markers:
                undo.enter_context(store._undone_on_error(marker))
            for plan in plans:
                if plan.new_path is not None and plan.content is not None:
                    store.data.makedirs(plan.new_path.rsplit("/", 1)[0])
                    store.data.write(plan.new_path, plan.content)
                    crash_point("forget-after-file")
            reports = _drop_reports(store, subject, {p.record.batch_id for p in plans})
            reference = _record(store, subject, plans, dropped, actor, note)
        crash_point("forget-after-ledger-commit")
        # Before the markers go: a process killed here leaves them, and ``recover`` then
        # removes the sample files no version names any more.
        for path in dropped.values():
            store.data.remove(path)
        for marker in markers:
            shutil.rmtree(marker, ignore_errors=True)
        for plan in plans:
            store.data.remove(plan.record.path)
        store.ledger.compact()
        residues = tuple(_residues(store, subject))
    return Erasure(mac, _done(plans), _rows_by_batch(plans), reports, reference, residues)


def _check_columns(store: Store, subject: Subject) -> None:
    """Every column the subject names is a column of the store's tables."""
    known: dict[str, None] = {}
    for f in store.files():
        if f.kind not in GONE and f.rows is not None:
            known.update(dict.fromkeys(c for c in store.column_names(f) if not c.startswith("pg_")))
    for column in subject.columns:
        if column not in known:
            raise ReviewError(
                f"no column {shown(column)!r} in the store {store.root}; its columns: "
                f"{', '.join(map(shown, known)) or 'none (no rows yet)'}"
            )


def _plan(store: Store, subject: Subject) -> list[_Plan]:
    """Every file holding a row of the subject, with its content without them."""
    plans = []
    for f in store.files():
        if f.kind in GONE:
            continue
        if f.rows is not None:
            frame = store.read(f)
            hit = subject.mask(frame)
            if hit.any():
                kept = frame[~hit].reset_index(drop=True)
                removed = [int(r) for r in frame.loc[hit, "pg_row"].tolist()]
                plans.append(_Plan(f, parquet_bytes(kept), len(kept), removed, len(removed)))
        elif f.kind == "rejected" and not f.path.endswith(f"/{_REASON}"):
            plan = _plan_rejected(store, subject, f)
            if plan is not None:
                plans.append(plan)
    return plans


def _plan_rejected(store: Store, subject: Subject, record: FileRecord) -> _Plan | None:
    """A rejected batch's file as it arrived, without the subject's rows (in its own format);
    a file that cannot be read as a table is deleted whole when its bytes hold a value."""
    content = store.data.read_bytes(record.path)
    suffix = batch_suffix(record.path) or ""
    try:
        if suffix in (".parquet", ".pq"):
            table = pq.read_table(pa.BufferReader(content))
            hit = subject.mask(table.to_pandas())
            sink = pa.BufferOutputStream()
            pq.write_table(table.filter(pa.array(~hit)), sink)
            rewritten = bytes(sink.getvalue().to_pybytes())
        elif suffix in (".csv", ".csv.gz"):
            plain = gzip.decompress(content) if suffix == ".csv.gz" else content
            typed = pacsv.read_csv(pa.BufferReader(plain)).to_pandas()
            # Written back from the text as it arrived: no cell changes its spelling.
            text = pd.read_csv(io.BytesIO(plain), dtype=str, keep_default_na=False)
            if len(text) != len(typed):
                raise ValueError("its rows read differently as text")
            hit = subject.mask(typed)
            out = text[~hit].to_csv(index=False).encode()
            rewritten = gzip.compress(out, mtime=0) if suffix == ".csv.gz" else out
        else:
            raise ValueError("not a batch file kind")
    except (pa.ArrowException, OSError, ValueError, EOFError):
        plain = content
        with contextlib.suppress(OSError, EOFError):
            plain = gzip.decompress(content)
        if any(v.encode() in plain or v.encode() in content for _, v in subject.values()):
            return _Plan(record, None, None, [], None)
        return None
    if not hit.any():
        return None
    return _Plan(record, rewritten, None, [], int(hit.sum()))


def _name(store: Store, plans: list[_Plan]) -> None:
    """Give each rewritten file its new name: ``<base>.forget-<n>``, ``n`` the first unused."""
    taken = {f.path for f in store.files()}
    folders = {p.split("/")[1] for p in taken if p.startswith("rejected/")}
    for plan in plans:
        folder, rest = plan.record.path.split("/", 1)
        if folder == "rejected":
            base, file_name = rest.split("/", 1)
        else:
            base, file_name = rest.removesuffix(".parquet"), ""
        base = _FORGET.sub("", base)
        n = 0
        while True:
            name = f"{base}.forget-{n}"
            path = (
                f"rejected/{name}/{file_name}"
                if folder == "rejected"
                else f"{folder}/{name}.parquet"
            )
            if path not in taken and not (folder == "rejected" and name in folders):
                break
            n += 1
        taken.add(path)
        if folder == "rejected":
            folders.add(name)
        plan.name = name
        plan.new_path = path if plan.content is not None else None


def _samples_holding(store: Store, subject: Subject) -> dict[int, str]:
    """The reference versions whose sample file holds one of the subject's rows, and the file:
    a sample is a copy of trusted rows, so it is dropped with them (a version keeps its
    files' history; the current version's sample is drawn afresh in the new version)."""
    out = {}
    for ref in store.references():
        if ref.sample is not None and subject.mask(read_sample(store, ref, ref.sample)).any():
            out[ref.version] = ref.sample.path
    return out


def _record(
    store: Store,
    subject: Subject,
    plans: list[_Plan],
    dropped: dict[int, str],
    actor: str,
    note: str,
) -> ReferenceVersion | None:
    """The erasure's one ledger transaction (module docstring); the new reference version."""
    at = now()
    mac, per_value = subject_hashes(store, subject)
    new = [
        FileRecord(
            p.new_path,
            p.record.batch_id,
            p.record.kind,
            hashlib.sha256(p.content).hexdigest(),
            p.rows,
        )
        for p in plans
        if p.new_path is not None and p.content is not None
    ]
    with store.transaction() as tx:
        tx.set_kind([p.record.path for p in plans], ERASED)
        tx.add_files(new, at)
        batches = _take_rows(tx, plans)
        gone = {(b, r) for p in plans for b, r in ((p.record.batch_id, r) for r in p.removed)}
        unblocked = [e.row_hash for e in tx.blocked() if (e.batch_id, e.pg_row) in gone]
        tx.unblock(unblocked)
        for version in dropped:
            tx.set_sample(version, None)
        detail = {
            "subject": mac,
            "values": per_value,
            "columns": list(subject.columns),
            "batches": batches,
            "files": {f.path: f.sha256 for f in new},
            "kinds": {f.path: f.kind for f in new},
            "erased": {p.record.path: p.new_path for p in plans},
            "unblocked": unblocked,
            "samples_dropped": sorted(dropped),
            "note": note,
        }
        store._chain.append(tx, "forget", None, actor, detail)
        reference = _new_reference(store, tx, plans, new, actor, mac)
        crash_point("forget-before-ledger-commit")
    return reference


def _take_rows(tx: LedgerTransaction, plans: list[_Plan]) -> dict[str, dict[str, object]]:
    """Take the erased rows out of their batches' counts and reviews; what each batch lost."""
    by_batch: dict[str, list[_Plan]] = defaultdict(list)
    for plan in plans:
        by_batch[plan.record.batch_id].append(plan)
    out: dict[str, dict[str, object]] = {}
    for batch_id, mine in by_batch.items():
        rec = tx.batch(batch_id)
        if rec is None:
            raise StoreError(f"{mine[0].record.path}: its batch {batch_id} is not in the ledger")
        reviews = {int(r.pg_row): r.action for r in tx.reviews(batch_id)}
        rows = sorted({r for p in mine for r in p.removed})
        held = {r for p in mine if p.record.kind == "quarantine" for r in p.removed}
        from_file = sum(p.n_removed or 0 for p in mine if p.record.kind == "rejected")
        if rec.status == "rejected":
            counts = (0, 0, from_file)
        elif rec.status == "revoked":
            counts = (0, 0, len(rows))
        else:
            counts = (
                sum(len(p.removed) for p in mine if p.record.kind == "clean"),
                sum(1 for r in held if r not in reviews),
                sum(1 for r in held if reviews.get(r) == "reject"),
            )
        dropped = [r for r in rows if r in reviews]
        tx.forget_rows(batch_id, *counts, rows_in=len(rows) if rows else from_file)
        tx.drop_reviews(batch_id, dropped)
        out[batch_id] = {
            "rows": len(rows) if rows else from_file,
            "clean": counts[0],
            "quarantined": counts[1],
            "rejected": counts[2],
            "reviews": [[r, reviews[r]] for r in dropped],
        }
    return out


def _new_reference(
    store: Store,
    tx: LedgerTransaction,
    plans: list[_Plan],
    new: list[FileRecord],
    actor: str,
    mac: str,
) -> ReferenceVersion | None:
    """A reference version with the rewritten files in place of the old, when the current
    version held one."""
    (current,) = tx.references() or (None,)
    by_path = {f.path: f for f in new}
    replaced = {p.record.path: by_path[p.new_path] for p in plans if p.new_path is not None}
    if current is None or not any(f.path in replaced for f in current.files):
        return None
    return add_reference(
        store,
        tx,
        [],
        actor=actor,
        note=f"an erasure (subject {mac[:12]}...) rewrote its files",
        replaced=replaced,
    )


def holds(text: str, values: list[str]) -> bool:
    """Whether ``text`` writes one of ``values`` as a whole token: not inside a longer run of
    letters and digits, so an id ``12`` is not found in ``1012``, a hash or a timestamp."""
    return any(
        re.search(rf"(?<![0-9A-Za-z]){re.escape(v)}(?![0-9A-Za-z])", text) for v in values if v
    )


def _text_leaves(detail: str) -> list[str]:
    """The strings of an audit entry's JSON detail (its numbers are counts and row numbers the
    store wrote, never a cell); the detail whole when it is not JSON."""
    try:
        stack: list[Any] = [json.loads(detail)]
    except ValueError:
        return [detail]
    out = []
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            stack += item
        elif isinstance(item, str):
            out.append(item)
    return out


def _drop_reports(store: Store, subject: Subject, batches: set[str]) -> tuple[str, ...]:
    """Delete the affected batches' reports, and any report holding one of the subject's values."""
    values = [v for _, v in subject.values()]
    removed = []
    for path in sorted(store.reports_dir.rglob("*")):
        if not path.is_file():
            continue
        stem = path.name.removesuffix(".html").removesuffix(".json")
        if stem in batches or holds(path.read_bytes().decode(errors="replace"), values):
            path.unlink()
            removed.append(path.relative_to(store.root).as_posix())
    return tuple(removed)


def _residues(store: Store, subject: Subject) -> list[str]:
    """Where one of the subject's values is still written outside its rows, one line each.

    Free text the ledger keeps (a batch's reason, a landing memo's reason, a review's
    note, an audit entry) cannot be rewritten without breaking the audit chain; a
    rejected batch's ``reason.json`` is its reason as recorded.
    """
    values = [v for _, v in subject.values()]
    if not values:
        return []
    found = []

    def check(where: str, *texts: object) -> None:
        if any(holds(str(t), values) for t in texts if t is not None):
            found.append(where)

    for b in store.batches():
        check(
            f"the ledger's record of batch {b.batch_id} (its source or reason)", b.source, b.reason
        )
    for name, memo in store.landed().items():
        check(f"the ledger's landing memo of {shown(name)}", name, memo.reason)
    for r in store.ledger.reviews():
        check(f"the review of row {r.pg_row} of batch {r.batch_id} (its note)", r.note, r.actor)
    for e in store.audit_log():
        check(f"audit entry {e['seq']} ({e['action']})", *_text_leaves(e["detail"]), e["actor"])
    for f in store.files("rejected"):
        if f.path.endswith(f"/{_REASON}"):
            check(f"{f.path}", store.data.read_text(f.path))
    return found


def _done(plans: list[_Plan]) -> tuple[FileErasure, ...]:
    return tuple(
        FileErasure(p.record.path, p.record.batch_id, p.record.kind, p.n_removed, p.new_path)
        for p in plans
    )


def _rows_by_batch(plans: list[_Plan]) -> dict[str, int]:
    rows: dict[str, set[int]] = defaultdict(set)
    counted: dict[str, int] = defaultdict(int)
    for p in plans:
        rows[p.record.batch_id].update(p.removed)
        if not p.removed:
            counted[p.record.batch_id] += p.n_removed or 0
    return {b: len(rows[b]) or counted[b] for b in dict.fromkeys(p.record.batch_id for p in plans)}


def as_arrived(files: dict[str, FileRecord], kind: str, batch_id: str) -> str | None:
    """The file holding a batch's rows of ``kind`` as they arrived (``<kind>/<batch>.parquet``,
    or the file an erasure rewrote it into), among the ``files`` the ledger lists by path and
    not erased; None when it has none."""
    first = f"{kind}/{batch_id}.parquet"
    if first in files and files[first].kind not in GONE:
        return first
    pattern = re.compile(re.escape(f"{kind}/{batch_id}") + r"\.forget-\d+\.parquet")
    live = [p for p, f in files.items() if f.kind not in GONE and pattern.fullmatch(p)]
    return live[-1] if live else None


__all__ = ["DOMAIN", "Erasure", "FileErasure", "as_arrived", "forget", "keyed", "subject_hashes"]
