"""The reference sample's rule: a bottom-k by keyed hash, stratified by class, that merges."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poisonguard.config import DetectionSettings
from poisonguard.sampling import (
    CLASS_FLOOR,
    SampleRule,
    bottom_k,
    class_floor,
    draw_sample,
    merges,
    row_priorities,
    sample_key,
    seed_key,
)
from poisonguard.scan import Guard

KEY = sample_key(b"a test key")


def _rows(batch: str, labels: list[str]) -> pd.DataFrame:
    """Rows as a store keeps them: provenance, a label and a feature."""
    return pd.DataFrame(
        {
            "y": labels,
            "x": np.arange(len(labels), dtype=float),
            "pg_batch": batch,
            "pg_row": np.arange(len(labels), dtype=np.int64),
        }
    )


@st.composite
def _split_reference(draw):
    """A reference of several batches (each a list of labels), and a rule whose class floors
    fit in its limit."""
    classes = draw(st.lists(st.sampled_from("abcdef"), min_size=1, max_size=4, unique=True))
    batches = draw(
        st.lists(st.lists(st.sampled_from(classes), max_size=60), min_size=1, max_size=6)
    )
    floor = draw(st.integers(0, 8))
    limit = draw(st.integers(max(1, len(classes) * floor), 80))
    stratified = draw(st.booleans())
    rule = SampleRule(limit, "y", "classification" if stratified else "regression", floor)
    return [_rows(f"b{i}", labels) for i, labels in enumerate(batches)], rule


@settings(max_examples=150, deadline=None)
@given(_split_reference())
def test_a_sample_merged_batch_by_batch_is_the_sample_of_the_whole(case):
    """Drawing from the previous sample and the next batch, batch after batch, gives the rows
    drawing from every row at once gives, in the same order."""
    parts, rule = case
    merged = draw_sample(parts[0], rule, KEY)
    for part in parts[1:]:
        both = pd.concat([merged, part], ignore_index=True)
        assert merges(both, rule)
        merged = draw_sample(both, rule, KEY)
    whole = draw_sample(pd.concat(parts, ignore_index=True), rule, KEY)
    pd.testing.assert_frame_equal(merged, whole)


@settings(max_examples=150, deadline=None)
@given(_split_reference())
def test_a_sample_holds_the_limit_and_every_class_floor(case):
    """At most ``limit`` rows (exactly, when there are more); every class keeps at least
    min(its rows, floor) when stratified."""
    parts, rule = case
    rows = pd.concat(parts, ignore_index=True)
    sample = draw_sample(rows, rule, KEY)
    assert len(sample) == min(len(rows), rule.limit)
    if rule.strata is not None:
        have = sample["y"].value_counts()
        for label, n in rows["y"].value_counts().items():
            assert have.get(label, 0) >= min(n, rule.floor)


@given(st.integers(0, 300), st.integers(1, 100))
def test_without_strata_the_sample_is_the_lowest_priorities(n, limit):
    """Unstratified, the sample is the ``limit`` rows of lowest keyed hash, in row order."""
    priority = row_priorities(pd.DataFrame(index=range(n)), KEY)
    kept = bottom_k(priority, limit)
    assert kept.tolist() == sorted(np.argsort(priority, kind="stable")[:limit].tolist())


def test_priorities_depend_on_the_key_and_the_row_identity_only():
    """A row's priority is the same in any frame that holds it, and another key reorders rows."""
    rows = _rows("b1", ["a"] * 50)
    alone = row_priorities(rows.iloc[10:20], KEY)
    assert np.array_equal(row_priorities(rows, KEY)[10:20], alone)
    assert not np.array_equal(
        row_priorities(rows, sample_key(b"another")), row_priorities(rows, KEY)
    )


def test_too_many_classes_for_the_floors_cut_the_floor_rows_and_do_not_merge():
    """With classes times floor past the limit the sample still holds the limit, and the
    store is told to draw it from every row instead of merging."""
    rows = _rows("b1", [f"c{i % 30}" for i in range(300)])
    rule = SampleRule(100, "y", "classification", floor=5)
    assert len(draw_sample(rows, rule, KEY)) == 100
    assert not merges(rows, rule)
    assert merges(rows, SampleRule(100, "y", "regression", floor=5))


def test_a_rule_draws_the_sample_of_a_rule_that_resolved_its_task():
    """A task left to inference is settled by the rows; a set task, label or limit must match."""
    rows = _rows("b1", ["a", "b"] * 30)
    drawn = SampleRule(100, "y").resolved(rows)
    assert drawn.task == "classification" and drawn.strata == "y"
    assert SampleRule(100, "y").draws(drawn)
    assert SampleRule(100, "y", "classification").draws(drawn)
    assert not SampleRule(100, "y", "regression").draws(drawn)
    assert not SampleRule(200, "y").draws(drawn) and not SampleRule(100, "x").draws(drawn)
    assert SampleRule.from_json(drawn.to_json()) == drawn


def test_a_guard_without_a_store_samples_a_large_reference_keeping_rare_classes():
    """``Guard.fit`` keeps at most ``max_reference_rows`` rows of a larger reference, by the
    same rule under a key from its seed: a class of 5 rows in 6,000 keeps all 5 (its floor;
    its share would be 1 or 2)."""
    rng = np.random.default_rng(0)
    n = 6000
    frame = pd.DataFrame(rng.normal(size=(n, 3)), columns=["a", "b", "c"])
    frame["y"] = np.where(np.arange(n) < 5, "rare", np.where(np.arange(n) % 2, "x", "z"))
    guard = Guard(label="y", settings=DetectionSettings(max_reference_rows=2000)).fit(frame)
    assert guard.reference_.n_rows == 2000 and class_floor(2000) == 5
    classes = np.asarray(guard.reference_.classes, dtype=object)[guard.reference_.y]
    assert int((classes == "rare").sum()) == 5
    rule = SampleRule(2000, "y", "classification", floor=5)
    expected = draw_sample(frame, rule, seed_key(0))
    assert np.array_equal(guard.reference_.raw[:, 0], expected["a"].to_numpy())


@pytest.mark.parametrize("limit", [1, 7])
def test_a_sample_of_fewer_rows_than_the_limit_keeps_them_all(limit):
    rows = _rows("b1", ["a"] * limit)
    assert draw_sample(rows, SampleRule(limit, "y", "classification"), KEY).equals(rows)


def test_the_class_floor_is_bounded_by_the_limit():
    """50 rows at the default limit, one in 400 of a smaller one, never none."""
    assert class_floor(20000) == class_floor(10**7) == CLASS_FLOOR == 50
    assert (class_floor(4000), class_floor(300), class_floor(50)) == (10, 1, 1)
