"""The ledger contract: every backend of ``Ledger`` keeps the same records, transactions, locks
and audit chain. Each test runs over the embedded SQLite ledger and a PostgreSQL ledger on a
throw-away server (``tests/postgres_server.py``; skipped, saying why, where none can run).

Locks and the audit chain are tested against a second process, as a second runner would be.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from landed import keep_only
from poisonguard.errors import StoreError
from poisonguard.store import (
    ERASED,
    GENESIS,
    LEDGER_ERRORS,
    SCHEMA_VERSION,
    AuditChain,
    AuditEntry,
    BatchRecord,
    Blocked,
    FileRecord,
    Landed,
    Ledger,
    Outcome,
    ReferenceSample,
    ReferenceVersion,
    Review,
    Store,
    reference_digest,
)
from poisonguard.store.audit import entry_hash
from poisonguard.store.files import DataFiles, write_new_key

BACKENDS = ("sqlite", "postgresql")
AT = "2026-12-01T10:00:00+00:00"


def open_ledger(spec: dict[str, str]) -> Ledger:
    """The ledger a spec names: ``{"backend": "sqlite", "root": ...}`` or
    ``{"backend": "postgresql", "url": ..., "schema": ...}`` (here and in child processes)."""
    if spec["backend"] == "sqlite":
        from poisonguard.store import SqliteLedger

        return SqliteLedger(spec["root"])
    from poisonguard.store.postgres import PostgresLedger

    return PostgresLedger(spec["url"], spec["schema"])


@pytest.fixture(params=BACKENDS)
def spec(request, tmp_path) -> dict[str, str]:
    """How to open a new, not yet created ledger of each backend, with a store folder."""
    root = tmp_path / "store"
    root.mkdir()
    if request.param == "sqlite":
        return {"backend": "sqlite", "root": str(root)}
    server = request.getfixturevalue("postgres")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    return {"backend": "postgresql", "url": server.url(), "schema": schema, "root": str(root)}


@pytest.fixture
def ledger(spec):
    made = open_ledger(spec)
    yield made
    if hasattr(made, "close"):
        made.close()


@pytest.fixture
def created(ledger):
    ledger.create()
    return ledger


def child(spec: dict[str, str], body: str, *args: Any) -> subprocess.Popen[str]:
    """Run ``body`` in another Python process with ``ledger`` opened from ``spec``
    (``sys.argv[2:]`` are ``args``)."""
    code = "\n".join(
        [
            "from __future__ import annotations",
            "import json, sys",
            textwrap.dedent(inspect.getsource(open_ledger)),
            "ledger = open_ledger(json.loads(sys.argv[1]))",
            textwrap.dedent(body),
        ]
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(spec), *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    """A child's output, once it exited cleanly."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


def _batch(batch_id: str, status: str = "committed", **changes: Any) -> BatchRecord:
    record = BatchRecord(
        batch_id=batch_id,
        sha256=f"{batch_id:x<64}"[:64],
        source=f"{batch_id}.parquet",
        status=status,
        rows_in=10,
        rows_clean=7,
        rows_quarantined=3,
        rows_rejected=0,
        reason=None,
        started_at=AT,
        finished_at=AT,
        reference_version=1,
    )
    return replace(record, **changes)


def _file(batch_id: str, kind: str = "clean", rows: int | None = 7) -> FileRecord:
    return FileRecord(f"{kind}/{batch_id}.parquet", batch_id, kind, f"{kind}{batch_id}", rows)


def _entry(prev: str, action: str = "note") -> AuditEntry:
    digest = entry_hash(prev, AT, action, None, "tester", "{}")
    return AuditEntry(AT, action, None, "tester", "{}", prev, digest, "mac")


# --------------------------------------------------------------------------- creation, versions


def test_a_new_ledger_exists_only_once_created_and_is_at_the_current_schema(ledger):
    assert not ledger.exists()
    ledger.create()
    assert ledger.exists() and ledger.schema_version() == SCHEMA_VERSION
    assert ledger.batches() == [] and ledger.audit_head() is None and ledger.references() == []


