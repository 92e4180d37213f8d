"""Keyed hashes and owner-only files (issue 13, item 3).

A store's row hashes, its blocklist and its audit entries name rows by a keyed hash
(the store's row-hash key, derived from its audit key), so a leaked ledger confirms
no guessed row; every file and folder the store creates is owner-only, whatever the
umask; a store written before the hashes were keyed is re-keyed when opened.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from poisonguard.config import load_config
from poisonguard.errors import StoreError
from poisonguard.pipeline import process_landing
from poisonguard.review import held_rows, review
from poisonguard.store import (
    SCHEMA_VERSION,
    Outcome,
    Store,
    blocklist_in,
    data_columns,
    open_store,
    row_hash_key,
    row_hashes,
    siphash24,
)

LEGACY = Path(__file__).parent / "data" / "legacy-store"
KEY = bytes(range(16))


# --------------------------------------------------------------------------- the construction


def test_siphash24_is_the_reference_siphash():
    """The vectorised SipHash-2-4 gives the reference vector, and what pandas' own C SipHash
    gives for the same 8-byte messages under the same key."""
    message = np.array([int.from_bytes(bytes(range(8)), "little")], dtype=np.uint64)
    assert int(siphash24(message, KEY)[0]) == 0x93F5F5799A932462  # the paper's vector, len 8
    values = np.random.default_rng(1).integers(0, 2**63, 200, dtype=np.uint64)
    values[:3] = [0, 1, 2**64 - 1]
    key = b"an ascii 16 key!"
    as_bytes = np.array([int(v).to_bytes(8, "little") for v in values], dtype=object)
    theirs = pd.util.hash_array(as_bytes, hash_key=key.decode())
    ours = siphash24(values, key)
    # pandas spreads its SipHash output with a fixed mix; apply the same to ours.
    ours ^= ours >> np.uint64(30)
    ours *= np.uint64(0xBF58476D1CE4E5B9)
    ours ^= ours >> np.uint64(27)
    ours *= np.uint64(0x94D049BB133111EB)
    ours ^= ours >> np.uint64(31)
    assert (ours == theirs).all()


def test_keyed_row_hashes_depend_on_the_key_and_not_on_the_file_format():
    """A row read from CSV (ints) and from Parquet (floats) hashes alike under one key; another
    key, or no key, gives other hashes, all 16 hex digits; a key of another length is refused."""
    a = pd.DataFrame({"x": [1, 2], "s": ["a", "b"]})
    b = pd.DataFrame({"x": [1.0, 2.0], "s": ["a", "b"]})
    keyed = row_hashes(a, key=KEY)
    assert list(keyed) == list(row_hashes(b, key=KEY)) and keyed[0] != keyed[1]
    other = row_hashes(a, key=bytes(16))
    unkeyed = row_hashes(a, key=None)
    assert not set(keyed) & set(other) and not set(keyed) & set(unkeyed)
    assert all(len(h) == 16 and int(h, 16) >= 0 for h in [*keyed, *other, *unkeyed])
    numbers_only = pd.DataFrame({"x": [1.0, 2.0]})
    assert set(row_hashes(numbers_only, key=KEY)).isdisjoint(row_hashes(numbers_only, key=None))
    with pytest.raises(ValueError, match=r"'key' parameter of row_hashes\(\) must be 16 bytes"):
        row_hashes(a, key=b"short")


def test_two_stores_hash_the_same_row_differently_and_one_store_always_alike(tmp_path):
    """The key is each store's own (derived from its audit key), and stable across openings."""
    frame = pd.DataFrame({"x": [1.5, 2.5], "s": ["a", "b"]})
    one = Store(tmp_path / "one", create=True)
    two = Store(tmp_path / "two", create=True)
    assert set(one.row_hashes(frame)).isdisjoint(two.row_hashes(frame))
    again = Store(tmp_path / "one")
    assert list(again.row_hashes(frame)) == list(one.row_hashes(frame))
    audit_key = bytes.fromhex(one.key_path.read_text().strip())
    assert list(one.row_hashes(frame)) == list(row_hashes(frame, key=row_hash_key(audit_key)))


# --------------------------------------------------------------------------- a leaked ledger


def _everything_kept(store: Store) -> str:
    """Every value the store keeps, as text: the ledger's dump, every table's cells, every
    other file's bytes (Parquet is read, as its pages may be compressed)."""
    with sqlite3.connect(store.ledger_path) as db:
        parts = list(db.iterdump())
    for path in sorted(store.root.rglob("*")):
        if not path.is_file() or path.name.startswith("ledger.sqlite"):
            continue
        if path.suffix == ".parquet":
            parts.append(pd.read_parquet(path).to_csv(index=False))
        else:
            parts.append(path.read_bytes().decode("utf-8", errors="replace"))
    return "\n".join(parts)


