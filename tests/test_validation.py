"""Tests for poisonguard.validation: suites inferred, loaded, written, and batches validated.

Everything runs real Great Expectations in an ephemeral context; nothing is mocked.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poisonguard.errors import BatchError, ConfigError
from poisonguard.validation import (
    ChunkedValidation,
    ExpectationOutcome,
    ValidationReport,
    infer_suite,
    load_suite,
    validate,
    write_suite,
)

DATA = Path(__file__).parent / "data"
SOURCE = "batch-07.csv"
N_TRUSTED = 60


def make_trusted() -> pd.DataFrame:
    """Trusted rows: x1 spans exactly [0, 10], x2 (int) exactly [0, 100]."""
    n = N_TRUSTED
    note = pd.Series(np.where(np.arange(n) % 2 == 0, "p", "q"), dtype="str")
    note.iloc[3] = None
    return pd.DataFrame(
        {
            "x1": np.linspace(0.0, 10.0, n),
            "x2": np.linspace(0, 100, n).round().astype("int64"),
            "flag": np.arange(n) % 3 == 0,
            "note": note,
            "label": pd.Series(np.array(["cat", "dog", "fox"])[np.arange(n) % 3], dtype="str"),
            "id": np.arange(1000, 1000 + n, dtype="int64"),
        }
    )


@pytest.fixture(scope="module")
def trusted() -> pd.DataFrame:
    return make_trusted()


@pytest.fixture(scope="module")
def suite(trusted: pd.DataFrame) -> dict:
    return infer_suite(trusted, label="label", id_column="id", margin=0.1)


@pytest.fixture
def batch() -> pd.DataFrame:
    return make_trusted()


def is_guard(expectation: dict) -> bool:
    """A personal-data leak guard (batch-level whatever its type)."""
    return "rejects_batch" in expectation.get("meta", {}).get("poisonguard", {})


def rules(
    suite: dict, column: str | None = None, kind: str | None = None, *, guards: bool = False
) -> list[dict]:
    """The suite's expectations on ``column`` of type ``kind``: the leak guards, or the rest."""
    return [
        e
        for e in suite["expectations"]
        if (column is None or e["kwargs"].get("column") == column)
        and (kind is None or e["type"] == kind)
        and is_guard(e) == guards
    ]


def unguarded(report: ValidationReport, suite: dict) -> list[ExpectationOutcome]:
    """The outcomes of every expectation but the leak guards (outcomes follow suite order)."""
    return [
        o for o, e in zip(report.outcomes, suite["expectations"], strict=True) if not is_guard(e)
    ]


# --------------------------------------------------------------------------- inference


def test_infer_suite_records_the_exact_column_set(trusted: pd.DataFrame, suite: dict) -> None:
    """The inferred suite starts with the exact set of columns of the trusted sample."""
    first = suite["expectations"][0]
    assert first["type"] == "expect_table_columns_to_match_set"
    assert first["kwargs"] == {"column_set": list(trusted.columns), "exact_match": True}


@pytest.mark.parametrize(
    ("column", "kind", "key", "value"),
    [
        ("x1", "expect_column_values_to_be_in_type_list", "type_list", "float64"),
        ("x2", "expect_column_values_to_be_in_type_list", "type_list", "int64"),
        ("id", "expect_column_values_to_be_in_type_list", "type_list", "int64"),
        ("flag", "expect_column_values_to_be_of_type", "type_", "bool"),
        ("note", "expect_column_values_to_be_of_type", "type_", "str"),
        ("label", "expect_column_values_to_be_of_type", "type_", "str"),
    ],
)
def test_infer_suite_gives_each_column_its_type_family(
    suite: dict, column: str, kind: str, key: str, value: str
) -> None:
    """Numeric columns get an int-or-float type list; str and bool columns their own type."""
    (rule,) = [e for e in rules(suite, column) if e["type"].endswith(("_of_type", "_in_type_list"))]
    assert rule["type"] == kind
    assert value in rule["kwargs"][key]


def test_infer_suite_widens_numeric_ranges_by_margin(suite: dict) -> None:
    """Ranges are the observed [min, max] widened by margin x (max - min) on each side."""
    (x1,) = rules(suite, "x1", "expect_column_values_to_be_between")
    (x2,) = rules(suite, "x2", "expect_column_values_to_be_between")
    assert (x1["kwargs"]["min_value"], x1["kwargs"]["max_value"]) == (-1.0, 11.0)
    assert (x2["kwargs"]["min_value"], x2["kwargs"]["max_value"]) == (-10, 110)
    assert isinstance(x2["kwargs"]["min_value"], int)