def test_an_older_ledger_is_migrated_step_by_step_and_only_once(ledger):
    """A version-2 ledger reaches the current schema in one transaction, each step reported
    to the store's step; the reference tables exist only after it; a second upgrade does
    nothing."""
    ledger.create(version=2)
    assert ledger.schema_version() == 2
    steps: list[tuple[int, int]] = []
    with ledger.transaction() as tx:
        tx.upgrade(lambda version, to: steps.append((version, to)))
        tx.add_batch(_batch("b1"))
        tx.add_files([_file("b1")], AT)
        tx.add_reference(ReferenceVersion(1, "d", 7, (_file("b1"),), "me", "", AT))
    every_step = [(v, v + 1) for v in range(2, SCHEMA_VERSION)]
    assert steps == every_step and ledger.schema_version() == SCHEMA_VERSION
    assert ledger.references()[0].files == (_file("b1"),)
    with ledger.transaction() as tx:
        tx.upgrade(lambda version, to: steps.append((version, to)))
    assert steps == every_step


def test_a_failed_migration_step_leaves_the_older_ledger_as_it_was(ledger):
    ledger.create(version=2)

    def fail(version: int, to: int) -> None:
        raise RuntimeError("the data step failed")

    with pytest.raises(RuntimeError, match="data step failed"), ledger.transaction() as tx:
        tx.upgrade(fail)
    assert ledger.schema_version() == 2
    with ledger.transaction() as tx:
        tx.upgrade(lambda version, to: None)
    assert ledger.schema_version() == SCHEMA_VERSION


def _set_version(spec: dict[str, str], version: int) -> None:
    """Write a schema version as another poisonguard would have (outside the protocol)."""
    if spec["backend"] == "sqlite":
        import sqlite3

        with sqlite3.connect(Path(spec["root"]) / "ledger.sqlite") as db:
            db.execute(f"PRAGMA user_version = {version}")
    else:
        import psycopg

        with psycopg.connect(spec["url"]) as db:
            db.execute(f"UPDATE {spec['schema']}.ledger_meta SET version = %s", (version,))


def test_a_ledger_of_a_version_this_code_does_not_read_is_refused(spec, created):
    _set_version(spec, SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match=rf"ledger schema {SCHEMA_VERSION + 1}, this poisonguard"):
        created.schema_version()
    with pytest.raises(ValueError, match=r"'version' parameter of create\(\) must be in"):
        open_ledger({**spec, "schema": "t_other"}).create(version=1)


def test_a_store_on_an_older_ledger_migrates_its_seed_into_reference_version_1(spec, ledger):
    """The store's data steps run inside the backend's upgrade: the seed becomes reference
    version 1, every step is audited, and the chain verifies. Its file is not there to draw a
    sample from: the version keeps none, and the step says why."""
    ledger.create(version=2)
    with ledger.transaction() as tx:
        tx.add_audit(_entry(GENESIS, "init"))  # a schema-2 chain had entries already
    _insert_v2_seed(spec)
    root = Path(spec["root"])
    write_new_key(root.parent / "store.key")
    for sub in ("clean", "quarantine", "rejected", "reports", "staging"):
        (root / sub).mkdir()
    store = Store(root, ledger=ledger)
    assert ledger.schema_version() == SCHEMA_VERSION
    (v1,) = store.references()
    assert v1.batch_ids == ("seed-old",) and v1.rows == 5
    # 2 -> 3 (the seed's reference), 3 -> 4 (the blocklist keyed; it is empty), 4 -> 5 (samples).
    assert [e["action"] for e in store.audit_log()] == ["init", "reference", *["migrate"] * 3]
    sampled = json.loads(store.audit_log()[-1]["detail"])
    assert v1.sample is None and "clean/seed-old.parquet" in sampled["why"]


