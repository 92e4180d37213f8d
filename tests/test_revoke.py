"""Retroactive re-scan and revocation (issue 11, item 5): accepted rows can be taken back."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from poisonguard.config import Config, load_config
from poisonguard.demo import LABEL
from poisonguard.errors import GateError, ReviewError
from poisonguard.gate import gate
from poisonguard.pipeline import fit_guard, process_landing, rescan
from poisonguard.review import held_rows, review, revoke
from poisonguard.store import CRASH_ENV, Store, open_store
from test_reference import _cli, _flipped_copies, _fresh_landing, _land, _settle


def _start(project: Path) -> tuple[pd.DataFrame, str, Config, Store]:
    """The demo project with an empty landing folder: clean rows to build batches from, the
    config's path, the config and the store."""
    clean = _fresh_landing(project)
    cfg = str(project / "poisonguard.toml")
    config = load_config(cfg)
    return clean, cfg, config, open_store(config)


def _revoke_cli(capsys, cfg: str, batch_id: str, note: str) -> tuple[int, str, str]:
    return _cli(
        capsys, "review", "revoke", batch_id, "--actor", "bo", "--note", note, "--config", cfg
    )


def _places(store: Store, config, batch_id: str) -> dict[str, set[int]]:
    """Where each row of a batch is now: in the gate's training set, awaiting review, or
    rejected (a reviewer's rejection, or its batch's revocation)."""
    trained = gate(config, provenance=True)
    held = held_rows(store, batch_id)
    by_state = {
        state: set(held.loc[held["pg_review"] == state, "pg_row"].astype(int))
        for state in ("pending", "reject")
    }
    return {
        "training": set(trained.loc[trained["pg_batch"] == batch_id, "pg_row"].astype(int)),
        "awaiting": by_state["pending"],
        "rejected": by_state["reject"],
    }


def _exactly_once(places: dict[str, set[int]], rows_in: int) -> bool:
    """Every input row is in exactly one place."""
    sizes = sum(len(rows) for rows in places.values())
    return sizes == rows_in and set().union(*places.values()) == set(range(rows_in))


# ----------------------------------------------------------------------------- revoke


def test_revoking_a_promoted_batch_takes_it_out_of_the_training_set_and_the_reference(
    demo_project, capsys
):
    """`review revoke` on a promoted batch: its rows leave the gate's training set and
    manifest (its file stays on disk, listed as revoked), the revoke and a new reference
    version without it are audited, the chain verifies, the next batch is judged by the new
    version, and its rows re-sent under new ids are held by the blocklist. A re-scan's
    checkpoint is the source's newest batch in the reference. Revoking again changes nothing."""
    clean, cfg, config, store = _start(demo_project)
    first = _land(config, "b1.parquet", clean.iloc[:100])
    _settle(store, first.batch_id)
    store.promote([first.batch_id], actor="ana", note="looked fine")
    second = _land(config, "b2.parquet", clean.iloc[100:200])
    assert second.reference_version == 2
    scan = rescan(config, store)
    assert [(s.checkpoint, s.batches) for s in scan.scopes] == [
        (first.batch_id, (second.batch_id,))
    ]
    before = gate(config, provenance=True)
    n_first = store.batch(first.batch_id).rows_clean
    assert (before["pg_batch"] == first.batch_id).sum() == n_first > 0

    code, out, err = _revoke_cli(capsys, cfg, first.batch_id, "partner hacked")
    assert code == 0, err
    assert f"revoked {first.batch_id}: {n_first} rows left the training set" in out
    assert "reference: version 3" in out

    after = gate(config, provenance=True)
    assert first.batch_id not in set(after["pg_batch"])
    assert len(after) == len(before) - n_first
    manifest = demo_project / "manifest.json"
    assert _cli(capsys, "gate", "--config", cfg, "--manifest", str(manifest))[0] == 0
    doc = json.loads(manifest.read_text())
    assert first.batch_id not in {s["annotations"]["batch_id"] for s in doc["subject"]}
    doc = doc["predicate"]
    assert doc["reference"]["version"] == 3
    assert first.batch_id not in doc["reference"]["batches"]
    (kept,) = store.files("revoked")
    assert kept.batch_id == first.batch_id and (store.root / kept.path).is_file()
    record = store.batch(first.batch_id)
    assert (record.status, record.rows_clean, record.rows_rejected) == ("revoked", 0, 100)

    revoked, referenced = [e for e in store.audit_log() if e["batch_id"] == first.batch_id][-2:]
    assert (revoked["action"], revoked["actor"]) == ("revoke", "bo")
    assert json.loads(revoked["detail"])["note"] == "partner hacked"
    assert json.loads(referenced["detail"])["removed"] == [first.batch_id]
    assert store.verify_audit() is None
    v3 = store.reference()
    assert v3.version == 3 and v3.batch_ids == store.references()[0].batch_ids  # the seed
    assert fit_guard(config, store).reference_.X.shape[0] == v3.rows
    scan = rescan(config, store)
    assert [(s.checkpoint, s.batches) for s in scan.scopes] == [(None, (second.batch_id,))]

    again = clean.iloc[:10].copy()
    again["row_id"] = np.arange(500_000, 500_010)
    third = _land(config, "b3.parquet", pd.concat([again, clean.iloc[200:260]]))
    assert third.reference_version == 3
    held = store.quarantine_frame(third.batch_id)
    assert set(held.loc[held["pg_stage"] == "blocklist", "pg_row"]) == set(range(10))

    n_entries = len(store.audit_log())
    code, out, _ = _revoke_cli(capsys, cfg, first.batch_id, "again")
    assert code == 0 and "was already revoked on" in out and "nothing changed" in out
    assert len(store.audit_log()) == n_entries


