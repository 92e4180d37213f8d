"""The staging area: a batch's files between flow tasks, and recovery from a process that died.

Each piece of work in flight has a folder ``staging/<name>/`` holding its owner's
process id and host name in ``.owner`` (:func:`staging_dir`), so that runners on
several hosts sharing one store tell their own work from each other's. A batch's
folder holds, in turn:

``landed<suffix>``
    The copy of the landed file, until its rows are staged (or it is rejected).
``rows.parquet``, ``prior.parquet``, ``staged.json``
    Every row with its ``pg_`` provenance, the rows held before scoring, and the
    manifest (:func:`stage_rows`, :class:`Staged`). The manifest is written last:
    a folder without it was cut short.
``decision.parquet``, ``decision.json``, ``evidence.json``
    The batch's one decision, what it recorded, and the typed evidence for its
    report (:func:`write_decision`, :func:`write_evidence`).

A commit removes its folder after the ledger transaction; :func:`recover`
removes what a process that died mid-way left behind.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from poisonguard.errors import StoreError
from poisonguard.store.files import (
    DataFiles,
    RowGroupWriter,
    atomic_write_bytes,
    make_private_dirs,
    parquet_columns,
    read_parquet,
    row_group_sizes,
    row_groups,
    write_private,
    write_table,
)
from poisonguard.store.ledger import ERASED, LedgerView
from poisonguard.store.locking import owner_alive, this_owner
from poisonguard.store.samples import SAMPLES, is_sample_name

STAGED_ROWS = "rows.parquet"
STAGED_PRIOR = "prior.parquet"
STAGED_MANIFEST = "staged.json"
DECISION = "decision.parquet"
DECISION_META = "decision.json"
EVIDENCE = "evidence.json"


@dataclass(frozen=True)
class Staged:
    """A validated batch waiting in the staging area (read back from ``staged.json``)."""

    folder: Path
    batch_id: str
    sha256: str
    source: str
    rows_in: int
    started_at: str
    failed_expectations: list[dict]
    landed: tuple[str, int, int] | None
    chunked: bool = False  # staged a chunk at a time: judged and committed so too

    @classmethod
    def load(cls, folder: str | Path) -> Staged:
        folder = Path(folder)
        data = json.loads((folder / STAGED_MANIFEST).read_text())
        landed = data.pop("landed", None)
        return cls(folder=folder, landed=tuple(landed) if landed else None, **data)

    def rows(self) -> pd.DataFrame:
        """Every row of the batch, with its ``pg_`` provenance."""
        return read_parquet(self.folder / STAGED_ROWS)

    def prior(self) -> pd.DataFrame:
        """The rows held before scoring: ``pg_row``, ``pg_stage``, ``pg_reason``."""
        return read_parquet(self.folder / STAGED_PRIOR)

    @property
    def rows_file(self) -> Path:
        """The staged rows' Parquet file (a row group per chunk on the chunked path)."""
        return self.folder / STAGED_ROWS

    def columns(self) -> list[str]:
        """The staged rows' column names."""
        return parquet_columns(self.folder / STAGED_ROWS)

    def row_chunks(self, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
        """The rows a row group at a time (as staged by the chunked path, a chunk each)."""
        for table in row_groups(self.folder / STAGED_ROWS, columns):
            yield table.to_pandas()

    def row_tables(self) -> Iterator[pa.Table]:
        """The rows a row group at a time, as Arrow tables."""
        return row_groups(self.folder / STAGED_ROWS)


def stage_rows(
    landed: Path, rows: pd.DataFrame, prior: pd.DataFrame, manifest: dict[str, Any]
) -> Path:
    """Stage a validated batch beside its landed copy, then remove the copy; the folder.

    The manifest is written last, so a folder that has it holds the whole batch.
    """
    folder = landed.parent
    write_table(folder / STAGED_ROWS, rows)
    write_table(folder / STAGED_PRIOR, prior)
    landed.unlink()
    atomic_write_bytes(folder / STAGED_MANIFEST, json.dumps(manifest, indent=2).encode())
    return folder


def rows_writer(landed: Path) -> RowGroupWriter:
    """A writer of a batch's staged rows a chunk at a time (``rows.parquet`` beside its landed
    copy); ``stage_written`` finishes the staging."""
    return RowGroupWriter(landed.parent / STAGED_ROWS)


def stage_written(landed: Path, prior: pd.DataFrame, manifest: dict[str, Any]) -> Path:
    """Finish staging a batch whose rows ``rows_writer`` wrote: the held rows, the landed
    copy removed, the manifest last (as ``stage_rows``); the folder."""
    folder = landed.parent
    write_table(folder / STAGED_PRIOR, prior)
    landed.unlink()
    atomic_write_bytes(folder / STAGED_MANIFEST, json.dumps(manifest, indent=2).encode())
    return folder


def decision_writer(folder: Path) -> RowGroupWriter:
    """A writer of a staged batch's decision table a chunk at a time; ``write_decision_meta``
    follows it."""
    return RowGroupWriter(folder / DECISION)


def write_decision_meta(folder: Path, meta: dict[str, Any]) -> Path:
    """Write what a decision written by ``decision_writer`` recorded; the decision's path."""
    atomic_write_bytes(folder / DECISION_META, json.dumps(meta).encode())
    return folder / DECISION


def decision_tables(folder: Path) -> Iterator[pa.Table]:
    """A staged batch's decision table a row group at a time, as Arrow tables."""
    return row_groups(folder / DECISION)


def partition_chunks(
    folder: Path,
) -> tuple[Iterator[tuple[pa.Table, pa.Table]], tuple[pa.Schema, pa.Schema]]:
    """A staged, decided batch's rows split by its decision a row group at a time, for
    ``Store.commit_chunks``: per row group, the clean rows (``pg_stage`` empty) and the
    held rows with the decision's columns; and the two files' schemas.

    Raises
    ------
    StoreError
        When the decision's row groups do not match the staged rows'.
    """
    rows, decision = folder / STAGED_ROWS, folder / DECISION
    if row_group_sizes(rows) != row_group_sizes(decision):
        raise StoreError(f"{folder.name}: the decision does not match the staged rows")
    kept = pq.read_schema(rows)
    extra = [f for f in pq.read_schema(decision) if f.name != "pg_row"]
    schemas = (kept, pa.schema([*kept, *extra]))

    def parts() -> Iterator[tuple[pa.Table, pa.Table]]:
        for batch, decided in zip(row_groups(rows), row_groups(decision), strict=True):
            if not batch.column("pg_row").equals(decided.column("pg_row")):
                raise StoreError(f"{folder.name}: the decision does not match the staged rows")
            held = pc.not_equal(decided.column("pg_stage"), "")
            quarantine = batch.filter(held)
            for f in extra:
                quarantine = quarantine.append_column(f, decided.column(f.name).filter(held))
            yield batch.filter(pc.invert(held)), quarantine

    return parts(), schemas


def read_decision_meta(folder: Path) -> dict[str, Any]:
    """What a staged batch's decision recorded (``write_decision``, ``write_decision_meta``)."""
    return dict(json.loads((folder / DECISION_META).read_text()))


def write_decision(folder: Path, table: pd.DataFrame, meta: dict[str, Any]) -> Path:
    """Write a staged batch's decision (one row per batch row) and what it recorded; the
    decision table's path."""
    write_table(folder / DECISION, table)
    atomic_write_bytes(folder / DECISION_META, json.dumps(meta).encode())
    return folder / DECISION


def read_decision(folder: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A staged batch's decision table and what it recorded (``write_decision``)."""
    return read_parquet(folder / DECISION), json.loads((folder / DECISION_META).read_text())


def write_evidence(folder: Path, text: str | None) -> None:
    """Keep a staged batch's evidence; None removes what an earlier run kept."""
    if text is not None:
        atomic_write_bytes(folder / EVIDENCE, text.encode())
    else:
        (folder / EVIDENCE).unlink(missing_ok=True)


def read_evidence(folder: Path) -> tuple[bytes, str] | None:
    """A staged batch's evidence and the file it came from; None when it has none."""
    path = folder / EVIDENCE
    return (path.read_bytes(), str(path)) if path.exists() else None


# --------------------------------------------------------------------------- owners and recovery


def staging_dir(root: Path, name: str) -> Path:
    """``staging/<name>/`` of the store at ``root``, marked as this process's (see ``recover``)."""
    path = root / "staging" / name
    make_private_dirs(path)
    write_private(path / ".owner", this_owner().encode())
    return path


def disown(folder: Path) -> None:
    """Leave a staging folder without a live owner, so that ``recover`` may take it."""
    (folder / ".owner").unlink(missing_ok=True)


def _owner_alive(marker: Path) -> bool | None:
    """Whether a staging folder's owner runs: None when it ran on another host; False when
    the folder has no owner (disowned, or cut short before its owner was written)."""
    try:
        return owner_alive((marker / ".owner").read_text())
    except (OSError, ValueError):
        return False


def recover(
    root: Path, ledger: LedgerView, data: DataFiles, *, other_hosts: bool = False
) -> list[Path | str]:
    """Remove what a process that died mid-commit left in the store at ``root`` (its data
    files in ``data``), and nothing else.

    Every commit starts by creating ``staging/<name>/`` (holding its owner's
    process id) and ends by removing it after the ledger transaction. A
    staging folder whose owner is gone marks a commit that may have been cut
    short: its files are removed unless the ledger lists them. Temporary files
    of interrupted atomic writes go too, and files the ledger lists as erased
    (an erasure cut short after its commit). Files nobody wrote through
    poisonguard are left for the gate to report.

    A folder another host owns is taken only with ``other_hosts``: its process
    cannot be asked whether it lives, so only a caller that holds both the run
    lock and the write lock (no run and no change is in progress anywhere) may
    take it (``Store.exclusive``).

    Returns
    -------
    list of Path or str
        The files and folders removed (local paths, or URLs).
    """
    removed: list[Path | str] = []
    # An erasure that died after its commit: the files it rewrote must not outlive it.
    for erased in ledger.files(ERASED):
        if data.exists(erased.path):
            data.remove(erased.path)
            removed.append(data.where(erased.path))
    markers = []
    for marker in sorted((root / "staging").iterdir()):
        alive = _owner_alive(marker)
        if alive or (alive is None and not other_hosts):
            continue  # a live process (this one included) is mid-way through it
        markers.append(marker)
    # A batch's files, and a reference version's sample (``samples``: marker ``version-<n>``).
    written = ("clean", "quarantine", SAMPLES)
    for sub in written:
        for rel in data.temporaries(sub):
            data.remove(rel)
            removed.append(data.where(rel))
    if not markers:
        return removed
    known = {f.path for f in ledger.files()}
    if any(is_sample_name(m.name) for m in markers):
        known |= {r.sample.path for r in ledger.references(every=True) if r.sample is not None}
    batches = {b.batch_id for b in ledger.batches()}
    for marker in markers:
        name = marker.name
        for sub in written:
            rel = f"{sub}/{name}.parquet"
            if rel not in known and data.exists(rel):
                data.remove(rel)
                removed.append(data.where(rel))
        rejected = f"rejected/{name}"
        listed = any(path.startswith(f"{rejected}/") for path in known)  # an erasure's
        if name not in batches and not listed and data.exists(rejected):
            data.remove_tree(rejected)
            removed.append(data.where(rejected))
        shutil.rmtree(marker) if marker.is_dir() else marker.unlink()
    return removed
