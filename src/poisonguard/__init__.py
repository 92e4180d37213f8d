"""poisonguard: a gate that stops poisoned and mislabelled rows from reaching training sets."""

from __future__ import annotations

from poisonguard.errors import (
    BatchError,
    ConfigError,
    GateError,
    PoisonguardError,
    ReviewError,
    StoreError,
)

__version__ = "0.1.0"

__all__ = [
    "BatchError",
    "ConfigError",
    "GateError",
    "PoisonguardError",
    "ReviewError",
    "StoreError",
    "__version__",
]
