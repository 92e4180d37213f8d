"""A batch's way through the gate: read -> validate -> detect -> decide -> commit.

Each step is a function of paths, so a Prefect task can wrap it in one line and
pass paths, never frames, to the next (flows/ingest.py)::

    staged = validate_batch(path, config, store)      # None when rejected or seen before
    detect_batch(staged, config, store)               # writes decision.parquet beside it
    record = commit_batch(staged, config, store)      # files, then the ledger row

``process_landing`` runs the same steps in-process, without Prefect.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from poisonguard.config import RESERVED_PREFIX, Config
from poisonguard.detectors.drift import DriftReport, batch_drift
from poisonguard.errors import BatchError, ConfigError, StoreError
from poisonguard.evidence import batch_evidence, batch_report
from poisonguard.scan import Guard, ScanResult
from poisonguard.store import (
    BatchRecord,
    Outcome,
    Store,
    atomic_write_bytes,
    crash_point,
    find_batches,
    now,
    parquet_bytes,
    read_batch,
    sha256_file,
)

STAGED_ROWS = "rows.parquet"
STAGED_HELD = "held.parquet"
STAGED_MANIFEST = "staged.json"
DECISION = "decision.parquet"
EVIDENCE = "evidence.json"
#: A row's reason lists at most this many failed expectations, then a count.
MAX_LISTED = 3


def batch_id_for(path: Path, sha256: str) -> str:
    """A batch's id: its file name's stem and the start of its content hash."""
    return f"{path.stem}-{sha256[:12]}"


def row_hashes(frame: pd.DataFrame, columns: list[str] | None = None) -> np.ndarray:
    """A content hash per row (16 hex digits), the same whichever file format carried it.

    Numbers are compared as float64 and everything else as text, so a row read
    from CSV and the same row read from Parquet hash alike.
    """
    columns = list(columns if columns is not None else frame.columns)
    canon = pd.DataFrame(index=range(len(frame)))
    for c in columns:
        col = frame[c].reset_index(drop=True)
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            canon[str(c)] = col.astype("float64")
        else:
            canon[str(c)] = col.astype("string").fillna("\x00<NA>")
    hashed = pd.util.hash_pandas_object(canon, index=False).to_numpy(dtype=np.uint64)
    return np.array([f"{h:016x}" for h in hashed.tolist()], dtype=object)


def data_columns(frame: pd.DataFrame) -> list[str]:
    """The columns that came with the data, not poisonguard's bookkeeping."""
    return [c for c in frame.columns if not str(c).startswith(RESERVED_PREFIX)]


@dataclass(frozen=True)
class Staged:
    """A validated batch waiting in the staging area (read back from ``staged.json``)."""

    folder: Path
    batch_id: str
    sha256: str
    source: str
    rows_in: int
    started_at: str
    failed_expectations: list[dict]

    @classmethod
    def load(cls, folder: str | Path) -> Staged:
        folder = Path(folder)
        data = json.loads((folder / STAGED_MANIFEST).read_text())
        return cls(folder=folder, **data)


def _jsonable(value: object) -> list[dict]:
    """Round-trip through JSON, turning numpy scalars and other oddities into plain values."""
    return list(json.loads(json.dumps(value, default=str)))


def find_new_batches(config: Config, store: Store) -> list[tuple[Path, str]]:
    """Batch files in the landing folder whose content the ledger has not seen, with their SHA-256."""
    hashed = [(p, sha256_file(p)) for p in find_batches(config.landing)]
    return [(p, sha) for p, sha in hashed if store.batch_by_sha(sha) is None]


