"""The store: atomic files, the ledger, conservation, recovery and the audit chain."""

from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd
import pytest

from poisonguard.errors import BatchError, StoreError
from poisonguard.store import Outcome, Store, atomic_write_bytes, read_batch, sha256_file


def _frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"x": np.arange(n, dtype=float), "y": np.arange(n) % 2})


def test_commit_writes_files_then_a_ledger_row_with_their_hashes(tmp_path):
    store = Store(tmp_path)
    rec = store.commit(
        Outcome("b1", "s" * 64, "b1.parquet", "committed", 5, clean=_frame(3), quarantine=_frame(2))
    )
    assert (rec.rows_clean, rec.rows_quarantined, rec.rows_rejected) == (3, 2, 0)
    files = {f.kind: f for f in store.files()}
    assert files["clean"].rows == 3 and files["quarantine"].rows == 2
    assert sha256_file(tmp_path / files["clean"].path) == files["clean"].sha256
    assert store.read(files["clean"]).equals(_frame(3))


def test_clean_frame_reads_only_files_committed_since_the_last_call(tmp_path, monkeypatch):
    """Batch after batch, the clean set is not re-read: one new file, one read; the rows are
    those of every clean file in commit order, and a caller's edit does not reach the next."""
    store = Store(tmp_path)
    store.commit(Outcome("b1", "a" * 64, "f1", "committed", 3, clean=_frame(3)))
    first = store.clean_frame()
    first.loc[0, "x"] = -1.0  # the caller's copy only
    reads = []
    original = Store.read
    monkeypatch.setattr(
        Store, "read", lambda self, record: reads.append(record) or original(self, record)
    )
    store.commit(Outcome("b2", "b" * 64, "f2", "committed", 4, clean=_frame(4) + 10))
    both = Store(tmp_path).clean_frame()
    assert [r.batch_id for r in reads] == ["b2"]
    want = pd.concat([_frame(3), _frame(4) + 10], ignore_index=True)
    pd.testing.assert_frame_equal(both, want)


def test_commit_refuses_an_outcome_that_loses_rows(tmp_path):
    """Conservation is checked before anything is written: 3 + 1 != 5 rows."""
    store = Store(tmp_path)
    with pytest.raises(StoreError, match="3 clean \\+ 1 quarantined \\+ 0 rejected != 5"):
        store.commit(
            Outcome("b1", "a" * 64, "f", "committed", 5, clean=_frame(3), quarantine=_frame(1))
        )
    assert store.batches() == [] and store.files() == []


def test_the_same_content_cannot_be_committed_twice(tmp_path):
    store = Store(tmp_path)
    store.commit(Outcome("b1", "a" * 64, "f", "committed", 1, clean=_frame(1)))
    with pytest.raises(StoreError, match="already in the ledger"):
        store.commit(Outcome("b2", "a" * 64, "f", "committed", 1, clean=_frame(1)))


def test_recover_removes_what_an_interrupted_commit_left_and_nothing_else(tmp_path):
    """A batch file written by a run killed before its ledger commit goes; a stranger's file stays."""
    store = Store(tmp_path)
    store.commit(Outcome("b1", "a" * 64, "f", "committed", 1, clean=_frame(1)))
    store.staging_dir("b2")
    orphan = tmp_path / "clean" / "b2.parquet"
    atomic_write_bytes(orphan, b"half a batch")
    stranger = tmp_path / "clean" / "added-by-hand.parquet"
    atomic_write_bytes(stranger, b"not ours")
    tmp = tmp_path / "quarantine" / ".b3.parquet.x1.tmp"
    tmp.write_bytes(b"partial")
    removed = store.recover()
    assert sorted(removed) == sorted([orphan, tmp])
    assert not orphan.exists() and stranger.exists()
    assert (tmp_path / "clean" / "b1.parquet").exists()
    assert list((tmp_path / "staging").iterdir()) == []


def test_a_finished_commit_leaves_no_staging_marker(tmp_path):
    store = Store(tmp_path)
    store.commit(Outcome("b1", "a" * 64, "f", "committed", 1, clean=_frame(1)))
    assert list((tmp_path / "staging").iterdir()) == []


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    atomic_write_bytes(tmp_path / "a" / "f.bin", b"123")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["f.bin"]


def test_reject_keeps_the_file_as_it_arrived_with_its_reason(tmp_path):
    src = tmp_path / "bad.csv"
    src.write_text("a,b\n1,2\n")
    store = Store(tmp_path / "store")
    rec = store.reject(
        src,
        Outcome(
            "bad-1", sha256_file(src), str(src), "rejected", 1, rows_rejected=1, reason="no label"
        ),
    )
    assert rec.status == "rejected" and rec.rows_rejected == 1
    kept = tmp_path / "store" / "rejected" / "bad-1"
    assert (kept / "bad.csv").read_text() == "a,b\n1,2\n"
    assert "no label" in (kept / "reason.json").read_text()


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("empty.parquet", b"", "empty.parquet: the file is empty"),
        ("corrupt.parquet", b"PAR1 not really", "corrupt.parquet: not a readable Parquet file"),
        ("notes.txt", b"hello", "unknown file kind '.txt'"),
    ],
)
def test_unreadable_batches_raise_an_error_naming_the_file(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(BatchError, match=match):
        read_batch(path)


def test_csv_and_parquet_read_to_the_same_frame(tmp_path):
    frame = _frame(4)
    frame.to_csv(tmp_path / "a.csv", index=False)
    frame.to_parquet(tmp_path / "a.parquet", index=False)
    pd.testing.assert_frame_equal(
        read_batch(tmp_path / "a.csv"), read_batch(tmp_path / "a.parquet")
    )


def test_audit_chain_verifies_and_names_the_first_altered_entry(tmp_path):
    store = Store(tmp_path)
    for i in range(3):
        store.audit("note", actor="alice", detail={"i": i})
    assert store.verify_audit() is None
    with sqlite3.connect(store.ledger_path) as db:
        db.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 2")
    assert store.verify_audit() == "audit entry 2 (note) was altered: hash mismatch"
