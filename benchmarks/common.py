"""Shared pieces of the benchmarks: data, splits, metrics, the anchor methods and tables.

Every benchmark runs poisonguard *and* the tools a user would pick instead (the
"anchors") on the same rows in the same run. Each method is a plain function
``method(case) -> Verdict`` registered in :data:`METHODS`; a verdict carries the
rows the method would drop (its own default decision rule) and a continuous
score (higher = more suspicious) for threshold-free metrics.

Anchors and their decision thresholds (stated in every benchmark's output)
-------------------------------------------------------------------------
cleanlab
    Out-of-fold ``predict_proba`` of ``StandardScaler + LogisticRegression`` over
    reference + batch (5-fold ``StratifiedKFold``, shuffled, seeded), then
    ``cleanlab.filter.find_label_issues(labels, pred_probs)`` with its defaults
    (``filter_by="prune_by_noise_rate"``). Only batch rows are scored; the
    reference rows are in the pool because a user would train on them too.
    Score: ``1 - get_label_quality_scores`` (self-confidence).
knn_label
    For each batch row, its 10 nearest rows *of the trusted reference* (Euclidean,
    features standardized with the reference mean and standard deviation). Score:
    share of those 10 whose label differs from the row's. Flagged when the
    majority disagrees (score > 0.5, i.e. at least 6 of 10). Neighbours come from
    the reference only, not reference + batch: in a pooled search clustered flips
    and duplicate floods vouch for themselves, so the pooled variant is the weaker
    anchor and we compare against the stronger one.
iforest
    ``sklearn.ensemble.IsolationForest(random_state=seed)`` (100 trees,
    ``contamination="auto"``) fitted on the reference features, applied to the
    batch. Flagged: ``predict == -1`` (the original paper's 0.5 score cut).
    Score: ``-score_samples``. Label-free.
ecod
    ``pyod.models.ecod.ECOD()`` with its default ``contamination=0.1`` fitted on
    the reference: flags batch rows scoring above the reference's 90th
    percentile. Score: ``decision_function`` (PyOD computes the ECDFs over
    reference + the scored rows). Label-free.
cleanlab_or_iforest
    Flags the union of cleanlab's and IsolationForest's flags; score: the larger
    of the two scores' within-batch percentile ranks.
gb_residual (regression)
    Out-of-fold predictions of ``HistGradientBoostingRegressor(random_state=seed)``
    over reference + batch (5-fold ``KFold``, shuffled, seeded). Flagged when the
    residual lies more than 3 robust standard deviations from the median, the
    robust sd being 1.4826 times the median absolute deviation of the reference
    rows' residuals. Score: that distance in robust sds.
cleanlab_regression (regression)
    ``cleanlab.regression.learn.CleanLearning(seed=seed).find_label_issues(X, y)``
    over reference + batch with its defaults (LinearRegression). Flagged:
    ``is_label_issue``; score ``1 - label_quality``. Batch rows only.
poisonguard
    ``poisonguard.scan(batch, label=label, reference=reference)`` with its default
    config (plus ``task=`` on mixed tables); flags ``.quarantined``, score
    ``.scores["suspicion"]``. Skipped with a notice when ``poisonguard.scan``
    cannot be imported.

All anchors get the raw (unstandardized) feature columns and do their own
scaling as described; poisonguard gets the same frames. On mixed tables
(``tables.py``) the anchors get the :class:`TableEncoder` encoding instead and
poisonguard the tables as they are. :func:`quiet` pins
BLAS/OpenMP pools to one thread for every method.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.api import types as ptypes
from scipy.io import loadmat
from scipy.stats import rankdata
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, precision_recall_fscore_support
from sklearn.model_selection import StratifiedKFold, cross_val_predict, train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

LABEL = "label"
#: The shared data folder beside the repository (``../shared/data`` from its root).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ODDS_DIR = SHARED_DATA / "odds"
ODDS_SETS: tuple[str, ...] = (
    "arrhythmia",
    "cardio",
    "letter",
    "mnist",
    "optdigits",
    "pima",
    "satimage-2",
    "shuttle",
    "vowels",
    "wbc",
)
DATASETS: tuple[str, ...] = ("breast_cancer", "digits", "wine")
#: A retrain "recovered share" is only reported when poison cost at least this much accuracy;
#: below it the denominator is noise.
MIN_DAMAGE = 0.01
N_NEIGHBORS = 10
N_FOLDS = 5
#: gb_residual flags a residual this many robust standard deviations from the median.
RESIDUAL_SDS = 3.0
MAD_TO_SD = 1.4826

_LOADERS: dict[str, Callable[..., Any]] = {
    "breast_cancer": load_breast_cancer,
    "digits": load_digits,
    "wine": load_wine,
}


def quiet(threads: int | None = 1) -> None:
    """Silence warnings from the libraries under test and pin BLAS/OpenMP thread pools.

    One thread for every method alike by default: on a shared machine a second
    BLAS thread waiting for a busy core made a 0.05 s logistic-regression fit
    take 2 s, so multi-threaded timings (and run lengths) measure the neighbours.
    ``threads=None`` leaves the pools as the environment set them.
    """
    warnings.filterwarnings("ignore")
    if threads is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)


# --- data -------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """A labelled table: feature columns plus the label column ``LABEL``."""

    name: str
    frame: pd.DataFrame
    features: list[str]


def load_dataset(name: str) -> Dataset:
    """Load one of :data:`DATASETS` (sklearn's bundled copies, no network)."""
    data = _LOADERS[name](as_frame=True)
    frame = data.frame.rename(columns={"target": LABEL})
    return Dataset(name, frame.reset_index(drop=True), list(data.feature_names))


def load_odds(name: str) -> tuple[np.ndarray, np.ndarray]:
    """``X`` of shape (n_rows, n_features) and ``y`` (1 = outlier) of one ODDS set."""
    mat = loadmat(ODDS_DIR / f"{name}.mat")
    return np.asarray(mat["X"], dtype=np.float64), np.asarray(mat["y"]).ravel().astype(int)


def split_three(
    frame: pd.DataFrame,
    seed: int,
    shares: tuple[float, float, float] = (0.4, 0.2, 0.4),
    *,
    stratify: str | None = LABEL,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Reference / test / batch split, stratified on the column ``stratify`` (None: not
    stratified, for a regression target), each part with a fresh RangeIndex."""
    reference, rest = train_test_split(
        frame,
        train_size=shares[0],
        stratify=None if stratify is None else frame[stratify],
        random_state=seed,
    )
    test, batch = train_test_split(
        rest,
        train_size=shares[1] / (shares[1] + shares[2]),
        stratify=None if stratify is None else rest[stratify],
        random_state=seed,
    )
    return (
        reference.reset_index(drop=True),
        test.reset_index(drop=True),
        batch.reset_index(drop=True),
    )


class TableEncoder:
    """The anchors' view of a mixed table, learnt from the trusted reference.

    Numeric columns (any numeric dtype but boolean; dates as days) are imputed with
    the reference median and standardised with the reference mean and standard
    deviation; each numeric column with a missing cell in the reference gains a
    0/1 missing indicator. Every other column (strings, categories, booleans) is
    one-hot encoded over the values the reference holds, a missing cell counting
    as a value of its own where the reference has one; values the reference never
    shows encode as all zeros.
    """

    def __init__(self, *, features: list[str]) -> None:
        self.features = features

    def fit(self, reference: pd.DataFrame) -> TableEncoder:
        self.numeric_ = [c for c in self.features if _is_number(reference[c])]
        numbers = self._numbers(reference)
        self.median_ = np.nan_to_num(np.nanmedian(numbers, axis=0)) if len(numbers) else 0.0
        filled = np.where(np.isnan(numbers), self.median_, numbers)
        self.mean_ = filled.mean(axis=0)
        std = filled.std(axis=0)
        self.std_ = np.where(std > 0, std, 1.0)
        self.flagged_ = [c for c in self.numeric_ if reference[c].isna().any()]
        self.levels_ = {
            c: _sorted_values(reference[c]) for c in self.features if c not in self.numeric_
        }
        return self

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Encoded features of ``frame``: float columns, ``frame``'s index."""
        numbers = self._numbers(frame)
        filled = np.where(np.isnan(numbers), self.median_, numbers)
        blocks = {
            c: (filled[:, j] - self.mean_[j]) / self.std_[j] for j, c in enumerate(self.numeric_)
        }
        for c in self.flagged_:
            blocks[f"{c}=<missing>"] = frame[c].isna().to_numpy(np.float64)
        for c, levels in self.levels_.items():
            cells = frame[c].astype(object).where(frame[c].notna(), None).to_numpy()
            for value in levels:
                hit = [cell is None for cell in cells] if value is None else cells == value
                blocks[f"{c}={value}"] = np.asarray(hit, dtype=np.float64)
        return pd.DataFrame(blocks, index=frame.index)

    def _numbers(self, frame: pd.DataFrame) -> np.ndarray:
        out = np.empty((len(frame), len(self.numeric_)))
        for j, c in enumerate(self.numeric_):
            column = frame[c]
            if ptypes.is_datetime64_any_dtype(column):
                column = (column - pd.Timestamp(0, tz=column.dt.tz)) / pd.Timedelta(days=1)
            out[:, j] = column.to_numpy(np.float64, na_value=np.nan)
        return out


def _is_number(column: pd.Series) -> bool:
    return (
        ptypes.is_numeric_dtype(column) and not ptypes.is_bool_dtype(column)
    ) or ptypes.is_datetime64_any_dtype(column)


def _sorted_values(column: pd.Series) -> list[Any]:
    values = sorted(set(column.dropna().tolist()), key=lambda v: (type(v).__name__, v))
    return [*values, None] if column.isna().any() else values


# --- methods ------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What one method says about a batch.

    Attributes
    ----------
    flagged : ndarray of shape (n_rows,), bool
        Rows the method would keep out, by its own default rule.
    score : ndarray of shape (n_rows,), float
        Higher = more suspicious.
    seconds : float
        Wall time of the method on this batch (0 for a derived method's reuse).
    """

    flagged: np.ndarray
    score: np.ndarray
    seconds: float = 0.0


@dataclass
class Case:
    """One batch to judge, with the trusted rows a method may learn from.

    ``reference`` and ``batch`` are what the anchors read. For mixed tables they are
    an encoding (:class:`TableEncoder`, already on the reference's scale: ``scaled``)
    and ``raw`` holds the reference and batch as they came, which poisonguard
    judges; ``task`` is then passed to ``scan``. ``n_jobs`` is IsolationForest's.
    """

    reference: pd.DataFrame
    batch: pd.DataFrame
    features: list[str]
    label: str | None
    seed: int
    cache: dict[str, Verdict] = field(default_factory=dict)
    task: str | None = None
    raw: tuple[pd.DataFrame, pd.DataFrame] | None = None
    scaled: bool = False
    n_jobs: int | None = None


def timed(fn: Callable[[Case], tuple[np.ndarray, np.ndarray]]) -> Callable[[Case], Verdict]:
    def run(case: Case) -> Verdict:
        start = time.perf_counter()
        flagged, score = fn(case)
        return Verdict(
            np.asarray(flagged, dtype=bool),
            np.asarray(score, dtype=np.float64),
            time.perf_counter() - start,
        )

    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


def _codes(*labels: pd.Series) -> list[np.ndarray]:
    classes = {v: i for i, v in enumerate(sorted(set().union(*(set(s) for s in labels))))}
    return [s.map(classes).to_numpy(dtype=np.int64) for s in labels]


def lr_model() -> Pipeline:
    """The model every benchmark trains: logistic regression on standardized features."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))


@timed
def cleanlab_method(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab find_label_issues on 5-fold out-of-fold LR pred_probs over reference + batch."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    if case.label is None:
        raise ValueError("cleanlab needs a label column")
    pool = pd.concat([case.reference, case.batch], ignore_index=True)
    (labels,) = _codes(pool[case.label])
    folds = StratifiedKFold(n_splits=N_FOLDS, shuffle=True, random_state=case.seed)
    pred_probs = cross_val_predict(
        lr_model(), pool[case.features], labels, cv=folds, method="predict_proba"
    )
    issues = find_label_issues(labels, pred_probs, n_jobs=1)
    quality = get_label_quality_scores(labels, pred_probs)
    tail = slice(len(case.reference), None)
    return issues[tail], 1.0 - quality[tail]


@timed
def knn_label_method(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """Share of the 10 nearest trusted rows whose label differs; flagged above one half."""
    from sklearn.neighbors import NearestNeighbors

    if case.label is None:
        raise ValueError("knn_label needs a label column")
    ref = case.reference[case.features].to_numpy(np.float64)
    mean, std = ref.mean(axis=0), ref.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    if case.scaled:
        # The table encoding is already on the reference's scale; one-hot columns stay 0/1.
        mean, std = np.zeros_like(mean), np.ones_like(std)
    finder = NearestNeighbors(n_neighbors=min(N_NEIGHBORS, len(ref))).fit((ref - mean) / std)
    near = finder.kneighbors(
        (case.batch[case.features].to_numpy(np.float64) - mean) / std, return_distance=False
    )
    ref_labels, batch_labels = _codes(case.reference[case.label], case.batch[case.label])
    disagree = (ref_labels[near] != batch_labels[:, None]).mean(axis=1)
    return disagree > 0.5, disagree


@timed
def iforest_method(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """sklearn IsolationForest, contamination="auto", fitted on the reference."""
    from sklearn.ensemble import IsolationForest

    model = IsolationForest(random_state=case.seed, n_jobs=case.n_jobs).fit(
        case.reference[case.features].to_numpy(np.float64)
    )
    normality = model.score_samples(case.batch[case.features].to_numpy(np.float64))
    # predict() is "score_samples - offset_ < 0"; scoring once keeps the timing fair.
    return normality - model.offset_ < 0, -normality


@timed
def ecod_method(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """PyOD ECOD, default contamination=0.1, fitted on the reference."""
    from pyod.models.ecod import ECOD

    model = ECOD().fit(case.reference[case.features].to_numpy(np.float64))
    score = model.decision_function(case.batch[case.features].to_numpy(np.float64))
    # predict() is "decision_function > threshold_"; scoring once keeps the timing fair.
    return score > model.threshold_, score


@timed
def gb_residual_method(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold gradient-boosting residuals; flagged beyond RESIDUAL_SDS robust sds."""
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.model_selection import KFold

    if case.label is None:
        raise ValueError("gb_residual needs a target column")
    pool = pd.concat([case.reference, case.batch], ignore_index=True)
    target = pool[case.label].to_numpy(np.float64)
    folds = KFold(n_splits=N_FOLDS, shuffle=True, random_state=case.seed)
    model = HistGradientBoostingRegressor(random_state=case.seed)
    residual = target - cross_val_predict(model, pool[case.features], target, cv=folds)
    # The scale comes from the trusted rows' residuals, which no poison inflates.
    trusted = residual[: len(case.reference)]
    centre = float(np.median(trusted))
    spread = MAD_TO_SD * float(np.median(np.abs(trusted - centre)))
    spread = spread if spread > 0 else float(np.std(trusted)) or 1.0
    score = np.abs(residual[len(case.reference) :] - centre) / spread
    return score > RESIDUAL_SDS, score


@timed
def cleanlab_regression_method(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's regression CleanLearning.find_label_issues over reference + batch, defaults."""
    from cleanlab.regression.learn import CleanLearning

    if case.label is None:
        raise ValueError("cleanlab_regression needs a target column")
    pool = pd.concat([case.reference, case.batch], ignore_index=True)
    issues = CleanLearning(seed=case.seed).find_label_issues(
        pool[case.features].to_numpy(np.float64), pool[case.label].to_numpy(np.float64)
    )
    tail = slice(len(case.reference), None)
    flagged = issues["is_label_issue"].to_numpy(dtype=bool)[tail]
    return flagged, 1.0 - issues["label_quality"].to_numpy(dtype=np.float64)[tail]


def percentile_rank(score: np.ndarray) -> np.ndarray:
    """Within-array percentile rank in (0, 1], ties averaged."""
    return rankdata(score) / len(score)


def cleanlab_or_iforest_method(case: Case) -> Verdict:
    """Union of the cleanlab and IsolationForest flags; score = max of their percentile ranks."""
    a, b = run_method("cleanlab", case), run_method("iforest", case)
    return Verdict(
        a.flagged | b.flagged,
        np.maximum(percentile_rank(a.score), percentile_rank(b.score)),
        a.seconds + b.seconds,
    )


def poisonguard_scan() -> Callable[..., Any] | None:
    """``poisonguard.scan`` when it can be imported, else None."""
    try:
        import poisonguard
    except ImportError:
        return None
    scan = getattr(poisonguard, "scan", None)
    if scan is not None and not callable(scan):
        scan = getattr(scan, "scan", None)
    return scan if callable(scan) else None


#: Overrides of poisonguard's detection settings for a run (e.g. ``{"fdr": 0.1}``); empty = defaults.
POISONGUARD_SETTINGS: dict[str, Any] = {}


@timed
def poisonguard_method(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """poisonguard.scan with its default config (or POISONGUARD_SETTINGS); held rows, suspicion."""
    scan = poisonguard_scan()
    if scan is None:
        raise RuntimeError("poisonguard.scan is not importable")
    from poisonguard.config import DetectionSettings

    config = DetectionSettings(**POISONGUARD_SETTINGS) if POISONGUARD_SETTINGS else None
    if case.raw is not None:
        reference, batch = case.raw
        columns = list(batch.columns)
    else:
        reference, batch = case.reference, case.batch
        columns = [*case.features, *([case.label] if case.label is not None else [])]
    # Only a table case names its task, so scan() without a task= keyword still runs the rest.
    task = {} if case.task is None else {"task": case.task}
    result = scan(
        batch[columns], label=case.label, reference=reference[columns], config=config, **task
    )
    flagged = result.quarantined.reindex(batch.index).fillna(False).to_numpy(dtype=bool)
    score = result.scores["suspicion"].reindex(batch.index).to_numpy(dtype=np.float64)
    return flagged, score


METHODS: dict[str, Callable[[Case], Verdict]] = {
    "poisonguard": poisonguard_method,
    "cleanlab": cleanlab_method,
    "knn_label": knn_label_method,
    "iforest": iforest_method,
    "ecod": ecod_method,
    "cleanlab_or_iforest": cleanlab_or_iforest_method,
    "gb_residual": gb_residual_method,
    "cleanlab_regression": cleanlab_regression_method,
}
#: The anchors of detection.py (numeric features, a class label).
ANCHORS: tuple[str, ...] = ("cleanlab", "knn_label", "iforest", "ecod", "cleanlab_or_iforest")

THRESHOLDS: dict[str, str] = {
    "poisonguard": "scan() defaults: rows in .quarantined; score .scores['suspicion']",
    "cleanlab": "find_label_issues defaults (prune_by_noise_rate) on 5-fold OOF LR pred_probs "
    "over reference+batch; score 1 - self-confidence",
    "knn_label": "flag if >5 of the 10 nearest *reference* rows carry another label",
    "iforest": "IsolationForest(contamination='auto') fit on reference: predict == -1",
    "ecod": "ECOD(contamination=0.1) fit on reference: above the reference's 90th percentile",
    "cleanlab_or_iforest": "union of the cleanlab and iforest flags; score max of percentile ranks",
    "gb_residual": f"|residual - median| > {RESIDUAL_SDS:g} robust sd (MAD of the reference's "
    "residuals) of 5-fold OOF HistGradientBoostingRegressor over reference+batch",
    "cleanlab_regression": "cleanlab.regression CleanLearning().find_label_issues defaults "
    "(LinearRegression) over reference+batch; score 1 - label_quality",
}


def run_method(name: str, case: Case) -> Verdict:
    """Run (or reuse) one method's verdict on a case."""
    if name not in case.cache:
        case.cache[name] = METHODS[name](case)
    return case.cache[name]


def available_methods(names: Sequence[str]) -> list[str]:
    """The requested methods that can run here; prints a notice for each one skipped."""
    out = []
    for name in names:
        if name == "poisonguard" and poisonguard_scan() is None:
            print("NOTICE: poisonguard.scan is not importable yet; poisonguard is skipped.")
            continue
        out.append(name)
    return out


# --- metrics ----------------------------------------------------------------------------


def detection_metrics(is_poison: np.ndarray, verdict: Verdict) -> dict[str, float]:
    """Precision, recall, F1 of the flags and average precision of the score.

    Precision of a method that flags nothing is 0 (sklearn's ``zero_division=0``);
    AP is NaN on a batch without poison.
    """
    precision, recall, f1, _ = precision_recall_fscore_support(
        is_poison, verdict.flagged, average="binary", zero_division=0
    )
    score = np.nan_to_num(verdict.score, nan=-np.inf)
    score = np.where(np.isneginf(score), np.min(score[np.isfinite(score)], initial=0.0), score)
    ap = average_precision_score(is_poison, score) if is_poison.any() else float("nan")
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "ap": float(ap),
        "flagged_share": float(verdict.flagged.mean()),
        "seconds": verdict.seconds,
    }


def retrain_accuracy(
    train: pd.DataFrame, test: pd.DataFrame, features: list[str], label: str
) -> float:
    """Test accuracy of :func:`lr_model` trained on ``train``."""
    model = lr_model().fit(train[features], train[label])
    return float((model.predict(test[features]) == test[label].to_numpy()).mean())


def recovered_share(clean: float, poisoned: float, gated: float) -> float:
    """(gated - poisoned) / (clean - poisoned); NaN when poison cost < MIN_DAMAGE accuracy."""
    damage = clean - poisoned
    return (gated - poisoned) / damage if damage >= MIN_DAMAGE else float("nan")


# --- tables -------------------------------------------------------------------------------


def fmt(value: float, digits: int = 3) -> str:
    """A number for a table cell; '-' for NaN."""
    if value is None or not np.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def ratio(a: float, b: float) -> float:
    """a / b, NaN when either is missing or b is 0."""
    if not (np.isfinite(a) and np.isfinite(b)) or b == 0:
        return float("nan")
    return a / b


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with a title line, left-aligned first column."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [title, ""]
    for k, row in enumerate([header, *rows]):
        cells = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


#: Short names for the comparison columns: "pg/cl" is poisonguard's figure over cleanlab's.
SHORT = {
    "cleanlab": "cl",
    "knn_label": "knn",
    "iforest": "if",
    "ecod": "ecod",
    "cleanlab_or_iforest": "cl|if",
    "gb_residual": "gb",
    "cleanlab_regression": "clr",
}
PG = "poisonguard"


def by_method(
    frame: pd.DataFrame, row: str, value: str, methods: list[str], overall: str = "mean"
) -> pd.DataFrame:
    """Mean of ``value`` per ``row`` (rows) and method (columns), plus an overall row."""
    grid = frame.groupby([row, "method"], observed=True)[value].mean().unstack("method")
    grid.index = pd.Index([str(k) for k in grid.index], name=row)
    grid.loc[overall] = frame.groupby("method")[value].mean()
    return grid.reindex(columns=methods)


def metric_table(title: str, grid: pd.DataFrame, methods: list[str], compare: str | None) -> str:
    """Methods side by side; ``compare`` adds poisonguard / anchor ("ratio") or
    poisonguard - anchor ("diff") columns."""
    anchors = [m for m in methods if m != PG]
    header = [grid.index.name or "", *methods]
    if compare == "ratio":
        header += [f"pg/{SHORT.get(m, m)}" for m in anchors]
    elif compare == "diff":
        header += [f"pg-{SHORT.get(m, m)}" for m in anchors]
    rows = []
    for key, values in grid.iterrows():
        cells = [str(key), *(fmt(values[m]) for m in methods)]
        if compare == "ratio":
            cells += [fmt(ratio(values[PG], values[m]), 2) for m in anchors]
        elif compare == "diff":
            cells += [fmt(values[PG] - values[m], 3) for m in anchors]
        rows.append(cells)
    return table(title, header, rows)


# --- running ---------------------------------------------------------------------------


def attack_seed(seed: int, attack: str, rate: float) -> int:
    """The plant() seed of one case: the same whichever attacks and rates a run selects."""
    from poisonguard.attacks import KINDS

    return 1_000_000 * seed + 10_000 * KINDS.index(attack) + round(rate * 1000)


def progress(message: str) -> None:
    """One line of progress on stderr (tables go to stdout)."""
    print(message, file=sys.stderr, flush=True)


def use_settings(
    fdr: float | None = None,
    detectors: list[str] | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    excess_level: float | None = None,
) -> str | None:
    """Run poisonguard at false-discovery rate ``fdr``, with only ``detectors``, with
    detector ``params`` and with the excess rule at ``excess_level`` (None: its defaults);
    returns the header line that says so, or None when nothing changed."""
    if fdr is not None:
        POISONGUARD_SETTINGS["fdr"] = fdr
    if excess_level is not None:
        POISONGUARD_SETTINGS["excess_level"] = excess_level
    if detectors:
        POISONGUARD_SETTINGS["detectors"] = tuple(detectors)
    if params:
        POISONGUARD_SETTINGS["params"] = params
    if not POISONGUARD_SETTINGS:
        return None
    shown = ", ".join(
        f"{k}={','.join(v) if isinstance(v, tuple) else v}" for k, v in POISONGUARD_SETTINGS.items()
    )
    return f"  poisonguard settings overridden for this run: {shown}"


def write_json(path: Path, args: argparse.Namespace, **parts: Any) -> None:
    """The run's arguments (``config``) and ``parts`` as compact standard JSON at ``path``;
    NaN in lists of records becomes null."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        **{k: _no_nan(v) if _is_records(v) else v for k, v in parts.items()},
    }
    path.write_text(json.dumps(payload, separators=(",", ":"), default=_jsonable))
    print(f"raw records written to {path}")


def _is_records(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(r, dict) for r in value)


def _no_nan(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()}
        for r in records
    ]


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")
