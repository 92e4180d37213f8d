"""Plant known poison in a batch, so a gate can be measured against it.

Used by the tests, the demo and the benchmarks. :func:`plant` takes a clean
batch and returns a poisoned copy together with the ground truth::

    attack = plant(batch, label="target", kind="backdoor", rate=0.1, random_state=0)
    attack.frame        # the poisoned batch, same columns and dtypes, fresh RangeIndex
    attack.is_poison    # ndarray of shape (len(batch),), bool; exactly round(0.1 * len(batch)) True

The output always has as many rows as the input. Flip attacks relabel existing
rows in place; injection attacks overwrite chosen rows with injected ones
(keeping the replaced row's non-feature columns, such as an id or a date, so
they stay valid). Every row that is not poison is left exactly as it was.

Kinds are grouped by task: :data:`CLASSIFICATION_ATTACKS` for a class label
(:data:`ATTACKS`, its first seven, run on numeric-only data and are the default
suite of ``poisonguard selftest``), :data:`REGRESSION_ATTACKS` for a numeric
target. ``far_outlier`` and ``duplicate_flood`` belong to both: for a numeric
target a "class" is one of the target values seen in the batch or the reference.

Features
--------
Two sorts of column are features: *numeric* ones (any numeric dtype but
boolean) and *categorical* ones (boolean, ``category``, and string or object
columns with at most half as many distinct values as filled cells; a string
column of distinct values is an identifier or free text and is left alone, as
are dates). Missing cells are allowed in both. Geometric attacks move numeric
values only; copies and floods copy every feature of the copied row, missing
cells included; categorical cells are only ever written with values the
column already holds (so a ``category`` column keeps its categories).

The attacker's view of the data
-------------------------------
The attacker may study ``reference`` (the trusted set; the batch itself when
none is given). Numeric features are put on a robust scale learnt from it:
centred on the median and divided by IQR / 1.349 (the standard deviation for
normal data), falling back to the standard deviation and then to 1 for
constant features; missing values count as the median. A feature whose
reference values are all whole numbers (or whose dtype is integer) receives
whole-number injected values, because fractional values there would give an
attack away to any schema check. Where the attacker measures distance or fits
a model, categorical features are one-hot encoded (a missing cell is a row of
zeros) next to the scaled numeric ones; on numeric-only data the encoding is
the scaled features alone.

A *population* (``subgroup_flip``, ``subgroup_shift``) is the batch rows
holding one categorical value, or one pair of values of two categorical
columns. The attacker takes a population that the poison budget
``round(rate * n)`` nearly covers: one drawn at random among those with
between one and two times the budget of eligible rows, else the smallest
larger one; it poisons as many of its rows as the budget allows (all of them
when the sizes match). When no population reaches the budget (tiny batches),
the largest is taken whole and random eligible rows fill the rest.

Classification kinds
--------------------
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
    trigger stamped on 1 to 3 numeric features and labelled with the target class. The
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
    label, which pushes ``a``'s region into ``b``'s. Each categorical cell is
    ``b``'s with probability ``lam``, else ``a``'s.
far_outlier
    New rows ``median + r * u * scale`` with ``u`` a random unit direction and
    ``r`` between 1.5 and 3 times the largest robust distance of any reference
    row from the median (or ``sqrt(n_features)``, if larger): each lies farther
    out than every trusted row. Labels are random classes. Categorical cells are
    the replaced row's.
duplicate_flood
    A few seed rows (one per ten poison rows, between 1 and 5) that stay in the
    batch untouched are copied over the poisoned slots: three quarters of the
    copies are exact, the rest near copies with Gaussian noise of 1% of a robust
    scale on the non-whole-number features (on all-whole-number data every copy
    is exact). Each seed's copies keep its label or, with probability one half,
    all carry one other class.
boundary_flip
    A logistic regression fitted on the reference scores the batch; the rows it
    is *least* sure of (smallest gap between its two most likely classes) are
    relabelled to the most likely class other than their own (the model's
    second choice where it agrees with the label). Mislabels an honest annotator
    makes on hard cases, and the ones a confidence filter cannot tell from them.
subgroup_flip
    Every row of one population (see above) whose label is not the target class
    is relabelled to it: one site or one annotator's systematic error, or a
    targeted attack on a group. The rows agree with each other, so a detector
    that learns from the batch learns the flip.
categorical_backdoor
    Copies of rows of classes other than one target class (preferring rows that
    lack the trigger) overwrite rows of those classes, with a categorical trigger
    stamped on and labelled with the target. The trigger is chosen the way an
    attacker would choose one that passes value-set checks: where two or more
    categorical features hold such *common* values (each held by at least 5% of
    the reference rows), the pair of common values of two columns that the
    fewest reference rows hold together; where one does, its common value that
    the fewest reference rows hold. (Where no value reaches 5%, each column's
    most common value stands in.) Ties are broken by the seed. The fewer trusted
    rows show the trigger, the less clean evidence the poison has to outweigh.
category_swap
    Outliers with plausible numbers: in the chosen rows one categorical cell is
    swapped for another value of its column such that the row's class, the new
    value and each of the row's other categorical values are seen together as
    rarely as possible among reference rows of that class (ideally never); if
    that combination is still seen in more than 1% of them, a second cell is
    swapped the same way. The rows whose best swap is rarest are chosen.
    Numeric values and labels are kept.

Regression kinds
----------------
target_shuffle
    The targets of random rows are permuted among them (a misaligned join): a
    random cyclic permutation, with tied values swapped until every row's target
    changes (if that cannot be done, the row takes another batch row's target).
    A single poison row takes the target of a random other batch row.
target_scale
    The targets of random rows with a non-zero target are all multiplied by 3,
    or all divided by 3 (a unit error; the direction is drawn per call).
subgroup_shift
    Every row of one population (see above) has its target shifted by 3 robust
    standard deviations (1.4826 times the reference targets' median absolute
    deviation), all up or all down.

Integer target columns keep whole numbers (shifted and scaled targets are rounded).
Attacks that stamp a trigger record it in :attr:`PlantedAttack.trigger`, and
:meth:`PlantedAttack.stamp` writes it on other rows (to measure attack success).

Adaptive attacks
----------------
An attacker who knows how the gate decides (issue 11) does not plant poison at
random. These functions (:data:`ADAPTIVE_ATTACKS`) each return
:class:`PlantedAttack` batches like :func:`plant`; ``poisonguard redteam`` and
``benchmarks/adaptive.py`` send them through a store.

:func:`least_suspicious_flips`
    White-box boundary flips: every candidate flip (a row given another class)
    is scored by a fitted :class:`~poisonguard.scan.Guard`, and the flips of
    lowest suspicion are sent. Suspicion is :func:`anchored_suspicion`: the
    combined p-value of the detectors that judge a row against the trusted rows
    alone, since the within-batch detectors would see a pool of candidates,
    not the batch sent.
:func:`ratchet`
    A little poison per batch over many batches (2 flips in each of 16 by
    default), each batch's flips chosen as above against the gate the attacker
    believes it faces *then*: a reference that grew by acceptance lets each
    accepted flip vouch for the next.
:func:`near_copies`
    Rows the gate or a reviewer turned away, re-sent with one number moved by
    one unit in the last place and a new id.
:func:`spread_sources`
    The landing source (``landing/<source>/``) of each batch, so that one budget
    is split over many sources.
:func:`clustered_injection`
    Made-up rows in a tight cluster around a real row, inside every column's
    value range (the expectations'), carrying another class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from poisonguard.errors import param_error

if TYPE_CHECKING:
    from poisonguard.scan import Guard

#: The classification kinds that run on numeric-only data: the default suite of
#: ``poisonguard selftest`` and ``benchmarks/detection.py``.
ATTACKS: tuple[str, ...] = (
    "random_flip",
    "clustered_flip",
    "confident_flip",
    "backdoor",
    "interpolation",
    "far_outlier",
    "duplicate_flood",
)

#: Every kind for a class label: :data:`ATTACKS`, then the kinds written for mixed tables.
CLASSIFICATION_ATTACKS: tuple[str, ...] = (
    *ATTACKS,
    "boundary_flip",
    "subgroup_flip",
    "categorical_backdoor",
    "category_swap",
)

#: Every kind for a numeric target.
REGRESSION_ATTACKS: tuple[str, ...] = (
    "target_shuffle",
    "target_scale",
    "subgroup_shift",
    "far_outlier",
    "duplicate_flood",
)

#: Every kind :func:`plant` knows, each once; a kind's position here never changes.
KINDS: tuple[str, ...] = CLASSIFICATION_ATTACKS + tuple(
    k for k in REGRESSION_ATTACKS if k not in CLASSIFICATION_ATTACKS
)

#: Classification kinds that only relabel existing rows; the others inject new feature values.
FLIP_ATTACKS: tuple[str, ...] = (
    "random_flip",
    "clustered_flip",
    "confident_flip",
    "boundary_flip",
    "subgroup_flip",
)

#: Regression kinds that only change the target.
TARGET_ATTACKS: tuple[str, ...] = ("target_shuffle", "target_scale", "subgroup_shift")

#: Kinds that need a categorical feature.
CATEGORICAL_ATTACKS: tuple[str, ...] = (
    "subgroup_flip",
    "categorical_backdoor",
    "category_swap",
    "subgroup_shift",
)

#: Above this share the poison is the batch, not something hidden in it.
MAX_RATE = 0.5

#: The attacks that adapt to the gate or the store (module docstring, *Adaptive attacks*):
#: functions of their own, not kinds of :func:`plant`.
ADAPTIVE_ATTACKS: tuple[str, ...] = (
    "least_suspicious_flip",
    "ratchet",
    "near_copy",
    "clustered_injection",
)
#: At most this many (row, class) flips are scored when a flip is chosen against the gate.
MAX_CANDIDATES = 4096
#: The noise of a clustered injection, in robust standard deviations.
CLUSTER_SPREAD = 0.25

_OWNER = "plant()"
# Kinds whose attacker fits on labelled reference rows of at least two classes.
_NEEDS_REFERENCE_CLASSES = ("confident_flip", "interpolation", "boundary_flip")
# Kinds that need no second class anywhere.
_ANY_CLASSES = ("far_outlier", "duplicate_flood", "category_swap", *TARGET_ATTACKS)
# Kinds that write numeric features.
_NEEDS_NUMERIC = ("backdoor", "far_outlier")
_N_PAIR_NEIGHBORS = 5
_N_TRIGGER_BINS = 10
_MAX_TRIGGER_FEATURES = 3
_MAX_SEEDS = 5
_EXACT_SHARE = 0.75
_NEAR_NOISE = 0.01
_MIN_TRIGGER_SHARE = 0.05
_RARE_SHARE = 0.01
_SCALE_FACTOR = 3.0
_SHIFT_SDS = 3.0
_MAD_TO_SD = 1.4826


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
        One of :data:`KINDS`, or of :data:`ADAPTIVE_ATTACKS` for the batches
        the adaptive attacks make.
    rate : float
        The share of poison that was asked for; ``is_poison.sum()`` is
        ``round(rate * len(frame))``.
    trigger : mapping of str to value, optional
        For ``backdoor`` and ``categorical_backdoor``: the value each trigger
        column holds on the poison rows.
    target : object, optional
        For ``backdoor`` and ``categorical_backdoor``: the class the poison rows carry.
    """

    frame: pd.DataFrame
    is_poison: np.ndarray
    kind: str
    rate: float
    trigger: Mapping[str, Any] | None = None
    target: Any = None

    @property
    def n_poison(self) -> int:
        """Number of poison rows."""
        return int(self.is_poison.sum())

    def stamp(self, frame: pd.DataFrame) -> pd.DataFrame:
        """A copy of ``frame`` with this attack's trigger written on every row.

        Raises
        ------
        ConfigError
            If the attack has no trigger or ``frame`` lacks a trigger column.
        """
        if not self.trigger:
            raise param_error("kind", "PlantedAttack.stamp()", "a kind with a trigger", self.kind)
        missing = [c for c in self.trigger if c not in frame.columns]
        if missing:
            raise param_error(
                "frame", "PlantedAttack.stamp()", "a DataFrame with every trigger column", missing
            )
        out = frame.copy()
        rows = np.arange(len(out))
        for col, value in self.trigger.items():
            if _is_numeric(out[col]):
                out[col] = _written(out[col], rows, np.full(len(out), float(value)))
            else:
                out[col] = _written_objects(out[col], rows, np.full(len(out), value, dtype=object))
        return out