def validate_batch(
    path: str | Path, config: Config, store: Store, sha256: str | None = None
) -> Path | None:
    """Read and validate one landed file; stage its rows for detection.

    A file that cannot be read, or fails a schema-level expectation, is rejected
    whole (kept under ``rejected/`` with its reason) and None is returned. So is
    a file whose content the ledger already holds (nothing is done then).

    Returns
    -------
    Path or None
        The staging folder: passing rows in ``rows.parquet``, rows that broke
        row-level expectations (with reasons) in ``held.parquet``.
    """
    from poisonguard.validation import load_suite, string_columns, validate

    path = Path(path)
    started = now()
    sha = sha256 or sha256_file(path)
    if store.batch_by_sha(sha) is not None:
        return None
    batch_id = batch_id_for(path, sha)
    rows_in: int | None = None
    report = None
    try:
        suite = load_suite(config.expectations)
        frame = read_batch(path, strings=string_columns(suite))
        rows_in = len(frame)
        reserved = [c for c in frame.columns if str(c).startswith(RESERVED_PREFIX)]
        if reserved:
            raise BatchError(
                path.name,
                f"column {reserved[0]!r} uses the prefix {RESERVED_PREFIX!r}, "
                "which poisonguard reserves for its own bookkeeping",
                column=reserved[0],
            )
        report = validate(frame, suite, source=path.name)
        report.raise_if_rejected(rows=rows_in)
    except BatchError as exc:
        rejected = Outcome(
            batch_id=batch_id,
            sha256=sha,
            source=str(path),
            status="rejected",
            rows_in=rows_in,
            rows_rejected=rows_in or 0,
            reason=str(exc),
            started_at=started,
        )
        broken = [] if report is None else [o.__dict__ for o in report.outcomes if not o.success]
        write_batch_report(store, rejected, failed_expectations=_jsonable(broken))
        store.reject(path, rejected)
        return None

    folder = store.staging_dir(batch_id)
    frame = frame.reset_index(drop=True)
    frame["pg_batch"] = batch_id
    frame["pg_row"] = np.arange(len(frame), dtype=np.int64)
    frame["pg_row_hash"] = row_hashes(frame, data_columns(frame))
    failed = np.zeros(len(frame), dtype=bool)
    reasons = [""] * len(frame)
    stages = [""] * len(frame)
    for row, why in report.row_failures.items():
        failed[row] = True
        stages[row] = "expectations"
        shown = "; ".join(why[:MAX_LISTED])
        more = f" (+{len(why) - MAX_LISTED} more)" if len(why) > MAX_LISTED else ""
        reasons[row] = f"failed expectation: {shown}{more}"
    blocked = store.blocked(frame["pg_row_hash"].tolist())
    for row, h in enumerate(frame["pg_row_hash"].tolist()):
        if h in blocked:
            at, actor = blocked[h]
            note = f"previously rejected on {at[:10]} by {actor}"
            reasons[row] = f"{note}; {reasons[row]}" if failed[row] else note
            stages[row] = stages[row] or "blocklist"
            failed[row] = True
    held = frame[failed].copy()
    rows_held = np.nonzero(failed)[0]
    held["pg_stage"] = [stages[i] for i in rows_held]
    held["pg_reason"] = [reasons[i] for i in rows_held]
    atomic_write_bytes(folder / STAGED_ROWS, parquet_bytes(frame[~failed]))
    atomic_write_bytes(folder / STAGED_HELD, parquet_bytes(held))
    outcomes = [o.__dict__ for o in report.outcomes if not o.success]
    manifest = {
        "batch_id": batch_id,
        "sha256": sha,
        "source": str(path),
        "rows_in": rows_in,
        "started_at": started,
        "failed_expectations": _jsonable(outcomes),
    }
    atomic_write_bytes(folder / STAGED_MANIFEST, json.dumps(manifest, indent=2).encode())
    crash_point("after-stage")
    return folder


def fit_guard(config: Config, store: Store) -> Guard:
    """Detectors fitted on the store's current clean training set."""
    reference = store.clean_frame()
    if reference.empty:
        raise StoreError(
            f"the store {store.root} has no clean training set yet; "
            "seed it with `poisonguard init --sample TRUSTED`"
        )
    return Guard(
        label=config.label,
        features=list(config.features) or None,
        id_column=config.id_column,
        settings=config.detection,
    ).fit(reference[data_columns(reference)])


def hold_reason(drift: DriftReport, config: Config) -> str | None:
    """Why the whole batch is held for review, when its drift passes the configured levels."""
    settings = config.detection
    tv, p = drift.label_tv, drift.label_p_value
    if tv is not None and tv > settings.hold_label_shift and drift.label_drifted:
        return (
            f"batch held for review: its label shares are {tv:.2f} (total variation) from the "
            f"trusted set's (chi-square p={p:.2g}), past hold_label_shift {settings.hold_label_shift}"
        )
    share = len(drift.drifted_features) / max(len(drift.features), 1)
    if settings.hold_feature_drift < 1.0 and share > settings.hold_feature_drift:
        return (
            f"batch held for review: {len(drift.drifted_features)} of {len(drift.features)} "
            f"features drifted from the trusted set, past hold_feature_drift "
            f"{settings.hold_feature_drift}"
        )
    return None


