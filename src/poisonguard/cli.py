"""The ``poisonguard`` command line.

Exit codes: 0 success; 1 the command ran and found a problem (a gate that is
not safe, a broken audit chain); 2 a usage, configuration or input error.
Errors are one line on stderr, never a traceback (set POISONGUARD_DEBUG=1 for one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from poisonguard import __version__
from poisonguard.columns import MAX_CATEGORIES
from poisonguard.config import Config, load_config
from poisonguard.errors import (
    BatchError,
    ConfigError,
    GateError,
    PoisonguardError,
    ReviewError,
    shown,
)

CONFIG_ENV = "POISONGUARD_CONFIG"


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config or os.environ.get(CONFIG_ENV) or "poisonguard.toml")


def _table(rows: list[dict], columns: Sequence[str]) -> str:
    """A plain fixed-width table: numbers right-aligned, text left-aligned."""
    cells = [[str(c) for c in columns]] + [
        ["" if r.get(c) is None else _fmt(r.get(c)) for c in columns] for r in rows
    ]
    numeric = [
        all(isinstance(r.get(c), (int, float)) or r.get(c) is None for r in rows) for c in columns
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = []
    for k, row in enumerate(cells):
        lines.append(
            "  ".join(
                v.rjust(w) if num else v.ljust(w)
                for v, w, num in zip(row, widths, numeric, strict=True)
            ).rstrip()
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


def _progress(label: str) -> Callable[[int, int, str], None] | None:
    """A progress bar on stderr, when stderr is a terminal; None otherwise."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int, name: str) -> None:
        width = 30
        filled = width * done // max(total, 1)
        bar = "#" * filled + "-" * (width - filled)
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r{label} [{bar}] {done}/{total} {name[:40]:<40}{end}")
        sys.stderr.flush()

    return show


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
        task=args.task,
        max_categories=args.max_categories,
    )
    cfg = done.config
    _out(f"wrote {cfg.path}")
    _out(
        f"wrote {cfg.expectations} ({done.n_expectations} expectations inferred from {args.sample})"
    )
    if cfg.pii:
        found = ", ".join(f"{c} ({k})" for c, k in cfg.pii.items())
        _out(f"personal data found in: {found}; written to [dataset.columns] as pii")
    else:
        _out(
            "no column looks personal; the suite rejects batches that leak e-mails or card numbers"
        )
    _out(
        f"seeded {cfg.store} with {done.seed.rows_clean} trusted rows (batch {done.seed.batch_id})"
    )
    _out(f"landing folder: {cfg.landing}")
    return 0


def _run(config: Config, local: bool) -> dict:
    """Process the landing folder once: ``{"records": [...], "notices": [...]}``."""
    if local:
        from poisonguard.pipeline import process_landing

        run = process_landing(config, progress=_progress("batches"))
        return {
            "records": [r.as_dict() for r in run.records],
            "notices": [n.as_dict() for n in run.notices],
            "purge": run.purge,
        }
    import contextlib

    import poisonguard_flows

    poisonguard_flows.configure(config.store)
    from poisonguard_flows.server import local_server

    with contextlib.ExitStack() as stack:
        if not os.environ.get("PREFECT_API_URL"):
            # A loopback server that dies with this process (a temporary API would not).
            stack.enter_context(local_server(Path(os.environ["PREFECT_HOME"]), services=False))
        from poisonguard_flows.ingest import ingest_flow

        return ingest_flow(str(config.path))(str(config.path))


RUN_COLUMNS = ("batch_id", "status", "rows_in", "rows_clean", "rows_quarantined", "rows_rejected")


def cmd_run(args: argparse.Namespace) -> int:
    """Exit 0 when every new batch was committed, 1 when any was rejected."""
    config = _config(args)
    done = _run(config, args.local)
    records, notices = done["records"], done["notices"]
    _purge_line(done.get("purge"))
    if not records and not notices:
        _out(f"no new batches in {config.landing}")
        return 0
    if records:
        _out(_table(records, RUN_COLUMNS))
    for n in notices:
        _out(f"{n['status']} {shown(n['file'])}: {n['reason']}")
    rejected = [r for r in records if r["status"] == "rejected"]
    for r in rejected:
        _out(f"rejected {r['batch_id']}: {r['reason']}")
    if rejected:
        sys.stderr.write(
            f"poisonguard: {len(rejected)} of {len(records)} batches rejected; "
            f"kept under {config.store / 'rejected'}\n"
        )
        return 1
    return 0


def _purge_line(purged: dict | None) -> None:
    """What a run's retention purge did, in one line (nothing when it purged nothing)."""
    if purged is None:
        return
    if "error" in purged:
        sys.stderr.write(f"poisonguard: warning: {purged['error']}\n")
    elif purged["batches"]:
        n = len(purged["batches"])
        _out(f"retention: purged {purged['rows']} rows of {n} batch{'es' if n != 1 else ''}")


def cmd_purge(args: argparse.Namespace) -> int:
    """Purge what ``[retention]`` says is due now; with ``--dry-run``, only list it."""
    from poisonguard.store import open_store

    config = _config(args)
    settings = config.retention
    if not settings.enabled:
        raise ConfigError(
            f"{config.path}: [retention] sets no age (quarantine_days, rejected_days), so "
            "nothing is ever purged"
        )
    store = open_store(config)
    at = _clock()
    if args.dry_run:
        plan = store.due(settings, at)
        _out(_table([_due_row(d) for d in plan.due], DUE_COLUMNS) if plan.due else "nothing due")
        if plan.leftover:
            _out(f"{len(plan.leftover)} files of an interrupted purge are still there")
        return 0
    done = store.purge(settings, actor=args.by, now=at)
    if done.finished:
        _out(f"finished an interrupted purge: removed {len(done.finished)} files")
    if not done.purged:
        _out("nothing due")
        return 0
    _out(_table([_due_row(d) for d in done.purged], DUE_COLUMNS))
    _out(
        f"purged {done.rows} rows of {len(done.purged)} batches "
        f"({len(done.files) - len(done.finished)} files); the blocklist keeps the rejected "
        "rows' hashes"
    )
    return 0


