"""The reference sample as a store file: written with each reference version, read alone to fit."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from landed import empty as empty_landing
from poisonguard.config import Config, load_config
from poisonguard.demo import LABEL
from poisonguard.errors import GateError, StoreError
from poisonguard.gate import gate
from poisonguard.pipeline import data_columns, fit_guard, guard_for, process_landing
from poisonguard.review import review, revoke
from poisonguard.sampling import SampleRule, draw_sample, key_id, rule_for
from poisonguard.store import CRASH_ENV, SCHEMA_VERSION, Store, copy_store, open_store
from poisonguard.store.files import DataFiles

#: Under the demo seed's 718 rows, over its 10 classes' floors (500).
LIMIT = 600


def _small(project: Path) -> Config:
    """The demo's config with a limit its seed exceeds, so that sampling drops rows."""
    config = load_config(project / "poisonguard.toml")
    return dataclasses.replace(
        config, detection=dataclasses.replace(config.detection, max_reference_rows=LIMIT)
    )


def _batches(config: Config, project: Path, n: int) -> list[str]:
    """Land ``n`` batches of the demo's clean rows, one at a time; each one settled (its held
    rows rejected) so that it may be promoted. Their ids."""
    clean = pd.read_parquet(project / "landing" / "partner" / "batch-04-clean.parquet")
    empty_landing(config.landing)
    store = open_store(config)
    ids = []
    for i, part in enumerate(np.array_split(np.arange(len(clean)), n)):
        clean.iloc[part].to_parquet(config.landing / f"b{i}.parquet", index=False)
        (record,) = process_landing(config).records
        if store.batch(record.batch_id).rows_quarantined:
            review(store, record.batch_id, "reject", by="ana", note="held, not needed")
        ids.append(record.batch_id)
    return ids


def _from_scratch(store: Store, config: Config) -> pd.DataFrame:
    """The current version's sample drawn from every row of the reference at once."""
    current = store.reference()
    rule = rule_for(config).resolved(store.reference_frame(current))
    return draw_sample(store.reference_frame(current), rule, store.sample_key())


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """Every table the store reads from now on (a spy on our own DataFiles; the audit anchor,
    which every change reads, is not a table)."""
    seen: list[str] = []
    for name in ("read_bytes", "read_table"):
        original = getattr(DataFiles, name)

        def spy(self, rel, *args, _original=original, **kwargs):
            if rel.endswith(".parquet"):
                seen.append(rel)
            return _original(self, rel, *args, **kwargs)

        monkeypatch.setattr(DataFiles, name, spy)
    return seen


def test_init_writes_the_seed_sample_with_its_digest_in_the_ledger_and_the_audit(demo_project):
    """The seed's reference version has its sample file, whose SHA-256 the ledger and the
    version's audit entry record; the gate checks it with the other files."""
    config = load_config(demo_project / "poisonguard.toml")
    store = open_store(config)
    (v1,) = store.references()
    sample = v1.sample
    assert sample is not None and sample.path == "reference/version-1.parquet"
    content = (store.root / sample.path).read_bytes()
    assert hashlib.sha256(content).hexdigest() == sample.sha256
    assert sample.rows == v1.rows  # the seed is under the default limit: kept whole
    drawn = SampleRule(20000, LABEL, "classification", key_id=key_id(store.sample_key()))
    assert SampleRule.from_json(sample.rule) == drawn
    entry = next(e for e in store.audit_log() if e["action"] == "reference")
    assert json.loads(entry["detail"])["sample"]["sha256"] == sample.sha256
    assert store.verify_files() == []


