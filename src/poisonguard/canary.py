"""The pre-training canary: does the training set teach a worse model than the reference?

The detectors judge rows; the canary judges what the rows do to a model. The
gate gives it the pinned reference's sample and a sample of the training set past
``gate.canary_rows`` (README, "The canary"). The reference's rows are split into ``gate.canary_folds`` folds by each
row's content hash, so that a row always falls in the same fold. Each fold in
turn is the *canary*: one quick model is trained on the other reference rows,
another on the candidate training set (what ``gate()`` returns) less every row
whose hash is in the fold, and both predict the fold's labels. Every reference
row is thus a canary row once, and never in the training set of a model that
predicts it. The canary fails when the training set's models do worse by more
than a margin, overall or on one class (R^2 for a regression target), and a
paired test says the drop is more than chance (``gate.canary_level``, split
over the figures compared).

The models are linear (``LogisticRegression``, ``Ridge``) on the detectors'
encoding of the columns (``detectors.base.Encoder``: numbers standardised,
categories one-hot, missing cells and never-seen values flagged): fast (about a
second on the digits demo, 2.4 s on 20,000 reference and 60,000 training rows),
deterministic, and moved by flipped labels, where a flexible model memorises
flips locally and still classifies the canary rows well. They run on one thread.

Honest limits: the training set usually holds the reference and more, so its
model starts ahead; poison must undo that head start before it shows. The paired
test sees only which rows are canaries, not which rows a clean batch brought,
and canary rows share the reference's sample: the margins, not the test, absorb
a clean batch that moves a coarse model's threshold (``benchmarks/canary.py``).
Canary rows are clean reference rows, so a backdoor (a trigger no canary row
carries) does not show here; the detectors are the defence against it.

A canary needs labels a model can learn. When the reference's own models do no
better on the canary rows than always answering the commonest class (by the same
level), or no better than the mean target (R^2 at most 0), the canary cannot
judge: any training set moves a model of noise by chance, class against class.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from poisonguard.config import Config, GateSettings
from poisonguard.detectors._common import one_thread
from poisonguard.detectors.base import Encoder, Table
from poisonguard.errors import shown
from poisonguard.scan import infer_features

#: A reference with fewer labelled rows than this cannot judge a training set.
MIN_CANARY_ROWS = 20
#: The column with each row's content hash, which every file the store writes carries.
HASH_COLUMN = "pg_row_hash"
_SALT = b"poisonguard-canary\0"


def canary_folds(hashes: np.ndarray | pd.Series, folds: int) -> np.ndarray:
    """The canary fold of each row, a function of its content hash alone.

    So a row is in the same fold in every reference version that holds it, and
    copies of a row are in one fold.

    Parameters
    ----------
    hashes : ndarray of shape (n_rows,)
        Row content hashes (``pg_row_hash``), as strings.
    folds : int
        How many folds.

    Returns
    -------
    ndarray of shape (n_rows,), int64
        Values in ``[0, folds)``.
    """
    return np.array(
        [
            (int.from_bytes(hashlib.sha256(_SALT + str(h).encode()).digest()[:8], "big") * folds)
            >> 64
            for h in np.asarray(hashes, dtype=object).tolist()
        ],
        dtype=np.int64,
    )


@dataclass(frozen=True)
class CanarySplit:
    """One fold: its canary rows and the two training sets, neither holding a canary row.

    Attributes
    ----------
    canary : ndarray of shape (n_canary,), int64
        Positions in the reference of the fold's rows.
    reference : ndarray of shape (n_reference_rows,), int64
        Positions of the other reference rows: what the reference's model trains on.
    training : ndarray of shape (n_training_rows,), int64
        Positions in the training set of the rows whose hash is no canary row's
        hash: what the training set's model trains on.
    """

    canary: np.ndarray
    reference: np.ndarray
    training: np.ndarray


def split_canary(
    reference: pd.DataFrame, training: pd.DataFrame, folds: int
) -> tuple[CanarySplit, ...]:
    """Each fold of ``reference`` as canary rows, taken out of both training sets.

    Rows are matched by content hash (``pg_row_hash``), so the training set's
    copy of a reference row, or any exact copy of it, leaves with it.
    """
    ref_fold = canary_folds(_hashes(reference), folds)
    fold_of = dict(zip(_hashes(reference).tolist(), ref_fold.tolist(), strict=True))
    train_fold = np.array([fold_of.get(h, -1) for h in _hashes(training).tolist()], dtype=np.int64)
    return tuple(
        CanarySplit(
            np.flatnonzero(ref_fold == k),
            np.flatnonzero(ref_fold != k),
            np.flatnonzero(train_fold != k),
        )
        for k in range(folds)
    )


def _hashes(frame: pd.DataFrame) -> np.ndarray:
    """The rows' ``pg_row_hash`` (keyed, as the store wrote them); for a frame without it
    (a plain table), unkeyed content hashes: folds are computed in memory and never kept,
    and a fixed hash keeps the split the same from run to run."""
    if HASH_COLUMN in frame.columns:
        return frame[HASH_COLUMN].astype(str).to_numpy(dtype=object)
    from poisonguard.store import data_columns, row_hashes

    return row_hashes(frame, data_columns(frame), key=None)


@dataclass(frozen=True)
class ClassCanary:
    """One class's canary figures.

    Attributes
    ----------
    label : object
        The class.
    rows : int
        Canary rows of the class.
    reference, training : float
        Accuracy on them of the reference's model and of the training set's.
    drop : float
        ``reference - training``.
    p_value : float
        One-sided exact McNemar test that the training set's model is no worse
        (over the rows exactly one of the two models gets right).
    failed : bool
        ``drop`` past ``canary_class_margin`` and ``p_value`` at most the split level.
    """

    label: Any
    rows: int
    reference: float
    training: float
    drop: float
    p_value: float
    failed: bool


@dataclass(frozen=True)
class CanaryResult:
    """What the canary found: the scores of both models on the canary rows, and the verdict.

    Attributes
    ----------
    task : {"classification", "regression"} or None
    metric : {"accuracy", "r2"} or None
    rows : int
        Canary rows judged on: every labelled reference row, each in one fold.
    reference_rows, training_rows : int
        Rows the reference's models and the training set's models were trained
        on, per fold on average.
    reference, training : float
        Score (accuracy or R^2) on the canary rows of each side's models; NaN
        when it could not run.
    drop : float
        ``reference - training``.
    p_value : float
        One-sided paired test that the training set's model is no worse: exact
        McNemar for classes, a t-test of the squared-error differences for a target.
    margin : float
        The margin the overall drop was held to.
    level : float
        The level each test was held to (``canary_level`` split over the figures compared).
    classes : tuple of ClassCanary
        Per class with canary rows (classification).
    reasons : tuple of str
        One line per failure; empty when the canary passed.
    unable : str or None
        Why the canary could not judge the training set (then no figures).
    seconds : float
        How long it took.
    """

    task: str | None
    metric: str | None
    rows: int
    reference_rows: int
    training_rows: int
    reference: float
    training: float
    drop: float
    p_value: float
    margin: float
    level: float
    classes: tuple[ClassCanary, ...]
    reasons: tuple[str, ...]
    unable: str | None
    seconds: float

    @classmethod
    def without_figures(
        cls, *, unable: str | None = None, reasons: tuple[str, ...] = (), seconds: float = 0.0
    ) -> CanaryResult:
        """A result with no figures: the canary could not judge (``unable``) or not run."""
        nan = float("nan")
        return cls(None, None, 0, 0, 0, nan, nan, nan, nan, nan, nan, (), reasons, unable, seconds)

    @property
    def judged(self) -> bool:
        """Whether both models were trained and scored (the figures are numbers)."""
        return not math.isnan(self.reference)

    @property
    def ok(self) -> bool:
        """Judged, and nothing failed."""
        return self.judged and not self.reasons

    def summary(self) -> str:
        """One line for people: the overall figures and the weakest class."""
        if self.unable is not None:
            return f"canary: not judged: {self.unable}"
        if not self.judged:
            return "; ".join(self.reasons) or "canary: not run"
        name = "R^2" if self.metric == "r2" else "accuracy"
        line = (
            f"canary: {name} on {self.rows} trusted canary rows {self.training:.3f} with the "
            f"training set, {self.reference:.3f} with the reference"
        )
        if self.classes:
            worst = max(self.classes, key=lambda c: (c.drop, -c.rows))
            line += (
                f"; weakest class {_label(worst.label)}: {worst.training:.3f} against "
                f"{worst.reference:.3f} ({worst.rows} rows)"
            )
        return line + f" ({self.seconds:.1f}s)"

    def as_dict(self) -> dict[str, Any]:
        """The figures as the gate's manifest and audit entry record them."""
        if not self.judged:
            return {"run": False, "unable": self.unable, "reasons": list(self.reasons)}
        return {
            "run": True,
            "task": self.task,
            "metric": self.metric,
            "rows": self.rows,
            "reference_rows": self.reference_rows,
            "training_rows": self.training_rows,
            "reference": _num(self.reference),
            "training": _num(self.training),
            "drop": _num(self.drop),
            "p_value": _num(self.p_value),
            "margin": self.margin,
            "level": self.level,
            "classes": [
                {
                    "label": _jsonable(c.label),
                    "rows": c.rows,
                    "reference": _num(c.reference),
                    "training": _num(c.training),
                    "drop": _num(c.drop),
                    "p_value": _num(c.p_value),
                    "failed": c.failed,
                }
                for c in self.classes
            ],
            "reasons": list(self.reasons),
            "seconds": round(self.seconds, 3),
        }


