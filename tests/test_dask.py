"""``[execution] engine = "dask"``: a batch's parts judged on a real two-worker local cluster
(worker processes on loopback) end exactly where the same batch judged in this process ends."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from poisonguard.attacks import plant
from poisonguard.cluster import judge_on_cluster, local_cluster_options
from poisonguard.config import ExecutionSettings, load_config
from poisonguard.detectors.drift import DriftCounts, batch_drift
from poisonguard.errors import ClusterError, ConfigError
from poisonguard.pipeline import process_landing
from poisonguard.scan import Guard
from poisonguard.store import CRASH_ENV
from test_chunks import assert_decided_alike, blobs, mixed_table
from test_streaming import (
    TINY,
    _config,
    _outcome,
    _project,
    assert_ends_alike,
    assert_figures_alike,
)

if TYPE_CHECKING:
    from distributed import Client

pytestmark = pytest.mark.slow

#: The cluster every test here shares: two worker processes, one thread each, small memory.
LOCAL = ExecutionSettings(workers=2, threads_per_worker=1, memory_limit="1GiB")


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A real ``distributed.LocalCluster`` as ``[execution]`` starts one (loopback, no
    dashboard), started once for the module; its scheduler's address."""
    from distributed import LocalCluster

    with LocalCluster(**local_cluster_options(LOCAL)) as running:
        yield str(running.scheduler_address)


@pytest.fixture(scope="module")
def client(cluster):
    from distributed import Client

    with Client(cluster, set_as_default=False) as connected:
        yield connected


def on_cluster(address: str, **changes) -> ExecutionSettings:
    """TINY chunks, judged on the cluster at ``address``."""
    return dataclasses.replace(TINY, engine="dask", address=address, **changes)


def staged_parts(frame: pd.DataFrame, folder: Path, sizes: list[int], drop: np.ndarray):
    """``frame`` staged in ``folder`` as row groups of ``sizes`` rows, and its parts as the
    pipeline makes them, less the rows ``drop`` (held before scoring); the rows judged."""
    from poisonguard.pipeline import _parts
    from poisonguard.store import Staged

    schema = pa.Schema.from_pandas(frame, preserve_index=False)
    start = 0
    with pq.ParquetWriter(folder / "rows.parquet", schema) as writer:
        for n in sizes:
            rows = frame.iloc[start : start + n]
            writer.write_table(
                pa.Table.from_pandas(rows, schema=schema, preserve_index=False),
                row_group_size=max(n, 1),
            )
            start += n
    meta = Staged(folder, "b", "", "b.parquet", len(frame), "", [], None, chunked=True)
    parts = _parts(meta, drop)
    return parts, frame.drop(index=frame.index[drop]).reset_index(drop=True)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (
            'engine = "spark"',
            r"pg\.toml: execution\.engine must be one of local, dask\. Got 'spark'",
        ),
        ('address = "scheduler:8786"', r"execution\.address must be a Dask scheduler address"),
        ("workers = 0", r"pg\.toml: execution\.workers must be at least 1\. Got 0 instead\."),
        ("threads_per_worker = 0", r"execution\.threads_per_worker must be at least 1"),
        ('memory_limit = "lots"', r"execution\.memory_limit must be a size such as"),
        ("memory_limit = 2", r"execution\.memory_limit must be of type str"),
        ("worker_wait = 0", r"pg\.toml: execution\.worker_wait must be at least 1\. Got 0"),
    ],
)
def test_execution_engine_keys_are_checked_at_load(extra, match, tmp_path):
    """A wrong engine, scheduler address, cluster size or memory limit fails at load, one line
    naming the file and the key."""
    from test_config import BASE, _write

    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, f"{BASE}[execution]\n{extra}\n"))


def test_execution_engine_keys_load(tmp_path):
    from test_config import BASE, _write

    text = (
        f'{BASE}[execution]\nengine = "dask"\naddress = "tcp://10.0.0.5:8786"\nworkers = 3\n'
        'threads_per_worker = 2\nmemory_limit = "2GiB"\nworker_wait = 60\n'
    )
    run = load_config(_write(tmp_path, text)).execution
    assert (
        run.engine,
        run.address,
        run.workers,
        run.threads_per_worker,
        run.memory_limit,
        run.worker_wait,
    ) == ("dask", "tcp://10.0.0.5:8786", 3, 2, "2GiB", 60)
    assert load_config(_write(tmp_path, BASE)).execution.engine == "local"


