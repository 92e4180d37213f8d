"""The ``pg_`` columns: what poisonguard adds to the rows it keeps.

Every row the store keeps carries its provenance beside the data columns:

``pg_batch``
    The batch it arrived in.
``pg_row``
    Its position in that batch (0-based, int64).
``pg_row_hash``
    A content hash of its data columns (:func:`row_hashes`), the same whichever
    file format carried it: the blocklist and the canary match rows by it.

A held row (a quarantine file, a staged decision) also has ``pg_stage`` (the
stage that held it: ``expectations``, ``blocklist``, ``detectors``,
``batch_hold``, ``rescan``), ``pg_reason``, ``pg_suspicion`` (``-log10`` of its
combined p-value) and one ``pg_score_<detector>`` per detector. Input batches
may not use the prefix (``config.RESERVED_PREFIX``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from poisonguard.config import RESERVED_PREFIX

#: The provenance columns, in the order they are added.
PROVENANCE = ("pg_batch", "pg_row", "pg_row_hash")


def data_columns(frame: pd.DataFrame) -> list[str]:
    """The columns that came with the data, not poisonguard's bookkeeping."""
    return [c for c in frame.columns if not str(c).startswith(RESERVED_PREFIX)]


def row_hashes(frame: pd.DataFrame, columns: list[str] | None = None) -> np.ndarray:
    """A content hash per row (16 hex digits), the same whichever file format carried it.

    Numbers are compared as float64 and everything else as text, so a row read
    from CSV and the same row read from Parquet hash alike.
    """
    columns = list(columns if columns is not None else frame.columns)
    canon = pd.DataFrame(index=range(len(frame)))
    for c in columns:
        col = frame[c].reset_index(drop=True)
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            canon[str(c)] = col.astype("float64")
        else:
            canon[str(c)] = col.astype("string").fillna("\x00<NA>")
    hashed = pd.util.hash_pandas_object(canon, index=False).to_numpy(dtype=np.uint64)
    return np.array([f"{h:016x}" for h in hashed.tolist()], dtype=object)


def add_provenance(frame: pd.DataFrame, batch_id: str, hashes: np.ndarray | None = None) -> None:
    """Add ``pg_batch``, ``pg_row`` and ``pg_row_hash`` to a batch's rows, in place.

    Parameters
    ----------
    frame : DataFrame
        The batch's rows, with a default index.
    batch_id : str
    hashes : ndarray of shape (n_rows,), optional
        The rows' content hashes when already computed (default: ``row_hashes``
        of the data columns).
    """
    if hashes is None:
        hashes = row_hashes(frame, data_columns(frame))
    frame["pg_batch"] = batch_id
    frame["pg_row"] = np.arange(len(frame), dtype=np.int64)
    frame["pg_row_hash"] = hashes
