"""The numba kernels agree with plain NumPy reference implementations.

Run twice by the Makefile: compiled, and with ``NUMBA_DISABLE_JIT=1`` so the
kernel source itself is exercised line by line. Shapes are kept small so both
runs are fast; values come from a coarse grid so that ties are common and
every sum is exact.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from poisonguard.detectors._kernels import (
    _assign_cells,
    _best_cells,
    _feature_major,
    _finite_within,
    _hash_rows,
    _knn_search,
    _segment_residuals,
    _tail_grid,
    _tail_matrix,
    _tail_scores,
    _value_runs,
)

SETTINGS = settings(max_examples=40, deadline=None)

grid_values = st.integers(-6, 6).map(lambda v: v / 4.0)


@st.composite
def knn_case(draw):
    n = draw(st.integers(0, 9))
    m = draw(st.integers(1, 12))
    d = draw(st.integers(1, 6))
    Q = draw(hnp.arrays(np.float32, (n, d), elements=grid_values))
    R = draw(hnp.arrays(np.float32, (m, d), elements=grid_values))
    k = draw(st.integers(1, 14))
    kc = draw(st.integers(0, 5))
    q_lab = draw(hnp.arrays(np.int64, n, elements=st.integers(-1, 2)))
    r_lab = draw(hnp.arrays(np.int64, m, elements=st.integers(0, 2)))
    return Q, R, k, kc, q_lab, r_lab


def reference_knn(Q, R, k, allowed):
    """Top-k by (squared distance, index) among allowed pairs, padded with inf / -1."""
    n = Q.shape[0]
    dist = np.full((n, k), np.inf)
    index = np.full((n, k), -1, dtype=np.int64)
    for i in range(n):
        cand = np.flatnonzero(allowed[i])
        d2 = ((Q[i].astype(np.float64) - R[cand].astype(np.float64)) ** 2).sum(axis=1)
        order = np.lexsort((cand, d2))[:k]
        dist[i, : len(order)] = d2[order]
        index[i, : len(order)] = cand[order]
    return dist, index


@SETTINGS
@given(knn_case())
def test_knn_matches_brute_force(case):
    """Global and same-class neighbours equal a brute-force sort, ties to the smaller index."""
    Q, R, k, kc, q_lab, r_lab = case
    n, m = Q.shape[0], R.shape[0]
    none_q, none_r = np.full(n, -1, np.int64), np.full(m, -1, np.int64)
    gd, gi, cd, ci = _knn_search(Q, R, none_q, none_r, q_lab, r_lab, k, kc)
    want_d, want_i = reference_knn(Q, R, k, np.ones((n, m), bool))
    np.testing.assert_array_equal(gd, want_d)
    np.testing.assert_array_equal(gi, want_i)
    same = q_lab[:, None] == r_lab[None, :]
    want_cd, want_ci = reference_knn(Q, R, kc, same)
    assert cd.shape == (n, kc) and ci.shape == (n, kc)
    np.testing.assert_array_equal(cd, want_cd)
    np.testing.assert_array_equal(ci, want_ci)


@SETTINGS
@given(knn_case())
def test_search_reads_class_neighbours_off_the_global_list_exactly(case):
    """search() takes class neighbours from the global list where it holds enough of them and
    searches per class for the rest; either way they equal a brute-force sort."""
    from poisonguard.detectors._neighbours import clear_cache, search

    Q, R, k, kc, q_lab, r_lab = case
    clear_cache()
    nb = search(Q, R, k, kc=kc, q_lab=q_lab, r_lab=r_lab)
    want_cd, want_ci = reference_knn(Q, R, kc, q_lab[:, None] == r_lab[None, :])
    np.testing.assert_array_equal(nb.class_dist, want_cd)
    np.testing.assert_array_equal(nb.class_index, want_ci)


@SETTINGS
@given(
    hnp.arrays(np.float32, st.tuples(st.integers(1, 12), st.integers(1, 5)), elements=grid_values),
    st.integers(1, 14),
)
def test_knn_leaves_self_out(X, k):
    """With equal ids on both sides a row is never its own neighbour, but its duplicates are."""
    n = X.shape[0]
    ids = np.arange(n, dtype=np.int64)
    lab = np.zeros(n, np.int64)
    gd, gi, _, ci = _knn_search(X, X, ids, ids, lab, lab, k, k)
    want_d, want_i = reference_knn(X, X, k, ~np.eye(n, dtype=bool))
    np.testing.assert_array_equal(gd, want_d)
    np.testing.assert_array_equal(gi, want_i)
    np.testing.assert_array_equal(ci, want_i)
    assert not np.any(gi == ids[:, None])


@settings(max_examples=15, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 40),
    st.integers(1, 300),
    st.integers(1, 40),
    st.integers(1, 12),
)
def test_knn_continuous_values_match_float64(seed, n, m, d, k):
    """On continuous data the distances equal float64 brute force, across blocks and tiles."""
    rng = np.random.default_rng(seed)
    Q = (rng.standard_normal((n, d)) * rng.uniform(0.1, 50)).astype(np.float32)
    R = (rng.standard_normal((m, d)) * rng.uniform(0.1, 50) + 1.0).astype(np.float32)
    neg_q, neg_r = np.full(n, -1, np.int64), np.full(m, -1, np.int64)
    gd, gi, _, _ = _knn_search(Q, R, neg_q, neg_r, neg_q, neg_r, k, 0)
    want_d, _ = reference_knn(Q, R, k, np.ones((n, m), bool))
    np.testing.assert_allclose(gd, want_d, rtol=1e-12)
    got = gi[gi >= 0]
    rows = np.repeat(np.arange(n), k)[gi.ravel() >= 0]
    true = ((Q[rows].astype(np.float64) - R[got].astype(np.float64)) ** 2).sum(axis=1)
    np.testing.assert_allclose(true, gd[gi >= 0], rtol=1e-12)


def test_knn_many_reference_rows_span_blocks():
    """A reference longer than one block, with exact duplicates, still gives the exact top-k."""
    rng = np.random.default_rng(3)
    R = rng.integers(-3, 4, size=(700, 3)).astype(np.float32)
    Q = rng.integers(-3, 4, size=(21, 3)).astype(np.float32)
    neg_q, neg_r = np.full(21, -1, np.int64), np.full(700, -1, np.int64)
    gd, gi, _, _ = _knn_search(Q, R, neg_q, neg_r, neg_q, neg_r, 5, 0)
    want_d, want_i = reference_knn(Q, R, 5, np.ones((21, 700), bool))
    np.testing.assert_array_equal(gd, want_d)
    np.testing.assert_array_equal(gi, want_i)


# --------------------------------------------------------------------- tails


def tail_inputs(columns):
    """Knot arrays for one group whose knots are every distinct value (scales 1)."""
    values, below, equal, starts, counts = [], [], [], [], []
    offset = 0
    for col in columns:
        col = np.sort(col.astype(np.float64))
        v = np.unique(col)
        values.append(v)
        below.append(np.searchsorted(col, v, "left").astype(np.float64))
        equal.append(np.searchsorted(col, v, "right") - below[-1])
        starts.append(offset)
        counts.append(len(v))
        offset += len(v)
    d = len(columns)
    values, starts, counts = (
        np.concatenate(values),
        np.array([starts], np.int64),
        np.array([counts], np.int64),
    )
    return (
        values,
        np.concatenate(below),
        np.concatenate(equal).astype(np.float64),
        starts,
        counts,
        np.array([float(len(columns[0]))]),
        np.ones((1, d)),
        np.ones((1, d)),
        *_tail_grid(values, starts, counts),
    )


def reference_tail(x, col):
    """-log of the two-sided mid-rank tail probability, plus the distance beyond the range."""
    m = len(col)
    lt, eq = np.sum(col < x), np.sum(col == x)
    p_lo = (lt + 0.5 * eq + 0.5) / (m + 1)
    p_hi = (m - lt - eq + 0.5 * eq + 0.5) / (m + 1)
    extra = max(col.min() - x, 0.0) + max(x - col.max(), 0.0)
    return -np.log(min(1.0, 2 * min(p_lo, p_hi))) + extra


@SETTINGS
@given(
    st.integers(1, 30),
    st.integers(0, 8),
    st.integers(1, 4),
    st.integers(0, 2**31 - 1),
)
def test_tail_matches_mid_rank_formula(m, n, d, seed):
    """Per-feature tail scores equal the mid-rank formula; rows sum (or max) them."""
    rng = np.random.default_rng(seed)
    ref = rng.integers(-4, 5, size=(m, d)).astype(np.float32)
    X = (rng.integers(-14, 15, size=(n, d)) / 2.0).astype(np.float32)
    args = tail_inputs([ref[:, f] for f in range(d)])
    group = np.zeros(n, np.int64)
    M = _tail_matrix(X, group, *args)
    want = np.array(
        [
            [reference_tail(float(X[i, f]), ref[:, f].astype(float)) for f in range(d)]
            for i in range(n)
        ]
    ).reshape(n, d)
    np.testing.assert_allclose(M, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_tail_scores(X, group, *args, False), want.sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(
        _tail_scores(X, group, *args, True), want.max(axis=1, initial=0.0), rtol=1e-12
    )


def test_tail_interpolates_between_knots():
    """Between two knots the count below rises linearly, so scores are continuous and monotone."""
    col = np.arange(101, dtype=np.float64)
    # Keep only three knots: 0, 50 and 100.
    values = np.array([0.0, 50.0, 100.0])
    below = np.searchsorted(col, values, "left").astype(np.float64)
    equal = np.ones(3)
    starts, counts = np.array([[0]]), np.array([[3]])
    args = (values, below, equal, starts, counts, np.array([101.0]))
    scales = (np.ones((1, 1)), np.ones((1, 1)))
    X = np.array([[10.0], [20.0], [25.0], [49.0]], np.float32)
    grid = _tail_grid(values, starts, counts)
    s = _tail_matrix(X, np.zeros(4, np.int64), *args, *scales, *grid)[:, 0]
    # 49 rows lie strictly between knots 0 and 50; x takes x/50 of them.
    n_below = 1.0 + 49.0 * X[:, 0].astype(float) / 50.0
    np.testing.assert_allclose(s, -np.log(2 * (n_below + 0.5) / 102.0), rtol=1e-12)
    assert np.all(np.diff(s) < 0)
    # Close to the exact mid-rank score of the full column.
    exact = [reference_tail(float(x), col) for x in X[:, 0]]
    np.testing.assert_allclose(s, exact, atol=0.05)


# -------------------------------------------------------------------- hashing


@SETTINGS
@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(0, 25), st.integers(1, 4)),
        elements=st.sampled_from([0.0, -0.0, 1.0, 2.5, -3.0, np.nan, 1e300]),
    ),
)
def test_hash_rows_partitions_like_exact_equality(X):
    """Exact hashes are equal exactly when rows are equal (-0.0 == 0.0, NaN == NaN)."""
    h = _hash_rows(X, 0.0)
    assert h.dtype == np.uint64 and h.shape == (X.shape[0],)
    key = np.where(np.isnan(X), np.inf, X + 0.0)
    for i in range(X.shape[0]):
        for j in range(X.shape[0]):
            assert (h[i] == h[j]) == bool(np.array_equal(key[i], key[j]))


@SETTINGS
@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(0, 25), st.integers(1, 4)),
        elements=st.floats(-100, 100, allow_nan=False),
    ),
    st.sampled_from([0.01, 0.5, 3.0]),
)
def test_hash_rows_with_tolerance_matches_rounding(X, tol):
    """Near-duplicate hashes are equal exactly when rows round to the same grid point."""
    h = _hash_rows(X, tol)
    grid = np.floor(X / tol + 0.5)
    for i in range(X.shape[0]):
        for j in range(X.shape[0]):
            assert (h[i] == h[j]) == bool(np.array_equal(grid[i], grid[j]))


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 400))
def test_tail_grid_lookup_is_exact_on_skewed_columns(seed, m):
    """With heavy tails (most knots crowded in few grid cells) lookups still find the right knot."""
    rng = np.random.default_rng(seed)
    ref = np.exp(rng.standard_normal((m, 1)) * 3).astype(np.float32)
    X = np.concatenate([ref[: min(m, 20)], np.exp(rng.standard_normal((20, 1)) * 3)]).astype(
        np.float32
    )
    args = tail_inputs([ref[:, 0]])
    M = _tail_matrix(X, np.zeros(len(X), np.int64), *args)[:, 0]
    want = [reference_tail(float(x), ref[:, 0].astype(float)) for x in X[:, 0]]
    np.testing.assert_allclose(M, want, rtol=1e-9)


@SETTINGS
@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(0, 12), st.integers(1, 4)),
        elements=st.sampled_from([0.0, 1.5, -2.0, 1e20, -1e20, np.inf, -np.inf, np.nan]),
    )
)
def test_finite_within_matches_numpy(X):
    """True exactly when every value is finite and within the bound."""
    want = bool(np.isfinite(X).all() and (X.size == 0 or np.abs(X).max() <= 1e15))
    assert _finite_within(X, 1e15) == want


@st.composite
def segment_case(draw):
    n = draw(st.integers(0, 6))
    m = draw(st.integers(1, 8))
    d = draw(st.integers(1, 4))
    ka = draw(st.integers(0, 3))
    kb = draw(st.integers(0, 3))
    X = draw(hnp.arrays(np.float64, (n, d), elements=grid_values))
    R = draw(hnp.arrays(np.float32, (m, d), elements=grid_values))
    i_own = draw(hnp.arrays(np.int64, (n, ka), elements=st.integers(-1, m - 1)))
    i_other = draw(hnp.arrays(np.int64, (n, kb), elements=st.integers(-1, m - 1)))
    return X, R, i_own, i_other


def reference_segment(X, R, i_own, i_other):
    """Smallest distance^2 from each row to a segment [R[a], R[b]], by projection in float64."""
    R = R.astype(np.float64)
    out = np.full(X.shape[0], np.inf)
    for i in range(X.shape[0]):
        for a in i_own[i]:
            for b in i_other[i]:
                if a < 0 or b < 0 or a == b:
                    continue
                seg = R[b] - R[a]
                w = seg @ seg
                t = 0.0 if w == 0 else float(np.clip((X[i] - R[a]) @ seg / w, 0.0, 1.0))
                gap = X[i] - R[a] - t * seg
                out[i] = min(out[i], gap @ gap)
    return out


@SETTINGS
@given(segment_case())
def test_segment_residuals_match_projection(case):
    """The distance-only formula gives the projection's squared distance to each segment."""
    X, R, i_own, i_other = case
    R64 = R.astype(np.float64)

    def sq(idx):
        d = ((X[:, None, :] - R64[np.maximum(idx, 0)]) ** 2).sum(axis=2)
        return np.where(idx >= 0, d, np.inf)

    got = _segment_residuals(sq(i_own), i_own, sq(i_other), i_other, R)
    want = reference_segment(X, R, i_own, i_other)
    assert np.array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-9, atol=1e-9)


