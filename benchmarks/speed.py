"""Throughput and peak memory: the full poisonguard suite against the anchors, at scale.

Synthetic data: ``--rows`` batch rows and ``--ref-rows`` trusted rows with
``--features`` numeric features (default 200,000 x 32 and 20,000), four classes
drawn as correlated Gaussian blobs, 5% of the batch labels flipped at random
(:func:`poisonguard.attacks.plant`, ``random_flip``). Every method runs in its own
fresh subprocess, so the memory figures do not bleed into each other:

1. load the data (generated once by the parent, saved as ``.npy``);
2. warm up on the first 1,000 batch rows (imports, numba compilation; not timed);
3. reset the peak-memory mark, then time one full run on the batch.

Each subprocess gets ``--threads`` (default 2, the cores of the machine the issue
names) through ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``
and ``NUMBA_NUM_THREADS``; each library then uses what it uses by default
(poisonguard's numba kernels use every thread; IsolationForest fits and scores on
one core unless asked, so ``iforest_parallel`` asks). ``--threads 1`` pins every
method to one core; ``--repeat 3`` reports the fastest of three runs.

``rows/s`` is batch rows divided by the wall time of step 3 (fit on the
reference plus scoring the batch). ``peak MB`` is the subprocess's peak resident
memory during step 3 (``VmHWM`` of ``/proc/self/status``, reset just before the
step; interpreter, libraries and the loaded data included); ``extra MB`` is that
peak minus the resident memory just before step 3, i.e. what the method itself
needed on top of its inputs. Linux only.

Methods: poisonguard (``scan(batch, label=..., reference=...)``, default
config: every detector), IsolationForest (fit on the reference, score the
batch; ``iforest_parallel`` the same on every thread), ECOD (same), cleanlab's
pipeline (5-fold out-of-fold LR pred_probs on reference + batch, then
``find_label_issues``). Exactly the functions the detection benchmark runs
(``common.METHODS``), plus ``iforest_parallel``.

Usage::

    python benchmarks/speed.py                     # 200k x 32, 20k reference
    python benchmarks/speed.py --rows 20000 --ref-rows 2000
    python benchmarks/speed.py --quick             # 20k x 32, 2k reference
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common import (
    LABEL,
    Case,
    Verdict,
    fmt,
    poisonguard_scan,
    quiet,
    ratio,
    run_method,
    table,
    timed,
)
from poisonguard.attacks import plant

PG = "poisonguard"
#: IsolationForest twice: as users (and the detection benchmark) run it, fitting and
#: scoring on one core, and with both of its parallel switches on (``n_jobs`` for the
#: fit; scoring in joblib threads, as scikit-learn's docs show), its fastest here.
IFOREST_PARALLEL = "iforest_parallel"
METHODS = (PG, "iforest", IFOREST_PARALLEL, "ecod", "cleanlab")
WARMUP_ROWS = 1000
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
N_CLASSES = 4
FLIP_RATE = 0.05


def feature_names(n_features: int) -> list[str]:
    return [f"f{j:02d}" for j in range(n_features)]


def synthetic(
    rows: int, ref_rows: int, n_features: int, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Reference and batch frames: correlated Gaussian blobs, four classes, 5% flipped labels."""
    # Imported here, in the parent only: a method's subprocess pays for poisonguard's imports
    # only if the method is poisonguard.

    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 1.5, size=(N_CLASSES, n_features))
    mixing = np.eye(n_features) + rng.normal(0.0, 0.3, size=(n_features, n_features))
    features = feature_names(n_features)

    def draw(n: int) -> pd.DataFrame:
        y = rng.integers(0, N_CLASSES, n)
        X = means[y] + rng.standard_normal((n, n_features)) @ mixing
        frame = pd.DataFrame(X, columns=features)
        frame[LABEL] = y
        return frame

    reference, batch = draw(ref_rows), draw(rows)
    batch = plant(
        batch, label=LABEL, kind="random_flip", rate=FLIP_RATE, features=features, random_state=1
    ).frame
    return reference, batch, features


def _memory_mb() -> tuple[float, float]:
    """(current RSS, high-water RSS) of this process in MB, from /proc/self/status.

    ``ru_maxrss`` will not do: Linux carries the forking parent's peak over an exec, so every
    subprocess would start at the parent's high-water mark.
    """
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def _reset_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def save(
    directory: Path, reference: pd.DataFrame, batch: pd.DataFrame, features: list[str]
) -> None:
    """Write the frames as plain arrays, so a subprocess can load them without temporaries."""
    for name, frame in (("reference", reference), ("batch", batch)):
        np.save(directory / f"{name}_X.npy", frame[features].to_numpy(np.float64))
        np.save(directory / f"{name}_y.npy", frame[LABEL].to_numpy(np.int64))


