"""Speed of each detector at the product's design size: 200k x 32 batch, 20k-row reference.

Usage: ``python benchmarks/_detector_speed.py [--rows 200000] [--reference 20000]``

Prints fit and score seconds and rows/s (batch rows over fit + score) for
every registered detector, for the default suite run together (detectors
with the same neighbour settings share one search), where a whole ``scan()``
spends its time on ``speed.py``'s data (fit and calibrate, score, decide with
reasons), and scikit-learn's IsolationForest as the anchor. Kernels are
compiled (and cached) before timing. Thread counts come from the environment
(``NUMBA_NUM_THREADS`` and the BLAS variables).
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import numpy as np
import pandas as pd

from poisonguard.detectors import DEFAULT_DETECTORS, REGISTRY, Encoder
from poisonguard.detectors._neighbours import clear_cache


def make_frames(n_batch: int, n_ref: int, d: int, n_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 3.0, size=(n_classes, d))
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)

    def draw(n: int) -> pd.DataFrame:
        y = rng.integers(0, n_classes, n)
        X = centres[y] + rng.standard_normal((n, d)) @ mixing
        frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(d)])
        frame["label"] = y
        return frame

    return draw(n_ref), draw(n_batch)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def cpu_timed(fn):
    """Wall seconds and CPU seconds (all threads) of ``fn()``."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--reference", type=int, default=20_000)
    ap.add_argument("--features", type=int, default=32)
    ap.add_argument("--classes", type=int, default=10)
    args = ap.parse_args()
    ref_frame, batch_frame = make_frames(args.rows, args.reference, args.features, args.classes)
    features = [c for c in ref_frame.columns if c != "label"]
    enc = Encoder.fit(ref_frame, features, "label")
    reference = enc.transform(ref_frame, "reference")
    batch = enc.transform(batch_frame)
    small = batch.take(np.arange(500))
    # The synthetic data carries classes: regression detectors have no target to judge.
    registry = {n: c for n, c in REGISTRY.items() if "classification" in c.tasks}
    for cls in registry.values():  # compile and warm every code path
        cls().fit(reference.take(np.arange(3000))).score(small)
    clear_cache()
    print(f"batch {args.rows} x {args.features}, reference {args.reference}, cpus {os.cpu_count()}")
    print(f"{'detector':<20}{'fit s':>8}{'score s':>9}{'cpu s':>8}{'rows/s':>12}")
    for name, cls in registry.items():
        clear_cache()
        det, t_fit, c_fit = cpu_timed(lambda cls=cls: cls().fit(reference))
        _, t_score, c_score = cpu_timed(lambda det=det: det.score(batch))
        print(
            f"{name:<20}{t_fit:>8.2f}{t_score:>9.2f}{c_fit + c_score:>8.2f}"
            f"{args.rows / (t_fit + t_score):>12,.0f}"
        )
    clear_cache()

    def suite():
        dets = [REGISTRY[n]().fit(reference) for n in DEFAULT_DETECTORS]
        return [d.score(batch) for d in dets]

    _, t, c = cpu_timed(suite)
    print(f"{'default suite':<20}{'':>8}{t:>9.2f}{c:>8.2f}{args.rows / t:>12,.0f}")
    print(f"  = {', '.join(DEFAULT_DETECTORS)} (fit + score)")
    # Where a whole scan() goes, on speed.py's data (5% of labels flipped): fitting and
    # calibrating, scoring, deciding with reasons.
    from poisonguard.decision import decide
    from poisonguard.scan import Guard, detector_weights
    from speed import synthetic

    scan_ref, scan_batch, _ = synthetic(args.rows, args.reference, args.features)
    clear_cache()
    guard, t_fit = timed(lambda: Guard(label="label").fit(scan_ref))
    (table, scores), t_score = timed(lambda: guard.score(scan_batch))
    decision, t_decide = timed(
        lambda: decide(
            scores,
            guard.calibrations_,
            fdr=guard.settings_.fdr,
            explain=lambda name, rows: guard.detectors_[name].explain(table, rows),
            weights=detector_weights(tuple(scores)),
        )
    )
    print(
        f"scan(): Guard.fit (fit + calibrate) {t_fit:.2f} s, score {t_score:.2f} s "
        f"(encode and {len(scores)} detectors), decide + reasons {t_decide:.2f} s "
        f"for {int(decision.quarantined.sum())} quarantined rows"
    )
    for name in scores:
        clear_cache()
        # A copy without the memo of the batch just scored (backdoor keeps its last scan).
        det = copy.copy(guard.detectors_[name])
        det.__dict__.pop("_last_scan", None)
        _, t = timed(lambda det=det: det.score(table))
        print(f"  {name:<18} score {t:.2f} s (alone, no shared search or scan)")
    from sklearn.ensemble import IsolationForest

    _, t = timed(lambda: IsolationForest(random_state=0).fit(reference.X).score_samples(batch.X))
    print(f"{'IsolationForest':<20}{'':>8}{t:>9.2f}{args.rows / t:>12,.0f}")


if __name__ == "__main__":
    main()
