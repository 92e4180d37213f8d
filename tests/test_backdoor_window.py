"""The backdoor scan's window: each batch is scanned with the rows its source sent before."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from landed import empty as empty_landing
from poisonguard.config import DEFAULT_BACKDOOR_WINDOW, Config, DetectionSettings, load_config
from poisonguard.demo import LABEL, digits_frame
from poisonguard.errors import ConfigError
from poisonguard.pipeline import (
    commit_batch,
    detect_batch,
    find_new_batches,
    fit_guard,
    process_landing,
    validate_batch,
)
from poisonguard.scan import Guard
from poisonguard.store import BatchRecord, Store, open_store

#: A value of one pixel that no seed row of the demo shows, inside the pixel's range, so
#: the expectations let it through. Stamped on rows of digit 3 (their labels stay right: a
#: clean-label trigger, which no label detector sees), four to a batch: fewer than the
#: backdoor scan's ``min_support`` (5), so one batch alone cannot show it.
TRIGGER = ("px49", 14.0)
TARGET = 3
PER_BATCH = 4


@pytest.fixture
def rest(demo_project) -> pd.DataFrame:
    """Digits rows that are not in the demo's seed; the demo's landing folder emptied."""
    empty_landing(demo_project / "landing")
    seed = pd.read_parquet(demo_project / "trusted.parquet")
    full = digits_frame()
    assert (seed[TRIGGER[0]] != TRIGGER[1]).all()
    return full[~full["row_id"].isin(seed["row_id"])].reset_index(drop=True)


def _config(project: Path, window: int | None = None) -> Config:
    """The project's config, with ``backdoor_window = window`` written into it when given."""
    path = project / "poisonguard.toml"
    if window is not None:
        text = path.read_text().replace(
            "[detection]\n", f"[detection]\nbackdoor_window = {window}\n"
        )
        path.write_text(text)
    return dataclasses.replace(load_config(path), settle_seconds=0.0)


def _piece(rest: pd.DataFrame, k: int, n_clean: int = 40) -> tuple[pd.DataFrame, np.ndarray]:
    """Batch ``k``: ``n_clean`` rows of other digits and ``PER_BATCH`` threes carrying the
    trigger, shuffled; and which rows carry it."""
    others = rest[rest[LABEL] != TARGET].iloc[k * n_clean : (k + 1) * n_clean]
    threes = rest[rest[LABEL] == TARGET].iloc[k * PER_BATCH : (k + 1) * PER_BATCH]
    batch = pd.concat([others, threes.assign(**{TRIGGER[0]: TRIGGER[1]})])
    batch = batch.sample(frac=1.0, random_state=k).reset_index(drop=True)
    return batch, (batch[TRIGGER[0]] == TRIGGER[1]).to_numpy()


def _land(config: Config, name: str, rows: pd.DataFrame) -> BatchRecord:
    path = config.landing / name
    path.parent.mkdir(parents=True, exist_ok=True)
    rows.to_parquet(path, index=False)
    (record,) = process_landing(config).records
    return record


def _held(store: Store, record: BatchRecord) -> pd.DataFrame:
    return store.quarantine_frame(record.batch_id)


def _window_entry(store: Store, record: BatchRecord) -> dict | None:
    """What the batch's ingest entry in the audit log says the window showed."""
    (entry,) = [
        e for e in store.audit_log() if e["action"] == "ingest" and e["batch_id"] == record.batch_id
    ]
    return json.loads(entry["detail"]).get("window")


@pytest.mark.parametrize("window", [DEFAULT_BACKDOOR_WINDOW, 0])
def test_a_trigger_split_over_batches_is_held_once_the_window_holds_enough_of_it(
    demo_project, rest, window
):
    """Four trigger rows in a batch are too few to show; the second batch of the same source
    is scanned together with the first one's rows, so its four are held, with a reason that
    says the count includes the source's earlier rows, and the first batch's four, accepted
    then, are reported as accepted rows that now look like a trigger and taken out of the
    training set into quarantine for review. With the window off
    (``backdoor_window = 0``) the second batch's trigger rows pass too, and nothing is reported."""
    config = _config(demo_project, window)
    store = open_store(config)
    first, first_trigger = _piece(rest, 0)
    one = _land(config, "partner/b0.parquet", first)
    held_first = _held(store, one)
    assert not set(held_first.get("pg_row", [])) & set(np.flatnonzero(first_trigger))
    second, second_trigger = _piece(rest, 1)
    two = _land(config, "partner/b1.parquet", second)
    held = _held(store, two)
    trigger_rows = set(np.flatnonzero(second_trigger).tolist())
    found = _window_entry(store, two)
    if window == 0:
        assert not set(held.get("pg_row", [])) & trigger_rows
        assert found is None
        return
    assert trigger_rows <= set(held["pg_row"])
    reasons = held.set_index("pg_row").loc[sorted(trigger_rows), "pg_reason"]
    assert reasons.str.contains(f"backdoor .*{TRIGGER[0]} = 14 is shared by 8 ").all()
    assert reasons.str.contains(f"the {len(first)} rows its source sent before").all()
    assert found["source"] == "partner" and found["rows"] == len(first)
    assert found["accepted_flagged"] == {one.batch_id: np.flatnonzero(first_trigger).tolist()}
    assert found["message"].startswith(
        f"{PER_BATCH} rows accepted earlier from source 'partner' now look like a trigger: "
        f"batches {one.batch_id} ({PER_BATCH})"
    )
    # Fail closed: those rows leave the training set for review, with the reason.
    moved = store.quarantine_frame(one.batch_id).set_index("pg_row")
    again = moved[moved["pg_stage"] == "rescan"]
    assert set(again.index) == set(np.flatnonzero(first_trigger).tolist())
    assert again["pg_reason"].str.contains(f"the backdoor scan of batch {two.batch_id}").all()
    assert not set(again.index) & set(
        store.clean_frame().query("pg_batch == @one.batch_id")["pg_row"]
    )
    # The window still reads them as they arrived, but no longer as training rows.
    rows = store.source_rows("partner", len(first) + len(second))
    mine = rows[rows["pg_batch"] == one.batch_id].set_index("pg_row")
    assert len(mine) == len(first)
    assert set(mine.index[~mine["pg_accepted"]]) == set(again.index) | set(
        held_first.get("pg_row", [])
    )


