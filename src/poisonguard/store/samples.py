"""Reference samples on disk: each reference version's sample, written with the version.

The detectors are fitted on a sample of the pinned reference (``sampling``), not on
the whole of it. The store draws that sample when it makes a version, writes it as
``reference/version-<n>.parquet`` among its data files, and records its hash, row
count and rule with the version, in the version's own ledger transaction; the
version's audit entry names it too. Fitting then reads that one file, whose size
is bounded by the limit, however long the reference's history.

A promotion draws its sample from the previous version's sample and the files it
adds, nothing else (the sample merges); a version that drops files (a revocation),
a rule that changed (another label or limit), another key (a copied store's) or too
many classes for the floors draws it from every file of the version. Every file is
read verified: its bytes must have the SHA-256 the ledger recorded.

A sample file is written before its ledger transaction commits, under a staging
marker ``staging/version-<n>/``; a process that dies in between leaves a file no
version lists, which ``recover`` removes (as it does a batch's).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from typing import TYPE_CHECKING

import pandas as pd

from poisonguard.errors import StoreError
from poisonguard.sampling import SampleRule, draw_sample, key_id, merges
from poisonguard.store.files import (
    crash_point,
    parquet_bytes,
    table_from_bytes,
)
from poisonguard.store.ledger import FileRecord, ReferenceSample, ReferenceVersion

if TYPE_CHECKING:
    from poisonguard.store.core import Store

#: The folder of the sample files, among the store's data files.
SAMPLES = "reference"


def sample_name(version: int) -> str:
    """The sample file's name (without folder or suffix) and its staging marker's."""
    return f"version-{version}"


def is_sample_name(name: str) -> bool:
    """Whether a staging marker's name is a sample's (``sample_name``)."""
    return re.fullmatch(r"version-\d+", name) is not None


def write_sample(
    store: Store,
    version: int,
    files: tuple[FileRecord, ...],
    previous: ReferenceVersion | None,
) -> ReferenceSample:
    """Draw reference version ``version``'s sample (of ``files``) under the store's rule, write
    it, and return its record; the caller records it in the transaction it is in
    (``Store.transaction``, which removes the staging marker after the commit)."""
    frame, rule = _draw(store, files, previous, store.sampling)
    data = parquet_bytes(frame)
    name = sample_name(version)
    store._markers.append(store.staging_dir(name))
    rel = f"{SAMPLES}/{name}.parquet"
    store.data.write(rel, data)
    crash_point("after-sample-file")
    return ReferenceSample(rel, hashlib.sha256(data).hexdigest(), len(frame), rule.to_json())


def drawn_by(reference: ReferenceVersion, rule: SampleRule) -> ReferenceSample | None:
    """The version's sample file when it is the sample ``rule`` draws; None otherwise."""
    sample = reference.sample
    if sample is None or not rule.draws(SampleRule.from_json(sample.rule)):
        return None
    return sample


def read_sample(store: Store, reference: ReferenceVersion, sample: ReferenceSample) -> pd.DataFrame:
    """A version's sample file, read from bytes whose SHA-256 is the ledger's.

    Raises
    ------
    StoreError
        When the file is missing or its bytes are not those recorded.
    """
    try:
        content = store.data.read_bytes(sample.path)
    except FileNotFoundError:
        raise StoreError(
            f"{store.data.where(sample.path)}: the sample of reference version "
            f"{reference.version} is missing; run `poisonguard gate`"
        ) from None
    digest = hashlib.sha256(content).hexdigest()
    if digest != sample.sha256:
        raise StoreError(
            f"{store.data.where(sample.path)}: the sample of reference version "
            f"{reference.version} changed behind poisonguard's back (SHA-256 {digest[:12]}..., "
            f"ledger has {sample.sha256[:12]}...); refusing to fit on it, run `poisonguard gate`"
        )
    return table_from_bytes(content)


def draw_afresh(store: Store, reference: ReferenceVersion, rule: SampleRule) -> pd.DataFrame:
    """The sample ``rule`` draws from every file of a version (for a version whose file was
    drawn under another rule): what ``write_sample`` would write under it."""
    return _draw(store, reference.files, None, rule)[0]


def _draw(
    store: Store,
    files: tuple[FileRecord, ...],
    previous: ReferenceVersion | None,
    rule: SampleRule,
) -> tuple[pd.DataFrame, SampleRule]:
    """The sample of ``files`` and the resolved rule that drew it: merged from ``previous``'s
    sample and the files after its own when it can be, else from every file."""
    key = store.sample_key()
    known = () if previous is None else previous.files
    sample = None if previous is None else drawn_by(previous, rule)
    drawn = None if sample is None else SampleRule.from_json(sample.rule)
    if (
        previous is not None
        and sample is not None
        and drawn is not None
        and drawn.key_id == key_id(key)
        and files[: len(known)] == known
    ):
        frame = _concat([read_sample(store, previous, sample), *_read(store, files[len(known) :])])
        if merges(frame, drawn):
            return draw_sample(frame, drawn, key), drawn
    frame = _concat(_read(store, files))
    resolved = replace(rule.resolved(frame), key_id=key_id(key))
    return draw_sample(frame, resolved, key), resolved


def sample_files(
    store: Store, files: tuple[FileRecord, ...], rule: SampleRule
) -> tuple[pd.DataFrame, int]:
    """The rows of ``files`` a resolved ``rule`` keeps under the store's key, and how many
    rows the files hold.

    Each file is hashed (streamed) against the ledger's SHA-256, then read a row group
    at a time through the same handle, and the sample is folded with each: the bottom-k
    of everything is the bottom-k of the sample so far and the next rows (while the
    classes' floors fit in the limit; past that, the floors are cut as the rows come).
    So at most the sample and one row group's rows are held, however many rows the
    files hold.

    Raises
    ------
    GateError
        When a file's bytes are not those the ledger recorded.
    """
    key = store.sample_key()
    sample, total = pd.DataFrame(), 0
    for record in files:
        for part in store.data.verified_row_groups(record.path, record.sha256):
            total += len(part)
            sample = draw_sample(_concat([sample, part]), rule, key)
    return sample, total


def _read(store: Store, files: tuple[FileRecord, ...]) -> list[pd.DataFrame]:
    return [store.read_verified(f) for f in files]


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    kept = [f for f in frames if len(f)]
    return pd.concat(kept, ignore_index=True) if kept else pd.DataFrame()
