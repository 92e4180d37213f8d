"""Exact nearest-neighbour search shared by the kNN detectors.

Several detectors ask the same question (the k nearest trusted rows of this
batch), so results are memoised on the *content* of the query and reference
arrays: fitting ``knn_distance`` and ``knn_label`` with the same
``n_neighbors``, ``max_reference`` and ``random_state`` on the same reference
costs one pass over the batch, not two.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np

from poisonguard.detectors._kernels import _class_from_list, _knn_search
from poisonguard.detectors.base import fingerprint

#: Trusted rows the kNN detectors search by default (a stratified sample past
#: this size). The search costs batch rows x this x features, so it sets the
#: speed of the suite; benchmarks/RESULTS.md has the quality it keeps.
SAMPLE_ROWS = 768

_CACHE_SIZE = 6
# ("global" | "class", keys of the inputs..., k) -> (dist, index)
_cache: OrderedDict[tuple[object, ...], tuple[np.ndarray, np.ndarray]] = OrderedDict()
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

    def take(self, rows: np.ndarray) -> Neighbours:
        """The neighbours of some query rows only."""
        return Neighbours(
            self.dist[rows], self.index[rows], self.class_dist[rows], self.class_index[rows]
        )


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
    q_key: str | None = None,
) -> Neighbours:
    """Exact kNN of ``Q`` among ``R`` (and within each query's class when ``kc > 0``).

    Class neighbours are read off the global list wherever it holds ``kc`` rows
    of the query's label; the other queries are searched once per label among
    that label's reference rows (``_class_from_global``). The global and the
    class parts are memoised separately, so detectors asking for either share
    them.

    Parameters
    ----------
    Q : ndarray of shape (n, d), float32, C-contiguous
    R : ndarray of shape (m, d), float32, C-contiguous
    k : int
        Global neighbours wanted (>= 1).
    kc : int
        Same-class neighbours wanted (needs ``q_lab`` and ``r_lab``).
    q_lab, r_lab : ndarray of shape (n,) and (m,), int64, optional
        Labels; a query label < 0 has no class neighbours.
    q_ids, r_ids : ndarray of shape (n,) and (m,), int64, optional
        Pairs with equal non-negative ids are skipped (leave-self-out).
    r_key : str, optional
        A precomputed ``fingerprint(R, r_lab)`` (saves hashing the reference
        on every call).
    q_key : str, optional
        A precomputed ``fingerprint(Q)``, such as ``Table.key`` (saves hashing
        the batch once per detector).

    Returns
    -------
    Neighbours
    """
    n, m = Q.shape[0], R.shape[0]
    if r_key is None:
        r_key = fingerprint(R, r_lab)
    q_key = (q_key or fingerprint(Q)) + fingerprint(q_ids, r_ids)
    q_ids = np.full(n, -1, np.int64) if q_ids is None else np.ascontiguousarray(q_ids, np.int64)
    r_ids = np.full(m, -1, np.int64) if r_ids is None else np.ascontiguousarray(r_ids, np.int64)
    dist, index = _memo(("global", q_key, r_key, k), lambda: _global(Q, R, q_ids, r_ids, k))
    if kc == 0 or q_lab is None or r_lab is None:
        return Neighbours(dist, index, np.zeros((n, 0)), np.zeros((n, 0), dtype=np.int64))
    ql = np.ascontiguousarray(q_lab, np.int64)
    rl = np.ascontiguousarray(r_lab, np.int64)
    cdist, cindex = _memo(
        ("class", q_key, fingerprint(ql), r_key, k, kc),
        lambda: _class_from_global(Q, R, q_ids, r_ids, ql, rl, kc, dist, index),
    )
    return Neighbours(dist, index, cdist, cindex)


def _class_from_global(
    Q: np.ndarray,
    R: np.ndarray,
    q_ids: np.ndarray,
    r_ids: np.ndarray,
    q_lab: np.ndarray,
    r_lab: np.ndarray,
    kc: int,
    dist: np.ndarray,
    index: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Class neighbours, read off the global list wherever it already holds ``kc`` of them.

    The global list is the exact top-k in (distance, index) order, so when at
    least ``kc`` of its rows carry the query's label, the first ``kc`` of those
    are exactly its ``kc`` nearest rows of that label: no closer one can be
    missing from the list. Only the other queries (for honest data, the few
    whose label most of their neighbours do not share) are searched per class.
    """
    if kc > index.shape[1]:
        return _by_class(Q, R, q_ids, r_ids, q_lab, r_lab, kc)
    cdist, cindex = _class_from_list(dist, index, q_lab, r_lab, kc)
    # A list holding fewer than kc rows of the label leaves the last slot empty.
    rest = np.flatnonzero(cindex[:, kc - 1] < 0)
    if rest.size:
        d, i = _by_class(
            np.ascontiguousarray(Q[rest]), R, q_ids[rest], r_ids, q_lab[rest], r_lab, kc
        )
        cdist[rest], cindex[rest] = d, i
    return cdist, cindex


def _memo(
    key: tuple[object, ...], compute: Callable[[], tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    result = compute()
    for a in result:
        a.setflags(write=False)
    with _lock:
        _cache[key] = result
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return result


# Query tiles handed to a thread at a time: dynamic chunks keep both cores
# busy when one of them is also serving another process.
_CHUNK_TILES = 64


def _global(
    Q: np.ndarray, R: np.ndarray, q_ids: np.ndarray, r_ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    old = numba.set_parallel_chunksize(_CHUNK_TILES)
    try:
        dist, index = _knn_search(Q, R, q_ids, r_ids, k)
    finally:
        numba.set_parallel_chunksize(old)
    return dist, index


def _by_class(
    Q: np.ndarray,
    R: np.ndarray,
    q_ids: np.ndarray,
    r_ids: np.ndarray,
    q_lab: np.ndarray,
    r_lab: np.ndarray,
    kc: int,
) -> tuple[np.ndarray, np.ndarray]:
    n = Q.shape[0]
    dist = np.full((n, kc), np.inf)
    index = np.full((n, kc), -1, dtype=np.int64)
    for c in np.unique(q_lab[q_lab >= 0]):
        qi = np.flatnonzero(q_lab == c)
        # Increasing positions, so the kernel's ties-to-smaller-index carry over.
        ri = np.flatnonzero(r_lab == c)
        if len(ri) == 0:
            continue
        d, i = _global(
            np.ascontiguousarray(Q[qi]), np.ascontiguousarray(R[ri]), q_ids[qi], r_ids[ri], kc
        )
        dist[qi] = d
        index[qi] = np.where(i >= 0, ri[np.maximum(i, 0)], -1)
    return dist, index


def clear_cache() -> None:
    """Forget memoised searches (tests and memory-conscious callers)."""
    with _lock:
        _cache.clear()
