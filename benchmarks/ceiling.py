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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Informed:
    """What models fitted on every other clean row of the table say of each batch row:
    class probabilities (one matrix per model) or a predicted target. The label attacks
    leave features alone, so one fit per scene serves every attack on it."""

    classes: list[np.ndarray]
    proba: list[np.ndarray]
    predicted: np.ndarray | None

    def scores(self, labels: np.ndarray) -> list[np.ndarray]:
        """Suspicion of each row's observed label, one array per model."""
        if self.predicted is not None:
            return [np.abs(labels.astype(float) - self.predicted)]
        out = []
        for classes, proba in zip(self.classes, self.proba, strict=True):
            column = {c: i for i, c in enumerate(classes)}
            own = [proba[r, column[v]] if v in column else 0.0 for r, v in enumerate(labels)]
            out.append(1.0 - np.asarray(own))
        return out


def informed(sc: tables.Scene, seed: int) -> Informed:
    """Out-of-fold models for the batch rows of ``sc``, each fold fitted on the reference,
    the test rows and the clean batch's other folds (about 92% of the table)."""
    label = sc.spec.label
    outside = sc.encoded(pd.concat([sc.reference, sc.test], ignore_index=True))
    clean = sc.encoded(sc.batch)
    x_cols = [c for c in outside.columns if c != label]
    x_batch = clean[x_cols].to_numpy()
    regression = sc.spec.task == tables.REGRESSION
    predicted = np.zeros(len(clean)) if regression else None
    models = (HistGradientBoostingClassifier(random_state=seed), common.lr_model())
    classes: list[np.ndarray] = [np.empty(0)] * len(models)
    proba: list[np.ndarray] = [np.empty(0)] * len(models)
    for train, held in KFold(N_FOLDS, shuffle=True, random_state=seed).split(clean):
        rows = pd.concat([outside, clean.iloc[train]], ignore_index=True)
        x, y = rows[x_cols].to_numpy(), rows[label].to_numpy()
        if predicted is not None:
            model = HistGradientBoostingRegressor(random_state=seed).fit(x, y.astype(float))
            predicted[held] = model.predict(x_batch[held])
            continue
        for j, model in enumerate(models):
            model.fit(x, y)
            if not classes[j].size:
                classes[j] = model.classes_
                proba[j] = np.zeros((len(clean), len(classes[j])))
            # Every fold trains on over 90% of the table, so on every class.
            if not np.array_equal(model.classes_, classes[j]):
                raise SystemExit(f"error: {sc.name}: a fold's model lacks a class")
            proba[j][held] = model.predict_proba(x_batch[held])
    return Informed(classes, proba, predicted)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    runner = tables.Runner(available_methods([PG, *common.ANCHORS, "gb_residual"]))
    records: list[dict[str, Any]] = []
    frames: dict[str, pd.DataFrame] = {}
    for name, seed in args.plan:
        frames.setdefault(name, tables.load_table(name))
        sc = tables.scene(name, frames[name], seed)
        task = sc.spec.task
        start = time.perf_counter()
        oracle = informed(sc, seed)
        for attack in [a for a in args.attacks if a in LABEL_ATTACKS[task]]:
            for rate in args.rates:
                planted = tables.plant_in(sc, attack, rate)
                where = {"table": name, "task": task, "seed": seed, "attack": attack}
                where |= {"rate": rate, "split": tables.split_of(name)}
                poison = planted.is_poison
                if not planted.frame[sc.features].equals(sc.batch[sc.features]):
                    raise SystemExit(
                        f"error: {attack} changed features; the ceiling needs it not to"
                    )
                scores = oracle.scores(planted.frame[sc.spec.label].to_numpy())
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
