"""Tests for the attack harness: counts, untouched rows, determinism and each kind's signature."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from poisonguard.attacks import ATTACKS, FLIP_ATTACKS, MAX_RATE, PlantedAttack, plant
from poisonguard.errors import ConfigError

INJECTIONS = tuple(k for k in ATTACKS if k not in FLIP_ATTACKS)


def _split(frame: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reference (40%) and batch (the rest), the batch keeping its original index."""
    order = np.random.default_rng(seed).permutation(len(frame))
    cut = int(0.4 * len(frame))
    return frame.iloc[order[:cut]], frame.iloc[order[cut:]]


def _with_id(data: Any) -> tuple[pd.DataFrame, list[str]]:
    """The sklearn frame with a string id column in front (a non-feature column)."""
    frame = data.frame.copy()
    frame.insert(0, "row_id", [f"r{i}" for i in range(len(frame))])
    return frame, list(data.feature_names)


@pytest.fixture(scope="module")
def wine() -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    frame, features = _with_id(load_wine(as_frame=True))
    reference, batch = _split(frame)
    return reference, batch, features


@pytest.fixture(scope="module")
def cancer() -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    frame, features = _with_id(load_breast_cancer(as_frame=True))
    reference, batch = _split(frame)
    return reference, batch, features


def _robust(reference: pd.DataFrame, frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    ref = reference[features].to_numpy(float)
    q75, q50, q25 = np.percentile(ref, [75, 50, 25], axis=0)
    scale = (q75 - q25) / 1.349
    scale = np.where(scale > 0, scale, ref.std(axis=0))
    scale = np.where(scale > 0, scale, 1.0)
    return (frame[features].to_numpy(float) - q50) / scale


# --- every kind ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ATTACKS)
@pytest.mark.parametrize("rate", [0.05, 0.2])
def test_exact_share_of_rows_is_poison_and_the_rest_is_untouched(wine, kind, rate):
    """round(rate * n) rows are poison, n rows come out, every other row is exactly as it was."""
    reference, batch, features = wine
    attack = plant(batch, label="target", kind=kind, rate=rate, reference=reference, random_state=3)
    clean = batch.reset_index(drop=True)
    assert isinstance(attack, PlantedAttack)
    assert attack.kind == kind and attack.rate == rate
    assert len(attack.frame) == len(batch)
    assert attack.frame.index.equals(pd.RangeIndex(len(batch)))
    assert attack.is_poison.dtype == bool and attack.is_poison.shape == (len(batch),)
    assert attack.n_poison == round(rate * len(batch))
    assert list(attack.frame.columns) == list(batch.columns)
    assert attack.frame.dtypes.equals(batch.dtypes)
    pd.testing.assert_frame_equal(attack.frame[~attack.is_poison], clean[~attack.is_poison])
    # Non-feature columns other than the label stay valid on poison rows too.
    assert attack.frame["row_id"].equals(clean["row_id"])
    # Every poison row really differs from the row it took the place of.
    changed = (attack.frame[[*features, "target"]] != clean[[*features, "target"]]).any(axis=1)
    assert changed[attack.is_poison].all()


@pytest.mark.parametrize("kind", ATTACKS)
def test_same_seed_same_poison_and_other_seed_other_poison(wine, kind):
    """An attack is a pure function of its inputs and seed; confident_flip does not even use the
    seed (it takes the rows the model is surest of, whatever the seed)."""
    reference, batch, _ = wine

    def run(seed: int) -> PlantedAttack:
        return plant(
            batch, label="target", kind=kind, rate=0.1, reference=reference, random_state=seed
        )

    first, again, other = run(1), run(1), run(2)
    pd.testing.assert_frame_equal(first.frame, again.frame)
    np.testing.assert_array_equal(first.is_poison, again.is_poison)
    assert first.frame.equals(other.frame) == (kind == "confident_flip")


@pytest.mark.parametrize("kind", ATTACKS)
def test_zero_rate_returns_an_untouched_copy(wine, kind):
    """rate=0 poisons nothing and leaves the input frame alone."""
    reference, batch, _ = wine
    before = batch.copy()
    attack = plant(batch, label="target", kind=kind, rate=0.0, reference=reference)
    assert not attack.is_poison.any()
    pd.testing.assert_frame_equal(attack.frame, batch.reset_index(drop=True))
    pd.testing.assert_frame_equal(batch, before)


@pytest.mark.parametrize("kind", ATTACKS)
def test_input_frame_is_never_modified(cancer, kind):
    """plant() works on a copy: the caller's batch and reference are unchanged."""
    reference, batch, _ = cancer
    before, ref_before = batch.copy(), reference.copy()
    plant(batch, label="target", kind=kind, rate=0.2, reference=reference, random_state=0)
    pd.testing.assert_frame_equal(batch, before)
    pd.testing.assert_frame_equal(reference, ref_before)


# --- each kind's signature -----------------------------------------------------


@pytest.mark.parametrize("kind", FLIP_ATTACKS)
def test_flips_change_labels_only(wine, kind):
    """Flip attacks leave every feature value alone and give each poison row another class."""
    reference, batch, features = wine
    attack = plant(batch, label="target", kind=kind, rate=0.2, reference=reference, random_state=0)
    clean = batch.reset_index(drop=True)
    pd.testing.assert_frame_equal(attack.frame[features], clean[features])
    flipped = attack.frame["target"] != clean["target"]
    np.testing.assert_array_equal(flipped.to_numpy(), attack.is_poison)
    assert set(attack.frame["target"]) <= set(reference["target"]) | set(batch["target"])


def test_clustered_flip_takes_one_tight_cluster_of_one_class_to_one_other_class(cancer):
    """The flipped rows come from one class, go to one class, and sit close together."""
    reference, batch, features = cancer
    attack = plant(
        batch, label="target", kind="clustered_flip", rate=0.1, reference=reference, random_state=4
    )
    clean = batch.reset_index(drop=True)
    sources = clean.loc[attack.is_poison, "target"].unique()
    targets = attack.frame.loc[attack.is_poison, "target"].unique()
    assert len(sources) == 1 and len(targets) == 1 and sources[0] != targets[0]
    z = _robust(reference, clean, features)
    same_class = (clean["target"] == sources[0]).to_numpy()

    def spread(rows: np.ndarray) -> float:
        return float(np.linalg.norm(z[rows] - z[rows].mean(axis=0), axis=1).mean())

    assert spread(attack.is_poison) < 0.6 * spread(same_class)


def test_clustered_flip_spills_into_more_clusters_when_no_class_is_big_enough():
    """With every class smaller than the poison count, several clusters make up the count."""
    frame = pd.DataFrame({"x": np.arange(40.0), "y": np.repeat([0, 1, 2, 3], 10)})
    attack = plant(frame, label="y", kind="clustered_flip", rate=0.5, random_state=0)
    assert attack.n_poison == 20
    assert (attack.frame["y"] != frame["y"])[attack.is_poison].all()


def test_confident_flip_takes_the_rows_a_model_is_surest_of(wine):
    """Flipped rows are ones a model of the reference classifies with high confidence."""
    reference, batch, features = wine
    attack = plant(
        batch, label="target", kind="confident_flip", rate=0.1, reference=reference, random_state=0
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(reference[features], reference["target"])
    clean = batch.reset_index(drop=True)
    proba = model.predict_proba(clean[features])
    own = proba[np.arange(len(clean)), clean["target"].to_numpy()]
    assert np.median(own[attack.is_poison]) > np.quantile(own[~attack.is_poison], 0.5)
    assert own[attack.is_poison].min() > 0.8


def test_confident_flip_in_two_classes_goes_to_the_other_class(cancer):
    """With two classes the second most likely class is simply the other one."""
    reference, batch, _ = cancer
    attack = plant(
        batch, label="target", kind="confident_flip", rate=0.2, reference=reference, random_state=0
    )
    clean = batch.reset_index(drop=True)
    poisoned = attack.frame.loc[attack.is_poison, "target"].to_numpy()
    np.testing.assert_array_equal(poisoned, 1 - clean.loc[attack.is_poison, "target"].to_numpy())


@pytest.mark.parametrize("seed", range(4))
def test_backdoor_rows_carry_one_rare_in_range_trigger_and_the_target_label(cancer, seed):
    """Every backdoor row shares a 1-3 feature trigger that is inside the reference range but rare,
    is otherwise a copy of a non-target batch row, and is labelled with the one target class."""
    reference, batch, features = cancer
    attack = plant(
        batch, label="target", kind="backdoor", rate=0.1, reference=reference, random_state=seed
    )
    clean = batch.reset_index(drop=True)
    poison = attack.frame.loc[attack.is_poison]
    targets = poison["target"].unique()
    assert len(targets) == 1
    trigger = [c for c in features if poison[c].nunique() == 1]
    assert 1 <= len(trigger) <= 3
    for col in trigger:
        value = poison[col].iloc[0]
        ref = reference[col]
        assert ref.quantile(0.01) <= value <= ref.quantile(0.99)
        # Rare: the emptiest tenth of the range, so few trusted rows lie near it.
        width = (ref.quantile(0.99) - ref.quantile(0.01)) / 10
        assert ((ref - value).abs() <= width / 2).mean() < 0.1
    rest = [c for c in features if c not in trigger]
    sources = clean.loc[clean["target"] != targets[0], rest].to_numpy()
    for row in poison[rest].to_numpy():
        assert (sources == row).all(axis=1).any()


def test_interpolation_rows_lie_between_trusted_rows_of_two_classes(wine):
    """Injected rows stay inside the reference's bounding box, are new and take existing labels."""
    reference, batch, features = wine
    attack = plant(
        batch, label="target", kind="interpolation", rate=0.2, reference=reference, random_state=0
    )
    poison = attack.frame.loc[attack.is_poison]
    lo, hi = reference[features].min(), reference[features].max()
    assert ((poison[features] >= lo) & (poison[features] <= hi)).all().all()
    ref = reference[features].to_numpy()
    for row in poison[features].to_numpy():
        assert not (ref == row).all(axis=1).any()
    assert set(poison["target"]) <= set(reference["target"])


@pytest.mark.parametrize("fixture", ["wine", "cancer"])
def test_far_outliers_lie_beyond_every_trusted_row(fixture, request):
    """Each far outlier is farther from the reference median, on the robust scale, than any
    trusted row, and several robust scales out on at least one feature."""
    reference, batch, features = request.getfixturevalue(fixture)
    attack = plant(
        batch, label="target", kind="far_outlier", rate=0.2, reference=reference, random_state=0
    )
    ref_dist = np.linalg.norm(_robust(reference, reference, features), axis=1)
    z = _robust(reference, attack.frame.loc[attack.is_poison], features)
    assert np.linalg.norm(z, axis=1).min() > 1.4 * ref_dist.max()
    assert (np.abs(z).max(axis=1) > 3).all()


def test_duplicate_flood_copies_a_few_rows_exactly_or_nearly(wine):
    """Poison rows are copies of at most five kept batch rows: most exact, the rest within a
    tiny fraction of each feature's spread."""
    reference, batch, features = wine
    attack = plant(
        batch, label="target", kind="duplicate_flood", rate=0.2, reference=reference, random_state=0
    )
    kept = attack.frame.loc[~attack.is_poison, features].to_numpy()
    poison = attack.frame.loc[attack.is_poison, features].to_numpy()
    spread = reference[features].std().to_numpy()
    seeds, exact = set(), 0
    for row in poison:
        gap = np.abs(kept - row) / spread
        nearest = int(gap.max(axis=1).argmin())
        assert gap[nearest].max() < 0.05
        exact += int(gap[nearest].max() == 0)
        seeds.add(nearest)
    assert len(seeds) <= 5
    assert exact >= len(poison) / 2


def test_duplicate_flood_gives_all_copies_of_a_seed_one_label(wine):
    """A seed's copies all carry the same label, kept or flipped."""
    reference, batch, features = wine
    for seed in range(5):
        attack = plant(
            batch,
            label="target",
            kind="duplicate_flood",
            rate=0.2,
            reference=reference,
            random_state=seed,
        )
        poison = attack.frame.loc[attack.is_poison]
        rounded = poison[features].round(1).astype(str).agg("|".join, axis=1)
        assert (poison.groupby(rounded)["target"].nunique() == 1).all()


def test_injected_rows_keep_whole_number_features_whole():
    """Features whose trusted values are all whole numbers (digit pixels, counts) get whole
    injected values, and integer columns keep their dtype."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "count": rng.integers(0, 20, 200),
            "pixel": rng.integers(0, 17, 200).astype(float),
            "x": rng.normal(size=200),
            "y": rng.integers(0, 3, 200),
        }
    )
    for kind in INJECTIONS:
        attack = plant(frame, label="y", kind=kind, rate=0.2, random_state=1)
        assert attack.frame["count"].dtype == np.int64
        poison = attack.frame.loc[attack.is_poison]
        assert (poison["pixel"] == poison["pixel"].round()).all()


def test_string_labels_and_non_numeric_columns_are_supported():
    """Labels may be strings; text columns are left out of the features and kept per row."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "a": rng.normal(size=60),
            "b": rng.normal(size=60),
            "note": [f"n{i}" for i in range(60)],
            "label": rng.choice(["cat", "dog", "eel"], 60),
        }
    )
    for kind in ATTACKS:
        attack = plant(frame, label="label", kind=kind, rate=0.2, random_state=0)
        assert attack.frame["note"].equals(frame["note"])
        assert set(attack.frame["label"]) <= {"cat", "dog", "eel"}


