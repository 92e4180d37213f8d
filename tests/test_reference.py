"""The pinned reference: batches are judged against versions that change only by promotion."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from landed import empty as empty_landing
from poisonguard.cli import main
from poisonguard.config import load_config
from poisonguard.demo import LABEL
from poisonguard.errors import ConfigError, GateError, ReviewError, StoreError
from poisonguard.gate import gate
from poisonguard.pipeline import data_columns, fit_guard, guard_for, process_landing, row_hashes
from poisonguard.review import review
from poisonguard.store import (
    GENESIS,
    SCHEMA_VERSION,
    Store,
    now,
    open_store,
    parquet_bytes,
    reference_digest,
)
from poisonguard.store.sqlite import _SCHEMA


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _fresh_landing(project: Path) -> pd.DataFrame:
    """Empty the demo's landing folder; the clean demo batch's rows, to build batches from."""
    clean = pd.read_parquet(project / "landing" / "partner" / "batch-04-clean.parquet")
    empty_landing(project / "landing")
    return clean


def _land(config, name: str, frame: pd.DataFrame):
    """Land one file and process it; its ledger record."""
    (config.landing / name).parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(config.landing / name, index=False)
    (record,) = process_landing(config).records
    return record


def _flipped_copies(rows: pd.DataFrame, copies: int, first_id: int, seed: int) -> pd.DataFrame:
    """``copies`` near-copies of each row, labelled 9, one pixel moved by 1 in each."""
    rng = np.random.default_rng(seed)
    pixels = [c for c in rows.columns if c.startswith("px")]
    out = pd.concat([rows] * copies, ignore_index=True)
    out[LABEL] = 9
    for i, j in enumerate(rng.integers(0, len(pixels), len(out)).tolist()):
        v = out.at[i, pixels[j]]
        out.at[i, pixels[j]] = v + 1 if v < 16 else v - 1
    out["row_id"] = np.arange(first_id, first_id + len(out))
    return out


def _settle(store: Store, batch_id: str) -> None:
    """Reject whatever of a batch still awaits review, so that it may be promoted."""
    if store.batch(batch_id).rows_quarantined:
        review(store, batch_id, "reject", by="ana", note="held, not needed")


def _seed_rows(project: Path) -> int:
    return len(pd.read_parquet(project / "trusted.parquet"))


# ----------------------------------------------------------------------------- (a) pinned


def test_an_accepted_batch_does_not_join_the_reference(demo_project):
    """Batches are judged by version 1 (the seed) however many rows were accepted before;
    the guard is fitted on the seed's rows only, and the training set still grows."""
    config = load_config(demo_project / "poisonguard.toml")
    process_landing(config)
    store = open_store(config)
    committed = [b for b in store.batches() if b.status == "committed"]
    assert len(committed) == 4
    assert {b.reference_version for b in committed} == {1}
    assert {b.reference_version for b in store.batches() if b.status != "committed"} == {None}
    (version,) = store.references()
    seed = next(b for b in store.batches() if b.status == "seed")
    assert version.version == 1 and version.batch_ids == (seed.batch_id,)
    assert version.rows == _seed_rows(demo_project)
    assert len(store.clean_frame()) > version.rows  # accepted rows are training data at once
    assert fit_guard(config, store).reference_.X.shape[0] == _seed_rows(demo_project)
    report = json.loads(
        next((store.root / "reports").glob(f"{committed[0].batch_id}.json")).read_text()
    )
    assert report["reference"] == {"version": 1, "digest": version.digest, "rows": version.rows}
    html = (store.root / "reports" / f"{committed[0].batch_id}.html").read_text()
    assert f"Judged against reference version 1 ({version.rows:,} trusted rows" in html


