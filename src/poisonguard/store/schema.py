"""The ``pg_`` columns: what poisonguard adds to the rows it keeps.

Every row the store keeps carries its provenance beside the data columns:

``pg_batch``
    The batch it arrived in.
``pg_row``
    Its position in that batch (0-based, int64).
``pg_row_hash``
    A keyed content hash of its data columns (:func:`row_hashes` under the
    store's row-hash key, ``Store.row_hashes``), the same whichever file format
    carried it: the blocklist and the canary match rows by it, and without the
    store's audit key nobody can tell which row a hash stands for.

A held row (a quarantine file, a staged decision) also has ``pg_stage`` (the
stage that held it: ``expectations``, ``blocklist``, ``detectors``,
``batch_hold``, ``rescan``), ``pg_reason``, ``pg_suspicion`` (``-log10`` of its
combined p-value) and one ``pg_score_<detector>`` per detector. Input batches
may not use the prefix (``config.RESERVED_PREFIX``).
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pandas as pd

from poisonguard.config import RESERVED_PREFIX

#: The provenance columns, in the order they are added.
PROVENANCE = ("pg_batch", "pg_row", "pg_row_hash")

#: What the row-hash key is derived for (``row_hash_key``); a new version of the
#: construction gets a new label, so that its hashes never pass for the old ones.
ROW_HASH_LABEL = b"poisonguard row hash v1"
#: The row-hash key's length in bytes: SipHash-2-4's key.
ROW_HASH_KEY_BYTES = 16


def data_columns(frame: pd.DataFrame) -> list[str]:
    """The columns that came with the data, not poisonguard's bookkeeping."""
    return [c for c in frame.columns if not str(c).startswith(RESERVED_PREFIX)]


def row_hash_key(audit_key: bytes) -> bytes:
    """The row-hash key of a store: the first 16 bytes of HMAC-SHA-256(audit key,
    ``ROW_HASH_LABEL``).

    Derived, never stored or printed: whoever holds the audit key can derive it,
    nobody else can.
    """
    return hmac.new(audit_key, ROW_HASH_LABEL, hashlib.sha256).digest()[:ROW_HASH_KEY_BYTES]


def row_hashes(
    frame: pd.DataFrame, columns: list[str] | None = None, *, key: bytes | None
) -> np.ndarray:
    """A content hash per row (16 hex digits), the same whichever file format carried it:
    ``row_keys`` written as text."""
    return hex_digits(row_keys(frame, columns, key=key))


def row_keys(
    frame: pd.DataFrame, columns: list[str] | None = None, *, key: bytes | None
) -> np.ndarray:
    """A content hash per row as a uint64 (``row_hashes`` writes it as 16 hex digits).

    Numbers are compared as float64 and everything else as text, so a row read
    from CSV and the same row read from Parquet hash alike.

    The construction, in two steps:

    1. pandas' ``hash_pandas_object`` digests each row's canonical form to 64
       bits (text cells through SipHash-2-4 under pandas' fixed public key,
       number cells through a fixed bit mix, the columns combined in order).
       Anyone can compute this digest, so alone it would let whoever holds a
       hash confirm a guessed row; pandas' ``hash_key`` argument does not help,
       as it reaches only text cells, never numbers.
    2. The digest, as one 8-byte little-endian message, goes through
       SipHash-2-4 (a keyed pseudorandom function) under ``key``, the store's
       16-byte row-hash key (:func:`row_hash_key`). Without the key the output
       says nothing about the row; two stores hash the same row differently.

    Both steps are vectorised over numpy arrays (no Python loop per row).
    Collisions stay what they were: two rows collide when their 64-bit digests do.

    Parameters
    ----------
    frame : DataFrame
    columns : list of str, optional
        The columns to hash (default all of them).
    key : bytes or None
        The 16-byte row-hash key (``Store.row_hashes`` passes its store's). None
        hashes without a key (step 1 alone), only for hashes compared in memory
        and never kept, shown or written.

    Returns
    -------
    ndarray of shape (n_rows,), uint64
    """
    if key is not None and len(key) != ROW_HASH_KEY_BYTES:
        raise ValueError(
            f"The 'key' parameter of row_hashes() must be {ROW_HASH_KEY_BYTES} bytes. "
            f"Got {len(key)} bytes instead."
        )
    columns = list(columns if columns is not None else frame.columns)
    canon = pd.DataFrame(index=range(len(frame)))
    for c in columns:
        col = frame[c].reset_index(drop=True)
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            canon[str(c)] = col.astype("float64")
        else:
            canon[str(c)] = col.astype("string").fillna("\x00<NA>")
    digests = pd.util.hash_pandas_object(canon, index=False).to_numpy(dtype=np.uint64)
    return digests if key is None else siphash24(digests, key)


