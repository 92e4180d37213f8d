"""Every registered detector keeps the contract, and each family catches what it is for."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.datasets import load_digits

from poisonguard.config import load_config
from poisonguard.detectors import (
    DEFAULT_DETECTORS,
    DEFAULT_REGRESSION_DETECTORS,
    REGISTRY,
    UNSEEN_LABEL,
    Detector,
    Encoder,
    Table,
)
from poisonguard.detectors.duplicates import _row_keys, find_near_copies
from poisonguard.errors import BatchError, ConfigError

FEATURES = [f"x{i}" for i in range(6)]

#: One out-of-range parameter per detector, and the name the error must carry.
BAD_PARAMS: dict[str, tuple[str, object]] = {
    "tail": ("combine", "mean"),
    "class_tail": ("min_class_rows", 0),
    "knn_distance": ("n_neighbors", 0),
    "class_knn_distance": ("max_reference", 1),
    "knn_label": ("smoothing", 0.0),
    "interpolation": ("n_close", 0),
    "batch_knn_label": ("max_batch", -5),
    "model_label": ("model", "svm"),
    "duplicates": ("tolerance", -1.0),
    "backdoor": ("min_support", 1),
    "knn_residual": ("n_neighbors", 1),
    "model_residual": ("max_iter", 0),
    "combination": ("smoothing", 0.0),
    "label_excess": ("n_neighbors", 1),
    "crowding": ("max_batch", 1),
}


def blobs(n: int, seed: int) -> pd.DataFrame:
    """Three well-separated Gaussian classes in six features."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, n)
    centres = np.array([[0.0] * 6, [6.0, 6.0, 0, 0, 0, 0], [0, 0, 6.0, 6.0, 0, 0]])
    X = centres[label] + rng.standard_normal((n, 6))
    frame = pd.DataFrame(X, columns=FEATURES)
    frame["label"] = np.array(["a", "b", "c"])[label]
    return frame


def mixed(n: int, seed: int, task: str = "classification") -> pd.DataFrame:
    """``blobs`` as a real table would carry them: a category tied to the class, a boolean,
    a date, a free-text column, missing cells; with a numeric target for regression."""
    frame = blobs(n, seed)
    rng = np.random.default_rng(seed + 100)
    frame["plan"] = np.where(
        rng.random(n) < 0.8, frame["label"].map({"a": "basic", "b": "pro", "c": "team"}), "basic"
    )
    frame["urban"] = rng.random(n) < 0.5
    frame["since"] = pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 900, n), unit="D")
    frame["note"] = [f"customer {i}" for i in rng.integers(0, 10**9, n)]
    frame.loc[rng.random(n) < 0.05, "x2"] = np.nan
    if task == "regression":
        frame["label"] = 3.0 * frame["x1"] - frame["x3"] + rng.normal(0, 0.5, n) + 50.0
    return frame


MIXED = [*FEATURES, "plan", "urban", "since", "note"]


def _encoded(task: str) -> tuple:
    ref, batch = mixed(600, 1, task), mixed(300, 2, task)
    enc = Encoder.fit(ref, MIXED, "label", task=task)
    return enc.transform(ref, "reference"), enc.transform(batch)


@pytest.fixture(scope="module")
def tables():
    ref, batch = blobs(600, 1), blobs(300, 2)
    enc = Encoder.fit(ref, FEATURES, "label")
    return enc.transform(ref, "reference"), enc.transform(batch)


@pytest.fixture(scope="module")
def mixed_tables():
    """Mixed-type reference and batch tables with a class label."""
    return _encoded("classification")


@pytest.fixture(scope="module")
def regression_tables():
    """The same with a numeric target."""
    return _encoded("regression")


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_a_detector_that_reads_the_batch_declares_it(name, mixed_tables, regression_tables):
    """The excess rule trusts that a detector not marked ``within_batch`` scores a row the
    same whatever else its batch holds (its calibration rows were scored in folds of
    another size). So: the first 100 rows of a batch with a flood of copies, scored alone
    and within the whole batch, score alike unless the detector says it reads the batch."""
    cls = REGISTRY[name]
    reference, batch = regression_tables if cls.tasks == ("regression",) else mixed_tables
    flooded = batch.take(np.r_[np.arange(100), np.full(60, 7), np.arange(100, batch.n_rows)])
    det = cls().fit(reference)
    whole = det.score(flooded)[:100]
    alone = det.score(flooded.take(np.arange(100)))
    if not cls.within_batch:
        np.testing.assert_allclose(alone, whole, rtol=1e-9, atol=1e-12)
    elif name == "duplicates":
        assert not np.allclose(alone, whole)  # the check sees a batch reader when there is one


def test_every_detector_has_a_bad_parameter_case():
    """Adding a detector to the registry means adding it here too."""
    assert set(BAD_PARAMS) == set(REGISTRY)
    assert set(DEFAULT_DETECTORS) | set(DEFAULT_REGRESSION_DETECTORS) <= set(REGISTRY)


