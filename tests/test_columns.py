"""Column kinds: what each column is inferred to be, how each kind is encoded, and what
happens when a column is not the kind it was said to be (an error or a failed row, never a
crash and never a silent drop)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from poisonguard.cli import main
from poisonguard.columns import KINDS, MAX_CATEGORIES, infer_kinds, infer_task, kind_of
from poisonguard.config import DetectionSettings, load_config
from poisonguard.detectors import REGISTRY, Encoder
from poisonguard.errors import BatchError, ConfigError
from poisonguard.pipeline import fit_guard, row_hashes
from poisonguard.scan import Guard, scan
from poisonguard.store import open_store
from poisonguard.validation import infer_suite, validate
from test_config import BASE, _write
from test_detectors import MIXED, mixed
from test_validation import rules

N = 600


def codes(n_values: int, n_rows: int = N) -> pd.Series:
    """A string column of ``n_values`` codes, each repeated (n_rows / n_values times)."""
    return pd.Series([f"c{i % n_values:03d}" for i in range(n_rows)], dtype="str")


def novel(table) -> np.ndarray:
    """Each row's count of values no trusted row shows (the ``novel`` term), as it arrived."""
    (f,) = [j for j, t in enumerate(table.terms) if t.kind == "novel"]
    return table.raw[:, f]


# --------------------------------------------------------------------------- inference


@pytest.mark.parametrize(
    "series",
    [
        pd.Series(np.arange(N)),
        pd.Series(np.arange(N) % 200, dtype="uint8"),
        pd.Series(np.linspace(0, 1, N)),
        pd.Series([1.5, np.nan, 2.5] * 10),
        pd.Series([1, None, 3] * 10, dtype="Int64"),
    ],
    ids=["int", "uint8", "float", "float-with-nan", "nullable-int"],
)
def test_ints_and_floats_are_numeric(series):
    assert kind_of(series) == "numeric"


@pytest.mark.parametrize(
    "series",
    [
        pd.Series([True, False] * 10),
        pd.Series([True, False, None] * 10, dtype=object),
        pd.Series([True, False, None] * 10, dtype="boolean"),
    ],
    ids=["bool", "object-true-false", "nullable-boolean"],
)
def test_true_false_columns_are_boolean(series):
    """A bool dtype, and an object column holding only True/False (and gaps), are boolean."""
    assert kind_of(series) == "boolean"


@pytest.mark.parametrize("dtype", ["str", object, "category"])
def test_few_often_repeated_strings_are_categorical(dtype):
    """A handful of values, each on many rows: strings, objects and pandas categories alike."""
    series = pd.Series(np.array(["north", "south", "east"])[np.arange(N) % 3], dtype=dtype)
    assert kind_of(series) == "categorical"


@pytest.mark.parametrize(
    "series",
    [
        pd.Series([f"id-{i:06d}" for i in range(N)], dtype="str"),
        pd.Series([f"person {i}" for i in range(N)], dtype=object),
        pd.Series([f"the {i}th note, written by hand" for i in range(N)], dtype="str"),
        pd.Series([f"person {i}" for i in range(N)], dtype="category"),
        codes(3, 12),
    ],
    ids=["ids", "names", "free-text", "category-of-names", "too-few-rows-per-value"],
)
def test_ids_names_and_free_text_are_text(series):
    """About one row per value is text, whatever the dtype; so are few values seen too
    rarely (3 values on 12 rows) for the sample to have seen them all."""
    assert kind_of(series) == "text"


@pytest.mark.parametrize("tz", [None, "Europe/Berlin"])
def test_datetimes_naive_or_zoned_are_dates(tz):
    when = pd.Series(pd.date_range("2020-01-01", periods=50, freq="D", tz=tz))
    assert kind_of(when) == "date"


def test_ignore_is_never_inferred_only_configured():
    frame = mixed(200, 1)
    inferred = infer_kinds(frame, MIXED)
    assert "ignore" not in inferred.values()
    assert set(inferred.values()) == set(KINDS) - {"ignore"}
    overridden = infer_kinds(frame, MIXED, {"x0": "ignore", "note": "ignore"})
    assert overridden == {**inferred, "x0": "ignore", "note": "ignore"}


