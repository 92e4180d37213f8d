"""Config files: defaults, resolved paths, and errors that name the key and the file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from poisonguard.config import load_config, render_config
from poisonguard.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "suite.json").write_text('{"name": "s", "expectations": []}')
    path = tmp_path / "pg.toml"
    path.write_text(text)
    return path


BASE = '[dataset]\nlabel = "y"\nexpectations = "suite.json"\n'


def test_a_minimal_config_gets_defaults_and_paths_relative_to_the_file(tmp_path):
    cfg = load_config(_write(tmp_path, BASE))
    assert cfg.label == "y" and cfg.id_column is None and cfg.features == ()
    assert cfg.landing == (tmp_path / "landing").resolve()
    assert cfg.store == (tmp_path / "store").resolve()
    assert cfg.detection.fdr == 0.05 and cfg.cron is None


def test_rendered_config_loads_back(tmp_path):
    (tmp_path / "expectations").mkdir()
    (tmp_path / "expectations" / "d.json").write_text('{"name": "d", "expectations": []}')
    path = tmp_path / "poisonguard.toml"
    path.write_text(
        render_config(name="d", label="y", id_column="id", expectations="expectations/d.json")
    )
    cfg = load_config(path)
    assert (cfg.name, cfg.label, cfg.id_column, cfg.cron) == ("d", "y", "id", "*/15 * * * *")


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (
            "[detection]\nfdr = 1.5\n",
            r"pg\.toml: detection\.fdr must be in \(0, 1\)\. Got 1\.5 instead\.",
        ),
        ('[detection]\nfdr = "low"\n', r"pg\.toml: detection\.fdr must be of type float or int"),
        ("[detection]\nfolds = true\n", r"detection\.folds must be of type int"),
        (
            "[detection]\nexcess_level = 1\n",
            r"pg\.toml: detection\.excess_level must be in \[0, 1\)\. Got 1\.0 instead\.",
        ),
        (
            "[detection]\nrow_level = -0.1\n",
            r"pg\.toml: detection\.row_level must be in \[0, 1\)\. Got -0\.1 instead\.",
        ),
        ("[detection]\nthreshold = 3\n", r"pg\.toml: unknown key detection\.threshold"),
        ("[detektion]\n", r"pg\.toml: unknown section \[detektion\]"),
        ('[schedule]\ncron = "every day"\n', r"schedule\.cron must have five fields"),
        (
            '[detection]\ndetectors = ["nope"]\n',
            r"detection\.detectors names unknown detector 'nope'",
        ),
    ],
)
def test_bad_values_fail_at_load_naming_the_key_and_the_file(tmp_path, extra, match):
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, BASE + extra))


def test_a_missing_expectations_file_is_named(tmp_path):
    path = tmp_path / "pg.toml"
    path.write_text('[dataset]\nexpectations = "missing.json"\n')
    with pytest.raises(
        ConfigError, match=r"dataset\.expectations points to .*missing\.json, which does not exist"
    ):
        load_config(path)


def test_a_missing_or_broken_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.toml: config file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[dataset\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_config(bad)


def test_reserved_column_prefix_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="reserved prefix 'pg_'"):
        load_config(
            _write(tmp_path, '[dataset]\nlabel = "pg_label"\nexpectations = "suite.json"\n')
        )


COLUMNS = ["row_id", *(f"px{i:02d}" for i in range(10)), "digit"]


def _with_suite(tmp_path: Path, dataset: str, expectations: list[dict]) -> Path:
    (tmp_path / "expectations").mkdir(exist_ok=True)
    suite = {"name": "digits", "expectations": expectations}
    (tmp_path / "expectations" / "digits.json").write_text(json.dumps(suite))
    path = tmp_path / "poisonguard.toml"
    path.write_text(f'[dataset]\nexpectations = "expectations/digits.json"\n{dataset}')
    return path


COLUMN_SET = {
    "type": "expect_table_columns_to_match_set",
    "kwargs": {"column_set": COLUMNS, "exact_match": True},
}
ORDERED = {"type": "expect_table_columns_to_match_ordered_list", "kwargs": {"column_list": COLUMNS}}
SHOWN = re.escape(
    "its columns: row_id, px00, px01, px02, px03, px04, px05, px06, px07, px08, ... (12 in all)"
)


@pytest.mark.parametrize("rule", [COLUMN_SET, ORDERED])
@pytest.mark.parametrize(
    ("dataset", "match"),
    [
        ('label = "nolabel"\n', r"dataset\.label 'nolabel' is not a column"),
        ('label = "digit"\nid = "noid"\n', r"dataset\.id 'noid' is not a column"),
        (
            'label = "digit"\nfeatures = ["px00", "px99"]\n',
            r"dataset\.features entry 'px99' is not a column",
        ),
    ],
)
def test_dataset_columns_the_suite_lacks_fail_at_load(tmp_path, rule, dataset, match):
    """label, id and features must be columns of a suite that fixes its columns; the message
    names the file, the key, the suite as written and (some of) its columns."""
    path = _with_suite(tmp_path, dataset, [rule])
    with pytest.raises(
        ConfigError,
        match=rf"^{re.escape(str(path))}: {match} of the suite expectations/digits\.json; "
        rf"{SHOWN}$",
    ):
        load_config(path)


def test_dataset_columns_are_not_checked_when_the_suite_does_not_fix_them(tmp_path):
    """A suite without an exact column set (none, or exact_match false) skips the check."""
    loose = {"type": "expect_table_columns_to_match_set", "kwargs": {"column_set": COLUMNS}}
    loose["kwargs"]["exact_match"] = False
    between = {"type": "expect_column_values_to_be_between", "kwargs": {"column": "px00"}}
    for expectations in ([], [between], [loose]):
        path = _with_suite(tmp_path, 'label = "extra"\nfeatures = ["other"]\n', expectations)
        assert load_config(path).label == "extra"
    path = _with_suite(tmp_path, 'label = "digit"\nid = "row_id"\n', [COLUMN_SET])
    assert (load_config(path).label, load_config(path).id_column) == ("digit", "row_id")


@pytest.mark.parametrize(("key", "column"), [("label", "digit"), ("id", "row_id")])
def test_features_may_not_name_the_label_or_the_id(tmp_path, key, column):
    dataset = f'label = "digit"\nid = "row_id"\nfeatures = ["px00", "{column}"]\n'
    with pytest.raises(
        ConfigError,
        match=rf"dataset\.features lists '{column}', which is dataset\.{key}; features may not "
        "include the label or the id",
    ):
        load_config(_with_suite(tmp_path, dataset, [COLUMN_SET]))


def test_a_suite_that_is_not_json_fails_at_load(tmp_path):
    (tmp_path / "suite.json").write_text('{"name": "s", "expectations": [')
    path = tmp_path / "pg.toml"
    path.write_text(BASE)
    with pytest.raises(
        ConfigError,
        match=r"pg\.toml: dataset\.expectations points to .*suite\.json, which is not valid JSON",
    ):
        load_config(path)


def test_the_schedule_time_zone_must_be_an_iana_name(tmp_path):
    """A zone name Prefect would not accept fails at load; a real one is kept."""
    cfg = load_config(_write(tmp_path, BASE + '[schedule]\ntimezone = "Europe/Berlin"\n'))
    assert cfg.timezone == "Europe/Berlin"
    assert load_config(_write(tmp_path, BASE)).timezone == "UTC"
    for bad in ("Mars/Olympus", "utc", "", "../etc/passwd"):
        with pytest.raises(
            ConfigError,
            match=r'^.*pg\.toml: schedule\.timezone must be an IANA time zone name such as "UTC" '
            rf'or "Europe/Berlin"\. Got {re.escape(repr(bad))} instead\.$',
        ):
            load_config(_write(tmp_path, BASE + f'[schedule]\ntimezone = "{bad}"\n'))


def test_the_ledger_is_embedded_unless_store_ledger_or_the_environment_names_one(
    tmp_path, monkeypatch
):
    """``[store] ledger`` names a PostgreSQL ledger (schema ``poisonguard_<name>`` unless
    given); POISONGUARD_LEDGER_URL, when set, replaces it."""
    monkeypatch.delenv("POISONGUARD_LEDGER_URL", raising=False)
    assert load_config(_write(tmp_path, BASE)).ledger is None
    text = (
        BASE + 'name = "Digits v2"\n[store]\nledger = "postgresql://pg@db.internal/poisonguard"\n'
    )
    cfg = load_config(_write(tmp_path, text))
    assert cfg.ledger is not None and cfg.ledger.url == "postgresql://pg@db.internal/poisonguard"
    assert cfg.ledger.schema == "poisonguard_digits_v2"
    monkeypatch.setenv("POISONGUARD_LEDGER_URL", "postgres://runner:s3cret@10.0.0.5:6432/pg")
    cfg = load_config(_write(tmp_path, text + 'schema = "team_digits"\n'))
    assert cfg.ledger is not None and cfg.ledger.schema == "team_digits"
    assert cfg.ledger.url == "postgres://runner:s3cret@10.0.0.5:6432/pg"
    assert load_config(_write(tmp_path, BASE)).ledger == cfg.ledger.__class__(
        cfg.ledger.url, "poisonguard_pg"
    )


def test_a_ledger_password_is_never_shown(tmp_path, monkeypatch):
    """Not in the config's repr, not in the URL messages show, not in an error."""
    monkeypatch.delenv("POISONGUARD_LEDGER_URL", raising=False)
    url = "postgresql://runner:s3cret@db/pg?sslmode=require&password=s3cret"
    cfg = load_config(_write(tmp_path, BASE + f'[store]\nledger = "{url}"\n'))
    assert cfg.ledger is not None and "s3cret" not in repr(cfg)
    assert cfg.ledger.shown == "postgresql://runner:***@db/pg?sslmode=require&password=***"
    monkeypatch.setenv("POISONGUARD_LEDGER_URL", "mysql://runner:s3cret@db/pg")
    with pytest.raises(ConfigError) as bad:
        load_config(_write(tmp_path, BASE))
    assert "s3cret" not in str(bad.value) and "runner:***@db" in str(bad.value)


