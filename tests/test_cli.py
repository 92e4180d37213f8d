"""The command line: init, run, status, scan, and one-line errors with exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from poisonguard.cli import main
from poisonguard.config import load_config
from poisonguard.demo import LABEL


def test_init_writes_config_suite_landing_and_seeds_the_store(demo_inputs, tmp_path, capsys):
    code = main(
        [
            "init",
            "--sample",
            str(demo_inputs / "trusted.parquet"),
            "--label",
            LABEL,
            "--id",
            "row_id",
            "--name",
            "digits",
            "--dir",
            str(tmp_path),
        ]
    )
    assert code == 0
    assert (tmp_path / "poisonguard.toml").is_file()
    suite = json.loads((tmp_path / "expectations" / "digits.json").read_text())
    assert len(suite["expectations"]) > 64
    assert (tmp_path / "landing").is_dir()
    capsys.readouterr()
    assert main(["status", "--json", "--config", str(tmp_path / "poisonguard.toml")]) == 0
    doc = json.loads(capsys.readouterr().out)
    (seed,) = doc["batches"]
    assert seed["status"] == "seed" and seed["rows_clean"] == len(
        pd.read_parquet(demo_inputs / "trusted.parquet")
    )


def test_init_refuses_to_overwrite_without_force(demo_project, capsys):
    code = main(
        [
            "init",
            "--sample",
            str(demo_project / "trusted.parquet"),
            "--label",
            LABEL,
            "--dir",
            str(demo_project),
        ]
    )
    assert code == 2
    assert "already exists; pass --force" in capsys.readouterr().err


def test_status_json_after_a_run_accounts_for_every_landed_row(demo_project, capsys):
    cfg = str(demo_project / "poisonguard.toml")
    assert (
        main(["run", "--local", "--config", cfg]) == 1
    )  # the demo lands one batch of the wrong schema: rejected, so exit 1
    capsys.readouterr()
    assert main(["status", "--json", "--config", cfg]) == 0
    doc = json.loads(capsys.readouterr().out)
    landed = [b for b in doc["batches"] if b["status"] != "seed"]
    assert len(landed) == 5
    for b in landed:
        assert set(b) >= {
            "batch_id",
            "file",
            "sha256",
            "status",
            "rows_in",
            "rows_clean",
            "rows_quarantined",
            "rows_rejected",
        }
        assert b["rows_in"] == b["rows_clean"] + b["rows_quarantined"] + b["rows_rejected"]
    t = doc["totals"]
    assert t["rows_in"] == sum(
        len(pd.read_parquet(p)) if p.suffix == ".parquet" else len(pd.read_csv(p))
        for p in (demo_project / "landing").glob("*/*")
    )
    assert t["rows_in"] == t["rows_clean"] + t["rows_quarantined"] + t["rows_rejected"]


def test_scan_writes_clean_and_quarantine_files(demo_inputs, tmp_path, capsys):
    batch = demo_inputs / "landing" / "labelling" / "batch-01-label-flips.parquet"
    code = main(
        [
            "scan",
            str(batch),
            "--label",
            LABEL,
            "--reference",
            str(demo_inputs / "trusted.parquet"),
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    clean = pd.read_parquet(tmp_path / "clean.parquet")
    held = pd.read_parquet(tmp_path / "quarantine.parquet")
    assert len(clean) + len(held) == len(pd.read_parquet(batch))
    assert len(held) > 0 and held["pg_reason"].str.len().gt(0).all()
    assert "quarantined" in capsys.readouterr().out


def test_scan_without_a_label_runs_label_free_detectors(demo_inputs, tmp_path):
    batch = demo_inputs / "landing" / "sensors" / "batch-02-outliers.parquet"
    assert (
        main(
            [
                "scan",
                str(batch),
                "--reference",
                str(demo_inputs / "trusted.parquet"),
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    held = pd.read_parquet(tmp_path / "quarantine.parquet")
    assert len(held) > 0


def test_scan_names_a_missing_label_column(demo_inputs, tmp_path, capsys):
    code = main(
        ["scan", str(demo_inputs / "trusted.parquet"), "--label", "colour", "--out", str(tmp_path)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "trusted.parquet" in err and "'colour'" in err


def test_errors_are_one_line_with_exit_code_2_not_a_traceback(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "poisonguard.cli",
            "status",
            "--config",
            str(tmp_path / "nope.toml"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"poisonguard: error: {tmp_path / 'nope.toml'}: config file not found"
    ]


def prices(n: int, seed: int) -> pd.DataFrame:
    """Rows whose would-be label is a price: a regression target, not classes."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    price = np.round(50 + 10 * x[:, 0] + rng.normal(size=n), 2)
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "price": price})


