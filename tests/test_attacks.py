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

from poisonguard.attacks import (
    ATTACKS,
    CATEGORICAL_ATTACKS,
    CLASSIFICATION_ATTACKS,
    FLIP_ATTACKS,
    KINDS,
    MAX_RATE,
    REGRESSION_ATTACKS,
    TARGET_ATTACKS,
    PlantedAttack,
    clustered_injection,
    least_suspicious_flips,
    near_copies,
    plant,
    ratchet,
    spread_sources,
)
from poisonguard.errors import ConfigError
from poisonguard.scan import Guard

#: Classification kinds that run on numeric-only data.
NUMERIC = tuple(k for k in CLASSIFICATION_ATTACKS if k not in CATEGORICAL_ATTACKS)
NUMERIC_FLIPS = tuple(k for k in FLIP_ATTACKS if k in NUMERIC)
INJECTIONS = tuple(k for k in NUMERIC if k not in FLIP_ATTACKS)
#: Kinds that pick their rows by a model's probabilities alone, whatever the seed.
SEEDLESS = ("confident_flip", "boundary_flip")


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


def test_kinds_are_listed_once_by_task_in_a_fixed_order():
    """KINDS holds every classification and regression kind once; ATTACKS and then
    CLASSIFICATION_ATTACKS lead it, so a kind's position (which benchmarks seed by) never moves."""
    assert len(set(KINDS)) == len(KINDS)
    assert set(KINDS) == set(CLASSIFICATION_ATTACKS) | set(REGRESSION_ATTACKS)
    assert KINDS[: len(CLASSIFICATION_ATTACKS)] == CLASSIFICATION_ATTACKS
    assert CLASSIFICATION_ATTACKS[: len(ATTACKS)] == ATTACKS
    assert set(TARGET_ATTACKS) <= set(REGRESSION_ATTACKS)


@pytest.mark.parametrize("kind", NUMERIC)
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


@pytest.mark.parametrize("kind", NUMERIC)
def test_same_seed_same_poison_and_other_seed_other_poison(wine, kind):
    """An attack is a pure function of its inputs and seed; confident_flip and boundary_flip do
    not even use the seed (they take the rows the model is surest or least sure of)."""
    reference, batch, _ = wine

    def run(seed: int) -> PlantedAttack:
        return plant(
            batch, label="target", kind=kind, rate=0.1, reference=reference, random_state=seed
        )

    first, again, other = run(1), run(1), run(2)
    pd.testing.assert_frame_equal(first.frame, again.frame)
    np.testing.assert_array_equal(first.is_poison, again.is_poison)
    assert first.frame.equals(other.frame) == (kind in SEEDLESS)


@pytest.mark.parametrize("kind", NUMERIC)
def test_zero_rate_returns_an_untouched_copy(wine, kind):
    """rate=0 poisons nothing and leaves the input frame alone."""
    reference, batch, _ = wine
    before = batch.copy()
    attack = plant(batch, label="target", kind=kind, rate=0.0, reference=reference)
    assert not attack.is_poison.any()
    pd.testing.assert_frame_equal(attack.frame, batch.reset_index(drop=True))
    pd.testing.assert_frame_equal(batch, before)


@pytest.mark.parametrize("kind", NUMERIC)
def test_input_frame_is_never_modified(cancer, kind):
    """plant() works on a copy: the caller's batch and reference are unchanged."""
    reference, batch, _ = cancer
    before, ref_before = batch.copy(), reference.copy()
    plant(batch, label="target", kind=kind, rate=0.2, reference=reference, random_state=0)
    pd.testing.assert_frame_equal(batch, before)
    pd.testing.assert_frame_equal(reference, ref_before)


# --- each kind's signature -----------------------------------------------------


@pytest.mark.parametrize("kind", NUMERIC_FLIPS)
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
    for kind in NUMERIC:
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
    kind = draw(st.sampled_from(NUMERIC))
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


# --- mixed tables ----------------------------------------------------------------

CATEGORICAL = ["site", "plan", "member", "colour", "label"]