def test_the_categorical_limit_is_configurable():
    """60 values on 10 rows each: text at the default limit (50), categorical at 100; and
    5 values are categorical at the default, text at a limit of 4."""
    sixty, five = codes(60), codes(5)
    assert MAX_CATEGORIES == 50
    assert kind_of(sixty) == "text"
    assert kind_of(sixty, max_categories=100) == "categorical"
    assert kind_of(sixty.astype("category"), max_categories=100) == "categorical"
    assert kind_of(five) == "categorical"
    assert kind_of(five, max_categories=4) == "text"
    frame = pd.DataFrame({"sixty": sixty, "five": five})
    assert infer_kinds(frame, ["sixty", "five"], max_categories=100) == {
        "sixty": "categorical",
        "five": "categorical",
    }
    assert infer_kinds(frame, ["sixty", "five"], {"five": "text"}, max_categories=100)["five"] == (
        "text"
    )


def test_the_categorical_limit_reaches_the_encoder_the_guard_and_the_suite():
    frame = pd.DataFrame({"code": codes(60), "x": np.random.default_rng(0).normal(size=N)})
    default = Encoder.fit(frame, ["code", "x"], None)
    wide = Encoder.fit(frame, ["code", "x"], None, max_categories=100)
    assert default.texts_ == ("code",) and default.categories_ == ()
    assert wide.texts_ == () and [c for c, _ in wide.categories_] == ["code"]
    settings = DetectionSettings(detectors=("knn_distance",), calibration_rows=100)
    guard = Guard(label=None, max_categories=100, settings=settings).fit(frame)
    assert guard.encoder_.kinds["code"] == "categorical"
    assert not rules(infer_suite(frame, label=None), "code", "expect_column_values_to_be_in_set")
    (rule,) = rules(
        infer_suite(frame, label=None, max_categories=100),
        "code",
        "expect_column_values_to_be_in_set",
    )
    assert len(rule["kwargs"]["value_set"]) == 60


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_a_categorical_limit_below_one_is_refused_by_guard_and_suite(bad):
    frame = pd.DataFrame({"code": codes(5, 40), "x": np.arange(40.0)})
    with pytest.raises(
        ConfigError, match=r"'max_categories' parameter of Guard must be an int >= 1"
    ):
        Guard(label=None, max_categories=bad).fit(frame)
    with pytest.raises(
        ConfigError, match=r"'max_categories' parameter of infer_suite\(\) must be an int >= 1"
    ):
        infer_suite(frame, label=None, max_categories=bad)


@pytest.mark.parametrize(
    ("values", "task"),
    [
        (np.linspace(0.0, 10.0, 200), "regression"),
        (np.arange(200) % 5, "classification"),
        ((np.arange(200) % 5).astype(float), "classification"),  # ints read with a gap
        (np.arange(200), "regression"),
        (np.array(["cat", "dog"])[np.arange(200) % 2], "classification"),
        (np.arange(200) % 2 == 0, "classification"),
    ],
    ids=["floats", "few-ints", "few-whole-floats", "many-ints", "strings", "booleans"],
)
def test_infer_task(values, task):
    assert infer_task(pd.Series(values)) == task


# ------------------------------------------------------------------ the config's limit


def test_max_categories_is_read_from_the_config_and_defaults_to_50(tmp_path):
    assert load_config(_write(tmp_path, BASE)).max_categories == MAX_CATEGORIES
    assert load_config(_write(tmp_path, BASE + "max_categories = 100\n")).max_categories == 100


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("0", r"pg\.toml: dataset\.max_categories must be an int >= 1\. Got 0 instead\.$"),
        ("-1", r"pg\.toml: dataset\.max_categories must be an int >= 1\. Got -1 instead\.$"),
        ("2.5", r"pg\.toml: dataset\.max_categories must be of type int\. Got 2\.5 instead\."),
        ("true", r"pg\.toml: dataset\.max_categories must be of type int\. Got True instead\."),
        ('"many"', r"pg\.toml: dataset\.max_categories must be of type int"),
    ],
)
def test_a_bad_max_categories_fails_at_load_naming_the_file_and_key(tmp_path, value, match):
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, BASE + f"max_categories = {value}\n"))


