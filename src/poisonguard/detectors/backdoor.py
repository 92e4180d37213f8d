"""Backdoor triggers: a value rare among trusted rows that, in the batch, comes with one label."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

import numpy as np

from poisonguard.detectors._common import (
    DetectorBase,
    class_prior,
    features32,
    labels_of,
    tie_break,
)
from poisonguard.detectors._kernels import _digitize, _tail_grid
from poisonguard.detectors._stats import beta_binomial_surprise, binomial_surprise
from poisonguard.detectors.base import Table

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


@dataclass(frozen=True)
class _Cell:
    """A suspicious (feature, value or bin, label) cell, for reasons."""

    feature: int
    exact: bool
    value: float
    label: int
    count: int
    expected: float
    share: float
    share_expected: float
    score: float


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
    needs_label: ClassVar[bool] = True
    # Like duplicates: a real trigger cell is surprising by tens of nats, so half a
    # share of the combination is enough.
    weight: ClassVar[float] = 0.5

    def __init__(self, *, min_support: int = 5, n_bins: int = 64, smoothing: float = 10.0):
        self.min_support = min_support
        self.n_bins = n_bins
        self.smoothing = smoothing

    def fit(self, reference: Table) -> Self:
        self.min_support_ = self._check_int("min_support", 2)
        n_bins = self._check_int("n_bins", 1)
        self.smoothing_ = self._check_real("smoothing", 0.0, low_open=True)
        y = labels_of(reference, self.name, "reference")
        X = features32(reference)
        self.n_slots_ = reference.n_classes + 1  # last slot: labels the reference never had
        self.m_ = reference.n_rows
        prior = class_prior(y, reference.n_classes)
        # The unseen slot gets a tiny prior so its purity can still be measured.
        self.prior_ = np.append(prior, 1.0 / (self.m_ + 1.0))
        self.prior_ /= self.prior_.sum()
        self.ref_y_ = self._slots(y)
        # Feature-major (one contiguous row per feature): every step reads one feature.
        XT = np.ascontiguousarray(X.T)
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
        sizes = np.array([len(e) for e in self.edges_], dtype=np.int64)
        self.edge_starts_ = (np.cumsum(sizes) - sizes).reshape(1, -1)
        self.edge_counts_ = sizes.reshape(1, -1)
        self.edges_flat_ = (
            np.concatenate(self.edges_).astype(np.float64) if self.edges_ else np.zeros(0)
        )
        self.edge_grid_ = _tail_grid(self.edges_flat_, self.edge_starts_, self.edge_counts_)
        self.features_ = reference.features
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
        total_trusted = trusted.sum(axis=1)
        q = n / (n + self.m_)
        over = binomial_surprise(count, count + total_trusted, q)
        a = trusted + self.smoothing_ * self.prior_
        b = (total_trusted + self.smoothing_)[:, None] - a
        # Plain binomial purity is a cheap upper bound on the beta-binomial one;
        # only cells it cannot rule out get the exact (slower) tail.
        cell = np.minimum(
            over[:, None], binomial_surprise(label_counts, count[:, None], a / (a + b))
        )
        cell[count < self.min_support_] = 0.0
        hot = np.nonzero(cell > _OVER_SCREEN)
        if len(hot[0]):
            exact = beta_binomial_surprise(label_counts[hot], count[hot[0]], a[hot], b[hot])
            cell[hot] = np.minimum(over[hot[0]], exact)
        return cell

    def _scan(
        self, batch: Table, want: np.ndarray | None = None
    ) -> tuple[np.ndarray, list[_Cell | None]]:
        """Row scores, and for rows in ``want`` the cell that gave each its score."""
        y = self._slots(labels_of(batch, self.name, "batch"))
        X = features32(batch)
        n, d = X.shape
        best = np.zeros(n)
        where: list[_Cell | None] = [None] * (0 if want is None else len(want))
        n_tests = 0
        all_bins = _digitize(
            X, self.edges_flat_, self.edge_starts_, self.edge_counts_, *self.edge_grid_
        )
        for f in range(d):
            col = X[:, f]
            # Cells of exact values: runs of equal values in the sorted column.
            sc = np.sort(col)
            starts = np.flatnonzero(np.concatenate([[True], sc[1:] != sc[:-1]]))
            lengths = np.diff(np.append(starts, n))
            big = lengths >= self.min_support_
            values, counts = sc[starts[big]], lengths[big]
            ref_col = self.sorted_[f]
            lo = np.searchsorted(ref_col, values, side="left")
            hi = np.searchsorted(ref_col, values, side="right")
            q = n / (n + self.m_)
            promising = binomial_surprise(counts, counts + hi - lo, q) > _OVER_SCREEN
            n_tests += len(values) * self.n_slots_
            # Rows of over-represented exact values are this feature's evidence
            # already; keeping them out of the bins stops a flood of copies from
            # lending its label purity to honest rows that share a bin with it.
            in_exact = np.zeros(n, dtype=bool)
            for v, c, a, b in zip(
                values[promising], counts[promising], lo[promising], hi[promising], strict=True
            ):
                rows = np.flatnonzero(col == v)
                in_exact[rows] = True
                lab = np.bincount(y[rows], minlength=self.n_slots_)
                tr = np.bincount(self.sorted_y_[f, a:b], minlength=self.n_slots_)
                cell = self._cell_scores(np.array([c]), lab[None, :], tr[None, :], n)[0]
                s = cell[y[rows]]
                improved = s > best[rows]
                best[rows] = np.maximum(best[rows], s)
                if want is not None:
                    self._note(
                        where,
                        want,
                        rows[improved],
                        y[rows[improved]],
                        (f, True, float(v)),
                        lab,
                        tr,
                        cell,
                        n,
                    )
            # Cells of trusted-quantile bins.
            edges = self.edges_[f]
            bins = all_bins[:, f].astype(np.int64)
            rest = ~in_exact
            lab = np.bincount(
                bins[rest] * self.n_slots_ + y[rest], minlength=(len(edges) + 1) * self.n_slots_
            ).reshape(len(edges) + 1, self.n_slots_)
            trusted = self.bin_counts_[f]
            cell = self._cell_scores(lab.sum(axis=1), lab, trusted, n)
            n_tests += int(np.sum(lab.sum(axis=1) >= self.min_support_)) * self.n_slots_
            s = np.where(rest, cell[bins, y], 0.0)
            improved = np.flatnonzero(s > best)
            best = np.maximum(best, s)
            if want is not None and len(improved):
                for b in np.unique(bins[improved]):
                    rows = improved[bins[improved] == b]
                    self._note(
                        where,
                        want,
                        rows,
                        y[rows],
                        (f, False, float(b)),
                        lab[b],
                        trusted[b],
                        cell[b],
                        n,
                    )
        # Bonferroni over every (cell, label) examined: a clean batch's best
        # cell then scores about 0 whatever the batch size, so batch rows and
        # the smaller calibration folds stay comparable.
        return np.maximum(best - np.log(max(n_tests, 1)), 0.0), where

    def _note(
        self,
        where: list[_Cell | None],
        want: np.ndarray,
        rows: np.ndarray,
        row_labels: np.ndarray,
        cell_at: tuple[int, bool, float],
        lab: np.ndarray,
        tr: np.ndarray,
        cell: np.ndarray,
        n: int,
    ) -> None:
        """Record, for the wanted rows among ``rows``, the cell that now gives their score."""
        if len(rows) == 0 or len(want) == 0:
            return
        f, exact, value = cell_at
        pos = np.minimum(np.searchsorted(want, rows), len(want) - 1)
        hit = want[pos] == rows
        count = int(lab.sum())
        for p, label in zip(pos[hit], row_labels[hit], strict=True):
            label = int(label)
            where[p] = _Cell(
                feature=f,
                exact=exact,
                value=value,
                label=label,
                count=count,
                expected=n * float(tr.sum()) / max(self.m_, 1),
                share=float(lab[label]) / max(count, 1),
                share_expected=float(
                    (tr[label] + self.smoothing_ * self.prior_[label])
                    / (tr.sum() + self.smoothing_)
                ),
                score=float(cell[label]),
            )

    _fitted_attr: ClassVar[str] = "sorted_"

    def _score(self, batch: Table) -> np.ndarray:
        return self._scan(batch)[0] + tie_break(features32(batch))

    def _explain(self, batch: Table, rows: np.ndarray) -> list[str]:
        order = np.argsort(rows, kind="stable")
        want = rows[order]
        final, where = self._scan(batch, want)
        out: list[str] = [""] * len(rows)
        for i, cell in zip(order, where, strict=True):
            r = rows[i]
            if cell is None or final[r] <= 0.0:
                out[i] = (
                    "no feature value here is both unusually common in this batch and label-pure"
                )
                continue
            name = self.features_[cell.feature]
            label = batch.label_of(cell.label) if cell.label < self.n_slots_ - 1 else "<unseen>"
            raw = batch.raw[r, cell.feature]
            where_text = "is shared by" if cell.exact else "falls in a bin shared by"
            out[i] = (
                f"{name} = {raw:.4g} {where_text} {cell.count} batch rows ({cell.expected:.2g} "
                f"expected from trusted rows), {100 * cell.share:.0f}% labelled {label} "
                f"({100 * cell.share_expected:.0f}% expected)"
            )
        return out