def _mixed_table(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """A customer table: an id, a date, string / category / boolean columns with missing cells,
    numeric columns with missing cells, a three-class label and a float target.

    ``upgrade`` never comes with plan ``pro`` and ``churn`` never with a member, so some
    combinations of values never occur within a class."""
    rng = np.random.default_rng(seed)
    site = rng.choice(["north", "south", "east", "west"], n, p=[0.4, 0.3, 0.2, 0.1])
    plan = rng.choice(["basic", "plus", "pro"], n, p=[0.5, 0.3, 0.2])
    member = rng.random(n) < 0.4
    colour = rng.choice(np.array(["red", "green", "blue"], dtype=object), n)
    colour[rng.random(n) < 0.1] = None
    score = rng.normal(size=n)
    income = rng.lognormal(10, 0.5, n)
    income[rng.random(n) < 0.05] = np.nan
    label = np.where(score + 0.5 * (site == "west") > 0.3, "stay", "churn").astype(object)
    label[(score > 1.0) & (plan != "pro")] = "upgrade"
    label[member & (label == "churn")] = "stay"
    spend = 100 + 50 * (plan == "pro") + 20 * member + 10 * score + rng.normal(0, 5, n)
    return pd.DataFrame(
        {
            "row_id": [f"c{i}" for i in range(n)],
            "signup": pd.date_range("2024-01-01", periods=n, freq="h"),
            "site": pd.Series(site, dtype="str"),
            "plan": pd.Categorical(plan, categories=["basic", "plus", "pro", "legacy"]),
            "member": member,
            "colour": pd.Series(colour, dtype="str"),
            "age": rng.integers(18, 80, n),
            "income": income,
            "score": score,
            "label": label,
            "spend": spend,
        }
    )


@pytest.fixture(scope="module")
def mixed() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reference (40%) and batch of the mixed table."""
    return _split(_mixed_table())


def _plant_mixed(mixed, kind: str, rate: float = 0.1, seed: int = 0, **kwargs) -> PlantedAttack:
    reference, batch = mixed
    label = "spend" if kind in TARGET_ATTACKS else "label"
    return plant(
        batch, label=label, kind=kind, rate=rate, reference=reference, random_state=seed, **kwargs
    )


def _cells_differ(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Cell by cell: the values differ (two missing cells are equal)."""
    return a.ne(b) & ~(a.isna() & b.isna())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rate", [0.05, 0.3])
def test_every_kind_on_a_mixed_table_keeps_the_invariants(mixed, kind, rate):
    """On a table of strings, categories, booleans, dates and missing cells every kind poisons
    exactly round(rate * n) rows, changes each of them, leaves the rest, the id and the date alone,
    keeps columns and dtypes (categories included), writes only values a column already holds,
    does not touch its inputs and is deterministic."""
    reference, batch = mixed
    before, ref_before = batch.copy(), reference.copy()
    attack = _plant_mixed(mixed, kind, rate, seed=5)
    again = _plant_mixed(mixed, kind, rate, seed=5)
    clean = batch.reset_index(drop=True)
    assert attack.n_poison == round(rate * len(batch))
    assert list(attack.frame.columns) == list(batch.columns)
    assert attack.frame.dtypes.equals(batch.dtypes)
    assert list(attack.frame["plan"].cat.categories) == ["basic", "plus", "pro", "legacy"]
    pd.testing.assert_frame_equal(attack.frame[~attack.is_poison], clean[~attack.is_poison])
    assert attack.frame["row_id"].equals(clean["row_id"])
    assert attack.frame["signup"].equals(clean["signup"])
    assert _cells_differ(attack.frame, clean).any(axis=1)[attack.is_poison].all()
    for col in ["site", "plan", "member", "colour"]:
        known = set(batch[col].dropna()) | set(reference[col].dropna())
        assert set(attack.frame[col].dropna()) <= known
    pd.testing.assert_frame_equal(attack.frame, again.frame)
    np.testing.assert_array_equal(attack.is_poison, again.is_poison)
    pd.testing.assert_frame_equal(batch, before)
    pd.testing.assert_frame_equal(reference, ref_before)


@pytest.mark.parametrize("kind", CATEGORICAL_ATTACKS)
def test_categorical_kinds_need_a_categorical_feature(wine, kind):
    """Populations, categorical triggers and swaps need a categorical column."""
    reference, batch, _ = wine
    frame = batch.assign(spend=batch["alcohol"])
    with pytest.raises(ConfigError, match="categorical column"):
        plant(frame, label="target", kind=kind, rate=0.1, reference=reference.assign(spend=1.0))


@pytest.mark.parametrize("kind", ["backdoor", "far_outlier"])
def test_numeric_geometry_needs_a_numeric_feature(mixed, kind):
    """A numeric trigger or a far numeric outlier needs a numeric feature."""
    with pytest.raises(ConfigError, match="numeric column"):
        _plant_mixed(mixed, kind, features=["site", "plan"])


def test_string_columns_of_distinct_values_are_not_features():
    """An id or free-text column (every value distinct) is carried along, never written, while
    a string column whose values repeat is a feature a flood copies."""
    frame = pd.DataFrame(
        {
            "note": [f"n{i}" for i in range(40)],
            "kind": ["a", "b"] * 20,
            "x": np.arange(40.0),
            "y": [0, 1, 1, 0] * 10,
        }
    )
    attack = plant(frame, label="y", kind="duplicate_flood", rate=0.5, random_state=0)
    assert attack.frame["note"].equals(frame["note"])
    poison = attack.frame[attack.is_poison]
    seeds = attack.frame[~attack.is_poison].set_index("x")["kind"]
    assert (poison["kind"].to_numpy() == seeds.loc[poison["x"]].to_numpy()).all()


def test_far_outliers_on_a_mixed_table_keep_the_replaced_rows_categories(mixed):
    """far_outlier moves the numeric features only: a poison row's categorical cells are those of
    the row it replaced."""
    attack = _plant_mixed(mixed, "far_outlier", 0.2)
    clean = mixed[1].reset_index(drop=True)
    cats = ["site", "plan", "member", "colour"]
    pd.testing.assert_frame_equal(attack.frame[cats], clean[cats])


@pytest.mark.parametrize("kind", ["backdoor", "duplicate_flood"])
def test_copies_on_a_mixed_table_copy_every_categorical_cell(mixed, kind):
    """Copies (backdoor, flood) take all categorical cells, missing ones included, from one batch
    row: each poison row's categorical cells equal some clean row's."""
    attack = _plant_mixed(mixed, kind, 0.2, seed=2)
    clean = mixed[1].reset_index(drop=True)
    cats = ["site", "plan", "member", "colour"]
    sources = set(clean[cats].astype(str).itertuples(index=False, name=None))
    poison = attack.frame.loc[attack.is_poison, cats].astype(str)
    assert set(poison.itertuples(index=False, name=None)) <= sources
    assert (
        attack.frame.loc[attack.is_poison, "colour"].isna().any() == (kind == "backdoor")
        or not clean["colour"].isna().any()
    )


def test_interpolation_on_a_mixed_table_takes_categories_from_trusted_rows(mixed):
    """An interpolated row's categorical cells come from the two reference rows it mixes, so each
    is a value the reference holds."""
    reference, _ = mixed
    attack = _plant_mixed(mixed, "interpolation", 0.2)
    poison = attack.frame[attack.is_poison]
    for col in ["site", "plan", "member"]:
        assert set(poison[col]) <= set(reference[col])


def _margins(reference: pd.DataFrame, frame: pd.DataFrame) -> np.ndarray:
    """Gap between the two most likely classes of a one-hot logistic regression of the reference."""
    features = ["site", "plan", "member", "colour", "age", "income", "score", "spend"]

    def encode(rows: pd.DataFrame) -> pd.DataFrame:
        out = pd.get_dummies(rows[features].astype({"plan": str}), dtype=float)
        return out.fillna(reference["income"].median())

    train = encode(reference)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(train, reference["label"])
    proba = np.sort(model.predict_proba(encode(frame).reindex(columns=train.columns, fill_value=0)))
    return proba[:, -1] - proba[:, -2]


def test_boundary_flip_takes_the_rows_a_model_is_least_sure_of(mixed):
    """boundary_flip changes labels only, to another class, on rows a model of the reference finds
    hard: their margin between the two likeliest classes is far below the batch's."""
    reference, batch = mixed
    attack = _plant_mixed(mixed, "boundary_flip", 0.1)
    clean = batch.reset_index(drop=True)
    features = [c for c in clean.columns if c != "label"]
    pd.testing.assert_frame_equal(attack.frame[features], clean[features])
    assert (attack.frame["label"] != clean["label"])[attack.is_poison].all()
    margin = _margins(reference, clean)
    assert np.median(margin[attack.is_poison]) < 0.5 * np.median(margin[~attack.is_poison])


def _shared_population(rows: pd.DataFrame, columns: list[str]) -> list[tuple[str, ...]]:
    """The columns (one or two) on which every row holds the same value."""
    same = [c for c in columns if rows[c].nunique(dropna=False) == 1 and rows[c].notna().all()]
    return [(c,) for c in same]


def test_subgroup_flip_relabels_one_population_to_one_class(mixed):
    """The flipped rows all hold one value (or pair of values), all go to one class, and cover at
    least half of that population's rows of other classes."""
    _, batch = mixed
    clean = batch.reset_index(drop=True)
    for seed in range(4):
        attack = _plant_mixed(mixed, "subgroup_flip", 0.1, seed=seed)
        poison = clean[attack.is_poison]
        targets = attack.frame.loc[attack.is_poison, "label"].unique()
        assert len(targets) == 1 and (poison["label"] != targets[0]).all()
        shared = [c for c in ["site", "plan", "member", "colour"] if poison[c].nunique() == 1]
        assert shared and poison[shared].notna().all().all()
        in_population = (clean[shared] == poison[shared].iloc[0]).all(axis=1)
        eligible = in_population & (clean["label"] != targets[0])
        assert attack.n_poison >= 0.5 * eligible.sum()


def test_subgroup_flip_takes_the_whole_population_the_budget_fits():
    """When one population has exactly the budget of rows of another class (and the others far
    more), every one of its rows is relabelled and no other row."""
    group = np.array(["a"] * 20 + ["b"] * 90 + ["c"] * 90)
    label = np.concatenate([np.zeros(20, dtype=int), np.tile([0, 1], 90)])
    frame = pd.DataFrame({"group": group, "x": np.arange(200.0), "y": label})
    for seed in range(3):
        attack = plant(frame, label="y", kind="subgroup_flip", rate=0.1, random_state=seed)
        np.testing.assert_array_equal(attack.is_poison, group == "a")
        assert (attack.frame.loc[attack.is_poison, "y"] == 1).all()


def _values_and_pairs(reference: pd.DataFrame, columns: list[str]) -> dict[Any, int]:
    counts: dict[Any, int] = {}
    for i, a in enumerate(columns):
        for b in columns[i + 1 :]:
            joint = reference.groupby([a, b], observed=True).size()
            for (u, v), size in joint.items():
                counts[((a, u), (b, v))] = int(size)
    return counts


@pytest.mark.parametrize("seed", range(3))
def test_categorical_backdoor_stamps_a_pair_of_common_values_rarely_seen_together(mixed, seed):
    """The trigger is two values of two columns, each held by at least 5% of the trusted rows,
    chosen so that as few trusted rows as possible hold both; every poison row carries it and the
    one target class, and is otherwise a copy of a batch row of another class."""
    reference, batch = mixed
    attack = _plant_mixed(mixed, "categorical_backdoor", 0.1, seed=seed)
    trigger, target = dict(attack.trigger), attack.target
    assert len(trigger) == 2
    columns = ["site", "plan", "member", "colour"]
    share = {c: reference[c].value_counts(normalize=True) for c in columns}
    assert all(share[c][v] >= 0.05 for c, v in trigger.items())
    pairs = _values_and_pairs(reference, columns)
    eligible = {
        ((a, u), (b, v)): 0
        for i, a in enumerate(columns)
        for b in columns[i + 1 :]
        for u in share[a].index[share[a] >= 0.05]
        for v in share[b].index[share[b] >= 0.05]
    }
    eligible = {key: pairs.get(key, 0) for key in eligible}
    (a, b) = list(trigger)
    assert eligible[((a, trigger[a]), (b, trigger[b]))] == min(eligible.values())
    poison = attack.frame[attack.is_poison]
    assert (poison["label"] == target).all()
    for col, value in trigger.items():
        assert (poison[col] == value).all()
    clean = batch.reset_index(drop=True)
    assert (clean.loc[attack.is_poison, "label"] != target).all()
    rest = ["age", "income", "score", "spend", *(c for c in columns if c not in trigger)]
    sources = set(clean.loc[clean["label"] != target, rest].astype(str).itertuples(index=False))
    assert set(poison[rest].astype(str).itertuples(index=False)) <= sources


def test_categorical_backdoor_with_one_categorical_column_stamps_its_least_common_common_value():
    """With a single categorical feature the trigger is one value: the least common of those at
    least 5% of the trusted rows hold (a rarer one would fail a value-set check)."""
    rng = np.random.default_rng(0)
    n = 400
    tone = rng.choice(["a", "b", "c", "d"], n, p=[0.6, 0.3, 0.07, 0.03])
    frame = pd.DataFrame({"tone": tone, "x": rng.normal(size=n), "y": rng.integers(0, 2, n)})
    assert (frame["tone"] == "c").mean() >= 0.05 and (frame["tone"] == "d").mean() < 0.05
    for seed in range(4):
        attack = plant(frame, label="y", kind="categorical_backdoor", rate=0.1, random_state=seed)
        assert attack.trigger == {"tone": "c"}
        poison = attack.frame[attack.is_poison]
        assert (poison["tone"] == "c").all() and (poison["y"] == attack.target).all()


def test_stamp_writes_the_trigger_on_every_row_and_nothing_else(mixed):
    """PlantedAttack.stamp gives rows the trigger (to measure attack success on test rows), in the
    columns' own dtypes; attacks without a trigger refuse to stamp."""
    reference, _ = mixed
    for kind in ["categorical_backdoor", "backdoor"]:
        attack = _plant_mixed(mixed, kind, 0.1)
        stamped = attack.stamp(reference)
        assert stamped.dtypes.equals(reference.dtypes)
        for col, value in attack.trigger.items():
            assert (stamped[col] == value).all()
        rest = [c for c in reference.columns if c not in attack.trigger]
        pd.testing.assert_frame_equal(stamped[rest], reference[rest])
    with pytest.raises(ConfigError, match="trigger"):
        _plant_mixed(mixed, "random_flip").stamp(reference)


def _combination_count(reference: pd.DataFrame, row: pd.Series, columns: list[str]) -> int:
    same = reference["label"] == row["label"]
    for col in columns:
        if pd.notna(row[col]):
            same &= reference[col] == row[col]
    return int(same.sum())


def test_category_swap_makes_combinations_the_class_never_shows(mixed):
    """category_swap keeps numbers and labels, changes one or two categorical cells per row, and
    each poison row's categorical values, with its class, match no trusted row (on this table,
    where such combinations exist), while most rows did match one before."""
    reference, batch = mixed
    attack = _plant_mixed(mixed, "category_swap", 0.1)
    clean = batch.reset_index(drop=True)
    kept = ["row_id", "signup", "age", "income", "score", "label", "spend"]
    pd.testing.assert_frame_equal(attack.frame[kept], clean[kept])
    columns = ["site", "plan", "member", "colour"]
    changed = _cells_differ(attack.frame[columns], clean[columns]).sum(axis=1)
    assert changed[attack.is_poison].between(1, 2).all()
    after = [
        _combination_count(reference, r, columns)
        for _, r in attack.frame[attack.is_poison].iterrows()
    ]
    before = [
        _combination_count(reference, r, columns) for _, r in clean[attack.is_poison].iterrows()
    ]
    assert max(after) == 0
    assert np.median(before) > 0


# --- regression ----------------------------------------------------------------------


def test_target_shuffle_permutes_the_poison_rows_targets(mixed):
    """The poison rows' targets are the same multiset as before, each in another row."""
    attack = _plant_mixed(mixed, "target_shuffle", 0.2)
    clean = mixed[1].reset_index(drop=True)
    old = clean.loc[attack.is_poison, "spend"].to_numpy()
    new = attack.frame.loc[attack.is_poison, "spend"].to_numpy()
    np.testing.assert_array_equal(np.sort(old), np.sort(new))
    assert (old != new).all()


def test_target_shuffle_changes_every_row_even_with_tied_targets():
    """With many tied targets the permutation is repaired until every poison row's target changes;
    a single poison row takes another row's target."""
    frame = pd.DataFrame({"g": ["a", "b"] * 20, "t": [1.0] * 30 + [2.0, 3.0] * 5})
    for rate in (0.025, 0.2, 0.5):
        for seed in range(5):
            attack = plant(frame, label="t", kind="target_shuffle", rate=rate, random_state=seed)
            assert attack.n_poison == round(rate * 40)
            assert (attack.frame["t"] != frame["t"])[attack.is_poison].all()
            assert set(attack.frame["t"]) <= {1.0, 2.0, 3.0}


def test_target_scale_multiplies_or_divides_all_poison_targets_by_three(mixed):
    """Every poison target is the old one times 3, or every one divided by 3."""
    clean = mixed[1].reset_index(drop=True)
    factors = set()
    for seed in range(6):
        attack = _plant_mixed(mixed, "target_scale", 0.1, seed=seed)
        ratio = attack.frame.loc[attack.is_poison, "spend"] / clean.loc[attack.is_poison, "spend"]
        assert np.allclose(ratio, ratio.iloc[0]) and (
            np.isclose(ratio.iloc[0], 3) or np.isclose(ratio.iloc[0], 1 / 3)
        )
        factors.add(round(float(ratio.iloc[0]), 3))
    assert factors == {3.0, 0.333}


def test_integer_targets_stay_whole_and_zero_targets_are_not_scaled():
    """An integer target keeps its dtype and whole values; zeros (which scaling cannot change)
    are never picked, and a batch with too few non-zero targets is refused."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"g": rng.choice(["a", "b", "c"], 100), "t": rng.integers(-50, 50, 100)})
    frame.loc[:9, "t"] = 0
    for kind in TARGET_ATTACKS:
        attack = plant(frame, label="t", kind=kind, rate=0.3, random_state=1)
        assert attack.frame["t"].dtype == frame["t"].dtype
        assert (attack.frame["t"] != frame["t"])[attack.is_poison].all()
    scaled = plant(frame, label="t", kind="target_scale", rate=0.5, random_state=0)
    assert (frame.loc[scaled.is_poison, "t"] != 0).all()
    with pytest.raises(ConfigError, match="non-zero"):
        plant(frame.assign(t=0), label="t", kind="target_scale", rate=0.1)


def test_subgroup_shift_moves_one_population_by_three_robust_sds(mixed):
    """Every poison row shares one value (or pair), and all targets move by the same
    3 * 1.4826 * MAD of the trusted targets, up or down."""
    reference, batch = mixed
    clean = batch.reset_index(drop=True)
    target = reference["spend"]
    sd = 1.4826 * (target - target.median()).abs().median()
    for seed in range(4):
        attack = _plant_mixed(mixed, "subgroup_shift", 0.1, seed=seed)
        shift = attack.frame.loc[attack.is_poison, "spend"] - clean.loc[attack.is_poison, "spend"]
        assert np.allclose(shift.abs(), 3 * sd) and np.allclose(shift, shift.iloc[0])
        poison = clean[attack.is_poison]
        assert any(poison[c].nunique() == 1 for c in ["site", "plan", "member", "colour", "label"])


@pytest.mark.parametrize("kind", TARGET_ATTACKS)
def test_target_kinds_need_a_numeric_target(mixed, kind):
    """Shuffling, scaling or shifting a target needs numbers."""
    reference, batch = mixed
    with pytest.raises(ConfigError, match="numeric target"):
        plant(batch, label="label", kind=kind, rate=0.1, reference=reference)


# --- any mixed batch ---------------------------------------------------------------


@st.composite
def mixed_batches(draw: st.DrawFn) -> tuple[pd.DataFrame, str, str, float, int]:
    n = draw(st.integers(4, 50))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    columns: dict[str, object] = {"id": [f"r{i}" for i in range(n)]}
    for j in range(draw(st.integers(0, 2))):
        values = rng.normal(size=n)
        values[rng.random(n) < draw(st.sampled_from([0.0, 0.3]))] = np.nan
        columns[f"num{j}"] = values
    for j in range(draw(st.integers(0, 3))):
        style = draw(st.sampled_from(["str", "category", "bool", "object_nan", "constant"]))
        levels = rng.integers(1, 4)
        values = rng.choice(np.array(["x", "y", "z"][:levels], dtype=object), n)
        if style == "str":
            columns[f"cat{j}"] = pd.Series(values, dtype="str")
        elif style == "category":
            columns[f"cat{j}"] = pd.Categorical(values, categories=["x", "y", "z", "w"])
        elif style == "bool":
            columns[f"cat{j}"] = rng.random(n) < 0.5
        elif style == "object_nan":
            values[rng.random(n) < 0.3] = None
            columns[f"cat{j}"] = values
        else:
            columns[f"cat{j}"] = pd.Series(["k"] * n, dtype="str")
    labels = rng.integers(0, draw(st.integers(2, 3)), n)
    labels[:2] = [0, 1]
    columns["label"] = pd.Series(np.array(["p", "q", "r"])[labels], dtype="str")
    columns["target"] = np.round(rng.normal(size=n), draw(st.sampled_from([0, 3])))
    frame = pd.DataFrame(columns)
    kind = draw(st.sampled_from(KINDS))
    label = draw(
        st.sampled_from(
            ["target"]
            if kind in TARGET_ATTACKS
            else ["label", "target"]
            if kind in REGRESSION_ATTACKS
            else ["label"]
        )
    )
    return frame, kind, label, draw(st.floats(0.0, MAX_RATE)), draw(st.integers(0, 1000))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixed_batches())
def test_any_mixed_batch_any_kind_keeps_the_invariants_or_says_why_not(case):
    """On arbitrary small mixed batches (strings, categories, booleans, missing cells, constant
    columns, tied targets) every kind either refuses with a ConfigError or poisons exactly
    round(rate * n) rows, keeping n rows, dtypes and ids, leaving other rows alone,
    deterministically; every kind but the four numeric injections changes each poison row."""
    frame, kind, label, rate, seed = case
    try:
        attack = plant(frame, label=label, kind=kind, rate=rate, random_state=seed)
    except ConfigError:
        return
    again = plant(frame, label=label, kind=kind, rate=rate, random_state=seed)
    assert attack.n_poison == round(rate * len(frame))
    assert attack.frame.dtypes.equals(frame.dtypes)
    assert attack.frame["id"].equals(frame["id"])
    pd.testing.assert_frame_equal(attack.frame[~attack.is_poison], frame[~attack.is_poison])
    changed = _cells_differ(attack.frame, frame).any(axis=1)[attack.is_poison]
    # Injections may, on a tiny batch, draw a slot that already holds the row they inject.
    assert changed.all() or kind in INJECTIONS
    pd.testing.assert_frame_equal(attack.frame, again.frame)
    np.testing.assert_array_equal(attack.is_poison, again.is_poison)


# --- adaptive attacks -----------------------------------------------------------


@pytest.fixture(scope="module")
def digits_gate() -> tuple[Guard, pd.DataFrame]:
    """scikit-learn's digits: a guard fitted on 500 trusted rows, and the other rows as the
    attacker's pool (with a string id the guard does not score)."""
    from sklearn.datasets import load_digits

    data = load_digits(as_frame=True)
    frame = data.frame.rename(columns={"target": "digit"})
    frame.insert(0, "rid", [f"d{i}" for i in range(len(frame))])
    reference, pool = _split(frame.sample(frac=1.0, random_state=0).iloc[:1250], seed=1)
    guard = Guard(label="digit", id_column="rid").fit(reference.iloc[:500])
    return guard, pool.reset_index(drop=True)


def _ratchet(guard: Guard, pool: pd.DataFrame, **kw: Any) -> list[PlantedAttack]:
    """Four batches of the white-box ratchet, two flips each, against a gate that stays put."""
    return list(ratchet(pool, label="digit", believe=lambda: guard, n_batches=4, per_batch=2, **kw))


def _gate_suspicion(guard: Guard, attack: PlantedAttack) -> np.ndarray:
    """The suspicion the gate itself gives the attack's poison rows, judging the whole batch."""
    _, _, decision = guard.judge(attack.frame)
    return decision.suspicion[attack.is_poison]


def test_least_suspicious_flips_relabel_the_budget_and_nothing_else(digits_gate):
    """round(rate * n) rows get another class the guard knows; every other cell, and every
    other row, is as it was; the same seed gives the same batch."""
    guard, pool = digits_gate
    batch = pool.iloc[:200]
    attack = least_suspicious_flips(batch, label="digit", guard=guard, rate=0.1, random_state=4)
    assert attack.kind == "least_suspicious_flip" and attack.n_poison == 20
    clean = batch.reset_index(drop=True)
    pd.testing.assert_frame_equal(attack.frame.drop(columns="digit"), clean.drop(columns="digit"))
    moved = attack.frame["digit"] != clean["digit"]
    np.testing.assert_array_equal(moved.to_numpy(), attack.is_poison)
    assert set(attack.frame["digit"]) <= set(guard.encoder_.classes_)
    again = least_suspicious_flips(batch, label="digit", guard=guard, rate=0.1, random_state=4)
    pd.testing.assert_frame_equal(attack.frame, again.frame)


def test_source_and_target_fix_the_flip(digits_gate):
    """With source 3 and target 9, every flipped row was a 3 and is now a 9."""
    guard, pool = digits_gate
    batch = pool.iloc[:300]
    attack = least_suspicious_flips(
        batch, label="digit", guard=guard, rate=0.05, source=3, target=9, random_state=0
    )
    assert (batch["digit"].to_numpy()[attack.is_poison] == 3).all()
    assert (attack.frame["digit"][attack.is_poison] == 9).all()


def test_the_ratchet_sends_its_budget_in_every_batch_and_no_row_twice(digits_gate):
    """n_batches batches of batch_rows rows, per_batch of them flipped 3 -> 9, the rest clean
    rows of the pool exactly as they were; no pool row is sent twice; a seed repeats it."""
    guard, pool = digits_gate

    def run(seed: int) -> list[PlantedAttack]:
        return _ratchet(guard, pool, batch_rows=40, source=3, target=9, random_state=seed)

    batches = run(0)
    assert [b.n_poison for b in batches] == [2] * 4
    assert all(len(b.frame) == 40 and b.kind == "ratchet" for b in batches)
    sent = pd.concat([b.frame for b in batches], ignore_index=True)
    assert sent["rid"].is_unique
    original = pool.set_index("rid").loc[sent["rid"]].reset_index()
    poison = np.concatenate([b.is_poison for b in batches])
    pd.testing.assert_frame_equal(
        sent[~poison].reset_index(drop=True), original[~poison].reset_index(drop=True)
    )
    assert (original["digit"][poison] == 3).all() and (sent["digit"][poison] == 9).all()
    for b, again in zip(batches, run(0), strict=True):
        pd.testing.assert_frame_equal(b.frame, again.frame)
    assert not all(b.frame.equals(o.frame) for b, o in zip(batches, run(1), strict=True))


def test_the_ratchet_asks_what_the_gate_is_before_each_batch(digits_gate):
    """The attacker looks at the gate again before every batch, not all at once up front: a
    reference that grew with the previous batch is the one the next flips are chosen against."""
    guard, pool = digits_gate
    asked = []

    def believe() -> Guard:
        asked.append(len(asked))
        return guard

    batches = ratchet(pool, label="digit", believe=believe, n_batches=3, per_batch=1, batch_rows=20)
    assert asked == []
    next(batches)
    assert len(asked) == 1
    next(batches)
    assert len(asked) == 2


def test_white_box_ratchet_flips_are_far_less_suspicious_to_the_gate_than_random_flips(
    digits_gate,
):
    """The gate, judging each whole batch, gives the ratchet's chosen flips at most half the
    suspicion (-log10 combined p) it gives random flips of the same batches, and holds fewer."""
    guard, pool = digits_gate
    chosen = _ratchet(guard, pool, batch_rows=50, random_state=0)
    random = [
        plant(
            pool.iloc[200 + 50 * i : 250 + 50 * i],
            label="digit",
            kind="random_flip",
            rate=2 / 50,
            features=list(guard.features_),
            random_state=i,
        )
        for i in range(4)
    ]
    ours = np.concatenate([_gate_suspicion(guard, b) for b in chosen])
    theirs = np.concatenate([_gate_suspicion(guard, b) for b in random])
    assert ours.mean() <= theirs.mean() / 2
    held = [int(guard.scan(b.frame).quarantined[b.is_poison].sum()) for b in (*chosen, *random)]
    assert sum(held[:4]) <= sum(held[4:])


def test_near_copies_move_one_number_by_the_least_it_can_move():
    """Each re-sent row differs from the rejected one in exactly one feature cell: by one unit
    in the last place in a float column where the row has one filled, else by 1 in an integer
    one; ids are the new ones; every row is poison; a seed repeats it."""
    rng = np.random.default_rng(0)
    rows = pd.DataFrame(
        {
            "rid": [f"r{i}" for i in range(40)],
            "f1": rng.normal(size=40),
            "f2": rng.normal(size=40) * 1e6,
            "whole": rng.integers(0, 20, 40),
            "y": rng.choice(["a", "b"], 40),
        }
    )
    rows.loc[:5, ["f1", "f2"]] = np.nan  # these rows have only the integer column filled
    ids = [f"new{i}" for i in range(40)]
    attack = near_copies(rows, label="y", id_column="rid", ids=ids, random_state=0)
    assert attack.kind == "near_copy" and attack.is_poison.all()
    assert attack.frame["rid"].tolist() == ids
    features = ["f1", "f2", "whole"]
    before, after = rows[features], attack.frame[features]
    differs = (before != after) & ~(before.isna() & after.isna())
    assert (differs.sum(axis=1) == 1).all()
    for i, column in zip(*np.nonzero(differs.to_numpy()), strict=True):
        old, new = before.iat[i, column], after.iat[i, column]
        if i < 6:
            assert features[column] == "whole" and new == old + 1
        else:
            assert features[column] != "whole" and new == np.nextafter(old, np.inf)
    assert {features[c] for c in np.nonzero(differs.to_numpy()[6:])[1]} == {"f1", "f2"}
    assert attack.frame.dtypes.equals(rows.dtypes)
    pd.testing.assert_frame_equal(attack.frame[["y"]], rows[["y"]])
    again = near_copies(rows, label="y", id_column="rid", ids=ids, random_state=0)
    pd.testing.assert_frame_equal(attack.frame, again.frame)


def test_spread_sources_split_the_batches_evenly():
    """16 batches over 8 sources: each source sends two, in an order the seed sets."""
    names = spread_sources(16, 8, prefix="partner", random_state=3)
    assert sorted(set(names)) == [f"partner-{i}" for i in range(8)]
    assert all(names.count(n) == 2 for n in set(names))
    assert names == spread_sources(16, 8, prefix="partner", random_state=3)
    assert spread_sources(5, 2).count("source-0") in (2, 3)


def test_a_clustered_injection_is_tight_and_passes_the_expectations():
    """The injected rows carry one class other than their centre's, sit within a fraction of
    a standard deviation of each other, share the centre's categories, and break none of the
    expectations a suite inferred from the trusted rows sets (ranges, value sets, types)."""
    from poisonguard.validation import infer_suite, validate, value_ranges

    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "b": rng.integers(0, 20, n),
            "colour": pd.Series(rng.choice(["red", "blue"], n), dtype="str"),
            "y": rng.choice(["p", "q", "r"], n),
        }
    )
    trusted, batch = frame.iloc[:300], frame.iloc[300:].reset_index(drop=True)
    suite = infer_suite(trusted, label="y", name="t")
    attack = clustered_injection(
        batch,
        label="y",
        rate=0.2,
        ranges=value_ranges(suite),
        reference=trusted,
        random_state=2,
    )
    poison = attack.frame[attack.is_poison]
    assert attack.n_poison == 20 and attack.kind == "clustered_injection"
    assert poison["y"].nunique() == 1 and poison["y"].iloc[0] == attack.target
    assert poison["colour"].nunique() == 1
    assert poison["a"].std() < 0.5 * trusted["a"].std()
    report = validate(attack.frame, suite, source="t")
    assert not report.rejected and report.row_failures == {}
    pd.testing.assert_frame_equal(attack.frame[~attack.is_poison], batch[~attack.is_poison])
    again = clustered_injection(
        batch, label="y", rate=0.2, ranges=value_ranges(suite), reference=trusted, random_state=2
    )
    pd.testing.assert_frame_equal(attack.frame, again.frame)


