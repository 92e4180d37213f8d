"""The ``poisonguard`` command line.

Exit codes: 0 success; 1 the command ran and found a problem (a gate that is
not safe, a broken audit chain); 2 a usage, configuration or input error.
Errors are one line on stderr, never a traceback (set POISONGUARD_DEBUG=1 for one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from poisonguard import __version__
from poisonguard.config import Config, load_config
from poisonguard.errors import BatchError, ConfigError, PoisonguardError

CONFIG_ENV = "POISONGUARD_CONFIG"


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config or os.environ.get(CONFIG_ENV) or "poisonguard.toml")


def _table(rows: list[dict], columns: Sequence[str]) -> str:
    """A plain fixed-width table."""
    cells = [[str(c) for c in columns]] + [
        ["" if r.get(c) is None else _fmt(r.get(c)) for c in columns] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = []
    for k, row in enumerate(cells):
        lines.append(
            "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths, strict=True)))
        )
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:.3f}"
    return str(value)


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


# ----------------------------------------------------------------------------- commands


def cmd_init(args: argparse.Namespace) -> int:
    from poisonguard.initialize import init_dataset

    done = init_dataset(
        args.sample,
        label=args.label,
        directory=args.dir,
        id_column=args.id,
        name=args.name,
        margin=args.margin,
        force=args.force,
    )
    cfg = done.config
    _out(f"wrote {cfg.path}")
    _out(f"wrote {cfg.expectations} ({done.n_expectations} expectations inferred from {args.sample})")
    _out(f"seeded {cfg.store} with {done.seed.rows_clean} trusted rows (batch {done.seed.batch_id})")
    _out(f"landing folder: {cfg.landing}")
    return 0


def _run(config: Config, local: bool) -> list[dict]:
    if local:
        from poisonguard.pipeline import process_landing

        return [r.as_dict() for r in process_landing(config)]
    import poisonguard_flows

    poisonguard_flows.configure(config.store)
    from poisonguard_flows.ingest import ingest

    return ingest(str(config.path))


RUN_COLUMNS = ("batch_id", "status", "rows_in", "rows_clean", "rows_quarantined", "rows_rejected")


def cmd_run(args: argparse.Namespace) -> int:
    config = _config(args)
    outcomes = _run(config, args.local)
    if not outcomes:
        _out(f"no new batches in {config.landing}")
        return 0
    _out(_table(outcomes, RUN_COLUMNS))
    for o in outcomes:
        if o["status"] == "rejected":
            _out(f"rejected {o['batch_id']}: {o['reason']}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    config = _config(args)
    if not config.cron:
        raise ConfigError(f"{config.path}: schedule.cron is needed to serve on a schedule")
    import poisonguard_flows

    poisonguard_flows.configure(config.store)
    from poisonguard_flows.ingest import serve

    _out(f"serving poisonguard-{config.name} on cron {config.cron!r} ({config.timezone}); Ctrl-C stops")
    serve(str(config.path))
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    from poisonguard.scan import scan
    from poisonguard.store import atomic_write_bytes, parquet_bytes, read_batch

    batch = read_batch(Path(args.batch))
    reference = read_batch(Path(args.reference)) if args.reference else None
    config = load_config(args.config) if args.config else None
    if config is not None and args.fdr is not None:
        config = config.with_detection(fdr=args.fdr)
    settings = config if config is not None else None
    if settings is None and args.fdr is not None:
        from poisonguard.config import DetectionSettings

        settings = DetectionSettings(fdr=args.fdr)
    label = args.label if args.label else None
    if label is not None and label not in batch.columns:
        raise BatchError(args.batch, f"missing label column {label!r}", column=label)
    result = scan(batch, label=label, reference=reference, config=settings)
    out = Path(args.out)
    held = batch[result.quarantined.to_numpy()].copy()
    held["pg_reason"] = result.reasons[result.quarantined]
    for col in result.scores.columns:
        held["pg_suspicion" if col == "suspicion" else f"pg_score_{col}"] = result.scores.loc[
            result.quarantined, col
        ]
    atomic_write_bytes(out / "clean.parquet", parquet_bytes(batch[~result.quarantined.to_numpy()]))
    atomic_write_bytes(out / "quarantine.parquet", parquet_bytes(held))
    _out(
        f"{args.batch}: {len(batch)} rows, {result.n_quarantined} quarantined, "
        f"{len(batch) - result.n_quarantined} clean -> {out}/clean.parquet, {out}/quarantine.parquet"
    )
    top = held.sort_values("pg_suspicion", ascending=False).head(args.show)
    for idx, row in top.iterrows():
        _out(f"  row {idx}: {row['pg_reason']}")
    return 0


STATUS_COLUMNS = (
    "batch_id", "source", "status", "rows_in", "rows_clean", "rows_quarantined", "rows_rejected",
)


def cmd_status(args: argparse.Namespace) -> int:
    from poisonguard.store import Store

    config = _config(args)
    store = Store(config.store)
    records = [r.as_dict() for r in store.batches()]
    for r in records:
        r["file"] = r["source"]
        r["source"] = Path(r["source"]).name
    totals = {
        k: sum((r[k] or 0) for r in records if r["status"] != "seed")
        for k in ("rows_in", "rows_clean", "rows_quarantined", "rows_rejected")
    }
    if args.json:
        keys = ("batch_id", "file", "sha256", "status", *STATUS_COLUMNS[3:], "reason",
                "started_at", "finished_at")
        doc = {"store": str(config.store), "batches": [{k: r[k] for k in keys} for r in records],
               "totals": totals}
        _out(json.dumps(doc, indent=2))
        return 0
    if not records:
        _out(f"store {config.store} is empty")
        return 0
    _out(_table(records, STATUS_COLUMNS))
    _out(
        f"\nlanded rows: {totals['rows_in']} = {totals['rows_clean']} clean + "
        f"{totals['rows_quarantined']} quarantined + {totals['rows_rejected']} rejected"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import shutil

    from poisonguard.demo import BATCHES, LABEL, build_demo, evaluate_demo
    from poisonguard.initialize import init_dataset
    from poisonguard.store import Store

    root = Path(args.dir)
    if root.exists():
        shutil.rmtree(root)
    seed, landing = build_demo(root)
    _out(f"demo data in {root}: trusted seed {seed.name}, landing batches:")
    for b in BATCHES:
        _out(f"  {b.file:32s} {b.what}")
    done = init_dataset(seed, label=LABEL, directory=root, id_column="row_id", name="digits")
    _out(f"init: {done.n_expectations} expectations inferred; seeded {done.seed.rows_clean} trusted rows")
    how = "in-process" if args.local else "with the Prefect flow poisonguard-ingest (no server)"
    _out(f"processing the landing zone {how} ...")
    _run(done.config, args.local)
    score = evaluate_demo(root, Store(done.config.store))
    _out("")
    _out(_table(score.table.to_dict("records"), list(score.table.columns)))
    _out("")
    _out(
        f"quarantine vs planted poison: recall {score.recall:.1%}, precision {score.precision:.1%}, "
        f"clean rows quarantined {score.clean_quarantined:.1%}"
    )
    _out(f"every input row accounted for: {'yes' if score.rows_accounted else 'NO'}")
    _out(f"store: {done.config.store}   try: poisonguard status --config {done.config.path}")
    return 0 if score.rows_accounted else 1


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="poisonguard",
        description="Stop poisoned and mislabelled rows before they reach a training set.",
    )
    p.add_argument("--version", action="version", version=f"poisonguard {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], help: str,
                config: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        if config:
            sp.add_argument("--config", "-c", help=f"config file (default ${CONFIG_ENV} or ./poisonguard.toml)")
        sp.set_defaults(func=func)
        return sp

    sp = command("init", cmd_init, "write a config and an expectations suite inferred from a trusted sample, and seed the store", config=False)
    sp.add_argument("--sample", required=True, help="trusted rows (Parquet or CSV)")
    sp.add_argument("--label", help="label column")
    sp.add_argument("--id", help="id column (unique per row)")
    sp.add_argument("--name", help="dataset name (default: the sample's file name)")
    sp.add_argument("--dir", default=".", help="where to write poisonguard.toml (default .)")
    sp.add_argument("--margin", type=float, default=0.1, help="range margin, share of the observed range (default 0.1)")
    sp.add_argument("--force", action="store_true", help="overwrite an existing config")

    sp = command("run", cmd_run, "process the landing zone once")
    sp.add_argument("--local", action="store_true", help="run the same steps in-process, without Prefect")

    command("serve", cmd_serve, "serve the ingest flow on the config's cron schedule (Prefect flow.serve)")

    sp = command("scan", cmd_scan, "judge one file: write clean.parquet and quarantine.parquet")
    sp.add_argument("batch", help="the batch file (Parquet or CSV)")
    sp.add_argument("--label", help="label column (omit to run only the label-free detectors)")
    sp.add_argument("--reference", help="trusted rows to anchor on (default: the batch itself)")
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--fdr", type=float, help="false-discovery rate of the quarantine")
    sp.add_argument("--show", type=int, default=5, help="print this many of the most suspicious rows")

    sp = command("status", cmd_status, "per-batch table of where every row went")
    sp.add_argument("--json", action="store_true", help="machine-readable output")

    sp = command("demo", cmd_demo, "build the digits demo and run the gate on it", config=False)
    sp.add_argument("--dir", default="data/demo", help="demo folder (replaced; default data/demo)")
    sp.add_argument("--local", action="store_true", help="without Prefect")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, BatchError) as exc:
        return _fail(exc, 2)
    except PoisonguardError as exc:
        return _fail(exc, 1)
    except KeyboardInterrupt:
        return 130


def _fail(exc: Exception, code: int) -> int:
    if os.environ.get("POISONGUARD_DEBUG"):
        raise exc
    sys.stderr.write(f"poisonguard: error: {exc}\n")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
