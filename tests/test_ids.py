"""The training set's id index (``Store.id_owners``): ids by keyed hash, read from the id
columns alone, kept for the process and grown by the files committed since."""

from __future__ import annotations

import numpy as np
import pandas as pd

from poisonguard.config import load_config
from poisonguard.store import IdOwners, open_store
from poisonguard.store.core import _kept_ids
from poisonguard.store.files import DataFiles
from test_reservoir import _batches


def test_an_index_finds_each_id_with_the_first_batch_that_holds_it():
    keys = np.array([30, 10, 20], dtype=np.uint64)
    owners = IdOwners.empty().extended(keys, np.array(["b1", "b1", "b2"], dtype=object))
    owners = owners.extended(np.array([10, 40], dtype=np.uint64), np.array(["b3", "b3"]))
    found = owners.find(np.array([10, 20, 30, 40, 50, 0], dtype=np.uint64))
    names = [owners.batches[i] if i >= 0 else None for i in found]
    assert names == ["b1", "b2", "b1", "b3", None, None]
    assert len(owners) == 5 and owners.batches == ("b1", "b2", "b3")
    assert (IdOwners.empty().find(keys) == -1).all()


def test_the_store_reads_only_id_columns_once_and_grows_with_new_files(demo_project, monkeypatch):
    config = load_config(demo_project / "poisonguard.toml")
    store = open_store(config)
    seen: list[tuple[str, tuple[str, ...] | None]] = []
    original = DataFiles.read_table

    def spy(self, rel, columns=None):
        seen.append((rel, None if columns is None else tuple(columns)))
        return original(self, rel, columns)

    monkeypatch.setattr(DataFiles, "read_table", spy)
    _kept_ids.clear()
    owners = store.id_owners("row_id")
    clean = [f.path for f in store.files("clean")]
    assert sorted(seen) == sorted((p, ("row_id", "pg_batch")) for p in clean)
    seen.clear()
    assert store.id_owners("row_id") is owners and seen == []

    trained = store.clean_frame()
    found = owners.find(store.value_keys(trained["row_id"]))
    assert [owners.batches[i] for i in found] == trained["pg_batch"].tolist()
    assert (owners.find(store.value_keys(pd.Series([-1, 10**9]))) == -1).all()

    new = _batches(config, demo_project, 2)
    grown = store.id_owners("row_id")
    added = [f.path for f in store.files("clean") if f.batch_id in new]
    ids_read = [rel for rel, columns in seen if columns == ("row_id", "pg_batch")]
    assert sorted(ids_read) == sorted(added)  # each new file once, no old one
    _kept_ids.clear()
    cold = store.id_owners("row_id")
    assert np.array_equal(cold.keys, grown.keys)
    assert [cold.batches[i] for i in cold.owners] == [grown.batches[i] for i in grown.owners]
    trained = store.clean_frame()
    found = grown.find(store.value_keys(trained["row_id"]))
    assert [grown.batches[i] for i in found] == trained["pg_batch"].tolist()
