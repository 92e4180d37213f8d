"""Plant known poison in a batch, so a gate can be measured against it.

Used by the tests, the demo and the benchmarks. :func:`plant` takes a clean
batch and returns a poisoned copy together with the ground truth::

    attack = plant(batch, label="target", kind="backdoor", rate=0.1, random_state=0)
    attack.frame        # the poisoned batch, same columns and dtypes, fresh RangeIndex
    attack.is_poison    # ndarray of shape (len(batch),), bool; exactly round(0.1 * len(batch)) True

The output always has as many rows as the input. Flip attacks relabel existing
rows in place; injection attacks overwrite randomly chosen rows with injected
ones (keeping the replaced row's non-feature columns, such as an id, so they
stay valid). Every row that is not poison is left exactly as it was.

The attacker's view of the data
-------------------------------
The attacker may study ``reference`` (the trusted set; the batch itself when
none is given). Features are put on a robust scale learnt from it: centred on
the median and divided by IQR / 1.349 (the standard deviation for normal data),
falling back to the standard deviation and then to 1 for constant features;
missing values count as the median. A feature whose reference values are all
whole numbers (or whose dtype is integer) receives whole-number injected values,
because fractional values there would give an attack away to any schema check.

Kinds
-----
random_flip
    Random rows get a different class, drawn uniformly.
clustered_flip
    A random anchor row is drawn (from a class with enough rows, where there is
    one) and its nearest neighbours *of the same class* are relabelled, all to the
    other class whose centroid is nearest the cluster. This is how a
    sub-population gets mislabelled (one annotator, one site, one sensor); if the
    class is too small, further clusters are taken until the count is reached.
confident_flip
    A logistic regression fitted on the reference scores the batch; the rows it
    gives the highest probability to their own label are relabelled to the class
    it finds *second* most likely. The second-most-likely variant is the realistic
    one: it turns textbook examples into the confusion a tired annotator would
    make (4 and 9, not 4 and 0), so a reviewer reading the flipped row finds it
    plausible, and it moves exactly the boundary between the two classes the model
    finds hardest to tell apart. Flipping to the least likely class instead gives
    rows no honest mistake would produce. In two-class problems the two coincide.
backdoor
    Copies of random rows from classes other than one target class, with a
    trigger stamped on 1 to 3 features and labelled with the target class. The
    trigger value of each feature lies between the reference's 1st and 99th
    percentiles (so range checks pass) in its least populated region: the rarest
    whole number for whole-number features, else the centre of the emptiest of
    ten equal-width bins. Only features whose percentile range is not a single
    value are used while there are any.
interpolation
    Boundary poison: a reference row ``a`` is paired with one of its five nearest
    reference rows ``b`` of another class and the new row is
    ``lam * b + (1 - lam) * a`` with ``lam`` uniform in [0.5, 0.75] (missing values
    taken as the median), labelled with ``a``'s class. The row sits on ``b``'s side of the midpoint yet carries ``a``'s
    label, which pushes ``a``'s region into ``b``'s.
far_outlier
    New rows ``median + r * u * scale`` with ``u`` a random unit direction and
    ``r`` between 1.5 and 3 times the largest robust distance of any reference
    row from the median (or ``sqrt(n_features)``, if larger): each lies farther
    out than every trusted row. Labels are random classes.
duplicate_flood
    A few seed rows (one per ten poison rows, between 1 and 5) that stay in the
    batch untouched are copied over the poisoned slots: three quarters of the
    copies are exact, the rest near copies with Gaussian noise of 1% of a robust
    scale on the non-whole-number features (on all-whole-number data every copy
    is exact). Each seed's copies keep its label or, with probability one half,
    all carry one other class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from poisonguard.errors import param_error

#: Every kind :func:`plant` knows, flips first, then injections.
ATTACKS: tuple[str, ...] = (
    "random_flip",
    "clustered_flip",
    "confident_flip",
    "backdoor",
    "interpolation",
    "far_outlier",
    "duplicate_flood",
)

#: Kinds that only relabel existing rows; the others inject new feature values.
FLIP_ATTACKS: tuple[str, ...] = ("random_flip", "clustered_flip", "confident_flip")

#: Above this share the poison is the batch, not something hidden in it.
MAX_RATE = 0.5

_OWNER = "plant()"
# Kinds whose attacker fits on labelled reference rows of at least two classes.
_NEEDS_REFERENCE_CLASSES = ("confident_flip", "interpolation")
_N_PAIR_NEIGHBORS = 5
_N_TRIGGER_BINS = 10
_MAX_TRIGGER_FEATURES = 3
_MAX_SEEDS = 5
_EXACT_SHARE = 0.75
_NEAR_NOISE = 0.01


@dataclass(frozen=True)
class PlantedAttack:
    """A poisoned batch with its ground truth.

    Attributes
    ----------
    frame : DataFrame
        The poisoned batch: the input's columns and dtypes, as many rows as the
        input, a fresh ``RangeIndex``.
    is_poison : ndarray of shape (len(frame),), bool
        True for every row the attack relabelled or injected.
    kind : str
        One of :data:`ATTACKS`.
    rate : float
        The share of poison that was asked for; ``is_poison.sum()`` is
        ``round(rate * len(frame))``.
    """

    frame: pd.DataFrame
    is_poison: np.ndarray
    kind: str
    rate: float

    @property
    def n_poison(self) -> int:
        """Number of poison rows."""
        return int(self.is_poison.sum())


@dataclass(frozen=True)
class _View:
    """What the attacker sees: the batch and the reference on one robust scale."""

    rng: np.random.Generator
    n_poison: int
    raw: np.ndarray  # batch features as they are, (n, d), NaN kept
    z: np.ndarray  # batch on the robust scale, NaN -> 0, (n, d)
    y: np.ndarray  # batch labels, object, (n,)
    ref_raw: np.ndarray
    ref_z: np.ndarray
    ref_y: np.ndarray
    classes: tuple[Any, ...]
    center: np.ndarray
    scale: np.ndarray
    integral: np.ndarray  # bool, (d,): injected values are rounded


@dataclass(frozen=True)
class _Plan:
    """Rows to overwrite: new labels, and new feature values for injections."""

    rows: np.ndarray  # int positions, (k,)
    labels: np.ndarray  # object, (k,)
    values: np.ndarray | None = None  # raw units, (k, d)


def plant(
    frame: pd.DataFrame,
    *,
    label: str,
    kind: str,
    rate: float,
    features: list[str] | None = None,
    reference: pd.DataFrame | None = None,
    random_state: int | None = None,
) -> PlantedAttack:
    """Poison a share of a batch with one known attack.

    Parameters
    ----------
    frame : DataFrame
        The clean batch. Its label column must have no missing values.
    label : str
        The label column.
    kind : str
        One of :data:`ATTACKS`; the module docstring says exactly what each does.
    rate : float
        Share of the output rows that are poison, in [0, 0.5]. Exactly
        ``round(rate * len(frame))`` rows are poisoned.
    features : list of str, optional
        Numeric columns the attack may read and write. Default: every numeric
        (non-boolean) column other than ``label``.
    reference : DataFrame, optional
        Trusted rows the attacker may study, with the label and every feature
        column. Default: ``frame`` itself.
    random_state : int, optional
        Seed; the same seed and inputs give the same output.

    Returns
    -------
    PlantedAttack
        The poisoned batch and which of its rows are poison.

    Raises
    ------
    ConfigError
        If ``kind``, ``rate``, ``label``, ``features`` or ``reference`` is not
        usable, or the data holds too few classes for ``kind``.
    """
    if kind not in ATTACKS:
        raise param_error("kind", _OWNER, f"one of {list(ATTACKS)}", kind)
    if (
        isinstance(rate, bool)
        or not isinstance(rate, int | float | np.floating | np.integer)
        or not 0.0 <= float(rate) <= MAX_RATE
    ):
        raise param_error("rate", _OWNER, f"a number in [0, {MAX_RATE}]", rate)
    if random_state is not None and (
        isinstance(random_state, bool)
        or not isinstance(random_state, int | np.integer)
        or random_state < 0
    ):
        raise param_error("random_state", _OWNER, "a non-negative int or None", random_state)
    if not isinstance(frame, pd.DataFrame) or len(frame) == 0:
        raise param_error("frame", _OWNER, "a DataFrame with at least one row", type(frame))
    if not isinstance(label, str) or label not in frame.columns:
        raise param_error("label", _OWNER, "the name of a column of frame", label)
    if frame[label].isna().any():
        raise param_error("label", _OWNER, "a column without missing values", label)
    feats = _check_features(frame, label, features)
    ref = frame if reference is None else reference
    if not isinstance(ref, pd.DataFrame):
        raise param_error("reference", _OWNER, "a DataFrame or None", type(ref))
    missing = [c for c in [*feats, label] if c not in ref.columns]
    if missing:
        raise param_error(
            "reference", _OWNER, "a DataFrame with the label and every feature; it lacks", missing
        )
    ref = ref[ref[label].notna()]
    view = _view(frame, ref, feats, label, float(rate), random_state)
    _check_classes(view, kind, label)

    out = frame.reset_index(drop=True)
    is_poison = np.zeros(len(out), dtype=bool)
    if view.n_poison > 0:
        plan = _KINDS[kind](view)
        out = _apply(out, plan, feats, label, view)
        is_poison[plan.rows] = True
    else:
        out = out.copy()
    return PlantedAttack(frame=out, is_poison=is_poison, kind=kind, rate=float(rate))


def _check_features(frame: pd.DataFrame, label: str, features: list[str] | None) -> list[str]:
    if features is None:
        feats = [
            c
            for c in frame.columns
            if c != label
            and ptypes.is_numeric_dtype(frame[c])
            and not ptypes.is_bool_dtype(frame[c])
        ]
        if not feats:
            raise param_error(
                "features", _OWNER, "given when frame has no numeric column but the label", None
            )
        return feats
    ok = (
        isinstance(features, list | tuple)
        and len(features) > 0
        and len(set(features)) == len(features)
        and all(
            c in frame.columns
            and c != label
            and ptypes.is_numeric_dtype(frame[c])
            and not ptypes.is_bool_dtype(frame[c])
            for c in features
        )
    )
    if not ok:
        raise param_error(
            "features",
            _OWNER,
            "a non-empty list of distinct numeric columns of frame other than the label",
            features,
        )
    return list(features)


def _sorted_classes(values: list[Any]) -> tuple[Any, ...]:
    # Sorting makes class choices independent of row order; mixed types sort by type name.
    return tuple(sorted(set(values), key=lambda v: (type(v).__name__, v)))


def _as_float(frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    out = np.empty((len(frame), len(features)), dtype=np.float64)
    for j, col in enumerate(features):
        out[:, j] = frame[col].to_numpy(dtype=np.float64, na_value=np.nan)
    return out


def _view(
    frame: pd.DataFrame,
    ref: pd.DataFrame,
    features: list[str],
    label: str,
    rate: float,
    random_state: int | None,
) -> _View:
    raw = _as_float(frame, features)
    ref_raw = _as_float(ref, features)
    with np.errstate(all="ignore"):
        present = np.isfinite(ref_raw)
        has_any = present.any(axis=0)
        center = np.zeros(len(features))
        scale = np.ones(len(features))
        if has_any.any():
            cols = ref_raw[:, has_any]
            q75, q50, q25 = np.nanpercentile(cols, [75, 50, 25], axis=0)
            iqr = (q75 - q25) / 1.349
            std = np.nanstd(cols, axis=0)
            center[has_any] = q50
            scale[has_any] = np.where(iqr > 0, iqr, np.where(std > 0, std, 1.0))
        whole = np.where(present, ref_raw == np.round(ref_raw), True).all(axis=0) & has_any
    integral = np.array(
        [bool(whole[j]) or ptypes.is_integer_dtype(frame[c]) for j, c in enumerate(features)],
        dtype=bool,
    )
    y = np.asarray(frame[label].tolist(), dtype=object)
    ref_y = np.asarray(ref[label].tolist(), dtype=object)
    return _View(
        rng=np.random.default_rng(random_state),
        n_poison=round(rate * len(frame)),
        raw=raw,
        z=_scaled(raw, center, scale),
        y=y,
        ref_raw=ref_raw,
        ref_z=_scaled(ref_raw, center, scale),
        ref_y=ref_y,
        classes=_sorted_classes([*y.tolist(), *ref_y.tolist()]),
        center=center,
        scale=scale,
        integral=integral,
    )


def _scaled(raw: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    z = (raw - center) / scale
    return np.where(np.isfinite(z), z, 0.0)


def _check_classes(view: _View, kind: str, label: str) -> None:
    if kind in _NEEDS_REFERENCE_CLASSES:
        if len(set(view.ref_y.tolist())) < 2:
            raise param_error(
                "reference",
                _OWNER,
                f"labelled with at least two classes in {label!r} for kind {kind!r}",
                sorted(map(str, set(view.ref_y.tolist()))),
            )
    elif kind != "far_outlier" and kind != "duplicate_flood" and len(view.classes) < 2:
        raise param_error(
            "label",
            _OWNER,
            f"a column with at least two classes (in frame and reference) for kind {kind!r}",
            label,
        )


def _apply(
    out: pd.DataFrame, plan: _Plan, features: list[str], label: str, view: _View
) -> pd.DataFrame:
    out = out.copy()
    if plan.values is not None:
        for j, col in enumerate(features):
            values = np.round(plan.values[:, j]) if view.integral[j] else plan.values[:, j]
            out[col] = _written(out[col], plan.rows, values)
    labels = out[label].to_numpy(dtype=object, copy=True)
    labels[plan.rows] = plan.labels
    out[label] = pd.Series(labels, index=out.index, dtype=out[label].dtype)
    return out


def _written(column: pd.Series, rows: np.ndarray, values: np.ndarray) -> pd.Series:
    """``column`` with ``values`` at positions ``rows``, in the column's own dtype."""
    dtype = column.dtype
    if isinstance(dtype, np.dtype):
        # Native arrays keep untouched values exact (no round trip through float).
        array = column.to_numpy(copy=True)
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            values = np.clip(values, info.min, info.max)
        array[rows] = values.astype(dtype)
        return pd.Series(array, index=column.index, name=column.name)
    array = column.to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
    array[rows] = values
    return pd.Series(array, index=column.index, name=column.name).astype(dtype)


