"""Table benchmark: planted attacks on ten real mixed tables, poisonguard against the anchors.

The tables (``../shared/data/tables``, beside the repository) carry strings,
categories, missing cells, class labels and numeric targets. Each is assigned a
label and a task in :data:`TABLES`, and to one of two splits in :data:`SPLITS`:
*dev*, whose tables and seeds settings may be tuned on, and *holdout*, which
nobody looks at while choosing.

Per table and seed, rows are split into a 40% trusted reference, a 20% test set
and a 40% batch (stratified on the label for classification). Each attack of
:mod:`poisonguard.attacks` for the table's task is planted in the batch at each
rate, with the reference as the attacker's view; every method judges the same
poisoned batch against the same reference. poisonguard reads the tables as they
are (``scan(..., task=...)``); the anchors read an encoding learnt from the
reference (:class:`common.TableEncoder`: numeric standardised, missing numbers
imputed with the median plus an indicator, categories one-hot).

Recorded per method and case: precision, recall, F1 and AP; for backdoors the
attack success (the share of test rows of other classes, with the trigger
stamped on, that a gradient-boosting classifier trained on reference + batch
puts in the target class) with no poison, with poison and after each method's
gate; on each poison-free batch, the share of rows each method holds.

Usage::

    python benchmarks/tables.py --split dev --quick
    python benchmarks/tables.py --split all --json benchmarks/out/tables.json
    python benchmarks/tables.py --split dev --tables titanic --attacks categorical_backdoor
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

import common
from common import (
    PG,
    SHORT,
    THRESHOLDS,
    Case,
    TableEncoder,
    Verdict,
    attack_seed,
    available_methods,
    by_method,
    detection_metrics,
    fmt,
    metric_table,
    progress,
    quiet,
    run_method,
    split_three,
    table,
    use_settings,
    write_json,
)
from poisonguard.attacks import CLASSIFICATION_ATTACKS, REGRESSION_ATTACKS, PlantedAttack, plant

TABLES_DIR = common.SHARED_DATA / "tables"
CLASSIFICATION = "classification"
REGRESSION = "regression"


@dataclass(frozen=True)
class TableSpec:
    """What a table is benchmarked on: its label, its task, columns left out."""

    label: str
    task: str
    drop: tuple[str, ...] = ()


#: Each table's label and task. Every other column is a feature.
TABLES: dict[str, TableSpec] = {
    "credit_card": TableSpec("card", CLASSIFICATION),
    "default": TableSpec("default", CLASSIFICATION),
    "titanic": TableSpec("survived", CLASSIFICATION),
    "oj": TableSpec("Purchase", CLASSIFICATION),
    "swiss_labor": TableSpec("participation", CLASSIFICATION),
    "penguins": TableSpec("species", CLASSIFICATION),
    # Rows whose salary is missing (59 of 322) are dropped: they have no target.
    "hitters": TableSpec("Salary", REGRESSION),
    "carseats": TableSpec("Sales", REGRESSION),
    # logwage is log(wage): as a feature it would hand every model the target.
    "wage": TableSpec("wage", REGRESSION, drop=("logwage",)),
    "cps1985": TableSpec("wage", REGRESSION),
}


@dataclass(frozen=True)
class Split:
    """Tables and the seeds each is split with."""

    tables: tuple[str, ...]
    seeds: tuple[int, ...]


#: ``dev``: tables and seeds detector settings may be tuned on. ``holdout``: tables and
#: seeds nobody looks at while choosing; their figures are read once settings are frozen.
#: The tables follow ../shared/data/README.md, so work that chose settings on its "choose"
#: tables has not seen the holdout. Each split holds three classification and two
#: regression tables.
SPLITS: dict[str, Split] = {
    "dev": Split(("credit_card", "default", "titanic", "hitters", "carseats"), (0, 1)),
    "holdout": Split(("oj", "swiss_labor", "penguins", "wage", "cps1985"), (10, 11, 12)),
}

#: The anchors of each task, all on the TableEncoder encoding.
TASK_ANCHORS: dict[str, tuple[str, ...]] = {
    CLASSIFICATION: ("cleanlab", "knn_label", "iforest"),
    REGRESSION: ("gb_residual", "cleanlab_regression"),
}
TASK_ATTACKS: dict[str, tuple[str, ...]] = {
    CLASSIFICATION: CLASSIFICATION_ATTACKS,
    REGRESSION: REGRESSION_ATTACKS,
}
METHODS: list[str] = [PG, *dict.fromkeys(a for v in TASK_ANCHORS.values() for a in v)]
ALL_ATTACKS: list[str] = list(dict.fromkeys([*CLASSIFICATION_ATTACKS, *REGRESSION_ATTACKS]))
#: IsolationForest gets the cores poisonguard's scan uses on these machines.
IFOREST_JOBS = 2
DEFAULT_RATES = (0.1,)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=[*SPLITS, "all"], default="dev")
    parser.add_argument(
        "--tables", nargs="+", choices=list(TABLES), help="only these tables of the split"
    )
    parser.add_argument("--attacks", nargs="+", default=ALL_ATTACKS, choices=ALL_ATTACKS)
    parser.add_argument("--rates", nargs="+", type=float, default=list(DEFAULT_RATES))
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--quick", action="store_true", help="first seed of each table only")
    parser.add_argument(
        "--seeds", nargs="+", type=int, help="split with these seeds instead of the split's own"
    )
    parser.add_argument("--json", type=Path, help="write every raw record to this JSON file")
    parser.add_argument(
        "--fdr", type=float, help="poisonguard's false-discovery rate (default: its config default)"
    )
    parser.add_argument(
        "--excess-level",
        type=float,
        help="poisonguard's excess rule at this level (default: its config default, off)",
    )
    parser.add_argument(
        "--detectors",
        nargs="+",
        help="run poisonguard with only these detectors (default: its suite for the task)",
    )
    parser.add_argument(
        "--params",
        type=json.loads,
        help='detector parameters as JSON, e.g. \'{"label_excess": {"n_neighbors": 20}}\'',
    )
    args = parser.parse_args(argv)
    names = SPLITS if args.split == "all" else [args.split]
    plan = [
        (t, s) for n in names for t in SPLITS[n].tables for s in (args.seeds or SPLITS[n].seeds)
    ]
    if args.tables:
        outside = sorted(set(args.tables) - {t for t, _ in plan})
        if outside:
            parser.error(f"--tables {outside} are not in split {args.split!r}")
        plan = [(t, s) for t, s in plan if t in args.tables]
    if args.quick:
        plan = [(t, s) for t, s in plan if s == min(x for u, x in plan if u == t)]
    args.plan = plan
    return args


# --- data ---------------------------------------------------------------------------


def load_table(
    name: str, spec: TableSpec | None = None, *, file: str | None = None
) -> pd.DataFrame:
    """One table of :data:`TABLES` (or the file ``file`` read as ``spec`` says), its
    drop-columns removed and rows without a label dropped, checked against ``SHA256SUMS``.
    Exits with a message when the folder or file is absent."""
    if not TABLES_DIR.is_dir():
        raise SystemExit(
            f"error: the table data is not at {TABLES_DIR} (the benchmark reads "
            "../shared/data/tables beside the repository root); nothing was run"
        )
    path = TABLES_DIR / f"{file or name}.parquet"
    sums = TABLES_DIR / "SHA256SUMS"
    if not path.is_file():
        raise SystemExit(f"error: {path} is missing; nothing was run")
    if sums.is_file():
        expected = dict(
            reversed(line.split(maxsplit=1)) for line in sums.read_text().splitlines() if line
        )
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if expected.get(path.name, digest) != digest:
            raise SystemExit(f"error: {path} does not match {sums}; nothing was run")
    return prepared(pd.read_parquet(path), spec or TABLES[name])


def prepared(frame: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """``frame`` without ``spec``'s drop-columns and without rows that lack a label."""
    frame = frame.drop(columns=list(spec.drop))
    return frame[frame[spec.label].notna()].reset_index(drop=True)