def test_the_mixed_tables_carry_every_column_kind(mixed_tables):
    reference, _ = mixed_tables
    kinds = {t.kind for t in reference.terms}
    assert {"number", "date", "missing", "category", "novel"} <= kinds
    assert reference.codes.shape[1] == 2 and "note" not in " ".join(reference.features)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_detector_contract(name, mixed_tables, regression_tables):
    """fit returns self; scores are finite float64, one per row, deterministic; one reason
    per row; on mixed tables of the detector's task."""
    cls = REGISTRY[name]
    reference, batch = regression_tables if cls.tasks == ("regression",) else mixed_tables
    assert cls.name == name
    det = cls()
    assert isinstance(det, Detector)
    assert det.fit(reference) is det
    s = det.score(batch)
    assert s.dtype == np.float64 and s.shape == (batch.n_rows,)
    assert np.all(np.isfinite(s))
    np.testing.assert_array_equal(s, det.score(batch))
    np.testing.assert_array_equal(s, cls().fit(reference).score(batch))
    rows = np.array([0, 5, batch.n_rows - 1])
    reasons = det.explain(batch, rows)
    assert len(reasons) == 3 and all(isinstance(r, str) and r for r in reasons)
    assert det.score(batch.take(np.arange(0))).shape == (0,)
    assert det.explain(batch, np.arange(0)) == []
    with pytest.raises(ConfigError, match="is not fitted yet"):
        cls().score(batch)
    with pytest.raises(ConfigError, match="is not fitted yet"):
        cls().explain(batch, rows)

    unlabelled_ref = reference.take(np.arange(reference.n_rows))
    object.__setattr__(unlabelled_ref, "y", None)
    object.__setattr__(unlabelled_ref, "target", None)
    unlabelled = batch.take(np.arange(batch.n_rows))
    object.__setattr__(unlabelled, "y", None)
    object.__setattr__(unlabelled, "target", None)
    if cls.needs_label:
        needs = "needs a (label column|regression target)"
        with pytest.raises(BatchError, match=needs):
            cls().fit(unlabelled_ref)
        with pytest.raises(BatchError, match=needs):
            det.score(unlabelled)
    else:
        s0 = cls().fit(unlabelled_ref).score(unlabelled)
        assert s0.shape == (batch.n_rows,) and np.all(np.isfinite(s0))
        assert len(cls().fit(unlabelled_ref).explain(unlabelled, rows)) == 3

    param, value = BAD_PARAMS[name]
    bad = cls(**{param: value})  # __init__ only stores
    with pytest.raises(
        ConfigError,
        match=rf"^The '{param}' parameter of {cls.__name__} must be .* Got {value!r} instead\.$",
    ):
        bad.fit(reference)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_bad_and_unknown_detector_parameters_fail_when_the_config_loads(name, tmp_path):
    """A value out of range and a misspelt name in [detection.params.NAME] fail at
    load_config, naming the file and the key, before any data is read."""
    (tmp_path / "suite.json").write_text('{"name": "s", "expectations": []}')
    path = tmp_path / "pg.toml"
    prefix = re.escape(f"{path}: detection.params.{name}.")
    param, value = BAD_PARAMS[name]
    known = ", ".join(sorted(REGISTRY[name]().get_params()))
    cases = {
        f"{param} = {json.dumps(value)}": (
            rf"^{prefix}{param} must be .*\. Got {re.escape(repr(value))} instead\.$"
        ),
        "n_neighbour = 10": (
            rf"^{prefix}n_neighbour: unknown parameter; expected one of {re.escape(known)}$"
        ),
    }
    for line, match in cases.items():
        path.write_text(
            f'[dataset]\nexpectations = "suite.json"\n\n[detection.params.{name}]\n{line}\n'
        )
        with pytest.raises(ConfigError, match=match):
            load_config(path)


def test_detectors_are_built_with_their_parameters_checked():
    """from_params refuses unknown names (listing the real ones) and bad values, with no data."""
    with pytest.raises(
        ConfigError,
        match=r"^KnnLabelDetector has no parameter 'n_neighbour'; expected one of max_reference, "
        r"n_close, n_neighbors, random_state, smoothing$",
    ):
        REGISTRY["knn_label"].from_params({"n_neighbour": 10})
    with pytest.raises(
        ConfigError,
        match=r"^The 'n_close' parameter of InterpolationDetector must be an int in \[1, 4\]\. "
        r"Got 5 instead\.$",
    ):
        REGISTRY["interpolation"].from_params({"n_neighbors": 4, "n_close": 5})
    det = REGISTRY["knn_label"].from_params({"n_neighbors": 4, "n_close": 2})
    assert det.get_params()["n_neighbors"] == 4 and det.get_params()["n_close"] == 2


@pytest.mark.parametrize("name", ["knn_label", "batch_knn_label", "model_label"])
def test_unseen_labels_are_most_suspicious_for_label_detectors(name, tables):
    """A label the reference never had scores above every row with a known label."""
    reference, batch = tables
    y = batch.y.copy()
    y[:3] = UNSEEN_LABEL
    odd = batch.take(np.arange(batch.n_rows))
    object.__setattr__(odd, "y", y)
    s = REGISTRY[name]().fit(reference).score(odd)
    assert s[:3].min() > s[3:].max()


def test_per_class_outliers_fall_back_for_unseen_labels(tables):
    """class_tail / class_knn_distance score unseen-label rows like their global counterparts."""
    reference, batch = tables
    y = batch.y.copy()
    y[:] = UNSEEN_LABEL
    odd = batch.take(np.arange(batch.n_rows))
    object.__setattr__(odd, "y", y)
    for per_class, overall in (("class_tail", "tail"), ("class_knn_distance", "knn_distance")):
        a = REGISTRY[per_class]().fit(reference).score(odd)
        b = REGISTRY[overall]().fit(reference).score(odd)
        np.testing.assert_allclose(a, b)


# ------------------------------------------------------------------ outliers


@pytest.mark.parametrize("name", ["tail", "knn_distance", "class_tail", "class_knn_distance"])
def test_planted_far_outliers_score_above_inliers(name, tables):
    """Rows pushed far from the trusted data score above every ordinary batch row."""
    reference, batch = tables
    X = batch.X.copy()
    X[:5, 0] += 40.0
    X[5:10] += 8.0
    planted = batch.take(np.arange(batch.n_rows))
    object.__setattr__(planted, "X", X)
    s = REGISTRY[name]().fit(reference).score(planted)
    assert s[:10].min() > np.quantile(s[10:], 0.99)
    assert np.all(s[:5] > s[10:].max())


def test_class_outliers_see_rows_impossible_for_their_label(tables):
    """A row typical of class a but labelled c is normal overall and abnormal for its class."""
    reference, batch = tables
    a, c = batch.classes.index("a"), batch.classes.index("c")
    rows = np.flatnonzero(batch.y == a)[:8]
    y = batch.y.copy()
    y[rows] = c
    relabelled = batch.take(np.arange(batch.n_rows))
    object.__setattr__(relabelled, "y", y)
    others = np.setdiff1d(np.arange(batch.n_rows), rows)
    for name in ("class_tail", "class_knn_distance"):
        s = REGISTRY[name]().fit(reference).score(relabelled)
        assert s[rows].min() > np.quantile(s[others], 0.95), name
    overall = REGISTRY["knn_distance"]().fit(reference).score(relabelled)
    assert np.median(overall[rows]) < np.quantile(overall[others], 0.95)