def _insert_v2_seed(spec: dict[str, str]) -> None:
    """A seed batch and its clean file as a schema-2 poisonguard recorded them."""
    statements = [
        (
            "INSERT INTO batches (batch_id, sha256, source, status, rows_in, rows_clean, "
            "started_at, finished_at) VALUES ('seed-old', 'abc', 's.parquet', 'seed', 5, 5, ?, ?)",
            (AT, AT),
        ),
        (
            "INSERT INTO files (path, batch_id, kind, sha256, rows, created_at) "
            "VALUES ('clean/seed-old.parquet', 'seed-old', 'clean', 'h', 5, ?)",
            (AT,),
        ),
    ]
    if spec["backend"] == "sqlite":
        import sqlite3

        with sqlite3.connect(Path(spec["root"]) / "ledger.sqlite") as db:
            for statement, args in statements:
                db.execute(statement, args)
    else:
        import psycopg

        with psycopg.connect(spec["url"]) as pg:
            pg.execute(f"SET search_path TO {spec['schema']}")
            for statement, args in statements:
                pg.execute(statement.replace("?", "%s"), args)


# --------------------------------------------------------------------------- records


def test_batches_read_back_as_written_in_their_orders(created):
    early = "2026-12-01T09:00:00+00:00"
    seed = _batch("seed", "seed", reference_version=None, started_at=early, finished_at=early)
    later = _batch("b2", started_at="2026-12-01T11:00:00+00:00")
    with created.transaction() as tx:
        for record in (seed, _batch("b1"), later, _batch("b0")):
            tx.add_batch(record)
        assert tx.batch("b1") == _batch("b1")  # a transaction sees its own writes
    assert created.batch("b1") == _batch("b1") and created.batch("nope") is None
    assert created.batch_by_sha(later.sha256) == later and created.batch_by_sha("x") is None
    assert [b.batch_id for b in created.batches()] == ["seed", "b0", "b1", "b2"]
    # The last committed first: the latest finish, then the last recorded.
    assert [b.batch_id for b in created.committed()] == ["b0", "b2", "b1"]


def test_row_counts_move_and_a_revoked_batch_counts_every_row_rejected(created):
    with created.transaction() as tx:
        tx.add_batch(_batch("b1"))
        tx.move_rows("b1", 2, "quarantined", "clean")
        with pytest.raises(ValueError, match="rows move between"):
            tx.move_rows("b1", 1, "clean", "elsewhere")
    b1 = created.batch("b1")
    assert b1 is not None and (b1.rows_clean, b1.rows_quarantined) == (9, 1)
    with created.transaction() as tx:
        tx.revoke_batch("b1", "poisoned")
    b1 = created.batch("b1")
    assert b1 is not None and (b1.status, b1.reason) == ("revoked", "poisoned")
    assert (b1.rows_clean, b1.rows_quarantined, b1.rows_rejected) == (0, 0, 10)


def test_files_keep_their_order_and_change_kind_only_from_the_kind_asked(created):
    with created.transaction() as tx:
        tx.add_batch(_batch("b1"))
        tx.add_batch(_batch("b2"))
        tx.add_files([_file("b2"), _file("b1"), _file("b1", "quarantine", 3)], AT)
        tx.add_files([_file("b1", "rejected", None)], "2026-12-01T12:00:00+00:00")
    assert created.files() == [
        _file("b2"),
        _file("b1"),
        _file("b1", "quarantine", 3),
        _file("b1", "rejected", None),
    ]
    assert created.files("clean") == [_file("b2"), _file("b1")]
    with created.transaction() as tx:
        tx.set_kind(["clean/b1.parquet", "quarantine/b1.parquet"], "revoked", was="clean")
        tx.set_kind(["clean/b2.parquet"], "superseded")
    assert [f.kind for f in created.files()] == ["superseded", "revoked", "quarantine", "rejected"]


