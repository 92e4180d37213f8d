"""poisonguard: a gate that stops poisoned and mislabelled rows from reaching training sets."""

from __future__ import annotations

from poisonguard.config import Config, DetectionSettings, load_config
from poisonguard.errors import (
    BatchError,
    ConfigError,
    GateError,
    PoisonguardError,
    ReviewError,
    StoreError,
)
from poisonguard.gate import gate
from poisonguard.scan import Guard, ScanResult, scan

__version__ = "0.1.0"

__all__ = [
    "BatchError",
    "Config",
    "ConfigError",
    "DetectionSettings",
    "GateError",
    "Guard",
    "PoisonguardError",
    "ReviewError",
    "ScanResult",
    "StoreError",
    "__version__",
    "gate",
    "load_config",
    "scan",
]
