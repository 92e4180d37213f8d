"""The training set's ids by keyed hash: what a new batch's ids are checked against.

An id already in the training set holds a new row (``pipeline``) and stops a release
(``review``). The index keeps 12 bytes an id (its keyed hash, ``Store.value_keys``, and
the number of the batch holding it), read from the id and batch columns of the clean
files alone, and grows with the files committed since it was built: a flow judging
batch after batch reads each file's ids once, and never the training set's rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class IdOwners:
    """Ids by keyed hash, and the batch holding each.

    Attributes
    ----------
    keys : ndarray of shape (n_ids,), uint64
        Keyed hashes of the ids, sorted (an id held twice is there twice; the first
        committed comes first).
    owners : ndarray of shape (n_ids,), int32
        The batch of each, as a position in ``batches``.
    batches : tuple of str
        Batch ids.
    """

    keys: np.ndarray
    owners: np.ndarray
    batches: tuple[str, ...]

    @classmethod
    def empty(cls) -> IdOwners:
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.int32), ())

    def __len__(self) -> int:
        return len(self.keys)

    def extended(self, keys: np.ndarray, batch_ids: np.ndarray) -> IdOwners:
        """This index with more ids (``keys``) held by ``batch_ids`` (one per id), which
        come after every id already in it."""
        names, codes = np.unique(np.asarray(batch_ids, dtype=str), return_inverse=True)
        batches = list(self.batches)
        number = {b: i for i, b in enumerate(batches)}
        for name in names.tolist():
            number.setdefault(name, len(batches))
            if len(batches) < len(number):
                batches.append(name)
        mapped = np.array([number[n] for n in names.tolist()], dtype=np.int32)[codes.ravel()]
        all_keys = np.concatenate([self.keys, np.asarray(keys, dtype=np.uint64)])
        order = np.argsort(all_keys, kind="stable")
        owners = np.concatenate([self.owners, mapped])[order]
        return IdOwners(all_keys[order], owners, tuple(batches))

    def find(self, keys: np.ndarray) -> np.ndarray:
        """The batch of each of ``keys`` as a position in ``batches``; -1 for an id no
        batch holds (the first committed, for an id held twice)."""
        keys = np.asarray(keys, dtype=np.uint64)
        if len(self.keys) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return np.where(self.keys[pos] == keys, self.owners[pos].astype(np.int64), -1)
