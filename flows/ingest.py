"""The ingest flow: landing zone -> validate -> detect -> decide -> commit, batch by batch.

Tasks pass paths, never frames. Batches run one after another, each judged
against the store's pinned reference version (which the detect step records);
the training set they grow is the gate's, the reference grows only by promotion.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

from prefect import Flow, flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.schedules import Cron
from prefect.task_runners import TaskRunner

from poisonguard.cluster import at_address, local_cluster_options
from poisonguard.config import Config, load_config
from poisonguard.landing import Entry
from poisonguard.pipeline import (
    commit_batch,
    detect_batch,
    find_new_batches,
    purge_after_run,
    report_paths,
    validate_batch,
)
from poisonguard.report import load_report, markdown_summary
from poisonguard.store import open_store


@task(cache_policy=NO_CACHE)
def find_new(config_path: str) -> dict:
    """New landed files to take (name, size, time) and notices for the others."""
    config = load_config(config_path)
    entries, notices = find_new_batches(config, open_store(config))
    return {
        # The entry's name, not its path's: ``<source>/<file>`` names the batch's source.
        "entries": [[e.name, str(e.path), e.size, e.mtime_ns] for e in entries],
        "notices": [n.as_dict() for n in notices],
    }


@task(cache_policy=NO_CACHE, task_run_name="validate {name}")
def validate(config_path: str, name: str, path: str, size: int, mtime_ns: int) -> dict:
    """``{"staged": folder}`` for rows to score, ``{"record": ...}`` for a file rejected
    whole, or ``{"notice": ...}`` for a file not taken."""
    config = load_config(config_path)
    intake = validate_batch(Entry(name, Path(path), size, mtime_ns), config, open_store(config))
    if intake.staged is not None:
        return {"staged": str(intake.staged)}
    if intake.record is not None:
        return {"record": intake.record.as_dict()}
    return {"notice": intake.notice.as_dict() if intake.notice else None}


@task(cache_policy=NO_CACHE)
def detect(config_path: str, staged: str, address: str | None = None) -> str:
    """The batch's decision; a chunked batch judged on the Dask cluster at ``address`` when
    the config's engine is dask (the flow's ``DaskTaskRunner``'s cluster)."""
    config = load_config(config_path)
    if address:
        config = at_address(config, address)
    return str(detect_batch(staged, config, open_store(config)))


@task(cache_policy=NO_CACHE)
def commit(config_path: str, staged: str) -> dict:
    config = load_config(config_path)
    return commit_batch(staged, config, open_store(config)).as_dict()


@task(cache_policy=NO_CACHE)
def publish(config_path: str, batch_id: str) -> str | None:
    """Show the batch's report in the Prefect UI: a markdown summary and the HTML report's path."""
    config = load_config(config_path)
    html_path, json_path = report_paths(open_store(config), batch_id)
    if not json_path.exists():
        return None
    report = load_report(json_path)
    key = re.sub(r"[^a-z0-9-]+", "-", f"poisonguard-{batch_id}".lower()).strip("-")[:100]
    create_markdown_artifact(
        markdown_summary(report, html_path), key=key, description=f"poisonguard batch {batch_id}"
    )
    return str(html_path)


@task(cache_policy=NO_CACHE)
def purge(config_path: str) -> dict | None:
    """Purge what ``[retention]`` says is due (never fails the run: ``purge_after_run``)."""
    config = load_config(config_path)
    done = purge_after_run(config, open_store(config))
    if done is not None and "error" in done:
        get_run_logger().warning(done["error"])
    return done


@flow(name="poisonguard-ingest", log_prints=False)
def ingest(config_path: str) -> dict:
    """Process every new batch file in the config's landing folder once.

    Returns ``{"records": [...], "notices": [...], "purge": ...}``: the ledger record
    of each batch taken, a notice for each landing entry skipped or left waiting, and
    what the retention purge at the end did (``pipeline.purge_after_run``).
    """
    config = load_config(config_path)
    store = open_store(config)
    records: list[dict] = []
    with store.exclusive():
        found = find_new(config_path)
        notices: list[dict] = list(found["notices"])
        for name, path, size, mtime_ns in found["entries"]:
            step = validate(config_path, name, path, size, mtime_ns)
            if "notice" in step:
                if step["notice"] is not None:
                    notices.append(step["notice"])
                continue
            if "record" in step:
                records.append(step["record"])
                publish(config_path, step["record"]["batch_id"])
                continue
            detect(config_path, step["staged"], _cluster_address())
            outcome = commit(config_path, step["staged"])
            publish(config_path, outcome["batch_id"])
            records.append(outcome)
        purged = purge(config_path)
    return {"records": records, "notices": notices, "purge": purged}


def task_runner(config: Config) -> TaskRunner[Any] | None:
    """The ingest flow's task runner for ``config``: with ``[execution] engine = "dask"``,
    prefect-dask's ``DaskTaskRunner`` on the cluster at ``execution.address``, or on a local
    cluster it starts for the flow run (the library's ``local_cluster_options``); else
    None (Prefect's default)."""
    run = config.execution
    if run.engine != "dask":
        return None
    from prefect_dask import DaskTaskRunner

    if run.address:
        return DaskTaskRunner(address=run.address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster", cluster_kwargs=local_cluster_options(run)
    )


def ingest_flow(config_path: str) -> Flow[[str], dict]:
    """The ingest flow with the task runner ``config_path``'s ``[execution]`` asks for. Flow
    runs of several configs may share one cluster (each its own run, in parallel)."""
    runner = task_runner(load_config(config_path))
    return ingest if runner is None else ingest.with_options(task_runner=runner)


def _cluster_address() -> str | None:
    """The scheduler address of this flow run's ``DaskTaskRunner`` (whose local cluster
    starts here, at the first batch that needs it); None under any other runner.

    The flow's tasks are called, not submitted, so they run in the flow's process: none
    talks to Prefect's API from a Dask worker (where, under Prefect's temporary API, each
    worker would start a server of its own). The workers run the library's detect phases,
    which ``detect`` maps onto this cluster.
    """
    context = FlowRunContext.get()
    runner = None if context is None else context.task_runner
    if runner is None or type(runner).__name__ != "DaskTaskRunner":
        return None
    return str(cast(Any, runner).client.scheduler.address)


def serve(config_path: str) -> None:
    """Serve the ingest flow as a deployment on the config's cron schedule, in its time zone
    (blocks)."""
    ingest_flow(config_path).serve(**deployment_options(config_path))


def deployment_options(config_path: str) -> dict[str, Any]:
    """What ``serve`` deploys the ingest flow with: its name, the config's cron schedule in
    the config's ``schedule.timezone``, the config path as parameter, and tags."""
    config = load_config(config_path)
    return {
        "name": f"poisonguard-{config.name}",
        "schedule": None if config.cron is None else Cron(config.cron, timezone=config.timezone),
        "parameters": {"config_path": str(Path(config_path).resolve())},
        "tags": ["poisonguard"],
    }