@dataclass(frozen=True)
class _View:
    """What the attacker sees: the batch and the reference on one robust scale."""

    rng: np.random.Generator
    n_poison: int
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    raw: np.ndarray  # batch numeric features as they are, (n, d), NaN kept
    z: np.ndarray  # batch on the robust scale, NaN -> 0, (n, d)
    y: np.ndarray  # batch labels, object, (n,)
    ref_raw: np.ndarray
    ref_z: np.ndarray
    ref_y: np.ndarray
    classes: tuple[Any, ...]
    center: np.ndarray
    scale: np.ndarray
    integral: np.ndarray  # bool, (d,): injected values are rounded
    cells: np.ndarray  # batch categorical cells as they are, object, (n, m)
    codes: np.ndarray  # batch categorical cells as indices into levels, -1 = missing, (n, m)
    ref_codes: np.ndarray
    levels: tuple[tuple[Any, ...], ...]  # per categorical feature, the values it may be given
    x: np.ndarray  # the attacker's encoding of the batch: z, then one-hot categoricals
    ref_x: np.ndarray
    numeric_label: bool  # the label column is numeric (not boolean)
    integral_label: bool  # the label column has an integer dtype


@dataclass(frozen=True)
class _Plan:
    """Rows to overwrite: new labels, and new feature values for injections."""

    rows: np.ndarray  # int positions, (k,)
    labels: np.ndarray  # object, (k,)
    values: np.ndarray | None = None  # numeric features, raw units, (k, d)
    cells: np.ndarray | None = None  # categorical features, object, (k, m)
    trigger: dict[str, Any] | None = None
    target: Any = None


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
        The label column (a numeric target for :data:`TARGET_ATTACKS`).
    kind : str
        One of :data:`KINDS`; the module docstring says exactly what each does.
    rate : float
        Share of the output rows that are poison, in [0, 0.5]. Exactly
        ``round(rate * len(frame))`` rows are poisoned.
    features : list of str, optional
        Numeric and categorical columns the attack may read and write. Default:
        every numeric (non-boolean) column and every categorical column (see the
        module docstring) other than ``label``.
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
        usable, or the data cannot carry ``kind`` (too few classes, no
        categorical feature for :data:`CATEGORICAL_ATTACKS`, a non-numeric
        target for :data:`TARGET_ATTACKS`).
    """
    if kind not in KINDS:
        raise param_error("kind", _OWNER, f"one of {list(KINDS)}", kind)
    view = _prepare(frame, label, rate, features, reference, random_state, _OWNER)
    _check_kind(view, kind, label)

    out = frame.reset_index(drop=True)
    is_poison = np.zeros(len(out), dtype=bool)
    trigger, target = None, None
    if view.n_poison > 0:
        plan = _KINDS[kind](view)
        out = _apply(out, plan, label, view)
        is_poison[plan.rows] = True
        trigger, target = plan.trigger, plan.target
    else:
        out = out.copy()
    return PlantedAttack(
        frame=out, is_poison=is_poison, kind=kind, rate=float(rate), trigger=trigger, target=target
    )


def _prepare(
    frame: pd.DataFrame,
    label: str,
    rate: float,
    features: list[str] | None,
    reference: pd.DataFrame | None,
    random_state: int | None,
    owner: str,
) -> _View:
    """Check the arguments every attack shares and build the attacker's view of the batch.

    Raises
    ------
    ConfigError
        Naming ``owner``, for a rate outside [0, MAX_RATE], a bad seed, an empty
        frame, a missing or partly missing label, unusable features or a
        reference that lacks a column.
    """
    if (
        isinstance(rate, bool)
        or not isinstance(rate, int | float | np.floating | np.integer)
        or not 0.0 <= float(rate) <= MAX_RATE
    ):
        raise param_error("rate", owner, f"a number in [0, {MAX_RATE}]", rate)
    _check_seed(random_state, owner)
    if not isinstance(frame, pd.DataFrame) or len(frame) == 0:
        raise param_error("frame", owner, "a DataFrame with at least one row", type(frame))
    if not isinstance(label, str) or label not in frame.columns:
        raise param_error("label", owner, "the name of a column of frame", label)
    if frame[label].isna().any():
        raise param_error("label", owner, "a column without missing values", label)
    numeric, categorical = _check_features(frame, label, features, owner)
    ref = frame if reference is None else reference
    if not isinstance(ref, pd.DataFrame):
        raise param_error("reference", owner, "a DataFrame or None", type(ref))
    missing = [c for c in [*numeric, *categorical, label] if c not in ref.columns]
    if missing:
        raise param_error(
            "reference", owner, "a DataFrame with the label and every feature; it lacks", missing
        )
    ref = ref[ref[label].notna()]
    return _view(frame, ref, numeric, categorical, label, float(rate), random_state)


def _check_seed(random_state: int | None, owner: str) -> None:
    if random_state is not None and (
        isinstance(random_state, bool)
        or not isinstance(random_state, int | np.integer)
        or random_state < 0
    ):
        raise param_error("random_state", owner, "a non-negative int or None", random_state)


def _is_numeric(column: pd.Series) -> bool:
    return ptypes.is_numeric_dtype(column) and not ptypes.is_bool_dtype(column)


def _is_categorical(column: pd.Series, *, guess: bool) -> bool:
    """Boolean, category, string or object; with ``guess``, string and object columns only
    when their values repeat (at most half as many distinct values as filled cells)."""
    if ptypes.is_bool_dtype(column) or isinstance(column.dtype, pd.CategoricalDtype):
        return True
    if not (ptypes.is_string_dtype(column) or ptypes.is_object_dtype(column)):
        return False
    if not guess:
        return True
    filled = int(column.notna().sum())
    return filled > 0 and 2 * column.nunique(dropna=True) <= filled


def _check_features(
    frame: pd.DataFrame, label: str, features: list[str] | None, owner: str = _OWNER
) -> tuple[list[str], list[str]]:
    if features is None:
        columns = [c for c in frame.columns if c != label]
        numeric = [c for c in columns if _is_numeric(frame[c])]
        categorical = [c for c in columns if _is_categorical(frame[c], guess=True)]
        if not numeric and not categorical:
            raise param_error(
                "features",
                owner,
                "given when frame has no numeric or categorical column but the label",
                None,
            )
        return numeric, categorical
    ok = (
        isinstance(features, list | tuple)
        and len(features) > 0
        and len(set(features)) == len(features)
        and all(
            c in frame.columns
            and c != label
            and (_is_numeric(frame[c]) or _is_categorical(frame[c], guess=False))
            for c in features
        )
    )
    if not ok:
        raise param_error(
            "features",
            owner,
            "a non-empty list of distinct numeric or categorical columns of frame other than "
            "the label",
            features,
        )
    numeric = [c for c in features if _is_numeric(frame[c])]
    return numeric, [c for c in features if c not in numeric]


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
    numeric: list[str],
    categorical: list[str],
    label: str,
    rate: float,
    random_state: int | None,
) -> _View:
    raw = _as_float(frame, numeric)
    ref_raw = _as_float(ref, numeric)
    with np.errstate(all="ignore"):
        present = np.isfinite(ref_raw)
        has_any = present.any(axis=0)
        center = np.zeros(len(numeric))
        scale = np.ones(len(numeric))
        if has_any.any():
            cols = ref_raw[:, has_any]
            q75, q50, q25 = np.nanpercentile(cols, [75, 50, 25], axis=0)
            iqr = (q75 - q25) / 1.349
            std = np.nanstd(cols, axis=0)
            center[has_any] = q50
            scale[has_any] = np.where(iqr > 0, iqr, np.where(std > 0, std, 1.0))
        whole = np.where(present, ref_raw == np.round(ref_raw), True).all(axis=0) & has_any
    integral = np.array(
        [bool(whole[j]) or ptypes.is_integer_dtype(frame[c]) for j, c in enumerate(numeric)],
        dtype=bool,
    )
    y = np.asarray(frame[label].tolist(), dtype=object)
    ref_y = np.asarray(ref[label].tolist(), dtype=object)
    cells = np.empty((len(frame), len(categorical)), dtype=object)
    codes = np.full((len(frame), len(categorical)), -1, dtype=np.int64)
    ref_codes = np.full((len(ref), len(categorical)), -1, dtype=np.int64)
    levels = []
    for j, col in enumerate(categorical):
        cells[:, j] = frame[col].to_numpy(dtype=object)
        values = _sorted_classes([*frame[col].dropna().tolist(), *ref[col].dropna().tolist()])
        dtype = frame[col].dtype
        if isinstance(dtype, pd.CategoricalDtype):
            # Only values the batch column can hold may be written into it.
            allowed = set(dtype.categories)
            values = tuple(v for v in values if v in allowed)
        lookup = {v: i for i, v in enumerate(values)}
        codes[:, j] = _coded(frame[col], lookup)
        ref_codes[:, j] = _coded(ref[col], lookup)
        levels.append(values)
    z = _scaled(raw, center, scale)
    ref_z = _scaled(ref_raw, center, scale)
    return _View(
        rng=np.random.default_rng(random_state),
        n_poison=round(rate * len(frame)),
        numeric=tuple(numeric),
        categorical=tuple(categorical),
        raw=raw,
        z=z,
        y=y,
        ref_raw=ref_raw,
        ref_z=ref_z,
        ref_y=ref_y,
        classes=_sorted_classes([*y.tolist(), *ref_y.tolist()]),
        center=center,
        scale=scale,
        integral=integral,
        cells=cells,
        codes=codes,
        ref_codes=ref_codes,
        levels=tuple(levels),
        x=_encoded(z, codes, levels),
        ref_x=_encoded(ref_z, ref_codes, levels),
        numeric_label=_is_numeric(frame[label]),
        integral_label=ptypes.is_integer_dtype(frame[label]),
    )


def _coded(column: pd.Series, lookup: dict[Any, int]) -> np.ndarray:
    missing = column.isna().to_numpy()
    values = column.to_numpy(dtype=object)
    return np.array(
        [-1 if gone else lookup.get(v, -1) for v, gone in zip(values, missing, strict=True)],
        dtype=np.int64,
    )


def _encoded(z: np.ndarray, codes: np.ndarray, levels: list[tuple[Any, ...]]) -> np.ndarray:
    if not levels:
        return z
    blocks = [z] + [
        (codes[:, j, None] == np.arange(len(values))[None, :]).astype(np.float64)
        for j, values in enumerate(levels)
    ]
    return np.hstack(blocks)


def _scaled(raw: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    z = (raw - center) / scale
    return np.where(np.isfinite(z), z, 0.0)


def _check_kind(view: _View, kind: str, label: str) -> None:
    if kind in _NEEDS_NUMERIC and not view.numeric:
        raise param_error(
            "features",
            _OWNER,
            f"a list with a numeric column for kind {kind!r}",
            list(view.categorical),
        )
    if kind in CATEGORICAL_ATTACKS and not any(view.levels):
        raise param_error(
            "features",
            _OWNER,
            f"a list with a categorical column holding values for kind {kind!r}",
            list(view.categorical),
        )
    if kind == "category_swap" and all(len(values) < 2 for values in view.levels):
        raise param_error(
            "features",
            _OWNER,
            f"a list with a categorical column of two or more values for kind {kind!r}",
            list(view.categorical),
        )
    if kind in TARGET_ATTACKS:
        _check_target(view, kind, label)
    elif kind in _NEEDS_REFERENCE_CLASSES:
        if len(set(view.ref_y.tolist())) < 2:
            raise param_error(
                "reference",
                _OWNER,
                f"labelled with at least two classes in {label!r} for kind {kind!r}",
                sorted(map(str, set(view.ref_y.tolist()))),
            )
    elif kind not in _ANY_CLASSES and len(view.classes) < 2:
        raise param_error(
            "label",
            _OWNER,
            f"a column with at least two classes (in frame and reference) for kind {kind!r}",
            label,
        )


def _check_target(view: _View, kind: str, label: str) -> None:
    if not view.numeric_label:
        raise param_error("label", _OWNER, f"a numeric target column for kind {kind!r}", label)
    y = _target(view.y)
    if kind == "target_shuffle" and view.n_poison > 0 and len(np.unique(y)) < 2:
        raise param_error(
            "label", _OWNER, f"a target with two or more values for kind {kind!r}", label
        )
    if kind == "target_scale" and np.count_nonzero(y) < view.n_poison:
        raise param_error(
            "label",
            _OWNER,
            f"a target with at least round(rate * n) = {view.n_poison} non-zero values for "
            f"kind {kind!r}",
            label,
        )


def _target(y: np.ndarray) -> np.ndarray:
    return y.astype(np.float64)


def _apply(out: pd.DataFrame, plan: _Plan, label: str, view: _View) -> pd.DataFrame:
    out = out.copy()
    if plan.values is not None:
        for j, col in enumerate(view.numeric):
            values = np.round(plan.values[:, j]) if view.integral[j] else plan.values[:, j]
            out[col] = _written(out[col], plan.rows, values)
    if plan.cells is not None:
        for j, col in enumerate(view.categorical):
            out[col] = _written_objects(out[col], plan.rows, plan.cells[:, j])
    out[label] = _written_objects(out[label], plan.rows, plan.labels)
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


def _written_objects(column: pd.Series, rows: np.ndarray, values: np.ndarray) -> pd.Series:
    """``column`` with the objects ``values`` at positions ``rows``, in the column's own dtype."""
    array = column.to_numpy(dtype=object, copy=True)
    array[rows] = values
    return pd.Series(array, index=column.index, name=column.name, dtype=column.dtype)


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
    x = np.vstack([view.ref_x, view.x])
    y = np.concatenate([view.ref_y, view.y])
    return {c: x[y == c].mean(axis=0) for c in view.classes if (y == c).any()}


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
        dist = np.linalg.norm(view.x[members] - view.x[anchor], axis=1)
        cluster = members[np.argsort(dist, kind="stable")[:k]]
        centre = view.x[cluster].mean(axis=0)
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


