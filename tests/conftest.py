"""Shared fixtures. Prefect runs offline, with its home in a throw-away folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

# Speed is measured in benchmarks/, not asserted here: no per-example deadline (a first
# example that loads a compiled kernel, or a busy shared machine, would fail it).
settings.register_profile("poisonguard", deadline=None)
settings.load_profile("poisonguard")

_PREFECT_HOME = tempfile.mkdtemp(prefix="pg-prefect-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for the whole session (it takes ~13 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture
def homes():
    """A maker of synthetic home sales: ``homes(n, seed)`` has an id, size, rooms, a city and
    a price that follows size and rooms with noise (a regression target)."""
    import numpy as np
    import pandas as pd

    def make(n: int, seed: int) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        frame = pd.DataFrame(
            {
                "row_id": np.arange(n),
                "size": rng.uniform(30, 200, n).round(1),
                "rooms": rng.integers(1, 7, n),
                "city": rng.choice(["north", "south", "east"], n),
            }
        )
        frame["price"] = (
            3000 * frame["size"] + 20000 * frame["rooms"] + rng.normal(0, 20000, n)
        ).round()
        return frame

    return make


@pytest.fixture(scope="session")
def demo_inputs(tmp_path_factory) -> Path:
    """The demo's trusted seed, landing batches and truth, built once per session."""
    from poisonguard.demo import build_demo

    root = tmp_path_factory.mktemp("demo-inputs")
    build_demo(root)
    return root


@pytest.fixture
def demo_project(demo_inputs, tmp_path) -> Path:
    """A fresh copy of the demo inputs, initialised (config, suite, seeded store)."""
    import shutil

    from poisonguard.demo import LABEL
    from poisonguard.initialize import init_dataset

    root = tmp_path / "demo"
    shutil.copytree(demo_inputs, root)
    init_dataset(
        root / "trusted.parquet", label=LABEL, directory=root, id_column="row_id", name="digits"
    )
    return root


@pytest.fixture(scope="session")
def demo_run(demo_inputs, tmp_path_factory):
    """The demo's five batches taken through validate -> detect -> commit once (read it, or
    copy its folder before changing anything)."""
    import shutil

    from poisonguard.config import load_config
    from poisonguard.demo import LABEL
    from poisonguard.initialize import init_dataset
    from poisonguard.pipeline import process_landing

    root = tmp_path_factory.mktemp("demo-run") / "demo"
    shutil.copytree(demo_inputs, root)
    init_dataset(
        root / "trusted.parquet", label=LABEL, directory=root, id_column="row_id", name="digits"
    )
    return root, process_landing(load_config(root / "poisonguard.toml")).records


@pytest.fixture(scope="session")
def postgres():
    """A throw-away PostgreSQL server for the session (``tests/postgres_server.py``); the
    tests that use it skip, saying why, where none can run here."""
    import postgres_server

    try:
        server = postgres_server.start()
    except postgres_server.Unavailable as exc:
        reason = f"PostgreSQL tests skipped: {exc}"
        if os.environ.get(postgres_server.REQUIRE_ENV) == "1":
            pytest.fail(f"{reason} ({postgres_server.REQUIRE_ENV}=1)", pytrace=False)
        pytest.skip(reason)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["folder", "memory"])
def data_url(request, tmp_path) -> str:
    """A new place for data files: a local folder apart from the store, or ``memory://``."""
    import uuid

    if request.param == "folder":
        return str(tmp_path / "shared" / "data")
    return f"memory://{uuid.uuid4().hex}/data"