def test_a_revoked_batch_listed_again_behind_the_audit_fails_the_gate(demo_project, capsys):
    """After a revocation the gate passes; a revoked file re-listed as clean, the batch set
    back to committed with its old counts, or its rows taken off the blocklist, each without
    an audit entry, fail it."""
    clean, _, config, store = _start(demo_project)
    first = _land(config, "b1.parquet", clean.iloc[:100])
    held = store.batch(first.batch_id).rows_quarantined
    revoke(store, first.batch_id, actor="bo", note="bad source")
    assert store.batch(first.batch_id).rows_rejected == 100
    assert len(held_rows(store, first.batch_id)) == held  # awaiting rows rejected with it
    gate(config)
    edits = [
        ("UPDATE files SET kind = 'clean' WHERE batch_id = ? AND kind = 'revoked'", "as revoked"),
        (
            f"UPDATE batches SET status = 'committed', rows_clean = {100 - held}, "
            f"rows_quarantined = {held}, rows_rejected = 0 WHERE batch_id = ?",
            "the ledger was edited",
        ),
        ("DELETE FROM blocklist WHERE batch_id = ?", "blocklist"),
    ]
    saved = demo_project / "saved-store"
    shutil.copytree(store.root, saved)
    for sql, expect in edits:
        with sqlite3.connect(store.ledger_path) as db:
            db.execute(sql, (first.batch_id,))
        with pytest.raises(GateError, match=expect):
            gate(config)
        shutil.rmtree(store.root)
        shutil.copytree(saved, store.root)
    gate(config)


