"""Every numba kernel the detectors use, as private functions over plain arrays.

Kernels never validate and never see pandas or ``None``: the detector classes
check their inputs, then call these. Each kernel is compiled with
``cache=True``; the tests also run them with ``NUMBA_DISABLE_JIT=1``, so every
line here must also be valid (if slow) NumPy-on-Python code.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

# Vectorising the blocked dot products needs contraction into FMA and
# reassociation; "ninf"/"nnan" are left out on purpose because unfilled
# neighbour slots hold +inf and comparisons against it must stay exact.
_FAST = {"contract", "reassoc", "nsz", "arcp", "afn"}

# Reference rows handled per block: 256 rows x 32 features of float32 is 32 KiB,
# so a block stays in L1/L2 while four queries go through it.
_BLOCK = 256
# Screened values whose minimum is checked before the scalar path looks at them one by one.
_CHUNK = 8
# Query rows per parallel task (a multiple of 4: queries go through the reference in fours).
_TILE = 16
# Candidates are screened with the cheap float32 dot-product form of the
# distance and kept in buffers this many entries longer than asked for; the
# survivors are then recomputed exactly. A query whose margin is too thin to
# prove the exact order (near-ties within rounding) is rescanned exactly.
_EXTRA = 2
# Bound on the float32 rounding error of the screen, in ulps per feature.
_SLACK_ULPS = 8.0


@njit(cache=True, inline="always")
def _insert(dist: np.ndarray, idx: np.ndarray, row: int, value: float, j: int) -> None:
    """Insert ``(value, j)`` into the ascending buffer ``dist[row]``, dropping its last entry.

    Equal distances keep their arrival order, so a buffer filled in increasing
    ``j`` breaks ties by the smaller index.
    """
    p = dist.shape[1] - 1
    while p > 0 and dist[row, p - 1] > value:
        dist[row, p] = dist[row, p - 1]
        idx[row, p] = idx[row, p - 1]
        p -= 1
    dist[row, p] = value
    idx[row, p] = j


@njit(cache=True, inline="always")
def _exact_sq(Q: np.ndarray, i: int, R: np.ndarray, j: int) -> float:
    """Squared distance of ``Q[i]`` and ``R[j]`` in float64 (exact up to the final sum)."""
    ex = 0.0
    for f in range(Q.shape[1]):
        df = np.float64(Q[i, f]) - np.float64(R[j, f])
        ex += df * df
    return ex


@njit(cache=True)
def _finish(
    Q: np.ndarray,
    R: np.ndarray,
    i: int,
    buf_d: np.ndarray,
    buf_i: np.ndarray,
    u: int,
    qq: float,
    slack: float,
    out_d: np.ndarray,
    out_i: np.ndarray,
    q_ids: np.ndarray,
    r_ids: np.ndarray,
) -> None:
    """Turn one query's screened candidates into its exact top-k, rescanning if unproven."""
    kb = buf_d.shape[1]
    k = out_d.shape[1]
    for p in range(kb):
        j = buf_i[u, p]
        if j < 0:
            break
        ex = _exact_sq(Q, i, R, j)
        # Insert by (distance, index): the exact order, ties to the smaller index.
        if ex < out_d[i, k - 1] or (ex == out_d[i, k - 1] and j < out_i[i, k - 1]):
            q = k - 1
            while q > 0 and (
                out_d[i, q - 1] > ex or (out_d[i, q - 1] == ex and out_i[i, q - 1] > j)
            ):
                out_d[i, q] = out_d[i, q - 1]
                out_i[i, q] = out_i[i, q - 1]
                q -= 1
            out_d[i, q] = ex
            out_i[i, q] = j
    if buf_i[u, kb - 1] < 0 or buf_d[u, kb - 1] + qq - slack > out_d[i, k - 1]:
        return
    # Every row outside the buffer is at least as far as its last entry, up to
    # rounding; that margin did not separate it from the k-th exact distance.
    for p in range(k):
        out_d[i, p] = np.inf
        out_i[i, p] = -1
    qid = q_ids[i]
    for j in range(R.shape[0]):
        if qid >= 0 and r_ids[j] == qid:
            continue
        ex = _exact_sq(Q, i, R, j)
        if ex < out_d[i, k - 1]:
            _insert(out_d, out_i, i, ex, j)


@njit(cache=True)
def _max_multiplicity(ids: np.ndarray) -> int:
    """How many entries the most repeated non-negative id has (0 if none is)."""
    s = np.sort(ids)
    best = 0
    run = 0
    for j in range(s.shape[0]):
        if s[j] < 0:
            continue
        run = run + 1 if j > 0 and s[j] == s[j - 1] else 1
        best = max(best, run)
    return best


