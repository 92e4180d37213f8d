"""Scale: poisonguard's real pipeline on large and on many batches, IsolationForest beside it.

Four parts, each through the real store, Great Expectations suite and (where said) Prefect:

``big``
    One batch of each ``--sizes`` rows through ``poisonguard run --local`` (validate, detect,
    decide, commit), in its own process: wall seconds, rows per second and peak RSS (the
    process's own high-water mark, from ``wait4``). Tables: ``numeric`` (32 float columns and
    a 4-class label) and ``mixed`` (26 numeric columns, 4 string columns: two categorical, an
    id and a free-text one, 2 booleans and a date; :func:`frame`). IsolationForest
    (``n_jobs=-1``, 100 trees, fitted on the same 20,000 trusted rows) reads the same Parquet
    file and scores it in its own process, timed the same way, in the same run. The slope of
    log time against log rows between consecutive sizes says how time grows (1 = linear).
``fixed``
    The fixed cost of a small batch (``--fixed-rows``, default 100): the same landed file
    through the Prefect flow (a loopback Prefect server already up, as under ``serve``) and
    through ``--local`` (no Prefect), each warm (second batch of the process), beside the
    steps of the local run: validation (Great Expectations), detection, commit.
``many``
    ``--many`` small batches (default 200 of ``--many-rows`` 500 rows, labels of
    ``--many-classes`` 4 classes) landed and run one after another through ``--local`` in one
    warm process: seconds per batch against batch number (first ten, last ten, and the slope
    of a least-squares line from batch 11 on: the first pays for imports and compilation). Each batch records a label flow per ordered pair of classes in
    its source's history, which every later batch reads.

``dask``
    One numeric batch of each ``--dask-sizes`` rows in chunks of ``--dask-chunk-rows`` through
    ``poisonguard run --local`` judged in its process (``engine = "local"``) and on a
    two-worker local Dask cluster (``engine = "dask"``, each worker limited to
    ``--dask-memory``): wall seconds and peak RSS (from ``wait4``: the largest of the run's
    process and the worker processes it started), and the largest size each completes
    within the per-worker limit (in-process: its peak RSS at or below the limit; Dask: its
    workers are held to it, the nanny kills one that passes it).

Run alone: every figure is a wall time on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import fmt, progress, ratio, table  # noqa: E402

LABEL = "label"
TRUSTED_ROWS = 20_000
#: Rows generated (and written as one Parquet row group) at a time, so a 10M-row batch
#: never sits whole in the parent's memory.
GEN_ROWS = 500_000
TABLES = ("numeric", "mixed")
N_CLASSES = 4


def frame(kind: str, rows: int, seed: int, classes: int = N_CLASSES) -> pd.DataFrame:
    """Rows of one of the two synthetic tables: Gaussian blobs per class (``classes`` of
    them), and for ``mixed`` string and boolean columns whose values depend on the class."""
    rng = np.random.default_rng(seed)
    n_num = 32 if kind == "numeric" else 26
    centre = np.random.default_rng(0).normal(0.0, 1.5, size=(classes, n_num))
    y = rng.integers(0, classes, rows)
    out = pd.DataFrame(centre[y] + rng.standard_normal((rows, n_num)), copy=False)
    out.columns = [f"x{j:02d}" for j in range(n_num)]
    if kind == "mixed":
        plans = np.array(["basic", "plus", "pro", "team", "enterprise"])
        regions = np.array([f"region-{j:02d}" for j in range(20)])
        out["plan"] = plans[(y + rng.integers(0, 2, rows)) % len(plans)]
        out["region"] = regions[rng.integers(0, len(regions), rows)]
        out["customer"] = [f"c{v:09d}" for v in rng.integers(0, 10**9, rows)]
        out["note"] = np.where(rng.random(rows) < 0.5, "renewal", "new contract signed")
        out["active"] = rng.random(rows) < 0.3 + 0.1 * y
        out["paperless"] = rng.random(rows) < 0.5
        days = rng.integers(0, 3 * 365, rows) + 30 * y
        out["signed"] = pd.Timestamp("2023-01-01") + pd.to_timedelta(days, unit="D")
    out[LABEL] = y
    return out


def write_parquet(path: Path, kind: str, rows: int, seed: int, classes: int = N_CLASSES) -> None:
    writer = None
    try:
        for start in range(0, rows, GEN_ROWS):
            part = frame(kind, min(GEN_ROWS, rows - start), seed + start, classes)
            batch = pa.Table.from_pandas(part, preserve_index=False)
            writer = writer or pq.ParquetWriter(path, batch.schema)
            writer.write_table(batch)
    finally:
        if writer is not None:
            writer.close()


def measured(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd``; its wall seconds and its own peak RSS (MB), from wait4."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({proc.returncode}): {err[-2000:]}")
    return {"seconds": seconds, "peak_mb": usage.ru_maxrss / 1024, "stdout": out, "stderr": err}


def poisonguard(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "poisonguard"), *args]


def new_store(root: Path, kind: str, classes: int = N_CLASSES) -> Path:
    """A store under ``root`` seeded with 20,000 trusted rows by ``poisonguard init``."""
    root.mkdir(parents=True, exist_ok=True)
    sample = root / "trusted.parquet"
    write_parquet(sample, kind, TRUSTED_ROWS, seed=1, classes=classes)
    init = ["init", "--sample", str(sample), "--label", LABEL, "--dir", str(root)]
    subprocess.run(poisonguard(*init), check=True, capture_output=True)
    return root / "poisonguard.toml"


def landing_of(config: Path) -> Path:
    from poisonguard.config import load_config

    return Path(load_config(config).landing)


IFOREST = """
import sys, numpy as np, pyarrow.parquet as pq
from joblib import parallel_backend
from sklearn.ensemble import IsolationForest
def numeric(path):
    t = pq.read_table(path)
    return np.column_stack([t[c].to_numpy().astype(np.float64) for c in t.column_names
                            if c != "label" and t.schema.field(c).type in NUMERIC])
