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

from poisonguard.detectors._common import TIE_JITTER, tie_break
from poisonguard.detectors._kernels import (
    _assign_cells,
    _best_cells,
    _class_from_list,
    _feature_major,
    _finite_within,
    _hash_rows,
    _knn_search,
    _log_cauchy,
    _neighbour_vote,
    _other_label_ends,
    _rank_left,
    _segment_residuals,
    _standardize,
    _tail_grid,
    _tail_matrix,
    _tail_scores,
    _trust_ratio,
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
    """Neighbours equal a brute-force sort, ties to the smaller index."""
    Q, R, k, _, _, _ = case
    n, m = Q.shape[0], R.shape[0]
    gd, gi = _knn_search(Q, R, np.full(n, -1, np.int64), np.full(m, -1, np.int64), k)
    want_d, want_i = reference_knn(Q, R, k, np.ones((n, m), bool))
    np.testing.assert_array_equal(gd, want_d)
    np.testing.assert_array_equal(gi, want_i)


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
    gd, gi = _knn_search(X, X, ids, ids, k)
    want_d, want_i = reference_knn(X, X, k, ~np.eye(n, dtype=bool))
    np.testing.assert_array_equal(gd, want_d)
    np.testing.assert_array_equal(gi, want_i)
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
    gd, gi = _knn_search(Q, R, neg_q, neg_r, k)
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
    gd, gi = _knn_search(Q, R, neg_q, neg_r, 5)
    want_d, want_i = reference_knn(Q, R, 5, np.ones((21, 700), bool))
    np.testing.assert_array_equal(gd, want_d)
    np.testing.assert_array_equal(gi, want_i)


def test_knn_skipping_repeated_ids_over_many_blocks_is_exact():
    """Queries that must skip reference rows (here three sharing their id) still start from
    a bound on their screened values, and the top-k stays exact. The reference is built so
    that a bound counting only k + extra rows would be tight: one near row in each of the
    k + extra groups of chunks the bound takes minima over, three of them the query's own
    id, every other row far; the k-th neighbour is then a far row the bound must let in."""
    k, kb, m = 7, 9, 769  # kb = k + the kernel's 2 extra slots
    rng = np.random.default_rng(5)
    R = (100.0 + rng.standard_normal((m, 4))).astype(np.float32)
    n_chunks = (m + 7) // 8
    near = np.array([8 * (g * n_chunks // kb) for g in range(kb)])
    R[near] = np.arange(1, kb + 1, dtype=np.float32)[:, None] * np.float32(0.5)
    r_ids = np.arange(m, dtype=np.int64) + 10
    r_ids[near[:3]] = 0
    Q = np.concatenate([np.zeros((1, 4), np.float32), R[:5]])
    q_ids = np.concatenate([[0], r_ids[:5]]).astype(np.int64)
    gd, gi = _knn_search(Q, R, q_ids, r_ids, k)
    allowed = q_ids[:, None] != r_ids[None, :]
    want_d, want_i = reference_knn(Q, R, k, allowed)
    assert np.isfinite(want_d).all()
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


@SETTINGS
@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(0, 9), st.integers(1, 5)),
        elements=st.floats(allow_nan=True, allow_infinity=True, width=64),
    ),
    st.floats(-1e3, 1e3),
    st.floats(1e-300, 1e300),
)
def test_standardize_matches_numpy(raw, center, scale):
    """Scaling to float32 equals numpy's; missing becomes 0, values past the bound
    (infinite or overflowing) become the signed bound."""
    c = np.full(raw.shape[1], center)
    s = np.full(raw.shape[1], scale)
    bound = 1e15
    with np.errstate(all="ignore"):
        want = (raw - c) / s
        want = np.where(np.isnan(want), 0.0, np.clip(want, -bound, bound)).astype(np.float32)
    np.testing.assert_array_equal(_standardize(raw, c, s, bound), want)


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


# ------------------------------------------------------ reading neighbour lists

# Squared distances on a coarse grid (so ties and exact zeros are common); inf marks a missing
# neighbour, whose index is -1.
list_distances = st.sampled_from([0.0, 0.0625, 0.25, 1.0, 1.25, 2.0, 4.0, np.inf])


@st.composite
def neighbour_lists(draw):
    """Ascending neighbour lists of n rows among m reference rows, with labels.

    Row labels run from -1 to n_classes (both unseen), reference labels from -1 to n_classes
    too; some rows hold fewer neighbours than k, or none."""
    n = draw(st.integers(0, 8))
    k = draw(st.integers(1, 6))
    m = draw(st.integers(1, 8))
    n_classes = draw(st.integers(1, 4))
    dist = np.sort(draw(hnp.arrays(np.float64, (n, k), elements=list_distances)), axis=1)
    index = draw(hnp.arrays(np.int64, (n, k), elements=st.integers(0, m - 1)))
    index[np.isinf(dist)] = -1
    labels = draw(hnp.arrays(np.int64, m, elements=st.integers(-1, n_classes)))
    y = draw(hnp.arrays(np.int64, n, elements=st.integers(-1, n_classes)))
    return dist, index, labels, y, n_classes


def reference_class_from_list(dist, index, q_lab, r_lab, kc):
    """The first kc same-label entries of each list by a stable sort, padded with inf / -1."""
    lab = np.where(index >= 0, r_lab[np.maximum(index, 0)], -2)
    same = (lab == q_lab[:, None]) & (q_lab[:, None] >= 0)
    # Stable sort of "not same" puts each row's same-label entries first, in list order.
    first = np.argsort(~same, axis=1, kind="stable")[:, :kc]
    held = np.arange(first.shape[1])[None, :] < same.sum(axis=1, keepdims=True)
    cdist = np.full((len(q_lab), kc), np.inf)
    cindex = np.full((len(q_lab), kc), -1, dtype=np.int64)
    cdist[:, : first.shape[1]] = np.where(held, np.take_along_axis(dist, first, axis=1), np.inf)
    cindex[:, : first.shape[1]] = np.where(held, np.take_along_axis(index, first, axis=1), -1)
    return cdist, cindex


@SETTINGS
@given(neighbour_lists(), st.integers(0, 7))
def test_class_from_list_matches_stable_sort(case, kc):
    """Each row gets the entries of its list carrying its label, in list order, up to kc;
    unseen labels and missing neighbours match nothing."""
    dist, index, labels, y, _ = case
    got_d, got_i = _class_from_list(dist, index, y, labels, kc)
    want_d, want_i = reference_class_from_list(dist, index, y, labels, kc)
    np.testing.assert_array_equal(got_d, want_d)
    np.testing.assert_array_equal(got_i, want_i)


def reference_vote(dist, index, neighbour_labels, prior, smoothing):
    """Distance-weighted label counts by bincount, plus smoothing pseudo-votes, normalised."""
    n = dist.shape[0]
    n_classes = len(prior)
    ok = (index >= 0) & np.isfinite(dist)
    d = np.where(ok, dist, 0.0)
    cnt = np.maximum(ok.sum(axis=1, keepdims=True), 1)
    scale = d.sum(axis=1, keepdims=True) / cnt
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(scale > 0, np.exp(-d / np.where(scale > 0, scale, 1.0)), 1.0)
    lab = np.where(ok, neighbour_labels[np.where(ok, index, 0)], -1)
    w = np.where(ok & (lab >= 0) & (lab < n_classes), w, 0.0)
    cells = np.arange(n)[:, None] * n_classes + np.clip(lab, 0, n_classes - 1)
    counted = np.bincount(cells.ravel(), weights=w.ravel(), minlength=n * n_classes)
    votes = counted.astype(np.float64).reshape(n, n_classes) + smoothing * prior[None, :]
    return votes / votes.sum(axis=1, keepdims=True)


@SETTINGS
@given(neighbour_lists(), st.sampled_from([0.5, 1.0, 3.0]))
def test_neighbour_vote_matches_bincount(case, smoothing):
    """The vote equals weighted bincounts; neighbours missing or labelled outside the classes
    do not vote, and all-zero distances weigh every neighbour equally."""
    dist, index, labels, _, n_classes = case
    prior = np.arange(1.0, n_classes + 1.0) / (n_classes * (n_classes + 1) / 2)
    got = _neighbour_vote(dist, index, labels, prior, smoothing)
    assert got.shape == (dist.shape[0], n_classes)
    np.testing.assert_allclose(
        got, reference_vote(dist, index, labels, prior, smoothing), rtol=1e-12
    )


def reference_trust_ratio(dist, index, class_dist, neighbour_labels, y, n_close):
    """log(d_own / d_other) by masks and cumulative sums over the whole lists."""
    n = dist.shape[0]
    ok_own = np.isfinite(class_dist)
    count_own = ok_own.sum(axis=1)
    d_own = np.sqrt(np.where(ok_own, class_dist, 0.0)).sum(axis=1) / np.maximum(count_own, 1)
    ok = np.isfinite(dist) & (index >= 0)
    lab = np.where(ok, neighbour_labels[np.maximum(index, 0)], -1)
    other = ok & (lab != y[:, None])
    take = other & (np.cumsum(other, axis=1) <= n_close)
    root = np.sqrt(np.where(ok, dist, 0.0))
    found = take.sum(axis=1)
    last = np.where(ok.any(axis=1), root[np.arange(n), np.maximum(ok.sum(axis=1) - 1, 0)], 0.0)
    d_other = (np.where(take, root, 0.0).sum(axis=1) + (n_close - found) * last) / n_close
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.log((d_own + 1e-12) / (d_other + 1e-12))
    score = np.where((count_own > 0) & np.isfinite(score), score, 0.0)
    return score, d_own, d_other


@SETTINGS
@given(neighbour_lists(), st.data())
def test_trust_ratio_matches_masked_sums(case, data):
    """d_own averages the finite own-label distances; d_other the first n_close other-label
    ones, completed with the list's farthest; the score is 0 without an own-label row."""
    dist, index, labels, y, _ = case
    n, k = dist.shape
    n_close = data.draw(st.integers(1, k))
    class_dist = np.sort(
        data.draw(hnp.arrays(np.float64, (n, n_close), elements=list_distances)), axis=1
    )
    got = _trust_ratio(dist, index, class_dist, labels, y, n_close)
    want = reference_trust_ratio(dist, index, class_dist, labels, y, n_close)
    # Sums of square roots are rounded in a different order: equal to the last bits, and the
    # score, a log ratio, to as many bits absolutely where it is near 0.
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-12)
    np.testing.assert_allclose(got[2], want[2], rtol=1e-12)


