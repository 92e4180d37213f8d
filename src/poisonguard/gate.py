"""The pre-training gate: is the training set safe to use, and exactly which rows is it?

The gate passes only what it has verified. It refuses, with every reason it finds:

* the store is missing, or its ledger, audit key or anchor is missing or unreadable;
* the audit chain is broken: an entry altered, not keyed with the store's audit
  key (a rewritten chain), or entries removed after the anchored head, the head
  the gate last vouched for, or the head of a manifest it is given;
* the audit key is readable by others;
* the ledger disagrees with the audit entries that wrote it: a file's hash or
  kind (a revoked or superseded clean file listed as clean again), a batch's row
  counts, status or the reference version that judged it, a review, the
  blocklist, or a reference version (its files and digest);
* a file the ledger lists (clean, quarantined, rejected, revoked or superseded;
  not one a retention purge removed, listed as ``purged``) is missing, or has another SHA-256
  or row count than when written; a file an erasure listed as erased is still there; a file sits
  in ``clean/``, ``quarantine/`` or ``rejected/`` that the ledger does not list;
  a batch's clean or quarantined rows are not all in its files;
* the training set is empty, mixes column sets, has other columns than the
  expectation suite, or holds an id twice;
* a batch has rows awaiting review for longer than the allowed age;
* the canary fails: a quick model of the training set does worse than one of the
  pinned reference on trusted canary rows kept out of both, overall or on one
  class, past the configured margin (``poisonguard.canary``, ``[gate]``).
  It runs only on a store that passed every check above, reading the bytes it
  hashes; when ``gate.canary`` is left out, a store without a label or with too
  small a reference is noted, not refused.

Every decision is appended to the audit chain; a safe one records the head it
vouched for (in the store's anchor and in the manifest). The manifest also names
the current reference version (number, digest, rows, batches) and, per file, the
reference version its batch was judged against.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from poisonguard.canary import CanaryResult, run_canary
from poisonguard.config import RESERVED_PREFIX, Config, suite_columns
from poisonguard.errors import ConfigError, GateError, PoisonguardError, StoreError
from poisonguard.review import awaiting_review
from poisonguard.sampling import rule_for, sample_rule
from poisonguard.sources import POOLED, alarms
from poisonguard.store import (
    ERASED,
    FileRecord,
    ReferenceVersion,
    Store,
    blocklist_in,
    hex_digits,
    now,
    open_store,
    read_verified,
    reference_digest,
)

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> timedelta:
    """``"36h"``, ``"7d"``, ``"90m"``, ``"2w"``, ``"30s"`` as a timedelta."""
    m = _AGE.match(text)
    if not m:
        raise ConfigError(
            f"The max-pending age must be a number and a unit (s, m, h, d, w), e.g. 7d. "
            f"Got {text!r} instead."
        )
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


def human_age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


@dataclass(frozen=True)
class GateReport:
    """The gate's verdict and the manifest of the training set it checked."""

    ok: bool
    reasons: tuple[str, ...]
    files: tuple[FileRecord, ...]
    rows: int
    manifest: dict[str, Any] = field(default_factory=dict)
    canary: CanaryResult | None = None


def check(
    config: Config,
    *,
    max_pending: timedelta | None = None,
    actor: str = "gate",
    previous: dict[str, Any] | None = None,
    canary: bool | None = None,
) -> GateReport:
    """Run every check, record the decision in the audit chain, and return the verdict.

    Parameters
    ----------
    config : Config
    max_pending : timedelta, optional
        Refuse when rows have waited longer than this for review.
    actor : str
        Who asks (recorded in the audit chain).
    previous : dict, optional
        A manifest this gate wrote before (for an earlier training run): its
        audit head must still be in the chain.
    canary : bool, optional
        False skips the canary (recorded in the manifest and the audit entry),
        True requires it to judge; None follows ``gate.canary`` in the config.
    """
    try:
        store = open_store(config)
    except StoreError as exc:
        return GateReport(False, (str(exc),), (), 0, {"safe": False, "reasons": [str(exc)]})
    with store.writing():
        reasons = _reasons(store, config, max_pending, previous)
        files = tuple(store.files("clean"))
        n_rows = sum(f.rows or 0 for f in files)
        current = store.reference()
        mode = config.gate.canary if canary is None else canary
        result, canary_record = _canary(store, config, files, current, mode, checked=not reasons)
        reasons += [] if result is None else list(result.reasons)
        if result is not None and result.unable is not None and mode is True:
            reasons.append(f"canary: cannot judge the training set: {result.unable}")
        head = _head_or_none(store)
        reference = None if current is None else current.summary()
        judged_by = {b.batch_id: b.reference_version for b in store.batches()}
        manifest = {
            "created_at": now(),
            "config": str(config.path),
            "store": str(store.root),
            "data": str(store.data.where()),
            "safe": not reasons,
            "reasons": reasons,
            "rows": n_rows,
            "audit_head": head,
            "reference": reference,
            "canary": canary_record,
            "files": [
                {
                    "path": f.path,
                    "batch_id": f.batch_id,
                    "sha256": f.sha256,
                    "rows": f.rows,
                    "reference_version": judged_by.get(f.batch_id),
                }
                for f in files
            ],
        }
        try:
            store.audit(
                "gate",
                actor=actor,
                detail={
                    "safe": not reasons,
                    "reasons": reasons,
                    "rows": n_rows,
                    "files": len(files),
                    "audit_head": head,
                    "reference": None
                    if current is None
                    else {"version": current.version, "digest": current.digest},
                    "canary": canary_record,
                },
            )
            if not reasons and head is not None:
                store.vouch(head)
        except StoreError as exc:
            reasons.append(str(exc))
            manifest.update(safe=False, reasons=reasons)
    return GateReport(not reasons, tuple(reasons), files, n_rows, manifest, result)


