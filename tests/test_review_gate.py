"""Review, audit and the pre-training gate, walked through the command line."""

from __future__ import annotations

import json
import sqlite3

import pandas as pd
import pytest

from poisonguard.cli import main
from poisonguard.config import load_config
from poisonguard.errors import GateError, ReviewError
from poisonguard.gate import gate, parse_age
from poisonguard.review import held_rows, review
from poisonguard.store import open_store


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_whole_loop_through_the_cli(demo_project, capsys):
    """Ingest, review (release some, reject others), re-ingest a rejected row, gate, tamper, break the chain."""
    cfg = str(demo_project / "poisonguard.toml")
    config = load_config(cfg)
    store = open_store(config)
    assert _cli(capsys, "run", "--local", "--config", cfg)[0] == 1  # one demo batch is rejected

    code, out, _ = _cli(capsys, "review", "list", "--config", cfg)
    assert code == 0
    flips = next(r for r in store.batches() if "label-flips" in r.source)
    assert flips.batch_id in out

    held = held_rows(store, flips.batch_id)
    assert len(held) >= 4 and (held["pg_review"] == "pending").all()
    release = held["pg_row"].iloc[:2].tolist()
    reject = held["pg_row"].iloc[2:4].tolist()
    code, out, _ = _cli(
        capsys, "review", "show", flips.batch_id, "--page-size", "3", "--config", cfg
    )
    assert code == 0 and f"row {held['pg_row'].iloc[0]}" in out and "page 1 of" in out

    code, out, _ = _cli(
        capsys,
        "review",
        "release",
        flips.batch_id,
        "--rows",
        ",".join(map(str, release)),
        "--by",
        "ana",
        "--note",
        "checked by hand",
        "--config",
        cfg,
    )
    assert code == 0 and "released 2 rows" in out
    code, out, _ = _cli(
        capsys,
        "review",
        "reject",
        flips.batch_id,
        "--rows",
        ",".join(map(str, reject)),
        "--by",
        "ana",
        "--note",
        "flipped labels",
        "--config",
        cfg,
    )
    assert code == 0 and "rejected 2 rows" in out

    rec = store.batch(flips.batch_id)
    assert rec.rows_in == rec.rows_clean + rec.rows_quarantined + rec.rows_rejected
    assert rec.rows_rejected == 2 and rec.rows_quarantined == len(held) - 4
    clean = store.clean_frame()
    assert set(release) <= set(clean.loc[clean["pg_batch"] == flips.batch_id, "pg_row"])
    assert not set(reject) & set(clean.loc[clean["pg_batch"] == flips.batch_id, "pg_row"])

    # Repeating an action is a no-op; the other action on a reviewed row is refused.
    code, out, _ = _cli(
        capsys,
        "review",
        "release",
        flips.batch_id,
        "--rows",
        str(release[0]),
        "--by",
        "ana",
        "--note",
        "again",
        "--config",
        cfg,
    )
    assert code == 0 and "released 0 rows" in out and "1 were already released" in out
    code, _, err = _cli(
        capsys,
        "review",
        "reject",
        flips.batch_id,
        "--rows",
        str(release[0]),
        "--by",
        "bo",
        "--note",
        "changed my mind",
        "--config",
        cfg,
    )
    assert code == 2 and "was already released" in err and "by ana" in err

    # A rejected row arriving again, in another batch, is held with the reviewer's name.
    again = held[held["pg_row"] == reject[0]]
    data_cols = [c for c in again.columns if not str(c).startswith("pg_")]
    fresh = pd.read_parquet(demo_project / "landing" / "partner" / "batch-04-clean.parquet").head(
        30
    )
    resent = pd.concat([fresh, again[data_cols]], ignore_index=True)
    resent.to_parquet(config.landing / "batch-06-resent.parquet", index=False)
    assert _cli(capsys, "run", "--local", "--config", cfg)[0] == 0
    new = next(r for r in store.batches() if "resent" in r.source)
    q = store.quarantine_frame(new.batch_id)
    hit = q[q["pg_row"] == 30]
    assert len(hit) == 1 and hit["pg_reason"].iloc[0].startswith("near-copy of a row rejected on ")
    assert f"by ana (batch {flips.batch_id}, row {reject[0]})" in hit["pg_reason"].iloc[0]

    # The demo's labelling source sent flipped labels: it is in alarm, and the gate refuses until a
    # reviewer clears it.
    code, _, err = _cli(capsys, "gate", "--config", cfg)
    assert code == 1 and "source alarm: labelling:" in err
    clear = ("source", "clear", "labelling", "--by", "ana", "--note", "flips rejected")
    assert _cli(capsys, *clear, "--config", cfg)[0] == 0

    # The gate passes and its manifest lists exactly the clean files and rows.
    manifest = demo_project / "manifest.json"
    code, out, _ = _cli(capsys, "gate", "--config", cfg, "--manifest", str(manifest))
    assert code == 0 and out.startswith("safe:")
    doc = json.loads(manifest.read_text())
    rows = [s["annotations"]["rows"] for s in doc["subject"]]
    assert doc["predicate"]["rows"] == len(store.clean_frame()) == sum(rows)
    assert {s["name"] for s in doc["subject"]} == {f.path for f in store.files("clean")}

    # Tamper with a clean file: the gate fails and names it.
    victim = store.files("clean")[1]
    frame = store.read(victim)
    frame.loc[0, "digit"] = (frame.loc[0, "digit"] + 1) % 10
    frame.to_parquet(store.root / victim.path, index=False)
    code, _, err = _cli(capsys, "gate", "--config", cfg)
    assert code == 1 and f"{victim.path}: changed behind poisonguard's back" in err
    with pytest.raises(GateError, match=victim.path):
        gate(config)

    # Break the audit chain: verify names the entry.
    assert _cli(capsys, "audit", "verify", "--config", cfg)[0] == 0
    with sqlite3.connect(store.ledger_path) as db:
        db.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 3")
    code, _, err = _cli(capsys, "audit", "verify", "--config", cfg)
    assert code == 1 and "audit entry 3" in err
    code, _, err = _cli(capsys, "gate", "--config", cfg)
    assert code == 1 and "audit chain broken: audit entry 3" in err


