"""The pre-training gate as a Prefect subflow, for an ML team's own training flow::

from poisonguard_flows.gate import pretraining_gate

@flow
def train(config_path: str):
    manifest = pretraining_gate(config_path, max_pending="7d")   # raises GateError if unsafe
    data = load_rows(manifest["files"])
    ...
"""

from __future__ import annotations

from prefect import flow

from poisonguard.config import load_config
from poisonguard.errors import GateError
from poisonguard.gate import check, parse_age


@flow(name="poisonguard-gate")
def pretraining_gate(config_path: str, max_pending: str | None = None) -> dict:
    """Check the training set; return its manifest, or raise GateError with every reason."""
    config = load_config(config_path)
    report = check(
        config, max_pending=parse_age(max_pending) if max_pending else None, actor="prefect-gate"
    )
    if not report.ok:
        raise GateError(list(report.reasons))
    return report.manifest