def _canary(
    store: Store,
    config: Config,
    files: tuple[FileRecord, ...],
    current: ReferenceVersion | None,
    mode: bool | None,
    *,
    checked: bool,
) -> tuple[CanaryResult | None, dict[str, Any]]:
    """Run the canary on the verified bytes of the training set and the reference.

    The reference's side is the pinned version's sample (the rows the detectors are
    fitted on); the training set's side is at most ``gate.canary_rows`` of its rows,
    drawn the same way under the store's key (each class keeps its share), read file
    by file: neither grows with the store's history. Returns the result (None when it
    did not run) and what the manifest records. A canary that fails to run at all is
    a result whose reason says why.
    """
    if mode is False:
        return None, {"run": False, "note": "off (gate.canary = false, or --no-canary)"}
    if not checked:
        return None, {"run": False, "note": "not run: the store failed the checks above"}
    total = 0
    try:
        rule = rule_for(config)
        reference = pd.DataFrame() if current is None else store.sample_frame(current, rule)
        task = rule.resolved(reference).task
        drawn = sample_rule(config.gate.canary_rows, rule.label, task)
        training, total = store.training_sample(files, drawn)
        result = run_canary(reference, training, config)
    except (PoisonguardError, OSError, ValueError) as exc:
        result = CanaryResult.without_figures(reasons=(f"canary: could not run ({exc})",))
    record = result.as_dict()
    if record["run"]:
        record["training_set_rows"] = total
    return result, record


def _head_or_none(store: Store) -> dict[str, Any] | None:
    try:
        return store.head()
    except StoreError:
        return None


def _reasons(
    store: Store,
    config: Config,
    max_pending: timedelta | None,
    previous: dict[str, Any] | None,
) -> list[str]:
    reasons: list[str] = []
    # One read of the chain for every check below: they judge the same chain, and a long
    # history is not read again for each of them.
    log = store.audit_log()
    broken = store.verify_audit(log)
    if broken:
        reasons.append(f"audit chain broken: {broken}")
    if store.key_path.exists() and store.key_path.stat().st_mode & 0o077:
        mode = oct(store.key_path.stat().st_mode & 0o777)
        reasons.append(
            f"the audit key {store.key_path} is readable by others (mode {mode}); "
            f"run chmod 600 {store.key_path}"
        )
    if previous is not None:
        reasons += _previous_head(log, previous)
    if not broken:
        reasons += _ledger_against_audit(store, log)
    reasons += store.verify_files()
    reasons += _training_set(store, config)
    for state in alarms(store.source_replay(config.sources).states()):
        then = (
            f"review its batches, then `poisonguard source clear {state.source}`"
            if state.source != POOLED
            else "review the sources in alarm"
        )
        reasons.append(f"source alarm: {state.describe(config.sources)}; {then}")
    if max_pending is not None:
        for p in awaiting_review(store):
            if p.awaiting > 0 and p.age_seconds > max_pending.total_seconds():
                reasons.append(
                    f"batch {p.batch_id}: {p.awaiting} rows awaiting review for "
                    f"{human_age(p.age_seconds)} (allowed {human_age(max_pending.total_seconds())})"
                )
    return reasons


