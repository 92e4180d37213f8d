"""The Prefect ingest flow, end to end, under one temporary Prefect API."""

from __future__ import annotations

import pytest

from poisonguard.config import load_config
from poisonguard.demo import DATASETS, evaluate_demo
from poisonguard.store import open_store

pytestmark = pytest.mark.slow


def test_ingest_flow_takes_the_landing_zone_through_the_gate(demo_project, prefect_harness):
    """Five batches: four committed, one rejected; every row accounted for; re-running does nothing."""
    from poisonguard_flows.ingest import ingest

    config_path = str(demo_project / "poisonguard.toml")
    done = ingest(config_path)
    outcomes = done["records"]
    assert done["notices"] == []
    assert sorted(o["status"] for o in outcomes) == ["committed"] * 4 + ["rejected"]
    for o in outcomes:
        assert o["rows_in"] == o["rows_clean"] + o["rows_quarantined"] + o["rows_rejected"]
    store = open_store(load_config(config_path))
    # Each batch keeps the source folder it landed in (its source's test is its own).
    landed = {r.source for r in store.batches() if r.status != "seed"}
    assert landed == {b.path for b in DATASETS["digits"].batches}
    score = evaluate_demo(demo_project, store)
    assert score.rows_accounted and score.recall >= 0.8 and score.clean_quarantined <= 0.05
    before = [r.as_dict() for r in store.batches()]
    assert ingest(config_path) == {"records": [], "notices": [], "purge": None}
    assert [r.as_dict() for r in store.batches()] == before


def test_flow_tasks_pass_paths_not_frames(demo_project, prefect_harness):
    """Each task's result is a path, plain lists or a plain dict: nothing large is serialised."""
    from poisonguard_flows import ingest as module

    cfg = str(demo_project / "poisonguard.toml")
    found = module.find_new.fn(cfg)
    entries = found["entries"]
    assert entries and found["notices"] == []
    assert all(
        isinstance(name, str) and isinstance(p, str) and isinstance(n, int)
        for name, p, n, _ in entries
    )
    name, path, size, mtime = next(e for e in entries if not e[0].endswith(".csv"))
    step = module.validate.fn(cfg, name, path, size, mtime)
    staged = step["staged"]
    assert isinstance(staged, str)
    assert isinstance(module.detect.fn(cfg, staged), str)
    assert isinstance(module.commit.fn(cfg, staged), dict)
    # The demo's wrong-schema file is rejected whole; its ledger record comes back.
    (bad,) = [e for e in entries if "wrong-schema" in e[0]]
    step = module.validate.fn(cfg, *bad)
    assert "staged" not in step and step["record"]["status"] == "rejected"


def test_pretraining_gate_subflow_inside_a_training_flow(demo_project, prefect_harness):
    """A team's own flow calls the gate as a subflow: a manifest when safe, GateError when not."""
    from prefect import flow

    from poisonguard.errors import GateError
    from poisonguard_flows.gate import pretraining_gate

    cfg = str(demo_project / "poisonguard.toml")

    @flow
    def train(config_path: str) -> int:
        manifest = pretraining_gate(config_path)
        return manifest["rows"]

    store = open_store(load_config(cfg))
    assert train(cfg) == sum(f.rows for f in store.files("clean"))
    (store.root / "clean" / "sneaked-in.parquet").write_bytes(b"x")
    with pytest.raises(GateError, match=r"sneaked-in\.parquet: not written by poisonguard"):
        train(cfg)
