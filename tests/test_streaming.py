"""A batch larger than ``[execution]`` chunk sizes is read, validated, judged and committed a chunk
at a time, and ends exactly where the same batch taken whole ends."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from landed import keep_only
from poisonguard.config import Config, ExecutionSettings, load_config
from poisonguard.pipeline import process_landing
from poisonguard.store import Store, read_parquet, row_group_sizes

pytestmark = pytest.mark.slow

#: Chunks small enough that every demo batch (a few hundred rows) takes many.
TINY = ExecutionSettings(chunk_bytes=4096, chunk_rows=37)


def _project(demo_inputs: Path, root: Path) -> Path:
    from poisonguard.demo import LABEL
    from poisonguard.initialize import init_dataset

    shutil.copytree(demo_inputs, root)
    # The id column's uniqueness is counted across chunks (batch 2 repeats ids).
    init_dataset(
        root / "trusted.parquet", label=LABEL, directory=root, id_column="row_id", name="digits"
    )
    return root


def _config(root: Path, execution: ExecutionSettings | None = None) -> Config:
    config = load_config(root / "poisonguard.toml")
    return config if execution is None else dataclasses.replace(config, execution=execution)


def _ledger(store: Store) -> list[tuple]:
    """Every batch's ledger row, without hashes or times, in batch order."""
    return sorted(
        (
            b.batch_id,
            b.status,
            b.rows_in,
            b.rows_clean,
            b.rows_quarantined,
            b.rows_rejected,
            b.reason,
        )
        for b in store.batches()
    )


def _outcome(root: Path) -> dict:
    """Where every row of every batch went, and why, without hashes (each store keys its
    own) or times."""
    store = Store(root / "store")
    ledger = _ledger(store)
    files = {}
    for f in store.files():
        if f.kind not in ("clean", "quarantine"):
            continue
        frame = read_parquet(store.root / f.path).sort_values("pg_row").reset_index(drop=True)
        # Each store keys its rows' hashes under its own key: checked here, not compared.
        assert list(frame["pg_row_hash"]) == list(store.row_hashes(frame)), f.path
        frame = frame.drop(columns="pg_row_hash")
        if "pg_reason" in frame:  # a reason naming a trained id names it by its keyed hash
            frame["pg_reason"] = frame["pg_reason"].str.replace(
                r"keyed id [0-9a-f]{16}", "keyed id", regex=True
            )
        files[f.path] = frame
    groups = {f.path: len(row_group_sizes(store.root / f.path)) for f in store.files("quarantine")}
    reports = {
        path.name: json.loads(path.read_text())["evidence"]
        for path in sorted((store.root / "reports").glob("*.json"))
    }
    flows = {e.batch_id: e.counts.flows for e in store.source_events() if e.counts is not None}
    return {
        "ledger": ledger,
        "files": files,
        "row_groups": groups,
        "evidence": reports,
        "flows": flows,
    }


@pytest.fixture(scope="module")
def both(demo_inputs, tmp_path_factory) -> tuple[dict, dict, list]:
    whole = _project(demo_inputs, tmp_path_factory.mktemp("whole") / "demo")
    chunked = _project(demo_inputs, tmp_path_factory.mktemp("chunked") / "demo")
    process_landing(_config(whole))
    run = process_landing(_config(chunked, TINY))
    return _outcome(whole), _outcome(chunked), run.records


def test_chunked_batches_end_as_whole_ones(both):
    """Every demo batch (Parquet with flipped labels and outliers, CSV with broken rows, a CSV
    of the wrong schema) ends with the same ledger counts, the same clean rows and the same
    held rows, stages, reasons and suspicion, in chunks of 37 rows as whole."""
    whole, chunked, _ = both
    assert_ends_alike(whole, chunked)


def test_chunked_batches_report_the_figures_of_whole_ones(both):
    """Each batch's report has the figures a whole batch's has, counted chunk by chunk:
    the same histograms, cuts, class balance and drift, and the same projection up to
    the rounding of its matrix products."""
    whole, chunked, _ = both
    assert_figures_alike(whole, chunked)