DUE_COLUMNS = ("batch_id", "kind", "rows", "age_days", "reviewed", "unreviewed")


def _due_row(item: Any) -> dict:
    return {**item.as_dict(), "age_days": round(item.age_days, 1), "reviewed": str(item.reviewed)}


def _clock() -> Any:
    """The time retention is judged at (``retention.utc_now``)."""
    from poisonguard.store.retention import utc_now

    return utc_now()


def cmd_serve(args: argparse.Namespace) -> int:
    config = _config(args)
    if not config.cron:
        raise ConfigError(f"{config.path}: schedule.cron is needed to serve on a schedule")
    import contextlib

    import poisonguard_flows
    from poisonguard_flows.server import local_server

    poisonguard_flows.configure(config.store)
    with contextlib.ExitStack() as stack:
        if not os.environ.get("PREFECT_API_URL"):
            # Prefect's temporary API does not schedule: serve needs a real (loopback) server.
            url = stack.enter_context(local_server(Path(os.environ["PREFECT_HOME"])))
            _out(f"started a local Prefect server at {url} (its UI is off)")
        from poisonguard_flows.ingest import serve

        _out(
            f"serving poisonguard-{config.name} on cron {config.cron!r} ({config.timezone}); Ctrl-C stops"
        )
        sys.stdout.flush()
        serve(str(config.path))
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    from poisonguard.scan import scan
    from poisonguard.store import read_batch, write_table

    batch = read_batch(Path(args.batch))
    reference = read_batch(Path(args.reference)) if args.reference else None
    from poisonguard.config import DetectionSettings

    settings: Config | DetectionSettings | None = load_config(args.config) if args.config else None
    if isinstance(settings, Config) and args.fdr is not None:
        settings = settings.with_detection(fdr=args.fdr)
    elif settings is None and args.fdr is not None:
        settings = DetectionSettings(fdr=args.fdr).validated("scan")
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
    write_table(out / "clean.parquet", batch[~result.quarantined.to_numpy()])
    write_table(out / "quarantine.parquet", held)
    _out(
        f"{args.batch}: {len(batch)} rows, {result.n_quarantined} quarantined, "
        f"{len(batch) - result.n_quarantined} clean -> {out}/clean.parquet, {out}/quarantine.parquet"
    )
    top = held.sort_values("pg_suspicion", ascending=False).head(args.show)
    for idx, row in top.iterrows():
        _out(f"  row {idx}: {row['pg_reason']}")
    return 0


STATUS_COLUMNS = (
    "batch_id",
    "source",
    "status",
    "rows_in",
    "rows_clean",
    "rows_quarantined",
    "rows_rejected",
    "judged_by",
)


def _reference_line(summary: dict | None) -> str:
    """The current reference version in one line, as ``status`` and ``reference`` print it."""
    if summary is None:
        return "reference: none (seed the store with `poisonguard init --sample TRUSTED`)"
    n = len(summary["batches"])
    return (
        f"reference: version {summary['version']}, {summary['rows']:,} rows from {n} "
        f"batch{'es' if n != 1 else ''}, digest {summary['digest'][:12]}"
    )


def cmd_status(args: argparse.Namespace) -> int:
    from poisonguard.sources import alarms
    from poisonguard.store import open_store

    config = _config(args)
    store = open_store(config)
    records = [r.as_dict() for r in store.batches()]
    for r in records:
        r["file"] = r["source"]
        r["source"] = shown(r["source"], 48)
        r["judged_by"] = None if r["reference_version"] is None else f"v{r['reference_version']}"
    current = store.reference()
    reference = None if current is None else current.summary()
    states = store.source_replay(config.sources).states()
    skipped = [s for s in store.landed().values() if s.outcome == "skipped"]
    kept = store.due(config.retention, _clock()) if config.retention.enabled else None
    totals = {
        k: sum((r[k] or 0) for r in records if r["status"] != "seed")
        for k in ("rows_in", "rows_clean", "rows_quarantined", "rows_rejected")
    }
    if args.json:
        keys = (
            "batch_id",
            "file",
            "sha256",
            "status",
            *STATUS_COLUMNS[3:-1],
            "reference_version",
            "reason",
            "started_at",
            "finished_at",
        )
        doc = {
            "store": str(config.store),
            "batches": [{k: r[k] for k in keys} for r in records],
            "skipped": [
                {"file": s.name, "reason": s.reason, "sha256": s.sha256, "at": s.at}
                for s in skipped
            ],
            "totals": totals,
            "reference": reference,
            "sources": [
                {**dataclasses.asdict(s), "evidence": s.describe(config.sources)}
                for s in states.values()
            ],
            "retention": None
            if kept is None
            else {
                "due": [d.as_dict() for d in kept.due],
                "overdue_review": [d.as_dict() for d in kept.overdue],
                "leftover": list(kept.leftover),
            },
        }
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
    _out(_reference_line(reference))
    if len(states) > 1:  # more than the pooled test: some source sent a scored batch
        _out("\nsources (`poisonguard source` for the evidence):")
        _out(_table(_source_rows(states), SOURCE_COLUMNS))
    for state in alarms(states):
        _out(f"ALARM {shown(state.describe(config.sources), 400)}")
    if skipped:
        _out(f"\nskipped landing entries ({len(skipped)}):")
        for entry in skipped:
            _out(f"  {shown(entry.name, 60)}: {entry.reason}")
    if kept is not None:
        _retention_lines(kept)
    return 0