def load(directory: Path, name: str, features: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(np.load(directory / f"{name}_X.npy"), columns=features, copy=False)
    frame[LABEL] = np.load(directory / f"{name}_y.npy")
    return frame


@timed
def iforest_parallel(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """IsolationForest with n_jobs=-1, scored inside a joblib threading backend."""
    from joblib import parallel_backend
    from sklearn.ensemble import IsolationForest

    with parallel_backend("threading", n_jobs=-1):
        model = IsolationForest(random_state=case.seed, n_jobs=-1).fit(
            case.reference[case.features].to_numpy(np.float64)
        )
        normality = model.score_samples(case.batch[case.features].to_numpy(np.float64))
    return normality - model.offset_ < 0, -normality


def _run(method: str, case: Case) -> Verdict:
    return iforest_parallel(case) if method == IFOREST_PARALLEL else run_method(method, case)


def child(method: str, directory: Path) -> dict[str, Any]:
    """Run one method once, timed, in this process; returns its figures."""
    n_features = int(np.load(directory / "reference_X.npy", mmap_mode="r").shape[1])
    features = feature_names(n_features)
    reference, batch = load(directory, "reference", features), load(directory, "batch", features)
    rows, ref_rows = len(batch), len(reference)
    warm = batch.iloc[: min(WARMUP_ROWS, len(batch))].reset_index(drop=True)
    _run(method, Case(reference, warm, features, LABEL, seed=0))
    _reset_peak()
    before, _ = _memory_mb()
    start = time.perf_counter()
    verdict = _run(method, Case(reference, batch, features, LABEL, seed=0))
    seconds = time.perf_counter() - start
    _, after = _memory_mb()
    return {
        "method": method,
        "rows": rows,
        "ref_rows": ref_rows,
        "features": n_features,
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "peak_mb": after,
        "extra_mb": after - before,
        "flagged_share": float(verdict.flagged.mean()),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="batch rows (default 200000)")
    parser.add_argument("--ref-rows", type=int, default=20_000, help="reference rows (20000)")
    parser.add_argument("--features", type=int, default=32, help="numeric features (32)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="BLAS/OpenMP/numba threads per method (default 2; 0 = the environment's)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per method; the fastest is reported"
    )
    parser.add_argument("--quick", action="store_true", help="20000 rows, 2000 reference rows")
    parser.add_argument("--json", type=Path, help="write the raw figures to this JSON file")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.ref_rows = 20_000, 2_000
    return args


def measure(method: str, directory: Path, env: dict[str, str], repeat: int) -> dict[str, Any]:
    """Fastest of ``repeat`` subprocess runs of one method (largest peak); {} if poisonguard
    fails, with a notice."""
    command = [sys.executable, __file__, "--child", method, "--data", str(directory)]
    runs = []
    for _ in range(max(1, repeat)):
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
        if done.returncode != 0:
            if method != PG:
                sys.stderr.write(done.stderr)
                raise SystemExit(f"{method} failed")
            tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
            print(f"NOTICE: poisonguard failed in its subprocess ({tail[0]}); skipped.")
            return {}
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["seconds"])
    best["peak_mb"] = max(r["peak_mb"] for r in runs)
    best["extra_mb"] = max(r["extra_mb"] for r in runs)
    best["runs"] = len(runs)
    print(f"{method}: {best['seconds']:.1f}s", file=sys.stderr, flush=True)
    return best


def main(argv: list[str] | None = None) -> int:
    # Thread counts reach the children through the environment (see --threads).
    quiet(threads=None)
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.data)))
        return 0
    methods = list(args.methods)
    if PG in methods and poisonguard_scan() is None:
        print("NOTICE: poisonguard.scan is not importable yet; poisonguard is skipped.")
        methods.remove(PG)
    env = dict(os.environ)
    if args.threads > 0:
        for var in THREAD_VARS:
            env[var] = str(args.threads)
    with tempfile.TemporaryDirectory(prefix="pg-speed-") as workdir:
        directory = Path(workdir)
        save(directory, *synthetic(args.rows, args.ref_rows, args.features))
        results = [r for method in methods if (r := measure(method, directory, env, args.repeat))]
    threads = f"{args.threads} thread(s)" if args.threads > 0 else "library-default threads"
    print(
        f"Speed benchmark: batch {args.rows} x {args.features}, reference {args.ref_rows} rows, "
        f"{N_CLASSES} classes, {FLIP_RATE:.0%} labels flipped; one subprocess per method, "
        f"warm-up on {WARMUP_ROWS} rows not timed; {threads}; fastest of {max(1, args.repeat)} "
        f"run(s), largest peak\n"
    )
    by_name = {r["method"]: r for r in results}
    pg = by_name.get(PG)
    header = ["method", "seconds", "rows/s", "peak MB", "extra MB", "flagged"]
    if pg:
        header += ["pg speed ratio", "pg peak-MB ratio"]
    rows = []
    for r in results:
        cells = [
            r["method"],
            fmt(r["seconds"], 2),
            f"{r['rows_per_s']:,.0f}",
            fmt(r["peak_mb"], 0),
            fmt(r["extra_mb"], 0),
            fmt(r["flagged_share"], 3),
        ]
        if pg:
            cells += [
                fmt(ratio(pg["rows_per_s"], r["rows_per_s"]), 2),
                fmt(ratio(pg["peak_mb"], r["peak_mb"]), 2),
            ]
        rows.append(cells)
    print(table("Throughput (fit on reference + score batch) and memory", header, rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        config = vars(args) | {"json": str(args.json)}
        args.json.write_text(
            json.dumps({"config": config, "results": results}, separators=(",", ":"))
        )
        print(f"raw figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