def test_reviews_blocklist_and_landing_memo_read_back(created):
    with created.transaction() as tx:
        tx.add_batch(_batch("b1"))
        tx.add_reviews(
            [
                Review("b1", 2, "reject", "ann", "bad", "2026-12-01T12:00:00+00:00"),
                Review("b1", 1, "release", "bob", "ok", AT),
            ]
        )
        tx.block([Blocked("h1", "b1", 2, "ann", AT)])
        tx.block([Blocked("h1", "b9", 9, "eve", AT), Blocked("h0", "b1", 3, "ann", AT)])
        tx.remember(Landed("a.csv", 10, 5, None, None, "skipped", "settling", AT))
        tx.remember(Landed("a.csv", 11, 6, "s", "b1", "batch", None, AT))
        tx.remember(Landed("z.csv", 1, 2**62, None, None, "skipped", "empty", AT))
    assert [r.pg_row for r in created.reviews()] == [1, 2]
    assert created.reviews("b1")[1] == Review(
        "b1", 2, "reject", "ann", "bad", "2026-12-01T12:00:00+00:00"
    )
    assert created.reviews("other") == []
    # By time, batch and row; a hash already listed keeps its first entry.
    assert created.blocked() == [
        Blocked("h1", "b1", 2, "ann", AT),
        Blocked("h0", "b1", 3, "ann", AT),
    ]
    landed = created.landed()
    assert list(landed) == ["a.csv", "z.csv"] and landed["z.csv"].mtime_ns == 2**62
    assert created.landed_entry("a.csv") == Landed("a.csv", 11, 6, "s", "b1", "batch", None, AT)
    assert created.landed_entry("nope") is None
    with created.transaction() as tx:
        tx.drop_reviews("b1", [2])
    assert [r.pg_row for r in created.reviews("b1")] == [1]


def test_an_erasure_takes_rows_out_of_counts_reviews_and_blocklist_and_compaction_keeps_the_rest(
    spec, created
):
    """``forget_rows``, ``unblock`` and ``compact``: the other records read back as before and,
    in the embedded ledger, a deleted note's bytes are in neither the file nor its log."""
    note = "subject-note-4f1c9e"
    # Another process's open connection keeps SQLite's write-ahead log from being removed
    # when ours close: what compaction leaves in it is then there to be found.
    other = contextlib.ExitStack()
    if spec["backend"] == "sqlite":
        held = other.enter_context(contextlib.closing(sqlite3.connect(created.path)))
        held.execute("SELECT count(*) FROM batches").fetchone()
    with created.transaction() as tx:
        tx.add_batch(_batch("b1", rows_in=12, rows_rejected=2))
        tx.add_files([_file("b1"), _file("b1", "quarantine", 3)], AT)
        tx.add_reviews(
            [
                Review("b1", 2, "reject", "ann", note, AT),
                Review("b1", 4, "release", "bob", "ok", AT),
            ]
        )
        tx.block([Blocked("h1", "b1", 2, "ann", AT), Blocked("h2", "b1", 3, "ann", AT)])
    with created.transaction() as tx:
        tx.forget_rows("b1", 1, 1, 1, rows_in=3)
        tx.drop_reviews("b1", [2])
        tx.unblock(["h1"])
        tx.set_kind(["clean/b1.parquet"], ERASED)
    created.compact()
    b1 = created.batch("b1")
    assert b1 is not None
    assert (b1.rows_in, b1.rows_clean, b1.rows_quarantined, b1.rows_rejected) == (9, 6, 2, 1)
    assert created.blocked() == [Blocked("h2", "b1", 3, "ann", AT)]
    assert created.reviews() == [Review("b1", 4, "release", "bob", "ok", AT)]
    assert [f.kind for f in created.files()] == [ERASED, "quarantine"]
    if spec["backend"] == "sqlite":
        found = [
            p.name
            for p in Path(spec["root"]).glob("ledger.sqlite*")
            if note.encode() in p.read_bytes()
        ]
        assert found == []
    other.close()


def test_reference_versions_keep_their_files_in_order(created):
    files = (_file("seed"), _file("b1"))
    with created.transaction() as tx:
        tx.add_batch(_batch("seed", "seed"))
        tx.add_batch(_batch("b1"))
        tx.add_files(list(files), AT)
        tx.add_reference(
            ReferenceVersion(1, reference_digest(["a"]), 7, files[:1], "pg", "seed", AT)
        )
        tx.add_reference(
            ReferenceVersion(2, reference_digest(["a", "b"]), 14, files[::-1], "ann", "", AT)
        )
    v1, v2 = created.references(every=True)
    assert (v1.version, v1.files, v2.files) == (1, files[:1], files[::-1])
    assert created.references() == [v2] and created.references(1) == [v1]
    assert created.references(3) == []


