"""Retention: quarantine and rejected data past their age are purged, with an audit entry.

Every test takes the demo through the real pipeline (``process_landing``) and real
reviews, then asks about a later ``now``: the library takes it as a parameter, the
command line reads ``retention.utc_now``, which the CLI tests move forward.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from poisonguard.cli import main
from poisonguard.config import load_config
from poisonguard.errors import ConfigError
from poisonguard.gate import check
from poisonguard.pipeline import process_landing
from poisonguard.review import held_rows, review
from poisonguard.store import CRASH_ENV, PURGED, open_store
from poisonguard.store import retention as retention_module

RETENTION = '\n[retention]\nquarantine_days = 30\nrejected_days = 7\nunreviewed = "{}"\n'


def _configure(root: Path, unreviewed: str = "keep", extra: str = "") -> Path:
    with open(root / "poisonguard.toml", "a") as f:
        f.write(RETENTION.format(unreviewed) + extra)
    return root / "poisonguard.toml"


def _ingested(root: Path, unreviewed: str = "keep") -> tuple:
    """The demo run with ``[retention]``, the label-flips batch reviewed (two rows released,
    the rest rejected), its source cleared. Returns the config, the store, the flips batch,
    its rejected rows (as they were held) and the batch rejected whole."""
    config = load_config(_configure(root, unreviewed))
    run = process_landing(config)
    assert run.purge == {"batches": [], "rows": 0, "files": 0}  # nothing is a day old yet
    store = open_store(config)
    flips = next(r for r in store.batches() if "label-flips" in r.source)
    held = held_rows(store, flips.batch_id)
    released = held["pg_row"].iloc[:2].tolist()
    review(store, flips.batch_id, "release", by="ana", note="fine", rows=released)
    review(store, flips.batch_id, "reject", by="ana", note="flipped labels")
    store.clear_source("labelling", actor="ana", note="flips rejected")
    rejected = held[~held["pg_row"].isin(released)]
    whole = next(r for r in store.batches() if r.status == "rejected")
    return config, store, flips.batch_id, rejected, whole.batch_id


def _later(days: float) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)


def _bytes_under(root: Path) -> dict[str, str]:
    """Every file under the store's data folders and reports, by path, with its SHA-256."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for sub in ("clean", "quarantine", "rejected", "reports")
        for p in sorted((root / sub).rglob("*"))
        if p.is_file()
    }