@njit(cache=True, parallel=True, fastmath=_FAST)
def _knn_search(
    Q: np.ndarray, R: np.ndarray, q_ids: np.ndarray, r_ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest reference rows of every query row.

    Distances are screened with float32 dot products (``|r|^2 - 2 q.r``), four
    queries against one block of the reference at a time; the survivors are
    recomputed in float64, and a query whose screen margin cannot prove the
    order is rescanned exactly. The result is therefore the exact top-k by
    squared Euclidean distance, ties broken by the smaller reference index.
    No query x reference matrix is ever held: memory is O(n * k) plus one row
    of screened values per query in flight.

    Before screening, each query's limit starts at a bound on its (k + extra)-th
    smallest screened value: split its values into chunks of ``_CHUNK``, the
    chunks into that many groups, and take the largest of the groups' minima
    (that many distinct rows lie at or below it). Without it, a limit that
    starts at infinity lets most early candidates into the buffer one by one.

    Parameters
    ----------
    Q : ndarray of shape (n, d), float32
        Query rows.
    R : ndarray of shape (m, d), float32
        Reference rows.
    q_ids, r_ids : ndarray of shape (n,) and (m,), int64
        Pair ``(i, j)`` is skipped when ``q_ids[i] >= 0`` and
        ``q_ids[i] == r_ids[j]``; pass ``arange`` for both to leave each row
        out of its own neighbours, ``-1`` everywhere to skip nothing.
    k : int
        Number of neighbours (>= 1).

    Returns
    -------
    dist : ndarray of shape (n, k), float64
        Squared distances, ascending; ``inf`` where fewer than ``k`` rows exist.
    index : ndarray of shape (n, k), int64
        Reference row of each distance; -1 where ``dist`` is ``inf``.
    """
    n, d = Q.shape
    m = R.shape[0]
    dp = ((d + 3) // 4) * 4
    nblk = (m + _BLOCK - 1) // _BLOCK
    # Chunks past the last reference row would hold only padding: never scanned.
    n_chunks = (m + _CHUNK - 1) // _CHUNK
    # Blocks of the reference, transposed and zero-padded, so the innermost
    # loop runs over contiguous reference rows and vectorises. Padding rows
    # get |r|^2 = inf and so never pass the screen.
    RT = np.zeros((nblk, dp, _BLOCK), dtype=np.float32)
    rr = np.full((nblk, _BLOCK), np.inf, dtype=np.float32)
    rmax = 0.0
    for j in range(m):
        b = j // _BLOCK
        jj = j - b * _BLOCK
        s = np.float32(0.0)
        for f in range(d):
            v = R[j, f]
            RT[b, f, jj] = v
            s += v * v
        rr[b, jj] = s
        rmax = max(rmax, np.float64(s))
    gd = np.full((n, k), np.inf)
    gi = np.full((n, k), -1, dtype=np.int64)
    kb = k + _EXTRA
    eps = _SLACK_ULPS * 6.0e-8 * dp
    skip = _max_multiplicity(r_ids)
    m2 = np.float32(-2.0)
    inf32 = np.float32(np.inf)
    ntile = (n + _TILE - 1) // _TILE
    for t in prange(ntile):
        A = np.empty((4, nblk * _BLOCK), dtype=np.float32)
        low = np.empty(n_chunks, dtype=np.float32)
        qs = np.zeros((4, dp), dtype=np.float32)
        bd = np.full((_TILE, kb), np.inf, dtype=np.float32)
        bi = np.full((_TILE, kb), -1, dtype=np.int64)
        i0 = t * _TILE
        i_end = min(n, i0 + _TILE)
        for g0 in range(i0, i_end, 4):
            # Four queries share every load of the reference; a short last
            # group repeats its last query and ignores the copies.
            for u in range(4):
                iu = min(g0 + u, i_end - 1)
                for f in range(d):
                    qs[u, f] = m2 * Q[iu, f]
            for b in range(nblk):
                rb = RT[b]
                rrb = rr[b]
                j0 = b * _BLOCK
                # The last block's padding keeps |r|^2 = inf: no products needed.
                width = min(_BLOCK, m - j0)
                for u in range(4):
                    for jj in range(_BLOCK):
                        A[u, j0 + jj] = rrb[jj]
                for f in range(0, dp, 4):
                    p00 = qs[0, f]
                    p01 = qs[0, f + 1]
                    p02 = qs[0, f + 2]
                    p03 = qs[0, f + 3]
                    p10 = qs[1, f]
                    p11 = qs[1, f + 1]
                    p12 = qs[1, f + 2]
                    p13 = qs[1, f + 3]
                    p20 = qs[2, f]
                    p21 = qs[2, f + 1]
                    p22 = qs[2, f + 2]
                    p23 = qs[2, f + 3]
                    p30 = qs[3, f]
                    p31 = qs[3, f + 1]
                    p32 = qs[3, f + 2]
                    p33 = qs[3, f + 3]
                    for jj in range(width):
                        x0 = rb[f, jj]
                        x1 = rb[f + 1, jj]
                        x2 = rb[f + 2, jj]
                        x3 = rb[f + 3, jj]
                        A[0, j0 + jj] += p00 * x0 + p01 * x1 + p02 * x2 + p03 * x3
                        A[1, j0 + jj] += p10 * x0 + p11 * x1 + p12 * x2 + p13 * x3
                        A[2, j0 + jj] += p20 * x0 + p21 * x1 + p22 * x2 + p23 * x3
                        A[3, j0 + jj] += p30 * x0 + p31 * x1 + p32 * x2 + p33 * x3
            for u in range(min(4, i_end - g0)):
                i = g0 + u
                w = i - i0
                qid = q_ids[i]
                for c in range(n_chunks):
                    mn = inf32
                    for jj in range(c * _CHUNK, (c + 1) * _CHUNK):
                        mn = min(mn, A[u, jj])
                    low[c] = mn
                lim = inf32
                # The bound counts distinct rows; a query that must skip some of them
                # (at most ``skip``) counts that many more.
                need = kb if qid < 0 else kb + skip
                if n_chunks >= need:
                    top = -inf32
                    for g in range(need):
                        mn = inf32
                        for c in range(g * n_chunks // need, (g + 1) * n_chunks // need):
                            mn = min(mn, low[c])
                        top = max(top, mn)
                    if top < inf32:
                        lim = np.nextafter(top, inf32)
                for c in range(n_chunks):
                    if not (low[c] < lim):
                        continue
                    for jj in range(c * _CHUNK, (c + 1) * _CHUNK):
                        a = A[u, jj]
                        if not (a < lim):
                            continue
                        if qid >= 0 and r_ids[jj] == qid:
                            continue
                        _insert(bd, bi, w, a, jj)
                        lim = min(lim, bd[w, kb - 1])
        for i in range(i0, i_end):
            qq = 0.0
            for f in range(d):
                qq += np.float64(Q[i, f]) * np.float64(Q[i, f])
            slack = eps * (qq + rmax) + 1e-30
            _finish(Q, R, i, bd, bi, i - i0, qq, slack, gd, gi, q_ids, r_ids)
    return gd, gi


# Grid cells per knot in the lookup accelerator of each column.
_GRID_PER_KNOT = 2


@njit(cache=True)
def _tail_grid(
    values: np.ndarray, starts: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A uniform lookup grid over each column's knots, so scoring needs almost no search.

    Cell ``c`` of a column spanning ``[v0, v1]`` covers
    ``[v0 + c * w, v0 + (c + 1) * w)`` and stores the last knot at or below its
    left edge; the knot at or below any ``x`` in the cell then lies between
    the cell's entry and the next one.

    Parameters
    ----------
    values : ndarray of shape (n_knots_total,), float64
    starts, counts : ndarray of shape (n_groups, d), int64

    Returns
    -------
    grid : ndarray of shape (n_cells_total,), int64
        Absolute knot positions.
    offsets : ndarray of shape (n_groups, d), int64
        Where each column's cells start in ``grid``; each column has
        ``_GRID_PER_KNOT * count + 1`` entries.
    scale : ndarray of shape (n_groups, d), float64
        Cells per unit of ``x`` (0 for a single-knot column).
    """
    n_groups, d = starts.shape
    offsets = np.zeros((n_groups, d), dtype=np.int64)
    scale = np.zeros((n_groups, d))
    total = 0
    for g in range(n_groups):
        for f in range(d):
            offsets[g, f] = total
            total += _GRID_PER_KNOT * counts[g, f] + 1
    grid = np.zeros(total, dtype=np.int64)
    for g in range(n_groups):
        for f in range(d):
            st = starts[g, f]
            cnt = counts[g, f]
            cells = _GRID_PER_KNOT * cnt
            v0 = values[st]
            span = values[st + cnt - 1] - v0
            if span > 0:
                scale[g, f] = cells / span
            k = st
            for c in range(cells + 1):
                edge = v0 + span * (c / cells)
                while k + 1 < st + cnt and values[k + 1] <= edge:
                    k += 1
                grid[offsets[g, f] + c] = k
    return grid, offsets, scale


@njit(cache=True, inline="always")
def _tail_one(
    x: float,
    values: np.ndarray,
    below: np.ndarray,
    equal: np.ndarray,
    start: int,
    count: int,
    m: float,
    lo_scale: float,
    hi_scale: float,
    grid: np.ndarray,
    goff: int,
    gscale: float,
) -> tuple[float, float]:
    """Two-sided mid-rank tail probability of ``x`` against one column, and the excess beyond it.

    The column is summarised by ``count`` knots from ``values[start:]``: distinct
    reference values with how many reference values lie strictly below each
    (``below``) and equal to it (``equal``). Between knots the count below is
    interpolated linearly, so the probability is continuous. Beyond the
    extreme knots it stays at its edge value and the distance past the edge,
    in units of the tail's decay length (``lo_scale``/``hi_scale``), is
    returned as the excess: the score is ``-log p + excess``, an exponential
    tail at the rate the reference's own extreme rows set.
    """
    first = start
    last = start + count - 1
    extra = 0.0
    if x < values[first]:
        n_below = 0.0
        n_equal = 0.0
        extra = (values[first] - x) / lo_scale
    elif x > values[last]:
        n_below = m
        n_equal = 0.0
        extra = (x - values[last]) / hi_scale
    else:
        # Knot at or below x: between two grid entries, then a short bisection.
        c = int((x - values[first]) * gscale)
        c = min(max(c, 0), _GRID_PER_KNOT * count - 1)
        lo = grid[goff + c]
        hi = grid[goff + c + 1] + 1
        if hi > last:
            hi = last
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if values[mid] <= x:
                lo = mid
            else:
                hi = mid
        if values[hi] <= x:
            lo = hi
        if values[lo] == x:
            n_below = below[lo]
            n_equal = equal[lo]
        else:
            nxt = lo + 1
            inside = below[nxt] - below[lo] - equal[lo]
            frac = (x - values[lo]) / (values[nxt] - values[lo])
            n_below = below[lo] + equal[lo] + frac * inside
            n_equal = 0.0
    p_lo = (n_below + 0.5 * n_equal + 0.5) / (m + 1.0)
    p_hi = (m - n_below - 0.5 * n_equal + 0.5) / (m + 1.0)
    p = 2.0 * min(p_lo, p_hi)
    return min(p, 1.0), extra


@njit(cache=True, parallel=True)
def _tail_scores(
    X: np.ndarray,
    group: np.ndarray,
    values: np.ndarray,
    below: np.ndarray,
    equal: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    sizes: np.ndarray,
    lo_scale: np.ndarray,
    hi_scale: np.ndarray,
    grid: np.ndarray,
    goffsets: np.ndarray,
    gscale: np.ndarray,
    use_max: bool,
) -> np.ndarray:
    """Per-row sum (or max) over features of ``-log p + excess`` from ``_tail_one``.

    Parameters
    ----------
    X : ndarray of shape (n, d)
        Rows to score.
    group : ndarray of shape (n,), int64
        Which reference summary (e.g. which class) scores each row.
    values, below, equal : ndarray of shape (n_knots_total,), float64
        Knots of every (group, feature) column, concatenated.
    starts, counts : ndarray of shape (n_groups, d), int64
        Where each column's knots start in ``values`` and how many there are
        (at least one).
    sizes : ndarray of shape (n_groups,), float64
        Reference rows in each group.
    lo_scale, hi_scale : ndarray of shape (n_groups, d), float64
        Positive decay lengths of the lower and upper tails beyond the knots.
    grid, goffsets, gscale
        The lookup grid from ``_tail_grid``.
    use_max : bool
        Combine features by max instead of sum.

    Returns
    -------
    ndarray of shape (n,), float64
    """
    n, d = X.shape
    out = np.empty(n)
    for i in prange(n):
        g = group[i]
        # Sum of -log p as the log of a running product: one log per row, not
        # per feature; rescaled before it could underflow.
        prod = 1.0
        logs = 0.0
        best = 0.0
        for f in range(d):
            p, extra = _tail_one(
                np.float64(X[i, f]),
                values,
                below,
                equal,
                starts[g, f],
                counts[g, f],
                sizes[g],
                lo_scale[g, f],
                hi_scale[g, f],
                grid,
                goffsets[g, f],
                gscale[g, f],
            )
            if use_max:
                best = max(best, extra - np.log(p))
            else:
                prod *= p
                logs += extra
                if prod < 1e-250:
                    logs -= np.log(prod)
                    prod = 1.0
        out[i] = best if use_max else logs - np.log(prod)
    return out


@njit(cache=True)
def _tail_matrix(
    X: np.ndarray,
    group: np.ndarray,
    values: np.ndarray,
    below: np.ndarray,
    equal: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    sizes: np.ndarray,
    lo_scale: np.ndarray,
    hi_scale: np.ndarray,
    grid: np.ndarray,
    goffsets: np.ndarray,
    gscale: np.ndarray,
) -> np.ndarray:
    """Every feature's ``-log p + excess``, ndarray of shape (n, d); arguments as ``_tail_scores``."""
    n, d = X.shape
    out = np.empty((n, d))
    for i in range(n):
        g = group[i]
        for f in range(d):
            p, extra = _tail_one(
                np.float64(X[i, f]),
                values,
                below,
                equal,
                starts[g, f],
                counts[g, f],
                sizes[g],
                lo_scale[g, f],
                hi_scale[g, f],
                grid,
                goffsets[g, f],
                gscale[g, f],
            )
            out[i, f] = extra - np.log(p)
    return out


_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SEED = np.uint64(0x9E3779B97F4A7C15)
_NAN_CODE = np.uint64(0x7FF8DEADBEEF0001)


# Rows hashed together by one thread of ``_hash_rows``.
_HASH_ROWS = 4096


@njit(cache=True, parallel=True)
def _hash_rows(X: np.ndarray, tol: float) -> np.ndarray:
    """A 64-bit hash of every row, equal for rows equal up to ``tol``.

    With ``tol == 0`` rows hash equal when their values are bit-identical
    (``-0.0`` counts as ``0.0``, every NaN as the same NaN). With ``tol > 0``
    each value is first rounded to the nearest multiple of ``tol``, so rows
    within ``tol / 2`` of the same grid point collide on purpose. Arithmetic is
    done on whole uint64 columns, which wrap silently both compiled and under
    ``NUMBA_DISABLE_JIT``.

    Parameters
    ----------
    X : ndarray of shape (n, d), float32 or float64
        Values are hashed as float64.
    tol : float
        Grid step, >= 0.

    Returns
    -------
    ndarray of shape (n,), uint64
    """
    n, d = X.shape
    h = np.full(n, _SEED, dtype=np.uint64)
    # Blocks of rows in parallel, whole columns of a block at a time.
    for b in prange((n + _HASH_ROWS - 1) // _HASH_ROWS):
        lo = b * _HASH_ROWS
        hi = min(n, lo + _HASH_ROWS)
        hb = h[lo:hi]
        for f in range(d):
            col = X[lo:hi, f].astype(np.float64) + 0.0
            nan = np.isnan(col)
            if tol > 0.0:
                grid = np.floor(col / tol + 0.5)
                grid = np.minimum(np.maximum(grid, -4.0e18), 4.0e18)
                code = np.where(nan, 0.0, grid).astype(np.int64).view(np.uint64)
            else:
                code = np.where(nan, 0.0, col).view(np.uint64)
            code = np.where(nan, _NAN_CODE, code)
            hb = (hb ^ code) * _MIX1
            hb = hb ^ (hb >> np.uint64(31))
            hb = hb * _MIX2
            hb = hb ^ (hb >> np.uint64(29))
        h[lo:hi] = hb
    return h


@njit(cache=True, parallel=True)
def _finite_within(X: np.ndarray, bound: float) -> bool:
    """Whether every value of ``X`` (shape (n, d)) is finite with ``|x| <= bound``, in one pass."""
    n = X.shape[0]
    bad = 0
    for i in prange(n):
        for f in range(X.shape[1]):
            x = X[i, f]
            # NaN fails every comparison, so it lands here too.
            if not (-bound <= x <= bound):
                bad += 1
    return bad == 0


@njit(cache=True, parallel=True)
def _log_cauchy(logp: np.ndarray, w: np.ndarray, log_cap: float) -> np.ndarray:
    """Per row, the log of the weighted Cauchy combination of log p-values capped at ``log_cap``.

    ``logp`` has shape (n, k) (NaN counts as 0, i.e. p = 1, and -inf as the
    most negative float), ``w`` shape (k,) and sums to 1. Each p enters as ``tan((0.5 - p) pi)``, or its limit
    ``1 / (p pi)`` for p < 1e-15, summed in log space so rows whose p-values
    underflow stay ordered; the statistic ``T`` maps back to
    ``0.5 - arctan(T) / pi``, or its limit ``1 / (T pi)`` for T > 1e15.
    """
    n, k = logp.shape
    out = np.empty(n)
    log_pi = np.log(np.pi)
    tiny = np.log(1e-15)
    huge = np.log(1e15)
    lowest = np.finfo(np.float64).min
    lt = np.empty((n, k))
    for i in prange(n):
        top = -np.inf
        for j in range(k):
            lp = logp[i, j]
            lp = min(0.0 if np.isnan(lp) else max(lp, lowest), log_cap)
            t = -lp - log_pi if lp < tiny else np.log(np.tan((0.5 - np.exp(lp)) * np.pi))
            lt[i, j] = t
            top = max(top, t)
        if top == -np.inf:
            stat = -np.inf
        elif top == np.inf:
            stat = np.inf
        else:
            acc = 0.0
            for j in range(k):
                acc += w[j] * np.exp(lt[i, j] - top)
            stat = top + np.log(acc)
        if stat > huge:
            r = -stat - log_pi
        else:
            r = np.log(0.5 - np.arctan(np.exp(min(stat, 700.0))) / np.pi)
        out[i] = min(r, 0.0)
    return out


@njit(cache=True, parallel=True)
def _rank_left(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``np.searchsorted(a, x, side="left")`` for a sorted ``a`` without NaN, in parallel."""
    m = a.shape[0]
    out = np.empty(x.shape[0], dtype=np.int64)
    for i in prange(x.shape[0]):
        v = x[i]
        lo = 0
        hi = m
        if np.isnan(v):
            lo = m
        while lo < hi:
            mid = (lo + hi) // 2
            if a[mid] < v:
                lo = mid + 1
            else:
                hi = mid
        out[i] = lo
    return out


@njit(cache=True, parallel=True)
def _standardize(
    raw: np.ndarray, center: np.ndarray, scale: np.ndarray, bound: float
) -> np.ndarray:
    """``(raw - center) / scale`` per column as float32: missing (NaN) becomes 0, the
    reference's mean; anything past ``bound`` (an infinite or overflowing value) is ``±bound``."""
    n, d = raw.shape
    out = np.empty((n, d), dtype=np.float32)
    for i in prange(n):
        for f in range(d):
            v = (raw[i, f] - center[f]) / scale[f]
            if v != v:
                out[i, f] = 0.0
            elif v > bound:
                out[i, f] = bound
            elif v < -bound:
                out[i, f] = -bound
            else:
                out[i, f] = v
    return out


@njit(cache=True, parallel=True)
def _segment_residuals(
    d_own: np.ndarray,
    i_own: np.ndarray,
    d_other: np.ndarray,
    i_other: np.ndarray,
    R: np.ndarray,
) -> np.ndarray:
    """Smallest squared distance from each row to a segment joining two of its neighbours.

    The segment runs from a reference row ``a`` (one of the row's ``own``
    neighbours) to a reference row ``b`` (one of its ``other`` neighbours).
    Only distances are needed: with ``u = |x - a|^2``, ``v = |x - b|^2`` and
    ``w = |a - b|^2``, the projection of ``x`` on the line is at
    ``t = (u + w - v) / (2 w)`` along it, and the squared distance to the
    segment is ``u - t^2 w`` for ``t`` in [0, 1] and ``u`` or ``v`` beyond.

    Parameters
    ----------
    d_own, d_other : ndarray of shape (n, ka) and (n, kb), float64
        Squared distances to the neighbours (``inf`` where missing).
    i_own, i_other : ndarray of shape (n, ka) and (n, kb), int64
        Their reference positions (-1 where missing).
    R : ndarray of shape (m, d)
        Reference rows (``|a - b|^2`` is computed from them in float64).

    Returns
    -------
    ndarray of shape (n,), float64
        ``inf`` for a row with no complete pair.
    """
    n = d_own.shape[0]
    out = np.empty(n)
    for i in prange(n):
        best = np.inf
        for p in range(d_own.shape[1]):
            a = i_own[i, p]
            u = d_own[i, p]
            if a < 0 or not np.isfinite(u):
                continue
            for q in range(d_other.shape[1]):
                b = i_other[i, q]
                v = d_other[i, q]
                if b < 0 or b == a or not np.isfinite(v):
                    continue
                w = 0.0
                for f in range(R.shape[1]):
                    df = np.float64(R[a, f]) - np.float64(R[b, f])
                    w += df * df
                if w <= 0.0:
                    r = min(u, v)
                else:
                    t = (u + w - v) / (2.0 * w)
                    if t <= 0.0:
                        r = u
                    elif t >= 1.0:
                        r = v
                    else:
                        r = max(u - t * t * w, 0.0)
                best = min(best, r)
        out[i] = best
    return out


# ---------------------------------------------------------------------------
# Reading neighbour lists: class neighbours, label votes, trust ratios, segment ends
# ---------------------------------------------------------------------------


@njit(cache=True)
def _class_from_list(
    dist: np.ndarray, index: np.ndarray, q_lab: np.ndarray, r_lab: np.ndarray, kc: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``kc`` entries of each row's neighbour list whose reference row carries its label.

    Parameters
    ----------
    dist, index : ndarray of shape (n, k), float64 and int64
        Neighbour lists (``index`` -1 where missing).
    q_lab, r_lab : ndarray of shape (n,) and (m,), int64
        Labels; a row label < 0 matches nothing.
    kc : int

    Returns
    -------
    class_dist : ndarray of shape (n, kc), float64
    class_index : ndarray of shape (n, kc), int64
        Those entries in list order; ``inf`` and -1 past the ones the list holds.
    """
    n, k = index.shape
    class_dist = np.full((n, kc), np.inf)
    class_index = np.full((n, kc), -1, dtype=np.int64)
    for i in range(n):
        ql = q_lab[i]
        found = 0
        for p in range(k):
            if found == kc:
                break
            j = index[i, p]
            if ql >= 0 and j >= 0 and r_lab[j] == ql:
                class_dist[i, found] = dist[i, p]
                class_index[i, found] = j
                found += 1
    return class_dist, class_index


@njit(cache=True)
def _neighbour_vote(
    dist: np.ndarray, index: np.ndarray, labels: np.ndarray, prior: np.ndarray, smoothing: float
) -> np.ndarray:
    """Smoothed, distance-weighted label distribution of each row's neighbours.

    Weights are ``exp(-d^2 / mean d^2)`` over a row's own neighbours: scale-free,
    continuous in the distances, and equal when all neighbours are equally
    near. ``smoothing`` pseudo-votes are spread by ``prior``.

    Parameters
    ----------
    dist, index : ndarray of shape (n, k), float64 and int64
        Squared distances and reference rows of the neighbours (``inf`` / -1 where missing).
    labels : ndarray of shape (m,), int64
        Labels of the reference rows; labels outside ``[0, n_classes)`` do not vote.
    prior : ndarray of shape (n_classes,), float64
    smoothing : float

    Returns
    -------
    ndarray of shape (n, n_classes), float64
    """
    n, k = dist.shape
    n_classes = prior.shape[0]
    prob = np.zeros((n, n_classes))
    for i in range(n):
        total = 0.0
        count = 0
        for p in range(k):
            if index[i, p] >= 0 and np.isfinite(dist[i, p]):
                total += dist[i, p]
                count += 1
        scale = total / max(count, 1)
        for p in range(k):
            j = index[i, p]
            if j < 0 or not np.isfinite(dist[i, p]):
                continue
            c = labels[j]
            if 0 <= c < n_classes:
                prob[i, c] += np.exp(-dist[i, p] / scale) if scale > 0 else 1.0
        votes = 0.0
        for c in range(n_classes):
            prob[i, c] += smoothing * prior[c]
            votes += prob[i, c]
        for c in range(n_classes):
            prob[i, c] /= votes
    return prob


@njit(cache=True)
def _trust_ratio(
    dist: np.ndarray,
    index: np.ndarray,
    class_dist: np.ndarray,
    labels: np.ndarray,
    y: np.ndarray,
    n_close: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``log(d_own / d_other)``: how much farther a row's label is than the labels around it.

    ``d_own`` is the mean distance to the row's ``n_close`` nearest reference
    rows carrying its label (``class_dist``); ``d_other`` the same for the
    nearest rows carrying any other label, taken from the global neighbour
    list and, where it holds fewer than ``n_close`` of them, completed with
    its farthest distance (a lower bound on the missing ones, reached only by
    rows whose neighbourhood is mostly their own label, which score below 0
    anyway). Unbounded above: a row deep inside another label's region lands
    beyond every calibration score instead of saturating, as a vote does.

    Parameters
    ----------
    dist, index : ndarray of shape (n, k), float64 and int64
        The global neighbour lists, ascending (``inf`` / -1 where missing).
    class_dist : ndarray of shape (n, n_close), float64
        Squared distances to the nearest reference rows of the row's label (``inf`` where missing).
    labels : ndarray of shape (m,), int64
        Labels of the reference rows.
    y : ndarray of shape (n,), int64
        The rows' labels.
    n_close : int

    Returns
    -------
    score, d_own, d_other : ndarray of shape (n,), float64
        ``score`` is 0 where a distance is undefined (no trusted row of the label).
    """
    n, k = dist.shape
    score = np.empty(n)
    d_own = np.empty(n)
    d_other = np.empty(n)
    # Distances are floored far below any spread that matters, so exact
    # copies stay finite: a copy of a trusted row with another label scores
    # about +28, one with its own label about -28.
    tiny = 1e-12
    for i in range(n):
        own = 0.0
        count_own = 0
        for p in range(class_dist.shape[1]):
            if np.isfinite(class_dist[i, p]):
                own += np.sqrt(class_dist[i, p])
                count_own += 1
        d_own[i] = own / max(count_own, 1)
        # The first n_close other-label entries of the (ascending) list.
        other = 0.0
        found = 0
        count = 0
        for p in range(k):
            j = index[i, p]
            if j < 0 or not np.isfinite(dist[i, p]):
                continue
            count += 1
            if found < n_close and labels[j] != y[i]:
                other += np.sqrt(dist[i, p])
                found += 1
        last = 0.0
        if count > 0 and index[i, count - 1] >= 0 and np.isfinite(dist[i, count - 1]):
            last = np.sqrt(dist[i, count - 1])
        d_other[i] = (other + (n_close - found) * last) / n_close
        s = np.log((d_own[i] + tiny) / (d_other[i] + tiny))
        score[i] = s if count_own > 0 and np.isfinite(s) else 0.0
    return score, d_own, d_other


@njit(cache=True)
def _other_label_ends(
    dist: np.ndarray, index: np.ndarray, labels: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Which of each row's neighbours carry another label, and its mean distance to all of them.

    Parameters
    ----------
    dist, index : ndarray of shape (n, k), float64 and int64
        Squared distances and reference rows of the neighbours (``inf`` / -1 where missing).
    labels : ndarray of shape (m,), int64
        Labels of the reference rows.
    y : ndarray of shape (n,), int64
        The rows' labels.

    Returns
    -------
    i_other : ndarray of shape (n, k), int64
        ``index`` where the neighbour is present and its label differs from the row's, -1 elsewhere.
    spread : ndarray of shape (n,), float64
        Mean (unsquared) distance to the neighbours present; 0 for none.
    """
    n, k = dist.shape
    i_other = np.empty((n, k), dtype=np.int64)
    spread = np.empty(n)
    for i in range(n):
        total = 0.0
        count = 0
        for p in range(k):
            j = index[i, p]
            i_other[i, p] = -1
            if j < 0 or not np.isfinite(dist[i, p]):
                continue
            total += np.sqrt(dist[i, p])
            count += 1
            if labels[j] != y[i]:
                i_other[i, p] = j
        spread[i] = total / max(count, 1)
    return i_other, spread


# ------------------------------------------------------------ backdoor cells

# Rows copied together by ``_feature_major``: 1024 rows of 32 float32 features
# are 128 KiB read, written as one contiguous 4 KiB run per feature.
_COPY_ROWS = 1024


@njit(cache=True, parallel=True)
def _feature_major(X: np.ndarray) -> np.ndarray:
    """``X.T`` as a C-contiguous array, copied block by block (``np.ascontiguousarray(X.T)``).

    Parameters
    ----------
    X : ndarray of shape (n, d), float32

    Returns
    -------
    ndarray of shape (d, n), float32
    """
    n, d = X.shape
    XT = np.empty((d, n), dtype=np.float32)
    for blk in prange((n + _COPY_ROWS - 1) // _COPY_ROWS):
        i0 = blk * _COPY_ROWS
        i1 = min(n, i0 + _COPY_ROWS)
        for f in range(d):
            for i in range(i0, i1):
                XT[f, i] = X[i, f]
    return XT


# Grid cells per feature for the first guess of a value's bin: fine enough
# that almost no cell holds an edge, so the guess is almost always right.
_BIN_GUESSES = 4096
# Fibonacci hashing of a 32-bit pattern: the top bits of its product with this
# odd constant (< 2**31, so the product fits an int64 compiled and in Python).
_FIB = 1640531527


@njit(cache=True, parallel=True)
def _value_runs(bits: np.ndarray, min_support: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The values each feature takes at least ``min_support`` times, by hashing.

    Parameters
    ----------
    bits : ndarray of shape (d, n), uint32
        Bit patterns of float32 values, one feature per row, no NaN; ``-0.0``
        counts as ``0.0``.
    min_support : int
        Fewest occurrences of a value to report it (>= 1).

    Returns
    -------
    values : ndarray of shape (d, n // min_support), uint32
        Row ``f`` starts with the bit patterns of feature ``f``'s frequent values, in no order.
    counts : ndarray of shape (d, n // min_support), int64
        How often each occurs.
    n_runs : ndarray of shape (d,), int64
        How many of row ``f``'s entries are filled.
    """
    d, n = bits.shape
    log_size = 1
    while (1 << log_size) < 2 * n:
        log_size += 1
    size = 1 << log_size
    cap = n // min_support
    values = np.empty((d, cap), dtype=np.uint32)
    counts = np.empty((d, cap), dtype=np.int64)
    n_runs = np.zeros(d, dtype=np.int64)
    for f in prange(d):
        # Open addressing with linear probing, at most half full.
        keys = np.empty(size, dtype=np.int64)
        seen = np.zeros(size, dtype=np.int32)
        frequent = np.empty(cap, dtype=np.int64)
        r = 0
        for i in range(n):
            u = np.int64(bits[f, i])
            if u == 0x80000000:
                u = np.int64(0)
            h = ((u * np.int64(_FIB)) & np.int64(0xFFFFFFFF)) >> np.int64(32 - log_size)
            while seen[h] > 0 and keys[h] != u:
                h = (h + 1) & (size - 1)
            keys[h] = u
            seen[h] += 1
            if seen[h] == min_support:
                frequent[r] = h
                r += 1
        for j in range(r):
            values[f, j] = keys[frequent[j]]
            counts[f, j] = seen[frequent[j]]
        n_runs[f] = r
    return values, counts, n_runs


@njit(cache=True, parallel=True)
def _assign_cells(
    XT: np.ndarray,
    y: np.ndarray,
    edges: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    exact: np.ndarray,
    exact_starts: np.ndarray,
    exact_counts: np.ndarray,
    n_slots: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The cell of every value, and the label counts of every cell.

    A value equal to one of its feature's ``exact`` values is in that value's
    cell; any other is in the bin of its feature's edges it falls in (bin
    ``k`` holds values with ``k`` edges at or below them). Cells are numbered
    feature by feature, bins first (``counts[f] + 1`` per feature, starting at
    ``starts[f] + f``), then every feature's exact values (starting at
    ``len(edges) + d + exact_starts[f]``).

    Parameters
    ----------
    XT : ndarray of shape (d, n), float32
        Values, one feature per row.
    y : ndarray of shape (n,), int64
        Label slot of each column, in ``[0, n_slots)``.
    edges : ndarray of shape (n_edges_total,), float64
        Sorted distinct edges of every feature, concatenated.
    starts, counts : ndarray of shape (d,), int64
        Where feature ``f``'s edges start in ``edges`` and how many (>= 0).
    exact : ndarray of shape (n_exact_total,), float32
        Sorted distinct exact values of every feature, concatenated.
    exact_starts, exact_counts : ndarray of shape (d,), int64
        Where feature ``f``'s exact values start in ``exact`` and how many.
    n_slots : int
        Number of label slots.

    Returns
    -------
    cell : ndarray of shape (d, n), int32
    labels : ndarray of shape (n_cells, n_slots), int64
        How many values of each label every cell holds.
    """
    d, n = XT.shape
    n_bins = len(edges) + d
    cell = np.empty((d, n), dtype=np.int32)
    labels = np.zeros((n_bins + len(exact), n_slots), dtype=np.int64)
    for f in prange(d):
        first = starts[f]
        cnt = counts[f]
        # A uniform grid over the edges' span gives each value a first guess at
        # its bin (the edges at or below the grid cell's left end); a short walk
        # corrects it, so the guess only has to be close, not exact.
        origin = edges[first] if cnt > 0 else 0.0
        span = edges[first + cnt - 1] - origin if cnt > 0 else 0.0
        scale = _BIN_GUESSES / span if span > 0.0 else 0.0
        guess = np.empty(_BIN_GUESSES, dtype=np.int64)
        k = 0
        for g in range(_BIN_GUESSES):
            while k < cnt and edges[first + k] <= origin + g * (span / _BIN_GUESSES):
                k += 1
            guess[g] = k
        e0 = exact_starts[f]
        ne = exact_counts[f]
        for i in range(n):
            x = XT[f, i]
            c = -1
            if ne > 0:
                k = np.searchsorted(exact[e0 : e0 + ne], x)
                if k < ne and exact[e0 + k] == x:
                    c = n_bins + e0 + k
            if c < 0:
                t = min(max((x - origin) * scale, 0.0), _BIN_GUESSES - 1.0)
                below = guess[int(t)]
                while below > 0 and edges[first + below - 1] > x:
                    below -= 1
                while below < cnt and edges[first + below] <= x:
                    below += 1
                c = first + f + below
            cell[f, i] = c
            labels[c, y[i]] += 1
    return cell, labels


@njit(cache=True, parallel=True)
def _best_cells(
    cell: np.ndarray, y: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each column's highest positive score over its cells, and the first cell that gives it.

    Parameters
    ----------
    cell : ndarray of shape (d, n), int32
        Cell of every value.
    y : ndarray of shape (n,), int64
        Label slot of each column.
    scores : ndarray of shape (n_cells, n_slots), float64
        Score of every cell for every label.

    Returns
    -------
    best : ndarray of shape (n,), float64
        ``max(0, max_f scores[cell[f, i], y[i]])``.
    which : ndarray of shape (n,), int64
        The cell of the first feature reaching ``best``; -1 where ``best`` is 0.
    """
    d, n = cell.shape
    best = np.zeros(n)
    which = np.full(n, -1, dtype=np.int64)
    for i in prange(n):
        top = 0.0
        at = -1
        for f in range(d):
            c = cell[f, i]
            s = scores[c, y[i]]
            if s > top:
                top = s
                at = c
        best[i] = top
        which[i] = at
    return best, which


@njit(cache=True, parallel=True)
def _beta_binomial_log_tail(
    count: np.ndarray, n: np.ndarray, a: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """``log P(X >= count)`` for ``X`` beta-binomial(``n``, ``a``, ``b``), row by row.

    The pmf is walked from 0 to ``n`` by its ratio, in logs, and the terms from
    ``count`` up are summed with a running maximum; 0 where ``count <= 0``,
    ``-inf`` where ``count > n``.
    """
    out = np.zeros(count.shape[0])
    for i in prange(count.shape[0]):
        c, m, ai, bi = count[i], n[i], a[i], b[i]
        if c <= 0:
            continue
        if c > m:
            out[i] = -np.inf
            continue
        # log pmf(0) = log B(a, m + b) - log B(a, b)
        lp = math.lgamma(m + bi) + math.lgamma(ai + bi) - math.lgamma(m + ai + bi) - math.lgamma(bi)
        top = -np.inf
        acc = 0.0
        for x in range(m + 1):
            if x >= c:
                if lp > top:
                    acc = acc * math.exp(top - lp) + 1.0
                    top = lp
                else:
                    acc += math.exp(lp - top)
            if x < m:
                lp += math.log((m - x) * (x + ai)) - math.log((x + 1) * (m - x - 1 + bi))
        out[i] = min(top + math.log(acc), 0.0)
    return out


@njit(cache=True, parallel=True)
def _row_fraction(X: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The fractional part of each row's ``sum(X[i] * w)`` in float64, summed in column
    order (so a row gets the same value alone, in a chunk or in its batch); 0 where the
    sum is not finite."""
    n, d = X.shape
    out = np.empty(n)
    for i in prange(n):
        z = 0.0
        for f in range(d):
            z += np.float64(X[i, f]) * w[f]
        out[i] = z - np.floor(z) if np.isfinite(z) else 0.0
    return out
