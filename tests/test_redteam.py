"""``poisonguard redteam``: adaptive attacks through a copy of the store, never the store itself."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from poisonguard.attacks import least_suspicious_flips
from poisonguard.cli import main
from poisonguard.config import load_config
from poisonguard.demo import LABEL
from poisonguard.errors import ConfigError
from poisonguard.pipeline import data_columns
from poisonguard.redteam import ATTACKS, Carrier, Sandbox, copy_project, first_free_id, redteam
from poisonguard.sources import SourceTest
from poisonguard.store import open_store


def _digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (the project: config, suite, landing, store, key) and its hash."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_a_red_team_run_leaves_the_project_byte_for_byte_as_it_was(demo_run, tmp_path, capsys):
    """After `poisonguard redteam`, every file of the project (store, ledger, audit key,
    config, suite, landing) is as it was and no file was added; the command exits 0 and
    prints and writes the figures of every attack it ran."""
    root, _ = demo_run
    before = _digest(root)
    out = tmp_path / "redteam.json"
    code = main(
        [
            "redteam",
            "--config",
            str(root / "poisonguard.toml"),
            "--attack",
            "boundary",
            "near_copies",
            "--batches",
            "2",
            "--json",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert _digest(root) == before
    figures = json.loads(out.read_text())["figures"]
    assert [f["attack"] for f in figures] == ["boundary", "near_copies"]
    boundary, near = figures
    assert boundary["poison_sent"] == boundary["budget"] > 0
    assert 0 <= boundary["poison_accepted"] <= boundary["poison_sent"]
    assert boundary["poison_in_reference"] == 0  # nothing is promoted in the copy
    assert near["batches"] >= 1 and near["resent"] <= near["poison_sent"]
    for f in figures:
        assert f["clean_sent"] > 0 and 0 <= f["clean_held"] <= f["clean_sent"]
        assert set(f["damage"]) >= {"clean", "no_gate", "gated", "attacked_class"}
        assert f["attack"] in printed
    assert "alarm at" in printed and "the store was not changed" in printed


def test_the_copy_is_a_store_of_its_own(demo_run, tmp_path):
    """The copy holds the same batches and training set under a fresh audit key and its own
    ledger; a batch sent through the copy is in the copy's ledger only."""
    root, _ = demo_run
    config = load_config(root / "poisonguard.toml")
    copy = copy_project(config, tmp_path / "copy")
    real, mine = open_store(config), open_store(copy)
    assert copy.store != config.store and copy.audit_key != config.audit_key
    assert copy.audit_key.read_text() != (root / "store.key").read_text()
    assert [b.batch_id for b in mine.batches()] == [b.batch_id for b in real.batches()]
    pd.testing.assert_frame_equal(mine.clean_frame(), real.clean_frame())
    sandbox = Sandbox(copy)
    clean = mine.clean_frame()
    carrier = Carrier(clean[data_columns(clean)].iloc[:60], "row_id", first_free_id(mine, "row_id"))
    delivery = sandbox.send(carrier.take(60), np.zeros(60, dtype=bool), source="probe")
    assert delivery.status == "committed"
    assert mine.batch(delivery.batch_id) is not None
    assert real.batch(delivery.batch_id) is None


def test_the_trusting_baseline_promotes_what_it_accepts_and_the_gated_store_does_not(
    demo_run, tmp_path
):
    """A trusting sandbox rejects a batch's held rows and promotes the rest into the reference,
    the flips it accepted included; the gated sandbox judges with the reference it started
    with. (Two flips, the least suspicious to the gate: confident ones, four in 80 rows, raise
    the source's alarm with their batch, which is then held whole.)"""
    root, _ = demo_run
    config = load_config(root / "poisonguard.toml")
    worlds = {}
    for world in ("gated", "trusting"):
        sandbox = Sandbox(copy_project(config, tmp_path / world), trusting=world == "trusting")
        clean = Carrier(_outside_reference(sandbox).iloc[:80], "row_id", 10**6).take(80)
        attack = least_suspicious_flips(
            clean, label=LABEL, guard=sandbox.guard(), rate=2 / 80, random_state=0
        )
        rows, poison = attack.frame, attack.is_poison
        version = sandbox.store.reference().version
        delivery = sandbox.send(rows, poison, source="partner")
        worlds[world] = (sandbox, delivery, version)
    gated, delivery, version = worlds["gated"]
    assert gated.store.reference().version == version
    assert gated.poison_in(gated.reference_frame()) == 0
    trusting, delivery, version = worlds["trusting"]
    assert trusting.store.reference().version == version + 1
    assert set(trusting.reference_frame()["pg_batch"]) >= {delivery.batch_id}
    accepted_poison = int((delivery.accepted & delivery.is_poison).sum())
    assert accepted_poison > 0
    assert trusting.poison_in(trusting.reference_frame()) == accepted_poison
    assert trusting.store.batch(delivery.batch_id).rows_quarantined == 0  # rejected by review


def _outside_reference(sandbox: Sandbox) -> pd.DataFrame:
    """Clean rows of the sandbox that are not in its reference (copies of trusted rows are
    what the duplicates detector holds), data columns only."""
    clean = sandbox.store.clean_frame()
    trusted = set(sandbox.reference_frame()["pg_batch"])
    return clean[~clean["pg_batch"].isin(trusted)][data_columns(clean)]


def test_a_batch_held_whole_for_drift_is_not_a_source_alarm(demo_run, tmp_path):
    """Only a hold whose reason names the source counts as an alarm: a batch of mostly one
    class, held whole because its label shares moved past hold_label_shift, is held (none of
    it accepted) but is not reported as an alarm. (The source's alarms are off here: its
    rows, 18 of 26 one class, are evidence enough to raise one with this very batch.)"""
    root, _ = demo_run
    config = load_config(root / "poisonguard.toml")
    copy = replace(
        copy_project(config, tmp_path / "copy").with_detection(hold_label_shift=0.5),
        sources=SourceTest(alarm_level=0),
    )
    sandbox = Sandbox(copy)
    rows = _outside_reference(sandbox)
    # 18 of 26 rows one class (the demo's later batches, held whole by its source's alarm,
    # leave about 20 of each class outside the reference).
    skewed = pd.concat([rows[rows[LABEL] == 1].iloc[:18], rows[rows[LABEL] != 1].iloc[:8]])
    batch = Carrier(skewed, "row_id", 10**6).take(26)
    delivery = sandbox.send(batch, np.zeros(26, dtype=bool), source="partner")
    held = sandbox.store.quarantine_frame(delivery.batch_id)
    assert (held["pg_stage"] == "batch_hold").any()
    assert not delivery.accepted.any()
    assert delivery.alarm is False


def test_redteam_refuses_what_it_cannot_run(demo_run):
    """Without a class label, or with an attack it does not know, the red team does not run."""
    root, _ = demo_run
    config = load_config(root / "poisonguard.toml")
    with pytest.raises(ConfigError, match="label"):
        redteam(replace(config, label=None))
    with pytest.raises(ConfigError, match="attacks"):
        redteam(config, attacks=["nope"])
    with pytest.raises(ConfigError, match="budget"):
        redteam(config, attacks=["ratchet"], budgets=[80])
    assert set(ATTACKS) == {"ratchet", "many_sources", "near_copies", "boundary", "cluster"}