def _previous_head(log: list[dict[str, Any]], previous: dict[str, Any]) -> list[str]:
    head = previous.get("audit_head")
    if not isinstance(head, dict):
        return ["the previous manifest names no audit head to check the chain against"]
    chain = {int(e["seq"]): e["hash"] for e in log}
    try:
        seq, digest = int(head["seq"]), str(head["hash"])
    except (KeyError, TypeError, ValueError):
        return ["the previous manifest's audit head is malformed"]
    if chain.get(seq) != digest:
        return [
            f"the audit head of the previous manifest (entry {seq}, {digest[:12]}...) is no "
            "longer in the chain: the store was rolled back or rewritten since"
        ]
    return []


def _ledger_against_audit(store: Store, log: list[dict[str, Any]] | None = None) -> list[str]:
    """Replay the audit chain (``log``, as read by the caller; read here when not given); the
    ledger's files (hash and kind), counts, reviews and blocklist must agree."""
    files: dict[str, str] = {}
    kinds: dict[str, str] = {}
    counts: dict[str, list[int]] = {}
    status: dict[str, tuple[str, str]] = {}
    reviewed: set[tuple[str, int, str]] = set()
    judged: dict[str, int | None] = {}
    versions: dict[int, tuple[str, list[str]]] = {}
    log = store.audit_log() if log is None else log
    for entry in log:
        if entry["action"] == "reference":
            detail = json.loads(entry["detail"])
            versions[int(detail["version"])] = (detail["digest"], list(detail["files"]))
        if entry["action"] == "purge":
            _replay_purge(json.loads(entry["detail"]), counts, kinds)
        if entry["action"] not in ("ingest", "release", "reject", "revoke", "rescan", "forget"):
            continue
        detail = json.loads(entry["detail"])
        batch = entry["batch_id"]
        files.update(detail.get("files") or {})
        kinds.update((path, path.split("/")[0]) for path in detail.get("files") or {})
        if entry["action"] == "forget":
            _replay_forget(detail, counts, kinds, reviewed)
        elif entry["action"] == "revoke" and batch in counts:
            _replay_revoke(detail, counts[batch], kinds)
            status[batch] = ("revoked", status[batch][1])
            reviewed.update((batch, int(r), "reject") for r in detail.get("rejected") or [])
        elif entry["action"] == "rescan" and batch in counts:
            rows = detail.get("rows") or []
            counts[batch][0] -= len(rows)
            counts[batch][1] += len(rows)
            kinds.update((path, "superseded") for path in detail.get("superseded") or [])
            reviewed.difference_update(
                (batch, int(r), "release") for r in detail.get("reopened") or []
            )
        elif entry["action"] == "ingest":
            judged[batch] = detail.get("reference_version")
            counts[batch] = [
                detail.get("rows_clean", 0),
                detail.get("rows_quarantined", 0),
                detail.get("rows_rejected", 0),
            ]
            status[batch] = (detail.get("status"), detail.get("sha256"))
        elif entry["action"] in ("release", "reject") and batch in counts:
            rows = detail.get("rows") or []
            counts[batch][0 if entry["action"] == "release" else 2] += len(rows)
            counts[batch][1] -= len(rows)
            reviewed.update((batch, int(r), entry["action"]) for r in rows)
    reasons = []
    records = store.files()
    listed = {f.path: f.sha256 for f in records}
    reasons += [
        f"{f.path}: the ledger lists it as {f.kind}, its audit entries as {kinds[f.path]}: "
        "the ledger was edited"
        for f in records
        if f.path in kinds and f.kind != kinds[f.path]
    ]
    for path in sorted(set(listed) | set(files)):
        if path not in files:
            reasons.append(f"{path}: in the ledger, but no audit entry wrote it")
        elif path not in listed:
            reasons.append(f"{path}: an audit entry wrote it, but the ledger no longer lists it")
        elif listed[path] != files[path]:
            reasons.append(
                f"{path}: the ledger's SHA-256 ({listed[path][:12]}...) is not the one its audit "
                f"entry recorded ({files[path][:12]}...): the ledger was edited"
            )
    for rec in store.batches():
        want = counts.get(rec.batch_id)
        have = [rec.rows_clean, rec.rows_quarantined, rec.rows_rejected]
        if want is None:
            reasons.append(f"batch {rec.batch_id}: in the ledger, but no audit entry ingested it")
        elif have != want or (rec.status, rec.sha256) != status[rec.batch_id]:
            reasons.append(
                f"batch {rec.batch_id}: the ledger has {have[0]} clean, {have[1]} quarantined, "
                f"{have[2]} rejected rows ({rec.status}), its audit entries {want[0]}, {want[1]}, "
                f"{want[2]} ({status[rec.batch_id][0]}): the ledger was edited"
            )
        elif rec.reference_version != judged.get(rec.batch_id):
            reasons.append(
                f"batch {rec.batch_id}: the ledger says reference version "
                f"{rec.reference_version} judged it, its audit entry "
                f"{judged.get(rec.batch_id)}: the ledger was edited"
            )
    reasons += _references_against_audit(store, versions)
    reasons += _samples_against_audit(store, log)
    missing = set(counts) - {r.batch_id for r in store.batches()}
    reasons += [
        f"batch {b}: ingested in the audit chain, but gone from the ledger" for b in missing
    ]
    table = store.reviews()
    have_reviews = {
        (b, int(r), a)
        for b, r, a in zip(table["batch_id"], table["pg_row"], table["action"], strict=True)
    }
    if have_reviews != reviewed:
        reasons.append(
            f"the ledger's reviews ({len(have_reviews)}) are not those the audit chain recorded "
            f"({len(reviewed)}): the ledger was edited"
        )
    if store.blocklist() != blocklist_in(log):
        reasons.append(
            "the blocklist is not the set of rows reviewers rejected in the audit chain: "
            "the ledger was edited"
        )
    return reasons


