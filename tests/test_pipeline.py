"""A batch's way through the gate, in-process: conservation, idempotency, rejection."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from landed import empty as empty_landing
from poisonguard.config import load_config
from poisonguard.demo import evaluate_demo
from poisonguard.pipeline import process_batch, process_landing, row_hashes
from poisonguard.store import Store, open_store

KEY = bytes(range(16))  # a row-hash key, as a store derives one


def _status(store: Store) -> list[tuple]:
    return [
        (r.batch_id, r.status, r.rows_in, r.rows_clean, r.rows_quarantined, r.rows_rejected)
        for r in store.batches()
    ]


def test_every_input_row_ends_in_exactly_one_place(demo_project):
    """Per batch, rows in = clean + quarantined + rejected, and the files hold exactly those rows."""
    config = load_config(demo_project / "poisonguard.toml")
    records = process_landing(config).records
    assert len(records) == 5
    store = open_store(config)
    for rec in records:
        assert rec.rows_in == rec.rows_clean + rec.rows_quarantined + rec.rows_rejected
        rows = []
        for f in store.files():
            if f.batch_id == rec.batch_id and f.kind in ("clean", "quarantine"):
                rows.append(store.read(f)["pg_row"].to_numpy())
        if rec.status == "rejected":
            assert rows == [] and rec.rows_rejected == rec.rows_in
        else:
            got = np.sort(np.concatenate(rows))
            assert np.array_equal(got, np.arange(rec.rows_in))


def test_the_demo_catches_planted_poison(demo_project):
    """The gate holds >= 80% of the planted poison and <= 5% of the clean rows; the source
    that sent a batch of flipped labels alarms with that batch, which is held whole for
    review, and the alarm holds no other source's batches."""
    config = load_config(demo_project / "poisonguard.toml")
    process_landing(config)
    score = evaluate_demo(demo_project, open_store(config))
    assert score.rows_accounted
    assert score.recall >= 0.8
    assert score.clean_quarantined <= 0.05
    assert score.held_whole == ("batch-01-label-flips.parquet",)
    flips = score.table.set_index("batch").loc["batch-01-label-flips.parquet"]
    assert flips["clean"] == 0 and flips["caught"] >= 0.8 * flips["planted"]


def test_the_same_content_is_skipped_whatever_its_file_name(demo_project):
    config = load_config(demo_project / "poisonguard.toml")
    process_landing(config)
    store = open_store(config)
    before = _status(store)
    landing = demo_project / "landing"
    shutil.copy(landing / "partner" / "batch-04-clean.parquet", landing / "batch-99-copy.parquet")
    run = process_landing(config)
    assert run.records == []
    (notice,) = run.notices
    assert notice.file == "batch-99-copy.parquet" and notice.status == "skipped"
    assert notice.reason.startswith("same content as batch partner_batch-04-clean-")
    assert process_landing(config).notices == []  # said once, remembered by the ledger
    assert process_batch(landing / "batch-99-copy.parquet", config, store).record is None
    assert _status(store) == before


def test_a_wrong_schema_batch_is_rejected_and_the_others_go_on(demo_project):
    config = load_config(demo_project / "poisonguard.toml")
    records = {r.source: r for r in process_landing(config).records}
    bad = records["export/batch-05-wrong-schema.csv"]
    assert bad.status == "rejected" and "px10" in bad.reason
    assert "batch-05-wrong-schema.csv" in bad.reason
    # Kept under a name of safe characters (the source folder joined by an underscore).
    assert (config.store / "rejected" / bad.batch_id / "export_batch-05-wrong-schema.csv").is_file()
    assert (
        "batch-05-wrong-schema.csv"
        in (config.store / "rejected" / bad.batch_id / "reason.json").read_text()
    )
    assert sum(r.status == "committed" for r in records.values()) == 4


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "the file is empty"),
        (b"PAR1garbage", "not a readable Parquet file"),
    ],
)
def test_a_corrupt_file_is_rejected_with_a_reason_naming_it(demo_project, content, why):
    config = load_config(demo_project / "poisonguard.toml")
    (config.landing / "batch-00-corrupt.parquet").write_bytes(content)
    records = process_landing(config).records
    bad = next(r for r in records if "batch-00-corrupt" in r.source)
    assert (
        bad.status == "rejected" and why in bad.reason and "batch-00-corrupt.parquet" in bad.reason
    )
    assert len(records) == 6