# --- the attacks --------------------------------------------------------------


def _random_rows(view: _View) -> np.ndarray:
    return np.sort(view.rng.choice(len(view.y), size=view.n_poison, replace=False))


def _other_class(view: _View, current: Any) -> Any:
    others = [c for c in view.classes if c != current]
    return others[int(view.rng.integers(len(others)))]


def _random_flip(view: _View) -> _Plan:
    rows = _random_rows(view)
    labels = np.array([_other_class(view, view.y[i]) for i in rows], dtype=object)
    return _Plan(rows, labels)


def _centroids(view: _View) -> dict[Any, np.ndarray]:
    z = np.vstack([view.ref_z, view.z])
    y = np.concatenate([view.ref_y, view.y])
    return {c: z[y == c].mean(axis=0) for c in view.classes if (y == c).any()}


def _clustered_flip(view: _View) -> _Plan:
    rng, k = view.rng, view.n_poison
    centroids = _centroids(view)
    free = np.ones(len(view.y), dtype=bool)
    rows: list[np.ndarray] = []
    labels: list[Any] = []
    while k > 0:
        sizes = {c: int((free & (view.y == c)).sum()) for c in view.classes}
        big = [c for c, s in sizes.items() if s >= k]
        if big:
            pool = np.flatnonzero(free & np.isin(view.y, np.array(big, dtype=object)))
        else:
            largest = max(sizes, key=lambda c: sizes[c])
            pool = np.flatnonzero(free & (view.y == largest))
        anchor = int(pool[rng.integers(len(pool))])
        source = view.y[anchor]
        members = np.flatnonzero(free & (view.y == source))
        dist = np.linalg.norm(view.z[members] - view.z[anchor], axis=1)
        cluster = members[np.argsort(dist, kind="stable")[:k]]
        centre = view.z[cluster].mean(axis=0)
        target = min(
            (c for c in centroids if c != source),
            key=lambda c: float(np.linalg.norm(centroids[c] - centre)),
        )
        rows.append(cluster)
        labels.extend([target] * len(cluster))
        free[cluster] = False
        k -= len(cluster)
    order = np.concatenate(rows)
    sort = np.argsort(order)
    return _Plan(order[sort], np.array(labels, dtype=object)[sort])