def test_released_poison_does_not_vouch_for_its_near_copies(demo_project):
    """Flipped rows a reviewer released by mistake are training data, but their near-copies in
    the next batch are still held: they are judged against the seed, not against the rows
    they copy. A guard fitted on the whole clean set (accepted rows vouching for the next)
    holds none of them."""
    clean = _fresh_landing(demo_project)
    config = load_config(demo_project / "poisonguard.toml")
    store = open_store(config)
    seed = pd.read_parquet(demo_project / "trusted.parquet")
    threes = seed[seed[LABEL] == 3].head(8)
    first = _land(config, "b1.parquet", _flipped_copies(threes, 12, 100_000, seed=0))
    assert first.rows_quarantined > 0
    review(store, first.batch_id, "release", by="ana", note="looked fine to me")
    assert store.batch(first.batch_id).rows_clean == 96  # in the training set
    # What a gate trusting every accepted row would fit on (the backdoor scan's window may
    # take the released rows out again once the next batch comes: see test_backdoor_window).
    everything = store.clean_frame()

    batch = pd.concat(
        [clean.head(150), _flipped_copies(threes, 1, 200_000, seed=1)], ignore_index=True
    )
    second = _land(config, "b2.parquet", batch)
    assert second.reference_version == 1
    held = store.quarantine_frame(second.batch_id)["pg_row"]
    assert (held >= 150).sum() >= 6  # of the 8 near-copies

    trusting = guard_for(config).fit(everything[data_columns(everything)])
    _, _, found = trusting.judge(batch)
    assert np.asarray(found.quarantined)[150:].sum() <= 2


# ----------------------------------------------------------------------------- (b) promote


def test_promotion_makes_a_new_version_that_judges_the_next_batch(demo_project, capsys):
    """`reference promote` writes version 2 (seed + the batch) with an audit entry; the next
    guard is fitted on those rows, the next batch records version 2, status and the gate's
    manifest name it and its digest."""
    clean = _fresh_landing(demo_project)
    cfg = str(demo_project / "poisonguard.toml")
    config = load_config(cfg)
    store = open_store(config)
    first = _land(config, "b1.parquet", clean.iloc[:120])
    _settle(store, first.batch_id)
    code, out, err = _cli(
        capsys,
        "reference",
        "promote",
        first.batch_id,
        "--actor",
        "ana",
        "--note",
        "reviewed",
        "--config",
        cfg,
    )
    assert code == 0, err
    promoted = store.batch(first.batch_id).rows_clean
    assert f"+{promoted:,} rows" in out and "reference: version 2" in out

    v2 = store.reference()
    seed_id = store.references()[0].batch_ids[0]
    assert v2.version == 2 and v2.batch_ids == (seed_id, first.batch_id)
    assert v2.rows == _seed_rows(demo_project) + promoted
    clean_files = {f.path: f.sha256 for f in store.files("clean")}
    assert v2.digest == reference_digest(clean_files[f.path] for f in v2.files)
    entry = store.audit_log()[-1]
    assert entry["action"] == "reference" and entry["actor"] == "ana"
    assert entry["batch_id"] == first.batch_id
    detail = json.loads(entry["detail"])
    assert detail["version"] == 2 and detail["digest"] == v2.digest
    assert detail["added"] == [first.batch_id] and detail["note"] == "reviewed"
    assert store.verify_audit() is None

    assert fit_guard(config, store).reference_.X.shape[0] == v2.rows
    second = _land(config, "b2.parquet", clean.iloc[120:200])
    assert second.reference_version == 2

    code, out, _ = _cli(capsys, "status", "--config", cfg)
    assert f"reference: version 2, {v2.rows:,} rows from 2 batches, digest {v2.digest[:12]}" in out
    code, out, _ = _cli(capsys, "reference", "--config", cfg)
    assert code == 0 and re.search(r"^\s+2\s+" + str(v2.rows), out, re.M)
    manifest = demo_project / "manifest.json"
    code, out, err = _cli(capsys, "gate", "--config", cfg, "--manifest", str(manifest))
    assert code == 0, err
    doc = json.loads(manifest.read_text())["predicate"]
    assert doc["reference"]["version"] == 2 and doc["reference"]["digest"] == v2.digest
    subjects = json.loads(manifest.read_text())["subject"]
    judged = {s["annotations"]["batch_id"]: s["annotations"]["reference_version"] for s in subjects}
    assert judged[first.batch_id] == 1 and judged[second.batch_id] == 2
    assert judged[seed_id] is None


