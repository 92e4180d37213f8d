"""A batch's way through the gate: land -> validate -> detect -> decide -> commit.

Each step is a function of paths, so a Prefect task can wrap it in one line and
pass paths, never frames, to the next (flows/ingest.py)::

    entries, notices = find_new_batches(config, store)   # what landed, what was skipped
    intake = validate_batch(entry, config, store)         # staged rows, a rejection or a skip
    detect_batch(intake.staged, config, store)            # the one decision, beside the rows
    record = commit_batch(intake.staged, config, store)   # files, then the ledger row

``process_landing`` runs the same steps in-process, without Prefect. The files
themselves (the landed copy, the staged rows, the decision beside them) are the
store's to write and read (``poisonguard.store.staging``); this module decides.

Fault isolation: whatever a landed file holds, the worst it can do is get
itself rejected (kept under ``rejected/`` with its reason) or skipped (with a
reason the ledger keeps); the other batches go on. Only failures of the store
itself (a full disk, a lost lock) stop a run, with nothing half-written.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from poisonguard.cluster import Part, connect, judge_on_cluster, local_cluster
from poisonguard.config import RESERVED_PREFIX, Config
from poisonguard.decision import (
    P_FLOOR,
    STAGES,
    BatchDecision,
    ChunkedDecision,
    Decision,
    batch_hold_reason,
    decide_batch,
)
from poisonguard.detectors import Table
from poisonguard.detectors.drift import DriftCounts, batch_drift
from poisonguard.detectors.duplicates import DuplicatesDetector, find_near_copies
from poisonguard.detectors.targets import robust_spread
from poisonguard.errors import BatchError, ConfigError, ReviewError, StoreError, shown
from poisonguard.evidence import (
    TOP_ROWS,
    Evidence,
    EvidenceCounts,
    ReferenceUsed,
    batch_evidence,
    build_report,
    dumps,
    loads,
)
from poisonguard.landing import Entry, batch_id_for, batch_suffix, safe_stem, source_of
from poisonguard.pii import Masker
from poisonguard.sampling import rule_for
from poisonguard.scan import Guard
from poisonguard.sources import (
    FLOW_ROW_ODDS,
    POOLED,
    SOURCE_ALARM,
    THRESHOLDS,
    BatchCounts,
    Event,
    FlowCounts,
    RowTally,
    SourceReplay,
    SourceState,
    batch_counts,
    size_drift,
)
from poisonguard.store import (
    BatchRecord,
    Blocked,
    Erasure,
    IdOwners,
    Outcome,
    ReferenceVersion,
    Staged,
    Store,
    TakeBack,
    Unreadable,
    Unsettled,
    add_provenance,
    crash_point,
    data_columns,
    decision_writer,
    entry_for,
    hex_digits,
    is_large,
    now,
    open_store,
    parquet_bytes,
    partition_chunks,
    read_batch,
    read_chunks,
    read_decision,
    read_decision_meta,
    read_evidence,
    row_group_sizes,
    row_hashes,
    rows_writer,
    settled,
    stage_rows,
    stage_written,
    survey,
    write_decision,
    write_decision_meta,
    write_evidence,
)
from poisonguard.subject import Subject

#: A row's reason lists at most this many failed expectations, then a count.
MAX_LISTED = 3

_log = logging.getLogger("poisonguard")


@dataclass(frozen=True)
class Notice:
    """A landing entry that did not become a batch this run, and why."""

    file: str
    status: str  # "skipped" (remembered by the ledger) or "waiting" (looked at again next run)
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Intake:
    """What taking one landed file led to: rows staged for scoring, a rejection, or a notice."""

    staged: Path | None = None
    record: BatchRecord | None = None
    notice: Notice | None = None


@dataclass
class Run:
    """What one pass over the landing folder did; ``purge``: what its retention purge did
    (``purge_after_run``), None when ``[retention]`` purges nothing automatically."""

    records: list[BatchRecord] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    purge: dict[str, Any] | None = None

    @property
    def rejected(self) -> list[BatchRecord]:
        return [r for r in self.records if r.status == "rejected"]


def _jsonable(value: object) -> list[dict]:
    """Round-trip through JSON, turning numpy scalars and other oddities into plain values."""
    return list(json.loads(json.dumps(value, default=str)))


def find_new_batches(config: Config, store: Store) -> tuple[list[Entry], list[Notice]]:
    """Landing entries to take this run, and notices for the others.

    Entries the ledger remembers unchanged (same name, size and time) are passed
    over silently; entries that are not batch files are remembered as skipped,
    with their reason, and noticed once; files still being written wait.
    """
    entries = survey(config.landing)
    known = store.landed()
    fresh = [
        e
        for e in entries
        if e.name not in known or (known[e.name].size, known[e.name].mtime_ns) != e.identity[1:]
    ]
    notices = []
    for e in fresh:
        if e.skip is not None and store.remember_skip(e.identity, e.skip):
            notices.append(Notice(e.name, "skipped", e.skip))
    batches = [e for e in fresh if e.skip is None]
    ready, changing = settled(batches, config.settle_seconds)
    for e in changing:
        notices.append(Notice(e.name, "waiting", "still being written; taken on a later run"))
    return ready, notices


def validate_batch(entry: Entry, config: Config, store: Store) -> Intake:
    """Take one landed file: copy and hash it, read it, validate it, stage its rows.

    A file that cannot be read, fails a schema-level expectation or trips any
    other error while being judged is rejected whole (kept under ``rejected/``
    with its reason). Content the ledger already holds is skipped with a notice.

    Returns
    -------
    Intake
        ``staged``: the staging folder (every row in ``rows.parquet``, rows held
        before scoring in ``prior.parquet``); or ``record`` for a rejection; or
        ``notice`` for a file not taken.
    """
    started = now()
    try:
        copy, sha = store.snapshot(entry)
    except Unsettled:
        return Intake(notice=Notice(entry.name, "waiting", "changed while being read; taken later"))
    except Unreadable as exc:
        # Not remembered: fixing a file's permissions does not change its size or time,
        # so it is tried again on every run until it can be read.
        reason = f"cannot be read ({exc}); tried again on the next run"
        return Intake(notice=Notice(entry.name, "waiting", reason))
    seen = store.batch_by_sha(sha)
    if seen is not None:
        store.discard(copy)
        reason = f"same content as batch {seen.batch_id} ({shown(seen.source)}), already processed"
        store.remember_skip(entry.identity, reason, sha256=sha, batch_id=seen.batch_id)
        return Intake(notice=Notice(entry.name, "skipped", reason))

    batch_id = batch_id_for(entry.name, sha)
    landed = store.stage(copy, batch_id)
    rows_in: int | None = None
    broken: list[dict] = []
    run = config.execution
    if is_large(landed, name=entry.name, chunk_bytes=run.chunk_bytes, chunk_rows=run.chunk_rows):
        return _validate_chunks(entry, landed, batch_id, sha, started, config, store)
    try:
        frame, report = _read_and_validate(landed, entry.name, config)
        rows_in = len(frame)
        broken = [o.__dict__ for o in report.outcomes if not o.success]
        report.raise_if_rejected(rows=rows_in)
        hashes = store.row_hashes(frame)
        prior = _held_before_scoring(frame, report.row_failures, config, store)
    except (OSError, StoreError, MemoryError):
        raise  # the store or the machine failed, not the batch: stop, retry next run
    except Exception as exc:  # fail closed: whatever else goes wrong, the batch is not used
        return _rejected(exc, entry, landed, batch_id, sha, started, rows_in, broken, store)

    add_provenance(frame, batch_id, hashes)
    manifest = _manifest(entry, batch_id, sha, started, rows_in, broken)
    folder = stage_rows(landed, frame, prior, manifest)
    crash_point("after-stage")
    return Intake(staged=folder)


def _manifest(
    entry: Entry, batch_id: str, sha: str, started: str, rows_in: int, broken: list[dict]
) -> dict[str, Any]:
    """What a staged batch's ``staged.json`` records (``Staged``)."""
    return {
        "batch_id": batch_id,
        "sha256": sha,
        "source": entry.name,
        "rows_in": rows_in,
        "started_at": started,
        "failed_expectations": _jsonable(broken),
        "landed": list(entry.identity),
    }


