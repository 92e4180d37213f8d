"""Duplicate floods and label conflicts: many copies of one row, or one row with two labels.

``find_near_copies`` asks the same question of two sets of rows (is this row a
copy of one of those, up to the tolerance?) for the blocklist of rows reviewers
rejected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Self

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from poisonguard.detectors._common import WithinBatchBase
from poisonguard.detectors._kernels import _hash_rows
from poisonguard.detectors._stats import poisson_surprise
from poisonguard.detectors.base import _FEATURE_BOUND, Table

_LABEL_MIX = np.uint64(0xD6E8FEB86659FD93)
# Where a missing cell sits in the tolerance search: ``Table.x32`` lies within
# +-_FEATURE_BOUND, so a missing cell is farther from every present value than
# any tolerance reaches, and at distance 0 from another missing cell.
_MISSING_AT = 4.0 * _FEATURE_BOUND


def _scaled(table: Table) -> np.ndarray:
    """``table.x32`` with missing cells NaN again, so that they stay distinct from the mean.

    Returns
    -------
    ndarray of shape (n_rows, n_features), float32
    """
    X = table.x32
    missing = np.isnan(table.raw)
    if missing.any():
        X = np.where(missing, np.float32(np.nan), X)
    return X


def _row_keys(table: Table, tol: float) -> np.ndarray:
    """Hash of each row on the scaled axis, missing values kept distinct from the median."""
    return _hash_rows(_scaled(table), tol)


def find_near_copies(
    batch: Table,
    known: Table,
    tolerance: float,
    *,
    batch_keys: np.ndarray | None = None,
    known_keys: np.ndarray | None = None,
    target_scale: float = 1.0,
) -> np.ndarray:
    """For each batch row, the nearest known row it copies up to ``tolerance``; -1 for none.

    Two rows are near-copies when every value the duplicates detector hashes
    (``Table.x32``: numbers and dates on the trusted scale, each category and
    boolean one-hot, the missing-cell indicators and the count of never-seen
    values; not the text columns) differs by at most ``tolerance``, a missing
    cell matches only a missing cell, and their labels are equal. This is the
    detector's notion of a copy without its grid: rows it hashes together (one
    cell of step ``tolerance``) are within the tolerance and match here, and
    so do rows within the tolerance that fall on either side of a cell
    boundary and hash apart. With ``tolerance`` 0 only equal values match.

    The search is a Chebyshev-radius query of a k-d tree over the known rows,
    one tree per label: no pair of rows is compared in Python, and thousands
    of known rows cost about as much as one.

    Parameters
    ----------
    batch, known : Table
        Rows encoded by one ``Encoder``.
    tolerance : float
        Largest difference, on the scaled axis, of two values that count as
        equal (the duplicates detector's ``tolerance``), >= 0.
    batch_keys, known_keys : ndarray of shape (batch.n_rows,) and (known.n_rows,), optional
        Exact keys of the rows' labels (any hashable values): only rows with
        equal keys match. Default: the tables' label codes, where every label
        the trusted rows never had counts as one; pass keys to tell those apart.
    target_scale : float, default 1.0
        For regression tables (``Table.target``), the target's scale: targets
        match when they differ by at most ``tolerance * target_scale``.

    Returns
    -------
    ndarray of shape (batch.n_rows,), int64
        A row position in ``known``, or -1.
    """
    n = batch.n_rows
    out = np.full(n, -1, dtype=np.int64)
    if n == 0 or known.n_rows == 0:
        return out
    Q, R = _scaled(batch).astype(np.float64), _scaled(known).astype(np.float64)
    if batch.target is not None and known.target is not None:
        bound = (-_FEATURE_BOUND, _FEATURE_BOUND)
        Q = np.hstack([Q, np.clip(batch.target / target_scale, *bound)[:, None]])
        R = np.hstack([R, np.clip(known.target / target_scale, *bound)[:, None]])
    Q, R = np.nan_to_num(Q, nan=_MISSING_AT), np.nan_to_num(R, nan=_MISSING_AT)
    if batch_keys is None and known_keys is None and batch.y is not None and known.y is not None:
        batch_keys, known_keys = batch.y, known.y
    if batch_keys is None or known_keys is None:
        q_group, r_group = np.zeros(n, np.int64), np.zeros(known.n_rows, np.int64)
    else:
        codes = pd.factorize(np.concatenate([np.asarray(known_keys), np.asarray(batch_keys)]))[0]
        r_group, q_group = codes[: known.n_rows], codes[known.n_rows :]
    # The tree's bound is strict; the next float up makes it "at most the tolerance".
    radius = float(np.nextafter(float(tolerance), np.inf))
    for group in np.unique(r_group):  # one tree per label among the known rows
        ref = np.flatnonzero(r_group == group)
        rows = np.flatnonzero(q_group == group)
        if rows.size == 0:
            continue
        _, nearest = cKDTree(R[ref]).query(Q[rows], k=1, p=np.inf, distance_upper_bound=radius)
        found = nearest < ref.size  # a miss is reported as the tree's size
        out[rows[found]] = ref[nearest[found]]
    return out


def _pair_keys(keys: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Keys of (row, label) pairs: rows equal up to the tolerance and with the same label."""
    return keys ^ ((y.astype(np.uint64) + np.uint64(1)) * _LABEL_MIX)


def _lookup(sorted_keys: np.ndarray, counts: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """How many times each key occurs in a sorted, counted key set (0 if absent)."""
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return np.where(sorted_keys[pos] == keys, counts[pos], 0)


def _counted(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    uniq, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    return uniq, inverse.reshape(-1), counts


def _summed(keys: list[np.ndarray], counts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Several sorted, counted key sets as one: each key once, its counts added."""
    uniq, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    total = np.bincount(inverse.reshape(-1), weights=np.concatenate(counts), minlength=uniq.size)
    return uniq, total.astype(np.int64)


@dataclass(frozen=True, eq=False)
class CopyCounts:
    """The duplicates detector's summary of rows: how often each row hash occurs.

    About 16 bytes per distinct row (twice that with labels): the counts must be
    exact, and a row's copies may lie in any chunk.

    Attributes
    ----------
    n_rows : int
        Rows summarised.
    keys : ndarray of shape (n_keys,), uint64
        Distinct row hashes (``_row_keys``), sorted.
    counts : ndarray of shape (n_keys,), int64
        Rows with each.
    pair_keys, pair_counts : ndarray of shape (n_pairs,)
        The same for (row hash, label) pairs; empty without labels.
    """

    n_rows: int
    keys: np.ndarray
    counts: np.ndarray
    pair_keys: np.ndarray
    pair_counts: np.ndarray


class DuplicatesDetector(WithinBatchBase):
    """Floods of (near-)identical rows, copies of trusted rows, and label conflicts.

    Rows are grouped by a 64-bit hash of their scaled features rounded to a
    grid of step ``tolerance`` (0: bit-identical): every number, category,
    boolean, date and missing cell, but not the text columns (ids, names, free
    text). Models learn from the former, so rows equal there are copies to a
    model whatever their names say, and an attacker cannot hide a flood by
    giving each copy another name. A row scores the sum of

    * flood: ``-log P(N >= copies)`` with N the number of other batch rows
      expected to share its group, ``Poisson((n_batch - 1) * (c + m q) / (m + 1))``
      for a row with c copies among m trusted rows, where q is how often two
      trusted rows coincide (half a pair added, so data with no repeats gets
      a small q, and data full of natural repeats a large one). A few copies
      of a row in a table of real-valued measurements are then surprising,
      while fifty copies score in the hundreds, and the score does not grow
      with the batch size for ordinary repeats;
    * trusted copy: half the twin surprise ``-log`` (how often a trusted row
      has a copy elsewhere in the trusted set), when the row copies a trusted
      row (harmless but redundant);
    * conflict (with labels): the twin surprise, plus ``-log`` of how often
      trusted duplicates disagree on their label (smoothed towards rare),
      plus ``log1p`` of the rows that share its features but not its label,
      in the batch or among trusted rows.

    Most rows score exactly 0: no evidence either way, so their conformal
    p-value is 1 and they add nothing to the combination. Every part is a
    surprise (``-log`` of a probability under its null), so the score is in
    nats and the decision's tail beyond the calibration maximum decays no
    faster than ``exp(-score)`` (``tail_scale = 1``): a flood far larger than
    any the trusted rows showed gets the small p-value its Poisson tail says,
    not just the coarsest conformal one. Label-free: conflicts need labels and
    are skipped without them.

    Parameters
    ----------
    tolerance : float
        Grid step on the scaled axis (in trusted standard deviations, ``Table.X``) within
        which rows count as copies (>= 0).
    """

    name: ClassVar[str] = "duplicates"
    needs_label: ClassVar[bool] = False
    tail_scale: ClassVar[float | None] = 1.0
    # When a flood is real its surprise runs to tens or hundreds of nats, so half
    # a share of the combination costs it little and leaves more to the others.
    weight: ClassVar[float] = 0.5

    def __init__(self, *, tolerance: float = 1e-3):
        self.tolerance = tolerance

    def _validate_params(self) -> None:
        self._check_real("tolerance", 0.0)

    def _fit(self, reference: Table) -> Self:
        tol = float(self.tolerance)
        self.tol_ = tol
        keys = _row_keys(reference, tol)
        m = len(keys)
        self.m_ = m
        self.keys_, inverse, self.counts_ = _counted(keys)
        copies = self.counts_[inverse] if m else np.zeros(0, np.int64)
        # How often two trusted rows coincide, half a pair added for the sets
        # that show none: m times this is how many copies a row the trusted set
        # has never seen is expected to have among m rows.
        pairs_equal = float(np.sum(self.counts_ * (self.counts_ - 1) / 2.0))
        self.pair_rate_ = (pairs_equal + 0.5) / (m * (m - 1) / 2.0 + 1.0)
        # How often a trusted row has a copy elsewhere in the trusted set.
        self.copy_rate_ = (float(np.sum(copies >= 2)) + 0.5) / (m + 1.0)
        self.labelled_ = reference.y is not None
        self.pair_keys_ = np.zeros(0, np.uint64)
        self.pair_counts_ = np.zeros(0, np.int64)
        self.conflict_rate_ = 0.1
        if reference.y is not None and m:
            pairs = _pair_keys(keys, reference.y)
            self.pair_keys_, pinv, self.pair_counts_ = _counted(pairs)
            same_label = self.pair_counts_[pinv]
            # Among trusted rows with a copy, the share whose copies carry
            # another label; smoothed towards "rare" when there are few.
            dup = copies >= 2
            clash = dup & (same_label < copies)
            self.conflict_rate_ = (float(clash.sum()) + 0.1) / (float(dup.sum()) + 1.0)
        return self

    def _summarize(self, batch: Table, positions: np.ndarray, prior: object) -> CopyCounts:
        keys = _row_keys(batch, self.tol_)
        uniq, _, counts = _counted(keys)
        pair_keys, pair_counts = np.zeros(0, np.uint64), np.zeros(0, np.int64)
        if batch.y is not None and self.labelled_:
            pair_keys, _, pair_counts = _counted(_pair_keys(keys, batch.y))
        return CopyCounts(batch.n_rows, uniq, counts, pair_keys, pair_counts)

    def _merge(self, parts: list[CopyCounts]) -> CopyCounts:
        if len(parts) == 1:
            return parts[0]
        keys, counts = _summed([p.keys for p in parts], [p.counts for p in parts])
        pairs, pair_counts = _summed([p.pair_keys for p in parts], [p.pair_counts for p in parts])
        return CopyCounts(sum(p.n_rows for p in parts), keys, counts, pairs, pair_counts)

    def _parts(self, batch: Table, summary: CopyCounts) -> dict[str, np.ndarray]:
        keys = _row_keys(batch, self.tol_)
        n = summary.n_rows
        in_batch = _lookup(summary.keys, summary.counts, keys)
        trusted = _lookup(self.keys_, self.counts_, keys)
        unseen_copies = self.m_ * self.pair_rate_
        lam = max(n - 1, 1) * (trusted + unseen_copies) / (self.m_ + 1.0)
        flood = poisson_surprise(in_batch - 1, lam)
        twin = -math.log(self.copy_rate_)
        # A copy of a trusted row adds nothing to training (mildly suspicious);
        # a twin with another label is both a twin and a disagreement.
        copy = np.where(trusted > 0, 0.5 * twin, 0.0)
        others = np.zeros(batch.n_rows, dtype=np.int64)
        if batch.y is not None and self.labelled_:
            pairs = _pair_keys(keys, batch.y)
            same_batch = _lookup(summary.pair_keys, summary.pair_counts, pairs)
            same_trusted = _lookup(self.pair_keys_, self.pair_counts_, pairs)
            others = (in_batch - same_batch) + (trusted - same_trusted)
        clash = twin - math.log(self.conflict_rate_)
        conflict = np.where(others > 0, clash + np.log1p(others), 0.0)
        return {
            "score": flood + copy + conflict,
            "in_batch": in_batch,
            "trusted": trusted,
            "others": others,
            "expected": lam + 1.0,
        }

    _fitted_attr: ClassVar[str] = "keys_"

    def _score_with(self, batch: Table, summary: CopyCounts, positions: np.ndarray) -> np.ndarray:
        return self._parts(batch, summary)["score"]

    def _explain_with(
        self, batch: Table, rows: np.ndarray, summary: CopyCounts, positions: np.ndarray
    ) -> list[str]:
        parts = self._parts(batch, summary)
        what = "identical" if self.tol_ == 0 else "near-identical"
        out = []
        for r in rows:
            bits = []
            if parts["in_batch"][r] > 1:
                bits.append(
                    f"one of {parts['in_batch'][r]} {what} rows in this batch "
                    f"(about {parts['expected'][r]:.2g} expected)"
                )
            if parts["trusted"][r] > 0:
                bits.append(f"copies {parts['trusted'][r]} trusted row(s)")
            if parts["others"][r] > 0 and batch.y is not None:
                bits.append(
                    f"{parts['others'][r]} row(s) with the same features carry a label other "
                    f"than {batch.label_of(int(batch.y[r]))}"
                )
            out.append("; ".join(bits) if bits else "no copies in this batch or the trusted set")
        return out