def _reference_model(view: _View) -> tuple[np.ndarray, list[Any]]:
    """Class probabilities of the batch rows from a logistic regression fitted on the
    reference, and the class of each probability column."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=1000)
    model.fit(view.ref_x, _codes(view.ref_y, view.classes))
    return model.predict_proba(view.x), [view.classes[int(c)] for c in model.classes_]


def _model_relabel(
    view: _View, proba: np.ndarray, model_classes: list[Any], key: np.ndarray
) -> _Plan:
    """The rows of lowest ``key``, each relabelled to the most likely class but its own."""
    column = {c: j for j, c in enumerate(model_classes)}
    # Random order first so that ties break by seed, not by row position.
    shuffle = view.rng.permutation(len(key))
    rows = shuffle[np.argsort(key[shuffle], kind="stable")[: view.n_poison]]
    labels = []
    for i in rows:
        p = proba[i].copy()
        if view.y[i] in column:
            p[column[view.y[i]]] = -np.inf
        labels.append(model_classes[int(np.argmax(p))])
    sort = np.argsort(rows)
    return _Plan(rows[sort], np.array(labels, dtype=object)[sort])


def _confident_flip(view: _View) -> _Plan:
    proba, model_classes = _reference_model(view)
    column = {c: j for j, c in enumerate(model_classes)}
    own = np.array([proba[i, column[c]] if c in column else 0.0 for i, c in enumerate(view.y)])
    return _model_relabel(view, proba, model_classes, -own)


def _boundary_flip(view: _View) -> _Plan:
    proba, model_classes = _reference_model(view)
    top = np.sort(proba, axis=1)
    return _model_relabel(view, proba, model_classes, top[:, -1] - top[:, -2])


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


def _copied_cells(view: _View, sources: np.ndarray) -> np.ndarray | None:
    return view.cells[sources].copy() if view.categorical else None


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
    trigger = {
        view.numeric[j]: float(np.round(v) if view.integral[j] else v)
        for j, v in zip(features, values, strict=True)
    }
    return _Plan(rows, labels, injected, _copied_cells(view, sources), trigger, target)


def _level_cells(view: _View, codes: np.ndarray) -> np.ndarray:
    """Categorical codes as the values they stand for; -1 becomes None (missing)."""
    out = np.full(codes.shape, None, dtype=object)
    for j, values in enumerate(view.levels):
        lookup = np.empty(len(values), dtype=object)
        lookup[:] = list(values)
        have = codes[:, j] >= 0
        out[have, j] = lookup[codes[have, j]]
    return out


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
        finder = NearestNeighbors(n_neighbors=n_nb).fit(view.ref_x[others])
        near = finder.kneighbors(view.ref_x[starts[mine]], return_distance=False)
        partners[mine] = others[near[np.arange(len(mine)), picks[mine] % n_nb]]
    filled = np.where(np.isfinite(view.ref_raw), view.ref_raw, view.center)
    injected = lam * filled[partners] + (1.0 - lam) * filled[starts]
    labels = view.ref_y[starts].copy()
    cells = None
    if view.categorical:
        from_partner = rng.random((k, len(view.categorical))) < lam
        ref_cells = _level_cells(view, view.ref_codes)
        cells = np.where(from_partner, ref_cells[partners], ref_cells[starts])
    return _Plan(_random_rows(view), labels, injected, cells)


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
    return _Plan(rows, labels, injected, _copied_cells(view, seeds[which]))


# --- populations and categorical attacks ------------------------------------------


def _groups(codes: np.ndarray) -> list[np.ndarray]:
    """Row positions of every population: one value of one column, or one pair of values
    of two columns (missing cells belong to none). Identical populations are listed once."""
    m = codes.shape[1]
    out: list[np.ndarray] = []
    seen: set[bytes] = set()
    for cols in [*((j,) for j in range(m)), *combinations(range(m), 2)]:
        key = codes[:, list(cols)]
        keep = np.flatnonzero((key >= 0).all(axis=1))
        if not len(keep):
            continue
        _, inverse = np.unique(key[keep], axis=0, return_inverse=True)
        inverse = inverse.ravel()
        order = np.argsort(inverse, kind="stable")
        bounds = np.flatnonzero(np.diff(inverse[order])) + 1
        for rows in np.split(keep[order], bounds):
            rows = np.sort(rows)
            if rows.tobytes() not in seen:
                seen.add(rows.tobytes())
                out.append(rows)
    return out


def _pick_population(
    view: _View,
    candidates: list[tuple[np.ndarray, Any]],
    keys: list[Any],
    pool_of: Callable[[Any], np.ndarray],
) -> tuple[np.ndarray, Any]:
    """``n_poison`` rows of the population the budget nearly covers (module docstring).

    ``candidates`` pairs each population's eligible rows with a key (the target class);
    ``pool_of(key)`` holds at least ``n_poison`` eligible rows for every key of ``keys``,
    and fills the budget when no population reaches it.
    """
    rng, k = view.rng, view.n_poison
    sizes = np.array([len(rows) for rows, _ in candidates], dtype=np.int64)
    fit = np.flatnonzero((sizes >= k) & (sizes <= 2 * k))
    if not len(fit):
        larger = np.flatnonzero(sizes > 2 * k)
        fit = larger[sizes[larger] == sizes[larger].min()] if len(larger) else fit
    if len(fit):
        rows, key = candidates[int(fit[rng.integers(len(fit))])]
        return np.sort(rng.choice(rows, size=k, replace=False)), key
    if candidates:
        largest = np.flatnonzero(sizes == sizes.max())
        rows, key = candidates[int(largest[rng.integers(len(largest))])]
    else:
        rows, key = np.empty(0, dtype=np.int64), keys[int(rng.integers(len(keys)))]
    rest = np.setdiff1d(pool_of(key), rows)
    fill = rng.choice(rest, size=k - len(rows), replace=False)
    return np.sort(np.concatenate([rows, fill])), key


def _targets(view: _View) -> list[Any]:
    """Classes with at least ``n_poison`` batch rows of other classes to relabel or copy."""
    return [c for c in view.classes if np.count_nonzero(view.y != c) >= view.n_poison]


def _subgroup_flip(view: _View) -> _Plan:
    y = view.y
    targets = _targets(view)
    candidates = [(rows[y[rows] != t], t) for t in targets for rows in _groups(view.codes)]
    rows, target = _pick_population(
        view,
        [(rows, t) for rows, t in candidates if len(rows)],
        targets,
        lambda t: np.flatnonzero(y != t),
    )
    return _Plan(rows, np.full(len(rows), target, dtype=object))


def _categorical_trigger(view: _View) -> dict[int, int]:
    """Categorical column -> level code of the trigger (module docstring)."""
    rng, ref = view.rng, view.ref_codes
    counts = [
        np.bincount(ref[:, j][ref[:, j] >= 0], minlength=len(values))
        for j, values in enumerate(view.levels)
    ]
    common = [np.flatnonzero(c >= _MIN_TRIGGER_SHARE * max(len(ref), 1)) for c in counts]
    if not any(len(c) for c in common):
        common = [np.array([int(np.argmax(c))]) if len(c) else c[:0] for c in counts]
    usable = [j for j, c in enumerate(common) if len(c)]
    options: list[tuple[float, dict[int, int]]] = []
    if len(usable) >= 2:
        for j, b in combinations(usable, 2):
            both = (ref[:, j] >= 0) & (ref[:, b] >= 0)
            joint = np.zeros((len(view.levels[j]), len(view.levels[b])), dtype=np.int64)
            np.add.at(joint, (ref[both, j], ref[both, b]), 1)
            options.extend(
                (float(joint[u, v]), {j: int(u), b: int(v)}) for u in common[j] for v in common[b]
            )
    else:
        options.extend((float(counts[j][u]), {j: int(u)}) for j in usable for u in common[j])
    best = min(score for score, _ in options)
    rarest = [trigger for score, trigger in options if score == best]
    return rarest[int(rng.integers(len(rarest)))]


def _categorical_backdoor(view: _View) -> _Plan:
    rng, k = view.rng, view.n_poison
    targets = _targets(view)
    target = targets[int(rng.integers(len(targets)))]
    trigger = _categorical_trigger(view)
    others = np.flatnonzero(view.y != target)
    rows = np.sort(rng.choice(others, size=k, replace=False))
    carrying = np.ones(len(others), dtype=bool)
    for j, code in trigger.items():
        carrying &= view.codes[others, j] == code
    pool = others[~carrying] if (~carrying).any() else others
    sources = rng.choice(pool, size=k, replace=len(pool) < k)
    codes = np.full((1, len(view.categorical)), -1, dtype=np.int64)
    for j, code in trigger.items():
        codes[0, j] = code
    stamp = _level_cells(view, codes)[0]
    cells = view.cells[sources].copy()
    for j in trigger:
        cells[:, j] = stamp[j]
    return _Plan(
        rows,
        np.full(k, target, dtype=object),
        view.raw[sources].copy(),
        cells,
        trigger={view.categorical[j]: stamp[j] for j in trigger},
        target=target,
    )


@dataclass(frozen=True)
class _Cooccurrence:
    """Reference counts by class: rows, rows per value, rows per pair of values."""

    rows: np.ndarray  # (n_classes,)
    single: list[np.ndarray]  # [j] -> (n_classes, L_j)
    pair: dict[tuple[int, int], np.ndarray]  # (j, b) -> (n_classes, L_j, L_b), j != b


def _cooccurrence(view: _View) -> _Cooccurrence:
    yc = _codes(view.ref_y, view.classes)
    n_classes, ref = len(view.classes), view.ref_codes
    sizes = [len(values) for values in view.levels]
    single, pair = [], {}
    for j, size in enumerate(sizes):
        table = np.zeros((n_classes, size), dtype=np.int64)
        have = ref[:, j] >= 0
        np.add.at(table, (yc[have], ref[have, j]), 1)
        single.append(table)
    for j, b in combinations(range(len(sizes)), 2):
        table = np.zeros((n_classes, sizes[j], sizes[b]), dtype=np.int64)
        have = (ref[:, j] >= 0) & (ref[:, b] >= 0)
        np.add.at(table, (yc[have], ref[have, j], ref[have, b]), 1)
        pair[(j, b)] = table
        pair[(b, j)] = table.transpose(0, 2, 1)
    return _Cooccurrence(np.bincount(yc, minlength=n_classes), single, pair)


def _rarest_swap(
    view: _View,
    counts: _Cooccurrence,
    codes: np.ndarray,
    yc: np.ndarray,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each row: the smallest share of its class's reference rows that hold together
    the value one swap would give and each of the row's other values, and that swap.

    Returns the share (inf where no swap is allowed), the column and the new level code,
    each an ndarray of shape (n_rows,). ``exclude`` names a column per row not to swap.
    """
    shares, swaps = [], []
    per_class = np.maximum(counts.rows[yc], 1).astype(np.float64)
    for j, values in enumerate(view.levels):
        for v in range(len(values)):
            support = counts.single[j][yc, v].astype(np.float64)
            for b in range(len(view.levels)):
                if b == j:
                    continue
                other = codes[:, b]
                joint = counts.pair[(j, b)][yc, v, np.maximum(other, 0)]
                support = np.where(other >= 0, np.minimum(support, joint), support)
            share = support / per_class
            share[codes[:, j] == v] = np.inf
            if exclude is not None:
                share[exclude == j] = np.inf
            shares.append(share)
            swaps.append((j, v))
    table = np.column_stack(shares)
    # Ties go to a random swap, per row.
    pick = np.lexsort((view.rng.random(table.shape), table), axis=-1)[:, 0]
    chosen = np.array(swaps, dtype=np.int64)[pick]
    return table[np.arange(len(table)), pick], chosen[:, 0], chosen[:, 1]