def _replay_revoke(detail: dict[str, Any], counts: list[int], kinds: dict[str, str]) -> None:
    """A revocation as the audit entry recorded it: clean and awaiting rows become rejected."""
    revoked, rejected = int(detail.get("rows_revoked", 0)), len(detail.get("rejected") or [])
    counts[0] -= revoked
    counts[1] -= rejected
    counts[2] += revoked + rejected
    kinds.update((path, "revoked") for path in detail.get("revoked_files") or [])


def _replay_purge(
    detail: dict[str, Any], counts: dict[str, list[int]], kinds: dict[str, str]
) -> None:
    """A purge as its audit entry recorded it: its files listed as purged, and held rows
    nobody reviewed counted as rejected."""
    kinds.update((path, "purged") for path in detail.get("purged_files") or [])
    for part in detail.get("batches") or []:
        n = int(part.get("unreviewed", 0))
        if n and part.get("batch_id") in counts:
            counts[part["batch_id"]][1] -= n
            counts[part["batch_id"]][2] += n


def _replay_forget(
    detail: dict[str, Any],
    counts: dict[str, list[int]],
    kinds: dict[str, str],
    reviewed: set[tuple[str, int, str]],
) -> None:
    """An erasure as its audit entry recorded it: the new files keep the kinds of those they
    replace, which are erased; the rows leave their batches' counts and reviews (and the
    blocklist: ``blocklist_in``)."""
    kinds.update(detail.get("kinds") or {})
    kinds.update((path, ERASED) for path in detail.get("erased") or {})
    for batch, lost in (detail.get("batches") or {}).items():
        if batch in counts:
            for i, count in enumerate(("clean", "quarantined", "rejected")):
                counts[batch][i] -= int(lost.get(count, 0))
        reviewed.difference_update((batch, int(r), str(a)) for r, a in lost.get("reviews") or [])


def _references_against_audit(
    store: Store, versions: dict[int, tuple[str, list[str]]]
) -> list[str]:
    """Each reference version is the one its audit entry wrote, and its digest its files'."""
    reasons = []
    have = {ref.version: ref for ref in store.references()}
    for version in sorted(set(have) | set(versions)):
        ref = have.get(version)
        if ref is None:
            reasons.append(
                f"reference version {version}: written in the audit chain, but gone from the ledger"
            )
        elif version not in versions:
            reasons.append(
                f"reference version {version}: in the ledger, but no audit entry wrote it"
            )
        elif (ref.digest, [f.path for f in ref.files]) != versions[version]:
            reasons.append(
                f"reference version {version}: its digest or files are not those its audit "
                "entry recorded: the ledger was edited"
            )
        elif ref.digest != reference_digest(f.sha256 for f in ref.files):
            reasons.append(
                f"reference version {version}: its digest does not match its files' hashes: "
                "the ledger was edited"
            )
    return reasons


def _samples_against_audit(store: Store, log: list[dict[str, Any]]) -> list[str]:
    """Each reference version's sample is the file its audit entry (the version's, or the
    migration's that drew it) recorded, or none after an erasure dropped it: a sample replaced
    in the ledger and on disk together still differs from the chain."""
    recorded: dict[int, str] = {}
    for entry in log:
        wanted = ("reference", "migrate", "forget")
        detail = json.loads(entry["detail"]) if entry["action"] in wanted else {}
        for version in detail.get("samples_dropped") or []:
            recorded.pop(int(version), None)  # an erasure dropped it with the rows it held
        sample = detail.get("sample")
        if isinstance(sample, dict) and "sha256" in sample:
            recorded[int(sample.get("version", detail.get("version", 0)))] = sample["sha256"]
    return [
        f"reference version {ref.version}: its sample is not the file its audit entry "
        "recorded: the ledger was edited"
        for ref in store.references()
        if (ref.sample.sha256 if ref.sample else None) != recorded.get(ref.version)
    ]


