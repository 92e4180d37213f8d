"""The store: atomic files, the ledger, conservation, recovery and the audit chain."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from poisonguard.errors import BatchError, StoreError
from poisonguard.store import Outcome, Store, atomic_write_bytes, read_batch, sha256_file


def _dead_pid() -> int:
    """The id of a process that has exited (as a killed run's would be)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"x": np.arange(n, dtype=float), "y": np.arange(n) % 2})


def test_commit_writes_files_then_a_ledger_row_with_their_hashes(tmp_path):
    store = Store(tmp_path, create=True)
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
    store = Store(tmp_path, create=True)
    store.commit(Outcome("b1", "a" * 64, "f1", "committed", 3, clean=_frame(3)))
    first = store.clean_frame()
    first.loc[0, "x"] = -1.0  # the caller's copy only
    reads = []
    original = Store.read
    monkeypatch.setattr(
        Store, "read", lambda self, record: reads.append(record) or original(self, record)
    )
    store.commit(Outcome("b2", "b" * 64, "f2", "committed", 4, clean=_frame(4) + 10))
    both = Store(tmp_path, create=True).clean_frame()
    assert [r.batch_id for r in reads] == ["b2"]
    want = pd.concat([_frame(3), _frame(4) + 10], ignore_index=True)
    pd.testing.assert_frame_equal(both, want)


def test_commit_refuses_an_outcome_that_loses_rows(tmp_path):
    """Conservation is checked before anything is written: 3 + 1 != 5 rows."""
    store = Store(tmp_path, create=True)
    with pytest.raises(StoreError, match="3 clean \\+ 1 quarantined \\+ 0 rejected != 5"):
        store.commit(
            Outcome("b1", "a" * 64, "f", "committed", 5, clean=_frame(3), quarantine=_frame(1))
        )
    assert store.batches() == [] and store.files() == []


def test_the_same_content_cannot_be_committed_twice(tmp_path):
    store = Store(tmp_path, create=True)
    store.commit(Outcome("b1", "a" * 64, "f", "committed", 1, clean=_frame(1)))
    with pytest.raises(StoreError, match="already in the ledger"):
        store.commit(Outcome("b2", "a" * 64, "f", "committed", 1, clean=_frame(1)))


def test_rejected_rows_are_read_back_from_their_quarantine_with_who_rejected_them(tmp_path):
    """The blocklist's rows come back as they were held, oldest rejection first, with the
    reviewer and time; a rejection whose row the store no longer holds is an error, not a
    row quietly let back in."""
    store = Store(tmp_path, create=True)
    held = _frame(4).assign(pg_batch="b1", pg_row=np.arange(4), pg_row_hash=list("abcd"))
    held["pg_reason"] = "held"
    store.commit(Outcome("b1", "a" * 64, "f", "committed", 4, quarantine=held))
    assert store.rejected_rows().empty
    store.commit_review("b1", "reject", held.iloc[[2, 0]], actor="alice", note="bad")
    rows = store.rejected_rows()
    assert rows["pg_row"].tolist() == [0, 2] and rows["x"].tolist() == [0.0, 2.0]
    assert (rows["pg_rejected_by"] == "alice").all() and "pg_reason" not in rows
    with sqlite3.connect(store.ledger_path) as db:
        db.execute("UPDATE blocklist SET pg_row = 9 WHERE pg_row = 2")
    with pytest.raises(StoreError, match="the blocklist names row 9 of batch b1"):
        store.rejected_rows()


def test_recover_removes_what_an_interrupted_commit_left_and_nothing_else(tmp_path):
    """A batch file written by a run killed before its ledger commit goes; a stranger's file stays."""
    store = Store(tmp_path, create=True)
    store.commit(Outcome("b1", "a" * 64, "f", "committed", 1, clean=_frame(1)))
    (store.staging_dir("b2") / ".owner").write_text(str(_dead_pid()))
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


def test_recover_leaves_work_of_another_host_until_no_run_can_own_it(tmp_path):
    """Runners on several hosts share one store: a staging folder whose owner ran on another
    host is not judged by this host's process ids. It is taken only by a run that holds the
    run lock and the write lock (``exclusive``), when no run or change anywhere can own it."""
    store = Store(tmp_path, create=True)
    (store.staging_dir("b2") / ".owner").write_text("1 a-runner-on-another-host")
    orphan = tmp_path / "clean" / "b2.parquet"
    atomic_write_bytes(orphan, b"half a batch")
    assert store.recover() == [] and orphan.exists()
    with store.writing():
        assert orphan.exists()
    with store.exclusive():
        assert not orphan.exists()
    assert list((tmp_path / "staging").iterdir()) == []


def test_a_finished_commit_leaves_no_staging_marker(tmp_path):
    store = Store(tmp_path, create=True)
    store.commit(Outcome("b1", "a" * 64, "f", "committed", 1, clean=_frame(1)))
    assert list((tmp_path / "staging").iterdir()) == []


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    atomic_write_bytes(tmp_path / "a" / "f.bin", b"123")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["f.bin"]


def test_reject_keeps_the_file_as_it_arrived_with_its_reason(tmp_path):
    src = tmp_path / "bad.csv"
    src.write_text("a,b\n1,2\n")
    store = Store(tmp_path / "store", create=True)
    rec = store.reject(
        src,
        "bad.csv",
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
        ("notes.txt", b"hello", "notes.txt: unknown file kind"),
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
    store = Store(tmp_path, create=True)
    for i in range(3):
        store.audit("note", actor="alice", detail={"i": i})
    assert store.verify_audit() is None
    with sqlite3.connect(store.ledger_path) as db:
        db.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 2")
    assert store.verify_audit() == "audit entry 2 (note) was altered: hash mismatch"


def test_a_store_is_opened_only_where_one_was_created(tmp_path):
    """A mistyped store path is an error naming it, not a new empty store."""
    with pytest.raises(StoreError, match=r"no poisonguard store at .*stor \(no ledger.sqlite\)"):
        Store(tmp_path / "stor")
    assert not (tmp_path / "stor").exists()


def test_the_store_and_its_key_are_owner_only(tmp_path):
    store = Store(tmp_path / "store", create=True)
    store.commit(Outcome("b1", "a" * 64, "f", "committed", 1, clean=_frame(1)))
    assert (tmp_path / "store").stat().st_mode & 0o777 == 0o700
    for path in (
        store.ledger_path,
        store.key_path,
        store.anchor_path,
        tmp_path / "store" / "clean" / "b1.parquet",
    ):
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_a_deleted_ledger_is_named_when_its_key_remains(tmp_path):
    store = Store(tmp_path / "store", create=True)
    store.ledger_path.unlink()
    with pytest.raises(StoreError, match=r"ledger\.sqlite is missing, but the audit key"):
        Store(tmp_path / "store")


def test_a_corrupt_ledger_is_a_one_line_store_error(tmp_path):
    store = Store(tmp_path / "store", create=True)
    store.ledger_path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot be opened as a poisonguard ledger") as caught:
        Store(tmp_path / "store")
    assert "\n" not in str(caught.value)


def _chain(tmp_path) -> Store:
    store = Store(tmp_path / "store", create=True)
    for i in range(4):
        store.audit("note", actor="alice", detail={"i": i})
    assert store.verify_audit() is None
    return store


def test_an_audit_chain_rewritten_without_the_key_is_detected(tmp_path):
    """Altering an entry and recomputing every hash after it still fails: the MACs need the key."""
    store = _chain(tmp_path)
    log = store.audit_log()
    prev = log[1]["hash"]
    with sqlite3.connect(store.ledger_path) as db:
        for entry in log[2:]:
            actor = "mallory" if entry["seq"] == 3 else entry["actor"]
            digest = Store._entry_hash(
                prev, entry["at"], entry["action"], entry["batch_id"], actor, entry["detail"]
            )
            db.execute(
                "UPDATE audit SET actor = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                (actor, prev, digest, entry["seq"]),
            )
            prev = digest
    assert "audit entry 3 (note) was not written with this store's audit key" in (
        store.verify_audit() or ""
    )


def test_a_truncated_audit_chain_is_detected(tmp_path):
    store = _chain(tmp_path)
    with sqlite3.connect(store.ledger_path) as db:
        db.execute("DELETE FROM audit WHERE seq >= 4")
    assert "is not in the audit chain, which ends at entry 3" in (store.verify_audit() or "")


def test_a_missing_anchor_or_key_is_detected(tmp_path):
    store = _chain(tmp_path)
    store.anchor_path.unlink()
    assert "anchor" in (store.verify_audit() or "") and "is missing" in store.verify_audit()
    store.key_path.unlink()
    assert "audit key" in (Store(tmp_path / "store").verify_audit() or "")


def test_two_stores_cannot_share_one_key_by_accident(tmp_path):
    """Creating a store where a key but no ledger exists is refused (a store was deleted)."""
    Store(tmp_path / "store", create=True).ledger_path.unlink()
    with pytest.raises(StoreError, match="already exists but the store"):
        Store(tmp_path / "store", create=True)