def drift_evidence(drift: DriftReport, top: int = 30) -> dict:
    """Drift figures for the report: label shift, and the most drifted features first."""
    order = np.argsort(-drift.ks_statistic)[:top]
    return {
        "label_tv": drift.label_tv,
        "label_p": drift.label_p_value,
        "features": [
            {
                "name": drift.features[i],
                "statistic": float(drift.ks_statistic[i]),
                "p_value": float(drift.ks_p_value[i]),
                "psi": float(drift.psi[i]),
            }
            for i in order
        ],
        "drifted_features": list(drift.drifted_features),
        "summary": drift.summary(),
    }


def detect_batch(
    staged: str | Path, config: Config, store: Store, guard: Guard | None = None
) -> Path:
    """Score a staged batch's rows and decide; write ``decision.parquet`` beside them."""
    folder = Path(staged)
    rows = pq.read_table(folder / STAGED_ROWS).to_pandas()
    decision = pd.DataFrame({"pg_row": rows["pg_row"].to_numpy()})
    if len(rows):
        guard = guard or fit_guard(config, store)
        data = rows[data_columns(rows)].reset_index(drop=True)
        result: ScanResult = guard.scan(data, source=Path(Staged.load(folder).source).name)
        table = guard.encoder_.transform(data)
        drift = batch_drift(guard.reference_, table)
        hold = hold_reason(drift, config)
        quarantined = result.quarantined.to_numpy(dtype=bool)
        reasons = result.reasons.to_numpy(dtype=object)
        if hold:
            reasons = np.array([f"{hold}; {r}" if r else hold for r in reasons], dtype=object)
            quarantined = np.ones(len(rows), dtype=bool)
        decision["quarantined"] = quarantined
        decision["reason"] = reasons
        evidence = batch_evidence(guard, table, result)
        evidence["drift"] = drift_evidence(drift)
        evidence["hold"] = hold
        atomic_write_bytes(folder / EVIDENCE, json.dumps(evidence).encode())
        for col in result.scores.columns:
            name = "pg_suspicion" if col == "suspicion" else f"pg_score_{col}"
            decision[name] = result.scores[col].to_numpy()
    else:
        decision["quarantined"] = np.zeros(0, dtype=bool)
        decision["reason"] = np.zeros(0, dtype=object)
    atomic_write_bytes(folder / DECISION, parquet_bytes(decision))
    crash_point("after-detect")
    return folder / DECISION


def commit_batch(staged: str | Path, config: Config, store: Store) -> BatchRecord:
    """Partition a staged, decided batch into clean and quarantined rows and commit it."""
    meta = Staged.load(staged)
    rows = pq.read_table(meta.folder / STAGED_ROWS).to_pandas()
    held = pq.read_table(meta.folder / STAGED_HELD).to_pandas()
    decision = pq.read_table(meta.folder / DECISION).to_pandas()
    if not np.array_equal(decision["pg_row"].to_numpy(), rows["pg_row"].to_numpy()):
        raise StoreError(f"batch {meta.batch_id}: the decision does not match the staged rows")
    flagged = decision["quarantined"].to_numpy(dtype=bool)
    clean = rows[~flagged].reset_index(drop=True)
    quarantined = rows[flagged].copy()
    quarantined["pg_stage"] = "detectors"
    quarantined["pg_reason"] = decision.loc[flagged, "reason"].to_numpy()
    for col in decision.columns:
        if col.startswith("pg_score_") or col == "pg_suspicion":
            quarantined[col] = decision.loc[flagged, col].to_numpy()
    quarantine = pd.concat([held, quarantined], ignore_index=True).sort_values("pg_row")
    quarantine = quarantine.reset_index(drop=True)
    detail = {
        "quarantined_by_expectations": int((held["pg_stage"] == "expectations").sum()),
        "quarantined_by_blocklist": int((held["pg_stage"] == "blocklist").sum()),
        "quarantined_by_detectors": int(flagged.sum()),
        "failed_expectations": [
            e["type"] + ":" + str(e["column"]) for e in meta.failed_expectations
        ],
    }
    outcome = Outcome(
        batch_id=meta.batch_id,
        sha256=meta.sha256,
        source=meta.source,
        status="committed",
        rows_in=meta.rows_in,
        clean=clean,
        quarantine=quarantine,
        started_at=meta.started_at,
        detail=detail,
    )
    evidence_path = meta.folder / EVIDENCE
    evidence = json.loads(evidence_path.read_text()) if evidence_path.exists() else None
    write_batch_report(
        store,
        outcome,
        failed_expectations=meta.failed_expectations,
        evidence=evidence,
    )
    return store.commit(outcome)