def test_infer_suite_margin_is_a_parameter(trusted: pd.DataFrame) -> None:
    """A margin of 0.5 widens [0, 10] to [-5, 15]; a margin of 0 keeps the observed range."""
    wide = infer_suite(trusted, label="label", margin=0.5)
    exact = infer_suite(trusted, label="label", margin=0)
    (w,) = rules(wide, "x1", "expect_column_values_to_be_between")
    (e,) = rules(exact, "x1", "expect_column_values_to_be_between")
    assert (w["kwargs"]["min_value"], w["kwargs"]["max_value"]) == (-5.0, 15.0)
    assert (e["kwargs"]["min_value"], e["kwargs"]["max_value"]) == (0.0, 10.0)


def test_infer_suite_widens_a_constant_column() -> None:
    """A constant column is widened by margin x max(|value|, 1), not left a single point."""
    frame = pd.DataFrame({"c": [4.0] * 5})
    (rule,) = rules(
        infer_suite(frame, label=None, margin=0.1), "c", "expect_column_values_to_be_between"
    )
    assert rule["kwargs"]["min_value"] == pytest.approx(3.6)
    assert rule["kwargs"]["max_value"] == pytest.approx(4.4)


def test_infer_suite_records_the_label_set_without_a_range(suite: dict) -> None:
    """The label column gets its set of seen values and no numeric range."""
    (rule,) = rules(suite, "label", "expect_column_values_to_be_in_set")
    assert rule["kwargs"]["value_set"] == ["cat", "dog", "fox"]
    assert not rules(suite, "label", "expect_column_values_to_be_between")


def test_infer_suite_makes_the_id_unique_and_complete_without_a_range(suite: dict) -> None:
    """The id column must be unique and not null; it has no range, because ids grow."""
    kinds = {e["type"] for e in rules(suite, "id")}
    assert "expect_column_values_to_be_unique" in kinds
    assert "expect_column_values_to_not_be_null" in kinds
    assert "expect_column_values_to_be_between" not in kinds


def test_infer_suite_allows_nulls_only_where_the_sample_has_them(suite: dict) -> None:
    """Columns without nulls get a not-null rule; a column with nulls does not."""
    not_null = {
        e["kwargs"]["column"] for e in rules(suite, kind="expect_column_values_to_not_be_null")
    }
    assert not_null == {"x1", "x2", "flag", "label", "id"}


def test_infer_suite_skips_the_type_of_an_all_null_column() -> None:
    """A column with no values in the sample gets neither a type nor a not-null rule."""
    frame = pd.DataFrame({"a": [1.0, 2.0], "empty": [np.nan, np.nan]})
    assert rules(infer_suite(frame, label=None), "empty") == []


def test_infer_suite_output_is_plain_json(suite: dict) -> None:
    """The inferred suite survives a JSON round trip unchanged (no numpy scalars inside)."""
    assert json.loads(json.dumps(suite)) == suite


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"label": "nope"}, "'label' parameter of infer_suite"),
        ({"label": None, "id_column": "nope"}, "'id_column' parameter"),
        ({"label": "label", "id_column": "label"}, "other than the label"),
        ({"label": None, "margin": -0.1}, "'margin' parameter .* Got -0.1"),
        ({"label": None, "margin": float("nan")}, "'margin' parameter"),
        ({"label": None, "name": ""}, "'name' parameter"),
    ],
)
def test_infer_suite_rejects_bad_parameters(
    trusted: pd.DataFrame, kwargs: dict, match: str
) -> None:
    """Bad parameters raise ConfigError in the house template, naming the parameter."""
    with pytest.raises(ConfigError, match=match):
        infer_suite(trusted, **kwargs)


def test_infer_suite_rejects_an_empty_sample() -> None:
    """A suite cannot be inferred from zero rows."""
    with pytest.raises(ConfigError, match="at least one row"):
        infer_suite(pd.DataFrame({"a": pd.Series([], dtype="float64")}), label=None)


def test_infer_suite_rejects_an_id_column_with_duplicates(trusted: pd.DataFrame) -> None:
    """A trusted sample whose id column repeats a value is refused, naming the column."""
    frame = trusted.assign(id=[1] * len(trusted))
    with pytest.raises(ConfigError, match=r"Id column 'id' .* 60 duplicated"):
        infer_suite(frame, label="label", id_column="id")


def test_infer_suite_rejects_a_column_of_mixed_types() -> None:
    """An object column mixing numbers and strings has no type to infer."""
    frame = pd.DataFrame({"m": pd.Series([1, "a", 2.5], dtype="object")})
    with pytest.raises(ConfigError, match="column 'm'"):
        infer_suite(frame, label=None)