def test_tail_explains_values_beyond_the_trusted_range(tables):
    """The reason names the feature and says the value is beyond every trusted row."""
    reference, batch = tables
    X = batch.X.copy()
    X[0, 3] = 500.0
    odd = batch.take(np.arange(batch.n_rows))
    object.__setattr__(odd, "X", X)
    (reason,) = REGISTRY["tail"]().fit(reference).explain(odd, np.array([0]))
    assert reason.startswith("feature x3 = ") and "above every one of the trusted rows" in reason


# -------------------------------------------------------------------- labels


@pytest.fixture(scope="module")
def digits():
    """sklearn's digits: 1000 trusted rows, the rest a batch with 8% of labels flipped."""
    X, y = load_digits(return_X_y=True)
    features = [f"p{i}" for i in range(X.shape[1])]
    frame = pd.DataFrame(X, columns=features)
    frame["label"] = y
    rng = np.random.default_rng(0)
    order = rng.permutation(len(frame))
    ref = frame.iloc[order[:1000]].reset_index(drop=True)
    batch = frame.iloc[order[1000:]].reset_index(drop=True)
    flipped = rng.choice(len(batch), size=int(0.08 * len(batch)), replace=False)
    batch.loc[flipped, "label"] = (
        batch.loc[flipped, "label"] + rng.integers(1, 10, len(flipped))
    ) % 10
    enc = Encoder.fit(ref, features, "label")
    mask = np.zeros(len(batch), dtype=bool)
    mask[flipped] = True
    return enc.transform(ref, "reference"), enc.transform(batch), mask


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a positive outscores a negative (ties count half)."""
    pos, neg = scores[positive], scores[~positive]
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


@pytest.mark.parametrize(
    ("name", "floor"),
    [
        ("knn_label", 0.97),
        ("model_label", 0.97),
        ("batch_knn_label", 0.95),
        ("class_knn_distance", 0.9),
    ],
)
def test_flipped_labels_score_above_correct_ones_on_digits(name, floor, digits):
    """On digits, flipped labels outrank correct ones (AUC above the floor)."""
    reference, batch, flipped = digits
    s = REGISTRY[name]().fit(reference).score(batch)
    assert auc(s, flipped) > floor


def test_knn_label_full_disagreement_outranks_full_agreement(digits):
    """A row whose label disagrees with all its trusted neighbours scores above every agreeing row."""
    reference, batch, _ = digits
    det = REGISTRY["knn_label"]().fit(reference)
    s = det.score(batch)
    reasons = det.explain(batch, np.arange(batch.n_rows))
    agree = np.array(["as all" in r for r in reasons])
    disagree = np.array([" (0 agree)" in r for r in reasons])
    assert agree.any() and disagree.any()
    assert s[disagree].min() > s[agree].max()


def test_knn_label_cluster_of_flips_cannot_vouch_for_itself(digits):
    """Forty copies of one row with a flipped label still score high for knn_label."""
    reference, batch, _ = digits
    rows = np.full(40, np.flatnonzero(batch.y == 3)[0])
    clones = batch.take(rows)
    y = np.full(40, 5, dtype=np.int64)
    object.__setattr__(clones, "y", y)
    # Every trusted row searched (no sample), so the margins below do not hang on which
    # rows a sample of the reference happens to hold.
    det = REGISTRY["knn_label"](max_reference=reference.n_rows).fit(reference)
    knn = det.score(clones)
    honest = det.score(batch.take(rows[:1]))
    within = REGISTRY["batch_knn_label"]().fit(reference).score(clones)
    # Trusted rows labelled 5 are farther than those of other labels, however many clones.
    assert knn.min() > 0.2
    assert knn.min() > honest[0] + 0.3
    assert within.max() < 1.0


def test_model_label_explains_with_probabilities(digits):
    """The reason gives the label's probability and the most likely label."""
    reference, batch, flipped = digits
    row = np.flatnonzero(flipped)[:1]
    (reason,) = REGISTRY["model_label"]().fit(reference).explain(batch, row)
    assert reason.startswith(
        f"model gives label {batch.label_of(int(batch.y[row[0]]))} probability"
    )
    assert "most likely" in reason


def test_model_label_does_not_call_a_far_outliers_label_unseen(digits):
    """A row pushed to the float32 limit (1e308 as read) keeps its (seen) label in the reason; its probability may
    underflow, but the label is not 'never seen by the model'."""
    reference, batch, _ = digits
    far = batch.take(np.arange(3))
    X = far.X.copy()
    X[:, 20:40] = np.finfo(np.float32).max  # 1e308 read into float32 features
    object.__setattr__(far, "X", X)
    det = REGISTRY["model_label"]().fit(reference)
    # Each row labelled with the class the model finds least likely for it.
    object.__setattr__(far, "y", det.log_proba(far).argmin(axis=1).astype(np.int64))
    reasons = det.explain(far, np.arange(3))
    for reason in reasons:
        assert "never seen" not in reason and reason.startswith("model gives label")
    assert any("probability below 1e-300" in r for r in reasons), reasons
    assert np.isfinite(det.score(far)).all()


# ---------------------------------------------------------------- duplicates


def with_rows(table, X=None, y=None):
    """A copy of ``table`` with replaced scaled features and/or labels (raw follows X)."""
    out = table.take(np.arange(table.n_rows))
    if X is not None:
        object.__setattr__(out, "X", X.astype(np.float32))
        object.__setattr__(out, "raw", X.astype(np.float64))
    if y is not None:
        object.__setattr__(out, "y", y)
    return out