@SETTINGS
@given(neighbour_lists())
def test_other_label_ends_match_masks(case):
    """Present neighbours of another label keep their index, the rest get -1; the spread is
    the mean root distance over the present neighbours, 0 for none."""
    dist, index, labels, y, _ = case
    ok = (index >= 0) & np.isfinite(dist)
    lab = np.where(ok, labels[np.maximum(index, 0)], -1)
    other = ok & (lab != y[:, None])
    count = ok.sum(axis=1)
    spread = np.sqrt(np.where(ok, dist, 0.0)).sum(axis=1) / np.maximum(count, 1)
    got_i, got_spread = _other_label_ends(dist, index, labels, y)
    np.testing.assert_array_equal(got_i, np.where(other, index, -1))
    np.testing.assert_allclose(got_spread, spread, rtol=1e-12)


def reference_log_cauchy(logp, w, log_cap):
    """The weighted Cauchy combination in numpy (what decision.log_cauchy_combine once ran)."""
    logp = np.clip(np.nan_to_num(logp, nan=0.0), -np.inf, log_cap)
    p = np.exp(logp)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        log_t = np.where(
            logp < np.log(1e-15), -logp - np.log(np.pi), np.log(np.tan((0.5 - p) * np.pi))
        )
        top = np.max(log_t, axis=1)
        safe = np.where(np.isfinite(top), top, 0.0)
        log_stat = safe + np.log(np.sum(w * np.exp(log_t - safe[:, None]), axis=1))
        log_stat = np.where(np.isneginf(top), -np.inf, log_stat)
        stat = np.exp(np.minimum(log_stat, 700.0))
        out = np.where(
            log_stat > np.log(1e15),
            -log_stat - np.log(np.pi),
            np.log(0.5 - np.arctan(stat) / np.pi),
        )
    return np.minimum(out, 0.0)


