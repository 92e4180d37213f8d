"""The gate's manifest as a statement anyone can verify, and the training set's provenance.

The manifest ``poisonguard gate --manifest`` writes is an in-toto Statement (v1): its
subjects are the training set's files with their SHA-256, its predicate the gate's
decision (safe or not and why, the rows, the reference version that judged them, the
audit head it vouched for, the canary, the digests of the config and the suite, the
time). Signed with a local Ed25519 key (``poisonguard keygen``), it is wrapped in a DSSE
envelope, the signature format in-toto uses: the signature covers the statement's exact
bytes, so nothing in it can change unseen. A training job checks it before reading a
row (``poisonguard verify MANIFEST --key KEY.pub``, or :func:`verify`), and so can anyone
with the public key and no poisonguard at all: it is plain JSON, base64, SHA-256 and
Ed25519 (``docs/privacy.md`` shows the check in a few lines).

:func:`cyclonedx` gives the same training set as a CycloneDX 1.7 BOM: one ``data``
component per file, with its hash, its batch and the personal-data kinds it carries.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poisonguard.errors import ConfigError
from poisonguard.store import sha256_file

__all__ = [
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "Manifest",
    "cyclonedx",
    "keygen",
    "load_manifest",
    "sign",
    "statement",
    "verify",
]

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
#: What the predicate is: this gate's decision, in the fields ``gate.check`` records.
PREDICATE_TYPE = "https://github.com/poisonguard/poisonguard/blob/main/docs/attestation.md#gate-v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"


def statement(manifest: Mapping[str, Any], *, config: Path, suite: Path) -> dict[str, Any]:
    """An in-toto statement of a gate's ``manifest`` (``GateReport.manifest``): each file
    of the training set a subject (its path under the store, SHA-256, batch and rows),
    the decision the predicate, with the config's and the suite's SHA-256 added."""
    subjects = [
        {
            "name": f["path"],
            "digest": {"sha256": f["sha256"]},
            "annotations": {
                "batch_id": f["batch_id"],
                "rows": f["rows"],
                "reference_version": f["reference_version"],
            },
        }
        for f in manifest.get("files", [])
    ]
    predicate = {
        **{k: v for k, v in manifest.items() if k != "files"},
        "config_sha256": sha256_file(config),
        "suite": {"path": str(suite), "sha256": sha256_file(suite)},
    }
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate,
    }


def _pae(payload_type: str, body: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what the signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body)


def _key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()


def keygen(path: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair: ``path`` (private, PEM, owner-only) and ``path.pub``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from poisonguard.store import atomic_write_bytes, write_new_secret

    private = Path(path)
    public = private.with_name(private.name + ".pub")
    if private.exists() or public.exists():
        raise ConfigError(f"{private} or {public} already exists; not overwriting a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_new_secret(private, pem)
    atomic_write_bytes(
        public,
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    return private, public


def _private_key(path: Path) -> Any:
    return _load_key(path, private=True)


def _public_key(path: Path) -> Any:
    return _load_key(path, private=False)


def _load_key(path: Path, *, private: bool) -> Any:
    """An Ed25519 key from a PEM file (as ``poisonguard keygen`` writes them)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    what = "private" if private else "public"
    try:
        data = path.read_bytes()
        key = (
            serialization.load_pem_private_key(data, password=None)
            if private
            else serialization.load_pem_public_key(data)
        )
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a readable PEM {what} key ({exc})") from exc
    wanted = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    if not isinstance(key, wanted):
        raise ConfigError(f"{path}: an Ed25519 {what} key is needed (poisonguard keygen)")
    return key


def _raw(public: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def sign(doc: Mapping[str, Any], key: str | Path) -> dict[str, Any]:
    """A DSSE envelope of the statement ``doc``, signed with the Ed25519 private key at ``key``."""
    private = _private_key(Path(key))
    body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    signature = private.sign(_pae(PAYLOAD_TYPE, body))
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(body).decode(),
        "signatures": [
            {
                "keyid": _key_id(_raw(private.public_key())),
                "sig": base64.b64encode(signature).decode(),
            }
        ],
    }


@dataclass(frozen=True)
class Manifest:
    """A manifest file as read: its statement, and its envelope when it is signed."""

    statement: dict[str, Any]
    envelope: dict[str, Any] | None

    @property
    def predicate(self) -> dict[str, Any]:
        return dict(self.statement.get("predicate") or {})


