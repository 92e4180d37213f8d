"""A batch judged in chunks gets exactly the decision it gets whole (``Guard.judge_chunks``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from poisonguard.attacks import plant
from poisonguard.config import DetectionSettings
from poisonguard.detectors import REGISTRY, Encoder, Table
from poisonguard.detectors.base import summarize_chunks
from poisonguard.errors import BatchError
from poisonguard.scan import Guard
from test_detectors import FEATURES
from test_detectors import blobs as separated_blobs
from test_detectors import mixed as mixed_table

#: The real tables, beside the repository (as benchmarks/common.py finds them).
TABLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tables"

#: Samples smaller than the batches below, so the sampled rules are the ones compared.
SMALL_SAMPLES = {"backdoor": {"max_batch": 300}, "label_excess": {"max_batch": 200}}


def blobs(n: int, seed: int) -> pd.DataFrame:
    """``test_detectors.blobs`` with two features whole numbers, so that values repeat."""
    frame = separated_blobs(n, seed)
    frame[["x4", "x5"]] = frame[["x4", "x5"]].round()
    return frame


def pieces(frame: pd.DataFrame, sizes: int | list[int]):
    """A callable yielding ``frame`` in chunks of ``sizes`` rows (a list: those sizes, in turn,
    then the rest in one chunk), as ``judge_chunks`` takes them."""

    def chunks():
        if isinstance(sizes, int):
            yield from (frame.iloc[i : i + sizes] for i in range(0, len(frame), sizes))
            return
        start = 0
        for size in sizes:
            yield frame.iloc[start : start + size]
            start += size
        yield frame.iloc[start:]

    return chunks


def assert_judged_alike(guard: Guard, frame: pd.DataFrame, chunkings, window=None, **kwargs):
    """``judge_chunks`` in every chunking holds the rows ``judge`` holds, with the same
    combined p-values (to 1e-12, relative), reasons, per-detector scores and p-values of
    the held rows, threshold and cuts. Returns the whole batch's decision."""
    _, scores, whole = guard.judge(frame, source="batch", window=window)
    for sizes in chunkings:
        found = guard.judge_chunks(pieces(frame, sizes), source="batch", window=window, **kwargs)
        assert_decided_alike(found, whole, scores, f"chunks of {sizes}")
    return whole


def assert_decided_alike(found, whole, scores, what: str = "") -> None:
    """A ``ChunkedDecision`` is the ``Decision`` (and raw ``scores``) of the batch whole."""
    held = np.flatnonzero(whole.quarantined)
    np.testing.assert_array_equal(found.held, held, err_msg=what)
    np.testing.assert_allclose(found.combined, whole.combined, rtol=1e-12, atol=0)
    np.testing.assert_allclose(found.suspicion, whole.suspicion, rtol=1e-12, atol=1e-300)
    assert found.reasons == tuple(whole.reasons[r] for r in held)
    np.testing.assert_allclose(found.p_values, whole.p_values[held], rtol=1e-12, atol=0)
    for name, s in scores.items():
        np.testing.assert_allclose(found.scores[name], s[held], rtol=1e-12, atol=1e-20)
    assert found.threshold == pytest.approx(whole.threshold, rel=1e-12, abs=0)
    assert found.p_cuts == pytest.approx(whole.p_cuts, rel=1e-12, abs=0)
    assert found.detectors == whole.detectors and found.n_rows == whole.combined.size
    assert (found.tally.rows, found.tally.below) == (whole.tally.rows, whole.tally.below)
    assert found.tally.within_p() == pytest.approx(whole.tally.within_p(), rel=1e-12, abs=0)


@pytest.fixture(scope="module")
def numeric():
    """A guard fitted on trusted blobs, and a clean batch of 1,200 rows from them."""
    guard = Guard(label="label").fit(blobs(2500, 1))
    return guard, blobs(1200, 2)


@pytest.fixture(scope="module")
def sampled():
    """The same with the backdoor's and label_excess's samples smaller than the batch."""
    settings = DetectionSettings(params=SMALL_SAMPLES)
    return Guard(label="label", settings=settings).fit(blobs(2500, 1)), blobs(1200, 2)