def test_inferred_type_rules_also_pass_in_plain_great_expectations(
    trusted: pd.DataFrame, suite: dict
) -> None:
    """The type rules poisonguard writes are ones Great Expectations itself can evaluate."""
    import great_expectations as gx

    type_rules = [
        {"type": e["type"], "kwargs": e["kwargs"]}
        for e in suite["expectations"]
        if e["type"].endswith(("_of_type", "_in_type_list"))
    ]
    context = gx.get_context(mode="ephemeral")
    batch_definition = (
        context.data_sources.add_pandas("plain")
        .add_dataframe_asset("plain")
        .add_batch_definition_whole_dataframe("plain")
    )
    result = batch_definition.get_batch(batch_parameters={"dataframe": trusted}).validate(
        gx.ExpectationSuite(name="types", expectations=type_rules)
    )
    assert len(type_rules) == len(trusted.columns)
    assert result.success


# --------------------------------------------------------------------------- suite files


def test_write_suite_then_load_suite_round_trips(suite: dict, tmp_path: Path) -> None:
    """A written suite is pretty JSON with sorted keys and a newline, and loads back equal."""
    path = tmp_path / "nested" / "suite.json"
    write_suite(suite, path)
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n")
    assert text == json.dumps(suite, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert load_suite(path) == suite
    assert [p.name for p in path.parent.iterdir()] == ["suite.json"]  # no temp file left


def test_write_suite_converts_numpy_scalars(tmp_path: Path) -> None:
    """Numpy numbers in a suite are written as plain JSON numbers."""
    suite = {
        "name": "np",
        "expectations": [
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": "a", "min_value": np.float64(0.5), "max_value": np.int64(3)},
            }
        ],
    }
    write_suite(suite, tmp_path / "s.json")
    kwargs = load_suite(tmp_path / "s.json")["expectations"][0]["kwargs"]
    assert kwargs == {"column": "a", "min_value": 0.5, "max_value": 3}


def test_write_suite_refuses_nan(tmp_path: Path) -> None:
    """NaN is not JSON: writing it raises ConfigError naming the file, and writes nothing."""
    bad = {"name": "x", "expectations": [], "meta": {"v": float("nan")}}
    with pytest.raises(ConfigError, match=r"bad\.json"):
        write_suite(bad, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "does not exist"),
        ('{"name": "x", "expectations": [', "not valid JSON"),
        ('{"name": "x"}', "not an expectation suite"),
        ('["expect_column_values_to_be_unique"]', "not an expectation suite"),
        (
            '{"name": "x", "expectations": [{"type": "expect_column_to_be_purple", "kwargs": {}}]}',
            "expectation #0 has unknown type 'expect_column_to_be_purple'",
        ),
        (
            '{"name": "x", "expectations": [{"type": "expect_column_values_to_be_between",'
            ' "kwargs": {"colum": "a", "min_value": 0}}]}',
            r"expectation #0 \(expect_column_values_to_be_between\) is invalid",
        ),
        ('{"name": "x", "expectations": [{"kwargs": {}}]}', "string 'type'"),
    ],
    ids=[
        "missing",
        "bad-json",
        "no-expectations",
        "a-list",
        "unknown-type",
        "bad-kwargs",
        "no-type",
    ],
)
def test_load_suite_errors_name_the_file(tmp_path: Path, content: str | None, match: str) -> None:
    """Every load_suite failure is a ConfigError whose message names the file and the fault."""
    path = tmp_path / "suite.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=match) as caught:
        load_suite(path)
    assert str(path) in str(caught.value)


def test_load_suite_reads_a_handwritten_suite() -> None:
    """A hand-written GX 1.x suite loads and validates a batch like an inferred one."""
    suite = load_suite(DATA / "handwritten_suite.json")
    frame = pd.DataFrame(
        {
            "sample_id": ["S0001", "S0002", "bad"],
            "sepal_length": [5.1, 9.9, 6.0],
            "species": ["setosa", "virginica", "rose"],
        }
    )
    report = validate(frame, suite, source="iris.csv")
    assert not report.rejected
    assert report.row_failures == {
        1: ("sepal_length = 9.9 outside [4, 8.5] (expect_column_values_to_be_between)",),
        2: (
            "sample_id = 'bad' does not match '^S[0-9]{4}$' (expect_column_values_to_match_regex)",
            "species = 'rose' not in {'setosa', 'versicolor', 'virginica'}"
            " (expect_column_values_to_be_in_set)",
        ),
    }


# --------------------------------------------------------------------------- validation: schema