def test_a_fitted_guard_is_kept_for_its_reference_version_and_settings(demo_project, capsys):
    """Fitting on the reference is most of a small batch's cost: the same version with the
    same settings reuses the guard fitted before; other settings, or a promotion, fit anew."""
    cfg = str(demo_project / "poisonguard.toml")
    config = load_config(cfg)
    store = open_store(config)
    first = fit_guard(config, store)
    assert fit_guard(config, store) is first
    stricter = dataclasses.replace(
        config, detection=dataclasses.replace(config.detection, fdr=0.01)
    )
    other = fit_guard(stricter, store)
    assert other is not first and other.settings_.fdr == 0.01
    assert fit_guard(config, store) is first

    batch = _land(config, "b1.parquet", _fresh_landing(demo_project).iloc[:120])
    _settle(store, batch.batch_id)
    promote = ("reference", "promote", batch.batch_id, "--actor", "ana", "--note", "ok")
    assert _cli(capsys, *promote, "--config", cfg)[0] == 0
    after = fit_guard(config, store)
    assert after is not first
    assert after.reference_.X.shape[0] == store.reference().rows


def test_the_gate_refuses_a_reference_edited_behind_its_back(demo_project):
    """A reference version whose files were changed in the ledger no longer matches the
    audit entry that wrote it."""
    clean = _fresh_landing(demo_project)
    config = load_config(demo_project / "poisonguard.toml")
    store = open_store(config)
    first = _land(config, "b1.parquet", clean.iloc[:100])
    second = _land(config, "b2.parquet", clean.iloc[100:200])
    _settle(store, first.batch_id)
    store.promote([first.batch_id], actor="ana")
    gate(config)
    with sqlite3.connect(store.ledger_path) as db:
        db.execute(
            "UPDATE reference_files SET path = ? WHERE version = 2 AND position = 1",
            (f"clean/{second.batch_id}.parquet",),
        )
    with pytest.raises(GateError, match="reference version 2: its digest or files are not"):
        gate(config)


# ----------------------------------------------------------------------------- (c) refusals


def test_promoting_an_unknown_rejected_or_unreviewed_batch_fails_in_one_line(demo_project, capsys):
    cfg = str(demo_project / "poisonguard.toml")
    config = load_config(cfg)
    process_landing(config)
    store = open_store(config)
    by_file = {b.source: b for b in store.batches()}
    rejected = by_file["export/batch-05-wrong-schema.csv"].batch_id
    waiting, n_waiting = (
        by_file["labelling/batch-01-label-flips.parquet"].batch_id,
        by_file["labelling/batch-01-label-flips.parquet"].rows_quarantined,
    )
    seed = store.references()[0].batch_ids[0]
    cases = [
        ("nope", "no batch 'nope' in "),
        (rejected, f"batch {rejected} was rejected whole; it has no clean rows to promote"),
        (waiting, f"batch {waiting} has {n_waiting} rows awaiting review; review them first"),
        (seed, f"batch {seed} is already in reference version 1"),
    ]
    for batch_id, message in cases:
        code, out, err = _cli(
            capsys, "reference", "promote", batch_id, "--actor", "ana", "--config", cfg
        )
        assert code == 2 and out == ""
        assert err.count("\n") == 1 and message in err, err
    code, _, err = _cli(capsys, "reference", "promote", waiting, "--actor", " ", "--config", cfg)
    assert code == 2 and "the promoter's name" in err
    assert [v.version for v in store.references()] == [1]  # nothing was written
    fine = by_file["partner/batch-04-clean.parquet"].batch_id
    review(store, fine, "release", by="ana", note="held whole by the source alarm; clean")
    with pytest.raises(ReviewError, match="no batch 'nope'"):
        store.promote([fine, "nope"], actor="ana")
    assert [v.version for v in store.references()] == [1]  # all or nothing