def test_a_promotion_reads_only_the_previous_sample_and_the_files_it_adds(demo_project, reads):
    """After several promotions, one more reads the last sample and the new batch's file,
    nothing else; its sample is the one drawn from the whole reference at once, and the guard
    fitted on it (reading that one file) is the guard fitted on that whole-reference draw."""
    config = _small(demo_project)
    ids = _batches(config, demo_project, 4)
    store = open_store(config)
    for batch_id in ids[:3]:
        store.promote([batch_id], actor="ana")
    before = store.reference()
    reads.clear()
    after = store.promote([ids[3]], actor="ana")
    assert sorted(reads) == sorted([before.sample.path, f"clean/{ids[3]}.parquet"])
    assert after.sample.rows == LIMIT < after.rows
    entry = store.audit_log()[-1]
    assert json.loads(entry["detail"])["sample"]["sha256"] == after.sample.sha256

    expected = _from_scratch(store, config)
    pd.testing.assert_frame_equal(store.sample_frame(after, rule_for(config)), expected)
    assert set(expected[LABEL]) == set(range(10))

    reads.clear()
    guard = fit_guard(config, store)
    assert reads == [after.sample.path]
    direct = guard_for(config).fit(expected[data_columns(expected)])
    np.testing.assert_array_equal(guard.reference_.X, direct.reference_.X)
    np.testing.assert_array_equal(guard.null_, direct.null_)
    assert fit_guard(config, store) is guard and reads == [after.sample.path]


def test_a_revocation_draws_the_new_versions_sample_from_its_files(demo_project):
    """A version that drops a batch cannot merge: its sample is drawn afresh, without the
    revoked batch's rows."""
    config = _small(demo_project)
    ids = _batches(config, demo_project, 3)
    store = open_store(config)
    store.promote(ids, actor="ana")
    revoke(store, ids[1], actor="ana", note="found out later")
    current = store.reference()
    frame = store.sample_frame(current, rule_for(config))
    assert ids[1] not in set(frame["pg_batch"])
    pd.testing.assert_frame_equal(frame, _from_scratch(store, config))


def test_a_changed_sample_file_stops_the_fit_in_one_line(demo_project):
    """Fitting reads the sample verified by its hash: a file changed behind the store's back
    stops it with one line naming the file, and the gate names it too."""
    config = load_config(demo_project / "poisonguard.toml")
    store = open_store(config)
    sample = store.reference().sample
    path = store.root / sample.path
    frame = pd.read_parquet(path)
    frame.loc[0, LABEL] = (frame.loc[0, LABEL] + 1) % 10
    frame.to_parquet(path, index=False)
    fresh = dataclasses.replace(  # settings no guard of this process was fitted with
        config, detection=dataclasses.replace(config.detection, fdr=0.0421)
    )
    with pytest.raises(StoreError) as caught:
        fit_guard(fresh, store)
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith(f"{path}: the sample of reference version 1 changed")
    with pytest.raises(GateError, match=r"reference/version-1\.parquet: changed behind"):
        gate(config)


def test_a_promotion_killed_after_its_sample_file_leaves_nothing_behind(demo_project):
    """Killed between writing the sample and committing the version, a promotion leaves a file
    no version lists; the next change removes it, and the promotion run again ends as one
    never interrupted."""
    config = load_config(demo_project / "poisonguard.toml")
    (batch_id,) = _batches(config, demo_project, 1)
    env = {**os.environ, CRASH_ENV: "after-sample-file"}
    argv = ["reference", "promote", batch_id, "--actor", "ana"]
    cli = [sys.executable, "-m", "poisonguard.cli", *argv, "--config", str(config.path)]
    done = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    store = open_store(config)
    orphan = store.root / "reference" / "version-2.parquet"
    assert orphan.exists() and store.reference().version == 1
    assert any("not written by poisonguard" in r for r in store.verify_files())

    with store.writing():  # the next change recovers first
        pass
    assert not orphan.exists()
    v2 = store.promote([batch_id], actor="ana")
    assert orphan.exists() and v2.sample.path == "reference/version-2.parquet"
    assert store.verify_files() == [] and not list((store.root / "staging").iterdir())
    pd.testing.assert_frame_equal(
        store.sample_frame(v2, rule_for(config)), _from_scratch(store, config)
    )