@pytest.mark.parametrize(
    ("store", "match"),
    [
        (
            'ledger = "sqlite:///tmp/x.db"',
            r"pg\.toml: store\.ledger must be a PostgreSQL URL such as "
            r"postgresql://user@host:5432/database\. Got 'sqlite:///tmp/x\.db' instead\.",
        ),
        ('ledger = "postgresql://db:port/pg"', r"store\.ledger must be a PostgreSQL URL"),
        (
            'ledger = "postgresql://db/pg"\nschema = "pg_catalog"',
            r"pg\.toml: store\.schema must be a PostgreSQL schema name .* Got 'pg_catalog'",
        ),
        ('ledger = "postgresql://db/pg"\nschema = "Team-A"', r"store\.schema must be a"),
        ('schema = "team"', r"pg\.toml: store\.schema is set but store\.ledger is not"),
        ("ledger = 5", r"store\.ledger must be of type str"),
        ('url = "postgresql://db/pg"', r"unknown key store\.url"),
    ],
)
def test_a_bad_store_section_is_named_at_load(tmp_path, monkeypatch, store, match):
    monkeypatch.delenv("POISONGUARD_LEDGER_URL", raising=False)
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, BASE + f"[store]\n{store}\n"))


def test_a_bad_ledger_url_in_the_environment_is_named_as_such(tmp_path, monkeypatch):
    monkeypatch.setenv("POISONGUARD_LEDGER_URL", "localhost:5432")
    with pytest.raises(ConfigError, match=r"^the environment variable POISONGUARD_LEDGER_URL must"):
        load_config(_write(tmp_path, BASE))
