"""Erasure (`poisonguard forget`): a data subject's rows leave every file under the store.

One subject's customer id, e-mail and name are in a clean row (the trusted seed, so in the
reference too), in a quarantined row a reviewer rejected (blocklisted), and in a batch
rejected whole (kept as the CSV that arrived). After `forget`, neither value is anywhere
under the store or in the key beside it, byte for byte and cell by cell; the audit chain
verifies; the gate passes with a manifest of the new files; every other row is where it was.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from poisonguard import pipeline
from poisonguard.cli import main
from poisonguard.config import load_config
from poisonguard.errors import ReviewError, StoreError
from poisonguard.initialize import init_dataset
from poisonguard.landing import source_of
from poisonguard.pipeline import process_landing
from poisonguard.review import review
from poisonguard.store import CRASH_ENV, ERASED, Store, open_store
from poisonguard.subject import Subject, parse_where, read_values, subject_of
from test_pii import CARDS, people

SUBJECT = 77123457
MAIL = "xavier.subjectson@erase.example"
NAME = "Xavier Subjectson"
#: The subject's values as they would be written in any file.
NEEDLES = (str(SUBJECT).encode(), MAIL.encode(), NAME.encode())


def _as_subject(frame: pd.DataFrame, row: int) -> pd.DataFrame:
    frame = frame.copy()
    frame.loc[row, ["customer_id", "email", "full_name"]] = [SUBJECT, MAIL, NAME]
    return frame


def _build(root: Path) -> Path:
    """A project whose store holds the subject in a clean row of the seed, a quarantined row
    (its id repeats the seed's) a reviewer rejected, and a batch rejected whole."""
    root.mkdir(parents=True, exist_ok=True)
    sample = _as_subject(people(300), 10)
    sample.to_csv(root / "customers.csv", index=False)
    init_dataset(root / "customers.csv", label="churned", id_column="customer_id", directory=root)
    config = load_config(root / "poisonguard.toml")
    again = people(40, seed=3)
    again["customer_id"] += 30_000
    leak = people(40, seed=2)
    leak["customer_id"] += 20_000
    leak.loc[3:5, "balance"] = [float(c.replace(" ", "").replace("-", "")) for c in CARDS[:3]]
    landing = Path(config.landing)
    _as_subject(again, 7).to_csv(landing / "b2-again.csv", index=False)
    # Two decimals, as an export writes them: a rewrite through typed values would drop zeros.
    _as_subject(leak, 12).to_csv(landing / "b3-leak.csv", index=False, float_format="%.2f")
    for path in landing.iterdir():
        past = path.stat().st_mtime - 3600
        os.utime(path, (past, past))
    records = {r.batch_id.split("-")[0]: r for r in process_landing(config).records}
    assert records["b2"].status == "committed" and records["b3"].status == "rejected"
    store = open_store(config)
    held = store.quarantine_frame(records["b2"].batch_id)
    mine = held.loc[held["customer_id"] == SUBJECT, "pg_row"].tolist()
    assert len(mine) == 1
    review(store, records["b2"].batch_id, "reject", by="ann", note="a repeated id", rows=mine)
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("forget") / "project")