def _retention_lines(kept: Any) -> None:
    """``status``'s retention part: what a purge would remove now, and overdue reviews."""
    for kind in ("quarantine", "rejected"):
        due = [d for d in kept.due if d.kind == kind]
        if due:
            _out(
                f"retention: {kind} data of {len(due)} batches due for purge "
                f"({sum(d.rows for d in due)} rows, oldest {max(d.age_days for d in due):.1f} "
                "days); `poisonguard purge --by NAME` or the next run purges it"
            )
    if kept.overdue:
        _out(
            f"retention: {sum(d.unreviewed for d in kept.overdue)} held rows of "
            f"{len(kept.overdue)} batches overdue for review (oldest "
            f'{max(d.age_days for d in kept.overdue):.1f} days; kept: unreviewed = "keep"): '
            + ", ".join(d.batch_id for d in kept.overdue[:5])
            + (", ..." if len(kept.overdue) > 5 else "")
        )
    if kept.leftover:
        _out(f"retention: {len(kept.leftover)} files of an interrupted purge are still there")
    if not (kept.due or kept.overdue or kept.leftover):
        _out("retention: nothing due")


def cmd_demo(args: argparse.Namespace) -> int:
    import shutil

    from poisonguard.demo import DATASETS, DEMO_MARKER, ID, build_demo, evaluate_demo
    from poisonguard.initialize import init_dataset
    from poisonguard.store import open_store

    root = Path(args.dir)
    marker = root / DEMO_MARKER
    if root.exists() and any(root.iterdir()):
        if not marker.is_file():
            raise ConfigError(
                f"{root} exists and was not made by `poisonguard demo`; "
                "choose another --dir or empty it yourself"
            )
        shutil.rmtree(root)  # a demo folder this command made before
    root.mkdir(parents=True, exist_ok=True)
    marker.write_text("made by poisonguard demo; `poisonguard demo` replaces this folder\n")
    spec = DATASETS[args.dataset]
    seed, _landing = build_demo(root, dataset=spec.name)
    _out(f"{spec.name} demo in {root}: trusted seed {seed.name}, landing batches:")
    for b in spec.batches:
        _out(f"  {b.path:42s} {b.what}")
    done = init_dataset(seed, label=spec.label, directory=root, id_column=ID, name=spec.name)
    _out(
        f"init: {done.n_expectations} expectations inferred; seeded {done.seed.rows_clean} trusted rows"
    )
    how = (
        "in-process"
        if args.local
        else "with the Prefect flow poisonguard-ingest (a temporary loopback Prefect API; "
        "no server to manage)"
    )
    _out(f"processing the landing zone {how} ...")
    _run(done.config, args.local)
    score = evaluate_demo(root, open_store(done.config))
    _out("")
    _out(_table(score.table.to_dict("records"), list(score.table.columns)))
    _out("")
    _out(f"quarantine vs planted poison: {score.summary}")
    _out(f"every input row accounted for: {'yes' if score.rows_accounted else 'NO'}")
    _out(f"store: {done.config.store}   try: poisonguard status --config {done.config.path}")
    return 0 if score.rows_accounted else 1


def cmd_review_list(args: argparse.Namespace) -> int:
    from poisonguard.gate import human_age
    from poisonguard.review import awaiting_review
    from poisonguard.store import open_store

    store = open_store(_config(args))
    rows = [
        {
            "batch_id": p.batch_id,
            "source": shown(p.source, 48),
            "awaiting": p.awaiting,
            "reviewed": p.reviewed,
            "age": human_age(p.age_seconds),
            "since": p.since,
        }
        for p in awaiting_review(store)
        if args.all or p.awaiting > 0
    ]
    if not rows:
        _out("nothing awaits review")
        return 0
    _out(_table(rows, ("batch_id", "source", "awaiting", "reviewed", "age", "since")))
    return 0