# ----------------------------------------------------------------------------- (e) the cap


def test_one_source_may_not_hold_more_than_its_share_of_the_reference(demo_project):
    """With max_source_share 0.2, a second batch from one source folder is refused once the
    source would hold more than 20% of the reference; another source is not."""
    clean = _fresh_landing(demo_project)
    path = demo_project / "poisonguard.toml"
    text = path.read_text()
    path.write_text(re.sub(r"max_source_share = \S+", "max_source_share = 0.2", text))
    config = load_config(path)
    assert config.reference.max_source_share == 0.2
    store = open_store(config)
    n_seed = _seed_rows(demo_project)
    first = _land(config, "partner/monday.parquet", clean.iloc[:100])
    second = _land(config, "partner/tuesday.parquet", clean.iloc[100:200])
    other = _land(config, "other/monday.parquet", clean.iloc[200:269])
    assert first.batch_id != second.batch_id
    for b in (first, second, other):
        _settle(store, b.batch_id)
    share = config.reference.max_source_share
    store.promote([first.batch_id], actor="ana", max_source_share=share)
    with pytest.raises(ReviewError, match=r"the source 'partner' .* allows 20\.0%"):
        store.promote([second.batch_id], actor="ana", max_source_share=share)
    assert store.reference().version == 2
    both = store.batch(first.batch_id).rows_clean + store.batch(second.batch_id).rows_clean
    assert both / (n_seed + both) > share  # the refusal is the cap's, not a coincidence
    done = store.promote([other.batch_id], actor="ana", max_source_share=share)
    assert done.version == 3 and other.batch_id in done.batch_ids


def test_max_source_share_is_checked_at_config_load(demo_project):
    path = demo_project / "poisonguard.toml"
    path.write_text(re.sub(r"max_source_share = \S+", "max_source_share = 0", path.read_text()))
    with pytest.raises(ConfigError, match=r"reference\.max_source_share must be in \(0, 1\]"):
        load_config(path)


# ----------------------------------------------------------------------------- (d) migration


def _append(db: sqlite3.Connection, key: bytes, action: str, batch_id: str, detail: dict) -> None:
    """An audit entry as a version-2 poisonguard appended it."""
    last = db.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    prev, at = (last[0] if last else GENESIS), now()
    text = json.dumps(detail, sort_keys=True, default=str)
    digest = Store._entry_hash(prev, at, action, batch_id, "poisonguard", text)
    mac = hmac.new(key, digest.encode(), hashlib.sha256).hexdigest()
    db.execute(
        "INSERT INTO audit (at, action, batch_id, actor, detail, prev_hash, hash, mac) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (at, action, batch_id, "poisonguard", text, prev, digest, mac),
    )


def _v2_store(project: Path, batches: list[tuple[str, str, pd.DataFrame]]) -> None:
    """Replace the project's store by one a version-2 poisonguard wrote: schema 2, these
    (batch id, status, rows) committed clean, each with its ingest audit entry, anchored."""
    root = project / "store"
    shutil.rmtree(root)
    key_path = project / "store.key"
    key = bytes.fromhex(key_path.read_text().strip())
    for sub in ("clean", "quarantine", "rejected", "reports", "staging"):
        (root / sub).mkdir(parents=True, mode=0o700)
    with sqlite3.connect(root / "ledger.sqlite", isolation_level=None) as db:
        db.executescript(_SCHEMA)
        db.execute("PRAGMA user_version = 2")
        for batch_id, status, frame in batches:
            frame = frame.reset_index(drop=True).copy()
            frame["pg_batch"] = batch_id
            frame["pg_row"] = np.arange(len(frame), dtype=np.int64)
            frame["pg_row_hash"] = row_hashes(frame, data_columns(frame), key=None)  # as main did
            data = parquet_bytes(frame)
            rel = f"clean/{batch_id}.parquet"
            (root / rel).write_bytes(data)
            sha, at, n = hashlib.sha256(data).hexdigest(), now(), len(frame)
            content = hashlib.sha256(batch_id.encode()).hexdigest()
            db.execute(
                "INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, 0, 0, NULL, ?, ?)",
                (batch_id, content, f"{batch_id}.parquet", status, n, n, at, at),
            )
            db.execute(
                "INSERT INTO files VALUES (?, ?, 'clean', ?, ?, ?)", (rel, batch_id, sha, n, at)
            )
            detail = {
                "source": f"{batch_id}.parquet",
                "sha256": content,
                "status": status,
                "rows_in": n,
                "rows_clean": n,
                "rows_quarantined": 0,
                "rows_rejected": 0,
                "files": {rel: sha},
            }
            _append(db, key, "ingest", batch_id, detail)
        seq, digest = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC").fetchone()
    mac = hmac.new(key, f"{seq}:{digest}".encode(), hashlib.sha256).hexdigest()
    head = {"head": {"seq": seq, "hash": digest, "mac": mac}}
    (root / "anchor.json").write_text(json.dumps(head))


