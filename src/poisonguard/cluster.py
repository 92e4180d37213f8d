"""The detect step on a Dask cluster, for batches one machine should not judge alone
(``[execution] engine = "dask"``).

A chunked batch's parts (its staged row groups, less the rows held before scoring)
are judged on the cluster's workers in the phases of ``Guard.judge_parts``, each
phase a task per part running ``Guard``'s own step: the within-batch detectors'
summaries of each part (merged here, in batch order), then each part's combined
p-values (kept here, memory-mapped beside the staged rows) and drift counts, then
the global cut here, then the held rows' reasons from the parts that hold them. The
decision is the one the batch gets in this process, chunked or whole.

The fitted guard and each pass's summaries are written once per batch beside the
staged rows, and each is a task that loads its file (checking its digest): a worker
that needs it gets it from a worker that has it, and when a worker dies holding the
only copy (Dask's active memory manager keeps one copy of what no task waits for),
the task loads it again; a scattered value would be lost for good, and with it the
batch. A worker reads its part of the batch by path (``read_row_group``), so the rows
never pass through the scheduler, and only a few numbers per row come back. Workers
must therefore see the store's staging folder at the same path: a local cluster, or
workers sharing its filesystem.

Each task sets numba's thread count (a per-thread setting) to its share of its
host's cores: the host's cores over the Dask threads running there, so that workers
and their threads do not oversubscribe the machine.

Dask is imported only here, and only when a batch is judged on a cluster.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import pandas as pd

from poisonguard.config import Config, ExecutionSettings
from poisonguard.decision import ChunkedDecision
from poisonguard.detectors import Table
from poisonguard.detectors.drift import DriftCounts
from poisonguard.errors import BatchError, ClusterError
from poisonguard.evidence import EvidenceCounts, FigureParts
from poisonguard.scan import Guard, HeldRows
from poisonguard.sources import FlowCounts, RowTally
from poisonguard.store import (
    crash_point,
    drop_shared,
    load_shared,
    read_row_group,
    share_value,
)

if TYPE_CHECKING:
    from distributed import Client, Future

#: Parallel numba kernels entered from two threads of one process at once are not safe
#: under numba's default threading layer: a worker's tasks take turns at the detectors.
_DETECTORS = threading.Lock()

#: Seconds between looks at a batch's other tasks while one part's result is awaited.
_POLL = 0.5


@dataclass(frozen=True)
class Part:
    """Where one part of a staged batch is, for a worker to read by path.

    Attributes
    ----------
    path : str
        The staged rows' Parquet file.
    group : int
        The row group.
    rows : int
        The row group's rows (checked when read).
    keep : ndarray of int64
        Positions in the row group of the rows judged (the others were held before scoring).
    start : int
        The position of the part's first judged row among the batch's judged rows.
    """

    path: str
    group: int
    rows: int
    keep: np.ndarray
    start: int


def local_cluster_options(execution: ExecutionSettings) -> dict[str, Any]:
    """``distributed.LocalCluster``'s arguments for ``[execution]``'s local cluster: worker
    processes on loopback, no dashboard (used here and by the flow's ``DaskTaskRunner``)."""
    return {
        "n_workers": execution.workers,
        "threads_per_worker": execution.threads_per_worker,
        "memory_limit": execution.memory_limit,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": None,
    }


@contextlib.contextmanager
def local_cluster(config: Config) -> Iterator[Config]:
    """``config`` with a scheduler address for the block: its own, or, with engine = "dask"
    and no address, a local cluster's, started here and closed when the block ends (so that
    a run of many batches starts one). Other configs pass through unchanged."""
    run = config.execution
    if run.engine != "dask" or run.address:
        yield config
        return
    from distributed import LocalCluster

    with LocalCluster(**local_cluster_options(run)) as cluster:
        yield at_address(config, str(cluster.scheduler_address))


def at_address(config: Config, address: str) -> Config:
    """``config`` judging on the cluster whose scheduler is at ``address``."""
    return dataclasses.replace(
        config, execution=dataclasses.replace(config.execution, address=address)
    )


@contextlib.contextmanager
def connect(execution: ExecutionSettings) -> Iterator[Client]:
    """A client of ``execution.address``'s cluster, or of a local cluster started for the
    block when the address is empty."""
    from distributed import Client, LocalCluster

    with contextlib.ExitStack() as stack:
        target: Any = execution.address
        if not target:
            target = stack.enter_context(LocalCluster(**local_cluster_options(execution)))
        try:
            client = stack.enter_context(Client(target, set_as_default=False, timeout="60s"))
        except OSError as exc:
            raise ClusterError(
                f"could not reach the Dask scheduler at {execution.address}: {exc}"
            ) from exc
        yield client


def judge_on_cluster(
    client: Client,
    guard: Guard,
    parts: Sequence[Part],
    columns: Sequence[str],
    source: str,
    window: pd.DataFrame | None = None,
    *,
    directory: str | Path | None = None,
    drift: DriftCounts | None = None,
    figures: EvidenceCounts | None = None,
    flows: FlowCounts | None = None,
    worker_wait: int = ExecutionSettings.worker_wait,
) -> ChunkedDecision:
    """``Guard.judge_chunks`` of a staged batch with its parts judged on ``client``'s cluster.

    Parameters
    ----------
    client : distributed.Client
    guard : Guard
        Fitted; sent once to every worker.
    parts : sequence of Part
        The batch's parts, in batch order.
    columns : sequence of str
        The data columns a worker reads.
    source : str
        The batch's name, for messages and reasons.
    window : DataFrame, optional
        As in ``Guard.judge``: rows the source sent before (counted here, where they are).
    directory : str or Path, optional
        As in ``Guard.judge_chunks``.
    drift : DriftCounts, optional
        Counts every judged row (each worker counts its parts; they are added here).
    figures : EvidenceCounts, optional
        Keeps every judged row's share of the report's figures (each worker works out its
        parts' shares, ``FigureParts``; they are kept here).
    flows : FlowCounts, optional
        Adds up the batch's label flows (each worker works out its parts').
    worker_wait : int
        Seconds to wait on a cluster with no workers (``[execution] worker_wait``).

    Returns
    -------
    ChunkedDecision

    Raises
    ------
    ClusterError
        When the cluster loses the batch's work (a task's workers killed past Dask's
        retries, the scheduler gone, no workers for ``worker_wait`` s): nothing of the batch
        is decided, and a rerun judges it again.
    """
    from concurrent.futures import CancelledError

    from distributed import KilledWorker
    from distributed.comm import CommClosedError

    batch = _ClusterParts(
        client, guard, parts, tuple(columns), source, drift, figures, flows, worker_wait
    )
    try:
        batch.start()
        return guard.judge_parts(batch, source, window, directory)
    except (KilledWorker, CommClosedError, CancelledError) as exc:
        raise ClusterError(
            f"{source}: the Dask cluster lost the batch's work ({type(exc).__name__}: {exc}); "
            "nothing was decided, run again"
        ) from exc
    finally:
        batch.release()


class _ClusterParts:
    """``BatchParts`` whose phases are tasks on a cluster, one per part (``judge_on_cluster``)."""

    def __init__(
        self,
        client: Client,
        guard: Guard,
        parts: Sequence[Part],
        columns: tuple[str, ...],
        source: str,
        drift: DriftCounts | None,
        figures: EvidenceCounts | None = None,
        flows: FlowCounts | None = None,
        worker_wait: int = ExecutionSettings.worker_wait,
    ) -> None:
        self.client = client
        self.source = source
        self.worker_wait = worker_wait
        self.parts = list(parts)
        self.drift = drift
        self.figures = figures
        self.flows = flows
        self.shared: list[Future] = []
        self.files: list[str] = []  # beside the staged rows
        self.folder = Path(self.parts[0].path).parent if self.parts else None
        self.sent: tuple[Mapping[str, Any], Future] | None = None
        self.guard = guard
        self.columns = columns
        self.counts: Future | None = None
        self.figure_parts: Future | None = None
        self.job: dict[str, Any] = {}

    def start(self) -> None:
        """Share the guard and the counters with the workers and find the batch's date
        anchors (after construction, so that ``release`` follows whatever fails here)."""
        if self.drift is not None:
            self.counts = self._share(self.drift.fresh())
        if self.figures is not None:
            self.figure_parts = self._share(self.figures.parts)
        self.job = {
            "guard": self._share(self.guard),
            "columns": self.columns,
            "source": self.source,
            "threads": _numba_threads(self.client),
            "anchors": {},
        }
        anchors: dict[str, Any] = {}
        if _has_dates(self.guard):  # the batch's first date cell of each date column, in order
            for found in self._each(_anchors_task, [(p, {}) for p in self.parts]):
                anchors.update({k: v for k, v in found.items() if k not in anchors})
        self.job["anchors"] = anchors

    def _share(self, value: Any) -> Future:
        """``value`` for the batch's tasks: a task loading it from a file of the batch's."""
        path, digest = share_value(value, self.folder)
        self.files.append(path)
        future = self.client.submit(load_shared, path, digest, pure=False)
        self.shared.append(future)
        return future

    def _each(self, task: Any, calls: Sequence[tuple[Part, dict[str, Any]]]) -> Iterator[Any]:
        """``task`` on each part with its own arguments, results in batch order; the first
        task lost or failed, whichever part it is, ends the batch then and there."""
        futures = [
            self.client.submit(task, part, self.job, pure=False, **extra) for part, extra in calls
        ]
        try:
            for i, future in enumerate(futures):
                self._await(future, futures[i:])  # those before are released
                yield future.result()
                future.release()
        finally:
            for future in futures:
                future.release()

    def _await(self, future: Future, pending: Sequence[Future]) -> None:
        """Until ``future`` is done: raises as soon as any of ``pending`` fails or is lost,
        and ``ClusterError`` once the cluster has had no workers for ``worker_wait`` s."""
        idle_since: float | None = None
        while not future.done():
            for other in pending:
                if other.status in ("error", "cancelled"):
                    other.result()  # raises
            with contextlib.suppress(TimeoutError):
                future.result(timeout=_POLL)
            if future.done() or self.client.nthreads():
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > self.worker_wait:
                raise ClusterError(
                    f"{self.source}: the Dask cluster has had no workers for "
                    f"{self.worker_wait} s; nothing was decided, run again"
                )

    def _summaries(self, summaries: Mapping[str, Any]) -> Future:
        """The batch's summaries on every worker, sent once for the phases that read them."""
        if self.sent is None or self.sent[0] is not summaries:
            self.sent = (summaries, self._share(dict(summaries)))
        return self.sent[1]

    def summarize(
        self, names: tuple[str, ...], done: Mapping[str, Any]
    ) -> Iterator[tuple[dict[str, Any], int]]:
        prior = self._share(dict(done))
        yield from self._each(
            _summarize_task, [(p, {"names": names, "done": prior}) for p in self.parts]
        )

    def log_p(
        self, summaries: Mapping[str, Any], anchored: bool
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None, RowTally]]:
        extra = {
            "summaries": self._summaries(summaries),
            "anchored": anchored,
            "counts": self.counts,
            "figures": self.figure_parts,
        }
        for combined, over_anchored, source_tally, tally, share, flows in self._each(
            _log_p_task, [(p, extra) for p in self.parts]
        ):
            if self.drift is not None:
                self.drift.add_tally(tally)
            if self.figures is not None:
                self.figures.add_part(share)
            if self.flows is not None:
                self.flows.add(flows)
            yield combined, over_anchored, source_tally

    def held(
        self,
        rows: np.ndarray,
        summaries: Mapping[str, Any],
        n_earlier: int,
        p_cuts: tuple[float, ...],
    ) -> Iterator[HeldRows]:
        shared = {"summaries": self._summaries(summaries), "n_earlier": n_earlier, "p_cuts": p_cuts}
        calls = []
        for part in self.parts:
            lo, hi = np.searchsorted(rows, [part.start, part.start + part.keep.size])
            if hi > lo:
                calls.append((part, {**shared, "rows": rows[lo:hi]}))
        yield from self._each(_held_task, calls)

    def release(self) -> None:
        """Drop what was shared with the workers for this batch, and its files."""
        for future in self.shared:
            future.release()
        self.shared.clear()
        drop_shared(self.files)
        self.files.clear()