def test_a_wrong_type_rejects_the_batch_naming_the_column(demo_project):
    config = load_config(demo_project / "poisonguard.toml")
    frame = pd.read_parquet(demo_project / "landing" / "partner" / "batch-04-clean.parquet").head(
        20
    )
    frame["px03"] = "dark"
    empty_landing(config.landing)
    frame.to_parquet(config.landing / "typed.parquet", index=False)
    (rec,) = process_landing(config).records
    assert rec.status == "rejected" and "px03" in rec.reason and "typed.parquet" in rec.reason


def test_row_hashes_ignore_the_file_format():
    """A row read from CSV (ints) and from Parquet (floats) hashes alike."""
    a = pd.DataFrame({"x": [1, 2], "s": ["a", "b"]})
    b = pd.DataFrame({"x": [1.0, 2.0], "s": ["a", "b"]})
    assert list(row_hashes(a, key=KEY)) == list(row_hashes(b, key=KEY))
    assert row_hashes(a, key=KEY)[0] != row_hashes(a, key=KEY)[1]


def test_a_batch_whose_labels_shift_past_the_configured_level_is_held_whole(demo_project):
    """With hold_label_shift set, a batch of one class is held for review, every row with the reason."""
    path = demo_project / "poisonguard.toml"
    path.write_text(
        path.read_text().replace("[detection]\n", "[detection]\nhold_label_shift = 0.3\n")
    )
    config = load_config(path)
    empty_landing(config.landing)
    trusted = pd.read_parquet(demo_project / "trusted.parquet")
    ones = trusted[trusted["digit"] == 1].copy()
    ones["row_id"] = ones["row_id"] + 100_000
    ones.to_parquet(config.landing / "only-ones.parquet", index=False)
    (rec,) = process_landing(config).records
    assert rec.rows_quarantined == rec.rows_in == len(ones)
    held = open_store(config).quarantine_frame(rec.batch_id)
    assert held["pg_reason"].str.contains("batch held for review: its label shares").all()
    # Stages are truthful: rows the detectors also flag (here a one-class flood trips the
    # backdoor scan) say so; the others are held by the batch hold alone.
    by_detectors = held["pg_reason"].str.contains(r"\(p=", regex=True)
    assert (held.loc[by_detectors, "pg_stage"] == "detectors").all()
    assert (held.loc[~by_detectors, "pg_stage"] == "batch_hold").all()


def test_a_csv_text_column_of_digits_stays_text(tmp_path):
    """Zip codes in a CSV keep their leading zeros and pass a suite that expects strings."""
    from poisonguard.initialize import init_dataset

    trusted = pd.DataFrame(
        {"zip": [f"0{2100 + i}" for i in range(60)], "x": np.arange(60.0), "y": np.arange(60) % 2}
    )
    trusted.to_parquet(tmp_path / "trusted.parquet", index=False)
    init_dataset(tmp_path / "trusted.parquet", label="y", directory=tmp_path, name="zips")
    config = load_config(tmp_path / "poisonguard.toml")
    trusted.head(20).to_csv(config.landing / "zips.csv", index=False)
    (rec,) = process_landing(config).records
    assert rec.status == "committed", rec.reason
    clean = open_store(config).clean_frame()
    assert "02100" in set(clean["zip"])


# --------------------------------------------------------------------------- the blocklist

#: How each rejected row is sent again, and whether the blocklist must hold it.
RESENT = {
    "unchanged": True,
    "one ulp": True,
    "half the tolerance": True,
    "across a grid boundary": True,
    "new id": True,
    "csv": True,
    "csv, one ulp": True,
    "another label": False,
    "beyond the tolerance": False,
}