def report_paths(store: Store, batch_id: str) -> tuple[Path, Path]:
    """Where a batch's HTML and JSON reports live."""
    folder = store.root / "reports"
    return folder / f"{batch_id}.html", folder / f"{batch_id}.json"


def write_batch_report(
    store: Store,
    outcome: Outcome,
    *,
    failed_expectations: list[dict] | None = None,
    evidence: dict | None = None,
) -> tuple[Path, Path]:
    """Write a batch's HTML and JSON reports (before its ledger commit: a re-run rewrites them)."""
    from poisonguard.report import write_report

    n_clean = 0 if outcome.clean is None else len(outcome.clean)
    n_quar = 0 if outcome.quarantine is None else len(outcome.quarantine)
    record = {
        "batch_id": outcome.batch_id,
        "source": outcome.source,
        "sha256": outcome.sha256,
        "status": outcome.status,
        "finished_at": now(),
        "reason": outcome.reason,
        "rows_in": outcome.rows_in,
        "rows_clean": n_clean,
        "rows_quarantined": n_quar,
        "rows_rejected": outcome.rows_rejected,
    }
    report = batch_report(
        record,
        failed_expectations=failed_expectations,
        evidence=evidence,
        quarantine=outcome.quarantine,
        detail=outcome.detail,
    )
    json_path, html_path = write_report(report, store.root / "reports")
    return html_path, json_path


def process_batch(
    path: str | Path, config: Config, store: Store, sha256: str | None = None
) -> BatchRecord | None:
    """All steps for one file, in-process. None when its content was seen before."""
    path = Path(path)
    sha = sha256 or sha256_file(path)
    if store.batch_by_sha(sha) is not None:
        return None
    staged = validate_batch(path, config, store, sha256=sha)
    if staged is None:
        return store.batch_by_sha(sha)
    detect_batch(staged, config, store)
    return commit_batch(staged, config, store)


@contextmanager
def exclusive(store: Store) -> Iterator[None]:
    """Hold the store's run lock, and clear what a killed run left behind."""
    import fcntl

    lock_path = store.root / ".run.lock"
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise StoreError(f"another poisonguard run holds {lock_path}") from exc
        store.recover()
        yield


Progress = Callable[[int, int, str], None]


def process_landing(
    config: Config, store: Store | None = None, progress: Progress | None = None
) -> list[BatchRecord]:
    """Process every new batch in the landing folder once, in name order, without Prefect.

    ``progress(done, total, name)`` is called before each batch and once at the end.
    """
    store = store or Store(config.store)
    records: list[BatchRecord] = []
    with exclusive(store):
        new = find_new_batches(config, store)
        for i, (path, sha) in enumerate(new):
            if progress:
                progress(i, len(new), path.name)
            record = process_batch(path, config, store, sha256=sha)
            if record is not None:
                records.append(record)
        if progress:
            progress(len(new), len(new), "done")
    return records


def seed_store(sample: pd.DataFrame, source: str, config: Config, store: Store) -> BatchRecord:
    """Make a trusted sample the first clean batch of a store (status ``seed``)."""
    if config.label is not None and config.label not in sample.columns:
        raise ConfigError(f"{source}: the label column {config.label!r} is not in the sample")
    data = parquet_bytes(sample)
    import hashlib

    sha = hashlib.sha256(data).hexdigest()
    existing = store.batch_by_sha(sha)
    if existing is not None:
        return existing
    frame = sample.reset_index(drop=True).copy()
    batch_id = f"seed-{sha[:12]}"
    frame["pg_batch"] = batch_id
    frame["pg_row"] = np.arange(len(frame), dtype=np.int64)
    frame["pg_row_hash"] = row_hashes(frame, data_columns(frame))
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