@SETTINGS
@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(0, 8), st.integers(1, 6)),
        elements=st.one_of(
            st.floats(-800.0, 0.0),
            st.floats(-1e-12, 0.0),
            st.sampled_from([-np.inf, np.nan, 0.0, -1e300, np.log(1e-15)]),
        ),
    ),
    st.data(),
)
def test_log_cauchy_matches_numpy(logp, data):
    """The compiled combination equals the numpy one, tails, NaN and -inf included."""
    k = logp.shape[1]
    w = np.asarray(data.draw(st.lists(st.floats(0.01, 5.0), min_size=k, max_size=k)))
    w = w / w.sum()
    got = _log_cauchy(logp, w, float(np.log(0.5)))
    np.testing.assert_allclose(got, reference_log_cauchy(logp, w, np.log(0.5)), rtol=1e-12)


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


@SETTINGS
@given(
    hnp.arrays(np.float64, st.integers(0, 30), elements=grid_values),
    hnp.arrays(
        np.float64,
        st.integers(0, 30),
        elements=st.one_of(grid_values, st.sampled_from([np.nan, np.inf, -np.inf])),
    ),
)
def test_rank_left_matches_searchsorted(a, x):
    """Ranks equal numpy's searchsorted(side='left'), ties, infinities and NaN included."""
    a = np.sort(a)
    np.testing.assert_array_equal(_rank_left(a, x), np.searchsorted(a, x, side="left"))


def test_tie_break_is_a_rows_own_and_uniform_below_the_jitter():
    """The jitter is the fractional part of a fixed projection of the row (0 for a row with
    a missing or infinite cell): the same for a row alone, in any slice or in the batch, and
    spread over [0, TIE_JITTER)."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(5000, 7)).astype(np.float32)
    X[3, 2], X[4, 0] = np.nan, np.inf
    jitter = tie_break(X)
    w = np.random.default_rng(0x5EED).uniform(1e3, 1e4, size=7)
    z = (X.astype(np.float64) * w).sum(axis=1)
    expected = np.where(np.isfinite(z), np.mod(np.nan_to_num(z, posinf=0.0), 1.0), 0.0)
    np.testing.assert_allclose(jitter / TIE_JITTER, expected, atol=1e-6)
    assert jitter[3] == jitter[4] == 0.0
    assert np.array_equal(tie_break(X[100:110]), jitter[100:110])
    assert tie_break(X[[42]])[0] == jitter[42]
    assert (jitter >= 0).all() and (jitter < TIE_JITTER).all()
    assert np.histogram(jitter, bins=10, range=(0, TIE_JITTER))[0].min() > 400
