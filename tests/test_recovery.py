"""A run killed at any point and run again ends with the same store as an uninterrupted run."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from landed import empty as empty_landing
from poisonguard.config import load_config
from poisonguard.demo import LABEL
from poisonguard.pipeline import process_landing
from poisonguard.sources import source_states
from poisonguard.store import CRASH_ENV, FileRecord, Store, open_store
from test_backdoor_window import _window_entry
from test_reference import _land

pytestmark = pytest.mark.slow


def snapshot(root: Path) -> dict:
    """Everything that defines a store's state, without wall-clock times."""
    store = Store(root / "store")
    batches = [
        (
            r.batch_id,
            r.sha256,
            r.status,
            r.rows_in,
            r.rows_clean,
            r.rows_quarantined,
            r.rows_rejected,
            r.reason,
        )
        for r in store.batches()
    ]
    files = sorted((f.path, f.kind, _content(store, f), f.rows) for f in store.files())
    on_disk = sorted(
        p.relative_to(store.root).as_posix()
        for sub in ("clean", "quarantine")
        for p in (store.root / sub).iterdir()
    )
    rejected = sorted(
        p.relative_to(store.root).as_posix() for p in (store.root / "rejected").rglob("*")
    )
    with sqlite3.connect(store.ledger_path) as db:
        actions = [
            r[0] for r in db.execute("SELECT action || ':' || batch_id FROM audit ORDER BY seq")
        ]
    return {
        "batches": sorted(batches),
        "files": files,
        "on_disk": on_disk,
        "rejected": rejected,
        "audit": sorted(actions),
    }


def _content(store: Store, record: FileRecord) -> str:
    """A file's content as a digest two stores share: a table's rows without what each store
    keys under its own key (``pg_row_hash``, which must be the store's keyed hashes, and the
    keyed ids reasons name)."""
    if record.rows is None:
        return record.sha256
    frame = store.read(record)
    assert list(frame["pg_row_hash"]) == list(store.row_hashes(frame)), record.path
    rows = frame.drop(columns="pg_row_hash").to_csv(index=False)
    rows = re.sub(r"keyed id [0-9a-f]{16}", "keyed id", rows)  # a reason naming a trained id
    return hashlib.sha256(rows.encode()).hexdigest()


@pytest.fixture(scope="module")
def uninterrupted(demo_inputs, tmp_path_factory) -> dict:
    from poisonguard.demo import LABEL
    from poisonguard.initialize import init_dataset

    root = tmp_path_factory.mktemp("uninterrupted") / "demo"
    shutil.copytree(demo_inputs, root)
    init_dataset(
        root / "trusted.parquet", label=LABEL, directory=root, id_column="row_id", name="digits"
    )
    process_landing(load_config(root / "poisonguard.toml"))
    return snapshot(root)


def _run(root: Path, *extra: str, crash: str | None = None) -> tuple[int, str]:
    """Run `poisonguard run` in its own process group; return its exit code and output.

    A SIGKILLed flow leaves Prefect's temporary API server behind (a child that
    outlives it, holding the output pipe), so output goes to a file and the whole
    group is killed afterwards.
    """
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    if crash:
        env[CRASH_ENV] = crash
    log = root / f"run-{crash or 'clean'}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "poisonguard.cli",
                "run",
                "--config",
                str(root / "poisonguard.toml"),
                *extra,
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=600)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    return code, log.read_text()


@pytest.mark.parametrize(
    "crash",
    [
        "after-stage",
        "after-detect:2",
        "after-clean-file",
        "after-quarantine-file:3",
        "before-ledger-commit:2",
        "after-ledger-commit:4",
    ],
)
def test_killed_run_then_rerun_equals_uninterrupted(demo_project, uninterrupted, crash):
    code, out = _run(demo_project, "--local", crash=crash)
    assert code == -signal.SIGKILL, out
    code, out = _run(demo_project, "--local")
    # 1 when this run itself rejected a batch (the demo's wrong-schema one, if not yet taken).
    assert code == (1 if "batch-05-wrong-schema" in out else 0), out
    assert snapshot(demo_project) == uninterrupted


def _servers_of(home: Path) -> list[int]:
    """Processes whose environment names this Prefect home (the servers a run started)."""
    found = []
    marker = f"PREFECT_HOME={home}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_killed_prefect_flow_then_rerun_equals_uninterrupted(
    demo_project, uninterrupted, tmp_path, monkeypatch
):
    """The same holds for the real Prefect flow in its own process, and the loopback Prefect
    server the killed run started does not outlive it."""
    home = tmp_path / "prefect"
    monkeypatch.setenv("PREFECT_HOME", str(home))
    code, out = _run(demo_project, crash="after-clean-file:2")
    assert code == -signal.SIGKILL, out
    deadline = time.monotonic() + 30
    while _servers_of(home) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _servers_of(home) == []
    code, out = _run(demo_project)
    assert code == (1 if "batch-05-wrong-schema" in out else 0), out
    assert snapshot(demo_project) == uninterrupted
    assert _servers_of(home) == []