def _confident_flip(view: _View) -> _Plan:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=1000)
    model.fit(view.ref_z, _codes(view.ref_y, view.classes))
    model_classes = [view.classes[int(c)] for c in model.classes_]
    proba = model.predict_proba(view.z)
    column = {c: j for j, c in enumerate(model_classes)}
    own = np.array([proba[i, column[c]] if c in column else 0.0 for i, c in enumerate(view.y)])
    # Random order first so that ties break by seed, not by row position.
    shuffle = view.rng.permutation(len(own))
    rows = shuffle[np.argsort(-own[shuffle], kind="stable")[: view.n_poison]]
    labels = []
    for i in rows:
        p = proba[i].copy()
        if view.y[i] in column:
            p[column[view.y[i]]] = -np.inf
        labels.append(model_classes[int(np.argmax(p))])
    sort = np.argsort(rows)
    return _Plan(rows[sort], np.array(labels, dtype=object)[sort])


def _codes(y: np.ndarray, classes: tuple[Any, ...]) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup[c] for c in y], dtype=np.int64)


def _trigger(view: _View) -> tuple[np.ndarray, np.ndarray]:
    """Pick 1-3 features and, for each, a rare value inside its plausible range."""
    rng = view.rng
    ref = view.ref_raw
    d = ref.shape[1]
    with np.errstate(all="ignore"):
        lo = np.array([_quantile(ref[:, j], 0.01, "lower") for j in range(d)])
        hi = np.array([_quantile(ref[:, j], 0.99, "higher") for j in range(d)])
    spread = np.flatnonzero(hi > lo)
    eligible = spread if len(spread) else np.arange(d)
    m = int(rng.integers(1, min(_MAX_TRIGGER_FEATURES, len(eligible)) + 1))
    chosen = np.sort(rng.choice(eligible, size=m, replace=False))
    values = np.empty(m)
    for t, j in enumerate(chosen):
        col = ref[:, j][np.isfinite(ref[:, j])]
        if not hi[j] > lo[j]:
            # Constant feature: no value inside its range is rare; step one scale off.
            values[t] = view.center[j] + view.scale[j]
            continue
        inside = col[(col >= lo[j]) & (col <= hi[j])]
        if view.integral[j]:
            grid = np.arange(np.ceil(lo[j]), np.floor(hi[j]) + 1.0)
            counts = np.array([np.count_nonzero(inside == g) for g in grid])
            centres = grid
        else:
            edges = np.linspace(lo[j], hi[j], _N_TRIGGER_BINS + 1)
            counts, _ = np.histogram(inside, bins=edges)
            centres = (edges[:-1] + edges[1:]) / 2
        rarest = np.flatnonzero(counts == counts.min())
        values[t] = centres[int(rarest[rng.integers(len(rarest))])]
    return chosen, values