def cmd_review_show(args: argparse.Namespace) -> int:
    from poisonguard.pii import Masker
    from poisonguard.review import held_rows
    from poisonguard.store import open_store

    config = _config(args)
    if args.unmask and not args.by:
        raise ConfigError("--unmask needs --by NAME: who saw the personal data is audited")
    store = open_store(config)
    rows = held_rows(store, args.batch)
    if rows.empty:
        _out(f"batch {args.batch} has no quarantined rows")
        return 0
    start = (args.page - 1) * args.page_size
    page = rows.iloc[start : start + args.page_size]
    pages = max(1, -(-len(rows) // args.page_size))
    personal = [c for c in config.pii if c in rows.columns]
    if args.unmask and personal:
        # Before anything is shown: an unmasked page nobody audited must not exist.
        detail = {"columns": personal, "rows": [int(r) for r in page["pg_row"]]}
        store.audit("unmask", actor=args.by, batch_id=args.batch, detail=detail)
    else:
        page = Masker(config.pii).frame(page)
    _out(
        f"batch {args.batch}: {len(rows)} held rows, page {args.page} of {pages} (most suspicious first)"
        + ("; personal columns unmasked (audited)" if args.unmask and personal else "")
    )
    ident = config.id_column if config.id_column in rows.columns else None
    for _, r in page.iterrows():
        head = f"row {r['pg_row']}" + (f" ({ident}={r[ident]})" if ident else "")
        susp = r.get("pg_suspicion")
        score = "" if susp is None or susp != susp else f"  suspicion {susp:.1f}"
        _out(
            f"{head}  [{r['pg_review']}{' by ' + r['pg_reviewed_by'] if r['pg_reviewed_by'] else ''}]"
            f"  {r['pg_stage']}{score}"
        )
        _out(f"    {r['pg_reason']}")
        if config.label and config.label in r:
            _out(f"    {config.label} = {r[config.label]}")
        for column in personal:
            if column != ident:
                _out(f"    {column} = {r[column]}")
    return 0


def _review(args: argparse.Namespace, action: str) -> int:
    from poisonguard.review import reject, review
    from poisonguard.store import open_store

    rows = None
    if args.rows:
        try:
            rows = [int(x) for x in args.rows.replace(" ", "").split(",") if x]
        except ValueError:
            raise ConfigError(
                f"--rows takes row numbers separated by commas. Got {args.rows!r} instead."
            ) from None
    config = _config(args)
    store = open_store(config)
    rescanned, held = None, {}
    if action == "reject":
        rejection = reject(config, store, args.batch, by=args.by, note=args.note, rows=rows)
        done, rescanned, held = rejection.review, rejection.rescan, rejection.held
    else:
        done = review(
            store,
            args.batch,
            action,
            by=args.by,
            note=args.note,
            rows=rows,
            id_column=config.id_column,
        )
    verb = {"release": "released", "reject": "rejected"}[action]
    _out(
        f"{verb} {len(done.applied)} rows of {args.batch}"
        + (f"; {len(done.already)} were already {verb}" if done.already else "")
    )
    if rescanned is not None:
        (scope,) = rescanned.scopes
        _out(
            f"re-scanned {scope.rows:,} accepted rows of source {shown(scope.source)}: "
            + (
                f"held {sum(held.values())} rows of {len(held)} "
                f"batch{'es' if len(held) != 1 else ''} for review"
                if held
                else "none held"
            )
        )
    return 0


def cmd_review_release(args: argparse.Namespace) -> int:
    return _review(args, "release")


def cmd_review_reject(args: argparse.Namespace) -> int:
    return _review(args, "reject")


def cmd_review_revoke(args: argparse.Namespace) -> int:
    from poisonguard.review import revoke
    from poisonguard.store import open_store

    done = revoke(open_store(_config(args)), args.batch, actor=args.actor, note=args.note)
    if done.already is not None:
        _out(f"batch {args.batch} was already {done.already}; nothing changed")
        return 0
    _out(
        f"revoked {args.batch}: {done.rows_revoked} rows left the training set"
        + (
            f", {done.rows_rejected} rows awaiting review were rejected"
            if done.rows_rejected
            else ""
        )
        + "; its rows are blocklisted"
    )
    if done.reference is not None:
        _out(_reference_line(done.reference.summary()))
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    """Erase a data subject's rows; exit 1 when one of its values is still written elsewhere."""
    from poisonguard.pipeline import forget
    from poisonguard.subject import parse_where, read_values, subject_of

    if args.where is not None:
        if args.column or args.value is not None or args.values_file:
            raise ConfigError("--where names the rows by itself: leave out --column and --value")
        subject = parse_where(args.where)
    elif args.column is None or (args.value is None) == (args.values_file is None):
        raise ConfigError(
            "name the rows to erase: --column C with --value V or --values-file FILE, "
            'or --where "C == V"'
        )
    elif args.value is not None:
        subject = subject_of(args.column, [args.value])
    else:
        text = Path(args.values_file).read_text(encoding="utf-8")
        subject = subject_of(args.column, read_values(text))
    done = forget(_config(args), subject, actor=args.by, note=args.note, dry_run=args.dry_run)
    verb = "would erase" if done.dry_run else "erased"
    if not done.files:
        _out(f"no rows match the subject {done.subject[:12]}...; nothing to erase")
    else:
        _out(
            f"{verb} {done.rows} rows of the subject {done.subject[:12]}... from "
            f"{len(done.rows_by_batch)} batches, {len(done.files)} files:"
        )
        rows = [
            {
                "file": f.path,
                "batch": f.batch_id,
                "kind": f.kind,
                "rows": "whole file" if f.rows is None else f.rows,
                "now": f.replaced_by or ("(deleted)" if not done.dry_run else ""),
            }
            for f in done.files
        ]
        _out(_table(rows, ["file", "batch", "kind", "rows", "now"]))
    if done.reference is not None:
        _out(_reference_line(done.reference.summary()))
    if done.reports:
        _out(f"reports deleted: {', '.join(done.reports)}")
    for where in done.residues:
        sys.stderr.write(f"poisonguard: still holds one of the subject's values: {where}\n")
    return 1 if done.residues else 0


RESCAN_SHOWN = 50


def cmd_rescan(args: argparse.Namespace) -> int:
    from poisonguard.pipeline import rescan
    from poisonguard.store import open_store

    config = _config(args)
    store = open_store(config)
    report = rescan(config, store, source=args.source, since=args.since)
    _out(f"re-scanned against reference version {report.reference_version}")
    for scope in report.scopes:
        start = f"after {scope.checkpoint}" if scope.checkpoint else "from its first batch"
        _out(
            f"  source {shown(scope.source)}: {scope.rows:,} accepted rows of "
            f"{len(scope.batches)} batch{'es' if len(scope.batches) != 1 else ''}, {start}"
        )
    held = report.held_per_batch
    if held:
        rows = [{"batch_id": b, "rows": report.scanned[b], "held": n} for b, n in held.items()]
        _out("\n" + _table(rows, ("batch_id", "rows", "held")))
    n = len(report.pg_row)
    if n == 0:
        _out("\nno accepted row would be held now")
        return 0
    _out("")
    for b, r, why in list(zip(report.batch_id, report.pg_row, report.reason, strict=True))[
        :RESCAN_SHOWN
    ]:
        _out(f"{b} row {r}: {why}")
    if n > RESCAN_SHOWN:
        _out(f"... and {n - RESCAN_SHOWN} more")
    if not args.hold:
        _out(f"\n{n} accepted rows would now be held; --hold moves them to quarantine for review")
        return 1
    done = store.hold_rescanned(
        report.flagged(),
        actor=args.by,
        note=f"re-scan against reference version {report.reference_version}",
    )
    _out(
        f"\nheld {sum(done.values())} rows of {len(done)} batch{'es' if len(done) != 1 else ''} "
        "in quarantine, awaiting review (`poisonguard review show BATCH`)"
    )
    return 0


REFERENCE_COLUMNS = ("version", "rows", "batches", "digest", "actor", "at", "note")


def cmd_reference_show(args: argparse.Namespace) -> int:
    from poisonguard.store import open_store

    versions = open_store(_config(args)).references()
    if args.json:
        doc = [{**v.summary(), "actor": v.actor, "at": v.at, "note": v.note} for v in versions]
        _out(json.dumps(doc, indent=2))
        return 0
    if not versions:
        _out(_reference_line(None))
        return 0
    rows = [
        {
            "version": v.version,
            "rows": v.rows,
            "batches": len(v.batch_ids),
            "digest": v.digest[:12],
            "actor": shown(v.actor, 24),
            "at": v.at,
            "note": shown(v.note, 48),
        }
        for v in versions
    ]
    _out(_table(rows, REFERENCE_COLUMNS))
    current = versions[-1]
    _out("\n" + _reference_line(current.summary()))
    _out("batches: " + ", ".join(current.batch_ids))
    return 0


def cmd_reference_promote(args: argparse.Namespace) -> int:
    from poisonguard.store import open_store

    config = _config(args)
    store = open_store(config)
    before = store.reference()
    done = store.promote(
        args.batches,
        actor=args.actor,
        note=args.note,
        max_source_share=config.reference.max_source_share,
    )
    added = done.rows - (before.rows if before else 0)
    _out(f"promoted {', '.join(dict.fromkeys(args.batches))} (+{added:,} rows)")
    _out(_reference_line(done.summary()))
    return 0


SOURCE_COLUMNS = ("source", "batches", "rows", "p<=0.01", "p<=0.001", "p<=0.0001", "e", "alarm")


def _source_rows(states: dict) -> list[dict]:
    return [
        {
            "source": shown(s.source, 32),
            "batches": s.batches,
            "rows": s.rows,
            **{c: k for c, k in zip(SOURCE_COLUMNS[3:6], s.below, strict=True)},
            "e": f"{s.statistic:.3g}",
            "alarm": s.alarmed_at or "",
        }
        for s in states.values()
    ]


def cmd_source_show(args: argparse.Namespace) -> int:
    from poisonguard.sources import alarms
    from poisonguard.store import open_store

    config = _config(args)
    states = open_store(config).source_replay(config.sources).states()
    if args.json:
        doc = [
            {**dataclasses.asdict(s), "evidence": s.describe(config.sources)}
            for s in states.values()
        ]
        _out(json.dumps(doc, indent=2))
        return 0
    _out(_table(_source_rows(states), SOURCE_COLUMNS))
    for state in alarms(states):
        _out(f"ALARM {shown(state.describe(config.sources), 400)}")
    return 0


def cmd_source_clear(args: argparse.Namespace) -> int:
    from poisonguard.store import open_store

    open_store(_config(args)).clear_source(args.source, actor=args.actor, note=args.note)
    _out(f"cleared source {shown(args.source)}: its test and the pooled test restart")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from poisonguard.store import open_store

    store = open_store(_config(args))
    broken = store.verify_audit()
    n = len(store.audit_log())
    if broken:
        sys.stderr.write(f"poisonguard: audit chain broken: {broken}\n")
        return 1
    _out(f"audit chain intact: {n} entries")
    return 0


def cmd_audit_log(args: argparse.Namespace) -> int:
    from poisonguard.store import open_store

    log = open_store(_config(args)).audit_log()
    if args.json:
        _out(json.dumps(log, indent=2))
        return 0
    for e in log[-args.last :] if args.last else log:
        detail = json.loads(e["detail"])
        brief = ", ".join(
            f"{k}={v}"
            for k, v in detail.items()
            if k in ("status", "rows_in", "rows", "version", "note", "safe", "reasons")
            and v not in (None, [])
        )
        _out(
            f"{e['seq']:>5}  {e['at']}  {e['action']:<8} {e['batch_id'] or '-':<40} {e['actor']:<12} {brief}"
        )
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    from poisonguard.gate import check, parse_age
    from poisonguard.store import atomic_write_bytes

    config = _config(args)
    max_pending = parse_age(args.max_pending) if args.max_pending else None
    from poisonguard.attest import load_manifest

    previous = load_manifest(args.previous).predicate if args.previous else None
    report = check(
        config,
        max_pending=max_pending,
        actor=args.by,
        previous=previous,
        canary=False if args.no_canary else None,
    )
    if args.manifest or args.cyclonedx:
        from poisonguard.attest import cyclonedx, sign, statement

        doc = statement(report.manifest, config=config.path, suite=config.expectations)
        if args.manifest:
            written = sign(doc, args.sign) if args.sign else doc
            atomic_write_bytes(Path(args.manifest), (json.dumps(written, indent=2) + "\n").encode())
        if args.cyclonedx:
            bom = cyclonedx(doc, pii=config.pii)
            atomic_write_bytes(Path(args.cyclonedx), (json.dumps(bom, indent=2) + "\n").encode())
    elif args.sign:
        raise ConfigError("--sign signs the manifest: pass --manifest PATH too")
    if report.ok:
        _out(
            f"safe: {report.rows} rows in {len(report.files)} files"
            + (f"; manifest {args.manifest}" if args.manifest else "")
        )
    for reason in report.reasons:
        sys.stderr.write(f"not safe: {reason}\n")
    # Its figures, or why it could not judge; a canary that failed to run is a reason above.
    if report.canary is not None and (report.canary.judged or report.canary.unable):
        _out(report.canary.summary())
    return 0 if report.ok else 1


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit 0 when the manifest's signature, files and verdict all hold; 1 with the problems."""
    from poisonguard.attest import verify

    problems = verify(args.manifest, key=args.key, store=args.store)
    for problem in problems:
        sys.stderr.write(f"not verified: {problem}\n")
    if not problems:
        _out(f"verified: {args.manifest}" + (f" (signed, {args.key})" if args.key else ""))
    return 1 if problems else 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from poisonguard.attest import keygen

    private, public = keygen(args.path)
    _out(f"wrote {private} (private, owner-only) and {public} (give this one to training jobs)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from poisonguard.gate import gate
    from poisonguard.store import write_table

    config = _config(args)
    try:
        frame = gate(config, max_pending=args.max_pending, provenance=args.provenance)
    except GateError as exc:
        for reason in exc.reasons:
            sys.stderr.write(f"not safe: {reason}\n")
        return 1
    write_table(Path(args.out), frame)
    _out(f"wrote {len(frame)} verified rows to {args.out}")
    return 0


def cmd_selftest(args: argparse.Namespace) -> int:
    from poisonguard.selftest import selftest

    config = _config(args)
    attacks = tuple(a for a in args.attacks.split(",") if a) if args.attacks else None
    table = selftest(
        config,
        attacks=attacks,
        rate=args.rate,
        seeds=range(args.seeds),
        progress=_progress("selftest"),
    )
    _out(
        f"planted at rate {args.rate:g} in {config.name}'s clean set "
        f"({args.seeds} seed{'s' if args.seeds > 1 else ''}); fdr {config.detection.fdr:g}"
    )
    _out(_table(table.to_dict("records"), list(table.columns)))
    none = table[table["attack"] == "none"].iloc[0]
    _out(
        f"\nclean rows quarantined in the poison-free batch: {none['quarantined']} of {none['rows']}"
    )
    return 0


def cmd_redteam(args: argparse.Namespace) -> int:
    from poisonguard.redteam import figures_table, redteam
    from poisonguard.store import atomic_write_bytes

    config = _config(args)
    run = redteam(
        config,
        attacks=args.attack,
        budgets=args.budget,
        n_batches=args.batches,
        batch_rows=args.batch_rows,
        n_sources=args.sources,
        knowledge=args.knowledge,
        random_state=args.seed,
        progress=_progress("redteam"),
    )
    _out(
        f"red team against a copy of {config.store} ({run.knowledge}-box, seed {args.seed}): "
        f"batches of {run.batch_rows} rows drawn from {run.carrier_rows} clean rows, "
        f"damage measured on {run.test_rows} held-out clean rows; the store was not changed"
    )
    rows = figures_table(run)
    if rows:
        _out(_table(rows, list(rows[0])))
    for f in run.figures:
        if f.resent:
            _out(
                f"{f.attack}: {f.resent_accepted} of {f.resent} rejected rows re-sent as "
                "near-copies entered the training set"
            )
    if run.carrier_from_reference:
        _out(
            f"note: {run.carrier_from_reference} rows sent were copies of rows of the pinned "
            "reference (too few clean rows outside it); the duplicates detector holds some, "
            "so 'clean held' reads high"
        )
    _out(
        "accuracy: a logistic regression trained on the clean rows alone / on every row sent / "
        "on what the gate accepted; 'class' is the class the poison hurt most"
    )
    if args.json:
        atomic_write_bytes(Path(args.json), (json.dumps(run.as_dict(), indent=2) + "\n").encode())
        _out(f"figures written to {args.json}")
    return 0


# ----------------------------------------------------------------------------- parser


def _shown_group(
    sub: Any, name: str, help: str, description: str, show: Callable, show_help: str
) -> Any:
    """A command whose actions are subcommands and whose default is ``show`` (``--config``,
    ``--json`` accepted before or after the action); its subparsers, for the other actions."""
    group = sub.add_parser(name, help=help, description=description)
    group.add_argument(
        "--config", "-c", help=f"config file (default ${CONFIG_ENV} or ./poisonguard.toml)"
    )
    group.add_argument("--json", action="store_true", help="machine-readable output")
    group.set_defaults(func=show)
    actions = group.add_subparsers(dest=f"{name}_command", metavar="ACTION")
    # SUPPRESS: an option given before the action is not reset by the action's default.
    sp = actions.add_parser("show", help=show_help)
    sp.add_argument("--config", "-c", default=argparse.SUPPRESS, help="config file")
    sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    sp.set_defaults(func=show)
    return actions


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="poisonguard",
        description="Stop poisoned and mislabelled rows before they reach a training set.",
    )
    p.add_argument("--version", action="version", version=f"poisonguard {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, func: Callable[[argparse.Namespace], int], help: str, config: bool = True
    ) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        if config:
            sp.add_argument(
                "--config", "-c", help=f"config file (default ${CONFIG_ENV} or ./poisonguard.toml)"
            )
        sp.set_defaults(func=func)
        return sp

    sp = command(
        "init",
        cmd_init,
        "write a config and an expectations suite inferred from a trusted sample, and seed the store",
        config=False,
    )
    sp.add_argument("--sample", required=True, help="trusted rows (Parquet or CSV)")
    sp.add_argument("--label", help="label column")
    sp.add_argument("--id", help="id column (unique per row)")
    sp.add_argument("--name", help="dataset name (default: the sample's file name)")
    sp.add_argument("--dir", default=".", help="where to write poisonguard.toml (default .)")
    sp.add_argument(
        "--margin",
        type=float,
        default=0.25,
        help="range margin, share of the observed range (default 0.25)",
    )
    sp.add_argument("--force", action="store_true", help="overwrite an existing config")
    sp.add_argument(
        "--task",
        choices=("classification", "regression"),
        help="what the label is (default: inferred from its values)",
    )
    sp.add_argument(
        "--max-categories",
        type=int,
        default=MAX_CATEGORIES,
        help="a string column with at most this many distinct values is categorical "
        f"(default {MAX_CATEGORIES})",
    )

    sp = command("run", cmd_run, "process the landing zone once")
    sp.add_argument(
        "--local", action="store_true", help="run the same steps in-process, without Prefect"
    )

    command(
        "serve",
        cmd_serve,
        "serve the ingest flow on the config's cron schedule (Prefect flow.serve)",
    )

    sp = command("scan", cmd_scan, "judge one file: write clean.parquet and quarantine.parquet")
    sp.add_argument("batch", help="the batch file (Parquet or CSV)")
    sp.add_argument("--label", help="label column (omit to run only the label-free detectors)")
    sp.add_argument("--reference", help="trusted rows to anchor on (default: the batch itself)")
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--fdr", type=float, help="false-discovery rate of the quarantine")
    sp.add_argument(
        "--show", type=int, default=5, help="print this many of the most suspicious rows"
    )

    sp = command("status", cmd_status, "per-batch table of where every row went")
    sp.add_argument("--json", action="store_true", help="machine-readable output")

    sp = command(
        "purge",
        cmd_purge,
        "remove quarantine and rejected data past the ages [retention] sets, with an audit entry",
    )
    sp.add_argument("--dry-run", action="store_true", help="list what is due, remove nothing")
    sp.add_argument("--by", required=True, help="who purges (recorded in the audit log)")

    sp = command(
        "demo", cmd_demo, "build a demo (digits or penguins) and run the gate on it", config=False
    )
    sp.add_argument(
        "--dataset",
        choices=("digits", "penguins"),
        default="digits",
        help="digits (64 numeric columns) or penguins (strings, measurements, missing cells)",
    )
    sp.add_argument(
        "--dir",
        default="data/demo",
        help="demo folder (default data/demo); replaced only if an earlier demo made it",
    )
    sp.add_argument("--local", action="store_true", help="without Prefect")

    review = sub.add_parser(
        "review", help="review quarantined rows", description="review quarantined rows"
    )
    rsub = review.add_subparsers(dest="review_command", required=True, metavar="ACTION")

    def rcommand(
        name: str, func: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        sp = rsub.add_parser(name, help=help, description=help)
        sp.add_argument(
            "--config", "-c", help=f"config file (default ${CONFIG_ENV} or ./poisonguard.toml)"
        )
        sp.set_defaults(func=func)
        return sp

    sp = rcommand("list", cmd_review_list, "batches with rows awaiting review, with counts and age")
    sp.add_argument("--all", action="store_true", help="also batches whose rows were all reviewed")
    sp = rcommand("show", cmd_review_show, "a batch's held rows with scores and reasons, paged")
    sp.add_argument("batch")
    sp.add_argument("--page", type=int, default=1)
    sp.add_argument("--page-size", type=int, default=20)
    sp.add_argument(
        "--unmask",
        action="store_true",
        help="show personal columns as they are (needs --by; written to the audit log)",
    )
    sp.add_argument("--by", help="reviewer's name (with --unmask)")
    for name, func, verb in (
        ("release", cmd_review_release, "release rows into the clean training set"),
        ("reject", cmd_review_reject, "reject rows for good (their content is blocklisted)"),
    ):
        sp = rcommand(name, func, verb)
        sp.add_argument("batch")
        sp.add_argument(
            "--rows", help="row numbers (pg_row) separated by commas; default every pending row"
        )
        sp.add_argument("--by", required=True, help="reviewer's name")
        sp.add_argument("--note", required=True, help="why")
    sp = rcommand(
        "revoke",
        cmd_review_revoke,
        "take a committed batch out of the training set and the reference; its rows are "
        "rejected and blocklisted",
    )
    sp.add_argument("batch")
    sp.add_argument("--actor", "--by", dest="actor", required=True, help="reviewer's name")
    sp.add_argument("--note", required=True, help="why (recorded in the audit log)")

    sp = command(
        "forget",
        cmd_forget,
        "erase a data subject's rows from every file of the store (clean, quarantine, "
        "rejected), recorded in the audit log by keyed hash only",
    )
    sp.add_argument("--column", help="the column that identifies the subject")
    sp.add_argument("--value", help="its value (compared as the column's type)")
    sp.add_argument("--values-file", metavar="FILE", help="its values, one a line")
    sp.add_argument(
        "--where",
        metavar="FILTER",
        help="the rows by a filter: C == V, !=, <, <=, >, >=, C in (a, b), joined by 'and'",
    )
    sp.add_argument("--by", required=True, help="who asks (recorded in the audit log)")
    sp.add_argument("--note", default="", help="why (recorded; never the value itself)")
    sp.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be erased (rows per batch and file, no values); change nothing",
    )

    sp = command(
        "rescan",
        cmd_rescan,
        "re-score rows already accepted against the pinned reference; exit 1 when some would "
        "now be held and --hold was not given",
    )
    sp.add_argument("--source", help="one landing source (default every source)")
    sp.add_argument(
        "--since",
        metavar="BATCH",
        help="re-score the batches of its source after this one (default: after the source's "
        "newest batch in the reference)",
    )
    sp.add_argument(
        "--hold", action="store_true", help="move the rows found to quarantine, awaiting review"
    )
    sp.add_argument("--by", default="poisonguard", help="who holds them (recorded in the audit)")

    fsub = _shown_group(
        sub,
        "reference",
        "the pinned reference batches are judged against: list its versions, promote",
        "the pinned reference batches are judged against; without an action, list its versions",
        cmd_reference_show,
        "list the reference's versions (the default)",
    )
    sp = fsub.add_parser(
        "promote",
        help="make a new reference version: the current one and these batches' clean rows",
    )
    sp.add_argument("--config", "-c", default=argparse.SUPPRESS, help="config file")
    sp.set_defaults(func=cmd_reference_promote)
    sp.add_argument("batches", nargs="+", metavar="BATCH_ID", help="committed, reviewed batches")
    sp.add_argument("--actor", "--by", dest="actor", required=True, help="who promotes")
    sp.add_argument("--note", default="", help="why (recorded in the ledger and the audit log)")

    ssub = _shown_group(
        sub,
        "source",
        "the per-source sequential tests: show them, clear an alarm after review",
        "the sequential test of every landing source; without an action, show them",
        cmd_source_show,
        "every source's evidence and alarm (the default)",
    )
    sp = ssub.add_parser(
        "clear", help="restart a source's test (and the pooled one) after review of its batches"
    )
    sp.add_argument("--config", "-c", default=argparse.SUPPRESS, help="config file")
    sp.add_argument(
        "source",
        help="the landing source (its folder name; 'default' for files "
        "directly in the landing folder)",
    )
    sp.add_argument("--actor", "--by", dest="actor", required=True, help="who clears it")
    sp.add_argument("--note", required=True, help="what the review found")
    sp.set_defaults(func=cmd_source_clear)

    audit = sub.add_parser(
        "audit", help="the audit chain", description="the append-only, hash-chained audit log"
    )
    asub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    sp = asub.add_parser(
        "verify", help="check the hash chain; exit 1 naming the first broken entry"
    )
    sp.add_argument("--config", "-c")
    sp.set_defaults(func=cmd_audit_verify)
    sp = asub.add_parser("log", help="print the audit log")
    sp.add_argument("--config", "-c")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--last", type=int, default=0, help="only the last N entries")
    sp.set_defaults(func=cmd_audit_log)

    sp = command(
        "selftest",
        cmd_selftest,
        "plant known attacks in the store's clean set and report what the gate catches",
    )
    sp.add_argument(
        "--rate", type=float, default=0.1, help="share of the batch poisoned (default 0.1)"
    )
    sp.add_argument("--seeds", type=int, default=1, help="repeat with this many seeds (default 1)")
    sp.add_argument("--attacks", help="attack kinds separated by commas (default all)")

    sp = command(
        "redteam",
        cmd_redteam,
        "run adaptive attacks through a throw-away copy of the store and report what got through",
    )
    from poisonguard.redteam import ATTACKS, KNOWLEDGE

    sp.add_argument(
        "--attack",
        nargs="+",
        choices=ATTACKS,
        metavar="NAME",
        help=f"{', '.join(ATTACKS)} (default all)",
    )
    sp.add_argument(
        "--budget",
        nargs="+",
        type=float,
        help="poisoned rows per batch (or a share of the batch, below 1); each attack runs once "
        "per budget (default: 2 rows; 1 for near_copies; 10%% for boundary and cluster)",
    )
    sp.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sp.add_argument("--batches", type=int, default=16, help="batches per attack (default 16)")
    sp.add_argument("--batch-rows", type=int, default=100, help="rows per batch (default 100)")
    sp.add_argument("--sources", type=int, default=8, help="sources of many_sources (default 8)")
    sp.add_argument(
        "--knowledge",
        choices=KNOWLEDGE,
        default="white",
        help="white: the attacker scores flips with the store's reference; gray: with its own "
        "sample (default white)",
    )
    sp.add_argument("--json", help="write the figures to this JSON file")

    sp = command(
        "gate",
        cmd_gate,
        "is the training set safe to use? exit 0 yes, 1 no (reasons printed), 2 usage/config error",
    )
    sp.add_argument(
        "--max-pending", help="fail when rows have waited longer than this for review, e.g. 7d, 36h"
    )
    sp.add_argument(
        "--manifest",
        help="write the training set's files and the decision to this file (an in-toto statement)",
    )
    sp.add_argument(
        "--sign", metavar="KEY", help="sign the manifest with this Ed25519 key (poisonguard keygen)"
    )
    sp.add_argument(
        "--cyclonedx", metavar="PATH", help="also write the training set as a CycloneDX 1.7 BOM"
    )
    sp.add_argument("--by", default="gate", help="who asks (recorded in the audit log)")
    sp.add_argument(
        "--previous",
        help="a manifest an earlier gate wrote: fail if its audit head is no longer in the chain",
    )
    sp.add_argument(
        "--no-canary",
        action="store_true",
        help="skip the canary model comparison for this run (recorded in the manifest and audit)",
    )

    sp = command(
        "export",
        cmd_export,
        "write the verified training set as one Parquet file, after the gate's checks",
    )
    sp.add_argument("--out", required=True)
    sp.add_argument("--max-pending")
    sp.add_argument("--provenance", action="store_true", help="keep pg_batch, pg_row, pg_row_hash")

    sp = command(
        "verify",
        cmd_verify,
        "check a gate manifest before training: its signature, every file's SHA-256, the "
        "verdict; exit 0 good, 1 not",
        config=False,
    )
    sp.add_argument("manifest")
    sp.add_argument("--key", help="the Ed25519 public key it must be signed with")
    sp.add_argument("--store", help="the store's folder (default: the one the manifest names)")

    sp = command(
        "keygen", cmd_keygen, "write a new Ed25519 key pair for signing manifests", config=False
    )
    sp.add_argument("path", help="the private key's file (the public key is PATH.pub)")
    return p


def main(argv: Sequence[str] | None = None) -> int:

    _quiet_great_expectations()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, BatchError, ReviewError) as exc:
        return _fail(exc, 2)
    except PoisonguardError as exc:
        return _fail(exc, 1)
    except BrokenPipeError:
        # `poisonguard status | head`: the reader left; say nothing more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(PoisonguardError(f"{where}{exc.strerror or exc}"), 1)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from poisonguard.store import LEDGER_ERRORS

        if not isinstance(exc, LEDGER_ERRORS):
            raise
        return _fail(PoisonguardError(f"the ledger could not be read or written ({exc})"), 1)


def _quiet_great_expectations() -> None:
    """Great Expectations announces its temporary folders at INFO; people running a gate need not."""
    import logging

    logging.getLogger("great_expectations").setLevel(logging.WARNING)


def _fail(exc: Exception, code: int) -> int:
    if os.environ.get("POISONGUARD_DEBUG"):
        raise exc
    sys.stderr.write(f"poisonguard: error: {exc}\n")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