# -------------------------------------------------------------- backdoor cells


@SETTINGS
@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(0, 40), st.integers(1, 4)),
        elements=st.sampled_from([0.0, -0.0, 0.25, -1.5, 2.0, 3e-39, 1e15]),
    ),
    st.integers(1, 6),
)
def test_value_runs_match_unique_counts(X, min_support):
    """Each feature's values seen at least min_support times, with their counts, as np.unique
    finds them (-0.0 counted as 0.0)."""
    XT = _feature_major(X)
    np.testing.assert_array_equal(XT, X.T)
    values, counts, n_runs = _value_runs(XT.view(np.uint32), min_support)
    for f in range(X.shape[1]):
        want_v, want_c = np.unique(X[:, f] + np.float32(0.0), return_counts=True)
        keep = want_c >= min_support
        got_v = values[f, : n_runs[f]].view(np.float32)
        order = np.argsort(got_v)
        np.testing.assert_array_equal(got_v[order], want_v[keep])
        np.testing.assert_array_equal(counts[f, : n_runs[f]][order], want_c[keep])


@st.composite
def cells_case(draw):
    n = draw(st.integers(0, 20))
    d = draw(st.integers(1, 4))
    X = draw(hnp.arrays(np.float32, (n, d), elements=grid_values))
    y = draw(hnp.arrays(np.int64, n, elements=st.integers(0, 2)))
    edges = [
        np.unique(np.array(draw(st.lists(grid_values, max_size=6)), np.float64)) for _ in range(d)
    ]
    exact = [
        np.unique(np.array(draw(st.lists(grid_values, max_size=3)), np.float32)) for _ in range(d)
    ]
    return X, y, edges, exact


