"""Regression label detectors: rows whose numeric target disagrees with what their features say.

``knn_residual`` asks the nearest *trusted* rows (a cluster of shifted targets
cannot vouch for itself), ``model_residual`` a gradient-boosting model fitted on
the trusted rows. Both score how far a row's target lies from what the trusted
rows say, on the scale of the trusted targets' spread; the decision calibrates
them against trusted rows like every other score.
"""

from __future__ import annotations

from typing import ClassVar, Self

import numpy as np

from poisonguard.detectors._common import (
    UNSEEN_SCORE,
    DetectorBase,
    better_regressor,
    one_thread,
    subsample,
    targets_of,
)
from poisonguard.detectors._neighbours import SAMPLE_ROWS, search
from poisonguard.detectors.base import Table, fingerprint, fmt_number
from poisonguard.errors import BatchError

#: A spread below this share of the trusted targets' robust spread counts as this share:
#: ten neighbours with one target do not make every other target infinitely surprising.
_MIN_LOCAL_SPREAD = 0.1


def robust_spread(values: np.ndarray) -> float:
    """A robust standard deviation (MAD x 1.4826, else IQR / 1.349, else std); > 0."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return 1.0
    mad = 1.4826 * float(np.median(np.abs(v - np.median(v))))
    if mad > 0:
        return mad
    q1, q3 = np.percentile(v, [25, 75])
    if q3 > q1:
        return float(q3 - q1) / 1.349
    sd = float(np.std(v))
    return sd if sd > 0 else 1.0


#: A positive target whose trusted values are this skewed is compared on a log scale.
_LOG_SKEW = 1.0


def log_scale(t: np.ndarray) -> bool:
    """True when trusted targets are positive and right-skewed (prices, wages, counts):
    residuals are then taken on their log, where a doubled price is as far from its
    neighbours whether it is cheap or dear."""
    v = t[np.isfinite(t)]
    if v.size < 3 or v.min() <= 0:
        return False
    sd = v.std()
    return bool(sd > 0 and float(np.mean(((v - v.mean()) / sd) ** 3)) > _LOG_SKEW)


def _z(t: np.ndarray, log: bool) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.log(t) if log else t


def _known_targets(reference: Table, who: str) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``reference`` with a target, and those targets."""
    t = targets_of(reference, who, "reference")
    rows = np.flatnonzero(np.isfinite(t))
    if rows.size < 2:
        raise BatchError("reference", f"detector {who!r} needs at least 2 trusted targets")
    return rows, t[rows]