def _rejected(
    exc: Exception,
    entry: Entry,
    landed: Path,
    batch_id: str,
    sha: str,
    started: str,
    rows_in: int | None,
    broken: list[dict],
    store: Store,
) -> Intake:
    """Reject a landed file whole, keeping it with the reason ``exc`` gives."""
    reason = (
        str(exc)
        if isinstance(exc, BatchError)
        else f"{shown(entry.name)}: could not be judged ({type(exc).__name__}: "
        f"{shown(str(exc).splitlines()[0] if str(exc) else '', 200)})"
    )
    outcome = Outcome(
        batch_id=batch_id,
        sha256=sha,
        source=entry.name,
        status="rejected",
        rows_in=rows_in,
        rows_rejected=rows_in or 0,
        reason=reason,
        started_at=started,
        landed=entry.identity,
    )
    # A rejected batch's report shows no rows, so there is nothing to mask.
    write_batch_report(store, outcome, failed_expectations=_jsonable(broken), masker=Masker())
    name = safe_stem(entry.name) + (batch_suffix(entry.name) or "")
    return Intake(record=store.reject(landed, name, outcome))


def _validate_chunks(
    entry: Entry,
    landed: Path,
    batch_id: str,
    sha: str,
    started: str,
    config: Config,
    store: Store,
) -> Intake:
    """``validate_batch`` for a file too large to read whole: read, validated and staged a
    chunk at a time (``ChunkedValidation``), each chunk one row group of the staged rows.

    The expectations that need the whole batch at once reject it (see
    ``ChunkedValidation``); anything else that rejects a batch read whole rejects it too.
    """
    from poisonguard.validation import ChunkedValidation, load_suite, string_columns

    suite = load_suite(config.expectations)
    run = config.execution
    rows_in: int | None = None
    broken: list[dict] = []
    writer = rows_writer(landed)
    try:
        checks = ChunkedValidation(suite, source=shown(entry.name))
        owners = store.id_owners(config.id_column) if config.id_column is not None else None
        held_ids: list[tuple[int, str, str]] = []
        chunks = read_chunks(
            landed,
            name=entry.name,
            strings=string_columns(suite),
            chunk_bytes=run.chunk_bytes,
            chunk_rows=run.chunk_rows,
        )
        for table in chunks:
            frame = table.to_pandas()
            if checks.n_rows == 0:
                _check_reserved(frame, entry.name)
            start = checks.n_rows
            checks.add(frame)
            held_ids += _held_ids(frame, owners, config, start, store)
            add_provenance(frame, batch_id, store.row_hashes(frame))
            frame["pg_row"] += start
            writer.write(frame)
        report = checks.report()
        rows_in = checks.n_rows
        broken = [o.__dict__ for o in report.outcomes if not o.success]
        report.raise_if_rejected(rows=rows_in)
        writer.close()
    except (OSError, StoreError, MemoryError):
        writer.abort()
        raise
    except Exception as exc:  # fail closed, as validate_batch
        writer.abort()
        return _rejected(exc, entry, landed, batch_id, sha, started, rows_in, broken, store)
    prior = _prior_frame(_held_by_expectations(report.row_failures) + held_ids)
    manifest = _manifest(entry, batch_id, sha, started, rows_in, broken)
    folder = stage_written(landed, prior, {**manifest, "chunked": True})
    crash_point("after-stage")
    return Intake(staged=folder)


def _check_reserved(frame: pd.DataFrame, name: str) -> None:
    reserved = [c for c in frame.columns if str(c).startswith(RESERVED_PREFIX)]
    if reserved:
        raise BatchError(
            shown(name),
            f"column {shown(str(reserved[0]))!r} uses the prefix {RESERVED_PREFIX!r}, "
            "which poisonguard reserves for its own bookkeeping",
            column=str(reserved[0]),
        )


def _read_and_validate(path: Path, name: str, config: Config) -> tuple[pd.DataFrame, Any]:
    from poisonguard.validation import load_suite, string_columns, validate

    suite = load_suite(config.expectations)
    frame = read_batch(path, name=name, strings=string_columns(suite)).reset_index(drop=True)
    _check_reserved(frame, name)
    return frame, validate(frame, suite, source=shown(name))


def _held_before_scoring(
    frame: pd.DataFrame,
    failures: dict[int, tuple[str, ...]],
    config: Config,
    store: Store,
) -> pd.DataFrame:
    """Rows held by the expectations: broken ones, and ids already in the training set.

    The blocklist, which needs the trusted rows' scale, is ``held_by_blocklist``'s,
    at the start of ``detect_batch``.

    Returns a frame of ``pg_row``, ``pg_stage`` and ``pg_reason``, one row per held row.
    """
    owners = store.id_owners(config.id_column) if config.id_column is not None else None
    return _prior_frame(
        _held_by_expectations(failures) + _held_ids(frame, owners, config, 0, store)
    )


def _held_by_expectations(failures: dict[int, tuple[str, ...]]) -> list[tuple[int, str, str]]:
    held: list[tuple[int, str, str]] = []
    for row, why in failures.items():
        shown_ = "; ".join(why[:MAX_LISTED])
        more = f" (+{len(why) - MAX_LISTED} more)" if len(why) > MAX_LISTED else ""
        held.append((row, "expectations", f"failed expectation: {shown_}{more}"))
    return held


def _held_ids(
    frame: pd.DataFrame, owners: IdOwners | None, config: Config, start: int, store: Store
) -> list[tuple[int, str, str]]:
    """Rows of ``frame`` (the batch's rows from ``start``) whose id the training set holds.

    Ids are matched, and named in the reason, by their keyed hash (``Store.id_owners``):
    the reason is kept and shown, the id itself is in the row.
    """
    column = config.id_column
    if owners is None or column is None or column not in frame.columns or not len(owners):
        return []
    keys = store.value_keys(frame[column])
    found = owners.find(keys)
    rows = np.flatnonzero(found >= 0)
    return [
        (
            start + int(row),
            "expectations",
            f"{column} of this row is already in the training set (batch "
            f"{owners.batches[found[row]]}, keyed id {name}); ids must be unique",
        )
        for row, name in zip(rows.tolist(), hex_digits(keys[rows]).tolist(), strict=True)
    ]


