"""The audit chain, keyed and anchored outside the ledger.

Every entry carries the SHA-256 of the one before (``prev_hash``, ``GENESIS`` for
the first) and an HMAC of its own hash under the audit key, which never enters the
ledger; ``anchor.json`` holds the latest head and the head the gate last vouched
for, also under the key. Rewriting entries (even with the chain recomputed),
truncating the chain or deleting the ledger is therefore detected by anyone
holding the key (:meth:`AuditChain.verify`).

The key is 32 random bytes as hex in ``<store>.key`` beside the store (owner-only;
its place can be set with ``dataset.audit_key``). The store's row-hash key, which
keys every row hash it keeps, is derived from it (``schema.row_hash_key``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from poisonguard.errors import StoreError
from poisonguard.store.files import DataFiles, now
from poisonguard.store.ledger import GENESIS, AuditEntry, Ledger, LedgerTransaction, LedgerView

__all__ = ["ANCHOR", "GENESIS", "AuditChain", "blocklist_in", "default_key_path", "entry_hash"]

#: The anchor's file among the store's data files.
ANCHOR = "anchor.json"


def default_key_path(root: Path) -> Path:
    """Where a store's audit key lives unless configured: ``<store>.key`` beside the store."""
    root = Path(root)
    return root.parent / f"{root.name}.key"