@pytest.mark.parametrize("kind", ["random_flip", "duplicate_flood", "backdoor"])
@pytest.mark.parametrize("which", ["numeric", "sampled"])
def test_numeric_poison_is_held_alike_whole_and_in_chunks(kind, which, request):
    """Random flips, a flood of copies and a backdoor in a numeric batch: chunks of 37 and
    500 rows, the batch as one chunk, and uneven chunks (single rows, an empty chunk) hold
    the same rows for the same reasons; also with samples smaller than the batch."""
    guard, batch = request.getfixturevalue(which)
    attack = plant(batch, label="label", kind=kind, rate=0.05, random_state=7)
    whole = assert_judged_alike(
        guard, attack.frame, [37, 500, len(batch), [1, 1, 0, 1, 299, 1, 0, 400]]
    )
    caught = whole.quarantined & attack.is_poison
    assert caught.sum() >= 0.5 * attack.is_poison.sum()  # the comparison is of real holds
    if kind == "backdoor":
        assert any("backdoor" in whole.reasons[r] for r in np.flatnonzero(caught))


def test_single_row_chunks_of_a_small_batch(numeric):
    """Forty rows, one chunk each, with a flood of copies among them."""
    guard, batch = numeric
    attack = plant(batch.iloc[:40], label="label", kind="duplicate_flood", rate=0.2, random_state=1)
    whole = assert_judged_alike(guard, attack.frame, [1])
    assert whole.quarantined.any()


def test_a_window_counts_alike_whole_and_in_chunks(sampled):
    """With a window of the source's earlier rows (a thin trigger in both), the windowed
    backdoor scan counts the window with the chunks as with the whole batch."""
    guard, batch = sampled
    attack = plant(batch, label="label", kind="backdoor", rate=0.01, random_state=3)
    earlier = blobs(400, 9)
    for column, value in (attack.trigger or {}).items():
        earlier.loc[:30, column] = value
    earlier.loc[:30, "label"] = attack.target
    whole = assert_judged_alike(guard, attack.frame, [37, len(batch)], window=earlier)
    reasons = [whole.reasons[r] for r in np.flatnonzero(whole.quarantined)]
    assert any("the 400 rows its source sent before" in r for r in reasons)
    np.testing.assert_array_equal(
        guard.window_suspects(attack.frame, earlier), guard.window_suspects(attack.frame, earlier)
    )


def test_empty_batches_and_chunks(numeric):
    """A batch of no chunks, or of empty chunks only, holds nothing and says so."""
    guard, batch = numeric
    for chunks in (list, lambda: [batch.iloc[:0], batch.iloc[:0]]):
        found = guard.judge_chunks(chunks)
        assert found.n_rows == 0 and found.held.size == 0 and found.reasons == ()
    _, _, whole = guard.judge(batch.iloc[:0])
    assert whole.quarantined.size == 0


def test_memory_mapped_rows_leave_nothing_behind(numeric, tmp_path):
    """With a directory, the per-row arrays are memory-mapped files there, unlinked at once:
    the same decision, and the directory is empty afterwards."""
    guard, batch = numeric
    attack = plant(batch, label="label", kind="random_flip", rate=0.05, random_state=2)
    assert_judged_alike(guard, attack.frame, [500], directory=tmp_path)
    found = guard.judge_chunks(pieces(attack.frame, 500), directory=tmp_path)
    assert isinstance(found.log_combined, np.memmap)
    assert list(tmp_path.iterdir()) == []


def test_chunks_that_change_between_reads_are_refused(numeric):
    """The chunks are read several times; a batch that grows meanwhile stops the judging."""
    guard, batch = numeric
    reads = []

    def chunks():
        reads.append(1)
        return [batch.iloc[: 100 + len(reads)]]

    with pytest.raises(BatchError, match="chunks changed while it was judged"):
        guard.judge_chunks(chunks)
    with pytest.raises(ValueError, match=r"'chunks' parameter of Guard\.judge_chunks\(\)"):
        guard.judge_chunks([batch])


