"""The Python API: poisonguard.scan() and Guard."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import poisonguard
from poisonguard.attacks import plant
from poisonguard.demo import LABEL, digits_frame
from poisonguard.errors import ConfigError


@pytest.fixture(scope="module")
def split():
    frame = digits_frame().drop(columns=["row_id"])
    order = np.random.default_rng(0).permutation(len(frame))
    reference = frame.iloc[order[:800]].reset_index(drop=True)
    batch = frame.iloc[order[800:1100]].reset_index(drop=True)
    return reference, batch


def test_results_align_to_the_frames_own_index(split):
    """quarantined, scores and reasons carry the scanned frame's index, whatever it is."""
    reference, batch = split
    attack = plant(
        batch, label=LABEL, kind="random_flip", rate=0.1, reference=reference, random_state=1
    )
    frame = attack.frame.set_axis([f"r{i}" for i in range(len(attack.frame))])
    result = poisonguard.scan(frame, label=LABEL, reference=reference)
    for part in (result.quarantined, result.scores, result.reasons, result.p_values):
        assert part.index.equals(frame.index)
    assert result.quarantined.dtype == bool
    assert "suspicion" in result.scores.columns
    held = result.quarantined.to_numpy()
    assert (result.reasons[held].str.len() > 0).all()
    assert (result.reasons[~held] == "").all()
    caught = (held & attack.is_poison).sum()
    assert caught >= 0.6 * attack.is_poison.sum()
    assert (held & ~attack.is_poison).sum() <= 0.05 * (~attack.is_poison).sum()


def test_without_a_label_only_label_free_detectors_run(split):
    reference, batch = split
    result = poisonguard.scan(
        batch.drop(columns=[LABEL]), label=None, reference=reference.drop(columns=[LABEL])
    )
    ran = set(result.scores.columns) - {"suspicion"}
    assert ran and not any("label" in name for name in ran)


def test_bad_parameters_get_the_house_message(split):
    reference, batch = split
    with pytest.raises(
        ConfigError,
        match=r"The 'fdr' parameter of scan\(\) must be in \(0, 1\)\. Got 2\.0 instead\.",
    ):
        poisonguard.scan(
            batch, label=LABEL, reference=reference, config=poisonguard.DetectionSettings(fdr=2.0)
        )
    with pytest.raises(ConfigError, match=r"'label' parameter of scan\(\) must be a column"):
        poisonguard.scan(batch, label="colour", reference=reference)
    with pytest.raises(ConfigError, match="needs at least 30 trusted rows"):
        poisonguard.scan(batch, label=LABEL, reference=reference.head(10))


@pytest.mark.parametrize(
    ("params", "match"),
    [
        (
            {"knn_label": {"n_neighbors": 0}},
            r"^The 'n_neighbors' parameter of KnnLabelDetector must be an int >= 1\. "
            r"Got 0 instead\.$",
        ),
        (
            {"knn_label": {"n_neighbour": 10}},
            r"^KnnLabelDetector has no parameter 'n_neighbour'; expected one of max_reference, "
            r"n_close, n_neighbors, random_state, smoothing$",
        ),
        (
            {"tail": {"combine": "mean"}},
            r"^The 'combine' parameter of TailDetector must be one of \['sum', 'max'\]\. "
            r"Got 'mean' instead\.$",
        ),
        ({"knn_lable": {}}, r"^The 'params' parameter of (Guard|scan\(\)) must be keyed by"),
        ({"knn_label": 10}, r"^The 'params\.knn_label' parameter of (Guard|scan\(\)) must be a"),
    ],
)
def test_detector_parameters_are_checked_before_anything_is_fitted(split, params, match):
    """Guard(settings=...) and scan(config=DetectionSettings(...)) check detector parameters
    up front, even for detectors the scan would not run, in the house template."""
    reference, batch = split
    settings = poisonguard.DetectionSettings(detectors=("knn_distance",), params=params)
    with pytest.raises(ConfigError, match=match):
        poisonguard.Guard(label=LABEL, settings=settings).fit(reference)
    with pytest.raises(ConfigError, match=match):
        poisonguard.scan(batch, label=LABEL, reference=reference, config=settings)
    with pytest.raises(ConfigError, match=match):
        poisonguard.scan(batch, label=LABEL, config=settings)