def entry_hash(
    prev: str, at: str, action: str, batch_id: str | None, actor: str, detail: str
) -> str:
    """An audit entry's hash: SHA-256 over the one before and its own fields, as JSON."""
    payload = json.dumps([prev, at, action, batch_id, actor, detail], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def blocklist_in(log: Iterable[dict[str, Any]]) -> set[str]:
    """The blocklist the audit chain recorded: every row hash a rejection (``reject``) or a
    revocation (``revoke``) blocked, in chain order; a migration that re-keyed the
    blocklist (``migrate`` with ``blocklist``) replaces what came before it with the
    keyed hashes of the same rows; an erasure (``forget``) takes its rows' hashes off.

    Parameters
    ----------
    log : iterable of dict
        Audit entries, oldest first (``Ledger.audit_log``).
    """
    blocked: set[str] = set()
    for entry in log:
        if entry["action"] not in ("reject", "revoke", "migrate", "forget"):
            continue
        detail = json.loads(entry["detail"])
        if entry["action"] == "forget":
            blocked.difference_update(detail.get("unblocked") or [])
        elif entry["action"] != "migrate":
            blocked.update(detail.get("row_hashes") or [])
        elif "blocklist" in detail:
            blocked = set(detail["blocklist"])
    return blocked


class AuditChain:
    """A store's audit chain: its key, its entries' MACs, and its anchor.

    Parameters
    ----------
    key_path : Path
        The audit key file (read when first needed).
    files : DataFiles
        The store's data files, which hold the anchor (``anchor.json``).

    Attributes
    ----------
    appended : bool
        Whether an entry was appended since the flag was last cleared (the store
        moves the anchor after such a transaction commits).
    """

    def __init__(self, key_path: Path, files: DataFiles) -> None:
        self.key_path = key_path
        self.files = files
        self.anchor_path = files.where(ANCHOR)
        self.appended = False
        self._key: bytes | None = None

    def key(self) -> bytes:
        """The audit key's bytes.

        Raises
        ------
        StoreError
            When the key file is missing or is not a poisonguard key.
        """
        if self._key is None:
            try:
                text = self.key_path.read_text().strip()
            except FileNotFoundError:
                raise StoreError(
                    f"the audit key {self.key_path} is missing: the audit chain can be neither "
                    "extended nor verified"
                ) from None
            if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
                raise StoreError(f"the audit key {self.key_path} is not a poisonguard key")
            self._key = bytes.fromhex(text)
        return self._key

    def mac(self, text: str) -> str:
        """HMAC-SHA-256 of ``text`` under the audit key, as hex."""
        return hmac.new(self.key(), text.encode(), hashlib.sha256).hexdigest()

    def append(
        self,
        tx: LedgerTransaction,
        action: str,
        batch_id: str | None,
        actor: str,
        detail: dict[str, Any],
    ) -> None:
        """Append one entry inside the caller's transaction."""
        last = tx.audit_head()
        prev = last[1] if last else GENESIS
        at = now()
        text = json.dumps(detail, sort_keys=True, default=str)
        digest = entry_hash(prev, at, action, batch_id, actor, text)
        tx.add_audit(AuditEntry(at, action, batch_id, actor, text, prev, digest, self.mac(digest)))
        self.appended = True

    def head(self, ledger: LedgerView) -> dict[str, Any] | None:
        """The chain's last entry as ``{"seq", "hash", "mac"}``; None when empty."""
        last = ledger.audit_head()
        if last is None:
            return None
        seq, digest = last
        return {"seq": seq, "hash": digest, "mac": self.mac(f"{seq}:{digest}")}

    def read_anchor(self) -> dict[str, Any]:
        """The anchor's content: ``{}`` when missing, ``{"broken": True}`` when unreadable."""
        try:
            data = json.loads(self.files.read_text(ANCHOR))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {"broken": True}
        return data if isinstance(data, dict) else {"broken": True}

    def write_anchor(self, ledger: LedgerView, vouched: dict[str, Any] | None = None) -> None:
        """Move the anchor to the chain's head (and to the gate's ``vouched`` head, if given)."""
        head = self.head(ledger)
        anchor = self.read_anchor()
        anchor.pop("broken", None)
        if head is not None:
            anchor["head"] = head
        if vouched is not None:
            anchor["vouched"] = vouched
        self.files.write(ANCHOR, (json.dumps(anchor, indent=2) + "\n").encode())

    def verify(self, ledger: Ledger, log: list[dict[str, Any]] | None = None) -> str | None:
        """Check the chain, its keyed MACs and its anchor; the first problem, or None.

        The chain must be unbroken from the first entry, every entry's MAC must
        match the audit key, and the anchored head and the head the gate last
        vouched for must both still be in it (so truncation and deletion are
        errors, not an intact shorter chain). ``log`` is the chain as the caller read
        it (``ledger.audit_log()``; read here when not given).
        """
        try:
            self.key()
        except StoreError as exc:
            return str(exc)
        prev = GENESIS
        by_seq: dict[int, str] = {}
        log = ledger.audit_log() if log is None else log
        for entry in log:
            if entry["prev_hash"] != prev:
                return f"audit entry {entry['seq']} does not follow the entry before it (prev_hash)"
            expected = entry_hash(
                prev,
                entry["at"],
                entry["action"],
                entry["batch_id"],
                entry["actor"],
                entry["detail"],
            )
            if entry["hash"] != expected:
                return f"audit entry {entry['seq']} ({entry['action']}) was altered: hash mismatch"
            if not hmac.compare_digest(entry["mac"] or "", self.mac(entry["hash"])):
                return (
                    f"audit entry {entry['seq']} ({entry['action']}) was not written with this "
                    "store's audit key (MAC mismatch): the chain was rewritten"
                )
            by_seq[int(entry["seq"])] = entry["hash"]
            prev = entry["hash"]
        if not log:
            return f"the audit chain in {ledger.location} is empty; a store has at least its seed"
        anchor = self.read_anchor()
        if not anchor or anchor.get("broken"):
            state = "missing" if not anchor else "unreadable"
            return f"the audit anchor {self.anchor_path} is {state}"
        for what in ("head", "vouched"):
            mark = anchor.get(what)
            if mark is None and what == "vouched":
                continue
            problem = self._check_mark(mark, by_seq, what)
            if problem:
                return problem
        return None

    def _check_mark(self, mark: Any, by_seq: dict[int, str], what: str) -> str | None:
        label = "anchored head" if what == "head" else "head the gate last vouched for"
        try:
            seq, digest, mac = int(mark["seq"]), str(mark["hash"]), str(mark["mac"])
        except (TypeError, KeyError, ValueError):
            return f"the audit anchor {self.anchor_path} has no valid {what}"
        if not hmac.compare_digest(mac, self.mac(f"{seq}:{digest}")):
            return f"the {label} in {self.anchor_path} was not written with this store's key"
        if by_seq.get(seq) != digest:
            have = max(by_seq) if by_seq else 0
            return (
                f"the {label} (entry {seq}, {digest[:12]}...) is not in the audit chain, which "
                f"ends at entry {have}: entries were removed or rewritten"
            )
        return None
