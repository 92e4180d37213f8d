"""What a batch report shows, gathered as plain JSON-able data.

``batch_evidence`` is computed where the scores are (the detect step) and kept
beside the staged batch; ``batch_report`` adds the counts, failed expectations
and the most suspicious rows at commit time. ``poisonguard.report`` renders it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from poisonguard.decision import Decision
from poisonguard.detectors import Table
from poisonguard.scan import Guard

MAX_POINTS = 3000
TOP_ROWS = 20


def _sample(n: int, k: int, seed: int = 0) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def _finite(values: np.ndarray) -> list[float | None]:
    """Scores as JSON numbers; a non-finite one is None (the report counts it apart)."""
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, dtype=np.float64)]


def detector_cut(guard: Guard, name: str, candidates: np.ndarray, p_cut: float) -> float | None:
    """The smallest score at which this detector alone would pass the batch's cut."""
    grid = np.unique(np.concatenate([candidates, guard.calibrations_[name].scores]))
    grid = grid[np.isfinite(grid)]
    if grid.size == 0:
        return None
    passing = grid[guard.calibrations_[name].p_values(grid) <= p_cut]
    return float(passing.min()) if passing.size else None


def batch_evidence(
    guard: Guard, batch: Table, decision: Decision, scores: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    """Per-detector scores with calibration and decision lines, a 2-D projection, class balance.

    ``batch`` is the scanned frame as ``guard.encoder_`` encodes it; ``decision`` the
    detectors' decision over it, whose per-detector cuts the report draws.
    """
    from sklearn.decomposition import PCA

    n = batch.n_rows
    fdr = guard.settings_.fdr
    quarantined = np.asarray(decision.quarantined, dtype=bool)
    detectors = []
    for name, p_cut in zip(decision.detectors, decision.p_cuts, strict=True):
        s = np.asarray(scores[name], dtype=np.float64)
        detectors.append(
            {
                "name": name,
                "scores": _finite(s),
                "quarantined": quarantined.tolist(),
                "cut": detector_cut(guard, name, s, p_cut),
                "calibration": _finite(guard.calibrations_[name].scores),
            }
        )
    threshold = decision.threshold
    evidence: dict[str, Any] = {
        "decision": {"fdr": fdr, "threshold_p": threshold},
        "detectors": detectors,
    }
    reference = guard.reference_
    if reference.X.shape[1] >= 2 and reference.n_rows >= 3:
        keep = _sample(reference.n_rows, MAX_POINTS)
        pca = PCA(n_components=2, random_state=0).fit(reference.X[keep])
        show = _sample(n, MAX_POINTS, seed=1)
        evidence["projection"] = {
            "reference": np.round(pca.transform(reference.X[keep]), 4).tolist(),
            "batch": np.round(pca.transform(batch.X[show]), 4).tolist() if n else [],
            "quarantined": quarantined[show].tolist(),
        }
    if reference.y is not None and batch.y is not None and reference.n_classes:
        k = reference.n_classes
        ref_counts = np.bincount(reference.y[reference.y >= 0], minlength=k)
        b_counts = np.bincount(batch.y[batch.y >= 0], minlength=k)
        evidence["class_balance"] = {
            "labels": [str(c) for c in reference.classes],
            "reference": (ref_counts / max(ref_counts.sum(), 1)).round(4).tolist(),
            "batch": (b_counts / max(b_counts.sum(), 1)).round(4).tolist(),
        }
    return evidence


def batch_report(
    record: dict[str, Any],
    *,
    failed_expectations: list[dict[str, Any]] | None = None,
    evidence: dict[str, Any] | None = None,
    quarantine: pd.DataFrame | None = None,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole report of one batch, as ``poisonguard.report.render_html`` reads it."""
    detail = detail or {}
    report: dict[str, Any] = {
        "batch_id": record["batch_id"],
        "source": record["source"],
        "sha256": record["sha256"],
        "status": record["status"],
        "created_at": record["finished_at"],
        "reason": record.get("reason"),
        "counts": {
            "rows_in": record["rows_in"],
            "clean": record["rows_clean"],
            "quarantined": record["rows_quarantined"],
            "rejected": record["rows_rejected"],
            **{f"quarantined_by_{k}": v for k, v in detail.get("quarantined_by", {}).items()},
        },
        "hold": detail.get("batch_hold"),
        "failed_expectations": failed_expectations or [],
    }
    report.update(evidence or {})
    if quarantine is not None and len(quarantine):
        q = quarantine
        if "pg_suspicion" in q:
            q = q.sort_values("pg_suspicion", ascending=False, na_position="first")
        data_cols = [c for c in q.columns if not str(c).startswith("pg_")]
        top = []
        for _, row in q.head(TOP_ROWS).iterrows():
            susp = row.get("pg_suspicion")
            top.append(
                {
                    "pg_row": int(row["pg_row"]),
                    "suspicion": None if susp is None or pd.isna(susp) else float(susp),
                    "reason": str(row["pg_reason"]),
                    "values": {str(c): _plain(row[c]) for c in data_cols},
                }
            )
        report["top_rows"] = top
    return report


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (int, float, str, bool)):
        return value
    return str(value)