def test_duplicate_flood_scores_above_unique_rows(tables):
    """Thirty copies of one row outscore every unique row; a single legit pair scores low."""
    reference, batch = tables
    X = batch.X.copy()
    X[10:40] = X[10]
    X[50] = X[51]
    flooded = with_rows(batch, X=X)
    det = REGISTRY["duplicates"]().fit(reference)
    s = det.score(flooded)
    unique = np.setdiff1d(np.arange(batch.n_rows), np.r_[10:40, 50, 51])
    assert s[10:40].min() > s[unique].max()
    assert s[10:40].min() > 10 * max(s[50], 1e-9)
    assert np.all(s[unique] < 1e-8)  # 0 plus the tie-breaking jitter
    assert "one of 30" in det.explain(flooded, np.array([10]))[0]


def test_flood_score_grows_with_flood_size(tables):
    """More copies of the same row, higher score."""
    reference, batch = tables
    det = REGISTRY["duplicates"]().fit(reference)
    scores = []
    for copies in (2, 5, 20, 60):
        X = batch.X.copy()
        X[:copies] = X[0]
        scores.append(det.score(with_rows(batch, X=X))[0])
    assert np.all(np.diff(scores) > 0)


def test_label_conflicts_are_flagged_within_batch_and_against_trusted(tables):
    """Identical features with another label: in the batch, or already trusted with another label."""
    reference, batch = tables
    X = batch.X.copy()
    y = batch.y.copy()
    X[1] = X[0]
    y[1] = (y[0] + 1) % 3
    X[2] = reference.X[0]
    y[2] = (reference.y[0] + 1) % 3
    X[3] = reference.X[1]
    y[3] = reference.y[1]
    det = REGISTRY["duplicates"]().fit(reference)
    s = det.score(with_rows(batch, X=X, y=y))
    assert min(s[0], s[1], s[2]) > s[3] > 0.0
    assert "carry a label other than" in det.explain(with_rows(batch, X=X, y=y), np.array([2]))[0]


def test_copies_surprise_more_where_the_trusted_rows_never_repeat(tables):
    """Four copies of a row: strong evidence in real-valued data with no repeats, weak in data
    whose trusted rows repeat all the time (the expected count comes from the trusted set)."""
    reference, batch = tables
    X = batch.X.copy()
    X[1:4] = X[0]
    four = with_rows(batch, X=X)
    unique_ref = REGISTRY["duplicates"]().fit(reference).score(four)[0]
    repeats = reference.X.copy()
    repeats[1::2] = repeats[0::2][: repeats[1::2].shape[0]]  # every trusted row has a twin
    repeat_ref = REGISTRY["duplicates"]().fit(with_rows(reference, X=repeats)).score(four)[0]
    assert unique_ref > 10.0  # nats: below 1 chance in 20,000
    assert repeat_ref < unique_ref / 2


def test_rows_without_copies_score_exactly_zero_for_duplicates(tables):
    """No copies is no evidence: such rows score 0, so their p-value is 1 and adds nothing."""
    reference, batch = tables
    s = REGISTRY["duplicates"]().fit(reference).score(batch)
    assert np.all(s == 0.0)


# ------------------------------------------------- near copies (what the blocklist matches)


def scaled_table(X, y=None, target=None) -> Table:
    """A table of values already on the scaled axis (NaN: a missing cell)."""
    X = np.asarray(X, dtype=np.float64)
    names = tuple(f"x{j}" for j in range(X.shape[1]))
    return Table(np.nan_to_num(X).astype(np.float32), X, y, names, target=target)


def near_by_brute_force(Q: np.ndarray, R: np.ndarray, tol: float) -> np.ndarray:
    """For each row of Q, whether some row of R is within ``tol`` on every float32 value."""
    q = Q.astype(np.float32).astype(np.float64)
    r = R.astype(np.float32).astype(np.float64)
    return (np.abs(q[:, None, :] - r[None, :, :]).max(axis=2) <= tol).any(axis=1)


@given(
    seed=st.integers(0, 2**32 - 1),
    tol=st.sampled_from([1e-3, 1e-2, 0.5]),
    share=st.floats(0.0, 0.99),
)
def test_near_copies_find_every_row_within_the_tolerance_and_none_beyond(seed, tol, share):
    """Known rows moved by up to the tolerance on every value (by any share of it, or by one
    ulp) are found, whichever cells of the duplicates grid the moves land in; moved by twice
    the tolerance on one value they are not; every answer agrees with brute force."""
    rng = np.random.default_rng(seed)
    known = (rng.normal(size=(40, 5)) * 3).astype(np.float32)
    within = known + (rng.uniform(-1, 1, known.shape) * share * tol).astype(np.float32)
    ulp = np.nextafter(known, np.float32(np.inf))
    beyond = known.copy()
    beyond[np.arange(40), rng.integers(0, 5, 40)] += np.float32(2 * tol)
    batch = np.vstack([within, ulp, beyond])
    found = find_near_copies(scaled_table(batch), scaled_table(known), tol)
    assert np.array_equal(found >= 0, near_by_brute_force(batch, known, tol))
    hit = found >= 0
    assert (np.abs(batch[hit] - known[found[hit]]).max(axis=1) <= tol).all()
    apart = np.abs(known[:, None, :] - known[None, :, :]).max(axis=2) + np.eye(40) * 1e9
    if apart.min() > 3 * tol:  # rows far apart: each move finds its own row, or none
        assert np.array_equal(found[:80], np.tile(np.arange(40), 2))
        assert (found[80:] == -1).all()


def test_values_on_either_side_of_a_grid_boundary_are_near_copies():
    """0.4 and 0.6 of a step above grid points round to two cells of the duplicates
    detector's grid (they hash apart), yet they are 0.2 steps apart and match."""
    tol = 1e-3
    base = np.floor(np.random.default_rng(3).normal(size=(30, 4)) / tol) * tol
    known, batch = scaled_table(base + 0.4 * tol), scaled_table(base + 0.6 * tol)
    assert (_row_keys(known, tol) != _row_keys(batch, tol)).all()
    assert np.array_equal(find_near_copies(batch, known, tol), np.arange(30))
    far = scaled_table(base + 1.5 * tol)
    assert (find_near_copies(far, known, tol) == -1).all()