def test_value_ranges_reads_the_narrowest_numeric_range_of_each_column():
    suite = {
        "expectations": [
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": "a", "min_value": 0, "max_value": 10},
            },
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": "a", "min_value": 2},
            },
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": "d", "min_value": "2020-01-01"},
            },
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "a"}},
        ]
    }
    from poisonguard.validation import value_ranges

    assert value_ranges(suite) == {"a": (2.0, 10.0)}


def test_adaptive_attacks_refuse_what_they_cannot_do(digits_gate):
    """A guard fitted on no class label, a pool too small for its batches, a budget over half
    a batch and an unknown target class are refused with a ConfigError naming the parameter."""
    guard, pool = digits_gate
    blind = Guard(label=None).fit(pool.drop(columns="digit").iloc[:100])
    with pytest.raises(ConfigError, match="guard"):
        least_suspicious_flips(pool.iloc[:50], label="digit", guard=blind, rate=0.1)
    with pytest.raises(ConfigError, match="pool"):
        ratchet(pool.iloc[:50], label="digit", believe=lambda: guard, n_batches=2, batch_rows=30)
    with pytest.raises(ConfigError, match="per_batch"):
        ratchet(pool, label="digit", believe=lambda: guard, per_batch=30, batch_rows=50)
    with pytest.raises(ConfigError, match="target"):
        least_suspicious_flips(pool.iloc[:50], label="digit", guard=guard, rate=0.1, target=11)
