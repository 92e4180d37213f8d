"""Detectors: one module per family, every numba kernel in ``_kernels.py``.

``REGISTRY`` maps a detector's name to its class; the config's ``[detectors]``
table picks from it by name.
"""

from __future__ import annotations

from poisonguard.detectors.base import UNSEEN_LABEL, Detector, Encoder, Table

REGISTRY: dict[str, type[Detector]] = {}

__all__ = ["REGISTRY", "UNSEEN_LABEL", "Detector", "Encoder", "Table"]