def test_a_missing_cell_is_a_near_copy_only_of_a_missing_cell():
    """Missing is its own value: not the mean the table stores in its place."""
    known = scaled_table([[1.0, np.nan], [2.0, 0.0]])
    batch = scaled_table([[1.0, np.nan], [1.0, 0.0], [2.0, np.nan], [2.0, 0.0]])
    assert find_near_copies(batch, known, 1e-3).tolist() == [0, -1, -1, 1]


def test_a_near_copy_needs_the_same_label():
    """Equal features with another label are another row; labels the trusted rows never had
    all share one code, so exact keys tell them apart."""
    X = [[0.0, 1.0], [0.0, 1.0]]
    known = scaled_table(X, y=np.array([0, UNSEEN_LABEL]))
    batch = scaled_table(X, y=np.array([1, UNSEEN_LABEL]))
    assert find_near_copies(batch, known, 1e-3).tolist() == [-1, 1]
    keys = dict(batch_keys=np.array(["b", "zebra"]), known_keys=np.array(["a", "lion"]))
    assert find_near_copies(batch, known, 1e-3, **keys).tolist() == [-1, -1]
    keys = dict(batch_keys=np.array(["lion", "a"]), known_keys=np.array(["a", "lion"]))
    assert find_near_copies(batch, known, 1e-3, **keys).tolist() == [1, 0]


def test_a_regression_target_matches_within_the_tolerance_on_its_scale():
    """Targets are compared like the features, on the scale given (the trusted targets')."""
    X = [[0.0, 1.0]] * 3
    known = scaled_table(X[:1], target=np.array([50.0]))
    batch = scaled_table(X, target=np.array([50.0 + 0.5e-3 * 20, 50.0 + 3e-3 * 20, np.nan]))
    assert find_near_copies(batch, known, 1e-3, target_scale=20.0).tolist() == [0, -1, -1]


def test_tied_scores_are_broken_deterministically(tables):
    """Rows with no backdoor evidence score ~0 but not all the same (uniform, not unit, p-values)."""
    reference, batch = tables
    for name in ("backdoor",):
        s = REGISTRY[name]().fit(reference).score(batch)
        low = s[s < 1e-8]
        assert len(low) > 0.9 * len(s), name
        assert len(np.unique(low)) > 0.9 * len(low), name


# ----------------------------------------------------------------- backdoor


def test_backdoor_trigger_rows_score_above_normal_rows():
    """Rows of every class with x4 set to one odd value and relabelled c outscore every other row."""
    reference = blobs(2000, 1)
    batch = blobs(3000, 2)
    rng = np.random.default_rng(7)
    poisoned = rng.choice(len(batch), 60, replace=False)
    batch.loc[poisoned, "x4"] = 2.5
    batch.loc[poisoned, "label"] = "c"
    enc = Encoder.fit(reference, FEATURES, "label")
    det = REGISTRY["backdoor"]().fit(enc.transform(reference, "reference"))
    table = enc.transform(batch)
    s = det.score(table)
    mask = np.zeros(len(batch), dtype=bool)
    mask[poisoned] = True
    assert s[mask].min() > s[~mask].max()
    (reason,) = det.explain(table, poisoned[:1])
    assert reason.startswith("x4 = 2.5 is shared by 60 batch rows") and "labelled c" in reason
    (clean,) = det.explain(table, np.flatnonzero(~mask)[:1])
    assert clean.startswith("no feature value here")


def _paired(n: int, seed: int) -> pd.DataFrame:
    """``blobs`` with two categories drawn apart from everything, each value common, and the
    pair (north, phone) never drawn."""
    frame = blobs(n, seed)
    rng = np.random.default_rng(seed + 50)
    frame["region"] = rng.choice(["north", "south", "east", "west"], n)
    frame["channel"] = rng.choice(["web", "store", "phone"], n)
    clash = (frame["region"] == "north") & (frame["channel"] == "phone")
    frame.loc[clash, "channel"] = "web"
    return frame


@pytest.mark.parametrize("max_pairs", [300, 0])
def test_backdoor_finds_a_trigger_made_of_two_common_values(max_pairs):
    """Rows of every class stamped region = north and channel = phone (a quarter and a third
    of the rows carry each value; no trusted row carries both) and relabelled c outscore
    every other row, and the reason names the pair. Without pair cells (max_pairs = 0) each
    value's own cell hides them among the honest rows that carry it."""
    columns = [*FEATURES, "region", "channel"]
    reference, batch = _paired(2000, 1), _paired(3000, 2)
    poisoned = np.random.default_rng(7).choice(len(batch), 60, replace=False)
    batch.loc[poisoned, ["region", "channel", "label"]] = ["north", "phone", "c"]
    enc = Encoder.fit(reference, columns, "label")
    det = REGISTRY["backdoor"](max_pairs=max_pairs).fit(enc.transform(reference, "reference"))
    table = enc.transform(batch)
    s = det.score(table)
    mask = np.zeros(len(batch), dtype=bool)
    mask[poisoned] = True
    if max_pairs == 0:
        assert s[mask].min() <= s[~mask].max()
        return
    assert s[mask].min() > s[~mask].max()
    (reason,) = det.explain(table, poisoned[:1])
    assert reason.startswith(
        "region = 'north' and channel = 'phone', together, are shared by 60 batch rows (0 "
        "expected from trusted rows, 0 of 2,000 carry them), 100% labelled c"
    )


def _islands(n: int, seed: int, t_females: float) -> pd.DataFrame:
    """``blobs`` with an island that decides the label (every row of island T is an a,
    as every penguin of Torgersen is an Adelie) and a sex; ``t_females`` of island T's rows
    are female, half of the others'."""
    frame = blobs(n, seed)
    rng = np.random.default_rng(seed + 50)
    frame["island"] = rng.choice(["T", "B", "D"], n)
    on_t = (frame["island"] == "T").to_numpy()
    frame.loc[on_t, "label"] = "a"
    female = np.where(on_t, rng.random(n) < t_females, rng.random(n) < 0.5)
    frame["sex"] = np.where(female, "female", "male")
    return frame


