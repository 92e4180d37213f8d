"""Config files: defaults, resolved paths, and errors that name the key and the file."""

from __future__ import annotations

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
