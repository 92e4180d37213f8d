"""The store's data files through fsspec: a local folder, another folder or an object store
(``memory://`` stands in for one) hold ``clean/``, ``quarantine/``, ``rejected/`` and the
audit anchor, while the ledger, reports and staging stay where they were."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from landed import keep_only
from poisonguard.config import load_config
from poisonguard.errors import ConfigError, StoreError
from poisonguard.store import Outcome, Store, parquet_bytes
from poisonguard.store.files import DataFiles


def _frame(n: int, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"x": np.arange(start, start + n, dtype=float), "y": np.arange(n) % 2})


def test_data_files_write_read_list_and_remove_alike_wherever_they_are(data_url, tmp_path):
    files = DataFiles(data_url)
    files.makedirs("clean")
    table = parquet_bytes(_frame(4))
    files.write("clean/b1.parquet", table)
    files.write("rejected/b2/reason.json", b"{}")
    landed = tmp_path / "landed.csv"
    landed.write_bytes(b"a,b\n1,2\n")
    files.move_in(landed, "rejected/b2/landed.csv")
    assert not landed.exists() and files.read_bytes("rejected/b2/landed.csv") == b"a,b\n1,2\n"
    assert files.read_bytes("clean/b1.parquet") == table
    pd.testing.assert_frame_equal(files.read_table("clean/b1.parquet"), _frame(4))
    assert files.read_table("clean/b1.parquet", ["y"]).columns.tolist() == ["y"]
    assert (files.rows("clean/b1.parquet"), files.columns("clean/b1.parquet")) == (4, ["x", "y"])
    assert files.is_file("clean/b1.parquet") and not files.is_file("clean/b9.parquet")
    assert not files.is_link("clean/b1.parquet") and files.exists("rejected/b2")
    assert files.find("rejected") == ["rejected/b2/landed.csv", "rejected/b2/reason.json"]
    assert files.find("quarantine") == []
    files.remove_tree("rejected/b2")
    files.remove("clean/b1.parquet")
    files.remove("clean/b1.parquet")  # already gone: nothing to do
    assert files.find("rejected") == [] and files.find("clean") == []
    assert str(files.where("clean/b1.parquet")).endswith("data/clean/b1.parquet")


def test_a_data_location_no_filesystem_serves_is_named():
    with pytest.raises(StoreError, match=r"data location nope://x cannot be opened"):
        DataFiles("nope://x")


def test_a_store_keeps_its_data_files_apart_and_checks_them_there(data_url, tmp_path):
    """Commits, reads, the anchor and the gate's file checks go to the data location; the
    store's folder keeps the ledger, reports and staging only."""
    root = tmp_path / "store"
    store = Store(root, create=True, data=data_url)
    store.commit(
        Outcome(
            "b1",
            "a" * 64,
            "b1",
            "committed",
            5,
            clean=_frame(3),
            quarantine=_frame(2).assign(pg_row=[3, 4]),
        )
    )
    store.commit(Outcome("b2", "b" * 64, "b2", "committed", 4, clean=_frame(4, 10)))
    kept = sorted(p.name for p in root.iterdir() if not p.name.startswith("ledger.sqlite"))
    assert kept == [".lock", "reports", "staging"]
    files = DataFiles(data_url)
    assert files.find("clean") == ["clean/b1.parquet", "clean/b2.parquet"]
    assert files.is_file("anchor.json")
    reopened = Store(root, data=data_url)
    want = pd.concat([_frame(3), _frame(4, 10)], ignore_index=True)
    frame = reopened.clean_frame()
    pd.testing.assert_frame_equal(frame[["x", "y"]], want)
    assert reopened.verify_files() == [] and reopened.verify_audit() is None
    assert reopened.read_verified(reopened.files("clean")[0]).shape == (3, 2)

    files.write("clean/b2.parquet", parquet_bytes(_frame(4, 99)))
    files.write("clean/extra.parquet", parquet_bytes(_frame(1)))
    reasons = reopened.verify_files()
    assert any(r.startswith("clean/b2.parquet: changed behind poisonguard's back") for r in reasons)
    assert "clean/extra.parquet: not written by poisonguard (not in the ledger)" in reasons


