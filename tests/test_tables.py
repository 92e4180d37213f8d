"""Real tables end to end: strings, categories, missing cells and regression targets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from poisonguard.cli import main
from poisonguard.config import load_config
from poisonguard.demo import build_demo, evaluate_demo
from poisonguard.initialize import init_dataset
from poisonguard.pipeline import process_landing
from poisonguard.selftest import selftest
from poisonguard.store import open_store


@pytest.fixture
def penguins(tmp_path):
    """The penguins demo's inputs, initialised (settle_seconds 0: files are written whole)."""
    root = tmp_path / "penguins"
    seed, _ = build_demo(root, dataset="penguins")
    init_dataset(seed, label="species", id_column="row_id", directory=root, name="penguins")
    path = root / "poisonguard.toml"
    path.write_text(path.read_text().replace("[dataset]\n", "[dataset]\nsettle_seconds = 0\n", 1))
    return root


def test_init_writes_the_kinds_and_value_sets_of_a_real_table(penguins):
    config = load_config(penguins / "poisonguard.toml")
    assert config.task == "classification"
    assert config.columns["island"] == "categorical" and config.columns["sex"] == "categorical"
    assert config.columns["body_mass_g"] == "numeric"
    suite = (penguins / "expectations" / "penguins.json").read_text()
    assert '"Biscoe"' in suite and '"Torgersen"' in suite


def test_the_penguins_demo_goes_through_the_gate(penguins):
    """Every row in one place; the broken rows (an unknown island, a 42 kg penguin, an
    unknown species) are held by expectations naming the column."""
    config = load_config(penguins / "poisonguard.toml")
    run = process_landing(config)
    score = evaluate_demo(penguins, open_store(config))
    assert score.rows_accounted
    assert sorted(r.status for r in run.records) == ["committed"] * 4 + ["rejected"]
    store = open_store(config)
    broken = next(r for r in run.records if "broken" in r.source)
    held = store.quarantine_frame(broken.batch_id)
    reasons = " ".join(held["pg_reason"])
    assert "island = 'Atlantis' not in" in reasons
    assert "species = 'Emperor' not in" in reasons
    assert (
        main(["gate", "--config", str(config.path), "--max-pending", "0s"]) == 1
    )  # held rows wait


def test_selftest_plants_the_mixed_table_attacks(penguins, capsys):
    config = load_config(penguins / "poisonguard.toml")
    table = selftest(config, attacks=("category_swap", "subgroup_flip"), seeds=(0,))
    assert list(table["attack"]) == ["none", "category_swap", "subgroup_flip"]
    assert (table.loc[table["attack"] != "none", "planted"] > 0).all()
    assert main(["selftest", "--config", str(config.path), "--attacks", "category_swap"]) == 0
    assert "category_swap" in capsys.readouterr().out


def test_a_regression_table_goes_through_the_gate(tmp_path, homes):
    """A numeric target: init infers the task, batches are judged by the regression
    detectors, a target three times too large is held with a reason naming the label."""
    frame = homes(600, 0)
    frame.iloc[:300].to_parquet(tmp_path / "trusted.parquet", index=False)
    init_dataset(
        tmp_path / "trusted.parquet", label="price", id_column="row_id", directory=tmp_path
    )
    config = load_config(tmp_path / "poisonguard.toml")
    assert config.task == "regression"
    batch = frame.iloc[300:].reset_index(drop=True).copy()
    batch.loc[:9, "price"] *= 3
    batch.to_parquet(config.landing / "homes.parquet", index=False)
    (rec,) = process_landing(config).records
    held = open_store(config).quarantine_frame(rec.batch_id)
    assert set(range(10)) <= set(held["pg_row"]), held[["pg_row", "pg_reason"]]
    assert rec.rows_quarantined <= 15
    assert held["pg_reason"].str.contains("price ").any()


def test_a_regression_batch_report_shows_the_target_distribution(tmp_path):
    """For a numeric target the report draws the target's deciles, trusted against batch,
    instead of class bars, and drift compares the target like a feature."""
    import json

    from poisonguard.detectors import batch_drift
    from poisonguard.scan import Guard

    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.normal(size=400), "kind": rng.choice(["a", "b"], 400)})
    frame["y"] = 2.0 * frame["x"] + rng.normal(0, 0.3, 400) + 10.0
    guard = Guard(label="y").fit(frame.iloc[:200])
    batch = frame.iloc[200:].reset_index(drop=True).copy()
    batch["y"] += 20.0
    table = guard.encoder_.transform(batch)
    drift = batch_drift(guard.reference_, table)
    assert "y (target)" in drift.features and "y (target)" in drift.drifted_features
    from poisonguard.evidence import class_balance, dumps

    balance = class_balance(guard.reference_, table)
    assert balance is not None and balance.kind == "target"
    assert abs(sum(balance.reference) - 1) < 1e-3 and abs(sum(balance.batch) - 1) < 1e-3
    assert balance.batch[-1] > 0.5  # shifted past every trusted target
    assert json.loads(dumps(balance))["kind"] == "target"
