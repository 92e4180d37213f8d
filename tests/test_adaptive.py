"""The adaptive-attack benchmark plants what it says and counts what each method catches."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest

from adaptive import FLIPS, PG, PG_NO_ROW_LEVEL, dilution, flipped, report
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