@pytest.fixture(scope="module")
def resent(demo_run, tmp_path_factory):
    """Alice rejects nine rows the demo held; each is sent again, one way per row, in a
    CSV and a Parquet batch. Returns each way's (rejected row, stage, reason), the batch the
    rows were rejected from, and the duplicates detector's keys of the boundary case's pair."""
    from poisonguard.detectors.duplicates import DuplicatesDetector, _row_keys
    from poisonguard.pipeline import fit_guard
    from poisonguard.review import review

    root = tmp_path_factory.mktemp("resent") / "demo"
    shutil.copytree(demo_run[0], root)
    config = load_config(root / "poisonguard.toml")
    store = open_store(config)
    flips = next(r for r in store.batches() if r.source == "labelling/batch-01-label-flips.parquet")
    held = store.quarantine_frame(flips.batch_id).sort_values("pg_row")
    chosen = held["pg_row"].iloc[: len(RESENT)].tolist()
    review(store, flips.batch_id, "reject", rows=chosen, by="alice", note="flipped labels")
    rejected = held.set_index("pg_row").loc[chosen].reset_index()
    data = [c for c in rejected.columns if not str(c).startswith("pg_")]

    guard = fit_guard(config, store)  # the batches below are judged against these same rows
    encoder = guard.encoder_
    tol = DuplicatesDetector().tolerance  # the demo's config keeps the default
    j = int(np.argmax(encoder.scale_))
    column, center, scale = encoder.numbers_[j], encoder.center_[j], encoder.scale_[j]

    rows = {}
    for i, way in enumerate(RESENT):
        row = rejected.loc[[i], data].astype({column: np.float64}).reset_index(drop=True)
        if way != "unchanged":
            row["row_id"] = 900_000 + i
        value = row.loc[0, column]
        if way in ("one ulp", "csv, one ulp"):
            row.loc[0, column] = np.nextafter(value, np.inf)
        elif way == "half the tolerance":
            row.loc[0, column] = value + 0.5 * tol * scale
        elif way == "beyond the tolerance":
            row.loc[0, column] = value + 3.0 * tol * scale
        elif way == "another label":
            row.loc[0, "digit"] = (row.loc[0, "digit"] + 1) % 10
        elif way == "across a grid boundary":
            # Past the nearer boundary of its cell by a quarter step: 0.75 steps at most.
            up = 1.0 - ((value - center) / scale / tol + 0.5) % 1.0  # steps to it, in (0, 1]
            move = up + 0.25 if up <= 0.5 else up - 1.25
            row.loc[0, column] = value + move * tol * scale
        rows[way] = row

    empty_landing(config.landing)
    csv = [w for w in RESENT if w.startswith("csv")]
    pd.concat([rows[w] for w in csv]).to_csv(config.landing / "resent-1.csv", index=False)
    parquet = [w for w in RESENT if not w.startswith("csv")]
    pd.concat([rows[w] for w in parquet]).to_parquet(
        config.landing / "resent-2.parquet", index=False
    )
    records = {r.source: r for r in process_landing(config).records}

    outcome = {}
    for name, ways in (("resent-1.csv", csv), ("resent-2.parquet", parquet)):
        rec = records[name]
        assert rec.status == "committed" and rec.rows_in == len(ways)
        assert rec.rows_clean + rec.rows_quarantined == rec.rows_in
        q = store.quarantine_frame(rec.batch_id).set_index("pg_row")
        for pos, way in enumerate(ways):
            stage, reason = (
                ("", "") if pos not in q.index else q.loc[pos, ["pg_stage", "pg_reason"]]
            )
            outcome[way] = (rejected.loc[list(RESENT).index(way)], stage, reason)
    i = list(RESENT).index("across a grid boundary")
    boundary = pd.concat(
        [rejected.loc[[i], data], rows["across a grid boundary"]], ignore_index=True
    )
    keys = _row_keys(encoder.transform(boundary), tol)
    return outcome, flips.batch_id, keys


@pytest.mark.parametrize("way", list(RESENT))
def test_a_rejected_row_sent_again_is_held_by_the_blocklist_when_it_is_a_near_copy(resent, way):
    """A row alice rejected, sent again unchanged, 1 ulp or half the duplicates tolerance
    away, across a cell boundary of the tolerance grid, with a new id, or as CSV, is held at
    the blocklist stage with a reason naming the rejection; with another label, or farther
    than the tolerance, it is a new row the blocklist lets through to the detectors."""
    outcome, batch_id, _ = resent
    was, stage, reason = outcome[way]
    named = f"by alice (batch {batch_id}, row {was['pg_row']})"
    if RESENT[way]:
        assert stage == "blocklist", (way, stage, reason)
        # The blocklist's reason comes first; the source's alarm (section 7) may follow it.
        first = reason.split("; ")[0]
        assert first.startswith("near-copy of a row rejected on ") and first.endswith(named)
    else:
        assert stage != "blocklist" and "near-copy" not in reason, (way, stage, reason)


def test_the_boundary_case_lies_in_two_cells_of_the_duplicates_grid(resent):
    """The row sent "across a grid boundary" hashes apart from the rejected one (so the
    match above is not the grid's): the check behind it does not lean on the hash."""
    _, _, keys = resent
    assert keys[0] != keys[1]