def _training_set(store: Store, config: Config) -> list[str]:
    """One schema, the suite's columns, unique ids, and at least one row."""
    reasons: list[str] = []
    files = [f for f in store.files("clean") if store.file_exists(f)]
    if not files or sum(f.rows or 0 for f in files) == 0:
        return ["the training set is empty: no clean rows to train on"]
    first: tuple[str, list[str]] | None = None
    for f in files:
        try:
            names = store.column_names(f)
        except (OSError, ValueError) as exc:
            reasons.append(f"{f.path}: not a readable Parquet file ({exc})")
            continue
        columns = [c for c in names if not c.startswith(RESERVED_PREFIX)]
        if first is None:
            first = (f.path, columns)
        elif set(columns) != set(first[1]):
            reasons.append(
                f"{f.path} has columns {_few(columns)}, but {first[0]} has {_few(first[1])}: "
                "the training set mixes two schemas"
            )
    expected = _suite_columns(config.expectations)
    if first is not None and expected is not None and set(first[1]) != set(expected):
        reasons.append(
            f"the training set has columns {_few(first[1])}, but the expectation suite "
            f"{config.expectations.name} expects {_few(expected)}"
        )
    if config.id_column is not None and first is not None and config.id_column in first[1]:
        reasons += _repeated_ids(store, files, config.id_column)
    return reasons


def _repeated_ids(store: Store, files: list[FileRecord], column: str) -> list[str]:
    """A reason when an id is in the training set more than once, naming one by its keyed
    hash and the first batch holding it (the id itself is personal data, and the reason is
    kept). Counted on the store's id index (``Store.id_owners``), whose keys are sorted:
    a repeated id is a run of equal keys. ``files`` are the clean files the gate checked."""
    try:
        owners = store.id_owners(column)
    except (OSError, ValueError, KeyError):
        return []  # an unreadable or missing file is a reason of its own (verify_files)
    if not files or len(owners) < 2:
        return []
    starts = np.flatnonzero(owners.keys[1:] == owners.keys[:-1])
    if starts.size == 0:
        return []
    twice = np.unique(owners.keys[starts])
    first = owners.batches[owners.find(twice[:1])[0]]
    keyed = hex_digits(twice[:1])[0]
    return [
        f"{twice.size} ids appear more than once in the training set, e.g. {column} with "
        f"keyed id {keyed} (first in batch {first}); ids must be unique"
    ]


def _few(columns: list[str], limit: int = 8) -> str:
    shown = ", ".join(columns[:limit])
    return f"[{shown}{', ...' if len(columns) > limit else ''}]"


def _suite_columns(path: Path) -> list[str] | None:
    """The column set a suite file fixes, or None (``load_config`` has checked the file)."""
    try:
        return suite_columns(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def gate(
    config: Config | str | Path,
    *,
    max_pending: timedelta | str | None = None,
    provenance: bool = False,
    canary: bool | None = None,
) -> pd.DataFrame:
    """The verified training set, or a ``GateError`` with every reason it is not safe.

    Parameters
    ----------
    config : Config or path
    max_pending : timedelta or str, optional
        Fail when rows have waited longer than this for review (``"7d"``).
    provenance : bool
        Keep poisonguard's ``pg_batch``, ``pg_row`` and ``pg_row_hash`` columns.
    canary : bool, optional
        False skips the canary, True requires it; None follows ``gate.canary``.

    Returns
    -------
    DataFrame
        Exactly the rows of the files the manifest lists, in ledger order.
    """
    from poisonguard.config import load_config

    if not isinstance(config, Config):
        config = load_config(config)
    if isinstance(max_pending, str):
        max_pending = parse_age(max_pending)
    report = check(config, max_pending=max_pending, canary=canary)
    if not report.ok:
        raise GateError(list(report.reasons))
    data = report.manifest.get("data", report.manifest["store"])
    # The bytes read are the bytes checked: a file swapped after the check is refused.
    frame = pd.concat([read_verified(data, f) for f in report.files], ignore_index=True)
    if not provenance:
        frame = frame[[c for c in frame.columns if not str(c).startswith(RESERVED_PREFIX)]]
    return frame