import pyarrow as pa
NUMERIC = {pa.float64(), pa.float32(), pa.int64(), pa.bool_()}  # strings and dates left out
with parallel_backend("threading", n_jobs=-1):
    model = IsolationForest(random_state=0, n_jobs=-1).fit(numeric(sys.argv[1]))
    flagged = (model.score_samples(numeric(sys.argv[2])) - model.offset_ < 0).mean()
print(flagged)
"""


def big(
    sizes: list[int],
    kinds: list[str],
    work: Path,
    execution: dict[str, int] | None = None,
    forest: bool = True,
) -> list[dict[str, Any]]:
    records = []
    for kind in kinds:
        for rows in sizes:
            root = work / f"{kind}-{rows}"
            config = new_store(root, kind)
            if execution:  # the chunked path's sizes ([execution], docs/decision.md 4b)
                with open(config, "a") as f:
                    f.write(
                        "\n[execution]\n" + "".join(f"{k} = {v}\n" for k, v in execution.items())
                    )
            batch = root / "batch.parquet"
            write_parquet(batch, kind, rows, seed=100)
            progress(f"{kind} {rows:,} rows: poisonguard run --local")
            landed = landing_of(config) / "batch-0001.parquet"
            shutil.copy(batch, landed)
            _arrived_earlier(landed)
            pg = measured(poisonguard("run", "--local", "--config", str(config)))
            progress(f"{kind} {rows:,} rows: poisonguard gate")
            gated = measured(poisonguard("gate", "--config", str(config)))
            progress(f"{kind} {rows:,} rows: IsolationForest")
            trees = (
                measured([sys.executable, "-c", IFOREST, str(root / "trusted.parquet"), str(batch)])
                if forest
                else {"seconds": float("nan"), "peak_mb": float("nan")}
            )
            records.append(
                {
                    "part": "big",
                    "table": kind,
                    "rows": rows,
                    "poisonguard_s": pg["seconds"],
                    "poisonguard_peak_mb": pg["peak_mb"],
                    "iforest_s": trees["seconds"],
                    "iforest_peak_mb": trees["peak_mb"],
                    "gate_s": gated["seconds"],
                    "gate_peak_mb": gated["peak_mb"],
                    "gate_says": (gated["stdout"] + gated["stderr"]).strip()[:300],
                    "execution": dict(execution or {}),
                }
            )
            shutil.rmtree(root)
    return records


def dask_part(sizes: list[int], work: Path, memory: str, chunk_rows: int) -> list[dict[str, Any]]:
    """The same batch judged in-process and on a two-worker local cluster, per size."""
    from dask.utils import parse_bytes

    limit_mb = parse_bytes(memory) / 2**20
    records = []
    for rows in sizes:
        for engine in ("local", "dask"):
            root = work / f"dask-{engine}-{rows}"
            config = new_store(root, "numeric")
            with open(config, "a") as f:
                f.write(
                    f'\n[execution]\nchunk_rows = {chunk_rows}\nengine = "{engine}"\n'
                    f'workers = 2\nthreads_per_worker = 1\nmemory_limit = "{memory}"\n'
                )
            _land(config, "numeric", rows, 100, "batch-0001.parquet")
            progress(f"dask part: {rows:,} rows, engine {engine}")
            try:
                done = measured(poisonguard("run", "--local", "--config", str(config)))
                ok = "committed" in done["stdout"]
            except RuntimeError as exc:
                done, ok = {"seconds": float("nan"), "peak_mb": float("nan")}, False
                progress(f"  failed: {str(exc)[-300:]}")
            within = ok and (engine == "dask" or done["peak_mb"] <= limit_mb)
            records.append(
                {
                    "part": "dask",
                    "engine": engine,
                    "rows": rows,
                    "seconds": done["seconds"],
                    "peak_mb": done["peak_mb"],
                    "completed": ok,
                    "within_limit": within,
                    "memory_limit": memory,
                }
            )
            shutil.rmtree(root)
    return records


def dask_report(records: list[dict[str, Any]]) -> str:
    if not records:
        return ""
    rows = [
        [
            r["engine"],
            f"{r['rows']:,}",
            fmt(r["seconds"], 1),
            f"{r['peak_mb']:,.0f}",
            "yes" if r["completed"] else "no",
            "yes" if r["within_limit"] else "no",
        ]
        for r in records
    ]
    out = [
        table(
            f"One batch in chunks, judged in-process and on a two-worker local Dask cluster "
            f"(per-worker memory limit {records[0]['memory_limit']})",
            ["engine", "rows", "seconds", "peak MB", "completed", "within limit"],
            rows,
        )
    ]
    for engine in ("local", "dask"):
        fits = [r["rows"] for r in records if r["engine"] == engine and r["within_limit"]]
        largest = f"{max(fits):,} rows" if fits else "none of the sizes tried"
        out.append(f"{engine}: largest batch completed within the limit: {largest}")
    return "\n\n".join(out)


CHILD_FIXED = "fixed"
CHILD_MANY = "many"
#: The many part's slope leaves out the first batches: the first pays seconds for imports and
#: compilation, which a line through every batch reads as time falling with history.
WARM = 10


def _land(
    config: Path, kind: str, rows: int, seed: int, name: str, classes: int = N_CLASSES
) -> None:
    """Write a batch into the landing folder as if it had arrived a minute ago: the
    landing's settle wait (files still changing are left for the next run) is not a cost."""
    path = landing_of(config) / name
    write_parquet(path, kind, rows, seed, classes)
    _arrived_earlier(path)