#: The demo's batches taken a chunk at a time (``[execution]``), each in chunks of 37 rows.
CHUNKED = "\n[execution]\nchunk_bytes = 4096\nchunk_rows = 37\n"


def _chunked_project(demo_inputs: Path, root: Path) -> Path:
    from poisonguard.demo import LABEL
    from poisonguard.initialize import init_dataset

    shutil.copytree(demo_inputs, root)
    init_dataset(root / "trusted.parquet", label=LABEL, directory=root, name="digits")
    with open(root / "poisonguard.toml", "a") as f:
        f.write(CHUNKED)
    return root


@pytest.fixture(scope="module")
def uninterrupted_chunked(demo_inputs, tmp_path_factory) -> dict:
    root = _chunked_project(demo_inputs, tmp_path_factory.mktemp("chunked") / "demo")
    process_landing(load_config(root / "poisonguard.toml"))
    return snapshot(root)


@pytest.mark.parametrize("crash", ["between-row-groups:3", "between-row-groups:12"])
def test_killed_streamed_batch_then_rerun_equals_uninterrupted(
    demo_inputs, tmp_path, uninterrupted_chunked, crash
):
    """A run killed between two row groups of a batch committed a chunk at a time, then run
    again, leaves the store an uninterrupted run leaves: every row in exactly one place."""
    root = _chunked_project(demo_inputs, tmp_path / "demo")
    code, out = _run(root, "--local", crash=crash)
    assert code == -signal.SIGKILL, out
    leftovers = [
        p.name for sub in ("clean", "quarantine") for p in (root / "store" / sub).iterdir()
    ]
    assert any(name.endswith(".tmp") for name in leftovers)  # killed mid-file
    code, out = _run(root, "--local")
    assert code == (1 if "batch-05-wrong-schema" in out else 0), out
    assert snapshot(root) == uninterrupted_chunked
    store = Store(root / "store")
    for batch in store.batches():
        assert batch.rows_clean + batch.rows_quarantined + batch.rows_rejected == batch.rows_in


def test_a_run_killed_after_an_alarm_batch_commits_has_taken_back_what_the_alarm_takes(
    demo_project, tmp_path
):
    """The batch that raises a source's alarm takes back what the source sent before it in
    its own ledger transaction. A run killed just after that transaction leaves the batch
    committed *and* those batches out of the training set, as an uninterrupted run does:
    never the batch in the ledger with the rows it takes back still training data."""
    config = load_config(demo_project / "poisonguard.toml")
    clean = pd.read_parquet(config.landing / "partner" / "batch-04-clean.parquet")
    clean = clean.sample(frac=1.0, random_state=5).reset_index(drop=True)
    empty_landing(config.landing)
    before = tmp_path / "before"
    for i, start in enumerate(range(0, len(clean) - 24, 25)):
        rows = clean.iloc[start : start + 25].reset_index(drop=True)
        rows.loc[:1, LABEL] = (rows.loc[:1, LABEL] + 5) % 10
        name = f"partner-b/f{i}.parquet"
        shutil.rmtree(before, ignore_errors=True)
        shutil.copytree(demo_project, before)
        record = _land(config, name, rows)
        if source_states(open_store(config).source_events(), config.sources)["partner-b"].alarmed:
            break
    else:
        pytest.fail("the partner never alarmed")
    store = open_store(config)
    taken = _window_entry(store, record)["alarm"]["batches"]
    assert taken and not set(taken) & set(store.clean_frame()["pg_batch"])

    # The same batch landed in the store as it stood before it, in a run killed just after
    # the batch's ledger transaction commits.
    landing = before / config.landing.relative_to(demo_project)
    rows.to_parquet(landing / name, index=False)
    code, out = _run(before, "--local", crash="after-ledger-commit")
    assert code == -signal.SIGKILL, out
    store = open_store(load_config(before / "poisonguard.toml"))
    (last,) = [b for b in store.batches() if b.sha256 == record.sha256]
    assert _window_entry(store, last)["alarm"]["batches"] == taken
    assert not set(taken) & set(store.clean_frame()["pg_batch"])
    rescans = {e["batch_id"] for e in store.audit_log() if e["action"] == "rescan"}
    assert rescans == set(taken)
