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

#: What a scan runs by default. Per-feature and whole-row outliers (``tail``,
#: ``knn_distance``), label errors judged by trusted neighbours and by a model
#: (``knn_label``, ``model_label``; they also catch trigger rows relabelled to a
#: target, which is what a backdoor batch mostly is), and copy floods and
#: conflicts (``duplicates``). ``knn_distance`` and ``knn_label`` share one
#: neighbour search. Left out: ``backdoor`` (most of its catch is already made
#: by the label detectors, and it costs a third of the suite's time),
#: ``class_*`` (slower, and subsumed by ``knn_label`` for flips),
#: ``batch_knn_label`` (depends on batch size and make-up).
DEFAULT_DETECTORS: tuple[str, ...] = (
    "tail",
    "knn_distance",
    "knn_label",
    "model_label",
    "duplicates",
)

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