# --- runs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Scene:
    """One table split by one seed, with the encoding the anchors read."""

    name: str
    spec: TableSpec
    seed: int
    reference: pd.DataFrame
    test: pd.DataFrame
    batch: pd.DataFrame
    features: list[str]
    encoder: TableEncoder

    def encoded(self, rows: pd.DataFrame) -> pd.DataFrame:
        """The anchors' view of ``rows``, with the label column."""
        return self.encoder.transform(rows).assign(**{self.spec.label: rows[self.spec.label]})

    @cached_property
    def encoded_reference(self) -> pd.DataFrame:
        return self.encoded(self.reference)

    def case(self, batch: pd.DataFrame) -> Case:
        """``batch`` to judge: encoded for the anchors, as it is for poisonguard."""
        columns = [*self.features, self.spec.label]
        reference = self.encoded_reference
        return Case(
            reference,
            self.encoded(batch),
            [c for c in reference.columns if c != self.spec.label],
            self.spec.label,
            self.seed,
            task=self.spec.task,
            raw=(self.reference[columns], batch[columns]),
            scaled=True,
            n_jobs=IFOREST_JOBS,
        )


def scene(name: str, frame: pd.DataFrame, seed: int, spec: TableSpec | None = None) -> Scene:
    spec = spec or TABLES[name]
    stratify = spec.label if spec.task == CLASSIFICATION else None
    reference, test, batch = split_three(frame, seed, stratify=stratify)
    features = [c for c in frame.columns if c != spec.label]
    encoder = TableEncoder(features=features).fit(reference)
    return Scene(name, spec, seed, reference, test, batch, features, encoder)