@pytest.mark.parametrize("kind", ["duplicate_flood", "backdoor"])
def test_parts_judged_on_workers_are_judged_as_the_batch_whole(kind, client, tmp_path):
    """A numeric batch with a flood of copies or a backdoor, in row groups of uneven sizes
    (an empty one too), some rows held before scoring: the workers' phases give the rows
    held, reasons, p-values, scores and drift the batch judged whole gets, with a window."""
    guard = Guard(label="label").fit(blobs(2500, 1))
    attack = plant(blobs(900, 2), label="label", kind=kind, rate=0.05, random_state=7)
    drop = np.array([0, 5, 250, 251, 899])
    parts, judged = staged_parts(attack.frame, tmp_path, [37, 0, 463, 400], drop)
    window = blobs(300, 9)
    _, scores, whole = guard.judge(judged, source="batch", window=window)
    drift = DriftCounts(guard.reference_)
    found = judge_on_cluster(
        client,
        guard,
        parts,
        list(judged.columns),
        "batch",
        window,
        directory=tmp_path,
        drift=drift,
    )
    assert_decided_alike(found, whole, scores)
    assert whole.quarantined.sum() > 10
    np.testing.assert_array_equal(
        found.window_flagged, guard.window_suspects(judged, window, source="batch")
    )
    expected = batch_drift(guard.reference_, guard._encode(judged, "batch"))
    got = drift.report()
    np.testing.assert_array_equal(got.ks_statistic, expected.ks_statistic)
    np.testing.assert_array_equal(got.psi, expected.psi)
    assert got.label_p_value == expected.label_p_value and got.n_batch == len(judged)
    assert list(tmp_path.iterdir()) == [tmp_path / "rows.parquet"]  # nothing left behind


def test_two_datasets_judged_at_once_share_the_cluster(cluster, tmp_path):
    """Two datasets' batches (each its guard, its client, as two flow runs would have) judged
    on the one cluster at the same time: each gets the decision of its batch judged whole."""
    from concurrent.futures import ThreadPoolExecutor

    from distributed import Client

    def one(seed: int) -> None:
        guard = Guard(label="label").fit(blobs(2000, seed))
        attack = plant(
            blobs(700, seed + 1), label="label", kind="random_flip", rate=0.05, random_state=seed
        )
        folder = tmp_path / f"dataset-{seed}"
        folder.mkdir()
        parts, judged = staged_parts(attack.frame, folder, [100] * 7, np.array([2, 350]))
        _, scores, whole = guard.judge(judged, source="batch")
        with Client(cluster, set_as_default=False) as client:
            found = judge_on_cluster(client, guard, parts, list(judged.columns), "batch")
        assert_decided_alike(found, whole, scores)
        assert whole.quarantined.any()

    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(one, 11), pool.submit(one, 21)]:
            done.result()


@pytest.mark.filterwarnings("ignore:Parsing dates in %d/%m/%Y format")
def test_dates_are_read_in_the_batch_format_on_every_worker(client, tmp_path):
    """Dates written day first, the batch's first date (25/12/2020) in its second part, and a
    part whose dates all have days of 12 or less (alone, pandas reads it month first): each
    worker parses its part in the batch's format, so the decision is the whole batch's."""
    guard = Guard(label="label", columns={"since": "date"}).fit(mixed_table(1500, 1))
    batch = mixed_table(600, 2)
    when = pd.to_datetime(batch["since"], format="%m/%d/%Y")
    batch["since"] = when.dt.strftime("%d/%m/%Y").astype(object)
    batch.loc[:40, "since"] = None
    batch.loc[41, "since"] = "25/12/2020"
    batch.loc[200:299, "since"] = [f"{d % 12 + 1:02d}/04/2021" for d in range(100)]
    attack = plant(batch, label="label", kind="category_swap", rate=0.05, random_state=4)
    parts, judged = staged_parts(attack.frame, tmp_path, [40, 160, 100, 300], np.array([3, 201]))
    _, scores, whole = guard.judge(judged, source="batch")
    found = judge_on_cluster(client, guard, parts, list(judged.columns), "batch")
    assert_decided_alike(found, whole, scores)
    assert whole.quarantined.any()