def _arrived_earlier(path: Path) -> None:
    """Date a landed file a minute back: the landing's settle wait is not a cost measured."""
    past = time.time() - 60
    os.utime(path, (past, past))


def child_fixed(config: Path, rows: int) -> dict[str, Any]:
    """Warm timings of one small batch: the Prefect flow, the local run, and its steps."""
    from poisonguard import pipeline
    from poisonguard.config import load_config
    from poisonguard.store import open_store

    cfg = load_config(config)
    import poisonguard_flows

    poisonguard_flows.configure(cfg.store)
    from poisonguard_flows.server import local_server

    out: dict[str, Any] = {}
    with local_server(Path(os.environ["PREFECT_HOME"]), services=False):
        from poisonguard_flows.ingest import ingest

        for i in range(3):  # the first run of each path pays for imports and compilation
            _land(config, "numeric", rows, 500 + i, f"flow-{i:02d}.parquet")
            start = time.perf_counter()
            ingest(str(config))
            out.setdefault("prefect_s", []).append(time.perf_counter() - start)
    for i in range(3):
        _land(config, "numeric", rows, 600 + i, f"local-{i:02d}.parquet")
        steps: dict[str, float] = {}
        start = time.perf_counter()
        store = open_store(cfg)
        entries, _ = pipeline.find_new_batches(cfg, store)
        for entry in entries:
            t = time.perf_counter()
            intake = pipeline.validate_batch(entry, cfg, store)
            steps["validate_s"] = time.perf_counter() - t
            t = time.perf_counter()
            pipeline.detect_batch(intake.staged, cfg, store)
            steps["detect_s"] = time.perf_counter() - t
            t = time.perf_counter()
            pipeline.commit_batch(intake.staged, cfg, store)
            steps["commit_s"] = time.perf_counter() - t
        steps["local_s"] = time.perf_counter() - start
        for key, value in steps.items():
            out.setdefault(key, []).append(value)
    # Warm figures: the fastest of the runs after the first.
    return {key: min(values[1:]) for key, values in out.items()}