def test_gate_names_files_added_or_removed_behind_its_back(demo_project):
    config = load_config(demo_project / "poisonguard.toml")
    store = open_store(config)
    assert len(gate(config)) == len(pd.read_parquet(demo_project / "trusted.parquet"))
    (store.root / "clean" / "extra.parquet").write_bytes(b"x")
    with pytest.raises(GateError, match=r"clean/extra\.parquet: not written by poisonguard"):
        gate(config)
    (store.root / "clean" / "extra.parquet").unlink()
    seed = store.files("clean")[0]
    (store.root / seed.path).unlink()
    with pytest.raises(GateError, match="listed in the ledger but missing"):
        gate(config)


def test_gate_fails_on_rows_waiting_too_long_and_exit_codes(demo_project, capsys):
    cfg = str(demo_project / "poisonguard.toml")
    main(["run", "--local", "--config", cfg])
    main(["source", "clear", "labelling", "--by", "ana", "--note", "reviewed", "--config", cfg])
    capsys.readouterr()
    assert _cli(capsys, "gate", "--config", cfg, "--max-pending", "7d")[0] == 0
    code, _, err = _cli(capsys, "gate", "--config", cfg, "--max-pending", "0s")
    assert code == 1 and "rows awaiting review for" in err
    assert _cli(capsys, "gate", "--config", cfg, "--max-pending", "soon")[0] == 2
    assert _cli(capsys, "gate", "--config", str(demo_project / "missing.toml"))[0] == 2


def test_every_gate_decision_is_audited(demo_project):
    config = load_config(demo_project / "poisonguard.toml")
    store = open_store(config)
    gate(config)
    assert store.audit_log()[-1]["action"] == "gate"
    assert store.verify_audit() is None


def test_review_needs_a_name_and_a_note_and_known_rows(demo_project):
    config = load_config(demo_project / "poisonguard.toml")
    from poisonguard.pipeline import process_landing

    process_landing(config)
    store = open_store(config)
    flips = next(r for r in store.batches() if "label-flips" in r.source)
    with pytest.raises(ReviewError, match="reviewer's name"):
        review(store, flips.batch_id, "release", by=" ", note="x")
    with pytest.raises(ReviewError, match="a note"):
        review(store, flips.batch_id, "release", by="ana", note="")
    with pytest.raises(ReviewError, match="no quarantined row 99999"):
        review(store, flips.batch_id, "release", by="ana", note="x", rows=[99999])
    with pytest.raises(ReviewError, match="no batch 'nope'"):
        review(store, "nope", "release", by="ana", note="x")


def test_export_writes_the_verified_training_set(demo_project, capsys):
    cfg = str(demo_project / "poisonguard.toml")
    out = demo_project / "train.parquet"
    assert _cli(capsys, "export", "--config", cfg, "--out", str(out))[0] == 0
    frame = pd.read_parquet(out)
    assert len(frame) == len(pd.read_parquet(demo_project / "trusted.parquet"))
    assert not [c for c in frame.columns if c.startswith("pg_")]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("90m", 5400), ("36h", 129600), ("7d", 604800), ("1.5w", 907200)],
)
def test_parse_age(text, seconds):
    assert parse_age(text).total_seconds() == seconds