def test_clean_batch_passes(batch: pd.DataFrame, suite: dict) -> None:
    """The trusted sample passes its own suite: nothing rejected, no rows quarantined."""
    report = validate(batch, suite, source=SOURCE)
    assert isinstance(report, ValidationReport)
    assert not report.rejected
    assert report.schema_errors == ()
    assert report.row_failures == {}
    assert all(o.success and o.error is None for o in report.outcomes)


def test_outcomes_follow_the_suite(batch: pd.DataFrame, suite: dict) -> None:
    """There is one outcome per expectation, in suite order, with its level and kwargs."""
    report = validate(batch, suite, source=SOURCE)
    assert [o.type for o in report.outcomes] == [e["type"] for e in suite["expectations"]]
    assert [o.kwargs for o in report.outcomes] == [e["kwargs"] for e in suite["expectations"]]
    levels = {o.type: o.level for o in unguarded(report, suite)}
    assert levels["expect_table_columns_to_match_set"] == "schema"
    assert levels["expect_column_values_to_be_in_type_list"] == "schema"
    assert levels["expect_column_values_to_be_between"] == "row"
    assert levels["expect_column_values_to_be_unique"] == "row"
    assert all(isinstance(o, ExpectationOutcome) for o in report.outcomes)


def test_missing_column_rejects_the_batch(batch: pd.DataFrame, suite: dict) -> None:
    """A batch with a missing label column is rejected whole, with a reason naming the file and the column."""
    report = validate(batch.drop(columns=["label"]), suite, source=SOURCE)
    assert report.rejected
    assert report.schema_errors == ("batch-07.csv: missing column 'label'",)
    label_rules = [o for o in report.outcomes if o.column == "label"]
    assert label_rules and all(not o.success and "missing" in o.error for o in label_rules)


def test_extra_column_rejects_the_batch(batch: pd.DataFrame, suite: dict) -> None:
    """A batch with a column the suite does not know is rejected, naming that column."""
    report = validate(batch.assign(backdoor=1.0), suite, source=SOURCE)
    assert report.rejected
    assert report.schema_errors == (
        "batch-07.csv: unexpected column 'backdoor', not in the suite's column set",
    )


def test_string_in_a_numeric_column_rejects_the_batch(batch: pd.DataFrame, suite: dict) -> None:
    """A numeric column arriving as strings rejects the batch with the type found and expected."""
    frame = batch.assign(x1=batch["x1"].astype("str"))
    report = validate(frame, suite, source=SOURCE)
    assert report.schema_errors == (
        "batch-07.csv: column 'x1' has type str, expected a numeric type (int or float)",
    )
    x1_range = [o for o in report.outcomes if o.column == "x1" and o.level == "row"]
    assert all(o.error == "not run: column 'x1' has the wrong type" for o in x1_range)


def test_numbers_in_a_string_column_reject_the_batch(batch: pd.DataFrame, suite: dict) -> None:
    """A string column arriving as numbers rejects the batch too."""
    frame = batch.assign(label=np.arange(len(batch)))
    report = validate(frame, suite, source=SOURCE)
    assert report.schema_errors == (
        "batch-07.csv: column 'label' has type int64, expected a string type (str)",
    )


def test_int_column_arriving_as_floats_is_accepted(batch: pd.DataFrame, suite: dict) -> None:
    """An int column read as floats (CSV with one blank cell) keeps its type; the blank row is quarantined."""
    frame = batch.assign(x2=batch["x2"].astype("float64"))
    frame.loc[4, "x2"] = np.nan
    report = validate(frame, suite, source=SOURCE)
    assert not report.rejected
    assert report.row_failures == {4: ("x2 is missing (expect_column_values_to_not_be_null)",)}


def test_all_empty_column_is_not_a_type_error(batch: pd.DataFrame, suite: dict) -> None:
    """A column with no values at all has no observable type; its not-null rule quarantines rows."""
    frame = batch.assign(note=np.nan)  # how CSV reads an all-blank string column
    report = validate(frame, suite, source=SOURCE)
    assert not report.rejected
    assert report.row_failures == {}  # 'note' allows nulls


def test_duplicate_column_names_reject_the_batch(batch: pd.DataFrame, suite: dict) -> None:
    """A batch with two columns of the same name is rejected before anything else runs."""
    frame = pd.concat([batch, batch[["x1"]]], axis=1)
    report = validate(frame, suite, source=SOURCE)
    assert report.schema_errors == ("batch-07.csv: column 'x1' appears 2 times",)
    assert all(o.error == "not run" for o in report.outcomes)


