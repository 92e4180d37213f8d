"""What a batch report holds, and the one place it is built.

A ``BatchReport`` is a frozen dataclass; ``poisonguard.report`` renders it three
ways (the HTML page, the JSON file, the markdown summary) and reads nothing else.
Its parts come from two steps:

* ``batch_evidence`` runs where the scores are (the detect step) and gives an
  ``Evidence``: per detector a histogram over shared bins with the decision's own
  cut, a 2-D projection, class balance and drift. It is kept beside the staged
  batch as ``evidence.json``.
* ``build_report`` (the only builder of a ``BatchReport``) adds, at commit or
  rejection, the counts, the held rows per stage, the batch hold, the failed
  expectations and the most suspicious rows.

Size is bounded whatever the batch's length: scores are histogram counts (never
per-row lists), the projection keeps at most ``MAX_POINTS`` points per group, at
most ``TOP_ROWS`` rows are listed and their text is cut to ``MAX_CELL`` and
``MAX_REASON`` characters.

``dumps`` and ``loads`` turn these dataclasses into strict JSON and back; the
loader checks every field's type and raises ``StoreError`` naming the field.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from poisonguard.decision import STAGES, BatchDecision, Calibration
from poisonguard.detectors import Table
from poisonguard.detectors.base import fmt_number
from poisonguard.detectors.drift import DriftReport
from poisonguard.errors import StoreError
from poisonguard.store.scratch import RowFile

#: At most this many projection points per group (trusted, batch kept, batch held).
MAX_POINTS = 3000
#: At most this many held rows are listed, most suspicious first.
TOP_ROWS = 20
#: Bins of every detector histogram.
N_BINS = 30
#: At most this many features in the drift figures, most drifted first.
MAX_DRIFT_FEATURES = 15
#: Characters of a cell value shown; longer text is cut and ends in "…".
MAX_CELL = 80
#: Characters of a reason or an error shown.
MAX_REASON = 600

#: Scores past this magnitude count as non-finite: no plot can place them.
MAX_ABS = 1e150

#: A cell value as the report keeps it.
Cell = str | int | float | bool | None


# ----------------------------------------------------------------------------- the parts


@dataclass(frozen=True)
class Counts:
    """Where a batch's rows went.

    Attributes
    ----------
    rows_in : int or None
        Rows the batch held; None when its file could not be read.
    clean, quarantined, rejected : int
        ``rows_in = clean + quarantined + rejected``.
    held_by : dict of str to int
        Quarantined rows per stage, every one of ``STAGES`` named, summing to
        ``quarantined``.
    """

    rows_in: int | None
    clean: int
    quarantined: int
    rejected: int
    held_by: dict[str, int]

    def __post_init__(self) -> None:
        if set(self.held_by) != set(STAGES):
            raise ValueError(f"held_by must name the stages {STAGES}, not {tuple(self.held_by)}")
        if sum(self.held_by.values()) != self.quarantined:
            raise ValueError(
                f"the held rows per stage ({self.held_by}) do not add up to "
                f"{self.quarantined} quarantined"
            )
        if self.rows_in is not None and self.clean + self.quarantined + self.rejected != (
            self.rows_in
        ):
            raise ValueError(
                f"{self.clean} clean + {self.quarantined} quarantined + {self.rejected} "
                f"rejected != {self.rows_in} rows in"
            )


@dataclass(frozen=True)
class Bins:
    """One group's scores counted over a detector panel's bins.

    Attributes
    ----------
    counts : tuple of int, length n_bins
        Rows per bin (a score on an inner edge counts in the bin above it; the
        last bin holds its upper edge).
    over : int
        Rows whose score lies above the last edge (a heavy tail's overflow bar).
    nonfinite : int
        Rows whose score is NaN or infinite (or past ``MAX_ABS`` in magnitude).
    """

    counts: tuple[int, ...]
    over: int
    nonfinite: int

    @property
    def total(self) -> int:
        """Every row of the group: binned, over the last edge and non-finite."""
        return sum(self.counts) + self.over + self.nonfinite


@dataclass(frozen=True)
class DetectorPanel:
    """One detector's scores on the batch against its calibration, with its cut.

    Attributes
    ----------
    name : str
    edges : tuple of float, length n_bins + 1
        Increasing bin edges, shared by the three groups.
    clean, held, calibration : Bins
        The batch's scored rows that join the training set, the scored rows the
        batch decision holds (by the detectors or a batch hold), and the
        detector's trusted calibration scores.
    p_cut : float
        The p-value at or below which this detector alone flags a row of this
        batch (``Decision.p_cuts``).
    cut : float or None
        ``p_cut`` as a score (``detector_cut``): the line the histogram draws;
        None when no score reaches it.
    """

    name: str
    edges: tuple[float, ...]
    clean: Bins
    held: Bins
    calibration: Bins
    p_cut: float
    cut: float | None

    def __post_init__(self) -> None:
        n = len(self.edges) - 1
        if n < 1 or any(len(b.counts) != n for b in (self.clean, self.held, self.calibration)):
            raise ValueError(f"detector {self.name!r}: every group needs one count per bin ({n})")
        if any(not b > a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError(f"detector {self.name!r}: bin edges must increase")


Point = tuple[float, float]


@dataclass(frozen=True)
class Projection:
    """Trusted and batch rows on the trusted data's first two principal components.

    Attributes
    ----------
    reference, clean, held : tuple of (float, float)
        A sample of each group, at most ``MAX_POINTS`` points each.
    n_reference, n_clean, n_held : int
        How many rows each group had before sampling.
    """

    reference: tuple[Point, ...]
    clean: tuple[Point, ...]
    held: tuple[Point, ...]
    n_reference: int
    n_clean: int
    n_held: int


@dataclass(frozen=True)
class ClassBalance:
    """Each label's share among trusted rows and among the batch's scored rows.

    For a regression target (``kind = "target"``) the labels are ranges of the
    target, the trusted targets' deciles, with one range below and one above them.
    """

    labels: tuple[str, ...]
    reference: tuple[float, ...]
    batch: tuple[float, ...]
    kind: str = "class"

    def __post_init__(self) -> None:
        if not len(self.labels) == len(self.reference) == len(self.batch):
            raise ValueError("class balance needs one trusted and one batch share per label")


@dataclass(frozen=True)
class DriftFeature:
    """One feature's shift: Kolmogorov-Smirnov statistic and p-value, PSI, and the flag."""

    name: str
    statistic: float | None
    p_value: float | None
    psi: float | None
    drifted: bool


@dataclass(frozen=True)
class Drift:
    """How far the batch moved from the trusted data.

    Attributes
    ----------
    label_tv, label_p : float or None
        Total-variation distance of the label mix and its chi-square p-value.
    features : tuple of DriftFeature
        The most drifted features (by statistic), at most ``MAX_DRIFT_FEATURES``.
    n_features, n_drifted : int
        Features compared, and how many drifted (significant and material).
    """

    label_tv: float | None
    label_p: float | None
    features: tuple[DriftFeature, ...]
    n_features: int
    n_drifted: int


@dataclass(frozen=True)
class Evidence:
    """What the detect step knows that the ledger does not: staged as ``evidence.json``."""

    detectors: tuple[DetectorPanel, ...]
    projection: Projection | None
    class_balance: ClassBalance | None
    drift: Drift | None


@dataclass(frozen=True)
class FailedExpectation:
    """An expectation of the suite the batch broke (``level`` "schema" rejects it whole)."""

    type: str
    column: str | None
    level: str
    kwargs: dict[str, Any]
    unexpected_count: int | None
    error: str | None


@dataclass(frozen=True)
class TopRow:
    """A held row: its position in the batch file, stage, suspicion, reason and values."""

    row: int
    stage: str
    suspicion: float | None
    reason: str
    values: dict[str, Cell]


@dataclass(frozen=True)
class ReferenceUsed:
    """The reference version a batch's rows were judged against (``Store.reference``)."""

    version: int
    digest: str
    rows: int


@dataclass(frozen=True)
class BatchReport:
    """One batch's report: everything the page, the JSON and the summary show.

    Attributes
    ----------
    batch_id, source, sha256 : str
    status : {"committed", "rejected"}
    created_at : str
        When the report was built (ISO 8601).
    reason : str or None
        Why the batch was rejected whole.
    counts : Counts
    batch_hold : str or None
        Why every row was held for review, when the batch was.
    fdr : float or None
        The false-discovery rate of the detectors' decision (None if nothing was scored).
    threshold_p : float or None
        The largest combined p-value quarantined (0 when none was).
    failed_expectations : tuple of FailedExpectation
    evidence : Evidence or None
        None when no row was scored (a rejected batch, or every row held before).
    top_rows : tuple of TopRow
        At most ``TOP_ROWS`` held rows, rows without a suspicion (held by a rule) and
        then the most suspicious first.
    reference : ReferenceUsed or None
        The reference version the detectors were fitted on (None when no row was
        scored, and in reports written before references were versioned).
    source_state : str or None
        The batch's landing source's evidence across batches, this batch included
        (``sources.SourceState.describe``), and any drift in the size of its batches.
    """

    batch_id: str
    source: str
    sha256: str
    status: str
    created_at: str
    reason: str | None
    counts: Counts
    batch_hold: str | None
    fdr: float | None
    threshold_p: float | None
    failed_expectations: tuple[FailedExpectation, ...]
    evidence: Evidence | None
    top_rows: tuple[TopRow, ...]
    reference: ReferenceUsed | None = None
    source_state: str | None = None


# ----------------------------------------------------------------------------- the detect step


def span(lo: float, hi: float) -> tuple[float, float]:
    """``(lo, hi)``, widened when it is empty or finer than floats can split into bins."""
    size = max(1.0, abs(lo), abs(hi))
    if hi - lo > size * 1e-9:
        return lo, hi
    pad = 0.5 if size == 1.0 else size * 0.01
    return lo - pad, hi + pad


def _sample(n: int, k: int, seed: int) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def detector_cut(calibration: Calibration, candidates: np.ndarray, p_cut: float) -> float | None:
    """The smallest score at which a detector alone passes the batch's cut ``p_cut``.

    Searched among the batch's and the calibration's own scores, with the
    calibration's p-values: the line the decision drew, as a score.
    """
    grid = np.unique(np.concatenate([np.asarray(candidates, np.float64), calibration.scores]))
    grid = grid[np.isfinite(grid)]
    if grid.size == 0:
        return None
    passing = grid[calibration.p_values(grid) <= p_cut]
    return float(passing.min()) if passing.size else None


def _edges(
    clean: np.ndarray, held: np.ndarray, calibration: np.ndarray, cut: float | None
) -> np.ndarray:
    """Shared bin edges over finite scores; a heavy tail past the core range overflows."""
    batch = np.concatenate([clean, held])
    everything = np.concatenate([batch, calibration, [cut] if cut is not None else []])
    if everything.size == 0:
        lo, hi = span(0.0, 0.0)
        return np.linspace(lo, hi, N_BINS + 1)
    lo, hi = float(everything.min()), float(everything.max())
    # A few far outliers (in the batch or the calibration) would squash every other bar
    # into the first bin; past a core range set by most of the calibration, the cut and
    # most of the batch, they share one overflow bar.
    core = max(
        float(np.quantile(calibration, 0.99)) if calibration.size else lo,
        cut if cut is not None else lo,
        float(np.quantile(batch, 0.9)) if batch.size else lo,
    )
    if core > lo and hi - lo > 2.5 * (core - lo):
        hi = lo + 1.25 * (core - lo)
    lo, hi = span(lo, hi)
    return np.linspace(lo, hi, N_BINS + 1)


def _plottable(scores: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.isfinite(scores) & (np.abs(scores) <= MAX_ABS)


def _bins(scores: np.ndarray, edges: np.ndarray) -> Bins:
    finite = _plottable(scores)
    values = scores[finite]
    inside = values <= edges[-1]
    counts, _ = np.histogram(values[inside], bins=edges)
    return Bins(tuple(int(c) for c in counts), int((~inside).sum()), int(scores.size - values.size))


def detector_panel(
    name: str,
    scores: np.ndarray,
    held: np.ndarray,
    calibration: Calibration,
    p_cut: float,
) -> DetectorPanel:
    """One detector's histogram over the batch's scored rows and its calibration.

    Parameters
    ----------
    name : str
    scores : ndarray of shape (n_scored,)
        The detector's raw scores on the scored rows.
    held : ndarray of shape (n_scored,), bool
        The scored rows the batch decision holds.
    calibration : Calibration
    p_cut : float
        The decision's p-value cut for this detector (``Decision.p_cuts``).
    """
    scores = np.asarray(scores, dtype=np.float64)
    held = np.asarray(held, dtype=bool)
    cal = np.asarray(calibration.scores, dtype=np.float64)
    cut = _finite(detector_cut(calibration, scores, p_cut))
    if cut is not None and abs(cut) > MAX_ABS:
        cut = None
    finite = _plottable(scores)
    edges = _edges(scores[finite & ~held], scores[finite & held], cal[_plottable(cal)], cut)
    return DetectorPanel(
        name=name,
        edges=tuple(float(e) for e in edges),
        clean=_bins(scores[~held], edges),
        held=_bins(scores[held], edges),
        calibration=_bins(cal, edges),
        p_cut=float(p_cut),
        cut=cut,
    )


def _points(xy: np.ndarray) -> tuple[Point, ...]:
    rounded = np.round(np.asarray(xy, dtype=np.float64), 3)
    return tuple((float(a), float(b)) for a, b in rounded.tolist())


#: A projection's fitted half: the trusted PCs and the trusted sample's points.
Projector = tuple[Any, tuple[Point, ...]]


def _projector(reference: Table) -> Projector | None:
    """The trusted data's first two principal components (fitted on a fixed sample of at
    most ``MAX_POINTS`` trusted rows) and that sample's points; None when the trusted data
    has fewer than two features or three rows."""
    from sklearn.decomposition import PCA

    if reference.X.shape[1] < 2 or reference.n_rows < 3:
        return None
    # x32: finite and bounded, so every point is a JSON number.
    keep = _sample(reference.n_rows, MAX_POINTS, seed=0)
    pca = PCA(n_components=2, random_state=0).fit(reference.x32[keep])
    return pca, _points(pca.transform(reference.x32[keep]))


def _projection(
    reference: Table,
    projector: Projector,
    points: Callable[[np.ndarray], np.ndarray],
    held: np.ndarray,
) -> Projection:
    """The projection given every batch row's point (``points(rows)``) and which are held."""
    clean_rows, held_rows = np.flatnonzero(~held), np.flatnonzero(held)
    groups = []
    for seed, rows in ((1, clean_rows), (2, held_rows)):
        shown = rows[_sample(rows.size, MAX_POINTS, seed=seed)]
        groups.append(_points(points(shown)) if shown.size else ())
    return Projection(
        reference=projector[1],
        clean=groups[0],
        held=groups[1],
        n_reference=reference.n_rows,
        n_clean=int(clean_rows.size),
        n_held=int(held_rows.size),
    )


def projection(reference: Table, batch: Table, held: np.ndarray) -> Projection | None:
    """The trusted rows and the batch's kept and held rows on the trusted first two PCs.

    Each group keeps a fixed random sample of at most ``MAX_POINTS`` rows. None
    when the trusted data has fewer than two features or three rows.
    """
    projector = _projector(reference)
    if projector is None:
        return None
    return _projection(
        reference, projector, lambda rows: projector[0].transform(batch.x32[rows]), held
    )


class _Balance:
    """Batch rows counted per trusted label, or per range of the trusted targets (their
    deciles, one range below and one above), against the trusted rows' shares."""

    def __init__(self, reference: Table) -> None:
        self.kind: str | None = None
        self.cuts = np.zeros(0)
        self.labels: tuple[str, ...] = ()
        self.reference: tuple[float, ...] = ()
        self.complete = True
        if reference.target is not None:
            ref = reference.target[np.isfinite(reference.target)]
            if ref.size:
                self.kind = "target"
                self.cuts, self.labels = _target_ranges(ref)
                self.reference = _shares(self._count(ref))
        elif reference.y is not None and reference.n_classes:
            self.kind = "class"
            self.labels = tuple(str(c) for c in reference.classes)
            self.reference = _shares(self._count(reference.y))
        self.counts = np.zeros(len(self.labels))

    def _count(self, values: np.ndarray) -> np.ndarray:
        k = len(self.labels)
        if self.kind == "target":
            x = values[np.isfinite(values)]
            # Right-closed inner bins, so the trusted maximum falls in the last decile.
            return np.bincount(np.searchsorted(self.cuts[1:-1], x, side="left"), minlength=k)
        return np.bincount(values[values >= 0], minlength=k)

    def count(self, batch: Table) -> np.ndarray | None:
        """A batch's rows per label (or target range); None when it has no labels."""
        values = batch.target if self.kind == "target" else batch.y
        if values is None:
            return None
        return self._count(values) if self.kind is not None else np.zeros(0)

    def add(self, counts: np.ndarray | None) -> None:
        """Add a part's ``count``."""
        if counts is None:
            self.complete = False
        elif self.kind is not None:
            self.counts += counts

    def result(self) -> ClassBalance | None:
        if self.kind is None or not self.complete:
            return None
        return ClassBalance(self.labels, self.reference, _shares(self.counts), kind=self.kind)


def _shares(counts: np.ndarray) -> tuple[float, ...]:
    counts = np.asarray(counts, dtype=np.float64)
    return tuple((counts / max(counts.sum(), 1.0)).round(4).tolist())


def _target_ranges(ref: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """The cuts of the trusted targets' deciles (with -inf and inf at the ends) and each
    range's name."""
    edges = np.unique(np.quantile(ref, np.linspace(0.0, 1.0, 11)))
    # Below the trusted minimum, each decile, above the trusted maximum.
    cuts = np.concatenate([[-np.inf], edges[:-1], [edges[-1], np.inf]]) if edges.size > 1 else None
    if cuts is None:
        cuts = np.array([-np.inf, edges[0], np.nextafter(edges[0], np.inf), np.inf])
    labels = [f"< {fmt_number(cuts[1], 3)}"]
    labels += [
        f"{fmt_number(a, 3)} to {fmt_number(b, 3)}" for a, b in itertools.pairwise(cuts[1:-1])
    ]
    labels.append(f"> {fmt_number(cuts[-2], 3)}")
    return cuts, tuple(labels)


def class_balance(reference: Table, batch: Table) -> ClassBalance | None:
    """Each trusted label's share among trusted rows and among the batch's rows; for a
    regression target, the shares of its trusted deciles (and of values beyond them)."""
    balance = _Balance(reference)
    balance.add(balance.count(batch))
    return balance.result()


def drift_figures(drift: DriftReport) -> Drift:
    """The label shift, and the most drifted features first (at most ``MAX_DRIFT_FEATURES``)."""
    statistic = np.nan_to_num(np.asarray(drift.ks_statistic, np.float64), nan=-np.inf)
    order = np.argsort(-statistic, kind="stable")[:MAX_DRIFT_FEATURES]
    drifted = set(drift.drifted_features)
    return Drift(
        label_tv=_finite(drift.label_tv),
        label_p=_finite(drift.label_p_value),
        features=tuple(
            DriftFeature(
                name=str(drift.features[i]),
                statistic=_finite(drift.ks_statistic[i]),
                p_value=_finite(drift.ks_p_value[i]),
                psi=_finite(drift.psi[i]),
                drifted=drift.features[i] in drifted,
            )
            for i in order.tolist()
        ),
        n_features=len(drift.features),
        n_drifted=len(drifted),
    )


def batch_evidence(
    reference: Table,
    batch: Table,
    calibrations: Mapping[str, Calibration],
    decision: BatchDecision,
    drift: DriftReport | None = None,
) -> Evidence:
    """Per-detector histograms with the decision's cuts, a projection, class balance, drift.

    Parameters
    ----------
    reference : Table
        The trusted rows the detectors were fitted on (``Guard.reference_``).
    batch : Table
        The scored rows, encoded, in ``decision.scored`` order.
    calibrations : mapping of detector name to Calibration
    decision : BatchDecision
        The batch's one decision; its detectors' ``p_cuts`` are the lines drawn and
        its held rows (any stage) are the orange bars and crosses.
    drift : DriftReport, optional

    Returns
    -------
    Evidence
        Of a size that does not grow with the batch.
    """
    found = decision.detectors
    if found is None or batch.n_rows != decision.scored.size:
        raise ValueError("batch_evidence() needs the decision of the batch's scored rows")
    counts = EvidenceCounts(reference)
    counts.add(batch, {name: decision.scores[name][decision.scored] for name in found.detectors})
    return counts.evidence(
        decision.quarantined[decision.scored], calibrations, found.detectors, found.p_cuts, drift
    )


class FigureParts:
    """What a part of a batch adds to its report figures (``EvidenceCounts``), worked out
    where the part is (this process, or a cluster's worker): its rows' raw scores, their
    points on the trusted PCs and its label counts. Small and picklable: the trusted PCs
    and the label ranges only.

    Parameters
    ----------
    reference : Table
        The trusted rows the detectors were fitted on (``Guard.reference_``).
    """

    def __init__(self, reference: Table) -> None:
        self.projector = _projector(reference)
        self.balance = _Balance(reference)

    def of(self, batch: Table, scores: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """One part's share: ``{"scores", "points", "labels"}`` for ``EvidenceCounts.add_part``."""
        points = None
        if self.projector is not None:
            # A part may have no rows (every row of a row group held before scoring).
            points = self.projector[0].transform(batch.x32) if batch.n_rows else np.zeros((0, 2))
        return {
            "scores": {name: np.asarray(s, dtype=np.float64) for name, s in scores.items()},
            "points": points,
            "labels": self.balance.count(batch),
        }


class EvidenceCounts:
    """A batch's report figures counted part by part, for a batch judged in chunks.

    Each part's share (``FigureParts.of``: in this process through ``add``, on a cluster's
    worker and then ``add_part``) is kept: every row's scores and its point on the trusted
    PCs in unlinked files of ``directory`` (``RowFile``: a few numbers a row, not in
    memory), its labels as counts. ``evidence`` then draws ``batch_evidence``'s figures
    from them, once the decision says which rows are held: the same figures, up to the
    rounding of the projection's matrix products.

    Parameters
    ----------
    reference : Table
        The trusted rows the detectors were fitted on (``Guard.reference_``).
    directory : str or Path, optional
        Where the per-row files are made; None keeps them in memory.
    """

    def __init__(self, reference: Table, directory: str | Path | None = None) -> None:
        self.reference = reference
        self.directory = directory
        self.parts = FigureParts(reference)
        self.points = RowFile(directory, width=2) if self.parts.projector is not None else None
        self.scores: dict[str, RowFile] = {}
        self.balance = _Balance(reference)

    def add(self, batch: Table, scores: Mapping[str, np.ndarray]) -> None:
        """Count one chunk: its encoded rows and every detector's raw scores of them."""
        self.add_part(self.parts.of(batch, scores))

    def add_part(self, part: Mapping[str, Any]) -> None:
        """Count one part's share (``FigureParts.of``), parts in batch order."""
        for name, values in part["scores"].items():
            if name not in self.scores:
                self.scores[name] = RowFile(self.directory)
            self.scores[name].append(values)
        if self.points is not None:
            self.points.append(part["points"])
        self.balance.add(part["labels"])

    def evidence(
        self,
        held: np.ndarray,
        calibrations: Mapping[str, Calibration],
        detectors: tuple[str, ...],
        p_cuts: tuple[float, ...],
        drift: DriftReport | None = None,
    ) -> Evidence:
        """The figures, given which rows counted are held (in the order they were added)
        and the decision's per-detector cuts (``ChunkedDecision.p_cuts``)."""
        held = np.asarray(held, dtype=bool)
        panels = tuple(
            detector_panel(name, self.scores[name].finish(), held, calibrations[name], p_cut)
            for name, p_cut in zip(detectors, p_cuts, strict=True)
        )
        shown = None
        if self.parts.projector is not None and self.points is not None:
            points = self.points.finish()
            projector = self.parts.projector
            shown = _projection(self.reference, projector, lambda rows: points[rows], held)
        return Evidence(
            detectors=panels,
            projection=shown,
            class_balance=self.balance.result(),
            drift=None if drift is None else drift_figures(drift),
        )


# ----------------------------------------------------------------------------- the report


def _cut_text(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cell(value: Any) -> Cell:
    """A cell as the report keeps it: plain, finite or None, text cut to ``MAX_CELL``."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else (None if math.isnan(value) else str(value))
    return _cut_text(str(value), MAX_CELL)


def _json_value(value: Any) -> Any:
    """``value`` as strict JSON data: non-finite floats become None, odd types text."""
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset | np.ndarray):
        return [_json_value(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def _failed(item: Mapping[str, Any]) -> FailedExpectation:
    count = item.get("unexpected_count")
    error = item.get("error")
    return FailedExpectation(
        type=str(item["type"]),
        column=None if item.get("column") is None else str(item["column"]),
        level=str(item.get("level") or "row"),
        kwargs=_json_value(dict(item.get("kwargs") or {})),
        unexpected_count=None if count is None else int(count),
        error=None if error is None else _cut_text(str(error), MAX_REASON),
    )


def top_rows(quarantine: pd.DataFrame | None) -> tuple[TopRow, ...]:
    """At most ``TOP_ROWS`` held rows: those held by a rule first, then by suspicion."""
    if quarantine is None or not len(quarantine):
        return ()
    top = quarantine.sort_values("pg_suspicion", ascending=False, na_position="first")
    top = top.head(TOP_ROWS)
    # Column by column, so that each value keeps its column's type (an id stays an int).
    columns = {str(c): top[c].tolist() for c in top.columns if not str(c).startswith("pg_")}
    suspicion = top["pg_suspicion"].astype("float64").tolist()
    return tuple(
        TopRow(
            row=int(row),
            stage=str(stage),
            suspicion=_finite(s),
            reason=_cut_text(str(reason), MAX_REASON),
            values={c: _cell(values[i]) for c, values in columns.items()},
        )
        for i, (row, stage, reason, s) in enumerate(
            zip(top["pg_row"], top["pg_stage"], top["pg_reason"], suspicion, strict=True)
        )
    )


def build_report(
    *,
    batch_id: str,
    source: str,
    sha256: str,
    status: str,
    created_at: str,
    rows_in: int | None,
    clean: pd.DataFrame | None,
    quarantine: pd.DataFrame | None,
    rejected: int,
    reason: str | None = None,
    held_by: Mapping[str, int] | None = None,
    batch_hold: str | None = None,
    fdr: float | None = None,
    threshold_p: float | None = None,
    failed_expectations: Sequence[Mapping[str, Any]] = (),
    evidence: Evidence | None = None,
    reference: ReferenceUsed | None = None,
    source_state: str | None = None,
    counted: tuple[int, int] | None = None,
) -> BatchReport:
    """Build one batch's report: the only place a ``BatchReport`` is made.

    Parameters
    ----------
    batch_id, source, sha256, status, created_at : str
    rows_in : int or None
    clean, quarantine : DataFrame or None
        The rows the commit writes; the quarantine with the decision's
        ``pg_stage``, ``pg_reason`` and ``pg_suspicion`` columns.
    rejected : int
    reason : str, optional
        Why the batch was rejected whole.
    held_by : mapping of stage to rows, optional
        The decision's quarantined rows per stage (``BatchDecision.held_by``).
    batch_hold : str, optional
    fdr, threshold_p : float, optional
        The detectors' decision level and the largest combined p-value held.
    failed_expectations : sequence of mapping
        ``ExpectationOutcome`` fields of the expectations the batch broke.
    evidence : Evidence, optional
        From the detect step.
    reference : ReferenceUsed, optional
        The reference version the detect step's detectors were fitted on.
    source_state : str, optional
        The landing source's evidence across batches, in words.
    counted : (int, int), optional
        The clean and quarantined rows, counted, for a batch committed a chunk at a
        time; ``quarantine`` then holds only the held rows the report shows.

    Raises
    ------
    StoreError
        When the held rows per stage do not add up to the quarantine, or the
        counts to the rows in.
    """
    try:
        counts = Counts(
            rows_in=rows_in,
            clean=counted[0] if counted else 0 if clean is None else len(clean),
            quarantined=counted[1] if counted else 0 if quarantine is None else len(quarantine),
            rejected=rejected,
            held_by={s: int((held_by or {}).get(s, 0)) for s in STAGES},
        )
    except ValueError as exc:
        raise StoreError(f"batch {batch_id}: {exc}") from exc
    return BatchReport(
        batch_id=batch_id,
        source=source,
        sha256=sha256,
        status=status,
        created_at=created_at,
        reason=reason,
        counts=counts,
        batch_hold=batch_hold,
        fdr=_finite(fdr),
        threshold_p=_finite(threshold_p),
        failed_expectations=tuple(_failed(f) for f in failed_expectations),
        evidence=evidence,
        top_rows=top_rows(quarantine),
        reference=reference,
        source_state=_cut_text(source_state, MAX_REASON) if source_state else None,
    )


# ----------------------------------------------------------------------------- JSON

T = TypeVar("T")


def dumps(value: BatchReport | Evidence) -> str:
    """Strict JSON (no NaN) of a report or its evidence, compact, UTF-8 text kept."""
    return json.dumps(
        dataclasses.asdict(value), ensure_ascii=False, allow_nan=False, separators=(",", ":")
    )


def loads(cls: type[T], text: str | bytes, *, source: str = "report") -> T:
    """Read ``dumps``' JSON back into ``cls``, checking every field's type.

    Raises
    ------
    StoreError
        For text that is not JSON, or a field missing, unknown or of the wrong
        type; the message names ``source`` and the field.
    """
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        raise StoreError(f"{source}: not JSON ({exc})") from exc
    try:
        return typing.cast(T, _decode(cls, data, cls.__name__))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{source}: {exc}") from exc


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _decode(tp: Any, value: Any, where: str) -> Any:
    """``value`` (parsed JSON) as type ``tp``; TypeError naming ``where`` when it is not."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        options = tuple(o for o in options if o is not type(None))
        if len(options) == 1:  # ``X | None``: say what is wrong with the X
            return _decode(options[0], value, where)
        for option in options:
            try:
                return _decode(option, value, where)
            except TypeError:
                continue
        wanted = " or ".join(getattr(o, "__name__", str(o)) for o in options)
        raise TypeError(f"{where} must be {wanted}, not {_kind(value)}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise TypeError(f"{where} must be an object, not {_kind(value)}")
        hints = typing.get_type_hints(tp)
        fields = dataclasses.fields(tp)
        names = [f.name for f in fields]
        # A field with a default was added later: JSON written before may lack it.
        required = {f.name for f in fields if f.default is dataclasses.MISSING}
        if not required <= set(value) <= set(names):
            odd = sorted((required - set(value)) | (set(value) - set(names)))
            raise TypeError(f"{where} has missing or unknown fields: {', '.join(odd)}")
        return tp(**{n: _decode(hints[n], value[n], f"{where}.{n}") for n in names if n in value})
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list):
            raise TypeError(f"{where} must be a list, not {_kind(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise TypeError(f"{where} must have {len(args)} items, not {len(value)}")
        pairs = enumerate(zip(args, value, strict=True))
        return tuple(_decode(a, v, f"{where}[{i}]") for i, (a, v) in pairs)
    if origin is dict:
        _, item = typing.get_args(tp)
        if not isinstance(value, dict):
            raise TypeError(f"{where} must be an object, not {_kind(value)}")
        return {k: _decode(item, v, f"{where}[{k!r}]") for k, v in value.items()}
    if tp is type(None):
        if value is not None:
            raise TypeError(f"{where} must be null, not {_kind(value)}")
        return None
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and type(value) is int:
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, str):
        return value
    raise TypeError(f"{where} must be {getattr(tp, '__name__', tp)}, not {_kind(value)}")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