def test_purge_removes_exactly_the_due_files_keeps_history_and_the_gate_passes(demo_project):
    """Rejected data goes after rejected_days, a reviewed quarantine after quarantine_days;
    nothing else changes, the ledger lists the files as purged, one audit entry records it
    without row values, the chain verifies and the gate passes."""
    config, store, flips, rejected, whole = _ingested(demo_project)
    before = _bytes_under(store.root)
    settings = config.retention

    # A week and a day on: only the batch rejected whole is due.
    plan = store.due(settings, _later(8))
    assert [(d.batch_id, d.kind) for d in plan.due] == [(whole, "rejected")]
    assert store.due(settings, _later(6)).due == ()

    # A month on: the reviewed flips quarantine too; held rows nobody reviewed are overdue.
    at = _later(31)
    plan = store.due(settings, at)
    assert sorted((d.batch_id, d.kind) for d in plan.due) == sorted(
        [(whole, "rejected"), (flips, "quarantine")]
    )
    overdue = {d.batch_id for d in plan.overdue}
    waiting = {b.batch_id for b in store.batches() if b.rows_quarantined}
    assert overdue == waiting and flips not in overdue and waiting
    assert all(d.unreviewed > 0 and not d.reviewed for d in plan.overdue)
    flips_due = next(d for d in plan.due if d.batch_id == flips)
    assert flips_due.reviewed and flips_due.rows == len(held_rows(store, flips))
    # Its age counts from the last review decision, not from the batch's commit.
    decided = max(r.at for r in store.ledger.reviews(flips))
    assert flips_due.since == decided != store.batch(flips).finished_at

    done = store.purge(settings, actor="dpo", now=at)
    gone = {p for d in done.purged for p in d.files}
    assert gone == {f"quarantine/{flips}.parquet"} | {
        p for p in before if p.startswith(f"rejected/{whole}/")
    }
    reports = {f"reports/{b}.{ext}" for b in (flips, whole) for ext in ("html", "json")}
    assert reports <= set(before)
    after = _bytes_under(store.root)
    assert set(before) - set(after) == gone | reports
    assert {p: before[p] for p in after} == after  # nothing else changed, byte for byte
    assert not (store.root / "rejected" / whole).exists()

    # The history stays: the files are listed as purged, with the hashes they had.
    listed = {f.path: f for f in store.files()}
    assert {p for p, f in listed.items() if f.kind == PURGED} == gone

    # One audit entry, naming batches, counts and files, no row values; the chain verifies.
    entry = store.audit_log()[-1]
    assert entry["action"] == "purge" and entry["actor"] == "dpo"
    detail = json.loads(entry["detail"])
    assert {b["batch_id"] for b in detail["batches"]} == {flips, whole}
    assert set(detail["purged_files"]) == gone and set(detail["reports"]) == reports
    assert set(detail) == {"batches", "rows", "purged_files", "reports", "policy"}
    for part in detail["batches"]:
        assert set(part) == {"batch_id", "kind", "rows", "unreviewed", "since", "files"}
    assert not any(h in entry["detail"] for h in rejected["pg_row_hash"])
    assert store.verify_audit() is None
    assert main(["audit", "verify", "--config", str(config.path)]) == 0

    report = check(config)
    assert report.ok, report.reasons
    assert store.rejected_rows().empty  # the only rejected rows were the purged ones
    assert store.due(settings, at).due == ()  # a second purge finds nothing
    assert store.purge(settings, actor="dpo", now=at).purged == ()
    assert store.audit_log()[-1]["action"] == "gate"  # ... and writes no entry


def _resend_after_purge(root: Path, fresh_rows: int) -> None:
    """Purge the demo's rejected rows, send one again after ``fresh_rows`` clean ones: it is
    held as a copy of the rejected row, its reason naming the rejection."""
    config, store, flips, rejected, _ = _ingested(root)
    store.purge(config.retention, actor="dpo", now=_later(31))
    assert store.quarantine_frame(flips).empty
    data = [c for c in rejected.columns if not str(c).startswith("pg_")]
    fresh = pd.read_parquet(root / "landing" / "partner" / "batch-04-clean.parquet").head(
        fresh_rows
    )
    resent = pd.concat([fresh, rejected[data].head(1)], ignore_index=True)
    resent.to_parquet(config.landing / "batch-06-resent.parquet", index=False)
    process_landing(config)
    new = next(r for r in store.batches() if "resent" in r.source)
    hit = store.quarantine_frame(new.batch_id).set_index("pg_row").loc[fresh_rows]
    assert hit["pg_stage"] == "blocklist"
    assert hit["pg_reason"].startswith("copy of a row rejected on ")
    assert f"by ana (batch {flips}, row {rejected['pg_row'].iloc[0]}" in hit["pg_reason"]
    assert "since purged" in hit["pg_reason"]


def test_a_purged_rejected_row_sent_again_is_still_refused(demo_project):
    """The blocklist keeps the hashes of purged rejected rows: an exact copy arriving later
    is held, naming the rejection, though its content is gone."""
    _resend_after_purge(demo_project, 30)


def test_a_purged_rejected_row_sent_again_in_a_chunked_batch_is_still_refused(
    demo_inputs, tmp_path
):
    """The same on the chunked path (``[execution]``), the row in a later chunk."""
    from poisonguard.demo import LABEL
    from poisonguard.initialize import init_dataset

    root = tmp_path / "demo"
    shutil.copytree(demo_inputs, root)
    # No id column: its uniqueness rule needs the whole batch (tests/test_streaming.py).
    init_dataset(root / "trusted.parquet", label=LABEL, directory=root, name="digits")
    with open(root / "poisonguard.toml", "a") as f:
        f.write("\n[execution]\nchunk_bytes = 4096\nchunk_rows = 37\n")
    _resend_after_purge(root, 80)