def load_manifest(path: str | Path) -> Manifest:
    """Read a manifest the gate wrote: a DSSE envelope or a bare statement.

    Raises
    ------
    ConfigError
        When the file is not JSON, or neither form (a manifest of an older poisonguard,
        a plain list of files, is refused: it names no digests a statement binds).
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable manifest ({exc})") from exc
    if isinstance(doc, dict) and "payloadType" in doc:
        if doc.get("payloadType") != PAYLOAD_TYPE or not isinstance(doc.get("payload"), str):
            raise ConfigError(f"{path}: a DSSE envelope, but not of an in-toto statement")
        try:
            inner = json.loads(base64.b64decode(doc["payload"], validate=True))
        except ValueError as exc:
            raise ConfigError(f"{path}: the envelope's payload is not base64 JSON") from exc
        return Manifest(_checked(inner, path), doc)
    return Manifest(_checked(doc, path), None)


def _checked(doc: Any, path: Path) -> dict[str, Any]:
    if (
        not isinstance(doc, dict)
        or doc.get("_type") != STATEMENT_TYPE
        or doc.get("predicateType") != PREDICATE_TYPE
        or not isinstance(doc.get("subject"), list)
    ):
        raise ConfigError(
            f"{path}: not a poisonguard gate statement (in-toto {STATEMENT_TYPE}, "
            f"predicate {PREDICATE_TYPE}); write one with `poisonguard gate --manifest`"
        )
    return doc


def verify(
    path: str | Path, *, key: str | Path | None = None, store: str | Path | None = None
) -> list[str]:
    """Check a manifest before a training job reads a row; the problems, empty when none.

    With ``key`` (an Ed25519 public key) the manifest must be signed by it. Every
    subject must exist under the store (``store``, default the one the manifest names)
    with its SHA-256, and the gate must have found the training set safe.
    """
    loaded = load_manifest(path)
    problems = []
    if key is not None:
        public = _public_key(Path(key))
        if loaded.envelope is None:
            problems.append(f"{path} is not signed, and a signature by {key} is required")
        elif not _signed_by(loaded.envelope, public):
            problems.append(f"{path}: no signature verifies with {key}")
    predicate = loaded.predicate
    root = Path(store if store is not None else str(predicate.get("store", "")))
    for subject in loaded.statement["subject"]:
        name = str(subject.get("name", ""))
        want = (subject.get("digest") or {}).get("sha256")
        target = root / name
        if not name or Path(name).is_absolute() or ".." in Path(name).parts:
            problems.append(f"subject {name!r} is not a path inside the store")
        elif not target.is_file():
            problems.append(f"{target}: listed in the manifest, missing")
        elif sha256_file(target) != want:
            problems.append(f"{target}: SHA-256 differs from the manifest's")
    if predicate.get("safe") is not True:
        reasons = "; ".join(map(str, predicate.get("reasons") or [])) or "no verdict"
        problems.append(f"the gate did not find this training set safe: {reasons}")
    return problems


def _signed_by(envelope: Mapping[str, Any], public: Any) -> bool:
    from cryptography.exceptions import InvalidSignature

    body = base64.b64decode(envelope["payload"])
    for entry in envelope.get("signatures") or []:
        try:
            public.verify(base64.b64decode(entry.get("sig", "")), _pae(PAYLOAD_TYPE, body))
        except (InvalidSignature, ValueError, TypeError):
            continue
        return True
    return False


def cyclonedx(doc: Mapping[str, Any], *, pii: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The training set of a gate statement as a CycloneDX 1.7 BOM of ``data`` components.

    One component for the training set, with one nested component per file (its
    SHA-256, batch, rows and the reference version that judged it); ``sensitiveData``
    names the personal-data kinds its columns carry (``Config.pii``).
    """
    from poisonguard import __version__

    predicate = doc.get("predicate") or {}
    kinds = sorted({f"{column}: {kind}" for column, kind in (pii or {}).items()})
    files = [
        {
            "type": "data",
            "bom-ref": f"file:{s['name']}",
            "name": s["name"],
            "hashes": [{"alg": "SHA-256", "content": s["digest"]["sha256"]}],
            "properties": [
                {"name": f"poisonguard:{k}", "value": str(v)}
                for k, v in (s.get("annotations") or {}).items()
                if v is not None
            ],
            "data": [{"type": "dataset", "name": s["name"], "sensitiveData": kinds}],
        }
        for s in doc.get("subject", [])
    ]
    reference = predicate.get("reference") or {}
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.7",
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": predicate.get("created_at"),
            "tools": {
                "components": [
                    {"type": "application", "name": "poisonguard", "version": __version__}
                ]
            },
        },
        "components": [
            {
                "type": "data",
                "bom-ref": "training-set",
                "name": "training set",
                "description": (
                    f"{predicate.get('rows', 0)} rows the poisonguard gate found "
                    + ("safe" if predicate.get("safe") else "NOT safe")
                ),
                "properties": [
                    {"name": "poisonguard:safe", "value": str(bool(predicate.get("safe")))},
                    {"name": "poisonguard:rows", "value": str(predicate.get("rows", 0))},
                    {
                        "name": "poisonguard:reference",
                        "value": f"version {reference.get('version')} {reference.get('digest')}",
                    },
                    {
                        "name": "poisonguard:suite_sha256",
                        "value": str((predicate.get("suite") or {}).get("sha256")),
                    },
                ],
                "data": [{"type": "dataset", "name": "training set", "sensitiveData": kinds}],
                "components": files,
            }
        ],
    }