def test_revoke_and_rescan_refuse_bad_inputs_in_one_line(demo_project, capsys):
    """Revoking an unknown batch, one rejected whole or the seed, or without a name or a
    note, fails with one line and writes nothing; so do a re-scan of an unknown source or
    since an unknown batch, and a review of a revoked batch's rows."""
    clean, cfg, config, store = _start(demo_project)
    (config.landing / "broken.csv").write_text("just,a\n1,2\n")
    (rejected,) = process_landing(config).records
    assert rejected.status == "rejected"
    fine = _land(config, "partner/b1.parquet", clean.iloc[:60])
    seed = store.references()[0].batch_ids[0]
    entries = len(store.audit_log())
    cases = [
        (("review", "revoke", "nope", "--actor", "bo", "--note", "x"), "no batch 'nope' in"),
        (
            ("review", "revoke", rejected.batch_id, "--actor", "bo", "--note", "x"),
            f"batch {rejected.batch_id} was rejected whole",
        ),
        (("review", "revoke", seed, "--actor", "bo", "--note", "x"), "is the trusted seed"),
        (("review", "revoke", fine.batch_id, "--actor", " ", "--note", "x"), "reviewer's name"),
        (("review", "revoke", fine.batch_id, "--actor", "bo", "--note", ""), "a note saying why"),
        (("rescan", "--source", "nobody"), "no committed batch from the source 'nobody'"),
        (("rescan", "--since", "nope"), "no batch 'nope' in"),
        (
            ("rescan", "--source", "default", "--since", fine.batch_id),
            f"batch {fine.batch_id} came from the source 'partner', not 'default'",
        ),
    ]
    for argv, message in cases:
        code, out, err = _cli(capsys, *argv, "--config", cfg)
        assert code == 2 and out == "", (argv, out)
        assert err.count("\n") == 1 and message in err, (argv, err)
    assert len(store.audit_log()) == entries
    assert store.batch(fine.batch_id).status == "committed"
    revoke(store, fine.batch_id, actor="bo", note="bad source")
    with pytest.raises(ReviewError, match=r"was revoked on .* by bo: bad source"):
        review(store, fine.batch_id, "release", by="ana", note="x")


# ----------------------------------------------------------------------------- rescan


def test_rescan_holds_released_poison_for_review_again(demo_project, capsys):
    """Flipped rows a reviewer released by mistake are in the training set. `rescan` finds
    them against the pinned reference (exit 1, naming batch and row); `--hold` moves them
    from the clean files to quarantine with stage `rescan`, the gate then leaves them out and
    passes, and every row of the batch is still in exactly one place. The re-held rows are
    reviewed like any held row: one released again, the others rejected."""
    clean, cfg, config, store = _start(demo_project)
    seed = pd.read_parquet(demo_project / "trusted.parquet")
    flips = _flipped_copies(seed[seed[LABEL] == 3].head(8), 1, 100_000, seed=0)
    first = _land(config, "b1.parquet", pd.concat([clean.iloc[:120], flips], ignore_index=True))
    caught = set(store.quarantine_frame(first.batch_id)["pg_row"])
    assert len(caught & set(range(120, 128))) >= 6
    review(store, first.batch_id, "release", by="ana", note="looked fine to me")
    store.clear_source("default", actor="ana", note="looked fine to me")  # the same mistake
    second = _land(config, "b2.parquet", clean.iloc[120:200])
    assert _places(store, config, first.batch_id)["training"] == set(range(128))

    code, out, err = _cli(capsys, "rescan", "--config", cfg)
    assert code == 1, err
    assert "--hold moves them" in out and f"{first.batch_id} row 12" in out
    report = rescan(config, store)
    flagged = set(report.pg_row[report.batch_id == first.batch_id].tolist())
    assert len(flagged & set(range(120, 128))) >= 6
    assert len(flagged - set(range(120, 128))) <= 2
    assert report.held_per_batch[second.batch_id] <= 2
    assert all(r.startswith("re-scan against reference version 1: ") for r in report.reason)

    code, out, err = _cli(capsys, "rescan", "--hold", "--by", "carl", "--config", cfg)
    assert code == 0, err
    assert f"held {len(report.pg_row)} rows" in out
    places = _places(store, config, first.batch_id)
    assert places["awaiting"] == flagged
    assert _exactly_once(places, 128)
    assert store.batch(first.batch_id).rows_quarantined == len(flagged)
    held = held_rows(store, first.batch_id)
    again = held[held["pg_review"] == "pending"]
    assert (again["pg_stage"] == "rescan").all() and len(again) == len(flagged)
    assert store.files("superseded") and store.verify_audit() is None
    (entry,) = [
        e for e in store.audit_log() if (e["action"], e["batch_id"]) == ("rescan", first.batch_id)
    ]
    detail = json.loads(entry["detail"])
    assert entry["actor"] == "carl" and detail["rows"] == sorted(flagged)
    assert set(detail["reopened"]) == flagged & caught  # released rows, reviewable again

    keep = int(again["pg_row"].iloc[-1])  # the least suspicious
    review(store, first.batch_id, "release", by="ana", note="honest", rows=[keep])
    review(store, first.batch_id, "reject", by="ana", note="poison after all")
    places = _places(store, config, first.batch_id)
    assert places["awaiting"] == set() and places["rejected"] == flagged - {keep}
    assert keep in places["training"] and _exactly_once(places, 128)
    assert store.verify_audit() is None


