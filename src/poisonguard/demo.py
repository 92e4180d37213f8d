"""The demos: a trusted seed and five landing batches with known poison, from a real table.

Two datasets ship offline: scikit-learn's ``digits`` (64 numeric pixel columns)
and ``penguins`` (palmerpenguins: species, island and sex as strings, body
measurements, missing cells), so a new user sees a real table with string
columns go through.

``build_demo`` writes the inputs and the ground truth; the flow (or
``process_landing``) takes the batches through the gate; ``evaluate_demo``
compares what the store holds with what was planted. Nothing in the printed
figures is written in: they are counted from the store and the truth file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from poisonguard.attacks import plant
from poisonguard.store import Store, read_parquet, write_table

ID = "row_id"
TRUTH = "truth.parquet"
SEED_FILE = "trusted.parquet"
#: Marks a folder `poisonguard demo` made, so it only ever replaces its own.
DEMO_MARKER = ".poisonguard-demo"


def digits_frame() -> pd.DataFrame:
    """scikit-learn's digits (ships offline) as a frame: 64 pixel columns, a label, an id."""
    from sklearn.datasets import load_digits

    data = load_digits()
    frame = pd.DataFrame(data.data, columns=[f"px{i:02d}" for i in range(data.data.shape[1])])
    frame["digit"] = data.target.astype(np.int64)
    frame.insert(0, ID, np.arange(len(frame), dtype=np.int64))
    return frame


def penguins_frame() -> pd.DataFrame:
    """palmerpenguins (ships offline): strings, measurements, missing cells, an id."""
    from palmerpenguins import load_penguins

    frame = load_penguins().reset_index(drop=True)
    for column in ("species", "island", "sex"):
        frame[column] = frame[column].astype("string")
    frame.insert(0, ID, np.arange(len(frame), dtype=np.int64))
    return frame


@dataclass(frozen=True)
class DemoBatch:
    """One landing batch of a demo: its file, the source folder it lands in, what it holds.

    Each batch comes from a source of its own, as batches from a labelling vendor, a
    sensor feed and a partner's export would: a source in alarm holds its own batches,
    not the others'."""

    file: str
    what: str
    source: str

    @property
    def path(self) -> str:
        """Where it lands, relative to the landing folder (``<source>/<file>``)."""
        return f"{self.source}/{self.file}"


@dataclass(frozen=True)
class DemoDataset:
    """One demo: its table, label, and what each landing batch holds."""

    name: str
    label: str
    load: Callable[[], pd.DataFrame]
    batches: tuple[DemoBatch, ...]
    attacks: tuple[str, str]  # planted in the first two batches
    # Breaks the k-th broken row (a one-row frame): cycling through three ways.
    broken: Callable[[pd.DataFrame, np.random.Generator, int], pd.DataFrame]
    dropped: str  # the column the wrong-schema batch lacks


def _broken_pixels(row: pd.DataFrame, rng: np.random.Generator, k: int) -> pd.DataFrame:
    col = f"px{int(rng.integers(64)):02d}"
    kind = k % 3
    if kind == 0:
        row[col] = np.nan  # a missing value
    elif kind == 1:
        row[col] = 255.0  # an 8-bit value in a 0-16 column
    else:
        row["digit"] = 11  # a label that does not exist
    return row


def _broken_penguin(row: pd.DataFrame, rng: np.random.Generator, k: int) -> pd.DataFrame:
    kind = k % 3
    if kind == 0:
        row["island"] = "Atlantis"  # a category no trusted penguin shows
    elif kind == 1:
        row["body_mass_g"] = 42_000.0  # a 42 kg penguin
    else:
        row["species"] = "Emperor"  # a label that does not exist
    return row


#: The demos' landing sources (``landing/<source>/``).
LABELLING, SENSORS, EXPORT, PARTNER = "labelling", "sensors", "export", "partner"

DATASETS: dict[str, DemoDataset] = {
    "digits": DemoDataset(
        "digits",
        "digit",
        digits_frame,
        (
            DemoBatch("batch-01-label-flips.parquet", "10% of labels flipped at random", LABELLING),
            DemoBatch("batch-02-outliers.parquet", "10% injected far outliers", SENSORS),
            DemoBatch("batch-03-broken-rows.csv", "5% rows breaking expectations (CSV)", EXPORT),
            DemoBatch("batch-04-clean.parquet", "no poison", PARTNER),
            DemoBatch("batch-05-wrong-schema.csv", "a column missing: rejected whole", EXPORT),
        ),
        ("random_flip", "far_outlier"),
        _broken_pixels,
        "px10",
    ),
    "penguins": DemoDataset(
        "penguins",
        "species",
        penguins_frame,
        (
            DemoBatch(
                "batch-01-label-flips.parquet", "10% of species flipped at random", LABELLING
            ),
            DemoBatch(
                "batch-02-category-swap.parquet",
                "10% rows with island and sex swapped to combinations their species never shows",
                SENSORS,
            ),
            DemoBatch(
                "batch-03-broken-rows.csv",
                "5% rows breaking expectations: an unknown island, a 42 kg penguin, an unknown species",
                EXPORT,
            ),
            DemoBatch("batch-04-clean.parquet", "no poison", PARTNER),
            DemoBatch("batch-05-wrong-schema.csv", "a column missing: rejected whole", EXPORT),
        ),
        ("random_flip", "category_swap"),
        _broken_penguin,
        "bill_depth_mm",
    ),
}
#: The digits demo's label, for callers that predate the penguins demo.
LABEL = DATASETS["digits"].label
BATCHES = DATASETS["digits"].batches