def test_unreviewed_rows_are_kept_under_keep_and_purged_as_rejected_under_purge(
    demo_project, tmp_path
):
    """'keep' never purges rows nobody reviewed; 'purge' does after quarantine_days, counting
    them as rejected (not blocklisted), and the gate's replay agrees."""
    other = tmp_path / "other"
    shutil.copytree(demo_project, other)
    config, store, *_ = _ingested(demo_project, "keep")
    waiting = {b.batch_id: b.rows_quarantined for b in store.batches() if b.rows_quarantined}
    store.purge(config.retention, actor="dpo", now=_later(400))
    assert {b.batch_id: b.rows_quarantined for b in store.batches() if b.rows_quarantined} == (
        waiting
    )
    for batch_id in waiting:
        assert len(held_rows(store, batch_id)) >= waiting[batch_id]

    config, store, *_ = _ingested(other, "purge")
    assert [d.kind for d in store.due(config.retention, _later(29)).due] == ["rejected"]
    blocked = store.blocklist()
    before = {b.batch_id: b for b in store.batches()}
    waiting = {b.batch_id: b.rows_quarantined for b in before.values() if b.rows_quarantined}
    done = store.purge(config.retention, actor="dpo", now=_later(31))
    assert set(waiting) <= {d.batch_id for d in done.purged}
    for batch_id, n in waiting.items():
        rec = store.batch(batch_id)
        assert rec.rows_quarantined == 0
        assert rec.rows_rejected == before[batch_id].rows_rejected + n
        assert store.quarantine_frame(batch_id).empty
    assert store.blocklist() == blocked
    report = check(config)
    assert report.ok, report.reasons