def _released_flips_then_copies(project: Path) -> tuple[str, Config, Store, Any, Any, Any]:
    """Eight flipped rows a reviewer released by mistake (batch ``first`` of source
    ``partner``), a batch of another source (``other``), then a ``partner`` batch with
    copies of three of the flips, held (``third``): the config's path, the config, the
    store and the three batches' records."""
    clean, cfg, config, store = _start(project)
    seed = pd.read_parquet(project / "trusted.parquet")
    threes = seed[seed[LABEL] == 3].head(8)
    flips = _flipped_copies(threes, 1, 100_000, seed=0)
    first = _land(config, "partner/b1.parquet", pd.concat([clean.iloc[:120], flips]))
    review(store, first.batch_id, "release", by="ana", note="looked fine to me")
    store.clear_source("partner", actor="ana", note="looked fine to me")
    other = _land(config, "b2.parquet", clean.iloc[120:200])
    training = store.clean_frame()
    assert set(training.loc[training["pg_batch"] == first.batch_id, "pg_row"]) == set(range(128))
    third = _land(
        config,
        "partner/b3.parquet",
        pd.concat([clean.iloc[200:260], flips.head(3).assign(row_id=[200_000, 200_001, 200_002])]),
    )
    assert len(store.quarantine_frame(third.batch_id))
    return cfg, config, store, first, other, third


def _reject(batch_id: str, cfg: str) -> tuple[str, ...]:
    """`poisonguard review reject` of every held row of a batch."""
    return ("review", "reject", batch_id, "--by", "carl", "--note", "flips", "--config", cfg)


def test_rejecting_rows_re_scans_their_source_and_takes_back_released_copies(demo_project, capsys):
    """Flipped rows a reviewer released by mistake are in the training set. The same source
    later sends copies of three of them, which are held, and a reviewer rejects those
    (`review reject`): the source's accepted rows are re-scanned at once, and the three
    released originals, near-copies of rejected rows now, go back to quarantine (stage
    `rescan`, the rejection named in the audit entry). The other released flips stay
    released (a release overrides the detectors, not a later rejection), every row is still
    in exactly one place, and another source's batch is not touched."""
    cfg, config, store, first, other, third = _released_flips_then_copies(demo_project)
    training = store.clean_frame()
    others = set(training.loc[training["pg_batch"] == other.batch_id, "pg_row"])
    code, out, err = _cli(capsys, *_reject(third.batch_id, cfg))
    assert code == 0, err
    assert "accepted rows of source partner: held" in out
    rejected = held_rows(store, third.batch_id)
    rejected = rejected.loc[rejected["pg_review"] == "reject", "row_id"]
    originals = {120 + i - 200_000 for i in rejected if i >= 200_000}  # their rows in b1
    assert originals
    places = _places(store, config, first.batch_id)
    assert places["awaiting"] == originals
    assert set(range(123, 128)) <= places["training"]  # released, and no copy rejected
    assert _exactly_once(places, 128)
    (entry,) = [
        e for e in store.audit_log() if (e["action"], e["batch_id"]) == ("rescan", first.batch_id)
    ]
    assert f"rows of batch {third.batch_id} were rejected" in json.loads(entry["detail"])["note"]
    assert _places(store, config, other.batch_id)["training"] == others