def test_a_reference_version_keeps_its_sample_given_with_it_or_set_later(created):
    """A version's sample (path, hash, rows, rule) reads back as written, whether it came with
    the version or was set afterwards (a migration); a version without one reads None."""
    sample = ReferenceSample("reference/version-1.parquet", "s" * 64, 2**40, '{"limit": 9}')
    with created.transaction() as tx:
        tx.add_batch(_batch("seed", "seed"))
        tx.add_files([_file("seed")], AT)
        tx.add_reference(ReferenceVersion(1, "d", 7, (_file("seed"),), "pg", "", AT, sample))
        tx.add_reference(ReferenceVersion(2, "e", 7, (_file("seed"),), "pg", "", AT))
    v1, v2 = created.references(every=True)
    assert (v1.sample, v2.sample) == (sample, None)
    later = replace(sample, path="reference/version-2.parquet")
    with created.transaction() as tx:
        tx.set_sample(2, later)
    assert created.references()[0].sample == later and created.references(1)[0].sample == sample


def test_audit_entries_read_back_in_order_and_the_head_is_the_last(created):
    first = _entry(GENESIS)
    second = _entry(first.hash, "ingest")
    with created.transaction() as tx:
        assert tx.audit_head() is None
        tx.add_audit(first)
        assert tx.audit_head() == (1, first.hash)
        tx.add_audit(second)
    log = created.audit_log()
    assert [next(iter(e)) for e in log] == ["seq", "seq"]
    assert [(e["seq"], e["action"], e["prev_hash"], e["hash"]) for e in log] == [
        (1, "note", GENESIS, first.hash),
        (2, "ingest", first.hash, second.hash),
    ]
    assert set(log[0]) == {"seq", *AuditEntry.__dataclass_fields__}
    assert created.audit_head() == (2, second.hash)
    assert created.audit_since(0) == log
    assert created.audit_since(1) == log[1:] and created.audit_since(2) == []


def test_an_entry_that_does_not_follow_the_head_is_refused_and_nothing_is_written(created):
    """Two entries after one would fork the chain: the ledger itself refuses the second."""
    first = _entry(GENESIS)
    with created.transaction() as tx:
        tx.add_audit(first)
    for stale in (GENESIS, "f" * 64):
        with pytest.raises(StoreError, match="would fork the chain"), created.transaction() as tx:
            tx.add_batch(_batch("b1"))
            tx.add_audit(_entry(stale, "fork"))
    assert created.audit_head() == (1, first.hash) and created.batches() == []


# --------------------------------------------------------------------------- transactions


def test_a_transaction_that_fails_records_nothing(created):
    with pytest.raises(RuntimeError, match="mid-commit"), created.transaction() as tx:
        tx.add_batch(_batch("b1"))
        tx.add_files([_file("b1")], AT)
        tx.add_audit(_entry(GENESIS))
        raise RuntimeError("mid-commit")
    assert created.batches() == [] and created.files() == [] and created.audit_head() is None
    with pytest.raises((StoreError, *LEDGER_ERRORS)), created.transaction() as tx:
        tx.add_batch(_batch("b1"))
        tx.add_batch(_batch("b1"))  # the same batch twice breaks a constraint
    assert created.batches() == []


def test_a_transaction_is_seen_by_others_only_once_committed(spec, created):
    other = open_ledger(spec)
    with created.transaction() as tx:
        tx.add_batch(_batch("b1"))
        assert other.batch("b1") is None
    assert other.batch("b1") == _batch("b1")
    if hasattr(other, "close"):
        other.close()


# --------------------------------------------------------------------------- locks

_HOLD = """
from poisonguard.errors import StoreError
lock = ledger.write_lock(float(sys.argv[2]), "the test store") if sys.argv[3] == "write" else ledger.run_lock()
try:
    with lock:
        print("held", flush=True)
        sys.stdin.readline()
except StoreError as exc:
    print("refused:", exc, flush=True)
"""


