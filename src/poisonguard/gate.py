"""The pre-training gate: is the training set safe to use, and exactly which rows is it?

The gate checks, and refuses with every reason it finds:

* the audit chain is unbroken;
* every clean file the ledger lists is there, with the SHA-256 and row count it
  had when poisonguard wrote it, and no other file sits among them;
* no batch has rows awaiting review for longer than the allowed age.

Every gate decision is appended to the audit chain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from poisonguard.config import Config
from poisonguard.errors import ConfigError, GateError
from poisonguard.review import pending
from poisonguard.store import FileRecord, Store, now, sha256_file

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


def check(store: Store, *, max_pending: timedelta | None = None, actor: str = "gate") -> GateReport:
    """Run every check, record the decision in the audit chain, and return the verdict."""
    reasons: list[str] = []
    broken = store.verify_audit()
    if broken:
        reasons.append(f"audit chain broken: {broken}")

    files = tuple(store.files("clean"))
    listed = {f.path for f in files}
    for f in files:
        path = store.root / f.path
        if not path.is_file():
            reasons.append(f"{f.path}: listed in the ledger but missing from the store")
            continue
        digest = sha256_file(path)
        if digest != f.sha256:
            reasons.append(
                f"{f.path}: changed behind poisonguard's back (SHA-256 {digest[:12]}..., "
                f"ledger has {f.sha256[:12]}...)"
            )
            continue
        rows = pq.ParquetFile(path).metadata.num_rows
        if rows != f.rows:
            reasons.append(f"{f.path}: has {rows} rows, the ledger recorded {f.rows}")
    for path in sorted((store.root / "clean").iterdir()):
        rel = path.relative_to(store.root).as_posix()
        if rel not in listed:
            reasons.append(f"{rel}: not written by poisonguard (not in the ledger)")

    if max_pending is not None:
        for p in pending(store):
            if p.pending - p.reviewed > 0 and p.age_seconds > max_pending.total_seconds():
                reasons.append(
                    f"batch {p.batch_id}: {p.pending - p.reviewed} rows awaiting review for "
                    f"{human_age(p.age_seconds)} (allowed {human_age(max_pending.total_seconds())})"
                )

    n_rows = sum(f.rows for f in files)
    audit = store.audit_log()
    manifest = {
        "created_at": now(),
        "store": str(store.root),
        "safe": not reasons,
        "reasons": reasons,
        "rows": n_rows,
        "audit_head": audit[-1]["hash"] if audit else None,
        "files": [
            {"path": f.path, "batch_id": f.batch_id, "sha256": f.sha256, "rows": f.rows}
            for f in files
        ],
    }
    store.audit(
        "gate",
        actor=actor,
        detail={
            "safe": not reasons,
            "reasons": reasons,
            "rows": n_rows,
            "files": len(files),
            "audit_head": manifest["audit_head"],
        },
    )
    return GateReport(not reasons, tuple(reasons), files, n_rows, manifest)


def gate(
    config: Config | str | Path,
    *,
    max_pending: timedelta | str | None = None,
    provenance: bool = False,
) -> pd.DataFrame:
    """The verified training set, or a ``GateError`` with every reason it is not safe.

    Parameters
    ----------
    config : Config or path
    max_pending : timedelta or str, optional
        Fail when rows have waited longer than this for review (``"7d"``).
    provenance : bool
        Keep poisonguard's ``pg_batch``, ``pg_row`` and ``pg_row_hash`` columns.

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
    store = Store(config.store)
    report = check(store, max_pending=max_pending)
    if not report.ok:
        raise GateError(list(report.reasons))
    frames = [store.read(f) for f in report.files]
    frame = (
        pd.concat([f for f in frames if len(f)], ignore_index=True) if frames else pd.DataFrame()
    )
    if not provenance:
        frame = frame[[c for c in frame.columns if not str(c).startswith("pg_")]]
    return frame
