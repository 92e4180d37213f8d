"""Canary benchmark: the gate's canary on clean and flipped training sets, beside cleanlab.

The gate's canary (``poisonguard.canary``) asks whether a training set teaches a
worse model than the pinned reference. This script plants random label flips in
a batch, makes the training set the reference plus that batch (as if every
flipped row had been accepted), and reports, per table and rate:

* the canary's verdict (how many seeds it refused), its overall accuracy drop on
  the canary rows and the largest drop of one class;
* the damage it stands for: the test-split accuracy of the same logistic
  regression trained on the poisoned training set against the clean one (the
  reference plus the batch before flipping), on rows no side saw;
* what cleanlab would say of the same training set: the share of its rows
  ``find_label_issues`` flags (5-fold out-of-fold logistic-regression
  probabilities) and the share of the flips among them.

Tables: the dev classification tables of ``tables.py`` (``credit_card``,
``default``, ``titanic``), split 40/20/40 into reference, test and batch by each
seed; no setting of the canary was chosen on them.

Usage::

    python benchmarks/canary.py --quick
    python benchmarks/canary.py --json benchmarks/out/canary.json     # 10 seeds, rates 0-0.4
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from common import fmt, progress, quiet, split_three, table, write_json
from poisonguard.attacks import plant
from poisonguard.canary import run_canary
from poisonguard.config import Config
from poisonguard.detectors.base import Encoder
from poisonguard.pipeline import row_hashes
from tables import CLASSIFICATION, TABLES, load_table

CANARY_TABLES = ("credit_card", "default", "titanic")


def _config(label: str) -> Config:
    here = Path(__file__).resolve().parent
    return Config(
        path=here / "canary.toml",
        name="canary-benchmark",
        landing=here,
        store=here,
        label=label,
        id_column=None,
        features=(),
        expectations=here,
        task=CLASSIFICATION,
    )


def _hashed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(pg_row_hash=row_hashes(frame, list(frame.columns), key=None))


def _test_accuracy(
    encoder: Encoder, training: pd.DataFrame, test: pd.DataFrame, label: str
) -> float:
    from sklearn.linear_model import LogisticRegression

    fit, judge = encoder.transform(training), encoder.transform(test)
    model = LogisticRegression(max_iter=1000).fit(fit.x32, np.asarray(fit.y))
    return float((model.predict(judge.x32) == np.asarray(judge.y)).mean())


def _cleanlab_share(
    encoder: Encoder, training: pd.DataFrame, flipped: np.ndarray, seed: int
) -> tuple[float, float]:
    """Share of the training rows cleanlab flags, and the share of flips among the flagged."""
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression

    encoded = encoder.transform(training)
    labels = np.asarray(encoded.y)
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    probs = cross_val_predict(
        LogisticRegression(max_iter=1000), encoded.x32, labels, cv=folds, method="predict_proba"
    )
    issues = find_label_issues(labels, probs, n_jobs=1)
    share = float(issues.mean())
    precision = float((issues & flipped).sum() / issues.sum()) if issues.any() else float("nan")
    return share, precision


def run_case(name: str, seed: int, rate: float) -> dict[str, Any]:
    spec = TABLES[name]
    frame = load_table(name)
    reference, test, batch = split_three(frame, seed, stratify=spec.label)
    features = [c for c in frame.columns if c != spec.label]
    encoder = Encoder.fit(reference, features, spec.label, task=CLASSIFICATION)
    poisoned = batch
    flips = np.zeros(len(batch), dtype=bool)
    if rate > 0:
        attack = plant(batch, label=spec.label, kind="random_flip", rate=rate, random_state=seed)
        poisoned, flips = attack.frame, attack.is_poison
    clean_training = pd.concat([reference, batch], ignore_index=True)
    training = pd.concat([reference, poisoned], ignore_index=True)
    start = time.perf_counter()
    result = run_canary(_hashed(reference), _hashed(training), _config(spec.label))
    seconds = time.perf_counter() - start
    in_training = np.concatenate([np.zeros(len(reference), dtype=bool), flips])
    flagged, precision = _cleanlab_share(encoder, training, in_training, seed)
    return {
        "table": name,
        "seed": seed,
        "rate": rate,
        "refused": not result.ok,
        "canary_drop": result.drop,
        "worst_class_drop": max((c.drop for c in result.classes), default=float("nan")),
        "canary_rows": result.rows,
        "test_clean": _test_accuracy(encoder, clean_training, test, spec.label),
        "test_poisoned": _test_accuracy(encoder, training, test, spec.label),
        "cleanlab_flagged": flagged,
        "cleanlab_precision": precision,
        "flipped_share": float(in_training.mean()),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", nargs="+", choices=CANARY_TABLES, default=list(CANARY_TABLES))
    parser.add_argument("--rates", nargs="+", type=float, default=[0.0, 0.1, 0.2, 0.4])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(range(10)))
    parser.add_argument("--quick", action="store_true", help="one seed, rates 0 and 0.2")
    parser.add_argument("--json", type=Path, help="write the per-case records here")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.rates = args.seeds[:1], [0.0, 0.2]
    quiet()
    records = []
    for name in args.tables:
        for seed in args.seeds:
            for rate in args.rates:
                progress(f"canary: {name} seed {seed} rate {rate:g}")
                records.append(run_case(name, seed, rate))
    grid = pd.DataFrame(records)
    rows = []
    for (name, rate), group in grid.groupby(["table", "rate"], sort=False):
        rows.append(
            [
                name,
                f"{rate:g}",
                f"{int(group['refused'].sum())}/{len(group)}",
                fmt(group["canary_drop"].mean()),
                fmt(group["worst_class_drop"].mean()),
                fmt(group["test_clean"].mean()),
                fmt(group["test_poisoned"].mean()),
                fmt(group["flipped_share"].mean()),
                fmt(group["cleanlab_flagged"].mean()),
                fmt(group["cleanlab_precision"].mean()),
                f"{group['seconds'].mean():.2f}",
            ]
        )
    print(
        table(
            "Canary on reference + batch with random label flips (means over seeds; drops are "
            "reference minus training set, on the canary rows)",
            [
                "table",
                "rate",
                "refused",
                "drop",
                "worst class",
                "test clean",
                "test poisoned",
                "flipped",
                "cleanlab flags",
                "cl precision",
                "canary s",
            ],
            rows,
        )
    )
    if args.json:
        write_json(args.json, args, records=records)


if __name__ == "__main__":
    main()
