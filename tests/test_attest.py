"""The gate's manifest as a signed in-toto statement, verified with and without poisonguard."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from poisonguard.attest import PREDICATE_TYPE, STATEMENT_TYPE
from poisonguard.cli import main
from poisonguard.config import load_config
from poisonguard.store import open_store


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def signed(demo_project: Path, capsys) -> tuple[Path, Path, Path]:
    """The demo's gate manifest signed with a new key: (manifest, public key, CycloneDX BOM)."""
    key = demo_project / "keys" / "gate"
    assert _cli(capsys, "keygen", str(key))[0] == 0
    manifest, bom = demo_project / "m.json", demo_project / "bom.json"
    cfg = str(demo_project / "poisonguard.toml")
    code, _, err = _cli(
        capsys,
        "gate",
        "--config",
        cfg,
        "--manifest",
        str(manifest),
        "--sign",
        str(key),
        "--cyclonedx",
        str(bom),
        "--no-canary",
    )
    assert code == 0, err
    return manifest, key.with_name("gate.pub"), bom


def test_keygen_writes_an_owner_only_private_key_and_never_overwrites(demo_project, capsys):
    key = demo_project / "k"
    assert _cli(capsys, "keygen", str(key))[0] == 0
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"PUBLIC KEY" in key.with_name("k.pub").read_bytes()
    code, _, err = _cli(capsys, "keygen", str(key))
    assert code == 2 and "already exists" in err


def test_the_manifest_is_a_signed_statement_of_the_training_set(signed, demo_project, capsys):
    manifest, public, _ = signed
    envelope = json.loads(manifest.read_text())
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    doc = json.loads(base64.b64decode(envelope["payload"]))
    assert doc["_type"] == STATEMENT_TYPE and doc["predicateType"] == PREDICATE_TYPE
    store = open_store(load_config(demo_project / "poisonguard.toml"))
    files = store.files("clean")
    assert {(s["name"], s["digest"]["sha256"]) for s in doc["subject"]} == {
        (f.path, f.sha256) for f in files
    }
    predicate = doc["predicate"]
    assert predicate["safe"] is True and predicate["rows"] == sum(f.rows for f in files)
    assert len(predicate["config_sha256"]) == 64 and len(predicate["suite"]["sha256"]) == 64
    code, out, _ = _cli(capsys, "verify", str(manifest), "--key", str(public))
    assert code == 0 and "verified" in out


def test_verification_fails_on_a_tampered_file_manifest_or_key(signed, demo_project, capsys):
    manifest, public, _ = signed
    # Another key.
    other = demo_project / "other"
    _cli(capsys, "keygen", str(other))
    code, _, err = _cli(capsys, "verify", str(manifest), "--key", str(other) + ".pub")
    assert code == 1 and "no signature verifies" in err
    # The statement changed, the signature kept: a subject dropped.
    envelope = json.loads(manifest.read_text())
    doc = json.loads(base64.b64decode(envelope["payload"]))
    doc["predicate"]["rows"] += 1
    forged = demo_project / "forged.json"
    envelope["payload"] = base64.b64encode(json.dumps(doc).encode()).decode()
    forged.write_text(json.dumps(envelope))
    code, _, err = _cli(capsys, "verify", str(forged), "--key", str(public))
    assert code == 1 and "no signature verifies" in err
    # Unsigned, when a signature is required.
    bare = demo_project / "bare.json"
    bare.write_text(json.dumps(doc))
    code, _, err = _cli(capsys, "verify", str(bare), "--key", str(public))
    assert code == 1 and "is not signed" in err
    # A file of the training set changed after the gate.
    name = doc["subject"][0]["name"]
    victim = Path(doc["predicate"]["store"]) / name
    victim.write_bytes(victim.read_bytes() + b"\0")
    code, _, err = _cli(capsys, "verify", str(manifest), "--key", str(public))
    assert code == 1 and f"{name}: SHA-256 differs" in err


PLAIN_CHECK = r"""
import base64, hashlib, json, sys
from pathlib import Path
from cryptography.hazmat.primitives.serialization import load_pem_public_key

envelope = json.loads(Path(sys.argv[1]).read_text())
body = base64.b64decode(envelope["payload"])
kind = envelope["payloadType"].encode()
pae = b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body)
key = load_pem_public_key(Path(sys.argv[2]).read_bytes())
key.verify(base64.b64decode(envelope["signatures"][0]["sig"]), pae)  # raises if forged
statement = json.loads(body)
root = Path(statement["predicate"]["store"])
for subject in statement["subject"]:
    digest = hashlib.sha256((root / subject["name"]).read_bytes()).hexdigest()
    assert digest == subject["digest"]["sha256"], subject["name"]
assert statement["predicate"]["safe"] is True
assert not [m for m in sys.modules if m.startswith("poisonguard")]
print("ok", len(statement["subject"]))
"""


def test_a_plain_dsse_check_without_poisonguard_verifies_it_and_catches_tampering(signed):
    """What a training job in another language would do: DSSE's PAE, Ed25519, SHA-256."""
    manifest, public, _ = signed
    run = [sys.executable, "-I", "-c", PLAIN_CHECK, str(manifest), str(public)]
    done = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr
    doc = json.loads(base64.b64decode(json.loads(manifest.read_text())["payload"]))
    victim = Path(doc["predicate"]["store"]) / doc["subject"][0]["name"]
    victim.write_bytes(victim.read_bytes() + b"\0")
    done = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "AssertionError" in done.stderr


def test_the_training_set_as_a_cyclonedx_1_7_bom_validates_against_its_schema(signed):
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    manifest, _, bom = signed
    text = bom.read_text()
    assert JsonStrictValidator(SchemaVersion.V1_7).validate_str(text) is None
    doc = json.loads(text)
    (training,) = doc["components"]
    assert training["type"] == "data" and doc["specVersion"] == "1.7"
    statement = json.loads(base64.b64decode(json.loads(manifest.read_text())["payload"]))
    assert {c["hashes"][0]["content"] for c in training["components"]} == {
        s["digest"]["sha256"] for s in statement["subject"]
    }


def test_an_old_or_foreign_manifest_is_refused_in_one_line(demo_project, capsys):
    old = demo_project / "old.json"
    old.write_text(json.dumps({"files": [], "safe": True, "audit_head": None}))
    cfg = str(demo_project / "poisonguard.toml")
    code, _, err = _cli(capsys, "gate", "--config", cfg, "--previous", str(old), "--no-canary")
    assert code == 2 and "not a poisonguard gate statement" in err and err.count("\n") == 1
    code, _, err = _cli(capsys, "verify", str(old))
    assert code == 2 and "not a poisonguard gate statement" in err