def test_a_leaked_store_confirms_no_guessed_row(demo_project):
    """Whoever reads the ledger, the audit log and the files, but has no key, cannot confirm
    a guessed row: the unkeyed hash of no committed or rejected row appears anywhere; the
    keyed hash of a rejected row is on the blocklist and in its audit entry; a trained id is
    named by its keyed hash; and the rejected row sent again is still held."""
    config = load_config(demo_project / "poisonguard.toml")
    records = process_landing(config).records
    store = open_store(config)
    batch = next(r for r in records if "label-flips" in r.source)
    held = held_rows(store, batch.batch_id)
    chosen = held.head(2)
    review(store, batch.batch_id, "reject", by="ana", note="poison", rows=chosen["pg_row"].tolist())

    clean = store.clean_frame()
    rejected = store.rejected_rows()
    assert len(clean) and len(rejected) == 2
    keyed_clean = store.row_hashes(clean)
    assert list(clean["pg_row_hash"]) == list(keyed_clean)
    unkeyed = {*row_hashes(clean, data_columns(clean), key=None)}
    unkeyed |= {*row_hashes(rejected, data_columns(rejected), key=None)}
    kept = _everything_kept(store)
    leaked = [h for h in unkeyed if h in kept]
    assert leaked == []
    keyed_rejected = set(store.row_hashes(rejected))
    assert store.blocklist() == keyed_rejected
    entry = next(e for e in store.audit_log() if e["action"] == "reject")
    assert set(json.loads(entry["detail"])["row_hashes"]) == keyed_rejected

    # The rejected rows and a trained id, sent again.
    again = rejected[data_columns(rejected)].copy()
    trained = clean[data_columns(clean)].head(1).copy()
    resent = pd.concat([again, trained], ignore_index=True)
    resent.to_parquet(config.landing / "batch-09-resent.parquet", index=False)
    (rec,) = process_landing(config).records
    held = held_rows(store, rec.batch_id).set_index("pg_row").sort_index()
    assert held.loc[[0, 1], "pg_stage"].tolist() == ["blocklist", "blocklist"]
    reason = held.loc[2, "pg_reason"]
    trained_id = trained[config.id_column].iloc[0]
    keyed_id = store.value_hashes(trained[config.id_column])[0]
    assert f"keyed id {keyed_id}" in reason and f"= {trained_id}" not in reason


# --------------------------------------------------------------------------- a store made before


def _legacy(tmp_path: Path) -> tuple[Path, Path]:
    shutil.copytree(LEGACY, tmp_path / "legacy")
    return tmp_path / "legacy" / "store", tmp_path / "legacy" / "store.key"


def _ledger_version(root: Path) -> int:
    with sqlite3.connect(root / "ledger.sqlite") as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def test_a_store_made_before_keying_has_its_blocklist_re_keyed_when_opened(tmp_path):
    """A store main wrote (schema 3, unkeyed hashes; ``data/make_legacy_store.py``) opens at
    schema 4: each blocklisted row, rejected or revoked, is on the blocklist under its keyed
    hash only; the migration's audit entry records the keyed blocklist, so the chain, the
    files and the gate's replay of the blocklist all agree; a row of an old file rejected
    afterwards joins under its keyed hash, not its file's unkeyed one."""
    root, key = _legacy(tmp_path)
    assert _ledger_version(root) == 3
    with sqlite3.connect(root / "ledger.sqlite") as db:
        old = {r[0] for r in db.execute("SELECT row_hash FROM blocklist")}
    assert len(old) == 7
    store = Store(root, key_path=key)
    assert _ledger_version(root) == SCHEMA_VERSION
    rejected = store.rejected_rows()
    assert store.blocklist() == set(store.row_hashes(rejected)) and not store.blocklist() & old
    assert set(row_hashes(rejected, data_columns(rejected), key=None)) == old
    (migrate,) = [
        e for e in store.audit_log() if e["action"] == "migrate" and '"from": 3' in e["detail"]
    ]
    detail = json.loads(migrate["detail"])
    assert (detail["from"], detail["to"]) == (3, 4)
    assert set(detail["blocklist"]) == store.blocklist()
    assert store.verify_audit() is None and store.verify_files() == []
    assert blocklist_in(store.audit_log()) == store.blocklist()

    left = store.quarantine_frame("b1")
    pending = left[~left["pg_row"].isin(store.reviews("b1")["pg_row"])]
    store.commit_review("b1", "reject", pending.head(1), actor="bo", note="also poison")
    (added,) = store.blocklist() - set(detail["blocklist"])
    assert added == store.row_hashes(pending.head(1))[0]
    assert added != pending["pg_row_hash"].iloc[0]
    assert blocklist_in(store.audit_log()) == store.blocklist()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("DELETE FROM blocklist WHERE pg_row = 6", "not the one the audit chain recorded"),
        (
            "UPDATE blocklist SET pg_row = 99 WHERE pg_row = 6",
            "names row 99 of batch b1, but no quarantine or revoked file holds it",
        ),
    ],
)
def test_a_blocklist_that_cannot_be_re_keyed_is_refused_and_nothing_migrates(
    tmp_path, edit, message
):
    """A blocklist the audit chain does not vouch for, or that names a row no file holds, is
    refused with a one-line error saying what to do; the ledger stays at schema 3."""
    root, key = _legacy(tmp_path)
    with sqlite3.connect(root / "ledger.sqlite") as db:
        db.execute(edit)
    with pytest.raises(StoreError, match=message) as info:
        Store(root, key_path=key)
    assert "\n" not in str(info.value) and "restore" in str(info.value)
    assert _ledger_version(root) == 3


