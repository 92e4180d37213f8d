"""Detection benchmark: planted attacks on real tables, poisonguard against the anchors.

For each dataset (breast_cancer, digits, wine) and seed, rows are split
stratified into a 40% trusted reference, a 20% held-out test set and a 40%
batch. Each attack of :mod:`poisonguard.attacks` is planted in the batch at each
rate; every method judges the same poisoned batch against the same reference.

Per method and case we record precision, recall and F1 of the flagged rows,
average precision of the method's continuous score, and the test accuracy of
``StandardScaler + LogisticRegression`` trained on reference + batch three ways:
the clean batch, the poisoned batch, and the poisoned batch minus the flagged
rows ("gated"). ``recovered = (gated - poisoned) / (clean - poisoned)`` is
reported only where poison cost at least ``MIN_DAMAGE`` accuracy. On the
poison-free batch of each split we record the share of rows each method flags.

Usage::

    python benchmarks/detection.py --quick
    python benchmarks/detection.py --seeds 5 --json benchmarks/out/detection.json
    python benchmarks/detection.py --datasets wine --attacks backdoor far_outlier --rates 0.1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import pandas as pd

from common import (
    ANCHORS,
    DATASETS,
    LABEL,
    MIN_DAMAGE,
    PG,
    SHORT,
    THRESHOLDS,
    Case,
    attack_seed,
    available_methods,
    by_method,
    detection_metrics,
    fmt,
    load_dataset,
    metric_table,
    progress,
    quiet,
    recovered_share,
    retrain_accuracy,
    run_method,
    split_three,
    table,
    use_settings,
    write_json,
)
from poisonguard.attacks import ATTACKS, plant

DEFAULT_RATES = (0.05, 0.1, 0.2)
METHODS = [PG, *ANCHORS]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS)
    parser.add_argument("--rates", nargs="+", type=float, default=list(DEFAULT_RATES))
    parser.add_argument("--seeds", type=int, default=5, help="run seeds 0 .. N-1 (default 5)")
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--quick", action="store_true", help="one seed, rate 0.1 only")
    parser.add_argument("--json", type=Path, help="write every raw record to this JSON file")
    parser.add_argument(
        "--fdr", type=float, help="poisonguard's false-discovery rate (default: its config default)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.rates = 1, [0.1]
    return args


class Runner:
    """Runs the methods on cases, dropping poisonguard (with a notice) if it fails."""

    def __init__(self, methods: list[str]) -> None:
        self.methods = list(methods)

    def verdicts(self, case: Case) -> dict[str, Any]:
        out = {}
        for name in list(self.methods):
            try:
                out[name] = run_method(name, case)
            except Exception as exc:
                if name != PG:
                    raise
                print(f"NOTICE: poisonguard.scan failed ({exc!r}); poisonguard is skipped.")
                self.methods.remove(name)
        return out


def run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    runner = Runner(available_methods(args.methods))
    records: list[dict[str, Any]] = []
    clean_records: list[dict[str, Any]] = []
    for dataset in args.datasets:
        data = load_dataset(dataset)
        feats = data.features
        for seed in range(args.seeds):
            reference, test, batch = split_three(data.frame, seed)

            def accuracy(
                rows: pd.DataFrame,
                ref: pd.DataFrame = reference,
                test: pd.DataFrame = test,
                feats: list[str] = feats,
            ) -> float:
                train = pd.concat([ref, rows], ignore_index=True)
                return retrain_accuracy(train, test, feats, LABEL)

            acc_clean = accuracy(batch)
            case = Case(reference, batch, feats, LABEL, seed)
            for name, verdict in runner.verdicts(case).items():
                clean_records.append(
                    {
                        "dataset": dataset,
                        "seed": seed,
                        "method": name,
                        "flagged_share": float(verdict.flagged.mean()),
                        "acc_clean": acc_clean,
                        "acc_gated": accuracy(batch[~verdict.flagged]),
                        "seconds": verdict.seconds,
                    }
                )
            for attack in args.attacks:
                for rate in args.rates:
                    start = time.perf_counter()
                    planted = plant(
                        batch,
                        label=LABEL,
                        kind=attack,
                        rate=rate,
                        features=feats,
                        reference=reference,
                        random_state=attack_seed(seed, attack, rate),
                    )
                    acc_poisoned = accuracy(planted.frame)
                    # A perfect gate removes exactly the poison: the ceiling of recovery,
                    # below 1 because the poison took the place of clean rows.
                    acc_perfect = accuracy(planted.frame[~planted.is_poison])
                    case = Case(reference, planted.frame, feats, LABEL, seed)
                    for name, verdict in runner.verdicts(case).items():
                        acc_gated = accuracy(planted.frame[~verdict.flagged])
                        records.append(
                            {
                                "dataset": dataset,
                                "seed": seed,
                                "attack": attack,
                                "rate": rate,
                                "method": name,
                                "n_batch": len(batch),
                                "n_poison": planted.n_poison,
                                **detection_metrics(planted.is_poison, verdict),
                                "acc_clean": acc_clean,
                                "acc_poisoned": acc_poisoned,
                                "acc_gated": acc_gated,
                                "acc_perfect": acc_perfect,
                                "recovered": recovered_share(acc_clean, acc_poisoned, acc_gated),
                                "recovered_perfect": recovered_share(
                                    acc_clean, acc_poisoned, acc_perfect
                                ),
                            }
                        )
                    progress(
                        f"{dataset} seed={seed} {attack} rate={rate}: "
                        f"{time.perf_counter() - start:.1f}s"
                    )
    return records, clean_records, runner.methods


def report(
    records: list[dict[str, Any]],
    clean_records: list[dict[str, Any]],
    methods: list[str],
    args: argparse.Namespace,
) -> str:
    out = []
    frame = pd.DataFrame(records)
    clean = pd.DataFrame(clean_records)
    pg = PG in methods
    out.append(
        f"Detection benchmark: datasets={args.datasets} rates={args.rates} seeds=0..{args.seeds - 1}"
        f"\nsplit: 40% trusted reference / 20% test / 40% batch (stratified, per seed)\n"
    )
    out.append("Decision thresholds (each method's default rule):")
    out.extend(f"  {m:20s} {THRESHOLDS[m]}" for m in methods)
    if pg and args.override:
        out.append(args.override)
    if pg:
        legend = ", ".join(f"{v} = {k}" for k, v in SHORT.items() if k in methods)
        out.append(
            f"  comparison columns: pg/x = poisonguard / x, pg-x = poisonguard - x ({legend})"
        )
    if not pg:
        out.append("  poisonguard          SKIPPED (see the notice above); no ratios.")
    out.append("")
    if frame.empty:
        return "\n".join(out)
    frame["attack"] = pd.Categorical(frame["attack"], categories=args.attacks, ordered=True)
    ratio_cols = "ratio" if pg else None
    for value, title, compare in [
        ("f1", "F1 of flagged rows, by attack (mean over datasets, rates, seeds)", ratio_cols),
        ("ap", "Average precision of the continuous score, by attack", ratio_cols),
        ("precision", "Precision, by attack", None),
        ("recall", "Recall, by attack", None),
        (
            "recovered",
            f"Recovered share of lost accuracy, by attack (cases where poison cost "
            f">= {MIN_DAMAGE:.0%} accuracy; '-' = none); differences, as shares can be negative",
            "diff" if pg else None,
        ),
        ("acc_gated", "Test accuracy after gating, by attack", None),
    ]:
        grid = by_method(frame, "attack", value, methods)
        out.append(metric_table(title, grid, methods, compare))
    base = frame.drop_duplicates(["dataset", "seed", "attack", "rate"])
    base = base.assign(damaged=(base["acc_clean"] - base["acc_poisoned"]) >= MIN_DAMAGE)
    by_attack = base.groupby("attack", observed=True)
    acc = by_attack[["acc_clean", "acc_poisoned", "acc_perfect"]].mean()
    perfect = base[base["damaged"]].groupby("attack", observed=True)["recovered_perfect"].mean()
    perfect_all = base.loc[base["damaged"], "recovered_perfect"].mean()
    out.append(
        table(
            "Retraining accuracy without a gate and with a perfect one (removes exactly the "
            "poison), LR on standardized reference + batch, test split",
            ["attack", "clean", "poisoned", "perfect gate", "cases damaged", "perfect recovers"],
            [
                *(
                    [
                        str(k),
                        fmt(v["acc_clean"]),
                        fmt(v["acc_poisoned"]),
                        fmt(v["acc_perfect"]),
                        f"{by_attack['damaged'].sum()[k]}/{by_attack.size()[k]}",
                        fmt(perfect.get(k, float("nan"))),
                    ]
                    for k, v in acc.iterrows()
                ),
                ["mean", "", "", "", f"{int(base['damaged'].sum())}/{len(base)}", fmt(perfect_all)],
            ],
        )
    )
    for value, title in [
        ("f1", "F1 by rate"),
        ("ap", "Average precision by rate"),
    ]:
        grid = by_method(frame, "rate", value, methods)
        out.append(metric_table(title, grid, methods, ratio_cols))
    grid = by_method(frame, "dataset", "f1", methods)
    out.append(metric_table("F1 by dataset", grid, methods, ratio_cols))
    if not clean.empty:
        grid = by_method(clean, "dataset", "flagged_share", methods)
        out.append(
            metric_table(
                "Share of rows flagged on poison-free batches (lower is better)",
                grid,
                methods,
                None,
            )
        )
        clean["acc_change"] = clean["acc_gated"] - clean["acc_clean"]
        grid = by_method(clean, "dataset", "acc_change", methods)
        out.append(
            metric_table(
                "Test-accuracy change from gating a poison-free batch", grid, methods, None
            )
        )
    grid = by_method(frame, "dataset", "seconds", methods)
    out.append(metric_table("Seconds per batch", grid, methods, None))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    quiet()
    args = parse_args(argv)
    args.override = use_settings(args.fdr)
    records, clean_records, methods = run(args)
    print(report(records, clean_records, methods, args))
    if args.json:
        write_json(
            args.json,
            args,
            thresholds={m: THRESHOLDS[m] for m in methods},
            records=records,
            clean_records=clean_records,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