def test_a_rejection_killed_after_its_re_scan_has_held_what_the_re_scan_found(demo_project, capsys):
    """`review reject` re-scans the source before it records the rejection. Killed in
    between, the released originals of the rows to reject are already back in quarantine
    and those rows still await review (fail closed: never a rejection whose re-scan was
    lost); the same command again rejects them, and every row is in exactly one place."""
    cfg, config, store, first, _, third = _released_flips_then_copies(demo_project)
    copies = held_rows(store, third.batch_id)["row_id"]
    originals = {120 + i - 200_000 for i in copies if i >= 200_000}
    assert originals
    env = {**os.environ, CRASH_ENV: "after-rejection-rescan"}
    command = [sys.executable, "-m", "poisonguard.cli", *_reject(third.batch_id, cfg)]
    killed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    store = open_store(config)
    assert _places(store, config, first.batch_id)["awaiting"] == originals
    assert set(held_rows(store, third.batch_id)["pg_review"]) == {"pending"}

    code, out, err = _cli(capsys, *_reject(third.batch_id, cfg))
    assert code == 0, err
    assert "re-scanned" in out
    # Every row of the batch awaiting review now, the re-scan's own holds among them.
    third_places = _places(store, config, third.batch_id)
    assert third_places["rejected"] == set(held_rows(store, third.batch_id)["pg_row"])
    places = _places(store, config, first.batch_id)
    assert places["awaiting"] >= originals
    assert _exactly_once(places, 128)


def test_rejecting_rows_again_says_which_were_already_rejected(demo_project, capsys):
    """A rejection of rows some of which were rejected before re-scans for the new ones only,
    and says how many of those asked for were already rejected."""
    cfg, _, store, _, _, third = _released_flips_then_copies(demo_project)
    first, second = sorted(held_rows(store, third.batch_id)["pg_row"].astype(int))[:2]
    code, out, err = _cli(capsys, *_reject(third.batch_id, cfg), "--rows", str(first))
    assert code == 0 and "rejected 1 rows of" in out, err
    code, out, err = _cli(capsys, *_reject(third.batch_id, cfg), "--rows", f"{first},{second}")
    assert code == 0, err
    assert "rejected 1 rows of" in out and "1 were already rejected" in out
    assert "re-scanned" in out


def test_rescan_after_revoking_a_poisoned_reference_batch_finds_what_it_vouched_for(
    demo_project,
):
    """Flips released and promoted into the reference vouch for their near-copies in the next
    batch, which are accepted. Revoking the promoted batch drops it from the reference; a
    re-scan then finds the accepted near-copies, and `hold_rescanned` takes them out of the
    training set, with every row of the batch still in exactly one place."""
    clean, _, config, store = _start(demo_project)
    seed = pd.read_parquet(demo_project / "trusted.parquet")
    threes = seed[seed[LABEL] == 3].head(8)
    first = _land(config, "b1.parquet", _flipped_copies(threes, 12, 100_000, seed=0))
    review(store, first.batch_id, "release", by="ana", note="looked fine to me")
    store.clear_source("default", actor="ana", note="looked fine to me")
    store.promote([first.batch_id], actor="ana")
    batch = pd.concat(
        [clean.head(150), _flipped_copies(threes, 1, 200_000, seed=1)], ignore_index=True
    )
    # From another source, whose backdoor window does not hold the first batch's copies.
    second = _land(config, "partner/b2.parquet", batch)
    assert second.reference_version == 2
    poison = set(range(150, 158))
    accepted = poison - set(store.quarantine_frame(second.batch_id)["pg_row"])
    assert len(accepted) >= 6  # vouched for by the poisoned reference

    revoke(store, first.batch_id, actor="bo", note="the flips were poison")
    report = rescan(config, store)
    assert report.reference_version == 3
    flagged = set(report.pg_row[report.batch_id == second.batch_id].tolist())
    assert accepted <= flagged and len(flagged - poison) <= 2
    done = store.hold_rescanned(report.flagged(), actor="bo", note="after the revocation")
    assert done == {second.batch_id: len(flagged)}
    places = _places(store, config, second.batch_id)
    assert not places["training"] & poison
    assert _exactly_once(places, len(batch))
    assert rescan(config, store).pg_row.size == 0  # nothing left to find
