"""Shared plumbing for detector classes: parameters, validation, clean inputs."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

import numpy as np

from poisonguard.detectors._kernels import _row_fraction
from poisonguard.detectors.base import Table
from poisonguard.errors import BatchError, ConfigError, ParamError, param_error

#: Scores at or above this are reserved for rows whose label the trusted
#: reference never had: label detectors give them ``UNSEEN_SCORE + c`` with
#: ``0 <= c <= 1``, above every seen label's score.
UNSEEN_SCORE = 1.0e6
# Seen labels' -log p scores are capped here so UNSEEN_SCORE stays on top.
_SEEN_CAP = 1.0e5


class DetectorBase:
    """Parameter handling shared by every detector (scikit-learn style)."""

    name: ClassVar[str]
    needs_label: ClassVar[bool]
    #: The tasks a detector judges: label-free ones judge rows whatever the label is.
    tasks: ClassVar[tuple[str, ...]] = ("classification", "regression")

    @classmethod
    def applies_to(cls, reference: Table) -> bool:
        """Whether the detector has anything to look at in tables like ``reference``
        (a guard leaves out the ones that do not, rather than let them dilute the rest)."""
        return True

    #: Scores in nats of surprise (``-log`` of a probability under a stated null)
    #: set this to 1: the decision's tail past the calibration maximum then never
    #: decays faster than ``exp(-score)``. None: the tail is fitted alone.
    tail_scale: ClassVar[float | None] = None
    #: Scores on a log scale whose tail is taken as exponential set this to 0:
    #: the decision then fixes the generalized Pareto shape at 0 and fits only
    #: the scale. None: the shape is estimated from the calibration scores.
    tail_shape: ClassVar[float | None] = None
    #: With ``tail_shape = 0``, a confidence level in (0, 1): the tail's scale is
    #: then this upper confidence bound of the exponential scale the calibration
    #: exceedances estimate, not the estimate itself. None: the estimate.
    tail_confidence: ClassVar[float | None] = None
    #: The detector's share of each row's combined p-value, relative to the
    #: other active detectors (the Cauchy combination's weights, normalised).
    weight: ClassVar[float] = 1.0
    #: Detectors that read the batch itself as context (copies, triggers, label
    #: agreement among batch rows) set this: their calibration rows are scored in
    #: folds, not at the batch's size, so the excess rule leaves them out.
    within_batch: ClassVar[bool] = False
    #: Within-batch detectors whose evidence adds up over a source's batches (a trigger
    #: sent a few rows at a time) set this: given a window of the source's recent rows,
    #: ``Guard.score`` scores the batch stacked on it (docs/decision.md, section 1).
    windowed: ClassVar[bool] = False

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY]

    @classmethod
    def from_params(cls, params: Mapping[str, Any], *, key: str | None = None) -> Self:
        """The detector with ``params``, checked: unknown names first, then every value.

        The one way configured detectors are built: config loading checks the
        ``[detection.params.NAME]`` tables with it, and scans build their
        detectors with it. Values that can only be judged against data are
        left to ``fit``.

        Parameters
        ----------
        params : mapping
            Constructor keyword parameters.
        key : str, optional
            Where ``params`` were written, e.g. ``"pg.toml: detection.params.knn_label"``;
            messages then name ``KEY.PARAM``. Otherwise they name the parameter of the class.

        Raises
        ------
        ConfigError
            Naming the first unknown parameter (and the known ones), or the first
            value out of range.
        """
        known = sorted(cls._param_names())
        for param in params:
            if param not in known:
                expected = ", ".join(known)
                if key is not None:
                    raise ConfigError(
                        f"{key}.{param}: unknown parameter; expected one of {expected}"
                    )
                raise ConfigError(
                    f"{cls.__name__} has no parameter {param!r}; expected one of {expected}"
                )
        detector = cls(**params)
        try:
            detector._validate_params()
        except ParamError as exc:
            if key is None:
                raise
            raise exc.at_key(f"{key}.{exc.param}") from None
        return detector

    def fit(self, reference: Table) -> Self:
        """Check the parameters, then learn from the trusted ``reference``; see ``Detector``."""
        self._validate_params()
        return self._fit(reference)

    def _validate_params(self) -> None:
        """Check every constructor parameter that can be judged without data."""
        raise NotImplementedError

    def _fit(self, reference: Table) -> Self:
        raise NotImplementedError

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters, as given."""
        return {name: getattr(self, name) for name in self._param_names()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    #: The attribute ``fit`` sets; until it exists the detector is not fitted.
    _fitted_attr: ClassVar[str]

    def score(self, batch: Table) -> np.ndarray:
        """Scores of ``batch``'s rows, ndarray of shape (n_rows,); see ``Detector``."""
        self._check_batch(batch)
        if batch.n_rows == 0:
            return np.zeros(0)
        return self._score(batch)

    def _check_batch(self, batch: Table) -> None:
        """Fitted, and the batch carries the label this detector reads."""
        self._check_fitted(self._fitted_attr)
        if self.needs_label:
            (targets_of if self.tasks == ("regression",) else labels_of)(batch, self.name, "batch")

    def explain(self, batch: Table, rows: np.ndarray) -> list[str]:
        """One sentence per row in ``rows`` (positions in ``batch``); see ``Detector``."""
        self._check_fitted(self._fitted_attr)
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return []
        return self._explain(batch, rows)

    def _score(self, batch: Table) -> np.ndarray:
        raise NotImplementedError

    def _explain(self, batch: Table, rows: np.ndarray) -> list[str]:
        raise NotImplementedError

    # -- validation helpers ------------------------------------------------------

    def _owner(self) -> str:
        return type(self).__name__

    def _check_int(self, name: str, low: int, high: int | None = None) -> int:
        value = getattr(self, name)
        ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
        ok = ok and value >= low and (high is None or value <= high)
        if not ok:
            rule = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
            raise param_error(name, self._owner(), rule, value)
        return int(value)

    def _check_real(
        self, name: str, low: float, high: float | None = None, *, low_open: bool = False
    ) -> float:
        value = getattr(self, name)
        ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(
            value, bool
        )
        if ok:
            v = float(value)
            ok = math.isfinite(v) and (v > low if low_open else v >= low)
            ok = ok and (high is None or v <= high)
        if not ok:
            lo = "(" if low_open else "["
            rule = (
                f"a real number {'>' if low_open else '>='} {low}"
                if high is None
                else f"a real number in {lo}{low}, {high}]"
            )
            raise param_error(name, self._owner(), rule, value)
        return float(value)

    def _check_choice(self, name: str, choices: tuple[str, ...]) -> str:
        value = getattr(self, name)
        if value not in choices:
            raise param_error(name, self._owner(), f"one of {list(choices)}", value)
        return str(value)

    def _check_seed(self, name: str = "random_state") -> int:
        value = getattr(self, name)
        ok = isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= 0
        if not ok:
            raise param_error(name, self._owner(), "a non-negative int", value)
        return int(value)

    def _check_fitted(self, attr: str) -> None:
        if not hasattr(self, attr):
            raise ConfigError(f"{self._owner()} is not fitted yet: call fit(reference) first.")


class WithinBatchBase(DetectorBase):
    """What detectors that read the batch share: the two phases of ``WithinBatchDetector``.

    Subclasses implement ``_summarize(batch, positions, prior)``, ``_merge(parts)``
    (at least one part), ``_score_with(batch, summary, positions)`` and
    ``_explain_with(batch, rows, summary, positions)``.
    """

    within_batch: ClassVar[bool] = True
    #: How many times the summary reads the batch (``WithinBatchDetector``).
    summary_passes: ClassVar[int] = 1

    def summarize(
        self, batch: Table, *, positions: np.ndarray | None = None, prior: Any = None
    ) -> Any:
        """The summary of a chunk's rows (phase 1), given the previous pass's summary."""
        self._check_batch(batch)
        return self._summarize(batch, row_positions(batch, positions, self._owner()), prior)

    def merge(self, parts: Sequence[Any]) -> Any:
        """One summary of every row the parts summarise (in any order and grouping)."""
        self._check_fitted(self._fitted_attr)
        if not parts:
            raise ValueError(f"{self._owner()}.merge() needs at least one summary")
        return self._merge(list(parts))

    def summary_of(self, batch: Table, positions: np.ndarray | None = None) -> Any:
        """The summary of ``batch`` as a whole batch: every pass over the one table."""
        summary = None
        for _ in range(self.summary_passes):
            summary = self.merge([self.summarize(batch, positions=positions, prior=summary)])
        return summary

    def score(
        self, batch: Table, *, summary: Any = None, positions: np.ndarray | None = None
    ) -> np.ndarray:
        """Scores of ``batch``'s rows against ``summary`` (default: ``batch``'s own)."""
        self._check_batch(batch)
        if batch.n_rows == 0:
            return np.zeros(0)
        positions = row_positions(batch, positions, self._owner())
        if summary is None:
            summary = self.summary_of(batch, positions)
        return self._score_with(batch, summary, positions)

    def explain(
        self,
        batch: Table,
        rows: np.ndarray,
        *,
        summary: Any = None,
        positions: np.ndarray | None = None,
    ) -> list[str]:
        """One sentence per row in ``rows`` (positions in ``batch``), against ``summary``."""
        self._check_fitted(self._fitted_attr)
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return []
        positions = row_positions(batch, positions, self._owner())
        if summary is None:
            summary = self.summary_of(batch, positions)
        return self._explain_with(batch, rows, summary, positions)

    def _summarize(self, batch: Table, positions: np.ndarray, prior: Any) -> Any:
        raise NotImplementedError

    def _merge(self, parts: list[Any]) -> Any:
        raise NotImplementedError

    def _score_with(self, batch: Table, summary: Any, positions: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _explain_with(
        self, batch: Table, rows: np.ndarray, summary: Any, positions: np.ndarray
    ) -> list[str]:
        raise NotImplementedError


def row_positions(batch: Table, positions: np.ndarray | None, owner: str) -> np.ndarray:
    """``positions`` checked against ``batch`` (default ``0 .. n_rows - 1``), as int64."""
    if positions is None:
        return np.arange(batch.n_rows, dtype=np.int64)
    out = np.asarray(positions, dtype=np.int64)
    if out.shape != (batch.n_rows,):
        rule = f"an array of shape ({batch.n_rows},): one position per row of the batch"
        raise param_error("positions", owner, rule, out.shape)
    return out


_KEY_MIX = 0x9E3779B97F4A7C15


def keyed_hash(positions: np.ndarray, key: int) -> np.ndarray:
    """A pseudo-random 64-bit value per row position, fixed by ``key`` (splitmix64).

    A bijection of the position for each key, so no two rows tie: the rows with the
    smallest values are a uniform sample that any chunking of the batch finds alike.

    Returns
    -------
    ndarray of shape (n_rows,), uint64
    """
    offset = np.uint64((int(key) * _KEY_MIX + 1) % 2**64)
    z = np.asarray(positions, dtype=np.int64).view(np.uint64) + offset
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def labels_of(table: Table, who: str, source: str) -> np.ndarray:
    """The label codes of ``table``; a table without labels is rejected for ``who``.

    Returns
    -------
    ndarray of shape (n_rows,), int64
    """
    if table.y is None:
        raise BatchError(source, f"detector {who!r} needs a label column, but there is none")
    return np.ascontiguousarray(table.y, dtype=np.int64)


def targets_of(table: Table, who: str, source: str) -> np.ndarray:
    """The regression targets of ``table``; a table without them is rejected for ``who``.

    Returns
    -------
    ndarray of shape (n_rows,), float64 (NaN where missing)
    """
    if table.target is None:
        raise BatchError(
            source,
            f"detector {who!r} needs a regression target (a numeric label), but there is none",
        )
    return np.ascontiguousarray(table.target, dtype=np.float64)


def class_prior(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Add-one smoothed class frequencies: every known class gets a positive prior.

    Returns
    -------
    ndarray of shape (n_classes,), float64
    """
    seen = y[(y >= 0) & (y < n_classes)]
    counts = np.bincount(seen, minlength=n_classes).astype(np.float64)
    return (counts + 1.0) / (counts.sum() + n_classes)


def label_surprise(p_given: np.ndarray, p_best: np.ndarray, unseen: np.ndarray) -> np.ndarray:
    """``-log p(given label)``, with unseen labels placed above every seen one.

    Parameters
    ----------
    p_given : ndarray of shape (n_rows,)
        Probability of each row's own label (ignored where ``unseen``).
    p_best : ndarray of shape (n_rows,)
        Probability of the most likely label: for unseen labels, a more
        confident neighbourhood or model makes the row rank higher.
    unseen : ndarray of shape (n_rows,), bool

    Returns
    -------
    ndarray of shape (n_rows,), float64
    """
    with np.errstate(divide="ignore"):
        s = -np.log(np.clip(p_given, 0.0, 1.0))
    s = np.minimum(np.nan_to_num(s, nan=_SEEN_CAP, posinf=_SEEN_CAP), _SEEN_CAP)
    s = np.maximum(s, 0.0)
    return np.where(unseen, UNSEEN_SCORE + np.clip(p_best, 0.0, 1.0), s)


#: Ceiling of the tie-breaking jitter: far below any score difference that means anything.
TIE_JITTER = 1e-9


def tie_break(X: np.ndarray) -> np.ndarray:
    """A deterministic pseudo-uniform value in ``[0, TIE_JITTER)`` per row, from its features.

    Added to scores that are mostly exactly tied (e.g. 0 for every row with
    no copies), it turns the conformal p-value of a tied row from 1 into a
    uniform draw over the tie's range, which is what a randomised conformal
    p-value does, while identical rows still get identical scores.

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_features)

    Returns
    -------
    ndarray of shape (n_rows,), float64
    """
    # Fixed pseudo-random weights: the fractional part of a large random
    # projection is close to uniform and costs one pass over the rows.
    w = np.asarray(np.random.default_rng(0x5EED).uniform(1e3, 1e4, size=X.shape[1]))
    return _row_fraction(np.ascontiguousarray(X), w) * TIE_JITTER


def subsample(n_rows: int, max_rows: int, labels: np.ndarray | None, seed: int, min_per_class: int):
    """Sorted positions of a deterministic subsample of at most about ``max_rows`` rows.

    With labels, the sample is stratified: each label keeps its share, and at
    least ``min_per_class`` rows (or all it has), so small classes keep
    neighbours.

    Returns
    -------
    ndarray of shape (n_kept,), int64
    """
    if n_rows <= max_rows:
        return np.arange(n_rows, dtype=np.int64)
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(n_rows, size=max_rows, replace=False)).astype(np.int64)
    values, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = np.maximum(np.round(counts * (max_rows / n_rows)).astype(np.int64), 1)
    quota = np.minimum(np.maximum(quota, min(min_per_class, max_rows)), counts)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    kept = []
    for c in range(len(values)):
        members = order[starts[c] : starts[c] + counts[c]]
        kept.append(rng.permutation(members)[: quota[c]])
    return np.sort(np.concatenate(kept)).astype(np.int64)


@functools.cache
def _pools() -> Any:
    """threadpoolctl's view of the loaded BLAS and OpenMP libraries (finding them takes ~10 ms)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def one_thread() -> Any:
    """A context in which BLAS and OpenMP calls (scikit-learn's models) run on one thread.

    These fits are small; threaded BLAS stalls badly when another process holds one
    of few cores, and gradient boosting's OpenMP threads next to numba's were
    seen here taking minutes for fits that take a fraction of a second on one thread.
    """
    return _pools().limit(limits=1)


#: Most trusted rows two candidate models are compared on (``better_regressor``).
SELECTION_ROWS = 1000


def better_regressor(first: Any, second: Any, X: np.ndarray, y: np.ndarray, seed: int) -> Any:
    """Of two unfitted scikit-learn regressors, the one with the smaller 3-fold out-of-fold
    absolute error on a sample of at most ``SELECTION_ROWS`` trusted rows; ``first`` on ties
    and when there are too few rows to tell (fewer than 30)."""
    from sklearn.base import clone
    from sklearn.model_selection import KFold

    if len(y) < 30:
        return first
    rows = subsample(len(y), SELECTION_ROWS, None, seed, 1)
    Xs, ys = X[rows], y[rows]
    folds = list(KFold(3, shuffle=True, random_state=seed).split(Xs))
    errors = [
        sum(
            float(np.abs(clone(est).fit(Xs[a], ys[a]).predict(Xs[b]) - ys[b]).sum())
            for a, b in folds
        )
        for est in (first, second)
    ]
    return second if errors[1] < errors[0] else first