def _quantile(col: np.ndarray, q: float, method: str) -> float:
    col = col[np.isfinite(col)]
    return float(np.quantile(col, q, method=method)) if len(col) else 0.0  # type: ignore[call-overload]


def _backdoor(view: _View) -> _Plan:
    rng = view.rng
    present = [c for c in view.classes if (view.y != c).any()]
    target = present[int(rng.integers(len(present)))]
    features, values = _trigger(view)
    rows = _random_rows(view)
    sources_pool = np.flatnonzero(view.y != target)
    sources = rng.choice(
        sources_pool, size=view.n_poison, replace=len(sources_pool) < view.n_poison
    )
    injected = view.raw[sources].copy()
    injected[:, features] = values
    labels = np.full(view.n_poison, target, dtype=object)
    return _Plan(rows, labels, injected)


def _interpolation(view: _View) -> _Plan:
    from sklearn.neighbors import NearestNeighbors

    rng = view.rng
    k = view.n_poison
    starts = rng.integers(len(view.ref_y), size=k)
    picks = rng.integers(_N_PAIR_NEIGHBORS, size=k)
    lam = rng.uniform(0.5, 0.75, size=(k, 1))
    partners = np.empty(k, dtype=np.int64)
    for c in _sorted_classes(view.ref_y[starts].tolist()):
        mine = np.flatnonzero(view.ref_y[starts] == c)
        others = np.flatnonzero(view.ref_y != c)
        n_nb = min(_N_PAIR_NEIGHBORS, len(others))
        finder = NearestNeighbors(n_neighbors=n_nb).fit(view.ref_z[others])
        near = finder.kneighbors(view.ref_z[starts[mine]], return_distance=False)
        partners[mine] = others[near[np.arange(len(mine)), picks[mine] % n_nb]]
    filled = np.where(np.isfinite(view.ref_raw), view.ref_raw, view.center)
    injected = lam * filled[partners] + (1.0 - lam) * filled[starts]
    labels = view.ref_y[starts].copy()
    return _Plan(_random_rows(view), labels, injected)