def build_demo(root: Path, *, dataset: str = "digits", random_state: int = 7) -> tuple[Path, Path]:
    """Write the trusted seed, the landing batches and the truth under ``root``.

    Returns
    -------
    (Path, Path)
        The trusted sample and the landing folder.
    """
    spec = DATASETS[dataset]
    rng = np.random.default_rng(random_state)
    frame = spec.load()
    frame = frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)
    n_seed = int(0.4 * len(frame))
    seed, rest = frame.iloc[:n_seed], frame.iloc[n_seed:].reset_index(drop=True)
    parts = np.array_split(np.arange(len(rest)), 4)
    landing = root / "landing"
    landing.mkdir(parents=True, exist_ok=True)
    write_table(root / SEED_FILE, seed)
    batches = spec.batches

    truth: list[pd.DataFrame] = []

    def record(name: str, batch: pd.DataFrame, poison: np.ndarray, kind: str) -> None:
        truth.append(
            pd.DataFrame(
                {"file": name, "pg_row": np.arange(len(batch)), "poison": poison, "kind": kind}
            )
        )

    for part, kind in enumerate(spec.attacks):
        name = batches[part].file
        attack = plant(
            rest.iloc[parts[part]],
            label=spec.label,
            kind=kind,
            rate=0.1,
            reference=seed,
            random_state=random_state,
        )
        write_table(_landed(landing, batches[part]), attack.frame)
        record(name, attack.frame, attack.is_poison, kind)

    broken = rest.iloc[parts[2]].reset_index(drop=True).copy()
    bad = np.zeros(len(broken), dtype=bool)
    bad[rng.choice(len(broken), max(1, round(0.05 * len(broken))), replace=False)] = True
    broken = broken.astype({c: object for c in broken.columns if broken[c].dtype == "string"})
    for k, row in enumerate(np.nonzero(bad)[0]):
        broken.loc[[row]] = spec.broken(broken.loc[[row]].copy(), rng, k)
    _landed(landing, batches[2]).write_text(broken.to_csv(index=False))
    record(batches[2].file, broken, bad, "broken_row")

    clean = rest.iloc[parts[3]].reset_index(drop=True)
    write_table(_landed(landing, batches[3]), clean)
    record(batches[3].file, clean, np.zeros(len(clean), dtype=bool), "none")

    wrong = clean.head(40).drop(columns=[spec.dropped])
    _landed(landing, batches[4]).write_text(wrong.to_csv(index=False))
    record(batches[4].file, wrong, np.ones(len(wrong), dtype=bool), "wrong_schema")

    write_table(root / TRUTH, pd.concat(truth, ignore_index=True))
    return root / SEED_FILE, landing


def _landed(landing: Path, batch: DemoBatch) -> Path:
    """Where ``batch`` lands, its source folder made."""
    path = landing / batch.path
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class DemoScore:
    """What the gate did with each demo batch, against the planted truth."""

    table: pd.DataFrame
    recall: float
    precision: float
    clean_quarantined: float
    rows_accounted: bool
    held_whole: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        """The figures in one line, as ``poisonguard demo`` prints them."""
        line = (
            f"recall {self.recall:.1%}, precision {self.precision:.1%}, "
            f"clean rows quarantined {self.clean_quarantined:.1%}"
        )
        if self.held_whole:
            line += f"; held whole for review, not counted above: {', '.join(self.held_whole)}"
        return line


def evaluate_demo(root: Path, store: Store) -> DemoScore:
    """Count, from the store and the truth file, what the gate caught.

    Recall, precision and the clean rows quarantined count the row-level decisions;
    a batch held whole for review (its source in alarm, or its drift past the
    configured levels) is named in ``held_whole`` instead, and only its rows that a
    row-level stage held count.
    """
    truth = read_parquet(root / TRUTH)
    rows = []
    whole: list[str] = []
    held_poison = held = planted = clean_total = clean_held = 0
    accounted = True
    for rec in store.batches():
        if rec.status == "seed":
            continue
        name = Path(rec.source).name
        t = truth[truth["file"] == name].sort_values("pg_row")
        poison = t["poison"].to_numpy(dtype=bool)
        flagged = np.zeros(len(t), dtype=bool)
        if rec.status == "rejected":
            flagged[:] = True
        else:
            q = [f for f in store.files("quarantine") if f.batch_id == rec.batch_id]
            if q:
                held_rows = store.read(q[0])
                if (held_rows["pg_stage"] == "batch_hold").any():
                    whole.append(name)
                by_rows = held_rows[held_rows["pg_stage"] != "batch_hold"]
                flagged[by_rows["pg_row"].to_numpy()] = True
        accounted &= (rec.rows_in or 0) == rec.rows_clean + rec.rows_quarantined + rec.rows_rejected
        accounted &= (rec.rows_in or 0) == len(t)
        caught = int((flagged & poison).sum())
        if rec.status != "rejected":
            held_poison += caught
            held += int(flagged.sum())
            planted += int(poison.sum())
            clean_total += int((~poison).sum())
            clean_held += int((flagged & ~poison).sum())
        rows.append(
            {
                "batch": name,
                "rows in": rec.rows_in,
                "clean": rec.rows_clean,
                "quarantined": rec.rows_quarantined,
                "rejected": rec.rows_rejected,
                "planted": int(poison.sum()),
                "caught": caught,
                "precision": caught / flagged.sum() if flagged.sum() else float("nan"),
                "recall": caught / poison.sum() if poison.sum() else float("nan"),
            }
        )
    return DemoScore(
        # In the order the demo numbers its batches, whatever order their sources ran in.
        table=pd.DataFrame(rows).sort_values("batch", kind="stable", ignore_index=True),
        recall=held_poison / planted if planted else float("nan"),
        precision=held_poison / held if held else float("nan"),
        clean_quarantined=clean_held / clean_total if clean_total else 0.0,
        rows_accounted=bool(accounted),
        held_whole=tuple(sorted(whole)),
    )