def test_the_write_lock_is_reentrant_within_a_process(created):
    with created.write_lock(1, "the store") as outer, created.write_lock(1, "the store") as inner:
        assert (outer, inner) == (True, False)
    with created.write_lock(1, "the store") as again:
        assert again


def _lock(ledger: Ledger, which: str, wait: float) -> contextlib.AbstractContextManager[Any]:
    """The ledger's write lock (waiting ``wait`` seconds) or its run lock (not waiting)."""
    return ledger.write_lock(wait, "the store") if which == "write" else ledger.run_lock()


@pytest.mark.parametrize("which", ["write", "run"])
def test_a_lock_held_here_excludes_a_second_process_until_released(spec, created, which):
    with _lock(created, which, 60):
        out = finished(child(spec, _HOLD, 0.3, which))
    if which == "write":
        assert "refused: the test store is busy: another poisonguard process is changing it" in out
    else:
        assert "refused: another poisonguard run holds" in out
    proc = child(spec, _HOLD, 0.3, which)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    finished(proc)


@pytest.mark.parametrize("which", ["write", "run"])
def test_a_lock_of_a_killed_process_is_free_at_once(spec, created, which):
    proc = child(spec, _HOLD, 0.3, which)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    with pytest.raises(StoreError, match=r"busy|holds"), _lock(created, which, 0.2):
        pass
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with _lock(created, which, 10):
        pass


def test_two_stores_do_not_share_locks(spec, created, tmp_path):
    """Locks are keyed from the store (its folder, or its schema): another store's runs
    and changes go on beside this one's."""
    (tmp_path / "other").mkdir()
    other = open_ledger({**spec, "root": str(tmp_path / "other"), "schema": "t_other_store"})
    other.create()
    with (
        created.write_lock(1, "this store"),
        created.run_lock(),
        other.write_lock(0.2, "that store") as outer,
        other.run_lock(),
    ):
        assert outer


def test_a_second_run_lock_in_the_same_process_is_refused(created):
    with (
        created.run_lock(),
        pytest.raises(StoreError, match="another poisonguard run holds"),
        created.run_lock(),
    ):
        pass


# --------------------------------------------------------------------------- the audit chain

_APPEND = """
import time
from pathlib import Path
from poisonguard.store import audit
from poisonguard.store.files import now
# A slow writer: time passes between reading the head and appending after it.
audit.now = lambda: (time.sleep(0.005), now())[1]
chain = audit.AuditChain(Path(sys.argv[2]), audit.DataFiles(sys.argv[3]))
go = Path(sys.argv[4])
while not go.exists():
    time.sleep(0.001)
for i in range(int(sys.argv[6])):
    with ledger.transaction() as tx:
        chain.append(tx, "note", None, sys.argv[5], {"i": i})
"""


def test_appends_from_two_processes_at_once_leave_one_chain_that_verifies(spec, created, tmp_path):
    """Without the write lock, two processes append 25 entries each at the same time, each
    pausing between reading the head and appending: every entry lands, in one unforked chain."""
    key, go = tmp_path / "audit.key", tmp_path / "go"
    write_new_key(key)
    n = 25
    procs = [child(spec, _APPEND, key, tmp_path, go, who, n) for who in ("ann", "bob")]
    go.touch()
    for proc in procs:
        finished(proc)
    log = created.audit_log()
    assert [e["seq"] for e in log] == list(range(1, 2 * n + 1))
    assert [e["prev_hash"] for e in log] == [GENESIS] + [e["hash"] for e in log[:-1]]
    for who in ("ann", "bob"):
        assert [json.loads(e["detail"])["i"] for e in log if e["actor"] == who] == list(range(n))
    chain = AuditChain(key, DataFiles(tmp_path))
    chain.write_anchor(created)
    assert chain.verify(created) is None


