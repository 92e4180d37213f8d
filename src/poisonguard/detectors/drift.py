"""Batch-level drift: has the label mix or any feature's distribution moved away from the trusted set?

Not a row detector (it is not in ``REGISTRY``): drift is evidence about the
batch as a whole, for people and for gate policies.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

from poisonguard.detectors.base import Table
from poisonguard.errors import param_error

# Proportions below this are floored when computing PSI, so empty bins do not blow it up.
_PSI_FLOOR = 1e-4


@dataclass(frozen=True)
class DriftReport:
    """How far a batch has drifted from the trusted reference.

    Attributes
    ----------
    features : tuple of str
    ks_statistic : ndarray of shape (n_features,)
        Two-sample Kolmogorov-Smirnov distance between batch and trusted
        values of each feature (missing values left out).
    ks_p_value : ndarray of shape (n_features,)
        Its asymptotic p-value.
    psi : ndarray of shape (n_features,)
        Population stability index over deciles of the trusted values.
    label_tv : float or None
        Total-variation distance between batch and trusted label shares
        (labels the reference never had count as one extra class); None
        without labels.
    label_chi2, label_p_value : float or None
        Chi-square goodness-of-fit of the batch's label counts to the trusted
        shares, and its p-value.
    n_reference, n_batch : int
    alpha, psi_threshold, tv_threshold : float
        The thresholds the flags below use.
    """

    features: tuple[str, ...]
    ks_statistic: np.ndarray
    ks_p_value: np.ndarray
    psi: np.ndarray
    label_tv: float | None
    label_chi2: float | None
    label_p_value: float | None
    n_reference: int
    n_batch: int
    alpha: float
    psi_threshold: float
    tv_threshold: float

    @property
    def drifted_features(self) -> tuple[str, ...]:
        """Features whose shift is both significant (Bonferroni over features) and material (PSI)."""
        d = max(len(self.features), 1)
        hit = (self.ks_p_value < self.alpha / d) & (self.psi >= self.psi_threshold)
        return tuple(f for f, h in zip(self.features, hit, strict=True) if h)

    @property
    def label_drifted(self) -> bool:
        """The label mix moved significantly and by at least ``tv_threshold``."""
        if self.label_p_value is None or self.label_tv is None:
            return False
        return self.label_p_value < self.alpha and self.label_tv >= self.tv_threshold

    @property
    def is_drifted(self) -> bool:
        return self.label_drifted or bool(self.drifted_features)

    def summary(self) -> str:
        """A few lines a person can read."""
        lines = [
            f"Batch of {self.n_batch} rows against {self.n_reference} trusted rows: "
            + ("drift found." if self.is_drifted else "no material drift.")
        ]
        if self.label_tv is not None:
            state = "shifted" if self.label_drifted else "stable"
            lines.append(
                f"Labels {state}: total variation {self.label_tv:.3f}, "
                f"chi-square {self.label_chi2:.1f} (p={self.label_p_value:.2g})."
            )
        drifted = self.drifted_features
        if drifted:
            order = np.argsort(-self.psi)
            shown = [self.features[i] for i in order if self.features[i] in drifted][:5]
            parts = [
                f"{f} (PSI {self.psi[self.features.index(f)]:.2f}, "
                f"KS {self.ks_statistic[self.features.index(f)]:.2f})"
                for f in shown
            ]
            more = len(drifted) - len(shown)
            lines.append(
                f"{len(drifted)} of {len(self.features)} features drifted: "
                + ", ".join(parts)
                + (f" and {more} more." if more > 0 else ".")
            )
        else:
            lines.append(f"No feature drifted (largest PSI {np.max(self.psi, initial=0.0):.2f}).")
        return "\n".join(lines)


def _ks(ref: np.ndarray, new: np.ndarray) -> tuple[float, float]:
    """Two-sample KS statistic and asymptotic p-value (1 when a side is empty)."""
    ref, new = np.sort(ref), np.sort(new)
    m, n = len(ref), len(new)
    if m == 0 or n == 0:
        return 0.0, 1.0
    grid = np.concatenate([ref, new])
    d = float(
        np.max(
            np.abs(
                np.searchsorted(ref, grid, side="right") / m
                - np.searchsorted(new, grid, side="right") / n
            )
        )
    )
    return d, _ks_p(d, m, n)


def _ks_p(d: float, m: int, n: int) -> float:
    """The asymptotic p-value of a two-sample KS distance ``d`` between m and n values."""
    en = np.sqrt(m * n / (m + n))
    # Stephens' small-sample correction to the Kolmogorov limit.
    p = float(special.kolmogorov((en + 0.12 + 0.11 / en) * d))
    return min(max(p, 0.0), 1.0)


def _psi(ref: np.ndarray, new: np.ndarray, n_bins: int) -> float:
    if len(ref) == 0 or len(new) == 0:
        return 0.0
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, n_bins + 1)[1:-1]))
    p = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1)
    q = np.bincount(np.searchsorted(edges, new, side="right"), minlength=len(edges) + 1)
    p = np.maximum(p / len(ref), _PSI_FLOOR)
    q = np.maximum(q / len(new), _PSI_FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def batch_drift(
    reference: Table,
    batch: Table,
    *,
    alpha: float = 0.01,
    n_bins: int = 10,
    psi_threshold: float = 0.1,
    tv_threshold: float = 0.05,
) -> DriftReport:
    """Compare a batch's label mix and feature distributions with the trusted reference.

    Parameters
    ----------
    reference, batch : Table
        Features are compared on their raw values (missing values left out); a
        regression target like a feature, named ``"<label> (target)"``.
    alpha : float
        Significance level, in (0, 1); Bonferroni-corrected over features.
    n_bins : int
        Quantile bins of the trusted values for PSI (>= 2).
    psi_threshold : float
        PSI at which a significant feature shift counts as material (>= 0;
        0.1 is the usual "moderate shift").
    tv_threshold : float
        Total variation at which a significant label shift counts (in [0, 1]).

    Returns
    -------
    DriftReport
    """
    owner = "batch_drift()"
    if not (isinstance(alpha, int | float) and 0.0 < alpha < 1.0):
        raise param_error("alpha", owner, "in (0, 1)", alpha)
    if not (isinstance(n_bins, int) and not isinstance(n_bins, bool) and n_bins >= 2):
        raise param_error("n_bins", owner, "an int >= 2", n_bins)
    if not (isinstance(psi_threshold, int | float) and psi_threshold >= 0.0):
        raise param_error("psi_threshold", owner, "a real number >= 0", psi_threshold)
    if not (isinstance(tv_threshold, int | float) and 0.0 <= tv_threshold <= 1.0):
        raise param_error("tv_threshold", owner, "in [0, 1]", tv_threshold)
    counts = DriftCounts(reference, n_bins=n_bins)
    counts.add(batch)
    return counts.report(alpha=alpha, psi_threshold=psi_threshold, tv_threshold=tv_threshold)


class DriftCounts:
    """What ``batch_drift`` reads of a batch, counted a chunk at a time.

    For each feature, the batch's finite values counted against the trusted values
    (at or below, and below, each distinct trusted value: the two-sample KS distance
    is reached at one of those steps) and against the PSI bins; the label counts.
    The counts add over chunks, so ``report`` gives ``batch_drift``'s report on the
    batch whole, to the last bit, in memory set by the reference.

    Parameters
    ----------
    reference : Table
    n_bins : int
        As for ``batch_drift``.
    """

    def __init__(self, reference: Table, *, n_bins: int = 10) -> None:
        self.reference = reference
        columns = [reference.raw[:, f] for f in range(reference.raw.shape[1])]
        self.names = list(reference.features)
        if reference.target is not None:
            columns.append(reference.target)
            self.names.append(f"{reference.label or 'target'} (target)")
        self.trusted = [np.sort(r[np.isfinite(r)]) for r in columns]
        self.steps = [np.unique(r) for r in self.trusted]
        self.edges = [
            np.unique(np.quantile(r, np.linspace(0, 1, n_bins + 1)[1:-1])) if len(r) else r
            for r in self.trusted
        ]
        self.at_or_below = [np.zeros(len(u) + 1, dtype=np.int64) for u in self.steps]
        self.below = [np.zeros(len(u) + 1, dtype=np.int64) for u in self.steps]
        self.binned = [np.zeros(len(e) + 1, dtype=np.int64) for e in self.edges]
        self.finite = np.zeros(len(columns), dtype=np.int64)
        k = reference.n_classes if reference.y is not None else 0
        self.labels = np.zeros(k + 1, dtype=np.int64)
        self.n_rows = 0
        self.labelled = reference.y is not None

    def add(self, batch: Table) -> None:
        """Count one chunk of the batch (encoded like the reference)."""
        columns = [batch.raw[:, f] for f in range(batch.raw.shape[1])]
        if self.reference.target is not None:
            columns.append(batch.target if batch.target is not None else np.zeros(batch.n_rows))
        for f, b in enumerate(columns):
            b = b[np.isfinite(b)]
            self.finite[f] += b.size
            steps = self.steps[f]
            self.at_or_below[f] += np.bincount(
                np.searchsorted(steps, b, "left"), minlength=steps.size + 1
            )
            self.below[f] += np.bincount(
                np.searchsorted(steps, b, "right"), minlength=steps.size + 1
            )
            edges = self.edges[f]
            if len(self.trusted[f]):
                self.binned[f] += np.bincount(
                    np.searchsorted(edges, b, side="right"), minlength=len(edges) + 1
                )
        if self.labelled and batch.y is not None:
            k = self.labels.size - 1
            slot = np.where((batch.y >= 0) & (batch.y < k), batch.y, k)
            self.labels += np.bincount(slot, minlength=k + 1)
        else:
            self.labelled = False
        self.n_rows += batch.n_rows

    def fresh(self) -> DriftCounts:
        """Counts of nothing yet over the same reference (its sorted values shared)."""
        out = copy.copy(self)
        out._clear()
        return out

    def _clear(self) -> None:
        self.at_or_below = [np.zeros_like(c) for c in self.at_or_below]
        self.below = [np.zeros_like(c) for c in self.below]
        self.binned = [np.zeros_like(c) for c in self.binned]
        self.finite = np.zeros_like(self.finite)
        self.labels = np.zeros_like(self.labels)
        self.n_rows = 0
        self.labelled = self.reference.y is not None

    def tally(self) -> dict[str, Any]:
        """The counts alone (a few numbers per trusted value), for ``add_tally`` elsewhere:
        a cluster's worker counts its part of a batch, the judging process adds them up."""
        return {
            "at_or_below": self.at_or_below,
            "below": self.below,
            "binned": self.binned,
            "finite": self.finite,
            "labels": self.labels,
            "n_rows": self.n_rows,
            "labelled": self.labelled,
        }

    def add_tally(self, tally: Mapping[str, Any]) -> None:
        """Add the counts of a part of the batch counted over the same reference (``tally``)."""
        for key in ("at_or_below", "below", "binned"):
            for mine, theirs in zip(getattr(self, key), tally[key], strict=True):
                mine += theirs
        self.finite += tally["finite"]
        self.labels += tally["labels"]
        self.n_rows += int(tally["n_rows"])
        self.labelled = self.labelled and bool(tally["labelled"])

    def _ks(self, f: int) -> tuple[float, float]:
        ref = self.trusted[f]
        m, n = len(ref), int(self.finite[f])
        if m == 0 or n == 0:
            return 0.0, 1.0
        steps = self.steps[f]
        trusted_le = np.searchsorted(ref, steps, side="right")
        # At each trusted value u: the batch's share at or below u, against the trusted's;
        # just below u: the batch's share below u, against the trusted share below u.
        le = np.cumsum(self.at_or_below[f])[:-1]
        lt = np.cumsum(self.below[f])[:-1]
        trusted_lt = np.concatenate([[0], trusted_le[:-1]])
        d = float(
            max(
                np.max(np.abs(trusted_le / m - le / n)),
                np.max(np.abs(trusted_lt / m - lt / n)),
            )
        )
        return d, _ks_p(d, m, n)

    def _psi(self, f: int) -> float:
        ref = self.trusted[f]
        n = int(self.finite[f])
        if len(ref) == 0 or n == 0:
            return 0.0
        edges = self.edges[f]
        p = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1)
        p = np.maximum(p / len(ref), _PSI_FLOOR)
        q = np.maximum(self.binned[f] / n, _PSI_FLOOR)
        return float(np.sum((q - p) * np.log(q / p)))

    def report(
        self, *, alpha: float = 0.01, psi_threshold: float = 0.1, tv_threshold: float = 0.05
    ) -> DriftReport:
        """``batch_drift``'s report on the rows counted (its parameters as there)."""
        d = len(self.trusted)
        ks = np.zeros(d)
        ks_p = np.ones(d)
        psi = np.zeros(d)
        for f in range(d):
            ks[f], ks_p[f] = self._ks(f)
            psi[f] = self._psi(f)
        tv = chi2 = p_label = None
        reference = self.reference
        if reference.y is not None and self.labelled and self.n_rows:
            k = reference.n_classes
            slot = lambda y: np.where((y >= 0) & (y < k), y, k)  # noqa: E731
            ref_counts = np.bincount(slot(reference.y), minlength=k + 1).astype(float)
            new_counts = self.labels.astype(float)
            ref_share = ref_counts / max(ref_counts.sum(), 1.0)
            new_share = new_counts / new_counts.sum()
            tv = float(0.5 * np.abs(new_share - ref_share).sum())
            # Expected counts from add-half smoothed trusted shares: a label the
            # reference never had is surprising, not a division by zero.
            expected_share = (ref_counts + 0.5) / (ref_counts.sum() + 0.5 * (k + 1))
            expected = expected_share * new_counts.sum()
            chi2 = float(np.sum((new_counts - expected) ** 2 / expected))
            dof = max(int(np.sum((ref_counts > 0) | (new_counts > 0))) - 1, 1)
            p_label = float(special.chdtrc(dof, chi2))
        return DriftReport(
            features=tuple(self.names),
            ks_statistic=ks,
            ks_p_value=ks_p,
            psi=psi,
            label_tv=tv,
            label_chi2=chi2,
            label_p_value=p_label,
            n_reference=reference.n_rows,
            n_batch=self.n_rows,
            alpha=float(alpha),
            psi_threshold=float(psi_threshold),
            tv_threshold=float(tv_threshold),
        )