@pytest.fixture
def project(built: Path, tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(built, root)
    return root


def _config(root: Path) -> str:
    return str(root / "poisonguard.toml")


# --------------------------------------------------------------------------- looking for the subject


def _under_store(root: Path) -> Iterator[Path]:
    """Every file under the store, and the audit key beside it."""
    config = load_config(root / "poisonguard.toml")
    yield from (p for p in sorted(Path(config.store).rglob("*")) if p.is_file())
    yield Path(config.audit_key) if config.audit_key else Path(f"{config.store}.key")


def _raw_hits(root: Path) -> list[str]:
    """Files whose bytes (or, gzip'd, their decompressed bytes) hold one of the values."""
    hits = []
    for path in _under_store(root):
        data = path.read_bytes()
        if path.name.endswith(".gz"):
            data += gzip.decompress(data)
        hits += [f"{path}: {n.decode()}" for n in NEEDLES if n in data]
    return hits


def _cells(path: Path) -> Iterator[object]:
    """Every cell of a table, JSON leaf or SQLite value in a file (nothing for other files)."""
    name = path.name
    if name.endswith((".parquet", ".pq")):
        frame = pd.read_parquet(path)
        yield from frame.columns
        for column in frame.columns:
            yield from frame[column].tolist()
    elif name.endswith((".csv", ".csv.gz")):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        yield from frame.columns
        yield from frame.to_numpy().ravel().tolist()
    elif name.endswith(".json"):
        stack = [json.loads(path.read_text())]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                stack += [*item.keys(), *item.values()]
            elif isinstance(item, list):
                stack += item
            else:
                yield item
    elif name.endswith(".sqlite"):
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for table in tables:
                for row in db.execute(f'SELECT * FROM "{table}"'):
                    yield from row


def _cell_hits(root: Path) -> list[str]:
    """Cells equal to one of the values (or, for text, holding one)."""
    hits = []
    for path in _under_store(root):
        for cell in _cells(path):
            if cell == SUBJECT or (isinstance(cell, float) and cell == float(SUBJECT)):
                hits.append(f"{path}: {cell!r}")
            elif isinstance(cell, str) and any(n.decode() in cell for n in NEEDLES):
                hits.append(f"{path}: {cell[:80]!r}")
    return hits


def _places(store: Store) -> dict[tuple[str, int], str]:
    """Each kept row of a committed batch (batch, pg_row) and the kind of file it is in: clean,
    or quarantine with its review (a released row counts once, in its clean file)."""
    reviews = {(r.batch_id, r.pg_row): r.action for r in store.ledger.reviews()}
    places: dict[tuple[str, int], str] = {}
    for f in store.files("quarantine"):
        for b, r in store.read(f, ["pg_batch", "pg_row"]).itertuples(index=False):
            places[(b, int(r))] = f"quarantine:{reviews.get((b, int(r)), 'awaiting')}"
    for f in store.files("clean"):
        for b, r in store.read(f, ["pg_batch", "pg_row"]).itertuples(index=False):
            assert places.get((b, int(r)), "quarantine:release") == "quarantine:release"
            places[(b, int(r))] = "clean"
    return places


def _rejected_lines(store: Store) -> list[str]:
    """The lines of the rejected batch's file, as kept."""
    (kept,) = [f for f in store.files("rejected") if not f.path.endswith("reason.json")]
    return store.data.read_text(kept.path).splitlines()


# --------------------------------------------------------------------------- the erasure


def test_forget_leaves_the_value_nowhere_under_the_store_and_the_gate_passes(project, tmp_path):
    config = load_config(project / "poisonguard.toml")
    store = open_store(config)
    # The subject is there to begin with, in each of the three places and in its bytes.
    assert _raw_hits(project) and _cell_hits(project)
    places = _places(store)
    seed = store.reference()
    assert seed is not None
    mine = [
        (f.kind, (b, int(r)))
        for f in store.files()
        if f.rows is not None
        for b, r, c in store.read(f, ["pg_batch", "pg_row", "customer_id"]).itertuples(index=False)
        if c == SUBJECT
    ]
    assert sorted(kind for kind, _ in mine) == ["clean", "quarantine"]
    subject_rows = {row for _, row in mine}
    assert sorted(places[row] for row in subject_rows) == ["clean", "quarantine:reject"]
    assert {row for kind, row in mine if kind == "clean"} <= {
        (b, int(r)) for f in seed.files for b, r in store.read(f, ["pg_batch", "pg_row"]).to_numpy()
    }
    rejected_before = _rejected_lines(store)
    assert sum(line.startswith(f"{SUBJECT},") for line in rejected_before) == 1
    assert len(store.blocklist()) == 1
    pipeline.fit_guard(config, store)  # a guard fitted on the reference holding the subject
    audit_before = len(store.audit_log())

    code = main(
        [
            "forget",
            "--config",
            _config(project),
            "--column",
            "customer_id",
            "--value",
            str(SUBJECT),
            "--by",
            "dpo",
            "--note",
            "erasure request 2026-41",
        ]
    )
    assert code == 0

    # (a) Nowhere under the store: not in any file's bytes, not in any cell.
    assert _raw_hits(project) == []
    assert _cell_hits(project) == []
    # (b) The audit chain verifies, and its one new erasure entry holds keyed hashes only.
    assert main(["audit", "verify", "--config", _config(project)]) == 0
    store = open_store(config)
    log = store.audit_log()
    forgets = [e for e in log[audit_before:] if e["action"] == "forget"]
    assert len(forgets) == 1 and forgets[0]["actor"] == "dpo"
    detail = json.loads(forgets[0]["detail"])
    assert len(detail["subject"]) == 64 and detail["columns"] == ["customer_id"]
    assert sorted(detail["erased"]) == sorted(f.path for f in store.files(ERASED))
    # (c) The gate passes; its manifest's subjects are the new files, with their SHA-256.
    manifest = tmp_path / "manifest.json"
    assert main(["gate", "--config", _config(project), "--manifest", str(manifest)]) == 0
    subjects = {
        s["name"]: s["digest"]["sha256"] for s in json.loads(manifest.read_text())["subject"]
    }
    clean = {f.path: f.sha256 for f in store.files("clean")}
    assert subjects == clean
    for path, digest in subjects.items():
        assert hashlib.sha256(store.data.read_bytes(path)).hexdigest() == digest
    assert set(subjects) & set(detail["erased"]) == set()
    assert any(".forget-" in path for path in subjects)
    # (d) Every other row is where it was, each in exactly one place; the counts agree.
    after = _places(store)
    assert after == {k: v for k, v in places.items() if k not in subject_rows}
    # The rejected file is the one that arrived, but the subject's line, spelled as it came.
    assert _rejected_lines(store) == [
        line for line in rejected_before if not line.startswith(f"{SUBJECT},")
    ]
    assert store.verify_files() == []
    for rec in store.batches():
        assert rec.rows_in == rec.rows_clean + rec.rows_quarantined + rec.rows_rejected
    # The reference is rebuilt without the row, the blocklist no longer names it, and no
    # guard fitted on the old reference is kept.
    now = store.reference()
    assert now is not None and now.version == seed.version + 1
    assert now.rows == seed.rows - 1 and now.digest != seed.digest
    assert store.blocklist() == set() and store.rejected_rows().empty
    assert not any(key[0] == seed.digest for key in pipeline._FITTED)


def test_a_sources_recent_rows_are_read_from_the_rewritten_files(project):
    """The next batch's window (``Store.source_rows``) reads a batch's rows as they arrived
    from the file an erasure wrote in place of the first, without the subject's row."""
    config = load_config(project / "poisonguard.toml")
    store = open_store(config)
    (b2,) = [b for b in store.batches() if b.batch_id.startswith("b2")]
    before = store.source_rows(source_of(b2.source), 1000)
    store.forget(subject_of("customer_id", [str(SUBJECT)]), actor="dpo")
    after = open_store(config).source_rows(source_of(b2.source), 1000)
    assert (before["customer_id"] == SUBJECT).sum() == 1
    mine = before["customer_id"] == SUBJECT
    pd.testing.assert_frame_equal(after, before[~mine].reset_index(drop=True))


def test_a_dry_run_names_counts_and_files_and_changes_nothing(project, capsys):
    config = load_config(project / "poisonguard.toml")
    ledger = Path(config.store) / "ledger.sqlite"
    before = {p: p.read_bytes() for p in _under_store(project) if p != ledger}
    audit = len(open_store(config).audit_log())
    where = f"customer_id == {SUBJECT}"
    code = main(["forget", "-c", _config(project), "--where", where, "--by", "dpo", "--dry-run"])
    assert code == 0
    out = capsys.readouterr().out
    assert "would erase 3 rows" in out and "3 batches" in out
    assert str(SUBJECT) not in out and MAIL not in out
    assert {p: p.read_bytes() for p in _under_store(project) if p != ledger} == before
    assert len(open_store(config).audit_log()) == audit


def test_an_unknown_column_is_one_line_naming_the_store_columns(project, capsys):
    code = main(
        ["forget", "-c", _config(project), "--column", "client", "--value", "1", "--by", "x"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'client'" in err and "customer_id, full_name" in err


def test_a_note_holding_the_value_is_refused(project):
    store = open_store(load_config(project / "poisonguard.toml"))
    with pytest.raises(ReviewError, match="leave the value out"):
        store.forget(subject_of("email", [MAIL]), actor="dpo", note=f"for {MAIL}")


def test_a_value_left_in_free_text_is_named_and_exits_1(project, capsys):
    """The rows go; a value someone typed into the audit log stays (the chain keeps it), and
    forget says where, without printing it, and exits 1."""
    store = open_store(load_config(project / "poisonguard.toml"))
    store.audit("note", actor="ann", detail={"note": f"called by {NAME}"})
    seq = store.audit_log()[-1]["seq"]
    where = f"full_name == '{NAME}'"
    assert main(["forget", "-c", _config(project), "--where", where, "--by", "dpo"]) == 1
    out, err = capsys.readouterr()
    assert "erased 3 rows" in out
    assert f"still holds one of the subject's values: audit entry {seq} (note)" in err
    assert NAME not in out + err
    assert main(["audit", "verify", "-c", _config(project)]) == 0


def test_work_in_flight_in_the_staging_area_is_refused(project):
    """A live process's staged batch may hold the subject's rows: forget waits for it."""
    store = open_store(load_config(project / "poisonguard.toml"))
    store.staging_dir("b9-in-flight")
    with pytest.raises(StoreError, match=r"staging/b9-in-flight .* let it finish"):
        store.forget(subject_of("customer_id", [str(SUBJECT)]), actor="dpo")
    assert store.files(ERASED) == []


def test_a_values_file_erases_each_subject(project, tmp_path, capsys):
    ids = tmp_path / "ids.txt"
    ids.write_text(f"\n{SUBJECT}\n  21003 \n")
    args = ["forget", "-c", _config(project), "--column", "customer_id", "--values-file", str(ids)]
    assert main([*args, "--by", "dpo"]) == 0
    assert "erased 4 rows" in capsys.readouterr().out
    assert _raw_hits(project) == []
    assert main(["gate", "-c", _config(project)]) == 0


# --------------------------------------------------------------------------- killed mid-way


def _forget_process(root: Path, crash: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    if crash:
        env[CRASH_ENV] = crash
    args = ["forget", "-c", _config(root), "--column", "customer_id", "--value", str(SUBJECT)]
    proc = subprocess.run(
        [sys.executable, "-m", "poisonguard.cli", *args, "--by", "dpo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr
    return proc.returncode


def _state(root: Path) -> dict:
    store = open_store(load_config(root / "poisonguard.toml"))
    on_disk = sorted(
        p.relative_to(store.root).as_posix()
        for sub in ("clean", "quarantine", "rejected", "staging")
        for p in (store.root / sub).rglob("*")
    )
    return {
        "batches": sorted(
            (b.batch_id, b.rows_in, b.rows_clean, b.rows_quarantined) for b in store.batches()
        ),
        "files": sorted((f.path, f.kind, f.sha256, f.rows) for f in store.files()),
        "on_disk": on_disk,
        "reference": [f.path for f in store.reference().files],
        "blocklist": sorted(store.blocklist()),
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "crash", ["forget-after-file:2", "forget-before-ledger-commit", "forget-after-ledger-commit"]
)
def test_a_killed_erasure_then_a_rerun_ends_as_an_uninterrupted_one(built, tmp_path, crash):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    shutil.copytree(built, whole)
    shutil.copytree(built, cut)
    assert _forget_process(whole, None) == 0
    assert _forget_process(cut, crash) == -signal.SIGKILL
    assert _forget_process(cut, None) == 0
    assert _state(cut) == _state(whole)
    assert _raw_hits(cut) == [] and _cell_hits(cut) == []
    assert main(["audit", "verify", "-c", _config(cut)]) == 0
    assert main(["gate", "-c", _config(cut)]) == 0


# --------------------------------------------------------------------------- the subject's filter


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("customer_id == 123", [("customer_id", "==", ("123",))]),
        ("`full name` != 'O''Brien'", [("full name", "!=", ("O'Brien",))]),
        (
            'age >= 30 AND plan in (basic, "pro plus")',
            [("age", ">=", ("30",)), ("plan", "in", ("basic", "pro plus"))],
        ),
        (
            "a<1 and b<=2 and c>3 and d>=x@y.z",
            [("a", "<", ("1",)), ("b", "<=", ("2",)), ("c", ">", ("3",)), ("d", ">=", ("x@y.z",))],
        ),
    ],
)
def test_where_filters_parse_into_conditions(text, expected):
    assert [(c.column, c.op, c.values) for c in parse_where(text).conditions] == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("customer_id = 1", "expected one of ==, !=, <, <=, >, >=, in at character 13"),
        ("customer_id == 1 or x == 2", "expected 'and' or the end at character 18"),
        ("x in (1, 2", r"expected ',' or '\)'"),
        ("x == __import__('os')", "expected 'and' or the end"),
        ("== 1", "expected a column name at character 1"),
        ("x ==", "expected a value at character 5, found the end"),
    ],
)
def test_a_filter_outside_the_grammar_is_one_line_naming_where(text, message):
    with pytest.raises(ReviewError, match=message):
        parse_where(text)


def test_a_value_is_compared_as_each_columns_type():
    """ "123" matches the integer 123, the float 123.0 and the text 123, never 1234; ids past
    2**53 are compared exactly; a value of another type matches nothing; missing cells never."""
    frame = pd.DataFrame(
        {
            "i": [123, 1234, 9007199254740993, 5],
            "f": [123.0, 123.5, np.nan, 5.0],
            "s": ["123", "1234", None, "0123"],
            "b": [True, False, True, False],
        }
    )
    hit = lambda text: parse_where(text).mask(frame).tolist()  # noqa: E731
    assert hit("i == 123") == [True, False, False, False]
    assert hit("f == 123") == [True, False, False, False]
    assert hit("s == 123") == [True, False, False, False]
    assert hit("i == 9007199254740992") == [False, False, False, False]
    assert hit("i == 9007199254740993") == [False, False, True, False]
    assert hit("i == abc") == [False] * 4 and hit("i != abc") == [True] * 4
    assert hit("f != 123") == [False, True, False, True]
    assert hit("s != 123") == [False, True, False, True]
    assert hit("b == true") == [True, False, True, False]
    assert hit("i in (5, 1234) and f < 100") == [False, False, False, True]
    assert hit("s >= 123") == [True, True, False, False]
    assert (
        Subject(()).mask(frame).tolist() == [True] * 4
    )  # no condition: the parser never makes one


def test_a_values_file_is_one_value_a_line_and_needs_one():
    assert read_values("1\n\n  2 \n") == ["1", "2"]
    assert subject_of("c", ["1"]).conditions[0].op == "=="
    assert subject_of("c", ["1", "2", "1"]).conditions[0].values == ("1", "2")
    with pytest.raises(ReviewError, match="at least one value"):
        subject_of("c", [])


# --------------------------------------------------------------------------- wherever the data files are


def test_an_erasure_rewrites_and_deletes_files_where_the_data_files_are(data_url, tmp_path):
    from poisonguard.gate import _ledger_against_audit
    from poisonguard.store import Outcome
    from poisonguard.store.files import DataFiles

    rows = pd.DataFrame(
        {
            "x": [1.5, 424242.5, 3.5],
            "y": [0, 1, 0],
            "pg_row": [0, 1, 2],
            "pg_row_hash": ["h0", "h1", "h2"],
        }
    )
    store = Store(tmp_path / "store", create=True, data=data_url)
    store.commit(Outcome("b1", "a" * 64, "b1", "committed", 3, clean=rows.assign(pg_batch="b1")))
    # A revoked batch's file keeps its kind when rewritten; its blocklist entry goes.
    again = rows.assign(pg_row_hash=["h3", "h4", "h5"], pg_batch="b2")
    store.commit(Outcome("b2", "b" * 64, "b2", "committed", 3, clean=again))
    store.revoke("b2", actor="ann", note="bad feed")
    landed = store.staging_dir("bad") / "landed.csv"
    landed.write_bytes(b"x,y\n424242.5,1\n7.5,0\n")
    store.reject(
        landed, "bad.csv", Outcome("bad", "c" * 64, "bad.csv", "rejected", 2, rows_rejected=2)
    )
    done = store.forget(subject_of("x", ["424242.5"]), actor="dpo")
    assert done.rows_by_batch == {"b1": 1, "b2": 1, "bad": 1}
    files = DataFiles(data_url)
    kept = [rel for kind in ("clean", "rejected") for rel in files.find(kind)]
    assert not any(b"424242.5" in files.read_bytes(rel) for rel in kept)
    assert files.read_bytes("rejected/bad.forget-0/bad.csv") == b"x,y\n7.5,0\n"
    assert store.read(store.files("clean")[0])["x"].tolist() == [1.5, 3.5]
    (revoked,) = store.files("revoked")
    assert revoked.path == "clean/b2.forget-0.parquet" and revoked.rows == 2
    # The revocation blocked the rows by their keyed content hashes; the erased row's goes.
    kept_rows = again.drop(index=1).reset_index(drop=True)
    assert store.blocklist() == set(store.row_hashes(kept_rows))
    assert len(store.rejected_rows()) == 2
    counts = {b.batch_id: (b.rows_in, b.rows_clean, b.rows_rejected) for b in store.batches()}
    assert counts == {"b1": (2, 2, 0), "b2": (2, 0, 2), "bad": (1, 0, 1)}
    assert store.verify_files() == [] and store.verify_audit() is None
    assert _ledger_against_audit(store) == []


def test_an_erasure_after_a_retention_purge_skips_the_purged_files_and_the_gate_passes(project):
    """Retention purged the rejected batch (its file listed as purged, its bytes gone): an
    erasure then rewrites what is still there, never reads what is gone, and the value is
    nowhere; `audit verify` and the gate pass; a purge after the erasure finds nothing wrong."""
    import dataclasses
    from datetime import UTC, datetime, timedelta

    from poisonguard.config import RetentionSettings
    from poisonguard.store import PURGED

    config = load_config(project / "poisonguard.toml")
    settings = RetentionSettings(quarantine_days=1, rejected_days=1, unreviewed="purge")
    config = dataclasses.replace(config, retention=settings)
    later = datetime.now(UTC) + timedelta(days=30)
    store = open_store(config)
    purged = store.purge(settings, actor="ops", now=later)
    assert purged.purged and store.files(PURGED)
    assert {f.batch_id[:2] for f in store.files(PURGED)} == {"b2", "b3"}

    done = pipeline.forget(config, subject_of("customer_id", [str(SUBJECT)]), actor="dpo")
    assert done.files and not done.residues
    assert _raw_hits(project) == [] and _cell_hits(project) == []
    assert main(["audit", "verify", "--config", _config(project)]) == 0
    store = open_store(config)
    assert store.verify_files() == []
    assert main(["gate", "--config", _config(project)]) == 0
    store.purge(settings, actor="ops", now=later + timedelta(days=30))
    assert main(["gate", "--config", _config(project)]) == 0


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("customer 12 asked", True),
        ("ids 1012 and 120, hash a12f, batch-0012", False),
        ('{"note": "12"}', True),
        ("mail ana@mail.example then", True),
        ("mail xana@mail.example then", False),
    ],
)
def test_a_value_is_found_in_text_only_as_a_whole_token(text, found):
    """Residues and reports are searched for a value as a whole token: a short id such as 12
    is not found inside 1012 or a hash (a user erasing id 12 was told every audit
    entry still held it, and every report was deleted)."""
    from poisonguard.store.erasure import holds

    assert holds(text, ["12", "ana@mail.example"]) is found


def test_a_short_id_leaves_no_false_residues(project, capsys):
    """Erasing a subject whose id is a short number names no audit entry or record as still
    holding it merely because the digits occur inside hashes, times or longer ids."""
    config = load_config(project / "poisonguard.toml")
    store = open_store(config)
    seed = store.read(store.files("clean")[0])
    short = int(seed["customer_id"].iloc[0])
    assert short < 10_000  # people() numbers customers from 1000
    done = pipeline.forget(config, subject_of("customer_id", [str(short)]), actor="dpo")
    assert done.rows == 1
    assert done.residues == ()