def assert_figures_alike(whole: dict, chunked: dict) -> None:
    """``_outcome``'s report figures of batches in chunks are those of the batches whole."""
    assert sorted(chunked["evidence"]) == sorted(whole["evidence"])
    drawn = 0
    for name, expected in whole["evidence"].items():
        got = chunked["evidence"][name]
        if expected is None:  # the batch of the wrong schema: rejected, never scored
            assert got is None, name
            continue
        drawn += 1
        assert got["detectors"] == expected["detectors"], name
        assert got["class_balance"] == expected["class_balance"], name
        assert got["drift"] == expected["drift"], name
        shown, want = got["projection"], expected["projection"]
        assert shown["reference"] == want["reference"], name
        for key in ("n_reference", "n_clean", "n_held"):
            assert shown[key] == want[key], name
        for key in ("clean", "held"):
            np.testing.assert_allclose(shown[key], want[key], atol=2e-3, err_msg=name)
    assert drawn >= 3
    # What each batch tells its source: the same label flows, summed chunk by chunk.
    assert sorted(chunked["flows"]) == sorted(whole["flows"])
    followed = 0
    for batch, expected in whole["flows"].items():
        got = chunked["flows"][batch]
        assert [(a, c) for a, c, _ in got] == [(a, c) for a, c, _ in expected], batch
        if expected:
            followed += 1
            np.testing.assert_allclose(
                [e for *_, e in got], [e for *_, e in expected], rtol=1e-9, atol=1e-9
            )
    assert followed >= 3