def _far_outlier(view: _View) -> _Plan:
    rng = view.rng
    k, d = view.n_poison, view.raw.shape[1]
    reach = float(np.linalg.norm(view.ref_z, axis=1).max()) if len(view.ref_z) else 0.0
    reach = max(reach, np.sqrt(d))
    direction = rng.standard_normal((k, d))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    radius = rng.uniform(1.5, 3.0, size=(k, 1)) * reach
    injected = view.center + radius * direction * view.scale
    labels = np.array(
        [view.classes[int(i)] for i in rng.integers(len(view.classes), size=k)], dtype=object
    )
    return _Plan(_random_rows(view), labels, injected)


def _duplicate_flood(view: _View) -> _Plan:
    rng = view.rng
    n, k = len(view.y), view.n_poison
    rows = _random_rows(view)
    kept = np.setdiff1d(np.arange(n), rows)
    pool = kept if len(kept) else np.arange(n)
    n_seeds = min(max(1, k // 10), _MAX_SEEDS, len(pool))
    seeds = rng.choice(pool, size=n_seeds, replace=False)
    seed_labels = [
        _other_class(view, view.y[s]) if len(view.classes) > 1 and rng.random() < 0.5 else view.y[s]
        for s in seeds
    ]
    which = np.arange(k) % n_seeds
    rng.shuffle(which)
    injected = view.raw[seeds[which]].copy()
    near = rng.random(k) >= _EXACT_SHARE
    noisy = near[:, None] & ~view.integral[None, :] & np.isfinite(injected)
    noise = rng.standard_normal(injected.shape) * _NEAR_NOISE * view.scale
    injected = np.where(noisy, injected + noise, injected)
    labels = np.array([seed_labels[w] for w in which], dtype=object)
    return _Plan(rows, labels, injected)


_KINDS: dict[str, Callable[[_View], _Plan]] = {
    "random_flip": _random_flip,
    "clustered_flip": _clustered_flip,
    "confident_flip": _confident_flip,
    "backdoor": _backdoor,
    "interpolation": _interpolation,
    "far_outlier": _far_outlier,
    "duplicate_flood": _duplicate_flood,
}
