"""How well could any per-row judge of labels do? An informed ceiling for the label attacks.

The label attacks of ``tables.py`` change a row's label or target and leave its features
alone, so the only per-row evidence is how unlikely the label is given the features. This
script estimates the best any judge of that evidence could do, by giving one far more than
a gate ever has: the clean conditional distribution of the label, learnt from the whole
table with its true labels. For each batch row, a model is fitted on the reference, the
test rows and the *clean* labels of the other four fifths of the batch (about 92% of the
table, five times the gate's trusted rows), and scores the row's observed label:
``1 - P(label | features)`` for classes (gradient boosting and logistic regression, the
better of the two per case), ``|target - prediction|`` for numeric targets (gradient
boosting). The threshold is then chosen *per case, knowing which rows are poison*: the
best F1 over every cut of the ranking.

That is an optimistic estimate of a per-row ceiling, not a proof of one: a better model
could exist, and attacks whose poison forms groups (subgroup and clustered flips,
subgroup shifts) carry collective evidence a per-row judge ignores, so a gate can pass
the ceiling there. For independent random flips it is the whole story. The same run
judges the same batches with poisonguard and the anchors, and prints the best cut of
poisonguard's own ranking next to the F1 of its decision.

Usage::

    python benchmarks/ceiling.py --split all
    python benchmarks/ceiling.py --split dev --tables titanic --attacks random_flip
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.model_selection import KFold

import common
import tables
from common import PG, available_methods, fmt, progress, quiet, table, write_json

#: The attacks that change labels or targets only, by task.
LABEL_ATTACKS: dict[str, tuple[str, ...]] = {
    tables.CLASSIFICATION: (
        "random_flip",
        "boundary_flip",
        "confident_flip",
        "clustered_flip",
        "subgroup_flip",
    ),
    tables.REGRESSION: ("target_scale", "target_shuffle", "subgroup_shift"),
}
#: Attacks with no collective structure: the per-row ceiling bounds every judge there.
INDEPENDENT = ("random_flip", "target_scale", "target_shuffle")
N_FOLDS = 5
CEILING = "ceiling"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    every = [a for kinds in LABEL_ATTACKS.values() for a in kinds]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=[*tables.SPLITS, "all"], default="all")
    parser.add_argument("--tables", nargs="+", choices=list(tables.TABLES))
    parser.add_argument("--attacks", nargs="+", default=every, choices=every)
    parser.add_argument("--rates", nargs="+", type=float, default=list(tables.DEFAULT_RATES))
    parser.add_argument("--json", type=Path, help="write every raw record to this JSON file")
    parser.add_argument(
        "--fdr", type=float, help="poisonguard's false-discovery rate (default: its config default)"
    )
    args = parser.parse_args(argv)
    args.plan = tables.parse_args(
        ["--split", args.split, *(["--tables", *args.tables] if args.tables else [])]
    ).plan
    return args


def best_f1(is_poison: np.ndarray, score: np.ndarray) -> float:
    """The highest F1 of any cut "flag the top k rows" of ``score`` (ties broken against
    the cut: tied rows are flagged together)."""
    n_poison = int(is_poison.sum())
    if n_poison == 0:
        return float("nan")
    order = np.argsort(-score, kind="stable")
    hits = np.cumsum(is_poison[order])
    # Only cuts between distinct scores are cuts a threshold can make.
    ends = np.flatnonzero(np.r_[np.diff(score[order]) != 0, True])
    k = ends + 1
    f1 = 2 * hits[ends] / (k + n_poison)
    return float(f1.max())


def informed_score(sc: tables.Scene, poisoned: pd.DataFrame, seed: int) -> np.ndarray:
    """Out-of-fold suspicion of each row's observed label from models fitted on every
    other clean row of the table (reference, test and the clean batch's other folds)."""
    label = sc.spec.label
    outside = sc.encoded(pd.concat([sc.reference, sc.test], ignore_index=True))
    clean = sc.encoded(sc.batch)
    seen = sc.encoded(poisoned)
    x_cols = [c for c in outside.columns if c != label]
    out = np.zeros((2, len(poisoned)))
    for train, held in KFold(N_FOLDS, shuffle=True, random_state=seed).split(seen):
        rows = pd.concat([outside, clean.iloc[train]], ignore_index=True)
        x, y = rows[x_cols].to_numpy(), rows[label].to_numpy()
        x_held, y_held = seen[x_cols].to_numpy()[held], seen[label].to_numpy()[held]
        if sc.spec.task == tables.REGRESSION:
            model = HistGradientBoostingRegressor(random_state=seed).fit(x, y.astype(float))
            out[:, held] = np.abs(y_held.astype(float) - model.predict(x_held))
            continue
        for j, model in enumerate(
            (HistGradientBoostingClassifier(random_state=seed), common.lr_model())
        ):
            model.fit(x, y)
            proba = model.predict_proba(x_held)
            column = {c: i for i, c in enumerate(model.classes_)}
            own = np.array(
                [proba[r, column[v]] if v in column else 0.0 for r, v in enumerate(y_held)]
            )
            out[j, held] = 1.0 - own
    return out


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    runner = tables.Runner(available_methods([PG, *common.ANCHORS, "gb_residual"]))
    records: list[dict[str, Any]] = []
    frames: dict[str, pd.DataFrame] = {}
    for name, seed in args.plan:
        frames.setdefault(name, tables.load_table(name))
        sc = tables.scene(name, frames[name], seed)
        task = sc.spec.task
        start = time.perf_counter()
        for attack in [a for a in args.attacks if a in LABEL_ATTACKS[task]]:
            for rate in args.rates:
                planted = tables.plant_in(sc, attack, rate)
                where = {"table": name, "task": task, "seed": seed, "attack": attack}
                where |= {"rate": rate, "split": tables.split_of(name)}
                poison = planted.is_poison
                scores = informed_score(sc, planted.frame, seed)
                ceiling = max(best_f1(poison, s) for s in scores if s.any())
                records.append({**where, "method": CEILING, "f1": ceiling, "best_cut": ceiling})
                verdicts = runner.verdicts(sc.case(planted.frame), where)
                for method, verdict in verdicts.items():
                    metrics = common.detection_metrics(poison, verdict)
                    score = np.nan_to_num(verdict.score, nan=-np.inf, neginf=-1e300)
                    records.append(
                        {
                            **where,
                            "method": method,
                            "f1": metrics["f1"],
                            "best_cut": best_f1(poison, score),
                        }
                    )
        progress(f"{name} ({task}) seed={seed}: {time.perf_counter() - start:.1f}s")
    return records


def report(records: list[dict[str, Any]], args: argparse.Namespace) -> str:
    frame = pd.DataFrame(records)
    lines = [
        f"Label-attack ceiling: split={args.split} rates={args.rates}",
        "ceiling = best F1 over every cut of an out-of-fold model's 1 - P(label | features)",
        "(classes: better of gradient boosting and logistic regression per case; targets:",
        "gradient-boosting |residual|), fitted on every other clean row of the table;",
        "F1 = each method's own decision; best cut = its ranking at the threshold chosen",
        "knowing the poison. Attacks marked * are independent per row: the ceiling bounds them.",
        "",
    ]
    for task, kinds in LABEL_ATTACKS.items():
        part = frame[frame["task"] == task]
        if part.empty:
            continue
        methods = [
            m for m in [CEILING, PG, *common.ANCHORS, "gb_residual"] if m in set(part.method)
        ]
        for value, title in (("f1", "F1"), ("best_cut", "F1 at the best cut")):
            grid = part.pivot_table(index="attack", columns="method", values=value, aggfunc="mean")
            rows = []
            for attack in [k for k in kinds if k in grid.index]:
                mark = "*" if attack in INDEPENDENT else ""
                rows.append([attack + mark, *(fmt(grid.loc[attack].get(m)) for m in methods)])
            rows.append(["mean", *(fmt(grid[m].mean()) for m in methods)])
            lines.append(table(f"[{task}] {title}, by attack", ["attack", *methods], rows))
        grid = part.pivot_table(index="table", columns="method", values="f1", aggfunc="mean")
        rows = [[str(t), *(fmt(grid.loc[t].get(m)) for m in methods)] for t in grid.index]
        lines.append(table(f"[{task}] F1 by table (ceiling: best cut)", ["table", *methods], rows))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    quiet()
    args = parse_args(argv)
    override = common.use_settings(args.fdr)
    records = run(args)
    if override:
        print(override)
    print(report(records, args))
    if args.json:
        write_json(args.json, args, records=records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