def _prior_frame(held: list[tuple[int, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "pg_row": np.array([h[0] for h in held], dtype=np.int64),
            "pg_stage": pd.Series([h[1] for h in held], dtype=object),
            "pg_reason": pd.Series([h[2] for h in held], dtype=object),
        }
    )


def held_by_blocklist(frame: pd.DataFrame, rejected: pd.DataFrame, guard: Guard) -> dict[int, str]:
    """Rows of ``frame`` that are near-copies of a row a reviewer rejected, with the reason.

    The one place the blocklist is decided. A row is held when its features,
    encoded and scaled by ``guard`` (the current trusted rows), are within the
    duplicates detector's tolerance of a rejected row's, value by value, and
    its label is the same (``find_near_copies``). The id column and the text
    columns are not compared, so a new id or a reworded note does not make a
    rejected row new; another label does, and the detectors judge it. The
    rejected rows are scaled afresh each time, so the match follows the
    trusted reference as it changes.

    Parameters
    ----------
    frame : DataFrame
        Batch rows (their data columns).
    rejected : DataFrame
        ``Store.rejected_rows()``.
    guard : Guard
        Fitted on the store's trusted rows.

    Returns
    -------
    dict of int to str
        Row position in ``frame`` -> ``near-copy of a row rejected on DATE by NAME
        (batch B, row R)``.
    """
    if rejected.empty or frame.empty:
        return {}
    encoder = guard.encoder_
    params = guard.settings_.params.get(DuplicatesDetector.name, {})
    tolerance = float(DuplicatesDetector.from_params(params).tolerance)
    columns = [c for c in (*encoder.features, encoder.label) if c is not None]
    known = rejected.reindex(columns=columns)  # a column added since reads as missing
    batch_keys: np.ndarray | None = None
    known_keys: np.ndarray | None = None
    scale = 1.0
    if encoder.task == "classification" and encoder.label is not None:
        # Labels compared in memory, never kept: no key needed.
        batch_keys = row_hashes(frame, [encoder.label], key=None)
        known_keys = row_hashes(known, [encoder.label], key=None)
    elif encoder.task == "regression" and guard.reference_.target is not None:
        scale = robust_spread(guard.reference_.target)
    match = find_near_copies(
        encoder.transform(frame, "batch"),
        # Rows an expectation held were never encoded: a cell of theirs that does not
        # parse counts as missing, instead of stopping every later batch.
        encoder.transform(known, "rejected rows", errors="coerce"),
        tolerance,
        batch_keys=batch_keys,
        known_keys=known_keys,
        target_scale=scale,
    )
    hit = np.flatnonzero(match >= 0)
    was = rejected.iloc[match[hit]]
    return {
        int(row): f"near-copy of a row rejected on {str(at)[:10]} by {shown(str(by), 60)} "
        f"(batch {batch}, row {int(pg_row)})"
        for row, at, by, batch, pg_row in zip(
            hit,
            was["pg_rejected_at"],
            was["pg_rejected_by"],
            was["pg_batch"],
            was["pg_row"],
            strict=True,
        )
    }


def held_as_purged(hashes: np.ndarray, purged: Mapping[str, Blocked]) -> dict[int, str]:
    """Rows whose content hash is a rejected row's whose content retention purged.

    ``held_by_blocklist`` compares rows with the rejected rows' values; once those
    are purged only their hashes remain (``Store.purged_blocklist``), so an exact
    copy is still held (a near-copy is then the detectors' to judge).

    Parameters
    ----------
    hashes : ndarray of shape (n_rows,)
        The rows' ``pg_row_hash``.
    purged : mapping of str to Blocked

    Returns
    -------
    dict of int to str
        Row position -> ``copy of a row rejected on DATE by NAME (batch B, row R;
        its content since purged)``.
    """
    held = {}
    for at, digest in enumerate(hashes.tolist()):
        entry = purged.get(str(digest))
        if entry is not None:
            held[at] = (
                f"copy of a row rejected on {entry.at[:10]} by {shown(entry.actor, 60)} "
                f"(batch {entry.batch_id}, row {entry.pg_row}; its content since purged)"
            )
    return held


#: Guards fitted in this process, by reference sample digest and guard settings (newest last).
_FITTED: OrderedDict[tuple[str, str], Guard] = OrderedDict()
_FITTED_MAX = 2


def fit_guard(config: Config, store: Store, reference: ReferenceVersion | None = None) -> Guard:
    """Detectors fitted on a version of the store's pinned reference (default the current one).

    The reference is the seed and the batches promoted into it
    (``poisonguard reference promote``), never merely the accepted rows. The
    detectors are fitted on its sample (at most ``detection.max_reference_rows``
    rows, ``poisonguard.sampling``), which the store wrote with the version: only
    that file is read, verified by its hash, however many rows the reference holds
    (``Store.sample_frame``; a sample drawn under another label or limit than the
    config's is drawn afresh from the version's files). It changes only by
    promotion, so a process that judges many batches (a served flow, a run of many
    files) fits once per version: the fitted guard is kept by the sample's digest
    and the config's guard settings. Judging never changes a fitted guard.

    Raises
    ------
    StoreError
        When the store has no reference, or its sample file is missing or changed.
    """
    version = reference or store.reference()
    rule = rule_for(config)
    digest = "" if version is None else store.sample_digest(version, rule)
    key = (digest, repr(_guard_args(config)))
    if version is not None and key in _FITTED:
        _FITTED.move_to_end(key)
        return _FITTED[key]
    frame = pd.DataFrame() if version is None else store.sample_frame(version, rule)
    if frame.empty:
        raise StoreError(
            f"the store {store.root} has no trusted reference yet; "
            "seed it with `poisonguard init --sample TRUSTED`"
        )
    guard = guard_for(config).fit(frame[data_columns(frame)])
    _FITTED[key] = guard
    while len(_FITTED) > _FITTED_MAX:
        _FITTED.popitem(last=False)
    return guard


def forget(
    config: Config, subject: Subject, *, actor: str, note: str = "", dry_run: bool = False
) -> Erasure:
    """Erase a data subject's rows from the config's store (``Store.forget``) and drop every
    guard this process fitted: a fitted guard keeps the reference rows it learned from."""
    done = open_store(config).forget(subject, actor=actor, note=note, dry_run=dry_run)
    if done.files and not dry_run:
        _FITTED.clear()
    return done


def guard_for(config: Config) -> Guard:
    """An unfitted guard with the config's columns, task and detection settings."""
    return Guard(**_guard_args(config))


def _guard_args(config: Config) -> dict[str, Any]:
    return {
        "label": config.label,
        "features": list(config.features) or None,
        "id_column": config.id_column,
        "settings": config.detection,
        "columns": config.columns,
        "task": config.task,
        "max_categories": config.max_categories,
    }


#: Rows held before the detectors ran: never scored, so never part of a source's window.
UNSCORED_STAGES = ("expectations", "blocklist")


def source_window(config: Config, store: Store, name: str, guard: Guard) -> pd.DataFrame:
    """The rows the landing source of batch ``name`` sent before, which the backdoor scan
    sees with the batch (``detection.backdoor_window`` at most, newest first).

    Every row of the source's earlier batches that the detectors judged counts:
    accepted ones, held ones, and ones a reviewer rejected. A trigger split thinly
    over batches may be partly held; its held and rejected rows are still what the
    source sent, and leaving them out would let a trigger whose first rows were
    caught start from nothing again. Rows held before the detectors (expectations,
    blocklist) are left out: they were never scored. Empty when ``guard`` runs no
    detector that reads a window.
    """
    limit = config.detection.backdoor_window if guard.windowed_ else 0
    return store.source_rows(source_of(name), limit, skip_stages=UNSCORED_STAGES)


def window_findings(
    guard: Guard, data: pd.DataFrame, window: pd.DataFrame, name: str
) -> dict[str, Any] | None:
    """What the window showed: its size, and the accepted rows that now look like a trigger.

    Only the batch's own rows are decided on; window rows that the backdoor scan now
    flags (``Guard.window_suspects``) and that are in the training set are reported,
    for a re-scan or a reviewer to act on. None without a window.
    """
    if window.empty:
        return None
    return _window_report(window, guard.window_suspects(data, window, source=shown(name)), name)


def _window_report(window: pd.DataFrame, suspects: np.ndarray, name: str) -> dict[str, Any]:
    """``window_findings`` from the window rows flagged (positions in ``window``)."""
    source = source_of(name)
    flagged = window.iloc[suspects]
    accepted = flagged[flagged["pg_accepted"].to_numpy(dtype=bool)]
    by_batch = {
        str(b): sorted(int(r) for r in rows)
        for b, rows in accepted.groupby("pg_batch", sort=True)["pg_row"]
    }
    message = None
    if by_batch:
        listed = ", ".join(f"{b} ({len(r)})" for b, r in by_batch.items())
        message = (
            f"{len(accepted)} row{'s' * (len(accepted) != 1)} accepted earlier from source "
            f"{shown(source)!r} now look like a trigger: batches {listed}"
        )
    return {
        "source": source,
        "rows": len(window),
        "batches": int(window["pg_batch"].nunique()),
        "flagged": len(flagged),
        "accepted_flagged": by_batch,
        "message": message,
    }


def flow_findings(
    guard: Guard, window: pd.DataFrame, after: SourceState, config: Config
) -> dict[str, Any] | None:
    """When a source (``after``) is in alarm on a label flow, the rows it sent before
    (``window``), still in the training set, that follow the flow (``Guard.flow_rows``):
    what a re-scan takes out for review. None when there is no such alarm or no such row.

    The flow is ``SourceState.followed_flow``'s. Each batch the alarm lasts looks again,
    so the rows of the batch that raised it are taken with the next one.
    """
    followed = after.followed_flow(config.sources)
    if window.empty or followed is None:
        return None
    flow, pooled = followed
    found = window.iloc[guard.flow_rows(window, flow, source=shown(after.source))]
    accepted = found[found["pg_accepted"].to_numpy(dtype=bool)]
    if accepted.empty:
        return None
    by_batch = {
        str(b): sorted(int(r) for r in rows)
        for b, rows in accepted.groupby("pg_batch", sort=True)["pg_row"]
    }
    source, (moved_from, moved_to) = after.source, flow
    whose = "every source's evidence pooled" if pooled else "it"
    listed = ", ".join(f"{b} ({len(r)})" for b, r in by_batch.items())
    return {
        "flow": [moved_from, moved_to],
        "accepted_flagged": by_batch,
        "message": (
            f"{len(accepted)} row{'s' * (len(accepted) != 1)} accepted earlier from source "
            f"{shown(source)!r} follow the label flow {whose} alarmed on (labelled {moved_to!r}, "
            f"given to {moved_from!r} by the trusted rows' model at odds >= "
            f"{FLOW_ROW_ODDS:g}): batches {listed}"
        ),
    }


def swept_findings(
    guard: Guard,
    store: Store,
    replay: SourceReplay,
    after: SourceState,
    batch_id: str,
    config: Config,
) -> list[dict[str, Any]] | None:
    """The rows that follow the pooled flow, still in the training set, of every source
    but the batch's own (``after``) that ``batch_id`` swept into a pooled alarm
    (``flow_findings`` over each one's window): what they take back at once. None when it
    swept none or they hold none.

    A source swept in is otherwise looked at when it next sends a batch; one that has sent
    its share of a spread attack and sends nothing more would keep it.
    """
    if not replay.state(POOLED).alarmed:
        return None
    limit = config.detection.backdoor_window if guard.windowed_ else 0
    found = []
    for name, state in replay.states().items():
        if name in (POOLED, after.source) or state.alarmed_at != batch_id:
            continue
        if not state.pooled_alarm or state.pooled_flow is None:
            continue
        window = store.source_rows(name, limit, skip_stages=UNSCORED_STAGES)
        flow = flow_findings(guard, window, state, config)
        if flow is not None:
            found.append(flow)
    return found or None


def alarm_takeback(
    store: Store, after: SourceState, batch_id: str, config: Config
) -> dict[str, Any] | None:
    """When ``batch_id`` raises its source's alarm on the source's own evidence, the
    source's earlier batches whose rows leave the training set for review: every batch
    since its last clean checkpoint (the later of its last cleared alarm and its newest
    batch in the pinned reference). None when the batch raises no such alarm or there is
    no such batch.

    The alarm is a statement about what the source sent since it was last cleared, not
    only about what it sends next: the batches whose evidence raised it are no more
    verified than the ones held after it (fail closed). An alarm a source is swept into
    by the pooled test takes back only the rows that follow its flow (``flow_findings``).
    """
    if not after.alarmed or after.alarmed_at != batch_id or after.pooled_alarm:
        return None
    since: list[str] = []
    for ev in store.source_events():
        if ev.source != after.source:
            continue
        if ev.cleared:
            since.clear()
        elif ev.batch_id is not None and ev.batch_id != batch_id:
            since.append(ev.batch_id)
    current = store.reference()
    pinned = set() if current is None else set(current.batch_ids)
    newest = max((i for i, b in enumerate(since) if b in pinned), default=-1)
    taken = [b for b in since[newest + 1 :] if b not in pinned]
    if not taken:
        return None
    return {
        "batches": taken,
        "message": (
            f"source {shown(after.source)!r} alarmed at batch {batch_id}: the "
            f"{len(taken)} batch{'es' * (len(taken) != 1)} it sent before, since its last "
            f"clean checkpoint, leave the training set for review "
            f"({after.describe(config.sources)})"
        ),
    }


def _taken_back(
    earlier: dict[str, Any] | None,
    guard: Guard | None,
    window: pd.DataFrame | None,
    store: Store,
    replay: SourceReplay,
    after: SourceState,
    batch_id: str,
    config: Config,
) -> dict[str, Any] | None:
    """The window's findings (``earlier``) with what the sources' states after the batch
    take back from the training set: the rows that follow the source's label flow
    (``flow``), those of the sources a pooled alarm swept in (``swept``), and the batches
    an alarm takes back (``alarm``); ``_takeback`` holds them at commit."""
    found: dict[str, Any] = {}
    if guard is not None and window is not None:
        found["flow"] = flow_findings(guard, window, after, config)
        found["swept"] = swept_findings(guard, store, replay, after, batch_id, config)
    found["alarm"] = alarm_takeback(store, after, batch_id, config)
    found = {key: value for key, value in found.items() if value is not None}
    return {**(earlier or {}), **found} if found else earlier


def detect_batch(
    staged: str | Path, config: Config, store: Store, guard: Guard | None = None
) -> Path:
    """Score a staged batch's rows and make the batch's one decision; write it beside them.

    The rows are judged against the store's current reference version, which the
    decision records (``guard``, when given, must have been fitted on it).
    """
    folder = Path(staged)
    meta = Staged.load(folder)
    if meta.chunked:
        return _detect_chunks(meta, config, store, guard)
    rows = meta.rows()
    prior = meta.prior()
    stages = prior["pg_stage"].to_numpy(dtype=object)
    held_rows = prior["pg_row"].to_numpy(dtype=np.int64)
    reasons = prior["pg_reason"].to_numpy(dtype=object)
    failed: dict[int, str] = {}
    blocked: dict[int, str] = {}
    for row, stage, why in zip(held_rows.tolist(), stages, reasons, strict=True):
        into = failed if stage == "expectations" else blocked
        into[row] = f"{into[row]}; {why}" if row in into else str(why)
    passed = np.setdiff1d(np.arange(len(rows)), held_rows)  # what the expectations let through
    current = store.reference()
    source = source_of(meta.source)
    replay = store.source_replay(config.sources)  # the hold below, the report's line after
    drifted = size_drift(replay.sizes(source), len(rows))  # before the batch joins it
    rejected = store.rejected_rows() if passed.size else pd.DataFrame()
    if not rejected.empty:
        guard = guard or fit_guard(config, store, current)
        data = rows.iloc[passed][data_columns(rows)].reset_index(drop=True)
        for at, why in held_by_blocklist(data, rejected, guard).items():
            blocked[int(passed[at])] = why
    purged = store.purged_blocklist() if passed.size else {}
    if purged:
        hashes = rows["pg_row_hash"].to_numpy(dtype=object)[passed]
        for at, why in held_as_purged(hashes, purged).items():
            blocked.setdefault(int(passed[at]), why)
    scored = np.setdiff1d(passed, np.fromiter(blocked, np.int64, len(blocked)))
    evidence: Evidence | None = None
    reference: ReferenceVersion | None = None  # the version that judged the batch, if any did
    earlier: dict[str, Any] | None = None  # what the backdoor scan's window showed
    window: pd.DataFrame | None = None
    if scored.size:
        reference = current
        guard = guard or fit_guard(config, store, reference)
        data = rows.iloc[scored][data_columns(rows)].reset_index(drop=True)
        window = source_window(config, store, meta.source, guard)
        table, scores, found = guard.judge(data, source=shown(meta.source), window=window)
        earlier = window_findings(guard, data, window, meta.source)
        drift = batch_drift(guard.reference_, table)
        hold = batch_hold_reason(
            drift,
            hold_label_shift=config.detection.hold_label_shift,
            hold_feature_drift=config.detection.hold_feature_drift,
        )
        flows = FlowCounts(guard.label_flows_)
        flows.add(guard.flow_log_e(table))
        counts = batch_counts(
            found.tally, guard.clean_rates_, near_copies=len(blocked), flows=flows.pairs()
        )
        after = _after(replay, source, meta, counts)
        decision = decide_batch(
            len(rows),
            failed=failed,
            blocked=blocked,
            scored=scored,
            detectors=found,
            scores=scores,
            batch_hold=_joined(hold, _source_hold(after, config)),
        )
        evidence = batch_evidence(guard.reference_, table, guard.calibrations_, decision, drift)
    else:
        counts = batch_counts(RowTally(), np.zeros(len(THRESHOLDS)), near_copies=len(blocked))
        after = _after(replay, source, meta, counts)
        decision = decide_batch(len(rows), failed=failed, blocked=blocked)
    told = _joined(after.describe(config.sources), drifted)
    earlier = _taken_back(earlier, guard, window, store, replay, after, meta.batch_id, config)
    decided = _write_decision(
        folder, rows, decision, config, reference, counts, drifted, earlier, told
    )
    # A re-run that scores nothing keeps no evidence of an earlier run.
    write_evidence(folder, None if evidence is None else dumps(evidence))
    crash_point("after-detect")
    return decided


def _prior_holds(meta: Staged) -> tuple[dict[int, str], dict[int, str]]:
    """Rows held before scoring (``prior.parquet``): by the expectations, by the blocklist."""
    prior = meta.prior()
    failed: dict[int, str] = {}
    blocked: dict[int, str] = {}
    for row, stage, why in zip(
        prior["pg_row"].to_numpy(dtype=np.int64).tolist(),
        prior["pg_stage"].to_numpy(dtype=object),
        prior["pg_reason"].to_numpy(dtype=object),
        strict=True,
    ):
        into = failed if stage == "expectations" else blocked
        into[row] = f"{into[row]}; {why}" if row in into else str(why)
    return failed, blocked


def _positions(held: Mapping[int, str]) -> np.ndarray:
    return np.sort(np.fromiter(held, np.int64, len(held)))


def _detect_chunks(meta: Staged, config: Config, store: Store, guard: Guard | None) -> Path:
    """``detect_batch`` for a batch staged a chunk at a time, in memory set by the chunk.

    The same decision as on the batch whole: the blocklist chunk by chunk, the
    detectors by ``Guard.judge_chunks`` over the rows the expectations and the
    blocklist let through (its per-row arrays memory-mapped in the staging folder),
    the batch's drift counted on its scoring read (``DriftCounts``), then the
    decision table written a row group per staged row group. The report's figures are
    counted on the scoring read (``EvidenceCounts``), here or on the cluster's workers.
    """
    folder = meta.folder
    n_rows = meta.rows_in
    failed, blocked = _prior_holds(meta)
    current = store.reference()
    source = source_of(meta.source)
    replay = store.source_replay(config.sources)
    drifted = size_drift(replay.sizes(source), n_rows)  # before the batch joins it
    columns = [c for c in meta.columns() if not c.startswith(RESERVED_PREFIX)]
    unscored = _positions(failed)
    rejected = store.rejected_rows() if unscored.size < n_rows else pd.DataFrame()
    if not rejected.empty:
        guard = guard or fit_guard(config, store, current)
        for frame, start in _with_starts(meta.row_chunks(columns)):
            keep = _kept(start, len(frame), unscored)
            data = frame.iloc[keep].reset_index(drop=True)
            for at, why in held_by_blocklist(data, rejected, guard).items():
                blocked[int(start + keep[at])] = why
    purged = store.purged_blocklist() if unscored.size < n_rows else {}
    if purged:
        for frame, start in _with_starts(meta.row_chunks(["pg_row_hash"])):
            keep = _kept(start, len(frame), unscored)
            hashes = frame["pg_row_hash"].to_numpy(dtype=object)[keep]
            for at, why in held_as_purged(hashes, purged).items():
                blocked.setdefault(int(start + keep[at]), why)
    unscored = np.union1d(unscored, _positions(blocked))
    found: ChunkedDecision | None = None
    reference: ReferenceVersion | None = None
    earlier: dict[str, Any] | None = None
    window: pd.DataFrame | None = None
    batch_hold: str | None = None
    evidence: Evidence | None = None
    if unscored.size < n_rows:
        reference = current
        guard = guard or fit_guard(config, store, reference)
        window = source_window(config, store, meta.source, guard)

        def chunks() -> Iterator[pd.DataFrame]:
            for frame, start in _with_starts(meta.row_chunks(columns)):
                yield frame.iloc[_kept(start, len(frame), unscored)].reset_index(drop=True)

        drift = DriftCounts(guard.reference_)
        figures = EvidenceCounts(guard.reference_, folder)
        flows = FlowCounts(guard.label_flows_)
        if config.execution.engine == "dask":
            with connect(config.execution) as client:
                found = judge_on_cluster(
                    client,
                    guard,
                    _parts(meta, unscored),
                    columns,
                    shown(meta.source),
                    window,
                    directory=folder,
                    drift=drift,
                    figures=figures,
                    flows=flows,
                    worker_wait=config.execution.worker_wait,
                )
        else:

            def each(table: Table, scores: Mapping[str, np.ndarray]) -> None:
                drift.add(table)
                figures.add(table, scores)
                flows.add(guard.flow_log_e(table))

            found = guard.judge_chunks(
                chunks, source=shown(meta.source), window=window, directory=folder, each=each
            )
        if not window.empty:
            earlier = _window_report(window, found.window_flagged, meta.source)
        shift = drift.report()
        hold = batch_hold_reason(
            shift,
            hold_label_shift=config.detection.hold_label_shift,
            hold_feature_drift=config.detection.hold_feature_drift,
        )
        counts = batch_counts(
            found.tally, guard.clean_rates_, near_copies=len(blocked), flows=flows.pairs()
        )
        after = _after(replay, source, meta, counts)
        batch_hold = _joined(hold, _source_hold(after, config))
        # Held as the whole path's figures draw them: every scored row under a batch hold.
        held = np.full(found.n_rows, batch_hold is not None)
        held[found.held] = True
        evidence = figures.evidence(held, guard.calibrations_, found.detectors, found.p_cuts, shift)
    else:
        counts = batch_counts(RowTally(), np.zeros(len(THRESHOLDS)), near_copies=len(blocked))
        after = _after(replay, source, meta, counts)
    held_by = _write_decision_chunks(meta, found, failed, blocked, unscored, batch_hold, config)
    told = _joined(after.describe(config.sources), drifted)
    earlier = _taken_back(earlier, guard, window, store, replay, after, meta.batch_id, config)
    decided = write_decision_meta(
        folder,
        {
            "held_by": held_by,
            "batch_hold": batch_hold,
            "fdr": config.detection.fdr,
            "threshold_p": None if found is None else found.threshold,
            "reference": None
            if reference is None
            else {
                "version": reference.version,
                "digest": reference.digest,
                "rows": reference.rows,
            },
            "source_evidence": counts.as_dict(),
            "source_drift": drifted,
            "source_state": told,
            "window": earlier,
        },
    )
    write_evidence(folder, None if evidence is None else dumps(evidence))
    crash_point("after-detect")
    return decided


def _parts(meta: Staged, unscored: np.ndarray) -> list[Part]:
    """The staged batch's row groups as parts a cluster's worker reads by path, each with
    the rows of it that are judged (not in ``unscored``)."""
    parts = []
    start = judged = 0
    for group, n in enumerate(row_group_sizes(meta.rows_file)):
        keep = _kept(start, n, unscored)
        parts.append(Part(str(meta.rows_file), group, n, keep, judged))
        start += n
        judged += keep.size
    return parts


def _with_starts(frames: Iterable[pd.DataFrame]) -> Iterator[tuple[pd.DataFrame, int]]:
    """Each frame with the batch position of its first row."""
    start = 0
    for frame in frames:
        yield frame, start
        start += len(frame)


def _kept(start: int, n: int, held: np.ndarray) -> np.ndarray:
    """Positions in a chunk of ``n`` rows from ``start`` that are not in ``held`` (sorted)."""
    lo, hi = np.searchsorted(held, [start, start + n])
    return np.setdiff1d(np.arange(n), held[lo:hi] - start, assume_unique=True)


def _within(held: dict[int, str], start: int, n: int) -> dict[int, str]:
    """The holds of the chunk of ``n`` rows from ``start``, by position in the chunk."""
    return {r - start: why for r, why in held.items() if start <= r < start + n}


def _write_decision_chunks(
    meta: Staged,
    found: ChunkedDecision | None,
    failed: dict[int, str],
    blocked: dict[int, str],
    unscored: np.ndarray,
    batch_hold: str | None,
    config: Config,
) -> dict[str, int]:
    """Write the decision table a row group per staged row group; the rows held per stage.

    Each chunk's rows go through ``decide_batch`` with the chunk's share of the holds and
    of the detectors' decision, so that a row's stage and reasons are decided by the one
    rule. A row's detector scores are kept for the rows the detectors held (the others'
    are not kept by ``judge_chunks``; their suspicion is).
    """
    masker = Masker(config.pii)
    names = () if found is None else found.detectors
    held_by = dict.fromkeys(STAGES, 0)
    done = 0  # scored rows before this chunk
    with decision_writer(meta.folder) as writer:
        for rows, start in _with_starts(meta.row_chunks()):
            n = len(rows)
            scored = _kept(start, n, unscored)
            detectors: Decision | None = None
            scores: dict[str, np.ndarray] = {}
            if found is not None:
                order = np.arange(done, done + scored.size)
                lo, hi = np.searchsorted(found.held, [done, done + scored.size])
                mine = found.held[lo:hi] - done
                quarantined = np.zeros(scored.size, dtype=bool)
                quarantined[mine] = True
                reasons = np.full(scored.size, "", dtype=object)
                reasons[mine] = found.reasons[lo:hi]
                for name in names:
                    scores[name] = np.full(scored.size, np.nan)
                    scores[name][mine] = found.scores[name][lo:hi]
                log_p = np.asarray(found.log_combined[order])
                detectors = Decision(
                    quarantined=quarantined,
                    p_values=np.zeros((scored.size, 0)),
                    combined=np.maximum(np.exp(log_p), P_FLOOR),
                    suspicion=-log_p / np.log(10.0),
                    reasons=tuple(reasons.tolist()),
                    detectors=names,
                    threshold=found.threshold,
                    p_cuts=found.p_cuts,
                )
                done += scored.size
            decision = decide_batch(
                n,
                failed=_within(failed, start, n),
                blocked=_within(blocked, start, n),
                scored=scored if found is not None else None,
                detectors=detectors,
                scores=scores,
                batch_hold=batch_hold if found is not None else None,
            )
            table = pd.DataFrame(
                {
                    "pg_row": rows["pg_row"].to_numpy(),
                    "pg_stage": decision.stage,
                    "pg_reason": masker.reasons(rows, decision.reason),
                    "pg_suspicion": decision.suspicion,
                }
            )
            for name, s in decision.scores.items():
                table[f"pg_score_{name}"] = s
            writer.write(table)
            for stage, count in decision.held_by().items():
                held_by[stage] += count
    return held_by


def _staged_evidence(meta: Staged) -> Evidence | None:
    """The report figures the detect step kept beside the staged batch, if it kept some."""
    kept = read_evidence(meta.folder)
    return None if kept is None else loads(Evidence, kept[0], source=kept[1])


def _commit_chunks(meta: Staged, config: Config, store: Store) -> BatchRecord:
    """``commit_batch`` for a batch staged a chunk at a time: the clean and quarantine files
    streamed a row group at a time (``Store.commit_chunks``), the ledger row last."""
    decided = read_decision_meta(meta.folder)
    n_held = sum(decided["held_by"].values())
    parts, _ = partition_chunks(meta.folder)
    top: pd.DataFrame | None = None
    for _, held in parts:  # the held rows the report shows, before the ledger commits
        if held.num_rows:
            frame = held.to_pandas()
            top = frame if top is None else pd.concat([top, frame], ignore_index=True)
            top = top.sort_values("pg_suspicion", ascending=False, na_position="first").head(
                TOP_ROWS
            )
    outcome = _committed(meta, decided, None, top)
    counted = (meta.rows_in - n_held, n_held)
    _write_commit_report(
        store, outcome, meta, decided, config, evidence=_staged_evidence(meta), counted=counted
    )
    parts, schemas = partition_chunks(meta.folder)
    return store.commit_chunks(outcome, parts, schemas, takeback=_takeback_of(store, decided, meta))


def _after(replay: SourceReplay, source: str, meta: Staged, counts: BatchCounts) -> SourceState:
    """The batch's source as it stands with the batch's own evidence counted: the state
    that decides whether the batch is held whole and that its report shows. A batch whose
    evidence raises the alarm is held with the batches after it; it is no less suspect
    than they are. The batch is added to ``replay``, the caller's own copy
    (``Store.source_replay``)."""
    this = Event(source, meta.batch_id, meta.rows_in, counts)
    return replay.add([this]).state(source)


def _source_hold(state: SourceState | None, config: Config) -> str | None:
    """Why a batch is held whole: its source is in alarm."""
    if state is None or not state.alarmed:
        return None
    return (
        f"{SOURCE_ALARM}, batch held for review: {state.describe(config.sources)}; "
        f"after review, `poisonguard source clear {state.source}`"
    )


def _joined(*reasons: str | None) -> str | None:
    return "; ".join(r for r in reasons if r) or None


def _write_decision(
    folder: Path,
    rows: pd.DataFrame,
    decision: BatchDecision,
    config: Config,
    reference: ReferenceVersion | None,
    counts: BatchCounts,
    drift_note: str | None,
    window: dict[str, Any] | None,
    source_state: str | None,
) -> Path:
    table = pd.DataFrame(
        {
            "pg_row": rows["pg_row"].to_numpy(),
            "pg_stage": decision.stage,
            # Reasons are shown to people (reports, review, artifacts): personal values masked.
            "pg_reason": Masker(config.pii).reasons(rows, decision.reason),
            "pg_suspicion": decision.suspicion,
        }
    )
    for name, s in decision.scores.items():
        table[f"pg_score_{name}"] = s
    found = decision.detectors
    meta = {
        "held_by": decision.held_by(),
        "batch_hold": decision.batch_hold,
        "fdr": config.detection.fdr,
        "threshold_p": None if found is None else found.threshold,
        "reference": None
        if reference is None
        else {"version": reference.version, "digest": reference.digest, "rows": reference.rows},
        "source_evidence": counts.as_dict(),
        "source_drift": drift_note,
        "source_state": source_state,
        "window": window,
    }
    return write_decision(folder, table, meta)


def commit_batch(staged: str | Path, config: Config, store: Store) -> BatchRecord:
    """Partition a staged, decided batch into clean and quarantined rows and commit it."""
    meta = Staged.load(staged)
    if meta.chunked:
        return _commit_chunks(meta, config, store)
    rows = meta.rows()
    decision, decided = read_decision(meta.folder)
    if not np.array_equal(decision["pg_row"].to_numpy(), rows["pg_row"].to_numpy()):
        raise StoreError(f"batch {meta.batch_id}: the decision does not match the staged rows")
    held = decision["pg_stage"].to_numpy(dtype=object) != ""
    clean = rows[~held].reset_index(drop=True)
    quarantine = rows[held].reset_index(drop=True)
    for col in decision.columns:
        if col != "pg_row":
            quarantine[col] = decision.loc[held, col].to_numpy()
    outcome = _committed(meta, decided, clean, quarantine)
    _write_commit_report(store, outcome, meta, decided, config, evidence=_staged_evidence(meta))
    # The commit also clears the staging folder.
    return store.commit(outcome, takeback=_takeback_of(store, decided, meta))


def _committed(
    meta: Staged,
    decided: dict[str, Any],
    clean: pd.DataFrame | None,
    quarantine: pd.DataFrame | None,
) -> Outcome:
    """A staged, decided batch's outcome, as its commit records it."""
    judged = decided.get("reference")
    return Outcome(
        batch_id=meta.batch_id,
        sha256=meta.sha256,
        source=meta.source,
        status="committed",
        rows_in=meta.rows_in,
        clean=clean,
        quarantine=quarantine,
        started_at=meta.started_at,
        detail=_commit_detail(meta, decided),
        landed=meta.landed,
        reference_version=None if judged is None else int(judged["version"]),
    )


def _commit_detail(meta: Staged, decided: dict[str, Any]) -> dict[str, Any]:
    """What a commit's audit entry records of the batch's decision."""
    return {
        "quarantined_by": decided["held_by"],
        "batch_hold": decided["batch_hold"],
        "failed_expectations": [
            e["type"] + ":" + str(e["column"]) for e in meta.failed_expectations
        ],
        "source_evidence": decided["source_evidence"],
        "source_drift": decided["source_drift"],
        **({"window": decided["window"]} if decided.get("window") else {}),
    }


def _write_commit_report(
    store: Store,
    outcome: Outcome,
    meta: Staged,
    decided: dict[str, Any],
    config: Config,
    *,
    evidence: Evidence | None = None,
    counted: tuple[int, int] | None = None,
) -> None:
    """A committed batch's report, from its decision (before its ledger commit)."""
    judged = None if decided.get("reference") is None else ReferenceUsed(**decided["reference"])
    write_batch_report(
        store,
        outcome,
        failed_expectations=meta.failed_expectations,
        evidence=evidence,
        held_by=decided["held_by"],
        batch_hold=decided["batch_hold"],
        fdr=None if decided["threshold_p"] is None else decided["fdr"],
        threshold_p=decided["threshold_p"],
        reference=judged,
        source_state=decided["source_state"],
        masker=Masker(config.pii),
        counted=counted,
    )


def _takeback_of(store: Store, decided: dict[str, Any], meta: Staged) -> TakeBack:
    """``_takeback`` of a decided batch, as ``Store.commit`` asks for it."""
    return lambda: _takeback(store, decided.get("window"), meta.batch_id)


def _takeback(
    store: Store, window: dict[str, Any] | None, batch_id: str
) -> tuple[pd.DataFrame, str]:
    """The rows accepted earlier that batch ``batch_id`` takes out of the training set, into
    quarantine for review (stage ``rescan``; fail closed), and why: those the backdoor
    scan's window now flags, those that follow the label flow their source alarmed on, and
    the batches an alarm takes back (``alarm_takeback``). ``Store.commit`` asks for them under
    its write lock and holds them in the batch's own ledger transaction.

    Rows in the pinned reference stay (a reviewer promoted them; ``review revoke`` takes a
    batch out).
    """
    window = window or {}
    current = store.reference()
    pinned = set() if current is None else set(current.batch_ids)
    pinned_files = set() if current is None else {f.path for f in current.files}
    held: dict[tuple[str, int], str] = {}
    scans: list[tuple[dict[str, Any], str]] = [
        (found, "label flows") for found in [window.get("flow") or {}, *window.get("swept", ())]
    ]
    for found, scan in [*scans, (window, "backdoor scan")]:
        for b, listed in (found.get("accepted_flagged") or {}).items():
            if b in pinned:
                continue
            for r in listed:
                held[(b, int(r))] = (
                    f"the {scan} of batch {batch_id}, with this row in its source's window: "
                    f"{found['message']}"
                )
    takeback = window.get("alarm") or {}
    whole = set(takeback.get("batches") or ()) - pinned
    # The window lists rows as they arrived: one a re-scan took out since is no longer
    # training data, and asking to hold it again would refuse the whole hold.
    wanted = whole | {b for b, _ in held}
    live = {
        (str(b), int(r)): f.batch_id in whole
        for f in store.files("clean")
        if f.batch_id in wanted and f.path not in pinned_files
        for b, r in store.read(f, ["pg_batch", "pg_row"]).itertuples(index=False)
    }
    held = {key: why for key, why in held.items() if key in live}
    for key, taken in live.items():
        if taken:
            held.setdefault(key, f"batch {batch_id}: {takeback['message']}")
    flagged = pd.DataFrame(
        [(b, r, why) for (b, r), why in held.items()], columns=["pg_batch", "pg_row", "pg_reason"]
    )
    return flagged, "; ".join(sorted(set(held.values())))


def report_paths(store: Store, batch_id: str) -> tuple[Path, Path]:
    """Where a batch's HTML and JSON reports live."""
    return store.report_paths(batch_id)


def write_batch_report(
    store: Store,
    outcome: Outcome,
    *,
    failed_expectations: list[dict] | None = None,
    evidence: Evidence | None = None,
    held_by: dict[str, int] | None = None,
    batch_hold: str | None = None,
    fdr: float | None = None,
    threshold_p: float | None = None,
    reference: ReferenceUsed | None = None,
    source_state: str | None = None,
    masker: Masker,
    counted: tuple[int, int] | None = None,
) -> tuple[Path, Path]:
    """Write a batch's HTML and JSON reports (before its ledger commit: a re-run rewrites them).

    The counts are the outcome's, which the ledger records; ``held_by``, ``batch_hold``,
    ``fdr``, ``threshold_p`` and ``reference`` (the reference version that judged the
    rows) are the batch decision's (``decision.json``). The held rows the report shows
    have their personal columns masked (``masker``, the config's ``pii``).
    """
    from poisonguard.report import write_report

    report = build_report(
        batch_id=outcome.batch_id,
        source=outcome.source,
        sha256=outcome.sha256,
        status=outcome.status,
        created_at=now(),
        rows_in=outcome.rows_in,
        clean=outcome.clean,
        quarantine=masker.frame(outcome.quarantine),
        rejected=outcome.rows_rejected,
        reason=outcome.reason,
        held_by=held_by,
        batch_hold=batch_hold,
        fdr=fdr,
        threshold_p=threshold_p,
        failed_expectations=failed_expectations or [],
        evidence=evidence,
        reference=reference,
        source_state=source_state,
        counted=counted,
    )
    json_path, html_path = write_report(report, store.reports_dir)
    return html_path, json_path


def process_batch(entry: Entry | str | Path, config: Config, store: Store) -> Intake:
    """All steps for one landed file, in-process."""
    entry = entry if isinstance(entry, Entry) else entry_for(entry)
    intake = validate_batch(entry, config, store)
    if intake.staged is None:
        return intake
    detect_batch(intake.staged, config, store)
    return Intake(record=commit_batch(intake.staged, config, store))


Progress = Callable[[int, int, str], None]


def process_landing(
    config: Config, store: Store | None = None, progress: Progress | None = None
) -> Run:
    """Process every new batch in the landing folder once, in name order, without Prefect.

    ``progress(done, total, name)`` is called before each batch and once at the end.
    With ``[execution] engine = "dask"`` and no address, the run's batches share one
    local cluster, started when there is a batch to take.
    """
    store = store or open_store(config)
    run = Run()
    with store.exclusive():
        entries, run.notices = find_new_batches(config, store)
        with local_cluster(config) if entries else contextlib.nullcontext(config) as config:
            for i, entry in enumerate(entries):
                if progress:
                    progress(i, len(entries), entry.name)
                intake = process_batch(entry, config, store)
                if intake.record is not None:
                    run.records.append(intake.record)
                if intake.notice is not None:
                    run.notices.append(intake.notice)
        if progress:
            progress(len(entries), len(entries), "done")
        run.purge = purge_after_run(config, store)
    return run


def purge_after_run(config: Config, store: Store) -> dict[str, Any] | None:
    """The end of every run: purge what ``[retention]`` says is due, when ``auto`` (the
    default once an age is set); None when it purges nothing automatically.

    A purge that fails does not fail the run: the batches are committed already. The
    failure is logged in one line and returned (``{"error": ...}``); the next run, or
    ``poisonguard purge``, tries again.

    Returns
    -------
    dict or None
        ``{"batches", "rows", "files"}`` purged, or ``{"error": message}``.
    """
    settings = config.retention
    if not (settings.enabled and settings.auto):
        return None
    try:
        done = store.purge(settings, actor="poisonguard")
    except Exception as exc:  # whatever it is, the committed batches stand
        message = f"retention purge failed, the run's batches are committed: {exc}"
        _log.warning("poisonguard: %s", message)
        return {"error": message}
    return {
        "batches": [d.batch_id for d in done.purged],
        "rows": done.rows,
        "files": len(done.files),
    }


def seed_sha256(sample: pd.DataFrame) -> str:
    """The content hash a trusted sample is seeded under."""
    import hashlib

    return hashlib.sha256(parquet_bytes(sample)).hexdigest()


def check_seed(sample: pd.DataFrame, source: str, store: Store) -> BatchRecord | None:
    """The store's seed if it is this sample; None for a store with no seed yet.

    Raises
    ------
    ConfigError
        When the store was seeded with another sample: a store has one seed, so
        that two training sets never mix.
    """
    sha = seed_sha256(sample)
    seeds = [b for b in store.batches() if b.status == "seed"]
    same = [b for b in seeds if b.sha256 == sha]
    if same:
        return same[0]
    if seeds:
        raise ConfigError(
            f"{shown(source)}: the store {store.root} already holds a training set seeded from "
            f"{shown(seeds[0].source)} ({seeds[0].rows_in} rows, batch {seeds[0].batch_id}); "
            "a store has one seed: give the new sample its own store (dataset.store, or "
            "another --dir), or remove the old store and its key"
        )
    return None


def seed_store(sample: pd.DataFrame, source: str, config: Config, store: Store) -> BatchRecord:
    """Make a trusted sample the first clean batch of a store (status ``seed``).

    Seeding again with the same sample changes nothing; with another sample it
    is an error (see ``check_seed``).
    """
    if config.label is not None and config.label not in sample.columns:
        raise ConfigError(f"{source}: the label column {config.label!r} is not in the sample")
    existing = check_seed(sample, source, store)
    if existing is not None:
        return existing
    sha = seed_sha256(sample)
    frame = sample.reset_index(drop=True).copy()
    batch_id = f"seed-{sha[:12]}"
    add_provenance(frame, batch_id, store.row_hashes(frame))
    return store.commit(
        Outcome(
            batch_id=batch_id,
            sha256=sha,
            source=source,
            status="seed",
            rows_in=len(frame),
            clean=frame,
            quarantine=None,
        )
    )


# --------------------------------------------------------------------------- re-scan


@dataclass(frozen=True)
class RescanScope:
    """One source's part of a re-scan.

    Attributes
    ----------
    source : str
        The landing source (``landing.source_of``).
    checkpoint : str or None
        The batch after which accepted rows were re-scored: the source's newest
        batch in the current reference, or the one given; None for every batch.
    batches : tuple of str
        The batches whose accepted rows were re-scored, oldest first (those with
        clean rows outside the reference).
    rows : int
        How many rows were re-scored.
    """

    source: str
    checkpoint: str | None
    batches: tuple[str, ...]
    rows: int


@dataclass(frozen=True)
class RescanReport:
    """Rows in the training set that the pinned reference would now hold (``rescan``).

    Attributes
    ----------
    reference_version : int
        The reference version the rows were judged against.
    scopes : tuple of RescanScope
        One per source re-scanned.
    scanned : dict of str to int
        Rows re-scored per batch, every re-scanned batch named.
    batch_id : ndarray of shape (n_flagged,), object
    pg_row : ndarray of shape (n_flagged,), int64
    stage : ndarray of shape (n_flagged,), object
        ``blocklist`` (a near-copy of a rejected or revoked row) or ``detectors``.
    reason : ndarray of shape (n_flagged,), object
        Every reason, prefixed with the reference version.
    suspicion : ndarray of shape (n_flagged,)
        ``-log10`` of the combined p-value (NaN for rows the blocklist held unscored).
    scores : dict of str to ndarray of shape (n_flagged,)
        Each detector's raw score.
    """

    reference_version: int
    scopes: tuple[RescanScope, ...]
    scanned: dict[str, int]
    batch_id: np.ndarray
    pg_row: np.ndarray
    stage: np.ndarray
    reason: np.ndarray
    suspicion: np.ndarray
    scores: dict[str, np.ndarray]

    @property
    def held_per_batch(self) -> dict[str, int]:
        """Flagged rows per re-scanned batch (zeros included)."""
        found = pd.Series(self.batch_id, dtype=object).value_counts().to_dict()
        return {b: int(found.get(b, 0)) for b in self.scanned}

    def flagged(self) -> pd.DataFrame:
        """The flagged rows as ``Store.hold_rescanned`` takes them: ``pg_batch``, ``pg_row``,
        ``pg_reason``, ``pg_suspicion`` and ``pg_score_<detector>``."""
        frame = pd.DataFrame(
            {
                "pg_batch": self.batch_id,
                "pg_row": self.pg_row,
                "pg_reason": self.reason,
                "pg_suspicion": self.suspicion,
            }
        )
        for name, s in self.scores.items():
            frame[f"pg_score_{name}"] = s
        return frame


def rescan(
    config: Config,
    store: Store,
    *,
    source: str | None = None,
    since: str | None = None,
    rejecting: pd.DataFrame | None = None,
) -> RescanReport:
    """Re-score rows already in the training set against the pinned reference.

    Rows accepted while the reference was weaker (poison a reviewer released, or
    rows judged by a version that held a batch since revoked) are judged again,
    by the same decision as an arriving batch: near-copies of rejected and
    revoked rows (``held_by_blocklist``), then the detectors fitted on the
    current reference with Benjamini-Hochberg, the per-row level and the excess
    rule (``Guard.judge``, ``decide_batch``), over each source's rows pooled as
    one batch, so that poison spread thinly over its batches is judged
    together. Whole-batch drift holds are for arriving batches and are not
    applied here; neither are the expectations, which the rows passed.

    Which rows: per source, the clean rows (released ones included) of its
    committed batches after its last clean checkpoint, the newest of its batches
    in the current reference (or ``since``); every batch of the source when
    none is. Rows in the reference itself are not re-scored (they are the
    judge: revoke their batch instead). Nothing is changed:
    ``Store.hold_rescanned(report.flagged(), ...)`` moves the rows to quarantine.

    Parameters
    ----------
    config : Config
    store : Store
    source : str, optional
        One landing source (default every source with committed batches).
    since : str, optional
        A batch id: re-score the rows of its source's batches committed after it.
    rejecting : DataFrame, optional
        Rows about to be rejected (``review.reject``), counted among the rejected ones.

    Raises
    ------
    ReviewError
        For an unknown ``since`` batch or ``source``, or a ``since`` batch of
        another source than ``source``.
    StoreError
        When the store has no reference.
    """
    reference = store.reference()
    if reference is None:
        raise StoreError(
            f"the store {store.root} has no reference to re-scan against; "
            "seed it with `poisonguard init --sample TRUSTED`"
        )
    batches = store.batches()
    order = {b.batch_id: i for i, b in enumerate(batches)}
    accepted = [b for b in batches if b.status == "committed"]
    if since is not None:
        mark = store.batch(since)
        if mark is None:
            raise ReviewError(
                f"no batch {shown(since)!r} in {store.ledger.location}; "
                "`poisonguard status` lists the batches"
            )
        if source is not None and source != source_of(mark.source):
            raise ReviewError(
                f"batch {since} came from the source {shown(source_of(mark.source))!r}, "
                f"not {shown(source)!r}"
            )
        source = source_of(mark.source)
    sources = list(dict.fromkeys(source_of(b.source) for b in accepted))
    if source is not None:
        if source not in sources and since is None:
            raise ReviewError(
                f"no committed batch from the source {shown(source)!r}; "
                f"sources: {', '.join(map(shown, sources)) or 'none'}"
            )
        sources = [source]
    pinned = {f.path for f in reference.files}
    clean = [f for f in store.files("clean") if f.path not in pinned]
    unpinned = {f.batch_id for f in clean}
    guard: Guard | None = None
    rejected = store.rejected_rows()
    if rejecting is not None and len(rejecting):
        rejected = pd.concat([rejected, rejecting], ignore_index=True)
    scopes, scanned, parts = [], {}, []
    for src in sources:
        mine = [b for b in accepted if source_of(b.source) == src]
        checkpoint = since or next(
            (b.batch_id for b in reversed(mine) if b.batch_id in reference.batch_ids), None
        )
        after = [
            b.batch_id
            for b in mine
            if (checkpoint is None or order[b.batch_id] > order[checkpoint])
            and b.batch_id in unpinned
        ]
        frames = [store.read(f) for f in clean if f.batch_id in after]
        rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        counts = rows["pg_batch"].value_counts().to_dict() if len(rows) else {}
        scanned.update({b: int(counts.get(b, 0)) for b in after})
        scopes.append(RescanScope(src, checkpoint, tuple(after), len(rows)))
        if len(rows):
            guard = guard or fit_guard(config, store, reference)
            decision = _rescan_decision(rows, guard, rejected, f"re-scan of {shown(src)}")
            parts.append((rows, decision))
    return _rescan_report(reference.version, tuple(scopes), scanned, parts, Masker(config.pii))


def rescan_after_rejection(
    config: Config, store: Store, rejecting: pd.DataFrame, *, actor: str
) -> tuple[RescanReport, dict[str, int]]:
    """As a reviewer rejects rows of one batch (``rejecting``: as ``Store.rejected_rows()``
    lists rejected rows; ``review.reject`` passes them),
    re-score what its source sent since its last clean checkpoint (``rescan``, with those
    rows among the known-bad ones) and hold what the re-scan flags for review
    (``Store.hold_rescanned``, stage ``rescan``).

    A rejection says the source sent poison; rows it sent before, accepted one batch at a
    time, are judged again with that known. Call it *before* recording the rejection: a
    run killed between the two then leaves rows held and the rejection to make again
    (fail closed), never the rejection recorded and the re-scan lost. A row a reviewer
    released stays released unless it is a near-copy of a rejected row (the blocklist):
    the release overrode the detectors' judgement, not the rejection that came after it
    (``poisonguard rescan --hold`` re-opens released rows too). Returns the report and the
    rows held per batch (empty when nothing was held).
    """
    batch_id = str(rejecting["pg_batch"].iloc[0])
    batch = store.batch(batch_id)
    if batch is None:
        raise ReviewError(f"no batch {shown(batch_id)!r} in {store.ledger.location}")
    report = rescan(config, store, source=source_of(batch.source), rejecting=rejecting)
    reviews = store.reviews()
    released = set(
        zip(
            reviews.loc[reviews["action"] == "release", "batch_id"],
            reviews.loc[reviews["action"] == "release", "pg_row"].astype(int),
            strict=True,
        )
    )
    flagged = report.flagged()
    keep = [
        stage == "blocklist" or (str(b), int(r)) not in released
        for stage, b, r in zip(report.stage, flagged["pg_batch"], flagged["pg_row"], strict=True)
    ]
    flagged = flagged[np.asarray(keep, dtype=bool)]
    if flagged.empty:
        return report, {}
    held = store.hold_rescanned(
        flagged,
        actor=actor,
        note=(
            f"re-scan as rows of batch {batch_id} were rejected, against reference "
            f"version {report.reference_version}"
        ),
    )
    return report, held


def _rescan_decision(
    rows: pd.DataFrame, guard: Guard, rejected: pd.DataFrame, source: str
) -> BatchDecision:
    """The batch decision over pooled accepted rows: the blocklist, then the detectors."""
    data = rows[data_columns(rows)].reset_index(drop=True)
    blocked = held_by_blocklist(data, rejected, guard)
    scored = np.setdiff1d(np.arange(len(data)), np.fromiter(blocked, np.int64, len(blocked)))
    if not scored.size:
        return decide_batch(len(data), blocked=blocked)
    _, scores, found = guard.judge(data.iloc[scored].reset_index(drop=True), source=source)
    return decide_batch(len(data), blocked=blocked, scored=scored, detectors=found, scores=scores)


def _rescan_report(
    version: int,
    scopes: tuple[RescanScope, ...],
    scanned: dict[str, int],
    parts: list[tuple[pd.DataFrame, BatchDecision]],
    masker: Masker,
) -> RescanReport:
    names = list(dict.fromkeys(n for _, d in parts for n in d.scores))
    batch_id, pg_row, stage, reason, suspicion = [], [], [], [], []
    scores: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for rows, decision in parts:
        hit = decision.quarantined
        batch_id.append(rows["pg_batch"].to_numpy(dtype=object)[hit])
        pg_row.append(rows["pg_row"].to_numpy(dtype=np.int64)[hit])
        stage.append(decision.stage[hit])
        reason.append(
            np.array(
                [
                    f"re-scan against reference version {version}: {r}"
                    for r in masker.reasons(rows[hit], decision.reason[hit])
                ],
                dtype=object,
            )
        )
        suspicion.append(decision.suspicion[hit])
        for n in names:
            s = decision.scores.get(n)
            scores[n].append(np.full(int(hit.sum()), np.nan) if s is None else s[hit])

    def joined(arrays: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(arrays).astype(dtype) if arrays else np.empty(0, dtype=dtype)

    return RescanReport(
        reference_version=version,
        scopes=scopes,
        scanned=scanned,
        batch_id=joined(batch_id, object),
        pg_row=joined(pg_row, np.int64),
        stage=joined(stage, object),
        reason=joined(reason, object),
        suspicion=joined(suspicion, np.float64),
        scores={n: joined(s, np.float64) for n, s in scores.items()},
    )