def test_column_needed_by_an_expectation_is_named_when_missing(batch: pd.DataFrame) -> None:
    """Without a column-set rule, a missing column is still reported with the expectation needing it."""
    suite = {
        "name": "t",
        "expectations": [
            {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "serial"}}
        ],
    }
    report = validate(batch, suite, source=SOURCE)
    assert report.schema_errors == (
        "batch-07.csv: missing column 'serial' (needed by expect_column_values_to_be_unique)",
    )


@pytest.mark.parametrize(
    ("frame_columns", "kwargs", "message"),
    [
        (
            {"note": ["a", "b"]},
            {"column": "note", "min_value": 0, "max_value": 1},
            "could not be evaluated: Column values, min_value, and max_value must",
        ),
        (
            {"when": pd.to_datetime(["2024-01-01", "2024-06-01"])},
            {"column": "when", "min_value": "2024-01-01", "max_value": "2024-12-31"},
            "could not be evaluated: Cannot compare Timestamp with datetime.date",
        ),
    ],
    ids=["numeric-bounds-on-strings", "date-only-bounds-on-datetimes"],
)
def test_erroring_expectation_rejects_the_batch(
    frame_columns: dict, kwargs: dict, message: str
) -> None:
    """An expectation GX cannot evaluate (success False, empty result) rejects the batch, naming it and its column."""
    suite = {
        "name": "t",
        "expectations": [{"type": "expect_column_values_to_be_between", "kwargs": kwargs}],
    }
    report = validate(pd.DataFrame(frame_columns), suite, source=SOURCE)
    assert report.rejected
    (error,) = report.schema_errors
    assert error.startswith(
        f"batch-07.csv: expect_column_values_to_be_between on column {kwargs['column']!r} "
    )
    assert message in error
    (outcome,) = report.outcomes
    assert not outcome.success
    assert outcome.error is not None
    assert report.row_failures == {}


@pytest.mark.parametrize(
    ("expectation", "message"),
    [
        (
            {"type": "expect_table_row_count_to_be_between", "kwargs": {"max_value": 10}},
            "batch-07.csv: expect_table_row_count_to_be_between failed: expected max_value=10;"
            " observed 60",
        ),
        (
            {
                "type": "expect_column_mean_to_be_between",
                "kwargs": {"column": "x1", "max_value": 1},
            },
            "batch-07.csv: expect_column_mean_to_be_between on column 'x1' failed:"
            " expected max_value=1; observed 5",
        ),
        (
            {
                "type": "expect_table_columns_to_match_ordered_list",
                "kwargs": {"column_list": ["id", "x1", "x2", "flag", "note", "label"]},
            },
            "batch-07.csv: columns are in order ['x1', 'x2', 'flag', 'note', 'label', 'id'],"
            " expected ['id', 'x1', 'x2', 'flag', 'note', 'label']",
        ),
    ],
    ids=["row-count", "column-mean", "column-order"],
)
def test_failed_table_and_aggregate_expectations_reject_the_batch(
    batch: pd.DataFrame, expectation: dict, message: str
) -> None:
    """Table-level and aggregate expectations are schema level: breaking one rejects the batch."""
    report = validate(batch, {"name": "t", "expectations": [expectation]}, source=SOURCE)
    assert report.schema_errors == (message,)
    assert report.outcomes[0].level == "schema"


def test_raise_if_rejected_raises_batch_error(batch: pd.DataFrame, suite: dict) -> None:
    """A rejected report raises BatchError carrying the source and every reason once."""
    report = validate(batch.drop(columns=["label"]), suite, source=SOURCE)
    with pytest.raises(BatchError, match=r"^batch-07\.csv: missing column 'label'$") as caught:
        report.raise_if_rejected(rows=len(batch))
    assert caught.value.source == SOURCE
    assert caught.value.rows == len(batch)
    validate(batch, suite, source=SOURCE).raise_if_rejected()  # clean: no error


# --------------------------------------------------------------------------- validation: rows


def test_bad_rows_are_quarantined_by_position_with_reasons(
    batch: pd.DataFrame, suite: dict
) -> None:
    """Out-of-range, missing, unknown-label and duplicate-id rows are named by position, with readable reasons."""
    batch.loc[5, "x1"] = 912.4
    batch.loc[6, "label"] = "wolf"
    batch.loc[7, "x1"] = np.nan
    batch.loc[9, "id"] = batch.loc[8, "id"]
    report = validate(batch, suite, source=SOURCE)
    assert not report.rejected
    assert report.row_failures == {
        5: ("x1 = 912.4 outside [-1, 11] (expect_column_values_to_be_between)",),
        6: ("label = 'wolf' not in {'cat', 'dog', 'fox'} (expect_column_values_to_be_in_set)",),
        7: ("x1 is missing (expect_column_values_to_not_be_null)",),
        8: ("id = 1008 is duplicated in the batch (expect_column_values_to_be_unique)",),
        9: ("id = 1008 is duplicated in the batch (expect_column_values_to_be_unique)",),
    }
    counts = {(o.type, o.column): o.unexpected_count for o in unguarded(report, suite)}
    assert counts[("expect_column_values_to_be_between", "x1")] == 1
    assert counts[("expect_column_values_to_be_unique", "id")] == 2