# --------------------------------------------------------------------------- owner-only


def test_every_file_and_folder_the_store_creates_is_owner_only_whatever_the_umask(
    demo_inputs, tmp_path
):
    """Under a umask of 022, the demo's init, run, review and gate leave no file or folder in
    the store (nor its key) that the group or others may read, write or enter."""
    from poisonguard.demo import LABEL
    from poisonguard.gate import check
    from poisonguard.initialize import init_dataset

    root = tmp_path / "demo"
    shutil.copytree(demo_inputs, root)
    old = os.umask(0o022)
    try:
        init_dataset(
            root / "trusted.parquet", label=LABEL, directory=root, id_column="row_id", name="d"
        )
        config = load_config(root / "poisonguard.toml")
        records = process_landing(config).records
        store = open_store(config)
        batch = next(r for r in records if r.rows_quarantined)
        review(store, batch.batch_id, "reject", by="ana", note="poison")
        check(config, actor="ana")
    finally:
        os.umask(old)
    found = [config.store, default_key(config)]
    found += sorted(config.store.rglob("*"))
    assert any(p.suffix == ".html" for p in found) and any(p.name == "ledger.sqlite" for p in found)
    assert (config.store / "rejected").is_dir() and (config.store / "staging").is_dir()
    open_to_others = [
        f"{p.relative_to(tmp_path)} {stat.filemode(p.lstat().st_mode)}"
        for p in found
        if p.lstat().st_mode & 0o077
    ]
    assert open_to_others == []


def default_key(config) -> Path:
    from poisonguard.store import default_key_path

    return config.audit_key or default_key_path(config.store)


def test_what_a_run_leaves_only_while_it_runs_is_owner_only_too(tmp_path):
    """Under a umask of 022, the files a run removes when it ends (a staging folder and its
    owner marker, a batch's rows written a chunk at a time) and a copy of the store (the red
    team's sandbox) are owner-only from their creation, parents made on the way included."""
    from poisonguard.store import RowGroupWriter, copy_store

    old = os.umask(0o022)
    try:
        store = Store(tmp_path / "a" / "b" / "store", create=True)
        seed = pd.DataFrame({"x": [1.0, 2.0], "pg_row": [0, 1]})
        store.commit(Outcome("seed", "s" * 64, "seed.csv", "seed", 2, clean=seed))
        folder = store.staging_dir("probe")
        with RowGroupWriter(folder / "deep" / "rows.parquet") as writer:
            writer.write(pd.DataFrame({"x": [1.0, 2.0]}))
        copy_store(store.root, tmp_path / "copy" / "store", tmp_path / "copy" / "store.key")
    finally:
        os.umask(old)
    found = [tmp_path / "a", *sorted((tmp_path / "a").rglob("*"))]
    found += [tmp_path / "copy", *sorted((tmp_path / "copy").rglob("*"))]
    assert folder / ".owner" in found and folder / "deep" / "rows.parquet" in found
    copied = tmp_path / "copy" / "store"
    assert {
        copied / "ledger.sqlite",
        copied / "anchor.json",
        copied / "clean" / "seed.parquet",
    } <= set(found)
    open_to_others = [
        f"{p.relative_to(tmp_path)} {stat.filemode(p.lstat().st_mode)}"
        for p in found
        if p.lstat().st_mode & 0o077
    ]
    assert open_to_others == []