def test_status_and_the_purge_command_show_and_purge_what_is_due(demo_project, capsys, monkeypatch):
    """`status` lists due data and overdue reviews; `purge --dry-run` removes nothing;
    `purge --by` purges; an empty purge says so."""
    config, store, flips, _, whole = _ingested(demo_project)
    cfg = str(config.path)
    capsys.readouterr()
    assert main(["status", "--config", cfg]) == 0
    assert "retention: nothing due" in capsys.readouterr().out

    monkeypatch.setattr(retention_module, "utc_now", lambda: _later(31))
    assert main(["status", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "retention: quarantine data of 1 batches due for purge" in out
    assert "retention: rejected data of 1 batches due for purge" in out
    assert "overdue for review" in out
    assert main(["status", "--json", "--config", cfg]) == 0
    doc = json.loads(capsys.readouterr().out)["retention"]
    assert {d["batch_id"] for d in doc["due"]} == {flips, whole}
    assert doc["overdue_review"] and all(not d["reviewed"] for d in doc["overdue_review"])

    files = _bytes_under(store.root)
    assert main(["purge", "--dry-run", "--by", "dpo", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert flips in out and whole in out and _bytes_under(store.root) == files
    assert main(["purge", "--by", "dpo", "--config", cfg]) == 0
    assert "purged " in capsys.readouterr().out
    assert main(["purge", "--by", "dpo", "--config", cfg]) == 0
    assert "nothing due" in capsys.readouterr().out
    assert main(["status", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "due for purge" not in out and "overdue for review" in out


def test_purge_without_retention_is_a_config_error(demo_project, capsys):
    cfg = str(demo_project / "poisonguard.toml")
    assert main(["purge", "--by", "dpo", "--config", cfg]) == 2
    assert "sets no age" in capsys.readouterr().err
    assert load_config(cfg).retention.enabled is False  # the default: nothing changes


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("quarantine_days = 0", r"retention\.quarantine_days must be an int >= 1"),
        ("rejected_days = -3", r"retention\.rejected_days must be an int >= 1"),
        ("quarantine_days = 1.5", r"retention\.quarantine_days must be of type int"),
        ('rejected_days = "30"', r"retention\.rejected_days must be of type int"),
        ("quarantine_days = true", r"retention\.quarantine_days must be of type int"),
        ('unreviewed = "later"', r"retention\.unreviewed must be one of 'keep', 'purge'"),
        ('auto = "yes"', r"retention\.auto must be of type bool"),
        ("months = 3", r"unknown key retention\.months"),
    ],
)
def test_bad_retention_values_are_rejected_at_load(demo_project, body, message):
    path = demo_project / "poisonguard.toml"
    with open(path, "a") as f:
        f.write(f"\n[retention]\n{body}\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: {message}"):
        load_config(path)


def test_a_run_purges_what_is_due_and_a_failed_purge_does_not_fail_it(
    demo_project, monkeypatch, caplog
):
    """With ``auto`` (the default), the end of a run purges; a purge that fails is logged
    in one line, the run's batches stand, and the next purge finishes the job."""
    config, store, flips, *_ = _ingested(demo_project)
    monkeypatch.setattr(retention_module, "utc_now", lambda: _later(31))
    # A report that cannot be removed (a folder where the file was) makes the purge fail
    # after its ledger transaction.
    html = store.root / "reports" / f"{flips}.html"
    html.unlink()
    html.mkdir()
    more = pd.read_parquet(config.landing / "partner" / "batch-04-clean.parquet").head(20)
    more.assign(row_id=more["row_id"] + 10_000).to_parquet(
        config.landing / "batch-07-more.parquet", index=False
    )
    with caplog.at_level("WARNING", logger="poisonguard"):
        run = process_landing(config)
    assert [r.status for r in run.records] == ["committed"]
    assert "error" in run.purge and "retention purge failed" in run.purge["error"]
    assert f"quarantine/{flips}.parquet" in {f.path for f in store.files(PURGED)}
    assert len([r for r in caplog.records if "retention purge failed" in r.message]) == 1
    plan = store.due(config.retention)
    assert plan.due == () and f"reports/{flips}.html" in plan.leftover
    assert check(config).ok  # the purge's ledger transaction stands; the gate is content

    html.rmdir()
    done = store.purge(config.retention, actor="dpo")
    assert done.purged == () and set(done.finished) == set(plan.leftover) - {
        f"reports/{flips}.html"
    }
    assert store.due(config.retention).leftover == ()

    off = demo_project.parent / "off"
    shutil.copytree(demo_project, off)
    (off / "poisonguard.toml").write_text((off / "poisonguard.toml").read_text() + "auto = false\n")
    assert process_landing(load_config(off / "poisonguard.toml")).purge is None


_PURGE_SCRIPT = """
import sys
from datetime import datetime
from poisonguard.config import load_config
from poisonguard.store import open_store
config = load_config(sys.argv[1])
open_store(config).purge(config.retention, actor="dpo", now=datetime.fromisoformat(sys.argv[2]))
"""


def _purge_in_process(root: Path, at: datetime, crash: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    if crash:
        env[CRASH_ENV] = crash
    proc = subprocess.run(
        [sys.executable, "-c", _PURGE_SCRIPT, str(root / "poisonguard.toml"), at.isoformat()],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode


def _state(root: Path) -> dict:
    store = open_store(load_config(root / "poisonguard.toml"))
    return {
        "files": sorted((f.path, f.kind, f.sha256, f.rows) for f in store.files()),
        "batches": sorted(
            (b.batch_id, b.rows_clean, b.rows_quarantined, b.rows_rejected) for b in store.batches()
        ),
        "on_disk": _bytes_under(store.root),
        "audit": [e["action"] for e in store.audit_log()],
        "audit_ok": store.verify_audit(),
    }


@pytest.mark.parametrize("crash", ["purge-before-ledger-commit", "purge-between-files:2"])
def test_a_purge_killed_midway_then_run_again_ends_as_an_uninterrupted_one(
    demo_project, tmp_path, crash
):
    """Killed before its ledger commit, a purge changed nothing; killed between two files,
    the ledger says purged and the next purge removes the rest. Either way the rerun leaves
    the store an uninterrupted purge leaves, and the gate passes in between."""
    config, *_ = _ingested(demo_project, "purge")
    at = _later(31)
    clean_copy = tmp_path / "uninterrupted"
    shutil.copytree(demo_project, clean_copy)
    assert _purge_in_process(clean_copy, at, None) == 0
    want = _state(clean_copy)
    assert want["audit"][-1] == "purge" and want["audit_ok"] is None

    before = _state(demo_project)
    assert _purge_in_process(demo_project, at, crash) == -signal.SIGKILL
    between = _state(demo_project)
    if crash.startswith("purge-before"):
        assert between == before
    else:
        assert between["audit"] == want["audit"] and between["files"] == want["files"]
        assert set(want["on_disk"]) < set(between["on_disk"]) < set(before["on_disk"])
        store = open_store(config)
        assert store.due(config.retention, at).leftover
        assert store.verify_files() == []
    assert check(config).ok
    assert _purge_in_process(demo_project, at, None) == 0
    after = _state(demo_project)
    assert [a for a in after["audit"] if a != "gate"] == want["audit"]  # one purge entry
    assert {k: v for k, v in after.items() if k != "audit"} == {
        k: v for k, v in want.items() if k != "audit"
    }


def test_the_ingest_flow_purges_what_is_due_as_its_last_task(
    demo_project, prefect_harness, monkeypatch
):
    """The Prefect flow ends with the same purge as ``run --local``, and returns what it did."""
    from poisonguard_flows.ingest import ingest

    config, store, flips, _, whole = _ingested(demo_project)
    monkeypatch.setattr(retention_module, "utc_now", lambda: _later(31))
    done = ingest(str(config.path))
    assert done["records"] == [] and sorted(done["purge"]["batches"]) == sorted([flips, whole])
    assert store.audit_log()[-1]["action"] == "purge"
    assert store.due(config.retention).due == ()


def test_a_revoked_batch_is_purged_as_rejected_data_from_its_revocation(demo_project):
    """A revoked batch's files (its revoked clean files, its quarantine) are rejected data:
    due rejected_days after the revocation; the gate still passes, the training set keeps
    every other batch, and an exact copy of a revoked row is still held."""
    config, store, *_ = _ingested(demo_project)
    victim = next(r for r in store.batches() if r.status == "committed" and r.rows_clean)
    files = {f.path for f in store.files() if f.batch_id == victim.batch_id}
    revoked_rows = store.read(
        next(f for f in store.files("clean") if f.batch_id == victim.batch_id)
    )
    store.revoke(victim.batch_id, actor="ana", note="source compromised")
    clean_before = {f.path for f in store.files("clean")}
    revoked_at = next(e["at"] for e in store.audit_log() if e["action"] == "revoke")

    item = next(
        d for d in store.due(config.retention, _later(8)).due if d.batch_id == victim.batch_id
    )
    assert item.kind == "rejected" and item.since == revoked_at and set(item.files) == files
    store.purge(config.retention, actor="dpo", now=_later(8))
    assert {f.path for f in store.files(PURGED) if f.batch_id == victim.batch_id} == files
    assert not any((store.root / p).exists() for p in files)
    assert {f.path for f in store.files("clean")} == clean_before
    report = check(config)
    assert report.ok, report.reasons

    data = [c for c in revoked_rows.columns if not str(c).startswith("pg_")]
    resent = revoked_rows[data].head(3).copy()
    resent.to_parquet(config.landing / "batch-08-revoked-again.parquet", index=False)
    process_landing(config)
    new = next(r for r in store.batches() if "revoked-again" in r.source)
    held = store.quarantine_frame(new.batch_id)
    assert new.rows_clean == 0 and len(held) == 3
    assert held["pg_reason"].str.contains("since purged").all()