def people(n: int, seed: int) -> pd.DataFrame:
    """Rows with a categorical ``sex`` (pandas category), a str ``city`` and unique names."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.integers(18, 90, n),
            "sex": pd.Series(rng.choice(["F", "M"], n), dtype="category"),
            "city": pd.Series(rng.choice(["Kyiv", "Oslo", "Rome"], n), dtype="str"),
            "name": pd.Series([f"person {seed}-{i}" for i in range(n)], dtype="str"),
            "label": rng.integers(0, 2, n),
        }
    )


def test_categorical_string_columns_get_a_value_set_names_do_not() -> None:
    """init infers the set of values of string columns that look categorical (category dtype
    too), and none for a column of names (one row per value) or one with too few rows per value;
    a batch row with an unseen value is quarantined with a reason naming column and value."""
    suite = infer_suite(people(200, 0), label="label")
    sets = {
        e["kwargs"]["column"]: e["kwargs"]["value_set"]
        for e in rules(suite, kind="expect_column_values_to_be_in_set")
    }
    assert sets == {"sex": ["F", "M"], "city": ["Kyiv", "Oslo", "Rome"], "label": [0, 1]}

    batch = people(20, 1)
    batch["sex"] = batch["sex"].cat.add_categories(["unknown"])
    batch.loc[4, "sex"] = "unknown"
    batch.loc[9, "city"] = "oslo"
    report = validate(batch, suite, source=SOURCE)
    assert not report.rejected
    assert report.row_failures == {
        4: ("sex = 'unknown' not in {'F', 'M'} (expect_column_values_to_be_in_set)",),
        9: ("city = 'oslo' not in {'Kyiv', 'Oslo', 'Rome'} (expect_column_values_to_be_in_set)",),
    }

    # 3 values on 12 rows: 4 rows per value, too few to trust the sample saw every city.
    few = infer_suite(people(12, 0), label="label")
    with_set = {e["kwargs"]["column"] for e in rules(few, kind="expect_column_values_to_be_in_set")}
    assert with_set == {"sex", "label"}


def test_a_string_column_with_more_than_50_values_gets_no_value_set() -> None:
    """Even when every value repeats, more than 50 distinct values (codes) get no set."""
    codes = pd.Series([f"c{i % 51:02d}" for i in range(51 * 10)], dtype="str")
    suite = infer_suite(pd.DataFrame({"code": codes, "x": np.arange(len(codes))}), label=None)
    assert not rules(suite, "code", "expect_column_values_to_be_in_set")
    fifty = pd.DataFrame({"code": codes[codes != "c50"], "x": 0})
    assert rules(infer_suite(fifty, label=None), "code", "expect_column_values_to_be_in_set")


def test_a_row_breaking_several_rules_lists_each_in_suite_order(
    batch: pd.DataFrame, suite: dict
) -> None:
    """One row that breaks two rules carries both reasons, in the order of the suite."""
    batch.loc[2, "x1"] = -50.0
    batch.loc[2, "x2"] = 1000
    report = validate(batch, suite, source=SOURCE)
    assert report.row_failures == {
        2: (
            "x1 = -50 outside [-1, 11] (expect_column_values_to_be_between)",
            "x2 = 1000 outside [-10, 110] (expect_column_values_to_be_between)",
        )
    }


def test_positions_ignore_the_frame_index(batch: pd.DataFrame, suite: dict) -> None:
    """Row keys are positions 0..n-1 even when the frame's index is not a RangeIndex."""
    batch.loc[10, "x2"] = 999
    batch.index = [f"r{i}" for i in range(len(batch))][::-1]
    report = validate(batch, suite, source=SOURCE)
    assert list(report.row_failures) == [10]


def test_rows_tolerated_by_mostly_are_not_quarantined(batch: pd.DataFrame) -> None:
    """A row-level rule with `mostly` that holds overall quarantines nothing."""
    suite = {
        "name": "t",
        "expectations": [
            {
                "type": "expect_column_values_to_not_be_null",
                "kwargs": {"column": "note", "mostly": 0.9},
            }
        ],
    }
    report = validate(batch, suite, source=SOURCE)
    assert report.row_failures == {}
    assert report.outcomes[0].success
    assert report.outcomes[0].unexpected_count == 1