def test_sources_do_not_see_each_others_windows(demo_project, rest):
    """A batch is scanned with its own source's earlier rows only: the trigger rows one source
    sent do not count for another's batch (its four pass, and it has no window), while the
    first source's next batch sees them. ``Store.source_rows`` gives a source's rows newest
    batch first, each batch's last rows first, up to its limit, and marks held rows as not
    accepted."""
    config = _config(demo_project)
    store = open_store(config)
    a0, _ = _piece(rest, 0)
    b0, b0_trigger = _piece(rest, 1)
    a1, a1_trigger = _piece(rest, 2)
    first = _land(config, "partner-a/b0.parquet", a0)
    other = _land(config, "partner-b/b0.parquet", b0)
    assert not set(_held(store, other).get("pg_row", [])) & set(np.flatnonzero(b0_trigger))
    assert _window_entry(store, other) is None
    again = _land(config, "partner-a/b1.parquet", a1)
    assert set(np.flatnonzero(a1_trigger)) <= set(_held(store, again)["pg_row"])
    found = _window_entry(store, again)
    assert found["rows"] == len(a0) and set(found["accepted_flagged"]) == {first.batch_id}

    rows = store.source_rows("partner-a", len(a1) + 5)
    assert len(rows) == len(a1) + 5
    assert (rows["pg_batch"].iloc[: len(a1)] == again.batch_id).all()
    assert rows["pg_row"].iloc[: len(a1)].tolist() == list(range(len(a1) - 1, -1, -1))
    assert (rows["pg_batch"].iloc[len(a1) :] == first.batch_id).all()
    held = set(_held(store, again)["pg_row"])
    mine = rows[rows["pg_batch"] == again.batch_id]
    assert set(mine.loc[~mine["pg_accepted"], "pg_row"]) == held
    assert set(store.source_rows("partner-b", 10_000)["pg_batch"]) == {other.batch_id}
    assert store.source_rows("partner-c", 100).empty
    assert store.source_rows("partner-a", 0).empty


@pytest.mark.parametrize("window", [0, DEFAULT_BACKDOOR_WINDOW])
def test_the_window_reads_held_and_rejected_rows_but_not_rows_never_scored(
    demo_project, rest, window
):
    """Rows a source sent that the detectors held stay in its window whatever the reviewer
    decided: a released row counts as accepted, a rejected one as not, and both are read (a
    trigger whose first rows were caught does not start from nothing). A row the expectations
    held was never scored and is left out. With the window off nothing is read."""
    from poisonguard.pipeline import source_window
    from poisonguard.review import review

    config = _config(demo_project, window)
    store = open_store(config)
    batch, _ = _piece(rest, 0)
    zeros = rest[rest[LABEL] == 0].tail(2).assign(**{LABEL: 1})  # flipped: the detectors hold them
    batch = pd.concat([batch, zeros], ignore_index=True)
    batch.loc[0, "px10"] = 255.0  # outside the pixel's range: the expectations hold it
    record = _land(config, "partner/b0.parquet", batch)
    held = _held(store, record).set_index("pg_row")["pg_stage"]
    flipped = [len(batch) - 2, len(batch) - 1]
    assert held[0] == "expectations" and (held[flipped] == "detectors").all()
    review(store, record.batch_id, "release", by="ana", note="fine", rows=[flipped[0]])
    review(store, record.batch_id, "reject", by="ana", note="flipped", rows=[0, flipped[1]])
    rows = source_window(config, store, "partner/b1.parquet", fit_guard(config, store))
    if window == 0:
        assert rows.empty
        return
    assert sorted(rows["pg_row"]) == list(range(1, len(batch)))
    accepted = rows.set_index("pg_row")["pg_accepted"]
    assert accepted[flipped[0]] and not accepted[flipped[1]]
    assert accepted[accepted.index.difference(held.index)].all()  # the rows accepted at commit