# --- bad parameters ------------------------------------------------------------


@pytest.fixture
def tiny() -> pd.DataFrame:
    return pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0], "w": [1, 2, 3, 4], "y": [0, 1, 0, 1]})


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"kind": "poison_everything"}, r"'kind' parameter of plant\(\) must be one of"),
        ({"rate": -0.1}, r"'rate' parameter .* must be a number in \[0, 0.5\]. Got -0.1"),
        ({"rate": 0.51}, r"'rate' parameter"),
        ({"rate": float("nan")}, r"'rate' parameter"),
        ({"rate": True}, r"'rate' parameter"),
        ({"rate": "0.1"}, r"'rate' parameter"),
        ({"label": "nope"}, r"'label' parameter of plant\(\) must be the name of a column"),
        ({"features": ["y"]}, r"'features' parameter"),
        ({"features": ["missing"]}, r"'features' parameter"),
        ({"features": []}, r"'features' parameter"),
        ({"random_state": -1}, r"'random_state' parameter"),
        ({"random_state": "7"}, r"'random_state' parameter"),
        ({"reference": pd.DataFrame({"x": [1.0]})}, r"'reference' parameter .* lacks"),
    ],
)
def test_bad_parameters_raise_config_error_naming_them(tiny, params, match):
    """Each unusable parameter raises ConfigError with the one message template."""
    kwargs = {"label": "y", "kind": "random_flip", "rate": 0.25, **params}
    with pytest.raises(ConfigError, match=match):
        plant(tiny, **kwargs)