class KnnResidualDetector(DetectorBase):
    """How far a row's target lies from its nearest trusted rows' targets.

    Score: ``log1p(|t - m| / s)``, with ``m`` the median target of the
    ``n_neighbors`` nearest trusted rows and ``s`` their spread (a robust
    standard deviation, floored at a tenth of the trusted targets' spread).
    Rows with no target score above every scored row.

    Parameters
    ----------
    n_neighbors : int
        Trusted neighbours asked (>= 2).
    max_reference : int
        Most trusted rows searched (>= 2). The same value, seed and
        ``n_neighbors`` as ``knn_distance`` share one neighbour search.
    random_state : int
    """

    name: ClassVar[str] = "knn_residual"
    needs_label: ClassVar[bool] = True
    tasks: ClassVar[tuple[str, ...]] = ("regression",)
    tail_shape: ClassVar[float | None] = 0.0
    _fitted_attr: ClassVar[str] = "t_"

    def __init__(
        self, *, n_neighbors: int = 10, max_reference: int = SAMPLE_ROWS, random_state: int = 0
    ):
        self.n_neighbors = n_neighbors
        self.max_reference = max_reference
        self.random_state = random_state

    def _validate_params(self) -> None:
        self._check_int("n_neighbors", 2)
        self._check_int("max_reference", 2)
        self._check_seed()

    def _fit(self, reference: Table) -> Self:
        rows, t = _known_targets(reference, self.name)
        k = int(self.n_neighbors)
        keep = subsample(rows.size, int(self.max_reference), None, int(self.random_state), k + 1)
        self.R_ = np.ascontiguousarray(reference.x32[rows[keep]])
        self.log_ = log_scale(t)
        self.t_ = t[keep]
        self.z_ = _z(self.t_, self.log_)
        self.k_ = min(k, len(keep))
        self.r_key_ = fingerprint(self.R_, np.full(len(keep), -1, np.int64))
        self.spread_ = robust_spread(_z(t, self.log_))
        return self

    def _local(self, batch: Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Each row's neighbour median, spread, lowest and highest neighbour target."""
        r_lab = np.full(len(self.t_), -1, np.int64)
        nb = search(batch.x32, self.R_, self.k_, r_lab=r_lab, r_key=self.r_key_, q_key=batch.key)
        found = nb.index >= 0
        Z = np.where(found, self.z_[np.maximum(nb.index, 0)], np.nan)
        T = np.where(found, self.t_[np.maximum(nb.index, 0)], np.nan)
        with np.errstate(all="ignore"):
            median = np.nanmedian(Z, axis=1)
            q1, q3 = np.nanpercentile(Z, [25, 75], axis=1)
            low, high = np.nanmin(T, axis=1), np.nanmax(T, axis=1)
        spread = np.maximum((q3 - q1) / 1.349, _MIN_LOCAL_SPREAD * self.spread_)
        return median, spread, low, high

    def _score(self, batch: Table) -> np.ndarray:
        z = _z(targets_of(batch, self.name, "batch"), self.log_)
        median, spread, _, _ = self._local(batch)
        with np.errstate(all="ignore"):
            s = np.log1p(np.abs(z - median) / spread)
        return np.where(np.isfinite(s), np.minimum(s, UNSEEN_SCORE - 1.0), UNSEEN_SCORE)

    def _explain(self, batch: Table, rows: np.ndarray) -> list[str]:
        t = targets_of(batch, self.name, "batch")[rows]
        median, _, low, high = (a[rows] for a in self._local(batch))
        if self.log_:
            median = np.exp(median)
        name = batch.label or "target"
        out = []
        for ti, mi, lo, hi in zip(
            t.tolist(), median.tolist(), low.tolist(), high.tolist(), strict=True
        ):
            if not np.isfinite(ti):
                out.append(f"{name} is missing")
                continue
            out.append(
                f"{name} {fmt_number(ti)}, but its {self.k_} nearest trusted rows have "
                f"{fmt_number(lo)} to {fmt_number(hi)} (median {fmt_number(mi)})"
            )
        return out


class ModelResidualDetector(DetectorBase):
    """How far a row's target lies from what a model fitted on trusted rows predicts.

    Score: ``log1p(|t - f(x)| / s)`` with ``f`` a gradient-boosting regressor
    (scikit-learn's ``HistGradientBoostingRegressor``) fitted on the trusted
    rows and ``s`` the trusted targets' robust spread. Batch rows are
    out-of-sample by construction, and the calibration rows are scored by
    models fitted without them, so the scores compare like with like.

    Parameters
    ----------
    max_iter : int
        Boosting iterations (>= 1).
    max_reference : int
        Most trusted rows fitted on (>= 10).
    random_state : int
    """

    name: ClassVar[str] = "model_residual"
    needs_label: ClassVar[bool] = True
    tasks: ClassVar[tuple[str, ...]] = ("regression",)
    tail_shape: ClassVar[float | None] = 0.0
    _fitted_attr: ClassVar[str] = "model_"

    def __init__(self, *, max_iter: int = 100, max_reference: int = 5000, random_state: int = 0):
        self.max_iter = max_iter
        self.max_reference = max_reference
        self.random_state = random_state

    def _validate_params(self) -> None:
        self._check_int("max_iter", 1)
        self._check_int("max_reference", 10)
        self._check_seed()

    def _fit(self, reference: Table) -> Self:
        from sklearn.ensemble import HistGradientBoostingRegressor

        rows, t = _known_targets(reference, self.name)
        keep = subsample(rows.size, int(self.max_reference), None, int(self.random_state), 1)
        from sklearn.linear_model import RidgeCV

        boosted = HistGradientBoostingRegressor(
            max_iter=int(self.max_iter),
            early_stopping=False,
            min_samples_leaf=max(5, min(20, len(keep) // 20)),
            random_state=int(self.random_state),
        )
        linear = RidgeCV(alphas=np.logspace(-3, 3, 13))
        self.log_ = log_scale(t)
        z = _z(t, self.log_)
        X, zk = reference.x32[rows[keep]], z[keep]
        with one_thread():
            self.model_ = better_regressor(boosted, linear, X, zk, int(self.random_state)).fit(
                X, zk
            )
        self.spread_ = robust_spread(z)
        return self

    def _predict(self, batch: Table) -> np.ndarray:
        """The model's prediction on the log scale where the target is compared on it."""
        with one_thread():
            # float64, so that a row is predicted alike in a batch, a chunk or alone
            # (float32 products round differently with the number of rows).
            X = batch.x32.astype(np.float64)
            return np.asarray(self.model_.predict(X), dtype=np.float64)

    def _score(self, batch: Table) -> np.ndarray:
        z = _z(targets_of(batch, self.name, "batch"), self.log_)
        with np.errstate(all="ignore"):
            s = np.log1p(np.abs(z - self._predict(batch)) / self.spread_)
        return np.where(np.isfinite(s), np.minimum(s, UNSEEN_SCORE - 1.0), UNSEEN_SCORE)

    def _explain(self, batch: Table, rows: np.ndarray) -> list[str]:
        sub = batch.take(rows)
        t = targets_of(sub, self.name, "batch")
        z_hat = self._predict(sub)
        predicted = np.exp(z_hat) if self.log_ else z_hat
        name = batch.label or "target"
        out = []
        for ti, pi in zip(t.tolist(), predicted.tolist(), strict=True):
            if not np.isfinite(ti):
                out.append(f"{name} is missing")
                continue
            if self.log_ and ti <= 0:
                away = "where every trusted value is positive"
            else:
                zi, zp = _z(np.array([ti, pi]), self.log_)
                away = f"{abs(zi - zp) / self.spread_:.1f} robust sd away"
            out.append(
                f"{name} {fmt_number(ti)}, but a model of the trusted rows predicts {fmt_number(pi)} ({away})"
            )
        return out