def reference_cells(X, y, edges, exact, n_slots):
    """Cells numbered bins first (feature by feature), then exact values; label counts per cell."""
    n, d = X.shape
    bin_start = np.cumsum([0] + [len(e) + 1 for e in edges])
    exact_start = bin_start[-1] + np.cumsum([0] + [len(v) for v in exact])
    cell = np.zeros((d, n), np.int64)
    for f in range(d):
        for i in range(n):
            hit = np.flatnonzero(exact[f] == X[i, f])
            if len(hit):
                cell[f, i] = exact_start[f] + hit[0]
            else:
                cell[f, i] = bin_start[f] + np.searchsorted(edges[f], X[i, f], side="right")
    labels = np.zeros((exact_start[-1], n_slots), np.int64)
    np.add.at(labels, (cell.ravel(), np.tile(y, d)), 1)
    return cell, labels


@SETTINGS
@given(cells_case())
def test_assign_cells_matches_searchsorted_and_exact_lookup(case):
    """A value equal to one of its feature's exact values is in that cell, any other in its
    searchsorted(edges, side='right') bin; each cell counts its rows' labels."""
    X, y, edges, exact = case
    d = X.shape[1]
    sizes = np.array([len(e) for e in edges], np.int64)
    n_exact = np.array([len(v) for v in exact], np.int64)
    cell, labels = _assign_cells(
        _feature_major(X),
        y,
        np.concatenate(edges),
        np.cumsum(sizes) - sizes,
        sizes,
        np.concatenate(exact),
        np.cumsum(n_exact) - n_exact,
        n_exact,
        3,
    )
    want_cell, want_labels = reference_cells(X, y, edges, exact, 3)
    np.testing.assert_array_equal(cell, want_cell)
    np.testing.assert_array_equal(labels, want_labels)
    assert cell.shape == (d, X.shape[0])


@SETTINGS
@given(
    st.integers(0, 2**31 - 1),
    st.integers(0, 15),
    st.integers(1, 4),
    st.integers(1, 10),
)
def test_best_cells_is_the_first_strict_maximum(seed, n, d, n_cells):
    """Each row's best positive cell score over its features, and the first feature's cell
    reaching it (-1 with best 0 where nothing is positive)."""
    rng = np.random.default_rng(seed)
    cell = rng.integers(0, n_cells, size=(d, n)).astype(np.int32)
    y = rng.integers(0, 2, size=n)
    # Few distinct values, some negative: ties and non-positive rows are common.
    scores = rng.integers(-1, 3, size=(n_cells, 2)).astype(np.float64)
    best, which = _best_cells(cell, y, scores)
    s = scores[cell, y[None, :]] if n else np.zeros((d, 0))
    want = np.maximum(s.max(axis=0, initial=0.0), 0.0)
    np.testing.assert_array_equal(best, want)
    for i in range(n):
        if want[i] > 0:
            assert which[i] == cell[np.argmax(s[:, i]), i]
        else:
            assert which[i] == -1