def test_missing_labels_are_rejected(tiny):
    """A batch with a missing label cannot be attacked meaningfully and is refused."""
    tiny = tiny.astype({"y": float})
    tiny.loc[0, "y"] = np.nan
    with pytest.raises(ConfigError, match="without missing values"):
        plant(tiny, label="y", kind="random_flip", rate=0.25)


@pytest.mark.parametrize("kind", ["random_flip", "clustered_flip", "backdoor"])
def test_single_class_data_cannot_be_flipped(tiny, kind):
    """Relabelling needs a second class to relabel to."""
    with pytest.raises(ConfigError, match="at least two classes"):
        plant(tiny.assign(y=0), label="y", kind=kind, rate=0.25)


@pytest.mark.parametrize("kind", ["confident_flip", "interpolation"])
def test_attacks_that_study_the_reference_need_two_classes_in_it(tiny, kind):
    """confident_flip and interpolation fit on the reference, which must hold two classes."""
    reference = tiny.assign(y=1)
    with pytest.raises(ConfigError, match=r"'reference' parameter .* two classes"):
        plant(tiny, label="y", kind=kind, rate=0.25, reference=reference)


def test_empty_frame_is_rejected():
    """An empty batch has nothing to poison."""
    with pytest.raises(ConfigError, match="at least one row"):
        plant(pd.DataFrame({"x": [], "y": []}), label="y", kind="random_flip", rate=0.1)


