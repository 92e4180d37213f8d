"""The detector contract and the numeric table every detector sees.

A detector is fitted on trusted rows and scores new ones::

    det = REGISTRY["knn_label"]().fit(reference)   # reference: Table
    s = det.score(batch)                           # ndarray of shape (batch.n_rows,)
    det.explain(batch, rows)                       # one reason string per row in ``rows``

Higher scores are more suspicious. Scores need not be on any common scale: the
decision step turns each detector's scores into conformal p-values against
trusted calibration rows scored the same way. ``score`` must therefore treat
its ``batch`` argument as a whole batch (within-batch detectors may look at the
other rows of the same batch) and must be deterministic for a fitted detector.

Detectors with ``needs_label = True`` use ``Table.y``; they are skipped when a
scan has no label column.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import numpy as np
import pandas as pd

from poisonguard.detectors._kernels import _finite_within, _standardize
from poisonguard.errors import BatchError, ConfigError

#: Label code given to a label value the trusted reference never contained.
UNSEEN_LABEL = -1
# Features are float32 on the scaled axis; this bound keeps squared
# distances finite in float32 (32 features * (1e15)^2 < 3.4e38).
_FEATURE_BOUND = 1.0e15


def fingerprint(*arrays: np.ndarray | None) -> str:
    """A digest of the shapes, dtypes and bytes of the arrays (None allowed)."""
    h = hashlib.sha1(usedforsecurity=False)
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.data)
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class Table:
    """Rows as detectors see them.

    Attributes
    ----------
    X : ndarray of shape (n_rows, n_features), float32
        Features standardised with the reference's mean and standard deviation
        (the reference is trusted, so it needs no robust estimate; on digits,
        10-NN accuracy is 0.94 this way against 0.87 with median/IQR), missing
        values replaced by the reference mean (0 after scaling).
    raw : ndarray of shape (n_rows, n_features), float64
        The same features as they arrived (NaN kept), for reasons people read.
    y : ndarray of shape (n_rows,), int64, or None
        Label codes into ``classes``; ``UNSEEN_LABEL`` for a value the
        reference never had. None when the scan has no label.
    features : tuple of str
        Feature names, in column order.
    classes : tuple
        Label values of the reference, indexed by code.
    """

    X: np.ndarray
    raw: np.ndarray
    y: np.ndarray | None
    features: tuple[str, ...]
    classes: tuple[Any, ...] = field(default=())

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def label_of(self, code: int) -> Any:
        """The label value behind a code, for reasons."""
        return "<unseen>" if code == UNSEEN_LABEL else self.classes[code]

    @cached_property
    def x32(self) -> np.ndarray:
        """``X`` as C-contiguous float32 with every value finite and bounded (made once).

        Returns
        -------
        ndarray of shape (n_rows, n_features), float32
        """
        X = np.ascontiguousarray(self.X, dtype=np.float32)
        if X.size and not _finite_within(X, _FEATURE_BOUND):
            X = np.nan_to_num(X, nan=0.0, posinf=_FEATURE_BOUND, neginf=-_FEATURE_BOUND)
            X = np.clip(X, -_FEATURE_BOUND, _FEATURE_BOUND).astype(np.float32)
        return X

    @cached_property
    def key(self) -> str:
        """``fingerprint(x32)``, hashed once: the neighbour search memoises on it."""
        return fingerprint(self.x32)

    def take(self, rows: np.ndarray) -> Table:
        """The sub-table of the given row positions (used for cross-fitting)."""
        y = None if self.y is None else self.y[rows]
        return Table(self.X[rows], self.raw[rows], y, self.features, self.classes)


@dataclass(frozen=True, eq=False)
class Encoder:
    """Turns frames into ``Table``s, with scaling and label codes learnt from the reference."""

    features: tuple[str, ...]
    label: str | None
    center_: np.ndarray
    scale_: np.ndarray
    classes_: tuple[Any, ...]

    @classmethod
    def fit(cls, frame: pd.DataFrame, features: list[str], label: str | None) -> Encoder:
        raw = _numeric(frame, features, "reference")
        with np.errstate(all="ignore"):
            center = np.nanmean(raw, axis=0) if len(raw) else np.zeros(raw.shape[1])
            scale = np.nanstd(raw, axis=0) if len(raw) else np.ones(raw.shape[1])
        center = np.where(np.isfinite(center), center, 0.0)
        # Constant features carry no distance: scale 1 keeps them at 0.
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        classes: tuple[Any, ...] = ()
        if label is not None:
            values = frame[label].dropna().unique().tolist()
            classes = tuple(sorted(values, key=lambda v: (str(type(v)), v)))
        return cls(tuple(features), label, center, scale, classes)

    def transform(self, frame: pd.DataFrame, source: str = "batch") -> Table:
        raw = _numeric(frame, list(self.features), source)
        X = _standardize(raw, self.center_, self.scale_)
        y = None
        if self.label is not None and self.label in frame.columns:
            y = _label_codes(frame[self.label], self.classes_)
        return Table(X, raw, y, self.features, self.classes_)


def check_class_label(values: pd.Series, *, label: str, source: str) -> None:
    """Refuse a label that looks like a regression target: floats not all whole numbers.

    poisonguard judges class labels; a price or a temperature would otherwise be
    taken as hundreds of classes with a row or two each. Whole-number floats
    (1.0, 2.0: an int column read from a CSV with a missing cell) and strings,
    ints and bools stay class labels.

    Parameters
    ----------
    values : Series
        The label column.
    label : str
        Its name, for the message.
    source : str
        The file (or other name) it comes from, for the message.

    Raises
    ------
    ConfigError
        One line naming ``source``, the label and how many distinct
        non-integer values it holds.
    """
    values = values.dropna()
    if pd.api.types.is_float_dtype(values.dtype):
        x = values.to_numpy(dtype=np.float64)
    elif pd.api.types.is_object_dtype(values.dtype) or isinstance(
        values.dtype, pd.CategoricalDtype
    ):
        floats = [v for v in values.tolist() if isinstance(v, float | np.floating)]
        x = np.asarray(floats, dtype=np.float64)
    else:
        return
    with np.errstate(invalid="ignore"):
        whole = np.isfinite(x) & (x == np.round(x))
    n = int(np.unique(x[~whole]).size)
    if n:
        raise ConfigError(
            f"{source}: label {label!r} holds {n} distinct non-integer value{'s' * (n != 1)}, "
            "so it looks like a regression target; poisonguard supports class labels only for now"
        )


def _label_codes(values: pd.Series, classes: tuple[Any, ...]) -> np.ndarray:
    """Codes of ``values`` into ``classes``; ``UNSEEN_LABEL`` for anything else (and missing)."""
    try:
        codes = pd.Index(list(classes), dtype=object).get_indexer(values.astype(object))
        if not (codes < 0).any():
            return codes.astype(np.int64)
    except (TypeError, ValueError):
        pass
    # Slow path, exact for mixed types and values that compare equal across types.
    lookup = {v: i for i, v in enumerate(classes)}
    return np.fromiter(
        (lookup.get(v, UNSEEN_LABEL) for v in values.tolist()), dtype=np.int64, count=len(values)
    )


def _numeric(frame: pd.DataFrame, features: list[str], source: str) -> np.ndarray:
    missing = [c for c in features if c not in frame.columns]
    if missing:
        raise BatchError(
            source, f"missing feature column {missing[0]!r} (expected numeric)", column=missing[0]
        )
    if all(pd.api.types.is_numeric_dtype(frame[c]) for c in features):
        return frame[features].to_numpy(dtype=np.float64, na_value=np.nan)
    out = np.empty((len(frame), len(features)), dtype=np.float64)
    for j, col in enumerate(features):
        try:
            out[:, j] = pd.to_numeric(frame[col], errors="raise").to_numpy(
                dtype=np.float64, na_value=np.nan
            )
        except (TypeError, ValueError) as exc:
            raise BatchError(
                source,
                f"column {col!r} must be numeric, found {frame[col].dtype} ({exc})",
                column=col,
            ) from exc
    return out


@runtime_checkable
class Detector(Protocol):
    """Scores rows against a trusted reference; higher = more suspicious.

    ``__init__`` only stores keyword-only parameters. ``from_params`` builds a
    detector and checks its parameters without data (unknown names, then
    values), so a config is judged when it loads; ``fit`` checks them again
    (a detector built directly is checked too), then learns; learnt state ends
    in ``_``. Checks that need the data stay in ``fit``. ``score`` returns a float64 array of
    shape ``(batch.n_rows,)`` with no NaN. ``explain`` returns one short
    sentence per requested row saying what this detector saw, e.g.
    ``"label 3, but 9 of its 10 nearest trusted rows are 5"``.
    """

    name: ClassVar[str]
    needs_label: ClassVar[bool]

    @classmethod
    def from_params(cls, params: Mapping[str, Any], *, key: str | None = None) -> Self: ...

    def fit(self, reference: Table) -> Self: ...

    def score(self, batch: Table) -> np.ndarray: ...

    def explain(self, batch: Table, rows: np.ndarray) -> list[str]: ...