def _category_swap(view: _View) -> _Plan:
    rng, k = view.rng, view.n_poison
    counts = _cooccurrence(view)
    yc = _codes(view.y, view.classes)
    share, column, code = _rarest_swap(view, counts, view.codes, yc)
    shuffle = rng.permutation(len(share))
    rows = np.sort(shuffle[np.argsort(share[shuffle], kind="stable")[:k]])
    new = view.codes[rows].copy()
    new[np.arange(k), column[rows]] = code[rows]
    again = np.flatnonzero(share[rows] > _RARE_SHARE)
    if len(view.categorical) >= 2 and len(again):
        share2, column2, code2 = _rarest_swap(
            view, counts, new[again], yc[rows[again]], column[rows[again]]
        )
        ok = np.isfinite(share2)
        new[again[ok], column2[ok]] = code2[ok]
    cells = view.cells[rows].copy()
    swapped = new != view.codes[rows]
    cells[swapped] = _level_cells(view, new)[swapped]
    return _Plan(rows, view.y[rows].copy(), None, cells)


# --- regression ---------------------------------------------------------------------


def _target_values(view: _View, values: np.ndarray) -> np.ndarray:
    """New targets as objects for the label column; whole numbers for an integer target."""
    if view.integral_label:
        return np.round(values).astype(np.int64).astype(object)
    return values.astype(object)