_COMMIT = """
import numpy as np, pandas as pd
from poisonguard.store import Outcome, Store
store = Store(json.loads(sys.argv[1])["root"], ledger=ledger)
for i in range(int(sys.argv[3])):
    frame = pd.DataFrame({"x": np.arange(5.0) + i, "who": sys.argv[2]})
    batch = f"{sys.argv[2]}-{i}"
    store.commit(Outcome(batch, f"{batch:x<64}", batch, "committed", 5, clean=frame))
"""


def test_two_processes_committing_to_one_store_leave_every_batch_and_a_verified_store(spec, ledger):
    """Each commit writes its files and its ledger row under the write lock: the store's
    files, counts and audit chain all check out after both are done."""
    store = Store(spec["root"], create=True, ledger=ledger)
    seed = pd.DataFrame({"x": np.arange(5.0), "who": "seed"})
    store.commit(Outcome("seed", "s" * 64, "seed", "seed", 5, clean=seed))
    procs = [child(spec, _COMMIT, who, 4) for who in ("ann", "bob")]
    for proc in procs:
        finished(proc)
    assert len(store.batches()) == 9 and len(store.files("clean")) == 9
    assert store.verify_files() == [] and store.verify_audit() is None
    assert len(store.clean_frame()) == 45


def test_a_copy_of_a_store_has_an_embedded_ledger_with_every_record(spec, ledger, tmp_path):
    """``copy_store`` (the red team's sandbox) copies any ledger into a ledger.sqlite of the
    copy's own: the same batches, files in order, reviews, reference versions and chain."""
    from poisonguard.config import LedgerSettings
    from poisonguard.store import copy_store

    store = Store(spec["root"], create=True, ledger=ledger)
    seed = pd.DataFrame({"x": np.arange(5.0), "pg_row": np.arange(5)})
    store.commit(Outcome("seed", "s" * 64, "seed", "seed", 5, clean=seed))
    held = seed.assign(pg_row_hash=[f"h{i}" for i in range(5)])
    store.commit(Outcome("b1", "b" * 64, "b1", "committed", 5, quarantine=held))
    store.commit_review("b1", "reject", held.iloc[[1]], actor="ann", note="bad")
    settings = None if spec["backend"] == "sqlite" else LedgerSettings(spec["url"], spec["schema"])
    copy_store(spec["root"], tmp_path / "copy", tmp_path / "copy.key", settings)
    copy = Store(tmp_path / "copy")
    assert (tmp_path / "copy" / "ledger.sqlite").is_file()
    assert copy.batches() == store.batches() and copy.files() == store.files()
    assert copy.references() == store.references() and copy.audit_log() == store.audit_log()
    assert copy.reviews().equals(store.reviews())
    assert copy.blocklist() == store.blocklist() == set(store.row_hashes(held.iloc[[1]]))
    assert copy.verify_files() == []


# --------------------------------------------------------------------------- PostgreSQL's own


def test_a_postgresql_ledger_never_shows_its_password(postgres):
    """Its location, and the error of a refused login, name the server without the password."""
    from poisonguard.store.postgres import PostgresLedger

    ledger = PostgresLedger(postgres.url(), "t_shown")
    assert postgres.password not in ledger.location
    assert (
        ledger.location
        == f"postgresql://postgres:***@127.0.0.1:{postgres.port}/postgres (schema t_shown)"
    )
    wrong = PostgresLedger(postgres.url(password="not-the-password-42"), "t_shown")
    with pytest.raises(StoreError, match="password authentication failed") as refused:
        wrong.exists()
    assert "not-the-password-42" not in str(refused.value)
    assert "***@127.0.0.1" in str(refused.value)


def test_a_write_whose_lock_session_ended_is_rolled_back(postgres):
    """PostgreSQL frees a session's advisory locks when the session ends (a network cut, an
    administrator): the holder's next transaction finds out before it commits."""
    import psycopg

    from poisonguard.store.postgres import PostgresLedger

    ledger = PostgresLedger(postgres.url(), f"t_{uuid.uuid4().hex[:12]}")
    ledger.create()
    with ledger.write_lock(1, "the store"):
        with psycopg.connect(postgres.url(), autocommit=True) as admin:
            ended = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
            ).fetchall()
        assert ended == [(True,)]
        with pytest.raises(StoreError, match="lost the write lock"), ledger.transaction() as tx:
            tx.add_batch(_batch("b1"))
    assert ledger.batches() == []
    with ledger.write_lock(1, "the store") as outer:
        assert outer  # taken again on a new session
    ledger.close()