def test_the_configs_limit_decides_whether_scan_compares_a_code_column(tmp_path):
    """Through scan(config=...): with max_categories = 100 a 60-value column is categorical, so
    a row with a never-seen code is far from every trusted row; at the default it is text, not
    compared, and that row scores what it scores with an ordinary code."""
    rng = np.random.default_rng(0)
    reference = pd.DataFrame({"code": codes(60, 480), "x": rng.normal(size=480)})
    batch = pd.DataFrame({"code": codes(60, 60), "x": rng.normal(size=60)})
    odd = batch.copy()
    odd.loc[0, "code"] = "never-seen"
    detection = '[detection]\ndetectors = ["knn_distance"]\ncalibration_rows = 100\n'
    (tmp_path / "wide").mkdir()
    (tmp_path / "narrow").mkdir()
    wide = _write(tmp_path / "wide", BASE + "max_categories = 100\n" + detection)
    s = scan(odd, label=None, reference=reference, config=wide).scores["knn_distance"]
    assert s.iloc[0] > s.iloc[1:].max()
    narrow = _write(tmp_path / "narrow", BASE + detection)
    s = scan(odd, label=None, reference=reference, config=narrow).scores["knn_distance"]
    same = scan(batch, label=None, reference=reference, config=narrow).scores["knn_distance"]
    np.testing.assert_array_equal(s, same)


def test_init_writes_max_categories_and_uses_it_for_kinds_and_value_sets(tmp_path, capsys):
    frame = pd.DataFrame(
        {
            "code": codes(60),
            "x": np.random.default_rng(0).normal(size=N),
            "label": np.arange(N) % 2,
        }
    )
    sample = tmp_path / "trusted.csv"
    frame.to_csv(sample, index=False)
    argv = ["init", "--sample", str(sample), "--label", "label", "--dir", str(tmp_path)]
    assert main([*argv, "--max-categories", "100"]) == 0
    config = load_config(tmp_path / "poisonguard.toml")
    assert config.max_categories == 100
    assert "max_categories = 100" in config.path.read_text()
    assert config.columns == {"code": "categorical", "x": "numeric"}
    suite = json.loads(config.expectations.read_text())
    (rule,) = rules(suite, "code", "expect_column_values_to_be_in_set")
    assert len(rule["kwargs"]["value_set"]) == 60
    # Columns init did not pin (edited out here) are inferred with the config's limit too.
    unpinned = replace(config, columns={}).with_detection(detectors=("knn_distance",))
    assert fit_guard(unpinned, open_store(config)).encoder_.kinds["code"] == "categorical"
    assert main([*argv, "--force", "--max-categories", "0"]) == 2
    assert "'max_categories' parameter of infer_suite() must be an int >= 1" in (
        capsys.readouterr().err
    )


# --------------------------------------------------------------------------- encoding


@pytest.fixture(scope="module")
def encoded():
    """``mixed`` rows (every kind but ignore) and the encoder fitted on them."""
    reference = mixed(400, 1)
    return reference, Encoder.fit(reference, MIXED, "label")


def test_a_date_far_outside_the_trusted_span_is_a_far_outlier(encoded):
    reference, encoder = encoded
    batch = mixed(100, 2)
    batch.loc[0, "since"] = pd.Timestamp("2090-06-01")
    det = REGISTRY["knn_distance"]().fit(encoder.transform(reference, "reference"))
    s = det.score(encoder.transform(batch))
    assert s[0] > 5 * s[1:].max()


def test_zoned_dates_are_encoded_as_the_same_instants(encoded):
    """A tz-aware column is read in UTC: the same instants, the same days since 1970."""
    reference, encoder = encoded
    zoned = reference.assign(
        since=reference["since"].dt.tz_localize("UTC").dt.tz_convert("Asia/Tokyo")
    )
    assert kind_of(zoned["since"]) == "date"
    np.testing.assert_array_equal(encoder.transform(zoned).raw, encoder.transform(reference).raw)


def test_an_unseen_missing_pattern_and_an_unseen_category_count_as_novel(encoded):
    """A missing x1 (trusted rows never miss one), a plan no trusted row has and an urban that
    is not True/False are one never-seen value each; a missing x2 (trusted rows sometimes miss
    one) is not, it has its own indicator."""
    reference, encoder = encoded
    assert novel(encoder.transform(reference)).max() == 0
    batch = mixed(10, 2).astype({"urban": object})
    batch["x2"] = batch["x2"].fillna(0.0)
    batch.loc[1, "x1"] = np.nan
    batch.loc[2, "plan"] = "enterprise"
    batch.loc[3, ["x1", "plan"]] = [np.nan, "enterprise"]
    batch.loc[4, "x2"] = np.nan
    batch.loc[5, "urban"] = "maybe"
    table = encoder.transform(batch)
    np.testing.assert_array_equal(novel(table), [0, 1, 1, 2, 0, 1, 0, 0, 0, 0])
    (missing_x2,) = [j for j, t in enumerate(table.terms) if t.name == "x2 (missing)"]
    assert table.raw[4, missing_x2] == 1 and table.raw[[0, 6], missing_x2].tolist() == [0, 0]


