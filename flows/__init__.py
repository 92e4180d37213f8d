"""Prefect flows for poisonguard: thin adapters over the library.

Importing this package sets Prefect's environment for an offline, serverless
run (no telemetry, a temporary local API on SQLite) unless the caller set it.
Call ``configure(store_root)`` before the first import of Prefect to keep
Prefect's own database inside the store.
"""

from __future__ import annotations

import os
from pathlib import Path

OFFLINE_ENV = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "GX_ANALYTICS_ENABLED": "false",
}


def configure(store_root: str | Path | None = None) -> None:
    """Set Prefect's offline settings; ``PREFECT_HOME`` goes under the store."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    if store_root is not None:
        os.environ.setdefault("PREFECT_HOME", str(Path(store_root).resolve() / "prefect"))


configure()