def test_a_version_4_store_migrates_by_drawing_its_current_sample(demo_project):
    """A store written before samples existed gets the current version's sample when opened,
    in one audited migration step; the gate passes and fitting reads that file."""
    config = load_config(demo_project / "poisonguard.toml")
    store = open_store(config)
    (store.root / store.reference().sample.path).unlink()
    with sqlite3.connect(store.ledger_path) as db:
        for column in ("path", "sha256", "rows", "rule"):
            db.execute(f"ALTER TABLE reference_versions DROP COLUMN sample_{column}")
        db.execute("PRAGMA user_version = 4")
    migrated = open_store(config)
    assert SCHEMA_VERSION == 5
    (v1,) = migrated.references()
    assert v1.sample is not None and (migrated.root / v1.sample.path).exists()
    entry = migrated.audit_log()[-1]
    detail = json.loads(entry["detail"])
    assert entry["action"] == "migrate" and (detail["from"], detail["to"]) == (4, 5)
    assert detail["sample"]["sha256"] == v1.sample.sha256
    assert migrated.verify_audit() is None and migrated.verify_files() == []
    pd.testing.assert_frame_equal(
        migrated.sample_frame(v1, rule_for(config)), _from_scratch(migrated, config)
    )


def test_a_sample_replaced_in_the_ledger_and_on_disk_together_is_refused_by_the_gate(
    demo_project,
):
    """Replacing the sample file and its hash in the ledger keeps the two in step, but not
    with the audit entry that wrote the version: the gate refuses."""
    config = load_config(demo_project / "poisonguard.toml")
    store = open_store(config)
    sample = store.reference().sample
    path = store.root / sample.path
    frame = pd.read_parquet(path)
    frame[LABEL] = (frame[LABEL] + 1) % 10
    frame.to_parquet(path, index=False)
    forged = hashlib.sha256(path.read_bytes()).hexdigest()
    with sqlite3.connect(store.ledger_path) as db:
        db.execute("UPDATE reference_versions SET sample_sha256 = ? WHERE version = 1", (forged,))
    assert store.verify_files() == []
    with pytest.raises(GateError, match="reference version 1: its sample is not the file its"):
        gate(config)


def test_a_store_copied_with_a_new_key_draws_its_next_sample_afresh(demo_project, tmp_path):
    """A copy gets a new audit key, so its rows rank otherwise: its next promotion draws the
    sample from every file (under its own key) instead of merging one ranked under the old."""
    config = _small(demo_project)
    ids = _batches(config, demo_project, 2)
    open_store(config).promote([ids[0]], actor="ana")
    copy_store(config.store, tmp_path / "copy", tmp_path / "copy.key")
    copy = Store(tmp_path / "copy", key_path=tmp_path / "copy.key", sampling=rule_for(config))
    assert copy.sample_key() != open_store(config).sample_key()
    copy.promote([ids[1]], actor="ana")
    pd.testing.assert_frame_equal(
        copy.sample_frame(copy.reference(), rule_for(config)), _from_scratch(copy, config)
    )


def test_a_revocation_killed_before_its_commit_leaves_no_sample_behind(demo_project):
    """A revocation of a batch in the reference writes the new version's sample before its
    ledger transaction; killed there, it leaves a file the next change removes, and run again
    it makes the version as if never interrupted."""
    config = load_config(demo_project / "poisonguard.toml")
    (batch_id,) = _batches(config, demo_project, 1)
    store = open_store(config)
    store.promote([batch_id], actor="ana")
    env = {**os.environ, CRASH_ENV: "revoke-before-ledger-commit"}
    argv = ["review", "revoke", batch_id, "--actor", "ana", "--note", "bad feed"]
    cli = [sys.executable, "-m", "poisonguard.cli", *argv, "--config", str(config.path)]
    done = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    orphan = store.root / "reference" / "version-3.parquet"
    assert orphan.exists() and store.reference().version == 2
    with store.writing():  # the next change recovers first
        pass
    assert not orphan.exists()
    revoke(store, batch_id, actor="ana", note="bad feed")
    v3 = store.reference()
    assert v3.version == 3 and v3.sample.path == "reference/version-3.parquet"
    assert store.verify_files() == [] and not list((store.root / "staging").iterdir())
    pd.testing.assert_frame_equal(
        store.sample_frame(v3, rule_for(config)), _from_scratch(store, config)
    )