@pytest.mark.parametrize("name", sorted(n for n, c in REGISTRY.items() if c.within_batch))
def test_summaries_merge_in_any_order_and_grouping(name, numeric):
    """Every within-batch detector: chunk summaries merged in shuffled order and in
    uneven groups score every row as the whole batch's own summary does."""
    guard, batch = numeric
    encoder = guard.encoder_
    attack = plant(batch, label="label", kind="backdoor", rate=0.05, random_state=5)
    table = encoder.transform(attack.frame)
    params = {"max_batch": 250} if "max_batch" in REGISTRY[name]._param_names() else {}
    det = REGISTRY[name](**params).fit(guard.reference_)
    whole = det.score(table)
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.choice(np.arange(1, table.n_rows), 11, replace=False))
    parts = [
        np.arange(a, b) for a, b in zip(np.r_[0, cuts], np.r_[cuts, table.n_rows], strict=True)
    ]

    def shuffled():
        return [(table.take(p), p) for p in rng.permutation(np.array(parts, dtype=object))]

    summary = None
    for _ in range(det.summary_passes):
        first, *rest = [det.summarize(t, positions=p, prior=summary) for t, p in shuffled()]
        summary = det.merge([det.merge(rest[:4]), first, det.merge(rest[4:])])
    again = summarize_chunks(det, shuffled(), prior=None)
    if det.summary_passes == 2:
        again = summarize_chunks(det, shuffled(), prior=again)
    for part in parts:
        np.testing.assert_array_equal(
            det.score(table.take(part), summary=summary, positions=part), whole[part]
        )
        np.testing.assert_array_equal(
            det.score(table.take(part), summary=again, positions=part), whole[part]
        )
    with pytest.raises(ValueError, match=r"'positions' parameter of .* must be an array of shape"):
        det.score(table.take(parts[0]), summary=summary, positions=parts[0][:-1])
    rows = np.flatnonzero(whole > np.quantile(whole, 0.9))[:5]
    assert det.explain(table.take(rows), np.arange(rows.size), summary=summary, positions=rows) == (
        det.explain(table, rows)
    )


def test_the_label_sample_is_drawn_by_label_share(numeric):
    """Past ``max_batch`` rows, a batch's own neighbours come from a sample that keeps each
    label's share (at least ``n_neighbors + 1`` rows of a rare one), every row below it."""
    guard, batch = numeric
    frame = pd.concat([batch.iloc[:900], batch[batch["label"] == "a"].iloc[:3]])
    table = guard.encoder_.transform(frame.assign(label=["a"] * 900 + ["c"] * 3))
    det = REGISTRY["label_excess"](max_batch=300).fit(guard.reference_)
    ids, _, r_y, _ = det.summary_of(table).sample
    assert np.all(np.diff(ids) > 0)
    assert np.bincount(r_y).tolist() == [round(900 * 300 / 903), 0, 3]
    small = det.summary_of(table.take(np.arange(250))).sample[0]
    np.testing.assert_array_equal(small, np.arange(250))


# ------------------------------------------------------------------- encoding


def mixed(n: int, seed: int) -> pd.DataFrame:
    """``test_detectors.mixed`` (a category, a boolean, free text, missing numbers) with its
    dates written as text, as a CSV carries them, some missing."""
    frame = mixed_table(n, seed)
    frame["since"] = frame["since"].dt.strftime("%m/%d/%Y").astype(object)
    frame.loc[np.random.default_rng(seed).random(n) < 0.05, "since"] = None
    return frame


def encode_chunks(encoder: Encoder, frame: pd.DataFrame, sizes) -> list[Table]:
    """``frame`` encoded chunk by chunk as ``judge_chunks`` does (the batch's date anchors)."""
    anchors: dict = {}
    tables = []
    for chunk in pieces(frame, sizes)():
        anchors = encoder.date_anchors(chunk, anchors)
        tables.append(encoder.transform(chunk, anchors=anchors))
    return tables


