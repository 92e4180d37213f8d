"""`poisonguard serve`: a real Prefect deployment whose cron schedule really creates runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from poisonguard.store import Store


def test_the_deployment_runs_its_cron_schedule_in_the_configured_time_zone(tmp_path):
    """serve deploys the flow with the config's cron schedule in schedule.timezone; without a
    cron there is no schedule. (Built as serve builds it; no server needed.)"""
    from poisonguard_flows.ingest import deployment_options, ingest

    (tmp_path / "suite.json").write_text('{"name": "s", "expectations": []}')
    config = tmp_path / "pg.toml"
    dataset = '[dataset]\nname = "d"\nlabel = "y"\nexpectations = "suite.json"\n'
    config.write_text(dataset + '[schedule]\ncron = "0 6 * * 1"\ntimezone = "Europe/Berlin"\n')
    deployment = ingest.to_deployment(**deployment_options(str(config)))
    [scheduled] = deployment.schedules
    assert scheduled.schedule.cron == "0 6 * * 1"
    assert scheduled.schedule.timezone == "Europe/Berlin"
    assert deployment.name == "poisonguard-d"
    assert deployment.parameters == {"config_path": str(config.resolve())}

    config.write_text(dataset)
    assert ingest.to_deployment(**deployment_options(str(config))).schedules == []


@pytest.mark.slow
def test_served_deployment_runs_on_its_schedule(demo_project, tmp_path):
    """With a cron of every minute, the landing zone is processed without anyone calling run."""
    config = demo_project / "poisonguard.toml"
    text = config.read_text().replace('cron = "*/15 * * * *"', 'cron = "* * * * *"')
    config.write_text(text)
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "poisonguard.cli", "serve", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    store = Store(demo_project / "store")
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            landed = [b for b in store.batches() if b.status != "seed"]
            if len(landed) == 5:
                break
            time.sleep(3)
        landed = [b for b in store.batches() if b.status != "seed"]
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
    assert len(landed) == 5, out[-3000:]
    assert "serving poisonguard-digits" in out