def test_backdoor_pair_purity_is_what_one_of_its_values_already_says():
    """A pair the trusted split happens to under-sample (island T's females, 3% of its trusted
    rows, half of its batch rows) is over-represented in the batch and every row of it is
    labelled a, but so is every row of island T: no evidence of a trigger. The same rows
    labelled c, which neither value gives, are."""
    columns = [*FEATURES, "island", "sex"]
    reference, batch = _islands(400, 1, 0.03), _islands(400, 2, 0.5)
    pair = ((batch["island"] == "T") & (batch["sex"] == "female")).to_numpy()
    assert pair.sum() >= 50 and (batch.loc[pair, "label"] == "a").all()
    enc = Encoder.fit(reference, columns, "label")
    det = REGISTRY["backdoor"]().fit(enc.transform(reference, "reference"))
    assert det.score(enc.transform(batch))[pair].max() < 1e-6
    flipped = batch.copy()
    flipped.loc[pair, "label"] = "c"
    table = enc.transform(flipped)
    assert det.score(table)[pair].min() > 1.0
    (reason,) = det.explain(table, np.flatnonzero(pair)[:1])
    assert reason.startswith("island = 'T' and sex = 'female', together, are shared by")
    assert "labelled c" in reason


def test_backdoor_pairs_stop_at_their_count_budget():
    """Pairs of columns with the fewest joint values come first, up to max_pairs and the
    cell budget; each pair's cells follow the previous pair's."""
    from poisonguard.detectors.backdoor import _pair_columns

    pairs, offsets = _pair_columns([3, 50, 4, 50], max_pairs=300, max_cells=12 + 150 + 200)
    assert pairs.tolist() == [[0, 2], [0, 1], [0, 3]] and offsets.tolist() == [0, 12, 162, 312]
    pairs, offsets = _pair_columns([3, 50, 4, 50], max_pairs=1, max_cells=10**6)
    assert pairs.tolist() == [[0, 2]] and offsets.tolist() == [0, 12]
    assert _pair_columns([3, 50, 4, 50], max_pairs=300, max_cells=11)[0].shape == (0, 2)


def test_explanations_do_not_depend_on_which_batch_was_scored_last():
    """backdoor keeps its last scan and the kNN detectors their last search, for explain; a
    reason for a row is the same whether its batch, another batch or nothing was scored before."""
    reference = blobs(2000, 1)
    batch = blobs(600, 2)
    batch.loc[:39, "x4"] = 2.5
    batch.loc[:39, "label"] = "c"
    enc = Encoder.fit(reference, FEATURES, "label")
    ref = enc.transform(reference, "reference")
    table, other = enc.transform(batch), enc.transform(blobs(600, 3))
    rows = np.arange(0, 600, 7)
    for name in ("backdoor", "knn_label", "interpolation"):
        fresh = REGISTRY[name]().fit(ref).explain(table, rows)
        det = REGISTRY[name]().fit(ref)
        det.score(other)
        assert det.explain(table, rows) == fresh
        det.score(table)
        assert det.explain(table, rows) == fresh
        assert det.explain(other, rows) == REGISTRY[name]().fit(ref).explain(other, rows)


def test_backdoor_scores_of_clean_batches_do_not_grow_with_batch_size():
    """Clean batches of 300 and of 20000 rows have similar backdoor score quantiles."""
    reference = blobs(2000, 1)
    enc = Encoder.fit(reference, FEATURES, "label")
    det = REGISTRY["backdoor"]().fit(enc.transform(reference, "reference"))
    small = det.score(enc.transform(blobs(300, 3)))
    large = det.score(enc.transform(blobs(20000, 4)))
    assert np.quantile(large, 0.99) < 2.0 * np.quantile(small, 0.99) + 1.0


# -------------------------------------------------------------------- drift


def test_drift_flags_a_shifted_batch_and_not_an_iid_one():
    """A mean shift in one feature and a skewed label mix are flagged; a fresh iid batch is not."""
    from poisonguard.detectors import batch_drift

    reference = blobs(3000, 1)
    enc = Encoder.fit(reference, FEATURES, "label")
    ref = enc.transform(reference, "reference")
    iid = batch_drift(ref, enc.transform(blobs(2000, 2)))
    assert not iid.is_drifted and iid.drifted_features == ()
    assert "no material drift" in iid.summary()

    shifted = blobs(2000, 3)
    shifted["x5"] += 1.0
    shifted.loc[shifted.index[:600], "label"] = "a"
    report = batch_drift(ref, enc.transform(shifted))
    assert report.drifted_features == ("x5",)
    assert report.label_drifted and report.label_tv > 0.1
    assert report.is_drifted
    assert "x5" in report.summary() and "Labels shifted" in report.summary()


def test_drift_rejects_bad_parameters(tables):
    """Thresholds out of range raise the house ConfigError."""
    from poisonguard.detectors import batch_drift

    reference, batch = tables
    with pytest.raises(
        ConfigError,
        match=r"^The 'alpha' parameter of batch_drift\(\) must be in \(0, 1\)\. Got 1\.5 instead\.$",
    ):
        batch_drift(reference, batch, alpha=1.5)


# ------------------------------------------------------------ interpolation


def test_interpolated_rows_outscore_honest_rows(tables):
    """Rows part of the way from a trusted row towards one of another label, carrying the
    first row's label, outscore every honest batch row (all but the odd one whose first row is
    not among its nearest trusted rows of that label)."""
    reference, batch = tables
    rng = np.random.default_rng(0)
    X = batch.X.astype(np.float64).copy()
    y = batch.y.copy()
    planted = np.arange(10)
    for r in planted:
        a = int(rng.integers(reference.n_rows))
        others = np.flatnonzero(reference.y != reference.y[a])
        d = ((reference.X[others] - reference.X[a]) ** 2).sum(axis=1)
        b = others[np.argsort(d)[rng.integers(5)]]
        lam = rng.uniform(0.5, 0.75)
        X[r] = lam * reference.X[b] + (1 - lam) * reference.X[a]
        y[r] = reference.y[a]
    poisoned = with_rows(batch, X=X, y=y)
    det = REGISTRY["interpolation"]().fit(reference)
    s = det.score(poisoned)
    assert np.sum(s[planted] > np.delete(s, planted).max()) >= 8
    assert "segment between a trusted row of its label" in det.explain(poisoned, planted[:1])[0]