def _has_dates(guard: Guard) -> bool:
    encoder = guard.encoder_
    return any(encoder.kinds.get(c) == "date" for c in encoder.numbers_)


def _numba_threads(client: Client) -> dict[str, int]:
    """Per worker address: its tasks' numba threads, its host's cores over the Dask threads
    running on that host (at least one)."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    cores = client.run(_cores)
    on_host: dict[str, int] = {}
    for info in workers.values():
        on_host[info["host"]] = on_host.get(info["host"], 0) + int(info["nthreads"])
    return {
        address: max(1, cores.get(address, 1) // on_host[info["host"]])
        for address, info in workers.items()
    }


def _cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# --------------------------------------------------------------------------- on the workers


class _Job(TypedDict):
    """What every task of a batch is given: the guard (sent once to each worker), the columns
    to read, the batch's name, numba threads per worker, the batch's date anchors."""

    guard: Guard
    columns: tuple[str, ...]
    source: str
    threads: dict[str, int]
    anchors: dict[str, Any]


def _read(part: Part, job: _Job) -> pd.DataFrame:
    """At a task's start on a worker: numba's threads for this task's thread; the part's
    judged rows, read from its row group."""
    import numba
    from distributed import get_worker

    crash_point("cluster-task")
    wanted = job["threads"].get(get_worker().address, 1)
    numba.set_num_threads(max(1, min(wanted, int(numba.config.NUMBA_NUM_THREADS))))  # type: ignore[attr-defined]
    frame = read_row_group(part.path, part.group, list(job["columns"]))
    if len(frame) != part.rows:
        raise BatchError(
            job["source"],
            f"the staged rows changed while the batch was judged: row group {part.group} "
            f"holds {len(frame):,} rows, not {part.rows:,}",
        )
    return frame.iloc[part.keep].reset_index(drop=True)


def _table(part: Part, job: _Job) -> tuple[Table, np.ndarray]:
    frame = _read(part, job)
    table = job["guard"]._encode(frame, job["source"], job["anchors"])
    return table, np.arange(part.start, part.start + len(frame))


def _anchors_task(part: Part, job: _Job) -> dict[str, Any]:
    return job["guard"].encoder_.date_anchors(_read(part, job))


def _summarize_task(
    part: Part, job: _Job, names: tuple[str, ...], done: Mapping[str, Any]
) -> tuple[dict[str, Any], int]:
    table, positions = _table(part, job)
    with _DETECTORS:
        return job["guard"]._summarize_part(table, positions, names, done), table.n_rows


def _log_p_task(
    part: Part,
    job: _Job,
    summaries: Mapping[str, Any],
    anchored: bool,
    counts: DriftCounts | None,
    figures: FigureParts | None,
) -> tuple[
    np.ndarray,
    np.ndarray | None,
    RowTally,
    dict[str, Any] | None,
    dict[str, Any] | None,
    np.ndarray | None,
]:
    table, positions = _table(part, job)
    tally = None
    if counts is not None:
        mine = counts.fresh()
        mine.add(table)
        tally = mine.tally()
    guard = job["guard"]
    with _DETECTORS:
        scores = guard._scores(table, positions, summaries)
        combined, over_anchored, source_tally = guard._log_p_of(scores, anchored)
    share = None if figures is None else figures.of(table, scores)
    return combined, over_anchored, source_tally, tally, share, guard.flow_log_e(table)


def _held_task(
    part: Part,
    job: _Job,
    rows: np.ndarray,
    summaries: Mapping[str, Any],
    n_earlier: int,
    p_cuts: tuple[float, ...],
) -> HeldRows:
    frame = _read(part, job).iloc[rows - part.start]
    guard = job["guard"]
    table = guard._encode(frame, job["source"], job["anchors"])
    with _DETECTORS:
        return guard._held_part(table, rows, summaries, n_earlier, p_cuts)