def _take(config: Config, store: Store, name: str, rows: pd.DataFrame, guard: Guard) -> int:
    """Land one batch and take it through validate, detect and commit with ``guard`` (fitted
    on the store's reference, as ``process_landing`` would fit it); the rows it held."""
    path = config.landing / name
    path.parent.mkdir(parents=True, exist_ok=True)
    rows.to_parquet(path, index=False)
    (entry,), _ = find_new_batches(config, store)
    intake = validate_batch(entry, config, store)
    assert intake.staged is not None
    detect_batch(intake.staged, config, store, guard)
    return commit_batch(intake.staged, config, store).rows_quarantined


def test_a_clean_source_gets_no_more_rows_held_with_the_window(demo_project, rest, tmp_path):
    """Six clean batches of one source: with the window on, each batch after the first is
    scanned with up to 500 earlier rows, and no more rows are held than with it off. The
    backdoor scan corrects for every cell it examines, so clean rows score 0 at any scanned
    size and the calibration, scored in folds of ``calibration_rows / folds`` rows, stays
    valid for the larger windowed batches."""
    import shutil

    off_project = tmp_path / "off"
    shutil.copytree(demo_project, off_project)
    stores = {}
    for window, project in ((DEFAULT_BACKDOOR_WINDOW, demo_project), (0, off_project)):
        config = _config(project, window)
        store = open_store(config)
        guard = fit_guard(config, store)
        stores[window] = [
            _take(config, store, f"partner/b{k}.parquet", rest.iloc[k * 100 : (k + 1) * 100], guard)
            for k in range(6)
        ]
    on, off = stores[DEFAULT_BACKDOOR_WINDOW], stores[0]
    assert all(a <= b for a, b in zip(on, off, strict=True)), (on, off)


def test_clean_rows_scored_with_a_window_get_no_smaller_backdoor_p_values():
    """breast_cancer, 40% trusted: ten clean batches of 30 rows, each scored alone and with
    the rows of the batches before it as its window. Clean rows scored with more rows around
    them score 0 as often or more (the correction for the cells examined grows with them), so
    their backdoor p-values are no smaller than alone: the fold calibration stays valid."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    order = np.random.default_rng(3).permutation(len(frame))
    n_trusted = int(0.4 * len(frame))
    guard = Guard(label="target", task="classification").fit(frame.iloc[order[:n_trusted]])
    rest = frame.iloc[order[n_trusted:]].reset_index(drop=True)
    cal = guard.calibrations_["backdoor"]
    alone, windowed = [], []
    for k in range(1, 10):
        batch = rest.iloc[k * 30 : (k + 1) * 30].reset_index(drop=True)
        window = rest.iloc[: k * 30].iloc[::-1]
        alone.append(cal.p_values(guard.score(batch)[1]["backdoor"]))
        windowed.append(cal.p_values(guard.score(batch, window=window)[1]["backdoor"]))
        assert guard.score(batch, window=window)[1]["knn_label"].tolist() == (
            guard.score(batch)[1]["knn_label"].tolist()
        )
        assert len(guard.window_suspects(batch, window)) == 0
    alone_p, windowed_p = np.concatenate(alone), np.concatenate(windowed)
    assert np.sum(windowed_p <= 0.01) <= np.sum(alone_p <= 0.01)
    assert np.all(windowed_p >= alone_p - 1e-12)


@pytest.mark.parametrize("value", [-1, 1.5, True, "2000"])
def test_backdoor_window_must_be_a_whole_number_of_rows(demo_project, value):
    """``detection.backdoor_window`` is checked when the config loads: an int >= 0."""
    path = demo_project / "poisonguard.toml"
    shown = json.dumps(value) if not isinstance(value, bool) else str(value).lower()
    path.write_text(
        path.read_text().replace("[detection]\n", f"[detection]\nbackdoor_window = {shown}\n")
    )
    with pytest.raises(ConfigError, match="backdoor_window"):
        load_config(path)


def test_backdoor_window_defaults_and_zero_is_off(demo_project):
    """Left out, the window is ``DEFAULT_BACKDOOR_WINDOW`` rows; 0 is accepted (off); the
    setting is checked by ``DetectionSettings.validated`` too."""
    assert _config(demo_project).detection.backdoor_window == DEFAULT_BACKDOOR_WINDOW == 2000
    assert _config(demo_project, 0).detection.backdoor_window == 0
    with pytest.raises(ConfigError, match="backdoor_window"):
        DetectionSettings(backdoor_window=-5).validated()


def test_only_within_batch_detectors_read_a_window():
    """A detector that reads its source's earlier rows reads the batch too: the excess rule
    leaves such detectors out, and the backdoor scan is one."""
    from poisonguard.detectors import REGISTRY

    windowed = {name for name, cls in REGISTRY.items() if cls.windowed}
    assert windowed == {"backdoor"}
    assert all(REGISTRY[name].within_batch for name in windowed)