class Runner:
    """Runs each task's methods on cases. A poisonguard that cannot judge a case (no
    ``task=`` keyword yet, regression not implemented, or any other failure) is
    recorded as unavailable for that case, with one NOTICE per task and reason."""

    def __init__(self, methods: list[str]) -> None:
        self.methods = methods
        self.unavailable: list[dict[str, Any]] = []
        self._noticed: set[tuple[str | None, str]] = set()

    def verdicts(self, case: Case, where: dict[str, Any]) -> dict[str, Verdict]:
        out = {}
        for name in self.methods:
            if name != PG and name not in TASK_ANCHORS[str(case.task)]:
                continue
            try:
                out[name] = run_method(name, case)
            except Exception as exc:
                if name != PG:
                    raise
                reason = _reason(exc, case.task)
                self.unavailable.append({**where, "reason": reason})
                if (case.task, reason) not in self._noticed:
                    self._noticed.add((case.task, reason))
                    print(f"NOTICE: poisonguard unavailable for {case.task} ({reason}); skipped.")
        return out


def _reason(exc: Exception, task: str | None) -> str:
    from poisonguard.errors import ConfigError

    if isinstance(exc, TypeError) and "task" in str(exc):
        return "scan() has no task= keyword yet"
    if isinstance(exc, NotImplementedError | ConfigError) and task == REGRESSION:
        return f"regression not supported: {exc}"
    return repr(exc)[:200]