def test_init_takes_a_float_label_as_a_regression_target(tmp_path, capsys):
    """A label of non-integer floats is a regression target: init writes task = "regression",
    guards the label by its widened range (not a value set), and the store's gate passes."""
    sample = tmp_path / "trusted.csv"
    prices(120, 0).to_csv(sample, index=False)
    assert main(["init", "--sample", str(sample), "--label", "price", "--dir", str(tmp_path)]) == 0
    config = load_config(tmp_path / "poisonguard.toml")
    assert config.task == "regression" and config.columns == {c: "numeric" for c in "abc"}
    suite = json.loads((tmp_path / "expectations" / "trusted.json").read_text())
    on_price = {e["type"] for e in suite["expectations"] if e["kwargs"].get("column") == "price"}
    assert "expect_column_values_to_be_between" in on_price
    assert "expect_column_values_to_be_in_set" not in on_price
    assert main(["gate", "--config", str(tmp_path / "poisonguard.toml")]) == 0


def test_init_refuses_classes_that_are_a_regression_target_in_one_line(tmp_path, capsys):
    """Asked to take a price as classes (--task classification), init stops with exit 2 and
    one line naming the file."""
    sample = tmp_path / "trusted.csv"
    frame = prices(120, 0)
    frame.to_csv(sample, index=False)
    n = frame.loc[frame["price"] % 1 != 0, "price"].nunique()  # 52.0 would be a class
    assert n > 100
    argv = ["init", "--sample", str(sample), "--label", "price", "--dir", str(tmp_path)]
    assert main([*argv, "--task", "classification"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"poisonguard: error: {sample}: label 'price' holds {n} distinct non-integer values, "
        'so it is a regression target, not classes: set task = "regression" (or leave the '
        "task out to infer it)"
    ]
    assert not (tmp_path / "poisonguard.toml").exists()


def test_init_keeps_whole_number_float_labels_as_classes(tmp_path):
    """Labels read as floats only because a cell is missing (1.0, 2.0, NaN) are classes."""
    frame = prices(120, 0)
    frame["price"] = np.where(frame["a"] > 0, 1.0, 2.0)
    frame.loc[7, "price"] = np.nan
    sample = tmp_path / "trusted.csv"
    frame.to_csv(sample, index=False)
    assert main(["init", "--sample", str(sample), "--label", "price", "--dir", str(tmp_path)]) == 0
    suite = json.loads((tmp_path / "expectations" / "trusted.json").read_text())
    sets = [e for e in suite["expectations"] if e["type"] == "expect_column_values_to_be_in_set"]
    assert [e["kwargs"]["value_set"] for e in sets] == [[1.0, 2.0]]


@pytest.mark.parametrize("argv", [["frobnicate"], ["scan"], []])
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_selftest_reports_every_attack_and_catches_far_outliers(demo_project, capsys):
    from poisonguard.attacks import ATTACKS
    from poisonguard.config import load_config
    from poisonguard.selftest import selftest

    cfg = str(demo_project / "poisonguard.toml")
    assert main(["selftest", "--config", cfg, "--attacks", "far_outlier,random_flip"]) == 0
    out = capsys.readouterr().out
    assert "far_outlier" in out and "random_flip" in out and "poison-free batch" in out
    table = selftest(load_config(cfg), attacks=ATTACKS).set_index("attack")
    assert list(table.index) == ["none", *ATTACKS]
    assert table.loc["far_outlier", "recall"] >= 0.9
    assert table.loc["none", "quarantined"] <= 0.01 * table.loc["none", "rows"]


def test_selftest_needs_a_label(demo_project, capsys):
    path = demo_project / "poisonguard.toml"
    path.write_text(path.read_text().replace('label = "digit"\n', ""))
    assert main(["selftest", "--config", str(path)]) == 2
    assert "needs dataset.label" in capsys.readouterr().err