def child_many(config: Path, count: int, rows: int, classes: int = N_CLASSES) -> dict[str, Any]:
    from poisonguard.config import load_config
    from poisonguard.pipeline import process_landing

    cfg = load_config(config)
    seconds = []
    for i in range(count):
        _land(config, "numeric", rows, 1000 + i, f"many-{i:04d}.parquet", classes)
        start = time.perf_counter()
        run = process_landing(cfg)
        seconds.append(time.perf_counter() - start)
        if i % 20 == 0:
            progress(f"many: batch {i + 1} of {count}: {seconds[-1]:.2f}s")
        if not run.records:
            raise RuntimeError(f"batch {i} was not processed")
    return {"seconds": seconds, "classes": classes}


def in_child(part: str, config: Path, *args: int) -> dict[str, Any]:
    code = (
        f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r}); import scale; "
        f"print(json.dumps(scale.child_{part}(__import__('pathlib').Path({str(config)!r}), "
        f"{', '.join(map(str, args))})))"
    )
    done = measured([sys.executable, "-c", code])
    return json.loads(done["stdout"].strip().splitlines()[-1])


def slope(x: list[float], y: list[float]) -> float:
    return float(np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)[0])


def report(records: list[dict[str, Any]], fixed: dict | None, many: dict | None) -> str:
    parts = []
    rows = []
    for r in records:
        rows.append(
            [
                r["table"],
                f"{r['rows']:,}",
                fmt(r["poisonguard_s"], 1),
                f"{r['rows'] / r['poisonguard_s']:,.0f}",
                f"{r['poisonguard_peak_mb']:,.0f}",
                fmt(r["iforest_s"], 1),
                f"{r['rows'] / r['iforest_s']:,.0f}",
                f"{r['iforest_peak_mb']:,.0f}",
                fmt(ratio(r["iforest_s"], r["poisonguard_s"]), 2),
                fmt(r.get("gate_s", float("nan")), 1),
                f"{r.get('gate_peak_mb', float('nan')):,.0f}",
            ]
        )
    if rows:
        parts.append(
            table(
                "One batch through `poisonguard run --local` (validate, detect, decide, commit) "
                "and IsolationForest (n_jobs=-1) on the same file",
                [
                    "table",
                    "rows",
                    "pg s",
                    "pg rows/s",
                    "pg peak MB",
                    "IF s",
                    "IF rows/s",
                    "IF peak MB",
                    "IF/pg speed",
                    "gate s",
                    "gate peak MB",
                ],
                rows,
            )
        )
        for kind in sorted({r["table"] for r in records}):
            mine = sorted((r for r in records if r["table"] == kind), key=lambda r: r["rows"])
            for a, b in itertools.pairwise(mine):
                grow = np.log(b["poisonguard_s"] / a["poisonguard_s"]) / np.log(
                    b["rows"] / a["rows"]
                )
                parts.append(
                    f"{kind}: time slope {a['rows']:,} -> {b['rows']:,} rows: {grow:.2f} "
                    f"(1 = linear); peak RSS per row at {b['rows']:,}: "
                    f"{b['poisonguard_peak_mb'] * 2**20 / b['rows']:,.0f} bytes"
                )
    if fixed:
        parts.append(
            table(
                "A small batch, warm (the fastest of two runs after a first)",
                ["path", "seconds"],
                [[k.removesuffix("_s"), fmt(v, 3)] for k, v in fixed.items()],
            )
        )
        parts.append(
            f"Prefect's cost over the local run: {fixed['prefect_s'] - fixed['local_s']:.2f} s; "
            f"validation (Great Expectations) in the local run: {fixed['validate_s']:.2f} s"
        )
    if many:
        s = many["seconds"]
        n = len(s)
        parts.append(
            f"{n} small batches ({many.get('classes', N_CLASSES)} classes) in a row through "
            f"`--local`: first ten median "
            f"{statistics.median(s[:10]):.3f} s, last ten median {statistics.median(s[-10:]):.3f} s "
            f"(ratio {statistics.median(s[-10:]) / statistics.median(s[:10]):.2f}); least-squares "
            f"slope from batch {WARM + 1} on {slope(list(range(WARM, n)), s[WARM:]) * 1000:.2f} ms "
            "per batch of history"
        )
    return "\n\n".join(parts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["big", "fixed", "many", "dask"],
        choices=["big", "fixed", "many", "dask"],
    )
    parser.add_argument("--sizes", nargs="+", type=int, default=[100_000, 1_000_000])
    parser.add_argument("--tables", nargs="+", default=list(TABLES), choices=TABLES)
    parser.add_argument("--fixed-rows", type=int, default=100)
    parser.add_argument("--many", type=int, default=200)
    parser.add_argument("--many-rows", type=int, default=500)
    parser.add_argument(
        "--many-classes",
        type=int,
        default=N_CLASSES,
        help="many part: classes of its table (each batch records a label flow per pair)",
    )
    parser.add_argument("--quick", action="store_true", help="20k rows, 20 small batches")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--chunk-rows", type=int, help="[execution] chunk_rows of the big part's stores"
    )
    parser.add_argument(
        "--chunk-bytes", type=int, help="[execution] chunk_bytes of the big part's stores"
    )
    parser.add_argument("--no-iforest", action="store_true", help="big part: poisonguard only")
    parser.add_argument(
        "--dask-sizes", nargs="+", type=int, default=[250_000, 1_000_000, 4_000_000]
    )
    parser.add_argument("--dask-memory", default="1GiB", help="dask part: per-worker limit")
    parser.add_argument("--dask-chunk-rows", type=int, default=100_000)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.many, args.tables = [20_000], 20, ["numeric"]
        args.dask_sizes, args.dask_chunk_rows = [20_000, 80_000], 10_000
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pg-scale-") as tmp:
        work = Path(tmp)
        execution = {
            k: v
            for k, v in (("chunk_rows", args.chunk_rows), ("chunk_bytes", args.chunk_bytes))
            if v is not None
        }
        records = (
            big(args.sizes, args.tables, work, execution, forest=not args.no_iforest)
            if "big" in args.parts
            else []
        )
        fixed = many = None
        scaled = (
            dask_part(args.dask_sizes, work, args.dask_memory, args.dask_chunk_rows)
            if "dask" in args.parts
            else []
        )
        if "fixed" in args.parts:
            progress("fixed cost of a small batch")
            fixed = in_child(CHILD_FIXED, new_store(work / "fixed", "numeric"), args.fixed_rows)
        if "many" in args.parts:
            many = in_child(
                CHILD_MANY,
                new_store(work / "many", "numeric", args.many_classes),
                args.many,
                args.many_rows,
                args.many_classes,
            )
    print("\n\n".join(p for p in (report(records, fixed, many), dask_report(scaled)) if p))
    if args.json:
        args.json.write_text(
            json.dumps({"big": records, "fixed": fixed, "many": many, "dask": scaled}, indent=1)
        )


if __name__ == "__main__":
    main()
