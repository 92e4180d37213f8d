"""The attack variants of benchmarks/variants.py keep the shape of the batch they poison."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from variants import VARIANTS, NotApplicable, plant_variant

RATE = 0.1
CASES = [(name, task) for name, variant in VARIANTS.items() for task in variant.tasks]


def _mixed(n: int, seed: int) -> pd.DataFrame:
    """A small mixed table: floats with a missing cell, whole numbers, strings, an id, a
    class label and a numeric target that both depend on the features."""
    rng = np.random.default_rng(seed)
    size = rng.normal(10.0, 2.0, n)
    size[3] = np.nan
    count = rng.integers(0, 12, n)
    colour = rng.choice(["red", "green", "blue"], n)
    shape = rng.choice(["round", "flat"], n, p=[0.8, 0.2])
    return pd.DataFrame(
        {
            "row_id": np.arange(seed * 1000, seed * 1000 + n),
            "size": size,
            "count": count,
            "weight": np.round(rng.normal(50.0, 10.0, n)),
            "colour": pd.array(colour, dtype="str"),
            "shape": pd.array(shape, dtype="str"),
            "kind": pd.array(
                np.where(np.nan_to_num(size, nan=10.0) + (colour == "red") > 10.5, "a", "b"),
                dtype="str",
            ),
            "price": 3.0 * np.nan_to_num(size, nan=10.0) + count + rng.normal(0, 1, n),
        }
    )


@pytest.mark.parametrize(("name", "task"), CASES)
def test_a_variant_poisons_the_budget_and_leaves_every_other_row_alone(name, task):
    """Same columns, dtypes and row count; exactly round(rate * n) poison rows, each changed;
    every other row and the id column untouched; categorical cells hold known values."""
    label, other = ("kind", "price") if task == "classification" else ("price", "kind")
    batch, reference = _mixed(120, 1).drop(columns=other), _mixed(100, 2).drop(columns=other)
    features = [c for c in batch.columns if c not in ("row_id", label)]
    with threadpool_limits(1):
        try:
            planted = plant_variant(
                batch,
                variant=name,
                label=label,
                task=task,
                features=features,
                reference=reference,
                rate=RATE,
                random_state=7,
            )
        except NotApplicable:
            pytest.skip(f"{name} does not apply to the small table")
    out = planted.frame
    assert list(out.columns) == list(batch.columns)
    assert list(out.dtypes) == list(batch.dtypes)
    assert len(out) == len(batch)
    assert planted.n_poison == round(RATE * len(batch))
    keep = ~planted.is_poison
    pd.testing.assert_frame_equal(out[keep], batch[keep])
    pd.testing.assert_series_equal(out["row_id"], batch["row_id"])
    before, after = batch[planted.is_poison].astype(str), out[planted.is_poison].astype(str)
    assert (before != after).any(axis=1).all()
    for column in ("colour", "shape"):
        assert set(out[column]) <= set(batch[column]) | set(reference[column])
    assert (out["weight"] == np.round(out["weight"])).all()


@pytest.mark.parametrize("name", [n for n in VARIANTS if n.endswith("backdoor")])
def test_a_backdoor_stamps_its_trigger_on_other_rows(name):
    """A backdoor names a known target class, and its stamp keeps the shape of the rows."""
    batch, reference = _mixed(120, 1).drop(columns="price"), _mixed(100, 2).drop(columns="price")
    features = [c for c in batch.columns if c not in ("row_id", "kind")]
    with threadpool_limits(1):
        planted = plant_variant(
            batch,
            variant=name,
            label="kind",
            task="classification",
            features=features,
            reference=reference,
            rate=RATE,
            random_state=3,
        )
    assert planted.target in {"a", "b"}
    assert set(planted.frame.loc[planted.is_poison, "kind"]) == {planted.target}
    stamped = planted.stamp(reference)
    assert stamped.shape == reference.shape and list(stamped.dtypes) == list(reference.dtypes)
    for column in planted.trigger or {}:
        assert not stamped[column].equals(reference[column])