def run_canary(reference: pd.DataFrame, training: pd.DataFrame, config: Config) -> CanaryResult:
    """Train quick models on each training set, fold by fold, and compare them on the canary rows.

    Parameters
    ----------
    reference : DataFrame
        The pinned reference version's rows (with ``pg_row_hash``).
    training : DataFrame
        The candidate training set: every clean row (with ``pg_row_hash``).
    config : Config
        The label, task, feature columns and kinds, and ``[gate]``'s canary settings.

    Returns
    -------
    CanaryResult
        With ``unable`` set when there is no label, too few labelled reference
        rows, a fold whose other reference rows hold a single class, or canary
        targets that do not vary.
    """
    start = time.perf_counter()
    settings = config.gate
    label = config.label
    if label is None:
        return _unable("the dataset has no label, so there is no model to train", start)
    if label not in reference.columns:
        return _unable("the store has no pinned reference rows to compare with", start)
    if label not in training.columns:
        return _unable(f"the training set has no label column {label!r}", start)
    reference = reference[reference[label].notna()].reset_index(drop=True)
    training = training[training[label].notna()].reset_index(drop=True)
    if len(reference) < MIN_CANARY_ROWS:
        return _unable(
            f"the reference has {len(reference)} labelled rows; it needs at least "
            f"{MIN_CANARY_ROWS}",
            start,
        )
    features = list(config.features) or infer_features(reference, label, config.id_column)
    # Scales and categories from the whole reference: no model sees a canary row's label.
    encoder = Encoder.fit(
        reference,
        features,
        label,
        config.columns,
        config.task,
        max_categories=config.max_categories,
    )
    ref_t = encoder.transform(reference, source="reference")
    train_t = encoder.transform(training, source="training set")
    splits = [s for s in split_canary(reference, training, settings.canary_folds) if s.canary.size]
    sizes = (
        int(np.mean([s.reference.size for s in splits])),
        int(np.mean([s.training.size for s in splits])),
    )
    if encoder.task == "regression":
        return _judge_target(ref_t, train_t, splits, sizes, settings, start)
    truth = np.asarray(ref_t.y)
    ref_pred, train_pred = np.empty_like(truth), np.empty_like(truth)
    with one_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a slow-converging fit is still a usable model
        for k, split in enumerate(splits):
            if np.unique(truth[split.reference]).size < 2:
                return _unable(f"fold {k}'s other reference rows hold a single class", start)
            for pred, table, rows in (
                (ref_pred, ref_t, split.reference),
                (train_pred, train_t, split.training),
            ):
                pred[split.canary] = _predict_classes(
                    table.x32[rows], np.asarray(table.y)[rows], ref_t.x32[split.canary]
                )
    ref_right, train_right = ref_pred == truth, train_pred == truth
    commonest = float(np.bincount(truth).max() / truth.size)
    if stats.binom.sf(ref_right.sum() - 1, truth.size, commonest) > settings.canary_level:
        return _unable(
            f"the reference's own models predict its labels no better than its commonest "
            f"class (accuracy {ref_right.mean():.3f} against {commonest:.3f} on {truth.size} "
            "canary rows)",
            start,
        )
    present = [c for c in range(len(encoder.classes_)) if (truth == c).any()]
    level = settings.canary_level / (1 + len(present))
    reasons = []
    drop, p = _accuracy_drop(ref_right, train_right)
    if drop > settings.canary_margin and p <= level:
        reasons.append(
            f"canary: accuracy on {truth.size} trusted canary rows {train_right.mean():.3f} "
            f"with the training set against {ref_right.mean():.3f} with the reference "
            f"(margin {settings.canary_margin:g}, p = {p:.2g})"
        )
    classes = []
    for code in present:
        rows = truth == code
        c_drop, c_p = _accuracy_drop(ref_right[rows], train_right[rows])
        c_failed = c_drop > settings.canary_class_margin and c_p <= level
        figures = ClassCanary(
            encoder.classes_[code],
            int(rows.sum()),
            float(ref_right[rows].mean()),
            float(train_right[rows].mean()),
            c_drop,
            c_p,
            c_failed,
        )
        classes.append(figures)
        if c_failed:
            reasons.append(
                f"canary: class {_label(figures.label)}: accuracy on {figures.rows} canary rows "
                f"{figures.training:.3f} with the training set against {figures.reference:.3f} "
                f"with the reference (margin {settings.canary_class_margin:g}, p = {c_p:.2g})"
            )
    return CanaryResult(
        "classification",
        "accuracy",
        truth.size,
        *sizes,
        float(ref_right.mean()),
        float(train_right.mean()),
        drop,
        p,
        settings.canary_margin,
        level,
        tuple(classes),
        tuple(reasons),
        None,
        time.perf_counter() - start,
    )