@pytest.fixture(scope="module")
def whole_run(demo_inputs, tmp_path_factory):
    """The demo's batches taken whole, in this process (the reference outcome)."""
    root = _project(demo_inputs, tmp_path_factory.mktemp("whole") / "demo")
    process_landing(_config(root))
    return _outcome(root)


def test_chunked_batches_judged_on_the_cluster_end_as_whole_ones(
    whole_run, cluster, demo_inputs, tmp_path
):
    """Every demo batch in chunks of 37 rows, its chunks judged on the two workers: the same
    ledger, clean rows, held rows, stages, reasons and suspicion as the batches taken whole
    in this process, and the same report figures (each worker works out its parts' share)."""
    root = _project(demo_inputs, tmp_path / "demo")
    run = process_landing(_config(root, on_cluster(cluster)))
    assert sorted(r.status for r in run.records) == ["committed"] * 4 + ["rejected"]
    outcome = _outcome(root)
    assert_ends_alike(whole_run, outcome)
    assert_figures_alike(whole_run, outcome)


def test_the_flow_runs_on_dask_task_runner(
    whole_run, cluster, demo_inputs, tmp_path, prefect_harness
):
    """``[execution] engine = "dask"`` in the config: the ingest flow runs on prefect-dask's
    DaskTaskRunner connected to the cluster, its detect task judges the chunked batches on
    it, and the store ends as the batches taken whole in this process."""
    from prefect_dask import DaskTaskRunner

    from poisonguard_flows.ingest import ingest_flow, task_runner

    root = _project(demo_inputs, tmp_path / "demo")
    with open(root / "poisonguard.toml", "a") as f:
        f.write(
            f'\n[execution]\nchunk_bytes = 4096\nchunk_rows = 37\nengine = "dask"\n'
            f'address = "{cluster}"\n'
        )
    config_path = str(root / "poisonguard.toml")
    flow = ingest_flow(config_path)
    assert isinstance(flow.task_runner, DaskTaskRunner) and flow.task_runner.address == cluster
    done = flow(config_path)
    assert sorted(o["status"] for o in done["records"]) == ["committed"] * 4 + ["rejected"]
    assert_ends_alike(whole_run, _outcome(root))
    # Without an address, the runner starts a local cluster of the config's sizes.
    local = task_runner(
        dataclasses.replace(
            load_config(config_path), execution=dataclasses.replace(LOCAL, engine="dask")
        )
    )
    assert isinstance(local, DaskTaskRunner) and local.cluster_kwargs == local_cluster_options(
        LOCAL
    )
    assert task_runner(_config(root, TINY)) is None


@contextlib.contextmanager
def doomed_cluster(crash_at: str | None = None) -> Iterator[tuple[str, Client]]:
    """A two-worker cluster of the module's sizes for one test that kills its workers, so that
    a nanny giving up on a worker never leaves the module's cluster short; with
    ``crash_at``, every worker process it starts kills itself (SIGKILL) at its first task."""
    from distributed import Client, LocalCluster

    env = {} if crash_at is None else {CRASH_ENV: crash_at}
    with (
        LocalCluster(**local_cluster_options(LOCAL), env=env) as running,
        Client(running, set_as_default=False) as connected,
    ):
        yield str(running.scheduler_address), connected