# --------------------------------------------------------------------------- SipHash-2-4

_INIT = (0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573)
_SHIFTS = {b: (np.uint64(b), np.uint64(64 - b)) for b in (13, 16, 17, 21, 32)}
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _rotate(x: np.ndarray, bits: int, spare: np.ndarray) -> None:
    """Rotate ``x`` left by ``bits``, in place (``spare``: scratch of the same shape)."""
    left, right = _SHIFTS[bits]
    np.right_shift(x, right, out=spare)
    np.left_shift(x, left, out=x)
    x |= spare


def _sip_rounds(v: list[np.ndarray], n: int, spare: np.ndarray) -> None:
    v0, v1, v2, v3 = v
    for _ in range(n):
        v0 += v1
        _rotate(v1, 13, spare)
        v1 ^= v0
        _rotate(v0, 32, spare)
        v2 += v3
        _rotate(v3, 16, spare)
        v3 ^= v2
        v0 += v3
        _rotate(v3, 21, spare)
        v3 ^= v0
        v2 += v1
        _rotate(v1, 17, spare)
        v1 ^= v2
        _rotate(v2, 32, spare)


def siphash24(messages: np.ndarray, key: bytes) -> np.ndarray:
    """SipHash-2-4 of each 64-bit value (as its 8 little-endian bytes) under a 16-byte key.

    Parameters
    ----------
    messages : ndarray of shape (n,), uint64
    key : bytes
        16 bytes.

    Returns
    -------
    ndarray of shape (n,), uint64
        What the reference SipHash-2-4 returns for each 8-byte message, as an
        integer (its output bytes read little-endian).
    """
    k0 = np.uint64(int.from_bytes(key[:8], "little"))
    k1 = np.uint64(int.from_bytes(key[8:16], "little"))
    m = np.asarray(messages, dtype=np.uint64)
    v = [
        np.full(m.shape, k ^ np.uint64(c), dtype=np.uint64)
        for k, c in zip((k0, k1, k0, k1), _INIT, strict=True)
    ]
    spare = np.empty_like(m)
    last = np.uint64(8 << 56)  # the final block: the message's length (8) in its top byte
    v[3] ^= m
    _sip_rounds(v, 2, spare)
    v[0] ^= m
    v[3] ^= last
    _sip_rounds(v, 2, spare)
    v[0] ^= last
    v[2] ^= np.uint64(0xFF)
    _sip_rounds(v, 4, spare)
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def hex_digits(values: np.ndarray) -> np.ndarray:
    """Each uint64 as 16 lowercase hex digits (big-endian), vectorised."""
    octets = values.astype(">u8").view(np.uint8).reshape(-1, 8)
    digits = np.empty((len(values), 16), dtype=np.uint8)
    digits[:, 0::2] = _HEX_DIGITS[octets >> 4]
    digits[:, 1::2] = _HEX_DIGITS[octets & 15]
    return digits.view("S16").ravel().astype("U16").astype(object)


def add_provenance(frame: pd.DataFrame, batch_id: str, hashes: np.ndarray) -> None:
    """Add ``pg_batch``, ``pg_row`` and ``pg_row_hash`` to a batch's rows, in place.

    Parameters
    ----------
    frame : DataFrame
        The batch's rows, with a default index.
    batch_id : str
    hashes : ndarray of shape (n_rows,)
        The rows' keyed content hashes (``Store.row_hashes`` of the data columns).
    """
    frame["pg_batch"] = batch_id
    frame["pg_row"] = np.arange(len(frame), dtype=np.int64)
    frame["pg_row_hash"] = hashes
