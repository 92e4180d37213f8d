"""Detectors: one module per family, every numba kernel in ``_kernels.py``.

``REGISTRY`` maps a detector's name to its class; the config's ``[detectors]``
table picks from it by name. ``DEFAULT_DETECTORS`` names the ones a scan runs
when the config does not say.
"""

from __future__ import annotations

from poisonguard.detectors.backdoor import BackdoorDetector
from poisonguard.detectors.base import UNSEEN_LABEL, Detector, Encoder, Table
from poisonguard.detectors.drift import DriftReport, batch_drift
from poisonguard.detectors.duplicates import DuplicatesDetector
from poisonguard.detectors.labels import (
    BatchKnnLabelDetector,
    KnnLabelDetector,
    ModelLabelDetector,
)
from poisonguard.detectors.outliers import (
    ClassKnnDistanceDetector,
    ClassTailDetector,
    KnnDistanceDetector,
    TailDetector,
)

REGISTRY: dict[str, type[Detector]] = {
    cls.name: cls
    for cls in (
        TailDetector,
        ClassTailDetector,
        KnnDistanceDetector,
        ClassKnnDistanceDetector,
        KnnLabelDetector,
        BatchKnnLabelDetector,
        ModelLabelDetector,
        DuplicatesDetector,
        BackdoorDetector,
    )
}

#: What a scan runs by default: one detector per kind of poison, chosen for
#: catch at a low false-quarantine rate and for speed (see docs in each class).
DEFAULT_DETECTORS: tuple[str, ...] = ("tail", "knn_distance", "knn_label")

__all__ = [
    "DEFAULT_DETECTORS",
    "REGISTRY",
    "UNSEEN_LABEL",
    "Detector",
    "DriftReport",
    "Encoder",
    "Table",
    "batch_drift",
]
