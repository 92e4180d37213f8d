"""Hostile landing input: whatever lands, the run goes on, says why in one line, loses nothing.

Every case lands one hostile entry and, sorted after it, one ordinary batch, then runs
``poisonguard run --local`` through the command line. Each case asserts the exit code,
what happened to the hostile entry (committed, rows quarantined, rejected whole, or
skipped) with a one-line reason naming the file and, where there is one, the column and
what was expected, that every input row of every batch ends in exactly one place, that
the ordinary batch went through, and that a second run has nothing new to do.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from poisonguard.cli import main
from poisonguard.config import load_config
from poisonguard.landing import DEFAULT_SOURCE, source_of
from poisonguard.store import Store, open_store

N_TRUSTED = 240
GOOD = "zz-good.csv"  # sorts after every hostile name below


def _rows(n: int, start: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "row_id": np.arange(start, start + n),
            "x1": rng.normal(0.0, 1.0, n).round(3),
            "x2": rng.normal(5.0, 2.0, n).round(3),
            "x3": rng.integers(0, 100, n),
            "kind": rng.choice(["alpha", "beta", "gamma"], n),
            "y": (rng.random(n) < 0.5).astype(np.int64),
        }
    )


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """An initialised project: a 240-row trusted table with a string column, an id, a label."""
    from poisonguard.initialize import init_dataset

    root = tmp_path_factory.mktemp("hostile") / "project"
    root.mkdir()
    _rows(N_TRUSTED, 0, seed=0).to_parquet(root / "trusted.parquet", index=False)
    init_dataset(root / "trusted.parquet", label="y", id_column="row_id", directory=root)
    config = root / "poisonguard.toml"
    # Landed files here are written whole before the run: no need to wait for them to settle.
    config.write_text(
        config.read_text().replace("[dataset]\n", "[dataset]\nsettle_seconds = 0\n", 1)
    )
    return root


@pytest.fixture
def project(template, tmp_path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(template, root, symlinks=True)  # the audit key (store.key) comes along
    return root


def good_batch(landing: Path) -> None:
    _rows(40, 10_000, seed=99).to_csv(landing / GOOD, index=False)


def ordinary(n: int = 30, start: int = 5_000) -> pd.DataFrame:
    return _rows(n, start, seed=7)


def parquet_bytes(frame: pd.DataFrame | pa.Table) -> bytes:
    table = (
        frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def csv_text(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False)


@dataclass(frozen=True)
class Case:
    """One hostile landing entry and what must become of it."""

    id: str
    land: Callable[[Path], str]  # writes into landing, returns the entry's name
    outcome: str  # committed | quarantined | rejected | skipped
    says: tuple[str, ...] = ()  # the reason (or a held row's reason) contains each of these


def write(name: str, data: bytes | str) -> Callable[[Path], str]:
    def land(landing: Path) -> str:
        path = landing / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return name

    return land


def with_cell(column: str, value: object, name: str = "cell.csv") -> Callable[[Path], str]:
    frame = ordinary().astype({column: object})
    frame.loc[3, column] = value
    return write(name, csv_text(frame))


def truncated_parquet(landing: Path) -> str:
    data = parquet_bytes(ordinary())
    (landing / "truncated.parquet").write_bytes(data[: len(data) // 2])
    return "truncated.parquet"


def wide(n_extra: int) -> Callable[[Path], str]:
    def land(landing: Path) -> str:
        frame = ordinary()
        extra = pd.DataFrame(
            np.zeros((len(frame), n_extra)), columns=[f"extra_{i}" for i in range(n_extra)]
        )
        name = f"wide-{n_extra}.parquet"
        (landing / name).write_bytes(parquet_bytes(pd.concat([frame, extra], axis=1)))
        return name

    return land


def nested(kind: str) -> Callable[[Path], str]:
    def land(landing: Path) -> str:
        table = pa.Table.from_pandas(ordinary(3), preserve_index=False)
        if kind == "list":
            column = pa.array([[1, 2], [3], []])
        else:
            column = pa.array([{"a": 1}, {"a": 2}, {"a": 3}])
        table = table.set_column(table.schema.get_field_index("x1"), "x1", column)
        (landing / f"{kind}.parquet").write_bytes(parquet_bytes(table))
        return f"{kind}.parquet"

    return land


def dictionary_encoded(landing: Path) -> str:
    table = pa.Table.from_pandas(ordinary(), preserve_index=False)
    i = table.schema.get_field_index("kind")
    table = table.set_column(i, "kind", table.column("kind").dictionary_encode())
    (landing / "dict.parquet").write_bytes(parquet_bytes(table))
    return "dict.parquet"


def symlink_to(target: str) -> Callable[[Path], str]:
    def land(landing: Path) -> str:
        os.symlink(target, landing / "linked.csv")
        return "linked.csv"

    return land


def symlink_to_batch(landing: Path) -> str:
    outside = landing.parent / "outside.csv"
    outside.write_text(csv_text(ordinary()))
    os.symlink(outside, landing / "outside-link.csv")
    return "outside-link.csv"


def folder(landing: Path) -> str:
    (landing / "looks-like-a-batch.csv").mkdir()
    (landing / "looks-like-a-batch.csv" / "inner.csv").write_text(csv_text(ordinary()))
    return "looks-like-a-batch.csv"


def fifo(landing: Path) -> str:
    os.mkfifo(landing / "pipe.csv")
    return "pipe.csv"


CASES = [
    Case("empty-csv", write("empty.csv", b""), "rejected", ("empty.csv", "the file is empty")),
    Case("empty-parquet", write("empty.parquet", b""), "rejected", ("empty.parquet", "empty")),
    Case(
        "header-only",
        write("header.csv", "row_id,x1,x2,x3,kind,y\n"),
        "rejected",
        ("header.csv", "no rows"),
    ),
    Case(
        "truncated-parquet",
        truncated_parquet,
        "rejected",
        ("truncated.parquet", "not a readable Parquet file"),
    ),
    Case(
        "corrupt-parquet",
        write("corrupt.parquet", b"PAR1garbage"),
        "rejected",
        ("corrupt.parquet", "not a readable Parquet file"),
    ),
    Case(
        "text-named-parquet",
        write("text.parquet", "row_id,x1\n1,2\n"),
        "rejected",
        ("text.parquet", "not a readable Parquet file"),
    ),
    Case(
        "wrong-delimiter",
        write("semicolons.csv", csv_text(ordinary()).replace(",", ";")),
        "rejected",
        ("semicolons.csv", "missing column 'x1'"),
    ),
    Case("bom", write("bom.csv", b"\xef\xbb\xbf" + csv_text(ordinary()).encode()), "committed"),
    Case("crlf", write("crlf.csv", csv_text(ordinary()).replace("\n", "\r\n")), "committed"),
    Case("gzip", write("packed.csv.gz", gzip.compress(csv_text(ordinary()).encode())), "committed"),
    Case(
        "gzip-named-csv",
        write("packed-plain.csv", gzip.compress(csv_text(ordinary()).encode())),
        "rejected",
        ("packed-plain.csv",),
    ),
    Case(
        "missing-column",
        write("missing.csv", csv_text(ordinary().drop(columns=["x2"]))),
        "rejected",
        ("missing.csv", "missing column 'x2'"),
    ),
    Case(
        "extra-column",
        write("extra.csv", csv_text(ordinary().assign(bonus=1))),
        "rejected",
        ("extra.csv", "unexpected column 'bonus'"),
    ),
    Case(
        "renamed-column",
        write("renamed.csv", csv_text(ordinary().rename(columns={"x3": "x_3"}))),
        "rejected",
        ("renamed.csv", "missing column 'x3'", "unexpected column 'x_3'"),
    ),
    Case(
        "reordered-columns",
        write("reordered.csv", csv_text(ordinary()[["y", "kind", "x3", "x2", "x1", "row_id"]])),
        "committed",
    ),
    Case(
        "strings-in-numbers",
        write("strings.csv", csv_text(ordinary().assign(x2="lots"))),
        "rejected",
        ("strings.csv", "column 'x2'", "expected a numeric type"),
    ),
    Case(
        "mixed-types",
        with_cell("x1", "n/a (sensor off)", "mixed.csv"),
        "rejected",
        ("mixed.csv", "column 'x1'", "expected a numeric type"),
    ),
    Case("nan", with_cell("x1", "", "nan.csv"), "quarantined", ("x1 is missing",)),
    Case("inf", with_cell("x1", "inf", "inf.csv"), "quarantined", ("x1 = inf", "not a finite")),
    Case("huge", with_cell("x2", "1e308", "huge.csv"), "quarantined", ("x2 = 1e+308", "outside")),
    Case("unseen-label", with_cell("y", 7, "label7.csv"), "quarantined", ("y = 7", "not in")),
    Case("null-label", with_cell("y", "", "nolabel.csv"), "quarantined", ("y is missing",)),
    Case(
        "duplicate-ids",
        write(
            "dupids.csv",
            csv_text(ordinary().assign(row_id=[5_000] * 2 + list(range(5_001, 5_029)))),
        ),
        "quarantined",
        ("row_id = 5000 is duplicated",),
    ),
    Case(
        "id-already-trained",
        write("old-ids.csv", csv_text(ordinary(5, start=0))),
        "quarantined",
        ("row_id of this row is already in the training set",),
    ),
    Case("one-row", write("one.csv", csv_text(ordinary(1))), "committed"),
    Case("200-columns", wide(194), "rejected", ("wide-194.parquet", "unexpected column", "more")),
    Case(
        "2000-columns", wide(1994), "rejected", ("wide-1994.parquet", "unexpected column", "more")
    ),
    Case(
        "unicode-and-emoji",
        with_cell("kind", "🔥 gamma", "été-🔥.csv"),
        "quarantined",
        ("kind = '🔥 gamma' not in",),
    ),
    Case(
        "emoji-column",
        write("emoji-col.csv", csv_text(ordinary().rename(columns={"kind": "kind 🔥"}))),
        "rejected",
        ("emoji-col.csv", "missing column 'kind'"),
    ),
    Case(
        "reserved-prefix",
        write("reserved.csv", csv_text(ordinary().assign(pg_stage="clean"))),
        "rejected",
        ("reserved.csv", "pg_stage", "reserves"),
    ),
    Case(
        "script-in-cell",
        with_cell("kind", "<script>alert(1)</script>", "script-cell.csv"),
        "quarantined",
        ("<script>alert(1)</script>",),
    ),
    Case(
        "script-in-name",
        write('<b onmouseover="alert(1)">x.csv', csv_text(ordinary())),
        "committed",
    ),
    Case("spaces-and-quotes", write('it\'s a "batch" file.csv', csv_text(ordinary())), "committed"),
    Case("newline-in-name", write("two\nlines.csv", csv_text(ordinary())), "committed"),
    Case("dots-in-name", write("a..b....csv", csv_text(ordinary())), "committed"),
    Case("backslash-in-name", write("C:\\batches\\jan.csv", csv_text(ordinary())), "committed"),
    Case("long-name", write("n" * 250 + ".csv", csv_text(ordinary())), "committed"),
    Case(
        "symlink-out",
        symlink_to("/etc/passwd"),
        "skipped",
        ("symbolic link", "never follows links"),
    ),
    Case("symlink-to-a-batch", symlink_to_batch, "skipped", ("symbolic link",)),
    Case("folder-named-like-a-batch", folder, "skipped", ("a folder",)),
    Case("fifo", fifo, "skipped", ("not a regular file",)),
    Case(
        "unsupported-kind",
        write("batch.json", json.dumps([{"x1": 1}])),
        "skipped",
        ("not a batch file",),
    ),
    Case("nested-list", nested("list"), "rejected", ("list.parquet", "'x1'", "expected a flat")),
    Case("nested-struct", nested("struct"), "rejected", ("struct.parquet", "'x1'", "flat")),
    Case("dictionary-encoded", dictionary_encoded, "committed"),
    Case(
        "invalid-utf8",
        write("latin1.csv", csv_text(ordinary()).replace("alpha", "\xe9t\xe9").encode("latin-1")),
        "rejected",
        ("latin1.csv", "column 'kind'", "invalid UTF8"),
    ),
]


def _run(capsys, project: Path) -> tuple[int, list[str], list[str]]:
    code = main(["run", "--local", "--config", str(project / "poisonguard.toml")])
    out = capsys.readouterr()
    return code, out.out.splitlines(), out.err.splitlines()


def _conserved(store: Store) -> None:
    """Per batch: rows in = clean + quarantined + rejected, and its files hold each row once."""
    for rec in store.batches():
        if rec.rows_in is None:  # unreadable: no rows known, the whole file is kept
            assert rec.status == "rejected" and rec.rows_rejected == 0
        else:
            assert rec.rows_in == rec.rows_clean + rec.rows_quarantined + rec.rows_rejected, rec
        if rec.status == "rejected":
            assert rec.rows_clean == rec.rows_quarantined == 0
            kept = [f for f in store.files("rejected") if f.batch_id == rec.batch_id]
            assert len(kept) == 2  # the file as it arrived, and reason.json
            continue
        rows = [
            store.read(f)["pg_row"].to_numpy()
            for f in store.files()
            if f.batch_id == rec.batch_id and f.kind in ("clean", "quarantine")
        ]
        assert np.array_equal(np.sort(np.concatenate(rows)), np.arange(rec.rows_in)), rec


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_landing_entry(project, capsys, case):
    config = load_config(project / "poisonguard.toml")
    name = case.land(config.landing)
    good_batch(config.landing)
    code, out, err = _run(capsys, project)
    store = open_store(config)
    by_file = {r.source: r for r in store.batches()}

    assert by_file[GOOD].status == "committed"  # the next batch always goes on
    assert code == (1 if case.outcome == "rejected" else 0), (out, err)
    assert len(err) <= 1  # at most one line, only when something was rejected
    _conserved(store)
    if case.outcome == "skipped":
        assert name not in by_file
        remembered = store.landed()[name]
        assert remembered.outcome == "skipped"
        for part in case.says:
            assert part in remembered.reason
        said = [line for line in out if line.startswith("skipped ")]
        assert len(said) == 1 and all(p in said[0] for p in case.says)
    else:
        rec = by_file[name]
        expected = "rejected" if case.outcome == "rejected" else "committed"
        assert rec.status == expected, rec.reason
        if case.outcome == "rejected":
            assert "\n" not in rec.reason and len(rec.reason) < 2000
            for part in case.says:
                assert part in rec.reason, rec.reason
            assert (store.root / "rejected" / rec.batch_id / "reason.json").is_file()
        elif case.outcome == "quarantined":
            held = store.quarantine_frame(rec.batch_id)
            hit = held[held["pg_stage"] == "expectations"]
            assert len(hit) >= 1, held["pg_reason"].tolist()
            for part in case.says:
                assert hit["pg_reason"].str.contains(part, regex=False).any(), hit["pg_reason"]
        else:
            assert rec.rows_in == rec.rows_clean + rec.rows_quarantined and rec.rows_clean > 0
        # Store files are named from a bounded set of characters, whatever the input's name.
        for f in store.files():
            assert all(c.isalnum() or c in "._-/" for c in f.path), f.path
            assert len(Path(f.path).name) <= 120
        html = (store.root / "reports" / f"{rec.batch_id}.html").read_text()
        assert "<script>alert" not in html and "<b onmouseover" not in html

    # Nothing is wedged: the next run has nothing new to do and says nothing.
    assert _run(capsys, project)[:2] == (0, [f"no new batches in {config.landing}"])


def test_nothing_of_a_linked_file_reaches_the_store(project, capsys):
    """A .csv link to /etc/passwd is refused without being read: no line of it is kept."""
    config = load_config(project / "poisonguard.toml")
    os.symlink("/etc/passwd", config.landing / "passwd.csv")
    _run(capsys, project)
    store = open_store(config)
    for path in store.root.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".html", ".parquet", ".csv"):
            assert b"root:x:0" not in path.read_bytes(), path
    assert not list((store.root / "rejected").iterdir())


def test_a_file_still_being_written_waits_and_is_then_taken_whole(project, capsys):
    """A file modified within settle_seconds is left for the next run; then all of it lands."""
    config_path = project / "poisonguard.toml"
    config_path.write_text(
        config_path.read_text().replace("settle_seconds = 0", "settle_seconds = 1")
    )
    config = load_config(config_path)
    whole = csv_text(ordinary(300))
    path = config.landing / "growing.csv"
    path.write_text(whole[: len(whole) // 3])
    # The writer goes on while the run looks: a thread appends during the settle wait.
    import threading
    import time

    def writer() -> None:
        time.sleep(0.3)
        with open(path, "a") as f:
            f.write(whole[len(whole) // 3 :])

    thread = threading.Thread(target=writer)
    thread.start()
    code, out, _ = _run(capsys, project)
    thread.join()
    assert code == 0 and any(line.startswith("waiting growing.csv") for line in out), out
    store = open_store(config)
    assert [b for b in store.batches() if b.source == "growing.csv"] == []
    time.sleep(1.1)
    code, out, _ = _run(capsys, project)
    (rec,) = [b for b in store.batches() if b.source == "growing.csv"]
    assert rec.rows_in == 300 and rec.sha256 == store.landed()["growing.csv"].sha256


def test_a_writer_that_lands_under_a_temporary_name_is_ignored_until_renamed(project, capsys):
    config = load_config(project / "poisonguard.toml")
    part = config.landing / "later.csv.part"
    part.write_text(csv_text(ordinary()))
    assert _run(capsys, project)[:2] == (0, [f"no new batches in {config.landing}"])
    part.rename(config.landing / "later.csv")
    _run(capsys, project)
    assert [b.status for b in open_store(config).batches() if b.source == "later.csv"] == [
        "committed"
    ]


def test_the_same_content_under_two_names_is_one_batch_and_one_notice(project, capsys):
    config = load_config(project / "poisonguard.toml")
    text = csv_text(ordinary())
    (config.landing / "a-first.csv").write_text(text)
    (config.landing / "b-again.csv").write_text(text)
    code, out, _ = _run(capsys, project)
    store = open_store(config)
    assert code == 0 and [b.source for b in store.batches()][1:] == ["a-first.csv"]
    (notice,) = [line for line in out if line.startswith("skipped ")]
    assert "b-again.csv" in notice and "same content as batch a-first-" in notice


def test_a_long_name_does_not_wedge_the_store(project, capsys):
    """A 250-character name is taken; the batch after it too; later runs still work."""
    config = load_config(project / "poisonguard.toml")
    (config.landing / ("x" * 250 + ".csv")).write_text(csv_text(ordinary()))
    good_batch(config.landing)
    assert _run(capsys, project)[0] == 0
    (config.landing / ("x" * 250 + ".csv")).unlink()
    (config.landing / "zzz-later.csv").write_text(csv_text(ordinary(20, start=7_000)))
    assert _run(capsys, project)[0] == 0
    store = open_store(config)
    assert {"zz-good.csv", "zzz-later.csv", "x" * 250 + ".csv"} <= {
        b.source for b in store.batches()
    }
    assert all(len(b.batch_id) <= 80 for b in store.batches())


def test_a_corrupt_ledger_stops_the_run_with_one_line(project, capsys):
    config = load_config(project / "poisonguard.toml")
    good_batch(config.landing)
    (config.store / "ledger.sqlite").write_bytes(b"not a database at all" * 200)
    for leftover in ("ledger.sqlite-wal", "ledger.sqlite-shm"):
        (config.store / leftover).unlink(missing_ok=True)
    code, _out, err = _run(capsys, project)
    assert code == 1 and len(err) == 1
    assert "ledger.sqlite: cannot be opened as a poisonguard ledger" in err[0]


def test_a_full_disk_stops_the_run_with_one_line_and_nothing_half_written(project):
    """Writes fail mid-run (the file-size limit stands in for a full disk): the run exits 1
    with one line, no traceback; the next run, with room again, ends in a store the gate
    passes, every row in one place."""
    import resource
    import subprocess
    import sys

    config = load_config(project / "poisonguard.toml")
    for i in range(3):
        rows = _rows(20_000, 100_000 * (i + 1), seed=i)
        rows.to_parquet(config.landing / f"b{i}.parquet", index=False)

    def small_files() -> None:  # the ledger fits; a batch's clean file does not
        resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))

    cmd = [sys.executable, "-m", "poisonguard.cli", "run", "--local", "--config", str(config.path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=small_files, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "File too large" in lines[0] and "Traceback" not in proc.stderr
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    store = open_store(config)
    _conserved(store)
    assert {f"b{i}.parquet" for i in range(3)} <= {b.source for b in store.batches()}
    assert main(["gate", "--config", str(config.path)]) == 0


def test_a_file_that_cannot_be_read_is_tried_again_on_every_run(project, capsys, monkeypatch):
    """A landed file the OS refuses to open (as it would for a file of another user) is
    noticed, not remembered: once readable, the next run takes it, though its size and time
    did not change."""
    import poisonguard.store.landing as landing

    config = load_config(project / "poisonguard.toml")
    path = config.landing / "locked.csv"
    path.write_text(csv_text(ordinary()))
    real_open = os.open

    def refuse(target, *args, **kwargs):
        if str(target) == str(path):
            raise PermissionError(13, "Permission denied", str(target))
        return real_open(target, *args, **kwargs)

    monkeypatch.setattr(landing.os, "open", refuse)
    code, out, _ = _run(capsys, project)
    assert code == 0 and out == [
        "waiting locked.csv: cannot be read (Permission denied); tried again on the next run"
    ]
    monkeypatch.setattr(landing.os, "open", real_open)
    _run(capsys, project)
    assert [b.status for b in open_store(config).batches() if b.source == "locked.csv"] == [
        "committed"
    ]


def test_source_folders_are_sources_and_nothing_else_in_them_is_taken(project, capsys):
    """``landing/<source>/<file>`` is a batch of that source, a bare file of the default one;
    a folder inside a source folder, a folder named unlike a source and a link to a folder
    are skipped with their reasons, and the batches beside them go on."""
    config = load_config(project / "poisonguard.toml")
    partner = config.landing / "partner-b"
    partner.mkdir()
    (partner / "monday.csv").write_text(csv_text(ordinary(30, start=20_000)))
    (partner / "nested").mkdir()
    (partner / "nested" / "deep.csv").write_text(csv_text(ordinary(30, start=21_000)))
    (config.landing / "not a source!").mkdir()
    (config.landing / "elsewhere").symlink_to(partner, target_is_directory=True)
    good_batch(config.landing)
    code, out, _ = _run(capsys, project)
    assert code == 0
    store = open_store(config)
    taken = {b.source for b in store.batches()[1:]}
    assert taken == {"partner-b/monday.csv", GOOD}
    assert {source_of(name) for name in taken} == {"partner-b", DEFAULT_SOURCE}
    skipped = [line for line in out if line.startswith("skipped ")]
    assert any("partner-b/nested" in s and "a folder" in s for s in skipped)
    assert any("not a source!" in s and "not a source name" in s for s in skipped)
    assert any("elsewhere" in s and "symbolic link" in s for s in skipped)
    assert not any("deep.csv" in s for s in out)
