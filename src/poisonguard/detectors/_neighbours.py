"""Exact nearest-neighbour search shared by the kNN detectors.

Several detectors ask the same question (the k nearest trusted rows of this
batch), so results are memoised on the *content* of the query and reference
arrays: fitting ``knn_distance`` and ``knn_label`` with the same
``n_neighbors``, ``max_reference`` and ``random_state`` on the same reference
costs one pass over the batch, not two.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from poisonguard.detectors._kernels import _knn_search

_CACHE_SIZE = 4
# (query key, reference key, k) -> (result, key of the query labels it used)
_cache: OrderedDict[tuple[str, str, int], tuple[Neighbours, str]] = OrderedDict()
_lock = threading.Lock()


@dataclass(frozen=True, eq=False)
class Neighbours:
    """The k nearest reference rows of each query row (read-only arrays).

    Attributes
    ----------
    dist : ndarray of shape (n, k), float64
        Squared Euclidean distances, ascending; ``inf`` for missing neighbours.
    index : ndarray of shape (n, k), int64
        Reference row positions; -1 for missing neighbours.
    class_dist, class_index : ndarray of shape (n, kc)
        The same among reference rows carrying the query's label (kc may be 0).
    """

    dist: np.ndarray
    index: np.ndarray
    class_dist: np.ndarray
    class_index: np.ndarray


def fingerprint(*arrays: np.ndarray | None) -> str:
    """A digest of the shapes, dtypes and bytes of the arrays (None allowed)."""
    h = hashlib.sha1(usedforsecurity=False)
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.data)
    return h.hexdigest()


def search(
    Q: np.ndarray,
    R: np.ndarray,
    k: int,
    *,
    kc: int = 0,
    q_lab: np.ndarray | None = None,
    r_lab: np.ndarray | None = None,
    q_ids: np.ndarray | None = None,
    r_ids: np.ndarray | None = None,
    r_key: str | None = None,
) -> Neighbours:
    """Exact kNN of ``Q`` among ``R`` (and within each query's class when ``kc > 0``).

    Parameters
    ----------
    Q : ndarray of shape (n, d), float32, C-contiguous
    R : ndarray of shape (m, d), float32, C-contiguous
    k : int
        Global neighbours wanted (>= 1).
    kc : int
        Same-class neighbours wanted (needs ``q_lab`` and ``r_lab``).
    q_lab, r_lab : ndarray of shape (n,) and (m,), int64, optional
    q_ids, r_ids : ndarray of shape (n,) and (m,), int64, optional
        Pairs with equal non-negative ids are skipped (leave-self-out).
    r_key : str, optional
        A precomputed ``fingerprint`` of ``R`` and ``r_lab`` (saves hashing
        the reference on every call).

    Returns
    -------
    Neighbours
    """
    n, m = Q.shape[0], R.shape[0]
    if r_key is None:
        r_key = fingerprint(R, r_lab)
    key = (fingerprint(Q, q_ids, r_ids), r_key, k)
    lab_key = fingerprint(q_lab) if kc > 0 else ""
    with _lock:
        hit = _cache.get(key)
        # A search with class neighbours also answers any search asking for fewer.
        if hit is not None and (
            kc == 0 or (hit[0].class_dist.shape[1] >= kc and hit[1] == lab_key)
        ):
            _cache.move_to_end(key)
            return _trim(hit[0], kc)
    neg_q = np.full(n, -1, dtype=np.int64)
    neg_r = np.full(m, -1, dtype=np.int64)
    gd, gi, cd, ci = _knn_search(
        Q,
        R,
        neg_q if q_ids is None else np.ascontiguousarray(q_ids, dtype=np.int64),
        neg_r if r_ids is None else np.ascontiguousarray(r_ids, dtype=np.int64),
        neg_q if q_lab is None or kc == 0 else np.ascontiguousarray(q_lab, dtype=np.int64),
        neg_r if r_lab is None or kc == 0 else np.ascontiguousarray(r_lab, dtype=np.int64),
        k,
        kc,
    )
    for a in (gd, gi, cd, ci):
        a.setflags(write=False)
    result = Neighbours(gd, gi, cd, ci)
    with _lock:
        _cache[key] = (result, lab_key)
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return result


def _trim(nb: Neighbours, kc: int) -> Neighbours:
    if nb.class_dist.shape[1] == kc:
        return nb
    return Neighbours(nb.dist, nb.index, nb.class_dist[:, :kc], nb.class_index[:, :kc])


def clear_cache() -> None:
    """Forget memoised searches (tests and memory-conscious callers)."""
    with _lock:
        _cache.clear()