def test_a_commit_cut_short_is_recovered_in_the_data_location(data_url, tmp_path):
    """A dead process's half-made commit (its staging folder stays local) is removed where
    its files went; a stranger's file is left for the gate."""
    store = Store(tmp_path / "store", create=True, data=data_url)
    (store.staging_dir("b2") / ".owner").write_text("999999999")
    files = DataFiles(data_url)
    files.write("clean/b2.parquet", b"half a batch")
    files.write("rejected/b2/reason.json", b"{}")
    files.write("clean/by-hand.parquet", b"not ours")
    removed = store.recover()
    assert sorted(map(str, removed)) == sorted(
        str(files.where(r)) for r in ("clean/b2.parquet", "rejected/b2")
    )
    assert files.find("clean") == ["clean/by-hand.parquet"] and files.find("rejected") == []


def test_rejected_files_are_kept_in_the_data_location(data_url, tmp_path):
    store = Store(tmp_path / "store", create=True, data=data_url)
    landed = store.staging_dir("bad") / "landed.csv"
    landed.write_bytes(b"a,b\n1\n")
    store.reject(
        landed, "bad.csv", Outcome("bad", "c" * 64, "bad.csv", "rejected", None, reason="x")
    )
    files = DataFiles(data_url)
    assert files.read_bytes("rejected/bad/bad.csv") == b"a,b\n1\n" and not landed.exists()
    assert store.verify_files() == []


def _config(tmp_path, store_section: str):
    (tmp_path / "suite.json").write_text('{"name": "s", "expectations": []}')
    path = tmp_path / "pg.toml"
    path.write_text(f'[dataset]\nexpectations = "suite.json"\n[store]\n{store_section}\n')
    return load_config(path)


def test_store_data_is_a_folder_beside_the_config_or_a_url(tmp_path, monkeypatch):
    monkeypatch.delenv("POISONGUARD_LEDGER_URL", raising=False)
    assert _config(tmp_path, 'data = "../shared"').data == str((tmp_path / "../shared").resolve())
    assert _config(tmp_path, 'data = "s3://bucket/digits"').data == "s3://bucket/digits"
    assert _config(tmp_path, 'data = "file:///mnt/x"').data == "file:///mnt/x"
    with pytest.raises(ConfigError, match=r"store\.data must be a folder or a URL such as"):
        _config(tmp_path, 'data = "file://relative/x"')


@pytest.mark.slow
def test_a_landing_run_and_the_gate_read_data_files_kept_in_a_second_folder(
    demo_inputs, tmp_path, monkeypatch
):
    """``[store] data`` set after init (the files moved there): a batch lands, and the gate
    passes, reading the training set from the second folder."""
    from poisonguard.demo import LABEL
    from poisonguard.gate import gate
    from poisonguard.initialize import init_dataset
    from poisonguard.pipeline import process_landing

    monkeypatch.delenv("POISONGUARD_LEDGER_URL", raising=False)
    root = tmp_path / "demo"
    shutil.copytree(demo_inputs, root)
    keep_only(root / "landing", "batch-04-clean.parquet")
    init_dataset(
        root / "trusted.parquet", label=LABEL, directory=root, id_column="row_id", name="digits"
    )
    shared = tmp_path / "shared"
    shared.mkdir()
    for name in ("clean", "quarantine", "rejected", "reference", "anchor.json"):
        shutil.move(root / "store" / name, shared / name)
    with open(root / "poisonguard.toml", "a") as f:
        f.write(f'\n[store]\ndata = "{shared.as_uri()}"\n')
    config = load_config(root / "poisonguard.toml")
    (record,) = process_landing(config).records
    assert (
        record.status == "committed" and (shared / "clean" / f"{record.batch_id}.parquet").exists()
    )
    assert not (root / "store" / "clean").exists()
    trained = gate(config)
    assert len(trained) == sum(
        b.rows_clean for b in Store(config.store, data=config.data).batches()
    )