def _predict_classes(X: np.ndarray, y: np.ndarray, X_canary: np.ndarray) -> np.ndarray:
    """A logistic regression of ``y`` on ``X``, predicting the canary rows (one class: that one)."""
    from sklearn.linear_model import LogisticRegression

    classes = np.unique(y)
    if classes.size == 1:
        return np.full(len(X_canary), classes[0])
    return np.asarray(LogisticRegression(max_iter=1000).fit(X, y).predict(X_canary))


def _accuracy_drop(ref_right: np.ndarray, train_right: np.ndarray) -> tuple[float, float]:
    """The accuracy drop and the exact one-sided McNemar p-value that it is chance."""
    worse = int((ref_right & ~train_right).sum())
    better = int((~ref_right & train_right).sum())
    drop = float(ref_right.mean() - train_right.mean())
    if worse + better == 0:
        return drop, 1.0
    return drop, float(stats.binom.sf(worse - 1, worse + better, 0.5))


def _judge_target(
    ref_t: Table,
    train_t: Table,
    splits: list[CanarySplit],
    sizes: tuple[int, int],
    settings: GateSettings,
    start: float,
) -> CanaryResult:
    """R^2 of ridge regressions on the canary rows, fold by fold, and a paired test of
    their squared errors."""
    from sklearn.linear_model import Ridge

    y = np.asarray(ref_t.target)
    spread = float(((y - y.mean()) ** 2).sum())
    if spread == 0.0 or not np.isfinite(spread):
        return _unable(f"the {y.size} reference targets do not vary, so R^2 is undefined", start)
    errors = np.empty((2, y.size))
    with one_thread():
        for split in splits:
            for i, (table, rows) in enumerate(
                ((ref_t, split.reference), (train_t, split.training))
            ):
                target = np.asarray(table.target)[rows]
                fit = np.isfinite(target)
                model = Ridge(alpha=1.0).fit(table.x32[rows][fit], target[fit])
                errors[i, split.canary] = (
                    model.predict(ref_t.x32[split.canary]) - y[split.canary]
                ) ** 2
    r2_ref, r2_train = (1.0 - float(e.sum()) / spread for e in errors)
    if r2_ref <= 0.0:
        return _unable(
            f"the reference's own models predict its targets no better than their mean "
            f"(R^2 {r2_ref:.3f} on {y.size} canary rows)",
            start,
        )
    diff = errors[1] - errors[0]
    p = 1.0
    if np.ptp(diff) > 0:
        p = float(stats.ttest_1samp(diff, 0.0, alternative="greater").pvalue)
    drop = r2_ref - r2_train
    reasons = []
    if drop > settings.canary_r2_margin and p <= settings.canary_level:
        reasons.append(
            f"canary: R^2 on {y.size} trusted canary rows {r2_train:.3f} with the training set "
            f"against {r2_ref:.3f} with the reference "
            f"(margin {settings.canary_r2_margin:g}, p = {p:.2g})"
        )
    return CanaryResult(
        "regression",
        "r2",
        y.size,
        *sizes,
        r2_ref,
        r2_train,
        drop,
        p,
        settings.canary_r2_margin,
        settings.canary_level,
        (),
        tuple(reasons),
        None,
        time.perf_counter() - start,
    )


def _unable(why: str, start: float) -> CanaryResult:
    return CanaryResult.without_figures(unable=why, seconds=time.perf_counter() - start)


def _label(value: Any) -> str:
    return "'" + shown(str(value), 60) + "'"


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)


def _num(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)