def attack_success(
    scene: Scene, train: pd.DataFrame, triggered: pd.DataFrame, target: Any
) -> float:
    """Share of ``triggered`` (encoded) rows a gradient-boosting classifier trained on the
    encoded reference + ``train`` rows puts in class ``target``; NaN without such rows."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    if triggered.empty:
        return float("nan")
    label = scene.spec.label
    rows = pd.concat([scene.encoded_reference, train], ignore_index=True)
    model = HistGradientBoostingClassifier(random_state=scene.seed)
    model.fit(rows.drop(columns=label), rows[label])
    return float((model.predict(triggered.drop(columns=label)) == target).mean())


def triggered_test_rows(scene: Scene, planted: PlantedAttack) -> pd.DataFrame:
    """Test rows of classes other than the target, with the trigger stamped on, encoded."""
    others = scene.test[scene.test[scene.spec.label] != planted.target]
    return scene.encoded(planted.stamp(others))


def judge_clean(
    sc: Scene, base: dict[str, Any], runner: Runner, out: dict[str, list[dict[str, Any]]]
) -> None:
    """Every method on the poison-free batch of ``sc``: the share of rows it holds."""
    for method, verdict in runner.verdicts(sc.case(sc.batch), base).items():
        out["clean"].append(
            {
                **base,
                "method": method,
                "flagged_share": float(verdict.flagged.mean()),
                "seconds": verdict.seconds,
            }
        )


def judge_attack(
    sc: Scene,
    planted: PlantedAttack,
    where: dict[str, Any],
    runner: Runner,
    out: dict[str, list[dict[str, Any]]],
) -> None:
    """Every method on one poisoned batch: detection metrics and, for an attack with a
    trigger, its success with no poison, with poison and after each method's gate.

    ``planted`` needs ``frame``, ``is_poison``, ``n_poison``, ``trigger`` (a mapping, or
    None), ``target`` and ``stamp(frame)``, as :class:`PlantedAttack` has them."""
    case = sc.case(planted.frame)
    verdicts = runner.verdicts(case, where)
    for method, verdict in verdicts.items():
        out["records"].append(
            {
                **where,
                "method": method,
                "n_batch": len(sc.batch),
                "n_poison": planted.n_poison,
                **detection_metrics(planted.is_poison, verdict),
            }
        )
    if planted.trigger is None:
        return
    triggered = triggered_test_rows(sc, planted)
    shared = {
        **where,
        "target": str(planted.target),
        "trigger": {k: str(v) for k, v in planted.trigger.items()},
        "n_triggered": len(triggered),
        "success_clean": attack_success(sc, sc.encoded(sc.batch), triggered, planted.target),
        "success_poisoned": attack_success(sc, case.batch, triggered, planted.target),
    }
    for method, verdict in verdicts.items():
        gated = case.batch[~verdict.flagged]
        out["success"].append(
            {
                **shared,
                "method": method,
                "success_gated": attack_success(sc, gated, triggered, planted.target),
            }
        )


def run(
    args: argparse.Namespace,
) -> tuple[dict[str, list[dict[str, Any]]], list[str], Runner]:
    runner = Runner(available_methods(args.methods))
    out: dict[str, list[dict[str, Any]]] = {"records": [], "clean": [], "success": []}
    frames: dict[str, pd.DataFrame] = {}
    for name, seed in args.plan:
        frames.setdefault(name, load_table(name))
        sc = scene(name, frames[name], seed)
        task = sc.spec.task
        base = {"table": name, "task": task, "seed": seed, "split": split_of(name)}
        start = time.perf_counter()
        judge_clean(sc, base, runner, out)
        for attack in [a for a in args.attacks if a in TASK_ATTACKS[task]]:
            for rate in args.rates:
                planted = plant_in(sc, attack, rate)
                judge_attack(sc, planted, {**base, "attack": attack, "rate": rate}, runner, out)
        progress(f"{name} ({task}) seed={seed}: {time.perf_counter() - start:.1f}s")
    return out, runner.methods, runner


def plant_in(sc: Scene, attack: str, rate: float) -> PlantedAttack:
    """``attack`` at ``rate`` in the batch of ``sc``, the reference as the attacker's view,
    seeded by the case alone."""
    return plant(
        sc.batch,
        label=sc.spec.label,
        kind=attack,
        rate=rate,
        features=sc.features,
        reference=sc.reference,
        random_state=attack_seed(sc.seed, attack, rate),
    )


def split_of(name: str) -> str:
    return next(s for s, split in SPLITS.items() if name in split.tables)


# --- report ---------------------------------------------------------------------------


CASE_KEYS = ["table", "seed", "attack", "rate"]


def paired(frame: pd.DataFrame, keys: list[str]) -> tuple[pd.DataFrame, str]:
    """Rows of the cases poisonguard judged, when it judged some but not all; with a note."""
    if frame.empty or PG not in set(frame["method"]):
        return frame, ""
    judged = frame.loc[frame["method"] == PG, keys].drop_duplicates()
    total = len(frame[keys].drop_duplicates())
    if len(judged) == total:
        return frame, ""
    kept = frame.merge(judged, on=keys)
    return kept, f" (the {len(judged)} of {total} cases poisonguard judged)"


def report(
    out: dict[str, list[dict[str, Any]]],
    methods: list[str],
    runner: Runner,
    args: argparse.Namespace,
) -> str:
    lines = [
        f"Table benchmark: split={args.split} rates={args.rates}"
        + (" (quick: first seed per table)" if args.quick else ""),
        "split: 40% trusted reference / 20% test / 40% batch per seed "
        "(stratified for classification)",
    ]
    for name, split in SPLITS.items():
        role = "tune here" if name == "dev" else "do not look while choosing"
        lines.append(f"  {name:8s} seeds {list(split.seeds)}: {', '.join(split.tables)} ({role})")
    if args.seeds:
        lines.append(f"  seeds of this run (--seeds, instead of the split's): {args.seeds}")
    ran = sorted({t for t, _ in args.plan})
    lines.append(
        "tables run: " + ", ".join(f"{t} [{TABLES[t].label}, {TABLES[t].task}]" for t in ran)
    )
    lines.append("")
    lines.append("Decision thresholds (each method's default rule):")
    lines.extend(f"  {m:20s} {THRESHOLDS[m]}" for m in methods)
    lines.append(
        f"  iforest runs with n_jobs={IFOREST_JOBS}; anchors read the TableEncoder encoding"
    )
    if PG in methods and args.override:
        lines.append(args.override)
    if PG not in methods:
        why = "not requested (--methods)" if PG not in args.methods else "SKIPPED (see the notice)"
        lines.append(f"  poisonguard          {why}; no ratios.")
    elif runner.unavailable:
        reasons = pd.DataFrame(runner.unavailable).groupby(["task", "reason"]).size()
        for (task, reason), n in reasons.items():
            lines.append(f"  poisonguard unavailable on {n} {task} cases: {reason}")
    lines.append("")
    records = pd.DataFrame(out["records"])
    clean = pd.DataFrame(out["clean"])
    success = pd.DataFrame(out["success"])
    for task in (CLASSIFICATION, REGRESSION):
        if records.empty or task not in set(records["task"]):
            continue
        lines.append(f"==== {task} ====\n")
        lines.extend(task_tables(task, records, clean, success, methods))
    return "\n".join(lines)


def task_tables(
    task: str,
    records: pd.DataFrame,
    clean: pd.DataFrame,
    success: pd.DataFrame,
    methods: list[str],
    attacks: list[str] = ALL_ATTACKS,
) -> list[str]:
    """The side-by-side tables of one task; ``attacks`` orders the by-attack rows."""
    frame, note = paired(records[records["task"] == task], CASE_KEYS)
    present = set(frame["method"])
    cols = [m for m in methods if m in present]
    compare = "ratio" if PG in cols else None
    if compare:
        legend = ", ".join(f"{SHORT[m]} = {m}" for m in cols if m != PG)
        out = [f"comparison columns: pg/x = poisonguard / x ({legend}){note}\n"]
    else:
        out = []
    frame = frame.assign(attack=pd.Categorical(frame["attack"], categories=attacks, ordered=True))
    for value, row, title, ratios in [
        ("f1", "attack", "F1 of flagged rows, by attack (mean over tables, rates, seeds)", compare),
        ("precision", "attack", "Precision, by attack", None),
        ("recall", "attack", "Recall, by attack", None),
        ("ap", "attack", "Average precision of the continuous score, by attack", compare),
        ("f1", "table", "F1 by table (mean over attacks, rates, seeds)", compare),
        ("precision", "table", "Precision by table", None),
        ("recall", "table", "Recall by table", None),
    ]:
        grid = by_method(frame, row, value, cols)
        out.append(metric_table(f"[{task}] {title}", grid, cols, ratios))
    if task == CLASSIFICATION and not success.empty:
        out.append(_success_table(success, cols))
    held = clean[clean["task"] == task]
    if not held.empty:
        held, held_note = paired(held, ["table", "seed"])
        grid = by_method(held, "table", "flagged_share", cols)
        out.append(
            metric_table(
                f"[{task}] Share of rows held on poison-free batches (lower is better){held_note}",
                grid,
                cols,
                None,
            )
        )
    grid = by_method(frame, "table", "seconds", cols)
    out.append(metric_table(f"[{task}] Seconds per batch", grid, cols, None))
    return out


def _success_table(success: pd.DataFrame, methods: list[str]) -> str:
    """Backdoor success by attack: no poison, poison, and poison after each method's gate."""
    success, note = paired(success, CASE_KEYS)
    cases = success.drop_duplicates(CASE_KEYS)
    base = cases.groupby("attack")[["success_clean", "success_poisoned", "n_triggered"]].mean()
    gated = success.pivot_table(
        index="attack", columns="method", values="success_gated", aggfunc="mean"
    )
    header = ["attack", "cases", "no poison", "poisoned", *(f"gated {m}" for m in methods)]
    rows = [
        [
            str(attack),
            str(int((cases["attack"] == attack).sum())),
            fmt(values["success_clean"]),
            fmt(values["success_poisoned"]),
            *(fmt(gated.loc[attack].get(m, float("nan"))) for m in methods),
        ]
        for attack, values in base.iterrows()
    ]
    return table(
        "[classification] Backdoor attack success: share of triggered test rows (other classes, "
        "trigger stamped) a HistGradientBoosting model of reference + batch puts in the target "
        f"class (lower is better){note}",
        header,
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    quiet()
    args = parse_args(argv)
    args.override = use_settings(args.fdr, args.detectors, args.params, args.excess_level)
    out, methods, runner = run(args)
    print(report(out, methods, runner, args))
    if args.json:
        write_json(
            args.json,
            args,
            splits={k: {"tables": v.tables, "seeds": v.seeds} for k, v in SPLITS.items()},
            tables={k: vars(v) for k, v in TABLES.items()},
            thresholds={m: THRESHOLDS[m] for m in methods},
            poisonguard_unavailable=runner.unavailable,
            records=out["records"],
            clean_records=out["clean"],
            success_records=out["success"],
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