def test_empty_batch_with_the_right_columns_passes(batch: pd.DataFrame, suite: dict) -> None:
    """A batch with the right columns and no rows is neither rejected nor has failing rows."""
    report = validate(batch.iloc[:0], suite, source=SOURCE)
    assert not report.rejected
    assert report.row_failures == {}


def test_callers_frame_is_untouched(batch: pd.DataFrame, suite: dict) -> None:
    """Validation adds, removes and reorders nothing in the caller's frame, nor its index."""
    batch.loc[5, "x1"] = 912.4
    batch.index = pd.Index(range(100, 100 + len(batch)), name="row")
    before = batch.copy(deep=True)
    validate(batch, suite, source=SOURCE)
    pd.testing.assert_frame_equal(batch, before)


def test_validation_writes_nothing_to_the_terminal(
    batch: pd.DataFrame, suite: dict, capfd: pytest.CaptureFixture[str]
) -> None:
    """No progress bars or prints: the library is silent on stdout and stderr."""
    validate(batch, suite, source=SOURCE)  # first call may import GX
    capfd.readouterr()
    validate(batch, suite, source=SOURCE)
    assert capfd.readouterr() == ("", "")


@pytest.mark.parametrize(
    ("frame", "suite", "match"),
    [
        ("not a frame", {"expectations": []}, "'frame' parameter of validate"),
        (pd.DataFrame(), {"name": "s"}, "Suite 's' is not an expectation suite"),
        (
            pd.DataFrame(),
            {"name": "s", "expectations": [{"type": "expect_nothing", "kwargs": {}}]},
            "Suite 's': expectation #0 has unknown type 'expect_nothing'",
        ),
    ],
    ids=["frame", "no-expectations", "unknown-type"],
)
def test_validate_rejects_bad_arguments(frame: object, suite: dict, match: str) -> None:
    """A bad frame or a malformed suite is a ConfigError, not a rejected batch."""
    with pytest.raises(ConfigError, match=re.escape(match)):
        validate(frame, suite, source=SOURCE)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- properties

_finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_subnormal=False)


@st.composite
def trusted_frames(draw: st.DrawFn) -> pd.DataFrame:
    n = draw(st.integers(min_value=1, max_value=20))
    return pd.DataFrame(
        {
            "f": draw(st.lists(_finite, min_size=n, max_size=n)),
            "i": draw(st.lists(st.integers(-(10**12), 10**12), min_size=n, max_size=n)),
            "label": pd.Series(
                draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=n, max_size=n)),
                dtype="str",
            ),
            "id": draw(st.lists(st.integers(0, 10**9), min_size=n, max_size=n, unique=True)),
        }
    )


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=trusted_frames(), margin=st.sampled_from([0.0, 0.1, 1.0]))
def test_any_frame_passes_the_suite_inferred_from_itself(
    frame: pd.DataFrame, margin: float
) -> None:
    """Whatever the trusted sample, it passes the suite inferred from it, at any margin."""
    suite = infer_suite(frame, label="label", id_column="id", margin=margin)
    report = validate(frame, suite, source="self.parquet")
    assert report.schema_errors == ()
    assert report.row_failures == {}


@settings(max_examples=30, deadline=None)
@given(
    values=st.lists(
        st.one_of(st.floats(-3, 4, allow_nan=False), st.just(float("nan"))),
        min_size=1,
        max_size=40,
    )
)
def test_quarantined_rows_are_exactly_the_out_of_range_ones(values: list[float]) -> None:
    """The rows named for a between rule are exactly those outside it; NaN is not out of range."""
    frame = pd.DataFrame({"v": values}, index=np.arange(len(values))[::-1] * 7)
    suite = {
        "name": "t",
        "expectations": [
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": "v", "min_value": 0, "max_value": 1},
            }
        ],
    }
    report = validate(frame, suite, source="prop.csv")
    v = np.asarray(values)
    expected = set(np.flatnonzero((v < 0) | (v > 1)).tolist())
    assert set(report.row_failures) == expected
    assert report.outcomes[0].unexpected_count == len(expected)


def test_the_shipped_digits_suite_is_what_init_infers_from_the_demo_seed(tmp_path: Path) -> None:
    """expectations/digits.json stays in step with the demo: regenerate it if inference changes."""
    from poisonguard.demo import build_demo
    from poisonguard.store import read_batch

    seed, _ = build_demo(tmp_path)
    inferred = infer_suite(read_batch(seed), label="digit", id_column="row_id", name="digits")
    shipped = load_suite(Path(__file__).parents[1] / "expectations" / "digits.json")
    assert inferred == shipped