def _robust_sd(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    if not len(values):
        return 1.0
    mad = float(np.median(np.abs(values - np.median(values)))) * _MAD_TO_SD
    std = float(values.std())
    return mad if mad > 0 else std if std > 0 else 1.0


def _target_shuffle(view: _View) -> _Plan:
    rng, k = view.rng, view.n_poison
    y = _target(view.y)
    rows = _random_rows(view)
    old = y[rows]
    new = old.copy()
    if k >= 2:
        # A random cyclic permutation: no row keeps its own position.
        order = rng.permutation(k)
        new[order] = old[np.roll(order, -1)]
        for i in range(k):
            if new[i] != old[i]:
                continue
            swap = np.flatnonzero((new != old[i]) & (old != new[i]))
            if len(swap):
                j = int(swap[rng.integers(len(swap))])
                new[i], new[j] = new[j], new[i]
    for stuck in np.flatnonzero(new == old):
        others = np.flatnonzero(y != old[stuck])
        new[stuck] = y[others[rng.integers(len(others))]]
    return _Plan(rows, _target_values(view, new))


def _target_scale(view: _View) -> _Plan:
    rng = view.rng
    y = _target(view.y)
    rows = np.sort(rng.choice(np.flatnonzero(y != 0), size=view.n_poison, replace=False))
    factor = _SCALE_FACTOR if rng.random() < 0.5 else 1.0 / _SCALE_FACTOR
    return _Plan(rows, _target_values(view, y[rows] * factor))


def _subgroup_shift(view: _View) -> _Plan:
    rng = view.rng
    y = _target(view.y)
    everyone = np.arange(len(y))
    rows, _ = _pick_population(
        view, [(rows, None) for rows in _groups(view.codes)], [None], lambda _: everyone
    )
    shift = _SHIFT_SDS * _robust_sd(_target(view.ref_y))
    if view.integral_label:
        shift = max(1.0, float(np.round(shift)))
    sign = 1.0 if rng.random() < 0.5 else -1.0
    return _Plan(rows, _target_values(view, y[rows] + sign * shift))


_KINDS: dict[str, Callable[[_View], _Plan]] = {
    "random_flip": _random_flip,
    "clustered_flip": _clustered_flip,
    "confident_flip": _confident_flip,
    "backdoor": _backdoor,
    "interpolation": _interpolation,
    "far_outlier": _far_outlier,
    "duplicate_flood": _duplicate_flood,
    "boundary_flip": _boundary_flip,
    "subgroup_flip": _subgroup_flip,
    "categorical_backdoor": _categorical_backdoor,
    "category_swap": _category_swap,
    "target_shuffle": _target_shuffle,
    "target_scale": _target_scale,
    "subgroup_shift": _subgroup_shift,
}


# --- adaptive attacks -----------------------------------------------------------------
# Attacks that know the gate: they score their candidates with a fitted Guard, react to
# what the gate rejected, or choose where to land. Each is a function of frames and a
# seed, like plant(); the ratchet also asks, before each batch, what the gate now is.


def least_suspicious_flips(
    frame: pd.DataFrame,
    *,
    label: str,
    guard: Guard,
    rate: float,
    source: Any = None,
    target: Any = None,
    max_candidates: int = MAX_CANDIDATES,
    random_state: int | None = None,
) -> PlantedAttack:
    """Relabel the rows whose flip the gate finds least suspicious (white-box boundary flips).

    Every eligible row (of class ``source``, when given) is scored by ``guard``
    with each class it could be given (``target``, when given, else every class of
    the guard's reference but its own); the ``round(rate * len(frame))`` rows whose
    best flip has the lowest suspicion are relabelled with that flip (module
    docstring, *Adaptive attacks*).

    Parameters
    ----------
    frame : DataFrame
        The clean batch. Its label column must have no missing values.
    label : str
        The class label column; the one ``guard`` was fitted with.
    guard : Guard
        A fitted guard with a class label: the gate as the attacker knows it.
    rate : float
        Share of the output rows that are poison, in [0, 0.5].
    source, target : label value, optional
        Flip only rows of class ``source``; flip only to ``target``.
    max_candidates : int, default MAX_CANDIDATES
        At most this many (row, class) candidates are scored; a random subset of
        the eligible rows when there are more.
    random_state : int, optional
        Seed (ties and the subset of candidates).

    Returns
    -------
    PlantedAttack
        ``kind`` is ``"least_suspicious_flip"``.

    Raises
    ------
    ConfigError
        For a guard that is not fitted on a class label, an unknown ``source`` or
        ``target``, or fewer eligible rows than the budget.
    """
    owner = "least_suspicious_flips()"
    view = _prepare(frame, label, rate, None, None, random_state, owner)
    candidates = _FlipCandidates.scored(
        frame.reset_index(drop=True), label, guard, source, target, max_candidates, view.rng, owner
    )
    rows, labels = candidates.best(np.ones(len(frame), dtype=bool), view.n_poison, owner)
    out = frame.reset_index(drop=True)
    is_poison = np.zeros(len(out), dtype=bool)
    is_poison[rows] = True
    out = _apply(out, _Plan(rows, labels), label, view)
    return PlantedAttack(frame=out, is_poison=is_poison, kind="least_suspicious_flip", rate=rate)


def ratchet(
    pool: pd.DataFrame,
    *,
    label: str,
    believe: Callable[[], Guard],
    n_batches: int = 16,
    per_batch: int = 2,
    batch_rows: int = 100,
    source: Any = None,
    target: Any = None,
    max_candidates: int = MAX_CANDIDATES,
    random_state: int | None = None,
) -> Iterator[PlantedAttack]:
    """A little poison per batch, each batch's flips chosen against the gate as it is then.

    Yields ``n_batches`` batches of ``batch_rows`` rows of ``pool``, no row twice,
    each holding ``per_batch`` flipped rows and clean rows for the rest, in a
    random order (rows that could be flipped are sent clean only beyond those
    the later batches' flips need). Before each batch the attacker calls ``believe()`` for the gate
    it believes it faces (white-box: a guard fitted on the store's current
    reference; gray-box: one fitted on its own sample) and sends the unused
    flips that guard finds least suspicious (:func:`least_suspicious_flips`).
    The caller sends each batch before asking for the next, so a reference that
    grew with it is the one the next flips are chosen against. A guard that is
    the same object as the last one is not asked again: its scores are reused.

    Parameters
    ----------
    pool : DataFrame
        The attacker's clean rows; needs ``n_batches * batch_rows`` of them.
    label : str
    believe : callable returning a fitted Guard
    n_batches, per_batch, batch_rows : int
        Batches, flipped rows per batch (at most half the batch) and rows per batch.
    source, target, max_candidates :
        As in :func:`least_suspicious_flips`.
    random_state : int, optional
        Seed; the same seed, pool and guards give the same batches.

    Yields
    ------
    PlantedAttack
        One batch; ``kind`` is ``"ratchet"``.

    Raises
    ------
    ConfigError
        For counts out of range, a pool too small for the batches, or (when a batch
        is asked for) no eligible flip left.
    """
    owner = "ratchet()"
    for name, value, low in (("n_batches", n_batches, 1), ("batch_rows", batch_rows, 1)):
        _check_count(name, value, low, owner)
    _check_count("per_batch", per_batch, 0, owner)
    if per_batch > MAX_RATE * batch_rows:
        raise param_error("per_batch", owner, f"at most {MAX_RATE} x batch_rows", per_batch)
    if not isinstance(pool, pd.DataFrame) or len(pool) < n_batches * batch_rows:
        raise param_error(
            "pool",
            owner,
            f"a DataFrame of at least n_batches x batch_rows = {n_batches * batch_rows} rows",
            len(pool) if isinstance(pool, pd.DataFrame) else type(pool),
        )
    rate = per_batch / batch_rows
    view = _prepare(pool, label, rate, None, None, random_state, owner)
    return _ratchet_batches(
        pool.reset_index(drop=True),
        label,
        believe,
        view,
        n_batches,
        per_batch,
        batch_rows,
        (source, target, max_candidates),
        owner,
    )


def _ratchet_batches(
    pool: pd.DataFrame,
    label: str,
    believe: Callable[[], Guard],
    view: _View,
    n_batches: int,
    per_batch: int,
    batch_rows: int,
    choice: tuple[Any, Any, int],
    owner: str,
) -> Iterator[PlantedAttack]:
    rng = view.rng
    free = np.ones(len(pool), dtype=bool)
    known: tuple[Guard, _FlipCandidates] | None = None
    for b in range(n_batches):
        guard = believe()
        if known is None or known[0] is not guard:
            known = (guard, _FlipCandidates.scored(pool, label, guard, *choice, rng, owner))
        flips, labels = known[1].best(free, per_batch, owner)
        free[flips] = False
        fill = _fill_rows(
            free, known[1].rows, per_batch * (n_batches - 1 - b), batch_rows - per_batch, rng
        )
        rows = np.concatenate([flips, fill])
        order = rng.permutation(batch_rows)
        free[rows] = False
        batch = _apply(
            pool.iloc[rows].reset_index(drop=True), _Plan(np.arange(per_batch), labels), label, view
        )
        is_poison = np.arange(batch_rows) < per_batch
        yield PlantedAttack(
            frame=batch.iloc[order].reset_index(drop=True),
            is_poison=is_poison[order],
            kind="ratchet",
            rate=per_batch / batch_rows,
        )


def _fill_rows(
    free: np.ndarray, candidates: np.ndarray, reserve: int, k: int, rng: np.random.Generator
) -> np.ndarray:
    """``k`` free rows to send clean, leaving ``reserve`` free flip candidates for later
    batches (candidate rows join the clean ones only beyond that reserve)."""
    eligible = np.unique(candidates[free[candidates]]) if len(candidates) else candidates
    spare = max(len(eligible) - reserve, 0)
    others = np.setdiff1d(np.flatnonzero(free), eligible)
    pool = np.concatenate(
        [others, rng.choice(eligible, size=min(spare, len(eligible)), replace=False)]
    )
    if len(pool) < k:
        pool = np.flatnonzero(free)
    return rng.choice(pool, size=k, replace=False)


@dataclass(frozen=True)
class _FlipCandidates:
    """(row, new class) pairs of a frame and the suspicion a guard gives each flip."""

    rows: np.ndarray  # int positions, (m,)
    labels: np.ndarray  # object, (m,)
    suspicion: np.ndarray  # (m,); ties already broken by the seed (see ``scored``)

    @classmethod
    def scored(
        cls,
        frame: pd.DataFrame,
        label: str,
        guard: Guard,
        source: Any,
        target: Any,
        max_candidates: int,
        rng: np.random.Generator,
        owner: str,
    ) -> _FlipCandidates:
        encoder = getattr(guard, "encoder_", None)
        if encoder is None or encoder.task != "classification" or guard.label != label:
            raise param_error(
                "guard", owner, f"a Guard fitted on rows labelled by {label!r} (classes)", guard
            )
        _check_count("max_candidates", max_candidates, 1, owner)
        classes = list(encoder.classes_)
        for name, value in (("source", source), ("target", target)):
            if value is not None and value not in classes:
                raise param_error(name, owner, f"None or one of the classes {classes}", value)
        y = np.asarray(frame[label].tolist(), dtype=object)
        eligible = np.flatnonzero(y == source) if source is not None else np.arange(len(y))
        per_row = 1 if target is not None else max(len(classes) - 1, 1)
        if len(eligible) * per_row > max_candidates:
            keep = max(1, max_candidates // per_row)
            eligible = np.sort(rng.choice(eligible, size=keep, replace=False))
        pairs = [
            (int(i), c)
            for i in eligible.tolist()
            for c in ([target] if target is not None else classes)
            if c != y[i]
        ]
        rows = np.array([i for i, _ in pairs], dtype=np.int64)
        labels = np.empty(len(pairs), dtype=object)
        labels[:] = [c for _, c in pairs]
        if not len(pairs):
            return cls(rows, labels, np.empty(0))
        flipped = frame.iloc[rows].reset_index(drop=True)
        flipped[label] = _written_objects(flipped[label], np.arange(len(rows)), labels)
        # Shuffled first, so that equal suspicions are taken in an order the seed sets.
        order = rng.permutation(len(rows))
        suspicion = anchored_suspicion(guard, flipped.iloc[order])
        return cls(rows[order], labels[order], suspicion)

    def best(self, free: np.ndarray, k: int, owner: str) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` free rows of least suspicious flip, each with its best class."""
        usable = np.flatnonzero(free[self.rows]) if len(self.rows) else self.rows
        order = usable[np.argsort(self.suspicion[usable], kind="stable")]
        _, first = np.unique(self.rows[order], return_index=True)
        chosen = order[np.sort(first)][:k]
        if len(chosen) < k:
            raise param_error(
                "frame", owner, f"at least {k} rows that can be flipped as asked", len(chosen)
            )
        return self.rows[chosen], self.labels[chosen]


def anchored_suspicion(guard: Guard, frame: pd.DataFrame) -> np.ndarray:
    """Each row's suspicion as the guard's anchored detectors see it, row by row.

    ``-log10`` of the row's combined p-value over the detectors that judge a row
    against the trusted rows alone (``Guard.anchored_``, weighted as in the
    gate): what the gate thinks of one row whatever batch it arrives in. The
    within-batch detectors are left out because the frame is a pool of
    candidates, not the batch that will be sent.

    Returns
    -------
    ndarray of shape (len(frame),)
    """
    from poisonguard.decision import combined_log_p
    from poisonguard.scan import detector_weights

    _, scores = guard.score(frame.reset_index(drop=True), source="candidates")
    names = [n for n in guard.anchored_ if n in scores] or list(scores)
    _, _, log_p = combined_log_p(
        {n: scores[n] for n in names}, guard.calibrations_, detector_weights(names)
    )
    return -log_p / np.log(10.0)


def near_copies(
    rows: pd.DataFrame,
    *,
    label: str,
    features: list[str] | None = None,
    id_column: str | None = None,
    ids: Sequence[Any] | None = None,
    random_state: int | None = None,
) -> PlantedAttack:
    """Rows the gate turned away, re-sent with the smallest change a number can take.

    In each row one numeric feature, drawn at random among its filled
    floating-point ones, moves by one unit in the last place (``numpy.nextafter``
    towards +inf); a row with none filled moves one of its filled integer
    features by 1 (the smallest step such a column can take); a row with no
    filled numeric feature is re-sent unchanged. With ``id_column``, the rows
    take the new ``ids``. Every output row is poison.

    Parameters
    ----------
    rows : DataFrame
        The rejected rows, with the label and every feature column.
    label : str
    features : list of str, optional
        Default: as :func:`plant` infers them.
    id_column : str, optional
        The id column, which gets ``ids``.
    ids : sequence, optional
        One new id per row; required with ``id_column``.
    random_state : int, optional

    Returns
    -------
    PlantedAttack
        ``kind`` is ``"near_copy"``, ``rate`` 1.

    Raises
    ------
    ConfigError
        For an id column that is not a column of ``rows``, or ``ids`` of the wrong length.
    """
    owner = "near_copies()"
    view = _prepare(rows, label, 0.0, features, None, random_state, owner)
    out = rows.reset_index(drop=True).copy()
    if id_column is not None:
        if id_column not in out.columns:
            raise param_error("id_column", owner, "a column of rows or None", id_column)
        if ids is None or len(ids) != len(out):
            raise param_error("ids", owner, f"{len(out)} new ids, one per row", ids)
        out[id_column] = pd.Series(list(ids), dtype=out[id_column].dtype)
    filled = np.isfinite(view.raw)
    floats = np.array([ptypes.is_float_dtype(out[c]) for c in view.numeric], dtype=bool)
    for i in range(len(out)):
        # A float column if the row has one filled: one ulp is far inside any tolerance,
        # where 1 in an integer column (a year of schooling) may be a real change.
        choices = np.flatnonzero(filled[i] & floats)
        if not len(choices):
            choices = np.flatnonzero(filled[i])
        if not len(choices):
            continue
        j = int(choices[view.rng.integers(len(choices))])
        column = out[view.numeric[j]]
        value = column.iloc[i]
        if ptypes.is_float_dtype(column):
            moved = np.nextafter(value, np.inf, dtype=column.dtype)
        else:
            moved = value + 1
        out[view.numeric[j]] = _written_objects(
            column, np.array([i]), np.array([moved], dtype=object)
        )
    return PlantedAttack(
        frame=out, is_poison=np.ones(len(out), dtype=bool), kind="near_copy", rate=1.0
    )


def spread_sources(
    n_batches: int, n_sources: int, *, prefix: str = "source", random_state: int | None = None
) -> list[str]:
    """A landing source for each of ``n_batches`` batches: the budget split over ``n_sources``.

    Each of the sources ``<prefix>-0`` ... ``<prefix>-<n_sources - 1>`` sends
    ``n_batches // n_sources`` or one more batches, in an order the seed sets.

    Returns
    -------
    list of str
        Source names (landing folder names), one per batch.
    """
    owner = "spread_sources()"
    _check_count("n_batches", n_batches, 0, owner)
    _check_count("n_sources", n_sources, 1, owner)
    _check_seed(random_state, owner)
    names = [f"{prefix}-{i % n_sources}" for i in range(n_batches)]
    order = np.random.default_rng(random_state).permutation(n_batches)
    return [names[i] for i in order]


def clustered_injection(
    frame: pd.DataFrame,
    *,
    label: str,
    rate: float,
    target: Any = None,
    ranges: Mapping[str, tuple[float, float]] | None = None,
    spread: float = CLUSTER_SPREAD,
    features: list[str] | None = None,
    reference: pd.DataFrame | None = None,
    random_state: int | None = None,
) -> PlantedAttack:
    """A tight cluster of made-up rows, inside the expectations, carrying another class.

    A random batch row is the cluster's centre; the ``round(rate * len(frame))``
    injected rows are the centre plus Gaussian noise of ``spread`` robust standard
    deviations per numeric feature (see *The attacker's view of the data*), each
    value clipped into its column's range and whole-number columns rounded inside
    it; categorical cells are the centre's. They carry ``target``, or a class
    other than the centre's drawn at random. Like :func:`plant`'s injections,
    they overwrite random rows, keeping those rows' other columns (an id stays
    valid).

    Parameters
    ----------
    frame : DataFrame
        The clean batch.
    label : str
    rate : float
        Share of the output rows that are poison, in [0, 0.5].
    target : label value, optional
    ranges : mapping of column to (low, high), optional
        The value range each numeric column must stay in (an expectations
        suite's, see ``poisonguard.validation.value_ranges``). Columns not named
        stay within the reference's observed range, which a suite inferred from
        it contains.
    spread : float, default CLUSTER_SPREAD
        The noise, in robust standard deviations; > 0.
    features : list of str, optional
    reference : DataFrame, optional
        Rows the attacker studies (scales, ranges, classes); default ``frame``.
    random_state : int, optional

    Returns
    -------
    PlantedAttack
        ``kind`` is ``"clustered_injection"``, ``target`` the class carried.

    Raises
    ------
    ConfigError
        For no numeric feature, fewer than two classes, a ``target`` not among
        them, or a bad ``spread`` or ``ranges``.
    """
    owner = "clustered_injection()"
    view = _prepare(frame, label, rate, features, reference, random_state, owner)
    if not view.numeric:
        raise param_error("features", owner, "a list with a numeric column", features)
    if len(view.classes) < 2:
        raise param_error("label", owner, "a column with at least two classes", label)
    if target is not None and target not in view.classes:
        raise param_error("target", owner, f"None or one of {list(view.classes)}", target)
    if isinstance(spread, bool) or not isinstance(spread, int | float) or not spread > 0:
        raise param_error("spread", owner, "a number > 0", spread)
    low, high = _ranges(view, ranges, owner)
    out = frame.reset_index(drop=True)
    is_poison = np.zeros(len(out), dtype=bool)
    k = view.n_poison
    rng = view.rng
    if target is None:
        centre = int(rng.integers(len(view.y)))
        target = _other_class(view, view.y[centre])
    else:
        others = np.flatnonzero(view.y != target)
        pool = others if len(others) else np.arange(len(view.y))
        centre = int(pool[rng.integers(len(pool))])
    if k > 0:
        middle = np.where(np.isfinite(view.raw[centre]), view.raw[centre], view.center)
        values = middle + rng.standard_normal((k, len(view.numeric))) * spread * view.scale
        values = np.clip(values, low, high)
        cells = np.repeat(view.cells[centre : centre + 1], k, axis=0) if view.categorical else None
        plan = _Plan(_random_rows(view), np.full(k, target, dtype=object), values, cells)
        out = _apply(out, plan, label, view)
        is_poison[plan.rows] = True
    else:
        out = out.copy()
    return PlantedAttack(
        frame=out, is_poison=is_poison, kind="clustered_injection", rate=float(rate), target=target
    )


def _ranges(
    view: _View, ranges: Mapping[str, tuple[float, float]] | None, owner: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per numeric feature, the lowest and highest value an injected row may hold."""
    with np.errstate(all="ignore"):
        low = np.where(np.isfinite(view.ref_raw), view.ref_raw, np.inf).min(axis=0)
        high = np.where(np.isfinite(view.ref_raw), view.ref_raw, -np.inf).max(axis=0)
    low = np.where(np.isfinite(low), low, view.center)
    high = np.where(np.isfinite(high), high, view.center)
    for column, bounds in (ranges or {}).items():
        if column not in view.numeric:
            continue
        try:
            lo, hi = (float(b) for b in bounds)
        except (TypeError, ValueError):
            raise param_error("ranges", owner, "(low, high) pairs of numbers", bounds) from None
        if not lo <= hi:
            raise param_error("ranges", owner, "(low, high) pairs with low <= high", bounds)
        j = view.numeric.index(column)
        low[j], high[j] = lo, hi
    # Whole-number columns are rounded afterwards: keep them inside after rounding too.
    low = np.where(view.integral, np.ceil(low), low)
    high = np.where(view.integral, np.maximum(np.floor(high), low), high)
    return low, high


def _check_count(name: str, value: Any, low: int, owner: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise param_error(name, owner, f"an int >= {low}", value)