def assert_ends_alike(whole: dict, chunked: dict) -> None:
    """``_outcome`` of the demo batches in chunks (written chunk by chunk) is the one of the
    batches taken whole: ledger, clean rows, held rows, stages, reasons, suspicion, and the
    scores of the rows the detectors held."""
    assert len(chunked["row_groups"]) == 4  # every batch but the rejected one: held rows
    # Written chunk by chunk: many row groups, or one per held row where it holds few.
    assert all(
        n > 3 or n == len(chunked["files"][path]) for path, n in chunked["row_groups"].items()
    )
    assert set(whole["row_groups"].values()) == {1}
    assert chunked["ledger"] == whole["ledger"]
    assert sorted(chunked["files"]) == sorted(whole["files"])
    held = 0
    for path, expected in whole["files"].items():
        got = chunked["files"][path]
        assert list(got.columns) == list(expected.columns), path
        if path.startswith("clean/"):
            pd.testing.assert_frame_equal(got, expected, check_dtype=False)
            continue
        for column in expected.columns:
            if column.startswith("pg_score_") or column == "pg_suspicion":
                continue
            pd.testing.assert_series_equal(got[column], expected[column], check_dtype=False)
        np.testing.assert_allclose(got["pg_suspicion"], expected["pg_suspicion"], rtol=1e-9)
        # Scores are kept for the rows the detectors held (judge_chunks keeps no others).
        by_detectors = expected["pg_stage"].eq("detectors").to_numpy()
        for column in [c for c in expected.columns if c.startswith("pg_score_")]:
            np.testing.assert_allclose(
                got[column][by_detectors], expected[column][by_detectors], rtol=1e-9
            )
        held += len(expected)
    stages = {s for f in whole["files"].values() if "pg_stage" in f for s in f["pg_stage"]}
    assert held > 0 and {"expectations", "detectors"} <= stages
    # Batch 2's repeated ids, in different chunks of 37 rows, held as on the batch whole.
    repeated = [
        f.loc[f["pg_reason"].str.contains("is duplicated in the batch"), "pg_row"]
        for f in chunked["files"].values()
        if "pg_reason" in f
    ]
    rows = sorted(int(r) for part in repeated for r in part)
    assert len(rows) == 4 and len({r // TINY.chunk_rows for r in rows}) > 1


def test_schema_broken_batch_rejected_whole_in_chunks(both):
    """The demo's CSV with a missing column is rejected whole on the chunked path too."""
    records = both[2]
    rejected = [r for r in records if r.status == "rejected"]
    assert [r.source for r in rejected] == ["export/batch-05-wrong-schema.csv"]
    assert rejected[0].rows_rejected == rejected[0].rows_in and "missing column" in str(
        rejected[0].reason
    )


def test_whole_batch_expectation_rejects_chunked_batch(demo_inputs, tmp_path):
    """An expectation that needs the whole batch at once (`mostly` tolerates a share of it)
    cannot be checked chunk by chunk: the batch is rejected with a reason that says so, not
    passed."""
    import json

    root = _project(demo_inputs, tmp_path / "demo")
    suite_path = root / "expectations" / "digits.json"
    suite = json.loads(suite_path.read_text())
    rule = next(
        e for e in suite["expectations"] if e["type"] == "expect_column_values_to_be_unique"
    )
    rule["kwargs"]["mostly"] = 0.99
    suite_path.write_text(json.dumps(suite))
    keep_only(root / "landing", "batch-04-clean.parquet")
    run = process_landing(_config(root, TINY))
    (record,) = run.records
    assert record.status == "rejected"
    reason = str(record.reason)
    assert "expect_column_values_to_be_unique on column 'row_id' cannot be checked" in reason
    assert "'mostly' tolerates a share of the whole batch" in reason
    assert "chunk_bytes" in reason


@pytest.mark.parametrize("chunk", [1, 7, 250, 1000])
def test_drift_counted_in_chunks_equals_drift_of_the_batch(chunk):
    """``DriftCounts`` over a batch's chunks gives the KS distances, PSI and label test of the
    batch whole (the functions over every value), to the last bit: with ties, missing
    values, values outside the trusted range and a label the reference never had."""
    from poisonguard.detectors.base import Table
    from poisonguard.detectors.drift import DriftCounts, _ks, _psi, batch_drift

    rng = np.random.default_rng(3)

    def table(n: int, shift: float) -> Table:
        raw = rng.normal(shift, 1.0, (n, 3)) * [1.0, -1.0, 1.0]
        raw[:, :2] = np.round(raw[:, :2], 1)  # many ties; the last column's batch values
        # fall between the trusted ones
        raw[rng.random((n, 3)) < 0.05] = np.nan
        y = rng.integers(0, 4 if shift else 3, n)
        return Table(raw.astype(np.float32), raw, y, ("a", "b", "c"), classes=(0, 1, 2))

    reference, batch = table(400, 0.0), table(1000, 0.3)
    reference.raw[:, 2] = np.round(reference.raw[:, 2], 1)
    counts = DriftCounts(reference)
    for start in range(0, batch.n_rows, chunk):
        counts.add(batch.take(np.arange(start, min(start + chunk, batch.n_rows))))
    got = counts.report()
    whole = batch_drift(reference, batch)
    for f in range(3):
        r, b = reference.raw[:, f], batch.raw[:, f]
        r, b = r[np.isfinite(r)], b[np.isfinite(b)]
        assert (got.ks_statistic[f], got.ks_p_value[f]) == _ks(r, b)
        assert got.psi[f] == _psi(r, b, 10)
    assert (got.label_tv, got.label_chi2, got.label_p_value) == (
        whole.label_tv,
        whole.label_chi2,
        whole.label_p_value,
    )
    assert got.n_batch == batch.n_rows and got.is_drifted


def test_drift_counts_find_the_distance_between_trusted_values():
    """The KS distance can be reached by a batch value between two trusted ones (just below
    a trusted value the trusted share jumps at): counted in chunks, it is found there."""
    from poisonguard.detectors.base import Table
    from poisonguard.detectors.drift import DriftCounts, _ks

    def table(values: list[float]) -> Table:
        raw = np.array(values)[:, None]
        return Table(raw.astype(np.float32), raw, None, ("a",))

    reference, batch = table([0.0, 1.0, 1.0, 1.0]), table([0.5, 0.6, 2.0])
    counts = DriftCounts(reference)
    counts.add(batch.take(np.array([2])))
    counts.add(batch.take(np.array([0, 1])))
    assert counts.report().ks_statistic[0] == _ks(reference.raw[:, 0], batch.raw[:, 0])[0]
    assert counts.report().ks_statistic[0] == pytest.approx(2 / 3 - 1 / 4)


def test_a_chunked_batch_streams_into_an_object_store_data_location(
    both, demo_inputs, tmp_path, monkeypatch
):
    """With the data files on a filesystem that takes whole objects (``memory://`` stands in
    for S3), a chunked batch is streamed beside the store and put in whole: the ledger ends
    as the whole path's, and the files it lists are in the data location with their hashes."""
    import uuid

    import fsspec

    monkeypatch.delenv("POISONGUARD_LEDGER_URL", raising=False)
    root = _project(demo_inputs, tmp_path / "demo")
    url = f"memory://{uuid.uuid4().hex}/data"
    memory = fsspec.filesystem("memory")
    for path in (root / "store").rglob("*"):
        rel = path.relative_to(root / "store")
        if path.is_file() and rel.parts[0] in (
            "clean",
            "quarantine",
            "rejected",
            "reference",
            "anchor.json",
        ):
            memory.pipe_file(f"{url.removeprefix('memory://')}/{rel.as_posix()}", path.read_bytes())
            path.unlink()
    with open(root / "poisonguard.toml", "a") as f:
        f.write(f'\n[store]\ndata = "{url}"\n')
    config = _config(root, TINY)
    process_landing(config)
    store = Store(config.store, data=config.data)
    ledger = _ledger(store)
    assert ledger == both[0]["ledger"]
    for f in store.files("clean") + store.files("quarantine"):
        assert store.data.sha256(f.path) == f.sha256
    assert not list((root / "store").glob("clean/*.parquet"))