# --- any data --------------------------------------------------------------------


@st.composite
def batches(draw: st.DrawFn) -> tuple[pd.DataFrame, str, float, int]:
    n = draw(st.integers(4, 60))
    d = draw(st.integers(1, 4))
    n_classes = draw(st.integers(2, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    columns: dict[str, object] = {}
    for j in range(d):
        style = draw(st.sampled_from(["normal", "int", "constant", "nan"]))
        if style == "normal":
            columns[f"f{j}"] = rng.normal(size=n) * 10.0 ** rng.integers(-3, 4)
        elif style == "int":
            columns[f"f{j}"] = rng.integers(-5, 5, n)
        elif style == "constant":
            columns[f"f{j}"] = np.full(n, 2.5)
        else:
            values = rng.normal(size=n)
            values[rng.random(n) < 0.3] = np.nan
            columns[f"f{j}"] = values
    labels = rng.integers(0, n_classes, n)
    labels[:2] = [0, 1]
    columns["id"] = np.arange(n) * 7
    columns["label"] = labels
    frame = pd.DataFrame(columns)
    kind = draw(st.sampled_from(ATTACKS))
    rate = draw(st.floats(0.0, MAX_RATE))
    return frame, kind, rate, draw(st.integers(0, 1000))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_any_batch_any_kind_keeps_the_invariants(case):
    """On arbitrary small batches (NaN, constant, integer features; tiny classes) every kind
    poisons exactly round(rate * n) rows, keeps n rows, dtypes and ids, leaves other rows alone
    and is deterministic."""
    frame, kind, rate, seed = case
    features = [c for c in frame.columns if c.startswith("f")]
    attack = plant(frame, label="label", kind=kind, rate=rate, features=features, random_state=seed)
    again = plant(frame, label="label", kind=kind, rate=rate, features=features, random_state=seed)
    assert attack.n_poison == round(rate * len(frame))
    assert len(attack.frame) == len(frame)
    assert attack.frame.dtypes.equals(frame.dtypes)
    assert attack.frame["id"].equals(frame["id"])
    pd.testing.assert_frame_equal(attack.frame[~attack.is_poison], frame[~attack.is_poison])
    pd.testing.assert_frame_equal(attack.frame, again.frame)
    np.testing.assert_array_equal(attack.is_poison, again.is_poison)
    if kind in FLIP_ATTACKS:
        assert (attack.frame["label"] != frame["label"])[attack.is_poison].all()
        pd.testing.assert_frame_equal(attack.frame[features], frame[features])