def test_a_worker_dying_mid_batch_is_replaced_and_the_decision_holds(tmp_path):
    """One worker killed at its first task: Dask runs its tasks again on the other (which holds
    the guard too) and on the worker its nanny restarts, and the decision is the batch's
    judged whole."""
    guard = Guard(label="label").fit(blobs(2000, 5))
    attack = plant(blobs(800, 6), label="label", kind="backdoor", rate=0.05, random_state=2)
    parts, judged = staged_parts(attack.frame, tmp_path, [100] * 8, np.array([1, 420]))
    _, scores, whole = guard.judge(judged, source="batch")
    with doomed_cluster() as (_, client):
        victim = sorted(client.scheduler_info()["workers"])[0]
        client.run(lambda: os.environ.update({CRASH_ENV: "cluster-task"}), workers=[victim])
        found = judge_on_cluster(client, guard, parts, list(judged.columns), "batch")
        assert victim not in client.scheduler_info()["workers"]  # it did die
    assert_decided_alike(found, whole, scores)


def test_a_value_shared_with_the_workers_outlives_the_worker_holding_its_only_copy(tmp_path):
    """Dask's active memory manager keeps one copy of what no task waits for; the worker
    holding it is killed, and the value is there still (loaded again from its file), where a
    scattered one would be lost and the batch with it. The batch's files go at its end."""
    from poisonguard.cluster import _ClusterParts

    guard = Guard(label="label").fit(blobs(300, 5))
    parts, judged = staged_parts(blobs(200, 6), tmp_path, [100, 100], np.array([], int))
    with doomed_cluster() as (_, client):
        batch = _ClusterParts(client, guard, parts, tuple(judged.columns), "batch", None)
        shared = batch._share(np.arange(1000))
        shared.result(timeout=60)
        client.replicate([shared])
        client.amm.run_once()
        deadline = time.monotonic() + 30
        while len(holders := client.who_has([shared])[shared.key]) != 1:
            assert time.monotonic() < deadline, f"still {len(holders)} copies"
            time.sleep(0.1)
        client.run(os._exit, 1, workers=list(holders), on_error="ignore")
        np.testing.assert_array_equal(shared.result(timeout=60), np.arange(1000))
        assert holders[0] not in client.scheduler_info()["workers"]  # it did die
        files = [Path(f) for f in batch.files]
        assert files and all(f.parent == tmp_path and f.stat().st_mode & 0o077 == 0 for f in files)
        batch.release()
        assert not any(f.exists() for f in files)


@pytest.mark.parametrize("dated", [False, True])
def test_a_cluster_without_workers_stops_the_batch_after_its_wait(dated, tmp_path):
    """A scheduler with no workers (none started, or every one gone for good): the batch
    stops with ClusterError once ``worker_wait`` has passed, rather than wait for ever, and
    leaves none of its shared files behind, whether it stops while judging or while finding
    its date anchors (a table with a date column)."""
    from distributed import Client, LocalCluster

    if dated:
        guard = Guard(label="label", columns={"since": "date"}).fit(mixed_table(300, 1))
        batch = mixed_table(200, 2)
    else:
        guard, batch = Guard(label="label").fit(blobs(300, 5)), blobs(200, 6)
    parts, judged = staged_parts(batch, tmp_path, [100, 100], np.array([], int))
    options = {**local_cluster_options(LOCAL), "n_workers": 0}
    with (
        LocalCluster(**options) as empty,
        Client(empty, set_as_default=False) as client,
        pytest.raises(ClusterError, match=r"^batch: .* no workers for 2 s; nothing was decided"),
    ):
        judge_on_cluster(client, guard, parts, list(judged.columns), "batch", worker_wait=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.parquet"]


def test_workers_dying_mid_batch_fail_closed_and_a_rerun_succeeds(
    whole_run, cluster, demo_inputs, tmp_path
):
    """Every worker killed at its first task, again after each restart, until Dask gives the
    task up: the run stops with ClusterError, no batch is committed (only the seed is in the
    ledger, no data file is written); on a healthy cluster, a rerun ends as the batches taken
    whole."""
    root = _project(demo_inputs, tmp_path / "demo")
    seed = _outcome(root)
    with (
        doomed_cluster("cluster-task") as (address, _),
        pytest.raises(ClusterError, match="lost the batch's work"),
    ):
        process_landing(_config(root, on_cluster(address)))
    after = _outcome(root)
    assert after["ledger"] == seed["ledger"] and sorted(after["files"]) == sorted(seed["files"])
    process_landing(_config(root, on_cluster(cluster)))
    assert_ends_alike(whole_run, _outcome(root))
