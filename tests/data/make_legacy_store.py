"""Make ``legacy-store/``: a store written by poisonguard before its hashes were keyed.

Run once with the code of main at 7e8d146 (ledger schema 3, unkeyed row hashes):

    PYTHONPATH=<main>/src python tests/data/make_legacy_store.py tests/data/legacy-store

It seeds 20 rows, commits a batch with 4 held rows, rejects two of them, and
commits and revokes a second batch, so that its blocklist holds rows a reviewer
rejected and rows a revocation blocked, each under pandas' unkeyed hash.
``tests/test_keyed.py`` copies it and opens it with the current code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from poisonguard.store import Outcome, Store, add_provenance


def rows(start: int, n: int) -> pd.DataFrame:
    i = np.arange(start, start + n)
    return pd.DataFrame(
        {"row_id": i, "x": i * 0.5, "kind": [f"k{v % 3}" for v in i], "label": i % 2}
    )


def main(folder: Path) -> None:
    root = folder / "store"
    store = Store(root, key_path=folder / "store.key", create=True)
    seed = rows(0, 20)
    add_provenance(seed, "seed-1")
    store.commit(Outcome("seed-1", "1" * 64, "seed.csv", "seed", 20, clean=seed))
    batch = rows(100, 10)
    add_provenance(batch, "b1")
    held = batch.iloc[6:].assign(pg_stage="detectors", pg_reason="odd").reset_index(drop=True)
    clean = batch.iloc[:6].reset_index(drop=True)
    store.commit(Outcome("b1", "2" * 64, "b1.csv", "committed", 10, clean=clean, quarantine=held))
    store.commit_review("b1", "reject", held.iloc[[0, 2]], actor="ann", note="poison")
    other = rows(200, 5)
    add_provenance(other, "b2")
    store.commit(Outcome("b2", "3" * 64, "b2.csv", "committed", 5, clean=other))
    store.revoke("b2", actor="ann", note="bad source")
    assert store.verify_audit() is None and len(store.blocklist()) == 7


if __name__ == "__main__":
    main(Path(sys.argv[1]))