def test_knn_label_ratio_grows_with_depth_inside_another_label(tables):
    """A row labelled 'a' scores higher the farther it sits inside label 'b' (no saturation)."""
    reference, batch = tables
    centre_b = reference.X[reference.y == 1].mean(axis=0).astype(np.float64)
    centre_a = reference.X[reference.y == 0].mean(axis=0).astype(np.float64)
    steps = np.linspace(0.5, 1.0, 6)
    X = batch.X.astype(np.float64).copy()
    y = batch.y.copy()
    X[:6] = centre_a + steps[:, None] * (centre_b - centre_a)
    y[:6] = 0
    s = REGISTRY["knn_label"]().fit(reference).score(with_rows(batch, X=X, y=y))
    assert np.all(np.diff(s[:6]) > 0)
    assert s[5] > 1.0


@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=200),
    st.integers(1, 80),
)
def test_backdoor_bin_edges_are_numpys_quantiles_of_the_sorted_column(values, n_bins):
    """backdoor reads its quantile edges straight off each sorted trusted column (up to
    numpy's float32 interpolation, within a millionth of the column's range)."""
    from poisonguard.detectors.backdoor import _sorted_quantiles

    col = np.sort(np.array(values, dtype=np.float32))
    qs = np.linspace(0.0, 1.0, n_bins + 1)
    spread = float(col[-1]) - float(col[0])
    np.testing.assert_allclose(
        _sorted_quantiles(col, qs), np.quantile(col, qs), rtol=0, atol=1e-6 * spread + 1e-9
    )


# ------------------------------------------------------------ label_excess


def _population_flip() -> tuple[Table, Table, Table, np.ndarray]:
    """A coarse table (two categories decide the label 80/20): trusted rows, a clean batch,
    and the same batch with one population's labels turned to its minority label (no
    flipped row is impossible alone), with the flipped rows."""
    rng = np.random.default_rng(3)

    def draw(n: int) -> pd.DataFrame:
        a = rng.integers(0, 2, n)
        b = rng.integers(0, 3, n)
        p = np.where(a == 1, 0.8, 0.2)
        return pd.DataFrame(
            {
                "plan": np.array(["basic", "pro"])[a],
                "region": np.array(["north", "south", "east"])[b],
                "age": rng.normal(40, 10, n).round(),
                "label": np.where(rng.random(n) < p, "churned", "stayed"),
            }
        )

    reference, batch = draw(1500), draw(600)
    clean = batch.copy()
    population = np.flatnonzero(
        (batch["plan"] == "pro").to_numpy() & (batch["region"] == "north").to_numpy()
    )
    flipped = population[batch["label"].to_numpy()[population] == "churned"]
    batch.loc[flipped, "label"] = "stayed"
    encoder = Encoder.fit(reference, ["plan", "region", "age"], "label")
    return (
        encoder.transform(reference),
        encoder.transform(clean),
        encoder.transform(batch),
        flipped,
    )


def test_label_excess_finds_a_relabelled_population():
    """Every flipped row of the population outscores the rows outside it, though the flipped
    label is what a fifth of the population honestly carries (model_label cannot tell)."""
    reference, _, batch, flipped = _population_flip()
    det = REGISTRY["label_excess"]().fit(reference)
    s = det.score(batch)
    outside = np.setdiff1d(np.arange(batch.n_rows), flipped)
    assert np.median(s[flipped]) > np.quantile(s[outside], 0.99)
    model = REGISTRY["model_label"]().fit(reference).score(batch)
    assert np.median(model[flipped]) < np.quantile(model[outside], 0.95)
    reason = det.explain(batch, flipped[:1])[0]
    assert reason.startswith("label stayed on ") and "nearest trusted rows" in reason


def test_label_excess_scores_an_unpoisoned_batch_like_trusted_rows():
    """On a fresh clean batch scores stay near the null (few rows past a 1e-3 tail), and the
    same batch with a relabelled population scores far higher there."""
    reference, clean, poisoned, flipped = _population_flip()
    det = REGISTRY["label_excess"]().fit(reference)
    s_clean = det.score(clean)
    assert np.mean(s_clean > -np.log(1e-3)) < 0.01
    assert np.median(det.score(poisoned)[flipped]) > np.quantile(s_clean, 0.99)


# ------------------------------------------------------------ crowding


def _crowding_setup() -> tuple[Encoder, Table]:
    reference = blobs(1500, 1)
    encoder = Encoder.fit(reference, FEATURES, "label")
    return encoder, encoder.transform(reference, "reference")


@pytest.mark.parametrize(("n", "seed"), [(300, 2), (3000, 3)])
def test_crowding_is_a_valid_tail_on_clean_batches_of_any_size(n, seed):
    """On a clean batch, small or past the sample's size, -log P(C <= c) is a valid tail:
    the share of rows at or past -log(a) stays near a (sampling error allowed), the same at
    both sizes, so the score does not grow with the batch."""
    encoder, reference = _crowding_setup()
    s = REGISTRY["crowding"]().fit(reference).score(encoder.transform(blobs(n, seed)))
    for a in (0.2, 0.05, 0.01):
        assert np.mean(s >= -np.log(a)) <= 1.3 * a + 3.0 * np.sqrt(a / n)
    assert 0.7 < s.mean() < 1.4