# ----------------------------------------------------------------------------- in chunks

#: Uniqueness of one column, of a compound key, and a range rule a row may break too.
UNIQUE_SUITE = {
    "name": "keys",
    "expectations": [
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "id"}},
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "x", "max_value": 8}},
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "code"}},
        {
            "type": "expect_compound_columns_to_be_unique",
            "kwargs": {"column_list": ["code", "day"]},
        },
    ],
}


def _validate_in_chunks(frame: pd.DataFrame, suite: dict, cuts: list[int]) -> ValidationReport:
    chunked = ChunkedValidation(suite, source=SOURCE)
    bounds = [0, *sorted(set(cuts)), len(frame)]
    for lo, hi in itertools.pairwise(bounds):
        chunked.add(frame.iloc[lo:hi])
    return chunked.report()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_uniqueness_counted_in_chunks_is_uniqueness_on_the_batch(data) -> None:
    """Uniqueness (one column with missing cells skipped; a compound key with rows missing
    every value skipped) decided a chunk at a time names exactly the rows, with the same
    reasons in the same order, and the same counts, that Great Expectations names on the
    batch whole, however the batch is cut; duplicates across chunks included."""
    n = data.draw(st.integers(0, 40), label="rows")
    maybe = lambda values: st.lists(st.one_of(st.none(), values), min_size=n, max_size=n)  # noqa: E731
    ids = data.draw(maybe(st.integers(0, 12)), label="ids")
    codes = data.draw(maybe(st.sampled_from(["a", "b", "c", "d", "e"])), label="codes")
    days = data.draw(maybe(st.integers(0, 3)), label="days")
    frame = pd.DataFrame(
        {
            # An int column with missing cells, as Parquet and CSV readers give it: floats.
            "id": pd.Series([np.nan if v is None else v for v in ids], dtype="float64"),
            "x": np.arange(n, dtype=np.int64) % 10,
            "code": pd.Series(codes, dtype="object"),
            "day": pd.to_datetime(
                pd.Series([None if d is None else f"2026-01-0{d + 1}" for d in days])
            ),
        }
    )
    cuts = data.draw(st.lists(st.integers(0, n), max_size=5), label="cuts")
    whole = validate(frame, UNIQUE_SUITE, source=SOURCE)
    chunked = _validate_in_chunks(frame, UNIQUE_SUITE, cuts)
    assert not whole.rejected and not chunked.rejected
    assert chunked.row_failures == whole.row_failures
    assert [(o.success, o.unexpected_count) for o in chunked.outcomes] == [
        (o.success, o.unexpected_count) for o in whole.outcomes
    ]


def test_uniqueness_in_chunks_keeps_ids_beyond_float_precision_apart() -> None:
    """Two ids that differ only past float64's 53 bits are two ids: neither is held."""
    big = 2**60
    frame = pd.DataFrame({"id": np.array([big, big + 1, 7], dtype=np.int64), "x": 0})
    suite = {
        "name": "ids",
        "expectations": [{"type": "expect_column_values_to_be_unique", "kwargs": {"column": "id"}}],
    }
    assert validate(frame, suite, source=SOURCE).row_failures == {}
    assert _validate_in_chunks(frame, suite, [1]).row_failures == {}
    frame.loc[2, "id"] = big + 1
    expected = validate(frame, suite, source=SOURCE).row_failures
    assert set(expected) == {1, 2}
    assert _validate_in_chunks(frame, suite, [1, 2]).row_failures == expected


def test_what_needs_the_whole_batch_rejects_a_chunked_batch(batch: pd.DataFrame) -> None:
    """`mostly` tolerates a share of the whole batch, and uniqueness under a row condition
    compares rows a chunk cannot select alone: each rejects a batch validated in chunks,
    with a reason naming it, rather than passing it unchecked."""
    unique = "expect_column_values_to_be_unique"
    for kwargs, why in [
        ({"column": "x2", "mostly": 0.9}, "'mostly' tolerates"),
        (
            {"column": "x2", "row_condition": 'note=="p"', "condition_parser": "pandas"},
            "uniqueness under a row condition",
        ),
    ]:
        suite = {"name": "t", "expectations": [{"type": unique, "kwargs": kwargs}]}
        report = _validate_in_chunks(batch, suite, [10])
        assert report.rejected
        assert f"{unique} on column 'x2' cannot be checked" in report.schema_errors[0]
        assert why in report.schema_errors[0]