def test_a_float_label_is_judged_as_a_regression_target(split):
    """A label of non-integer floats is a regression target (the regression detectors run);
    forced to be classes it is refused in one message naming where it came from;
    whole-number floats, strings and bools stay classes."""
    reference, batch = split
    price = {"reference": reference.copy(), "batch": batch.copy()}
    for frame in price.values():
        frame[LABEL] = frame[LABEL] + np.linspace(0.01, 0.99, len(frame))
    result = poisonguard.scan(price["batch"], label=LABEL, reference=price["reference"])
    assert {"knn_residual", "model_residual"} <= set(result.scores.columns)
    assert "knn_label" not in result.scores.columns
    message = (
        r"^{}: label 'digit' holds {} distinct non-integer values, so it is a regression "
        r'target, not classes: set task = "regression" \(or leave the task out to infer it\)$'
    )
    n_ref = price["reference"][LABEL].nunique()
    with pytest.raises(ConfigError, match=message.format("reference", n_ref)):
        poisonguard.scan(
            price["batch"], label=LABEL, reference=price["reference"], task="classification"
        )

    for cast in (lambda s: s.astype(float), lambda s: s.astype(str), lambda s: s > 4):
        ref, bat = reference.copy(), batch.copy()
        ref[LABEL], bat[LABEL] = cast(ref[LABEL]), cast(bat[LABEL])
        result = poisonguard.scan(bat, label=LABEL, reference=ref)
        assert len(result.quarantined) == len(bat) and "knn_label" in result.scores.columns


def test_a_fitted_guard_judges_many_batches_the_same_way(split):
    reference, batch = split
    guard = poisonguard.Guard(label=LABEL).fit(reference)
    first = guard.scan(batch)
    again = guard.scan(batch)
    pd.testing.assert_frame_equal(first.scores, again.scores)
    assert first.quarantined.equals(again.quarantined)


def test_with_no_reference_the_batch_judges_itself_and_explains(split):
    """Without trusted rows, far outliers still stand out, each held row with a reason."""
    reference, batch = split
    attack = plant(
        batch, label=LABEL, kind="far_outlier", rate=0.05, reference=reference, random_state=2
    )
    result = poisonguard.scan(attack.frame, label=LABEL)
    held = result.quarantined.to_numpy()
    assert (held & attack.is_poison).sum() >= 0.8 * attack.is_poison.sum()
    assert (result.reasons[held].str.len() > 0).all()


@pytest.mark.parametrize("calibration_rows", [100, 400])
def test_large_references_calibrate_by_a_split_small_ones_by_cross_fitting(split, calibration_rows):
    """800 trusted rows: with 100 calibration rows the detectors are fitted once on the other
    700 (split conformal); with 400 every row serves both roles by cross-fitting. Either way,
    clean digits the guard never saw get p-values with P(p <= 0.2) close to 0.2."""
    reference, batch = split
    settings = poisonguard.DetectionSettings(calibration_rows=calibration_rows)
    guard = poisonguard.Guard(label=LABEL, settings=settings).fit(reference)
    assert guard.calibration_ == ("split" if calibration_rows == 100 else "cross-fitted")
    result = guard.scan(batch)
    for name in ("knn_label", "model_label", "knn_distance"):
        share = float((result.p_values[name] <= 0.2).mean())
        assert 0.08 <= share <= 0.35, (name, share)
    assert result.quarantined.mean() <= 0.05


def test_a_large_clean_batch_of_separated_classes_is_not_held():
    """A clean batch far larger than a calibration fold (3,000 rows against folds of 400),
    classes that never mix: within-batch detectors see other batch sizes in calibration
    than here, and must not score every row past every calibration score. (label_excess
    once weighed the trusted share by its reach, which grows as the batch sample shrinks:
    every row of such a batch was held.)"""
    rng = np.random.default_rng(7)
    centres = rng.normal(0.0, 6.0, size=(4, 8))

    def draw(n: int) -> pd.DataFrame:
        y = rng.integers(0, 4, n)
        frame = pd.DataFrame(
            centres[y] + rng.normal(size=(n, 8)), columns=[f"x{i}" for i in range(8)]
        )
        frame["label"] = y
        return frame

    result = poisonguard.scan(draw(3000), label="label", reference=draw(2500))
    assert result.quarantined.mean() <= 0.01