@pytest.mark.filterwarnings("ignore:Parsing dates in %d/%m/%Y format")
def test_encoding_in_chunks_is_the_whole_encoding():
    """Numbers, missing cells, categories (one never seen, in one chunk only), booleans,
    dates and labels encode alike in chunks. Dates written day first, as the batch's first
    date (25/12/2020) tells pandas, keep that reading in a chunk whose dates all have
    days of 12 or less, which pandas alone would read month first."""
    reference = mixed(600, 1)
    features = [*FEATURES, "plan", "urban", "since", "note"]
    encoder = Encoder.fit(reference, features, "label", {"since": "date"})
    assert encoder.kinds["since"] == "date" and encoder.kinds["plan"] == "categorical"
    batch = mixed(300, 2)
    when = pd.to_datetime(batch["since"], format="%m/%d/%Y")
    batch["since"] = when.dt.strftime("%d/%m/%Y").astype(object)
    batch.loc[:5, "since"] = None  # the batch's first date is in its third chunk
    batch.loc[6, "since"] = "25/12/2020"
    batch.loc[150:159, "since"] = [f"{d:02d}/04/2021" for d in range(1, 11)]
    batch.loc[150:159, "plan"] = "enterprise"  # never seen, in the one chunk
    whole = encoder.transform(batch)
    tables = encode_chunks(encoder, batch, [3, 0, 147, 10, 40])
    for attr in ("X", "raw", "codes", "y"):
        np.testing.assert_array_equal(
            np.concatenate([getattr(t, attr) for t in tables]), getattr(whole, attr)
        )
    assert whole.raw[150:160, whole.features.index("(values never seen)")].min() == 1
    since = whole.features.index("since")
    first_april = (pd.Timestamp("2021-04-01") - pd.Timestamp(0)) / pd.Timedelta(days=1)
    assert whole.raw[150, since] == first_april
    alone = encoder.transform(batch.iloc[150:160])  # pandas' own guess: month first
    assert alone.raw[0, since] != first_april

    # A date the batch's format cannot read stops the batch, whole and in chunks, even in
    # a chunk it would start (alone, pandas would guess that chunk's format from it).
    odd = batch.copy()
    odd.loc[[6, 7], "since"] = ["03/04/2021", "13/02/2021"]
    with pytest.raises(BatchError, match="'since' must hold dates"):
        encoder.transform(odd)
    with pytest.raises(BatchError, match="'since' must hold dates"):
        encode_chunks(encoder, odd, [7])


def test_mixed_batches_with_dates_are_judged_alike():
    """A mixed table with dates written as text, free text and unseen values, in chunks."""
    guard = Guard(label="label", columns={"since": "date"}).fit(mixed(1500, 1))
    batch = mixed(900, 2)
    batch.loc[400:409, "plan"] = "enterprise"
    attack = plant(batch, label="label", kind="category_swap", rate=0.05, random_state=4)
    assert_judged_alike(guard, attack.frame, [37, [5, 0, 395, 10]])


# ---------------------------------------------------------------- real tables


def real_table(name: str, label: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A trusted half and a batch half of one of the real tables."""
    path = TABLES / f"{name}.parquet"
    if not path.exists():
        pytest.skip(f"{path} is not there (../shared/data beside the repository)")
    frame = pd.read_parquet(path).dropna(subset=[label]).reset_index(drop=True)
    order = np.random.default_rng(0).permutation(len(frame))
    half = len(frame) // 2
    return frame.iloc[order[:half]], frame.iloc[order[half:]].reset_index(drop=True)


@pytest.fixture(scope="module")
def titanic():
    """titanic: strings, a category per class, missing ages; a guard on half of it."""
    reference, batch = real_table("titanic", "survived")
    return Guard(label="survived").fit(reference), reference, batch


@pytest.mark.parametrize("kind", ["categorical_backdoor", "subgroup_flip"])
def test_a_real_mixed_table_is_judged_alike(kind, titanic):
    """A categorical backdoor and subgroup flips on titanic, in chunks of 37 and 500 rows,
    whole, and with chunks cut where the passenger class changes (each chunk then holds
    categories no other chunk does)."""
    guard, reference, batch = titanic
    attack = plant(
        batch, label="survived", kind=kind, rate=0.1, reference=reference, random_state=0
    )
    by_class = attack.frame.sort_values("passengerClass", kind="stable").reset_index(drop=True)
    sizes = by_class["passengerClass"].value_counts(sort=False).sort_index().tolist()
    whole = assert_judged_alike(guard, attack.frame, [37, 500, len(batch)])
    assert (whole.quarantined & attack.is_poison).any()
    assert_judged_alike(guard, by_class, [sizes[:-1]])


def test_a_regression_table_is_judged_alike():
    """carseats, a numeric target: subgroup shifts and a flood, in chunks."""
    reference, batch = real_table("carseats", "Sales")
    guard = Guard(label="Sales", task="regression").fit(reference)
    for kind in ("subgroup_shift", "duplicate_flood"):
        attack = plant(
            batch, label="Sales", kind=kind, rate=0.1, reference=reference, random_state=1
        )
        whole = assert_judged_alike(guard, attack.frame, [1, 37, len(batch)])
        assert (whole.quarantined & attack.is_poison).any()