def _user_version(store_root: Path) -> int:
    with sqlite3.connect(store_root / "ledger.sqlite") as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def test_a_version_2_ledger_is_migrated_with_its_seed_as_reference_version_1(demo_project):
    """Opening a schema-2 store migrates it in one transaction: its batches stay, version 1
    is its seed, the step is in the audit chain, the gate passes and the next batch is judged
    by version 1. Opening it again changes nothing."""
    clean = _fresh_landing(demo_project)
    config = load_config(demo_project / "poisonguard.toml")
    trusted = pd.read_parquet(demo_project / "trusted.parquet")
    _v2_store(
        demo_project,
        [("seed-old", "seed", trusted), ("accepted-old", "committed", clean.iloc[:50])],
    )
    assert _user_version(config.store) == 2
    store = open_store(config)
    assert _user_version(config.store) == SCHEMA_VERSION == 5
    assert {(b.batch_id, b.rows_clean, b.reference_version) for b in store.batches()} == {
        ("seed-old", len(trusted), None),
        ("accepted-old", 50, None),
    }
    (v1,) = store.references()
    assert v1.version == 1 and v1.batch_ids == ("seed-old",) and v1.rows == len(trusted)
    actions = [e["action"] for e in store.audit_log()]
    # 2 -> 3 (the seed as reference version 1), 3 -> 4 (the blocklist keyed; empty), 4 -> 5.
    assert actions == ["ingest", "ingest", "reference", "migrate", "migrate", "migrate"]
    migrate = json.loads(store.audit_log()[-3]["detail"])
    assert (migrate["from"], migrate["to"]) == (2, 3)
    assert migrate["reference"]["digest"] == v1.digest
    sampled = json.loads(store.audit_log()[-1]["detail"])
    assert (sampled["from"], sampled["to"]) == (4, 5)
    assert v1.sample is not None and sampled["sample"]["sha256"] == v1.sample.sha256
    assert store.verify_audit() is None
    assert len(gate(config)) == len(trusted) + 50

    open_store(config)
    assert len(store.audit_log()) == 7  # the six, and the gate's entry: no second migration
    assert _land(config, "b1.parquet", clean.iloc[50:150]).reference_version == 1


def test_a_failed_migration_leaves_the_version_2_ledger_as_it_was(demo_project):
    """Without the audit key the step cannot be recorded, so none of it is written."""
    trusted = pd.read_parquet(demo_project / "trusted.parquet")
    config = load_config(demo_project / "poisonguard.toml")
    _v2_store(demo_project, [("seed-old", "seed", trusted)])
    key = demo_project / "store.key"
    key.rename(demo_project / "elsewhere.key")
    with pytest.raises(StoreError, match=r"audit key .* is missing"):
        open_store(config)
    assert _user_version(config.store) == 2
    with sqlite3.connect(config.store / "ledger.sqlite") as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
        columns = {r[1] for r in db.execute("PRAGMA table_info(batches)")}
    assert "reference_versions" not in tables and "reference_version" not in columns