def test_every_session_probes_its_peer_so_a_vanished_runner_frees_its_locks(postgres):
    """A runner whose host vanished never closes its sessions: the server's TCP keepalives
    (30 s idle, 3 probes 10 s apart) end them, and their advisory locks, within about a
    minute. (The settings are checked here; a host vanishing is not staged.)"""
    from poisonguard.store.postgres import PostgresLedger

    ledger = PostgresLedger(postgres.url() + "?application_name=mine", "t_keepalive")
    with ledger.connect() as db:
        shown = {
            k: db.execute(f"SHOW tcp_keepalives_{k}").fetchone()[f"tcp_keepalives_{k}"]
            for k in ("idle", "interval", "count")
        }
        assert shown == {"idle": "30", "interval": "10", "count": "3"}
        assert db.execute("SHOW search_path").fetchone()["search_path"] == "t_keepalive"
        assert db.execute("SHOW application_name").fetchone()["application_name"] == "mine"


def test_reads_go_on_after_the_server_closed_an_idle_shared_connection(postgres, monkeypatch):
    """A worker idle between scheduled runs may find its read connection closed (a server
    restart, a firewall): its next read opens another instead of failing."""
    import psycopg

    from poisonguard.store import postgres as pg

    ledger = pg.PostgresLedger(postgres.url(), f"t_{uuid.uuid4().hex[:12]}")
    ledger.create()
    assert ledger.batches() == []
    with psycopg.connect(postgres.url(), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'poisonguard' AND pid <> pg_backend_pid()"
        )
    monkeypatch.setattr(pg, "READER_IDLE", 0.0)
    assert ledger.batches() == []
    ledger.close()


@pytest.mark.slow
def test_a_batch_goes_through_process_landing_and_the_gate_on_a_postgresql_ledger(
    postgres, demo_inputs, tmp_path, monkeypatch
):
    """``init`` and a real landing run with POISONGUARD_LEDGER_URL set: the store's records
    are in PostgreSQL (no ledger.sqlite), the batch of flipped labels is committed with rows
    held, and once a steward has looked at its source the gate passes."""
    import shutil

    from poisonguard.config import LEDGER_URL_ENV, load_config
    from poisonguard.demo import LABEL
    from poisonguard.gate import gate
    from poisonguard.initialize import init_dataset
    from poisonguard.pipeline import process_landing
    from poisonguard.store import open_store
    from poisonguard.store.postgres import PostgresLedger

    url = postgres.new_database()
    monkeypatch.setenv(LEDGER_URL_ENV, url)
    root = tmp_path / "demo"
    shutil.copytree(demo_inputs, root)
    first = root / "landing" / "labelling" / "batch-01-label-flips.parquet"
    keep_only(root / "landing", first.name)
    init_dataset(
        root / "trusted.parquet", label=LABEL, directory=root, id_column="row_id", name="digits"
    )
    config = load_config(root / "poisonguard.toml")
    assert config.ledger is not None and config.ledger.schema == "poisonguard_digits"
    (record,) = process_landing(config).records
    assert record.status == "committed" and record.source == f"labelling/{first.name}"
    assert record.rows_quarantined > 0
    assert not (config.store / "ledger.sqlite").exists()
    ledger = PostgresLedger(url, "poisonguard_digits")
    assert {b.status for b in ledger.batches()} == {"seed", "committed"}
    open_store(config).clear_source("labelling", actor="steward", note="flips held")
    trained = gate(config)
    seed_rows = next(b.rows_clean for b in ledger.batches() if b.status == "seed")
    assert len(trained) == seed_rows + record.rows_clean
    assert [e["action"] for e in ledger.audit_log()][-1] == "gate"
    ledger.close()