def test_text_is_not_a_distance_but_is_in_the_rows_content_hash(encoded):
    """README: text is "not compared (an attacker cannot hide copies by renaming them);
    covered by the expectations (lengths) and the rows' content hashes". Copies differing only
    in their note encode alike, so the duplicates detector counts them as one flood; their
    content hashes differ, so the store tells them apart."""
    reference, encoder = encoded
    assert encoder.kinds["note"] == "text" and not any(t.column == "note" for t in encoder.terms)
    batch = mixed(200, 2)
    batch = batch.iloc[[0] * 30 + list(range(30, 200))].reset_index(drop=True)
    batch.loc[:29, "note"] = [f"renamed copy {i}" for i in range(30)]
    table = encoder.transform(batch)
    assert (table.X[:30] == table.X[0]).all()
    s = REGISTRY["duplicates"]().fit(encoder.transform(reference, "reference")).score(table)
    assert s[:30].min() > 10 * max(s[30:].max(), 1.0)
    assert len(set(row_hashes(batch.loc[:29], key=None))) == 30
    assert len(set(row_hashes(batch.loc[:29].drop(columns="note"), key=None))) == 1


def test_an_ignored_column_changes_nothing_in_the_scores(encoded):
    """A wild column marked ``ignore`` leaves every encoded value and score as they are
    without it."""
    reference, encoder = encoded
    rng = np.random.default_rng(5)
    batch = mixed(100, 2)
    wild_ref = reference.assign(wild=rng.normal(size=len(reference)))
    wild_batch = batch.assign(wild=rng.normal(0, 1e6, size=len(batch)))
    ignoring = Encoder.fit(wild_ref, [*MIXED, "wild"], "label", {"wild": "ignore"})
    assert ignoring.features == encoder.features
    plain_ref, plain = encoder.transform(reference, "reference"), encoder.transform(batch)
    ref, table = ignoring.transform(wild_ref, "reference"), ignoring.transform(wild_batch)
    np.testing.assert_array_equal(table.X, plain.X)
    for name in ("knn_distance", "tail"):
        np.testing.assert_array_equal(
            REGISTRY[name]().fit(ref).score(table), REGISTRY[name]().fit(plain_ref).score(plain)
        )


# --------------------------------------------------------------------------- bad kinds


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (
            '[dataset.columns]\nx = "numerc"\n',
            r"pg\.toml: dataset\.columns\.x must be one of numeric, boolean, categorical, date, "
            r"text, ignore\. Got 'numerc' instead\.$",
        ),
        (
            '[dataset.columns]\ny = "numeric"\n',
            r"pg\.toml: dataset\.columns\.y: 'y' is dataset\.label",
        ),
        (
            'id = "row"\n[dataset.columns]\nrow = "text"\n',
            r"pg\.toml: dataset\.columns\.row: 'row' is dataset\.id, not a feature$",
        ),
        (
            'features = ["a"]\n[dataset.columns]\nb = "numeric"\n',
            r"pg\.toml: dataset\.columns\.b: 'b' is not in dataset\.features",
        ),
    ],
    ids=["unknown-kind", "label", "id", "not-a-feature"],
)
def test_a_bad_kind_override_fails_at_load_naming_the_file_and_key(tmp_path, extra, match):
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, BASE + extra))


@pytest.mark.parametrize(
    ("columns", "match"),
    [
        ({"x1": "numerc"}, r"'columns' parameter of scan\(\) must be a mapping of feature columns"),
        ({"label": "numeric"}, r"'columns' parameter of scan\(\) must be keyed by feature columns"),
        ({"nope": "text"}, r"keyed by feature columns \(x0, x1, .*\)\. Got 'nope' instead\.$"),
    ],
    ids=["unknown-kind", "label", "not-a-column"],
)
def test_a_bad_kind_override_in_python_is_refused_not_dropped(encoded, columns, match):
    """A misspelt kind used to drop its column from every detector without a word, and an
    override of the label or a missing column was ignored; scan() and Guard refuse them."""
    reference, _ = encoded
    with pytest.raises(ConfigError, match=match):
        scan(reference, label="label", reference=reference, columns=columns)
    with pytest.raises(ConfigError, match=r"'columns' parameter of Guard must be"):
        Guard(label="label", columns=columns).fit(reference)


