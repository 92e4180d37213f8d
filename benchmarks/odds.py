"""Label-free detection on the ten ODDS outlier sets: poisonguard against PyOD-style anchors.

Protocol (the same for every method, in the same run):

* split 60% train / 40% test, stratified on the outlier flag (PyOD's benchmark
  splits without stratifying; with 1-3% outliers stratifying keeps every test
  split's outlier count stable and favours no method), one split per seed;
* standardize with the train rows' mean and standard deviation (PyOD's
  ``standardizer``);
* fit on *all* train rows, inliers and outliers alike, as PyOD's benchmark does:
  an unsupervised user does not know which trusted rows are outliers either;
* score the test rows; report ROC-AUC and average precision against ``y``.

Methods: ``IsolationForest(random_state=seed)`` from scikit-learn (score
``-score_samples``); PyOD ``HBOS()``, ``ECOD()`` and ``KNN()`` with their
defaults (score ``decision_function``); poisonguard through its label-free
detectors, ``scan(test_frame, label=None, reference=train_frame)`` with score
``.scores["suspicion"]``. Threshold-free metrics only, so no decision threshold
enters.

Usage::

    python benchmarks/odds.py --quick
    python benchmarks/odds.py --seeds 5 --json benchmarks/out/odds.json
    python benchmarks/odds.py --sets cardio wbc --seeds 10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from common import ODDS_SETS, fmt, load_odds, poisonguard_scan, quiet, ratio, table

PG = "poisonguard"


def _iforest(train: np.ndarray, test: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.ensemble import IsolationForest

    return -IsolationForest(random_state=seed).fit(train).score_samples(test)


def _pyod(name: str) -> Callable[[np.ndarray, np.ndarray, int], np.ndarray]:
    def score(train: np.ndarray, test: np.ndarray, seed: int) -> np.ndarray:
        from pyod.models.ecod import ECOD
        from pyod.models.hbos import HBOS
        from pyod.models.knn import KNN

        model = {"hbos": HBOS, "ecod": ECOD, "knn": KNN}[name]()
        return np.asarray(model.fit(train).decision_function(test), dtype=np.float64)

    return score


def _poisonguard(train: np.ndarray, test: np.ndarray, seed: int) -> np.ndarray:
    scan = poisonguard_scan()
    if scan is None:
        raise RuntimeError("poisonguard.scan is not importable")
    columns = [f"x{j}" for j in range(train.shape[1])]
    result = scan(
        pd.DataFrame(test, columns=columns),
        label=None,
        reference=pd.DataFrame(train, columns=columns),
    )
    return result.scores["suspicion"].to_numpy(dtype=np.float64)


SCORERS: dict[str, Callable[[np.ndarray, np.ndarray, int], np.ndarray]] = {
    PG: _poisonguard,
    "iforest": _iforest,
    "hbos": _pyod("hbos"),
    "ecod": _pyod("ecod"),
    "knn": _pyod("knn"),
}
SETTINGS = {
    PG: "scan(test, label=None, reference=train) default config; .scores['suspicion']",
    "iforest": "sklearn IsolationForest(n_estimators=100, random_state=seed); -score_samples",
    "hbos": "pyod HBOS(n_bins=10, alpha=0.1, tol=0.5); decision_function",
    "ecod": "pyod ECOD(); decision_function",
    "knn": "pyod KNN(n_neighbors=5, method='largest'); decision_function",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(ODDS_SETS), choices=ODDS_SETS)
    parser.add_argument("--seeds", type=int, default=5, help="run splits 0 .. N-1 (default 5)")
    parser.add_argument("--methods", nargs="+", default=list(SCORERS), choices=list(SCORERS))
    parser.add_argument("--quick", action="store_true", help="one split per set")
    parser.add_argument("--json", type=Path, help="write every raw record to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds = 1
    return args


def run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str]]:
    methods = list(args.methods)
    if PG in methods and poisonguard_scan() is None:
        print("NOTICE: poisonguard.scan is not importable yet; poisonguard is skipped.")
        methods.remove(PG)
    records = []
    for name in args.sets:
        X, y = load_odds(name)
        for seed in range(args.seeds):
            X_train, X_test, _, y_test = train_test_split(
                X, y, test_size=0.4, stratify=y, random_state=seed
            )
            scaler = StandardScaler().fit(X_train)
            train, test = scaler.transform(X_train), scaler.transform(X_test)
            for method in list(methods):
                start = time.perf_counter()
                try:
                    score = SCORERS[method](train, test, seed)
                except Exception as exc:
                    if method != PG:
                        raise
                    print(f"NOTICE: poisonguard.scan failed ({exc!r}); poisonguard is skipped.")
                    methods.remove(method)
                    continue
                seconds = time.perf_counter() - start
                score = np.nan_to_num(score, nan=np.nanmin(score), posinf=np.finfo(float).max)
                records.append(
                    {
                        "set": name,
                        "seed": seed,
                        "method": method,
                        "n_train": len(train),
                        "n_test": len(test),
                        "outliers_test": int(y_test.sum()),
                        "roc_auc": float(roc_auc_score(y_test, score)),
                        "ap": float(average_precision_score(y_test, score)),
                        "seconds": seconds,
                    }
                )
            print(f"{name} seed={seed} done", file=sys.stderr, flush=True)
    return records, methods


def report(records: list[dict[str, Any]], methods: list[str], args: argparse.Namespace) -> str:
    out = [
        f"ODDS benchmark: sets={len(args.sets)} splits per set={args.seeds}",
        "protocol: 60/40 split stratified on y; standardized on train; every method fits on all "
        "train rows (inliers and outliers, as PyOD's benchmark) and scores the test rows",
        "",
        "Methods:",
        *(f"  {m:12s} {SETTINGS[m]}" for m in methods),
    ]
    if PG not in methods:
        out.append(f"  {PG:12s} SKIPPED (see the notice above); no ratios.")
    out.append("")
    frame = pd.DataFrame(records)
    if frame.empty:
        return "\n".join(out)
    anchors = [m for m in methods if m != PG]
    with_ratios = PG in methods
    for value, title in [
        ("roc_auc", "ROC-AUC on the test split (mean over splits)"),
        ("ap", "Average precision on the test split (mean over splits)"),
        ("seconds", "Seconds per fit + score"),
    ]:
        grid = frame.groupby(["set", "method"])[value].mean().unstack("method")
        grid = grid.reindex(index=[s for s in args.sets if s in grid.index], columns=methods)
        grid.loc["mean"] = grid.mean()
        header = ["set", *methods]
        ratios = with_ratios and value != "seconds"
        if ratios:
            header += [f"pg/{m}" for m in anchors]
        rows = []
        for key, values in grid.iterrows():
            cells = [str(key), *(fmt(values[m]) for m in methods)]
            if ratios:
                cells += [fmt(ratio(values[PG], values[m]), 2) for m in anchors]
            rows.append(cells)
        out.append(table(title, header, rows))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    quiet()
    args = parse_args(argv)
    records, methods = run(args)
    print(report(records, methods, args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "settings": {m: SETTINGS[m] for m in methods},
            "records": records,
        }
        args.json.write_text(json.dumps(payload, separators=(",", ":")))
        print(f"raw records written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
