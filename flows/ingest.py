"""The ingest flow: landing zone -> validate -> detect -> decide -> commit, batch by batch.

Tasks pass paths, never frames. Batches run one after another because each is
judged against the clean training set that the ones before it grew.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.schedules import Cron

from poisonguard.config import load_config
from poisonguard.pipeline import (
    commit_batch,
    detect_batch,
    exclusive,
    find_new_batches,
    report_paths,
    validate_batch,
)
from poisonguard.report import markdown_summary
from poisonguard.store import Store


@task(cache_policy=NO_CACHE)
def find_new(config_path: str) -> list[tuple[str, str]]:
    """New landed files, each with the SHA-256 it was found under (hashed once per run)."""
    config = load_config(config_path)
    return [(str(p), sha) for p, sha in find_new_batches(config, Store(config.store))]


@task(cache_policy=NO_CACHE, task_run_name="validate {batch_path}")
def validate(config_path: str, batch_path: str, sha256: str) -> dict:
    """``{"staged": folder}`` for rows to score, or ``{"record": ...}`` for a file rejected
    whole (its ledger record; None if the ledger holds none)."""
    config = load_config(config_path)
    store = Store(config.store)
    staged = validate_batch(batch_path, config, store, sha256=sha256)
    if staged is not None:
        return {"staged": str(staged)}
    record = store.batch_by_sha(sha256)
    return {"record": None if record is None else record.as_dict()}


@task(cache_policy=NO_CACHE)
def detect(config_path: str, staged: str) -> str:
    config = load_config(config_path)
    return str(detect_batch(staged, config, Store(config.store)))


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def commit(config_path: str, staged: str) -> dict:
    config = load_config(config_path)
    return commit_batch(staged, config, Store(config.store)).as_dict()


@task(cache_policy=NO_CACHE)
def publish(config_path: str, batch_id: str) -> str | None:
    """Show the batch's report in the Prefect UI: a markdown summary and the HTML report's path."""
    config = load_config(config_path)
    html_path, json_path = report_paths(Store(config.store), batch_id)
    if not json_path.exists():
        return None
    report = json.loads(json_path.read_text())
    key = re.sub(r"[^a-z0-9-]+", "-", f"poisonguard-{batch_id}".lower()).strip("-")
    create_markdown_artifact(
        markdown_summary(report, html_path), key=key, description=f"poisonguard batch {batch_id}"
    )
    return str(html_path)


@flow(name="poisonguard-ingest", log_prints=False)
def ingest(config_path: str) -> list[dict]:
    """Process every new batch file in the config's landing folder once."""
    config = load_config(config_path)
    store = Store(config.store)
    outcomes: list[dict] = []
    with exclusive(store):
        for batch_path, sha in find_new(config_path):
            step = validate(config_path, batch_path, sha)
            if "staged" not in step:
                if step["record"] is not None:
                    outcomes.append(step["record"])
                    publish(config_path, step["record"]["batch_id"])
                continue
            staged = step["staged"]
            detect(config_path, staged)
            outcome = commit(config_path, staged)
            publish(config_path, outcome["batch_id"])
            outcomes.append(outcome)
    return outcomes


def serve(config_path: str) -> None:
    """Serve the ingest flow as a deployment on the config's cron schedule, in its time zone
    (blocks)."""
    ingest.serve(**deployment_options(config_path))


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