@pytest.mark.filterwarnings("ignore:Could not infer format")
@pytest.mark.parametrize(
    ("kind", "expected"),
    [("numeric", "numbers"), ("date", "dates")],
)
def test_a_kind_the_trusted_values_do_not_fit_is_a_one_line_error_naming_the_column(
    encoded, kind, expected
):
    reference, _ = encoded
    with pytest.raises(BatchError, match=rf"^reference: column 'plan' must hold {expected}") as err:
        Encoder.fit(reference, MIXED, "label", {"plan": kind})
    assert err.value.column == "plan" and "\n" not in str(err.value)


def test_a_numeric_column_arriving_as_strings(encoded):
    """Number strings are read as the numbers they are; words are a one-line BatchError naming
    the column; and the suite rejects the batch whole, saying what type was expected."""
    reference, encoder = encoded
    batch = mixed(20, 2)
    as_text = batch.astype({"x1": str})
    np.testing.assert_array_equal(encoder.transform(as_text).X, encoder.transform(batch).X)
    as_text.loc[3, "x1"] = "n/a"
    with pytest.raises(BatchError, match=r"^batch: column 'x1' must hold numbers, found") as err:
        encoder.transform(as_text)
    assert err.value.column == "x1"
    report = validate(as_text, infer_suite(reference, label="label"), source="b.csv")
    assert report.rejected
    assert "b.csv: column 'x1' has type" in report.schema_errors[0]
    assert "expected a numeric type (int or float)" in report.schema_errors[0]


@pytest.mark.filterwarnings("ignore:Could not infer format")
def test_cells_that_do_not_parse_count_as_missing_when_asked(encoded):
    """With ``errors="coerce"`` (rows that were never judged, such as rejected rows an
    expectation held) a word in a number or date column is a missing cell, not an error."""
    _, encoder = encoded
    batch = mixed(20, 2).astype({"x1": object, "since": object})
    batch.loc[3, "x1"] = "n/a"
    batch.loc[4, "since"] = "last spring"
    table = encoder.transform(batch, errors="coerce")
    numbers = list(encoder.numbers_)
    assert np.isnan(table.raw[[3, 4], [numbers.index("x1"), numbers.index("since")]]).all()
    assert np.isfinite(np.delete(table.raw[:, numbers.index("x1")], 3)).all()
    with pytest.raises(ConfigError, match=r"'errors' parameter of Encoder.transform\(\) must"):
        encoder.transform(batch, errors="ignore")


@pytest.fixture(scope="module")
def suite(encoded):
    reference, _ = encoded
    return infer_suite(reference, label="label")


def test_an_unseen_category_fails_its_row_not_the_batch(suite):
    """The suite holds the plan values seen; a batch row with another one is named with the
    column and value (the pipeline then quarantines it: see test_tables.py,
    test_the_penguins_demo_goes_through_the_gate, island = 'Atlantis')."""
    batch = mixed(20, 2)
    batch.loc[4, "plan"] = "enterprise"
    report = validate(batch, suite, source="b.csv")
    assert not report.rejected
    assert (
        "plan = 'enterprise' not in {'basic', 'pro', 'team'} (expect_column_values_to_be_in_set)"
        in report.row_failures[4]
    )
    assert not any("plan" in why for row in report.row_failures.values() for why in row[1:])


def test_a_new_boolean_value_is_a_failed_row_or_a_rejected_batch_never_a_crash(suite):
    """A gap in a boolean column trusted rows always fill fails its row; a value that is not
    True/False at all rejects the batch with one line naming the column and the type."""
    batch = mixed(20, 2).astype({"urban": object})
    batch.loc[6, "urban"] = None
    report = validate(batch, suite, source="b.csv")
    assert not report.rejected
    assert "urban is missing (expect_column_values_to_not_be_null)" in report.row_failures[6]
    batch.loc[7, "urban"] = "maybe"
    report = validate(batch, suite, source="b.csv")
    assert report.schema_errors == (
        "b.csv: column 'urban' has type object, expected a boolean type (bool)",
    )