def test_crowding_finds_a_flood_of_jittered_copies_the_duplicates_grid_misses():
    """Ten copies each of three rows, jittered far past the duplicate grid but well inside
    the rows' natural spacing: most copies outscore 99% of the honest rows (a copy of a row
    in the densest part of the table has trusted rows close by), the duplicates detector
    scores none of them, and the reason gives the counts."""
    encoder, reference = _crowding_setup()
    honest = blobs(600, 5)
    rng = np.random.default_rng(6)
    copies = honest.loc[np.repeat([0, 1, 2], 10)].reset_index(drop=True)
    copies[FEATURES] += rng.normal(0.0, 0.05, (30, len(FEATURES)))
    batch = encoder.transform(pd.concat([honest.iloc[3:], copies], ignore_index=True))
    flood = np.arange(batch.n_rows - 30, batch.n_rows)
    det = REGISTRY["crowding"]().fit(reference)
    s = det.score(batch)
    top = np.quantile(s[: flood[0]], 0.99)
    assert np.median(s[flood]) > top and np.mean(s[flood] > top) >= 0.6
    assert np.all(REGISTRY["duplicates"]().fit(reference).score(batch)[flood] == 0.0)
    reason = det.explain(batch, flood[:1])[0]
    assert reason.startswith("10 rows of this batch lie within ") and "trusted rows" in reason


def test_crowding_does_not_score_repeats_the_trusted_rows_also_show():
    """Exact repeats of a value the trusted rows repeat as often (a coarse table) score below
    one nat, far from any hold: ties count for the trusted rows."""
    rng = np.random.default_rng(7)

    def draw(n: int) -> pd.DataFrame:
        level = rng.integers(0, 4, n)
        return pd.DataFrame(
            {"x0": level.astype(float), "x1": (level % 2).astype(float), "label": level % 2}
        )

    encoder = Encoder.fit(draw(800), ["x0", "x1"], "label")
    reference = encoder.transform(draw(800), "reference")
    s = REGISTRY["crowding"]().fit(reference).score(encoder.transform(draw(400)))
    assert np.all(s < 1.0)


def test_beta_binomial_tail_matches_the_summed_pmf():
    from scipy.stats import betabinom

    from poisonguard.detectors._kernels import _beta_binomial_log_tail

    rng = np.random.default_rng(0)
    n = rng.integers(1, 40, 500)
    count = rng.integers(-1, 42, 500)
    a, b = rng.uniform(0.05, 30, 500), rng.uniform(0.05, 30, 500)
    got = _beta_binomial_log_tail(count, n, a, b)
    for i in range(500):
        if count[i] <= 0:
            assert got[i] == 0.0
        elif count[i] > n[i]:
            assert got[i] == -np.inf
        else:
            want = np.log(betabinom.pmf(np.arange(count[i], n[i] + 1), n[i], a[i], b[i]).sum())
            assert got[i] == pytest.approx(want, rel=1e-9, abs=1e-12)


# ------------------------------------------------------------ model choice


def test_model_residual_picks_the_model_the_trusted_rows_favour():
    """A linear target gets the ridge model, a target of an interaction the boosted one."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 4))
    for target, kind in (
        (X @ [3.0, -2.0, 1.0, 0.5] + rng.normal(0, 0.1, 400), "RidgeCV"),
        (
            np.where((X[:, 0] > 0) ^ (X[:, 1] > 0), 5.0, -5.0) + rng.normal(0, 0.1, 400),
            "HistGradientBoostingRegressor",
        ),
    ):
        frame = pd.DataFrame(X, columns=["a", "b", "c", "d"]).assign(price=target)
        table = Encoder.fit(frame, ["a", "b", "c", "d"], "price", task="regression").transform(
            frame
        )
        det = REGISTRY["model_residual"]().fit(table)
        assert type(det.model_).__name__ == kind


# ------------------------------------------------------------- combination


def _coarse(n: int, seed: int, *, forbid: bool = False) -> pd.DataFrame:
    """Two categories, plan tied to the label 80/20; with ``forbid``, never plan "pro" with
    region "east" (each common on its own)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2, n)
    b = rng.integers(0, 3, n)
    if forbid:
        b = np.where((a == 1) & (b == 2), rng.integers(0, 2, n), b)
    return pd.DataFrame(
        {
            "plan": np.array(["basic", "pro"])[a],
            "region": np.array(["north", "south", "east"])[b],
            "age": rng.normal(40, 10, n).round(),
            "label": np.where(rng.random(n) < np.where(a == 1, 0.8, 0.2), "churned", "stayed"),
        }
    )


def test_combination_scores_honest_rows_by_shares_not_by_trusted_rows_counted():
    """An honest minority row (plan "basic" and churned: a fifth of its plan) scores what the
    shares say, about log 2.5, whether 300 or 30,000 trusted rows are counted; a Poisson
    deficit grew with the count, so cross-fitted calibration (fitted on fewer rows than
    the batch's detector) put honest rows past every calibration score."""
    row = pd.DataFrame({"plan": ["basic"], "region": ["north"], "age": [40.0], "label": "churned"})
    scores = []
    for n in (300, 30_000):
        reference = _coarse(n, 1)
        enc = Encoder.fit(reference, ["plan", "region", "age"], "label")
        det = REGISTRY["combination"]().fit(enc.transform(reference))
        scores.append(float(det.score(enc.transform(row))[0]))
    assert scores[0] == pytest.approx(np.log(2.5), abs=0.4)
    assert scores[1] == pytest.approx(np.log(2.5), abs=0.1)


def test_combination_finds_a_pair_the_trusted_rows_never_show():
    """A row with plan "pro" and region "east", each common but never together among 2,000
    trusted rows, outscores every honest row, and the reason says so in the user's terms."""
    reference, batch = _coarse(2000, 1, forbid=True), _coarse(400, 2, forbid=True)
    batch.loc[:4, ["plan", "region"]] = ["pro", "east"]
    enc = Encoder.fit(reference, ["plan", "region", "age"], "label")
    table = enc.transform(batch)
    det = REGISTRY["combination"]().fit(enc.transform(reference))
    s = det.score(table)
    assert s[:5].min() > s[5:].max() + 1.0
    reason = det.explain(table, np.array([0]))[0]
    assert "plan = 'pro' and region = 'east': 0 of" in reason
