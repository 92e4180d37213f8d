"""Backdoor triggers: a value rare among trusted rows that, in the batch, comes with one label."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

import numpy as np

from poisonguard.detectors._common import (
    DetectorBase,
    class_prior,
    labels_of,
    tie_break,
)
from poisonguard.detectors._kernels import (
    _assign_cells,
    _best_cells,
    _feature_major,
    _value_runs,
)
from poisonguard.detectors._stats import beta_binomial_surprise, binomial_surprise
from poisonguard.detectors.base import Table, fingerprint

# Cells not even this surprising (-log p) on the cheap bounds are left with
# those bounds; only the rest get exact tails (saves time only).
_OVER_SCREEN = 3.0


def _sorted_quantiles(col: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """``np.quantile(col, qs)`` (linear interpolation) of an already sorted column."""
    at = qs * (len(col) - 1)
    lo = np.floor(at).astype(np.int64)
    hi = np.minimum(lo + 1, len(col) - 1)
    low = col[lo].astype(np.float64)
    return low + (col[hi].astype(np.float64) - low) * (at - lo)


@dataclass(frozen=True, eq=False)
class _Scan:
    """One batch's scan: row scores and, for reasons, the cell behind each.

    Attributes
    ----------
    score : ndarray of shape (n_rows,), float64
        Row scores before the tie-breaking jitter.
    cell : ndarray of shape (n_rows,), int64
        The cell that gave each row its score; -1 for rows with no evidence.
    feature : ndarray of shape (n_cells,), int64
        Each cell's feature.
    exact : ndarray of shape (n_cells,), bool
        Whether a cell is an exact value (else a bin).
    labels, trusted : ndarray of shape (n_cells, n_slots), int64
        Each cell's batch and trusted rows per label slot.
    """

    score: np.ndarray
    cell: np.ndarray
    feature: np.ndarray
    exact: np.ndarray
    labels: np.ndarray
    trusted: np.ndarray


class BackdoorDetector(DetectorBase):
    """Rows carrying a value that is rare in the trusted set but, in the batch, common and label-pure.

    A trigger sets a few features to an unusual value on rows of many true
    classes, all labelled with the attacker's target. Per feature, batch rows
    are grouped into cells, both by exact value (values shared by at least
    ``min_support`` batch rows) and by bins between trusted quantiles (plus
    one bin below and one above every trusted value). A cell is scored for
    each label as the smaller of

    * over-representation: ``-log P(N >= count)``, N Poisson with the count
      the trusted frequency of the cell predicts for this batch, and
    * label purity: ``-log P(B >= count with that label)``, B binomial with
      the label's share among trusted rows of the cell (smoothed towards the
      class prior),

    so a cell must be both far more common than trusted rows make it and far
    more of one label than they make it. A row scores the highest such value
    over its features' cells for its own label, minus ``log`` of the number of
    (cell, label) pairs examined (Bonferroni, so that clean batches score
    about 0 whatever their size), floored at 0; most rows score 0 (plus a
    deterministic jitter below ``1e-9`` from the row's hash, so tied rows get
    uniform rather than unit conformal p-values). Combinations
    of features are not examined (a trigger on several features is caught on
    each of them). The score depends on the batch as a whole: a trigger seen
    on only a handful of rows cannot stand out.

    Parameters
    ----------
    min_support : int
        Fewest batch rows a cell needs to be examined (>= 2).
    n_bins : int
        Quantile bins per feature between the trusted extremes (>= 1).
    smoothing : float
        Pseudo-rows of the class prior added to each cell's trusted labels (> 0).
    """

    name: ClassVar[str] = "backdoor"
    within_batch: ClassVar[bool] = True
    # A trigger split over batches of one source adds up in its recent rows.
    windowed: ClassVar[bool] = True
    needs_label: ClassVar[bool] = True
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    # Like duplicates: a real trigger cell is surprising by tens of nats, so half a
    # share of the combination is enough.
    weight: ClassVar[float] = 0.5
    # (fingerprint of a batch, its scan): explaining rows of the batch just
    # scored then costs no second scan.
    _last_scan: tuple[str, _Scan] | None = None

    def __init__(self, *, min_support: int = 5, n_bins: int = 64, smoothing: float = 10.0):
        self.min_support = min_support
        self.n_bins = n_bins
        self.smoothing = smoothing

    def _validate_params(self) -> None:
        self._check_int("min_support", 2)
        self._check_int("n_bins", 1)
        self._check_real("smoothing", 0.0, low_open=True)

    def _fit(self, reference: Table) -> Self:
        self.min_support_ = int(self.min_support)
        n_bins = int(self.n_bins)
        self.smoothing_ = float(self.smoothing)
        y = labels_of(reference, self.name, "reference")
        X = reference.x32
        self.n_slots_ = reference.n_classes + 1  # last slot: labels the reference never had
        self.m_ = reference.n_rows
        prior = class_prior(y, reference.n_classes)
        # The unseen slot gets a tiny prior so its purity can still be measured.
        self.prior_ = np.append(prior, 1.0 / (self.m_ + 1.0))
        self.prior_ /= self.prior_.sum()
        self.ref_y_ = self._slots(y)
        # Feature-major (one contiguous row per feature): every step reads one feature.
        XT = _feature_major(X)
        order = np.argsort(XT, axis=1)
        self.sorted_ = np.take_along_axis(XT, order, axis=1)
        # Trusted labels in each feature's sorted order: the labels of a run of equal values.
        self.sorted_y_ = self.ref_y_[order]
        qs = np.linspace(0.0, 1.0, n_bins + 1)
        self.edges_ = []
        self.bin_counts_ = []
        for f in range(X.shape[1]):
            col = self.sorted_[f]
            edges = np.unique(_sorted_quantiles(col, qs)) if len(col) else np.zeros(0, np.float32)
            edges = edges.astype(np.float32)
            self.edges_.append(edges)
            # Bin k holds the values with k edges at or below them: in the sorted
            # column, a run between consecutive edge positions.
            pos = np.searchsorted(col, edges, side="left")
            runs = np.diff(np.concatenate([[0], pos, [len(col)]]))
            b = np.repeat(np.arange(len(edges) + 1), runs)
            cnt = np.bincount(
                b * self.n_slots_ + self.sorted_y_[f], minlength=(len(edges) + 1) * self.n_slots_
            )
            self.bin_counts_.append(cnt.reshape(len(edges) + 1, self.n_slots_))
        self.edge_counts_ = np.array([len(e) for e in self.edges_], dtype=np.int64)
        self.edge_starts_ = np.cumsum(self.edge_counts_) - self.edge_counts_
        self.edges_flat_ = (
            np.concatenate(self.edges_).astype(np.float64) if self.edges_ else np.zeros(0)
        )
        self.features_ = reference.features
        self._last_scan = None
        return self

    def _slots(self, y: np.ndarray) -> np.ndarray:
        ok = (y >= 0) & (y < self.n_slots_ - 1)
        return np.where(ok, y, self.n_slots_ - 1).astype(np.int64)

    def _cell_scores(
        self, count: np.ndarray, label_counts: np.ndarray, trusted: np.ndarray, n: int
    ) -> np.ndarray:
        """Scores of cells x labels, ndarray of shape (n_cells, n_slots).

        Both tests compare the batch with a *sample* (the trusted rows), so
        their noise is accounted for: over-representation conditions on the
        cell's total over batch and trusted rows; purity uses a beta-binomial
        whose prior is the cell's trusted labels plus ``smoothing`` pseudo-rows
        of the class prior. Without this, clean batches would score higher
        the larger they are.
        """
        cell = np.zeros(label_counts.shape)
        # Cells with fewer than min_support batch rows score 0: only the others are tested.
        live = np.flatnonzero(count >= self.min_support_)
        count, label_counts, trusted = count[live], label_counts[live], trusted[live]
        total_trusted = trusted.sum(axis=1)
        q = n / (n + self.m_)
        over = binomial_surprise(count, count + total_trusted, q)
        a = trusted + self.smoothing_ * self.prior_
        b = (total_trusted + self.smoothing_)[:, None] - a
        # Plain binomial purity is a cheap upper bound on the beta-binomial one;
        # only cells it cannot rule out get the exact (slower) tail.
        scores = np.minimum(
            over[:, None], binomial_surprise(label_counts, count[:, None], a / (a + b))
        )
        hot = np.nonzero(scores > _OVER_SCREEN)
        if len(hot[0]):
            exact = beta_binomial_surprise(label_counts[hot], count[hot[0]], a[hot], b[hot])
            scores[hot] = np.minimum(over[hot[0]], exact)
        cell[live] = scores
        return cell

    def _scan(self, X: np.ndarray, y: np.ndarray) -> _Scan:
        """Row scores of the batch with features ``X`` and label slots ``y``, and their cells."""
        n, d = X.shape
        # Feature-major (one contiguous row per feature): every kernel step reads one feature.
        XT = _feature_major(X)
        # Cells of exact values: values shared by at least min_support batch rows.
        bits, run_counts, n_runs = _value_runs(XT.view(np.uint32), self.min_support_)
        taken = np.arange(bits.shape[1]) < n_runs[:, None]
        values, counts = bits[taken].view(np.float32), run_counts[taken]
        feature = np.repeat(np.arange(d), n_runs)
        lo = np.empty(len(values), dtype=np.int64)
        hi = np.empty(len(values), dtype=np.int64)
        ends = np.cumsum(n_runs)
        for f in range(d):
            part = slice(ends[f] - n_runs[f], ends[f])
            lo[part] = np.searchsorted(self.sorted_[f], values[part], side="left")
            hi[part] = np.searchsorted(self.sorted_[f], values[part], side="right")
        q = n / (n + self.m_)
        promising = binomial_surprise(counts, counts + hi - lo, q) > _OVER_SCREEN
        order = np.lexsort((values[promising], feature[promising]))
        exact = values[promising][order]
        exact_feature = feature[promising][order]
        exact_counts = np.bincount(exact_feature, minlength=d)
        exact_trusted = np.zeros((len(exact), self.n_slots_), dtype=np.int64)
        for j, (f, a, b) in enumerate(
            zip(exact_feature, lo[promising][order], hi[promising][order], strict=True)
        ):
            exact_trusted[j] = np.bincount(self.sorted_y_[f, a:b], minlength=self.n_slots_)
        # Rows of over-represented exact values are this feature's evidence
        # already; keeping them out of the bins stops a flood of copies from
        # lending its label purity to honest rows that share a bin with it.
        cell, labels = _assign_cells(
            XT,
            y,
            self.edges_flat_,
            self.edge_starts_,
            self.edge_counts_,
            exact,
            np.cumsum(exact_counts) - exact_counts,
            exact_counts,
            self.n_slots_,
        )
        # Cells are every feature's trusted-quantile bins, then the exact values.
        n_bins = len(self.edges_flat_) + d
        trusted = np.concatenate([*self.bin_counts_, exact_trusted])
        count = labels.sum(axis=1)
        scores = self._cell_scores(count, labels, trusted, n)
        best, which = _best_cells(cell, y, scores)
        # Bonferroni over every (cell, label) examined: a clean batch's best
        # cell then scores about 0 whatever the batch size, so batch rows and
        # the smaller calibration folds stay comparable.
        n_tests = (len(values) + int(np.sum(count[:n_bins] >= self.min_support_))) * self.n_slots_
        return _Scan(
            score=np.maximum(best - np.log(max(n_tests, 1)), 0.0),
            cell=which,
            feature=np.concatenate([np.repeat(np.arange(d), self.edge_counts_ + 1), exact_feature]),
            exact=np.arange(len(count)) >= n_bins,
            labels=labels,
            trusted=trusted,
        )

    def _scanned(self, batch: Table) -> tuple[np.ndarray, np.ndarray, _Scan]:
        """Features and label slots of ``batch``, and its scan (the last one if it was this batch)."""
        X = batch.x32
        y = self._slots(labels_of(batch, self.name, "batch"))
        key = batch.key + fingerprint(y)
        last = self._last_scan
        if last is None or last[0] != key:
            last = self._last_scan = (key, self._scan(X, y))
        return X, y, last[1]

    _fitted_attr: ClassVar[str] = "sorted_"

    def _score(self, batch: Table) -> np.ndarray:
        X, _, scan = self._scanned(batch)
        return scan.score + tie_break(X)

    def _explain(self, batch: Table, rows: np.ndarray) -> list[str]:
        X, y, scan = self._scanned(batch)
        out: list[str] = []
        for r in rows:
            c = scan.cell[r]
            if c < 0 or scan.score[r] <= 0.0:
                out.append(
                    "no feature value here is both unusually common in this batch and label-pure"
                )
                continue
            f = scan.feature[c]
            label = int(y[r])
            lab, tr = scan.labels[c], scan.trusted[c]
            count = int(lab.sum())
            expected = len(X) * float(tr.sum()) / max(self.m_, 1)
            share = float(lab[label]) / max(count, 1)
            share_expected = float(
                (tr[label] + self.smoothing_ * self.prior_[label]) / (tr.sum() + self.smoothing_)
            )
            shown = batch.label_of(label) if label < self.n_slots_ - 1 else "<unseen>"
            where_text = "is shared by" if scan.exact[c] else "falls in a bin shared by"
            out.append(
                f"{batch.describe(r, f)} {where_text} {count} batch rows ({expected:.2g} "
                f"expected from trusted rows), {100 * share:.0f}% labelled {shown} "
                f"({100 * share_expected:.0f}% expected)"
            )
        return out
