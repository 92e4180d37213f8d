"""Backdoor triggers: a value rare among trusted rows that, in the batch, comes with one label."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from itertools import combinations
from typing import ClassVar, Self

import numpy as np

from poisonguard.detectors._common import (
    WithinBatchBase,
    class_prior,
    keyed_hash,
    labels_of,
    tie_break,
)
from poisonguard.detectors._kernels import (
    _assign_cells,
    _best_cells,
    _feature_major,
)
from poisonguard.detectors._stats import beta_binomial_surprise, binomial_surprise
from poisonguard.detectors.base import Table

# Cells not even this surprising (-log p) on the cheap bounds are left with
# those bounds; only the rest get exact tails (saves time only).
_OVER_SCREEN = 3.0
# Pair cells x label slots counted at most (8 bytes each, in the summary and the fit):
# a table with many wide categorical columns and many classes examines fewer pairs.
_PAIR_COUNTS = 1 << 22
# A value is counted exactly over the batch when the sample holds it this often. At most
# min_support (>= 2), so in a batch no larger than the sample every value that could
# reach min_support is counted.
_SAMPLE_REPEATS = 2


def _sorted_quantiles(col: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """``np.quantile(col, qs)`` (linear interpolation) of an already sorted column."""
    at = qs * (len(col) - 1)
    lo = np.floor(at).astype(np.int64)
    hi = np.minimum(lo + 1, len(col) - 1)
    low = col[lo].astype(np.float64)
    return low + (col[hi].astype(np.float64) - low) * (at - lo)


def _pair_columns(
    sizes: list[int], max_pairs: int, max_cells: int
) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of categorical columns examined (the fewest joint values first, at most
    ``max_pairs`` and ``max_cells`` cells in all) and where each pair's cells start among
    all pair cells.

    Returns
    -------
    pairs : ndarray of shape (n_pairs, 2), int64
    offsets : ndarray of shape (n_pairs + 1,), int64
        Pair ``p``'s cells are ``offsets[p]`` up to ``offsets[p + 1]``.
    """
    every = sorted(combinations(range(len(sizes)), 2), key=lambda ab: sizes[ab[0]] * sizes[ab[1]])
    widths = np.array([sizes[a] * sizes[b] for a, b in every], dtype=np.int64)
    n = min(max_pairs, int(np.sum(np.cumsum(widths) <= max_cells)))
    pairs = np.array(every[:n], dtype=np.int64).reshape(-1, 2)
    return pairs, np.concatenate([[0], np.cumsum(widths[:n])]).astype(np.int64)


def _pair_cells(codes: np.ndarray, sizes: np.ndarray, a: int, b: int, offset: int) -> np.ndarray:
    """Each row's cell of the column pair ``(a, b)``: its two values' codes, a value the
    trusted rows never show coded as the column's last level."""
    ca = np.where(codes[:, a] >= 0, codes[:, a], sizes[a] - 1)
    cb = np.where(codes[:, b] >= 0, codes[:, b], sizes[b] - 1)
    return offset + ca * sizes[b] + cb


@dataclass(frozen=True, eq=False)
class ValueSample:
    """The backdoor scan's first pass over a batch: its size and a sample of its rows.

    The sample is the ``max_batch`` rows whose keyed hash of their position is
    smallest (every row, in a batch no larger): a uniform sample that any chunking
    finds alike. The values it holds at least twice are the ones the second pass
    counts exactly (``CellCounts``).

    Attributes
    ----------
    n_rows : int
    hashes : ndarray of shape (n_sampled,), uint64
        The sampled rows' hashes, ascending.
    values : ndarray of shape (n_sampled, n_features), float32
        Their features (``Table.x32``).
    """

    n_rows: int
    hashes: np.ndarray
    values: np.ndarray

    @cached_property
    def repeated(self) -> tuple[np.ndarray, np.ndarray]:
        """Per feature, the values the sample holds at least twice, sorted: the values
        of every feature concatenated (float32), and how many each feature has."""
        found = []
        for column in self.values.T:
            # + 0.0 folds -0.0 into 0.0: they are one value to the cells.
            v, c = np.unique(column + np.float32(0.0), return_counts=True)
            found.append(v[c >= _SAMPLE_REPEATS])
        counts = np.array([len(v) for v in found], dtype=np.int64)
        values = np.concatenate(found) if found else np.zeros(0, np.float32)
        return values.astype(np.float32), counts


@dataclass(frozen=True, eq=False)
class CellCounts:
    """The backdoor scan's second pass: every cell's rows per label.

    Attributes
    ----------
    n_rows : int
    candidates, candidate_counts : ndarray
        ``ValueSample.repeated``: the values counted exactly, per feature.
    labels : ndarray of shape (n_bins + n_candidates, n_slots), int64
        Rows of each label slot in every feature's bins (rows at a candidate value
        left out) and at every candidate value.
    pair_labels : ndarray of shape (n_pair_cells, n_slots), int64
        Rows of each label slot at every pair of categorical values
        (``BackdoorDetector.pairs_``).
    """

    n_rows: int
    candidates: np.ndarray
    candidate_counts: np.ndarray
    labels: np.ndarray
    pair_labels: np.ndarray


@dataclass(frozen=True, eq=False)
class _Cells:
    """The cells a batch is scored against, and their scores.

    Attributes
    ----------
    n_rows : int
        Rows scanned (the batch and its window).
    scores : ndarray of shape (n_cells, n_slots), float64
        Every cell's score for every label.
    exact, exact_starts, exact_counts : ndarray
        The exact-value cells' values, per feature (as ``_assign_cells`` takes them).
    feature : ndarray of shape (n_cells,), int64
        Each cell's feature.
    is_exact : ndarray of shape (n_cells,), bool
        Whether a cell is an exact value (else a bin).
    labels, trusted : ndarray of shape (n_cells, n_slots), int64
        Each cell's batch and trusted rows per label slot.
    pair_scores : ndarray of shape (n_pair_cells, n_slots), float64
        Every pair cell's score for every label; its rows per label are
        ``CellCounts.pair_labels`` and ``BackdoorDetector.pair_trusted_``.
    log_tests, log_pair_tests : float
        What each family's best score is corrected by: ``log`` of the (cell, label)
        pairs it examined, plus ``log`` of the number of families (Bonferroni with
        each family's share of the level: features' cells, and pair cells when the
        table has pairs).
    """

    n_rows: int
    scores: np.ndarray
    exact: np.ndarray
    exact_starts: np.ndarray
    exact_counts: np.ndarray
    feature: np.ndarray
    is_exact: np.ndarray
    labels: np.ndarray
    trusted: np.ndarray
    pair_scores: np.ndarray
    log_tests: float
    log_pair_tests: float


class BackdoorDetector(WithinBatchBase):
    """Rows carrying a value that is rare in the trusted set but, in the batch, common and label-pure.

    A trigger sets a few features to an unusual value on rows of many true
    classes, all labelled with the attacker's target. Per feature, batch rows
    are grouped into cells, both by exact value (values shared by at least
    ``min_support`` batch rows) and by bins between trusted quantiles (plus
    one bin below and one above every trusted value). A cell is scored for
    each label as the smaller of

    * over-representation: ``-log P(N >= count)``, N Poisson with the count
      the trusted frequency of the cell predicts for this batch, and
    * label purity: ``-log P(B >= count with that label)``, B binomial with
      the label's share among trusted rows of the cell (smoothed towards the
      class prior),

    so a cell must be both far more common than trusted rows make it and far
    more of one label than they make it. A row scores the highest such value
    over its features' cells for its own label, minus ``log`` of the number of
    (cell, label) pairs examined (Bonferroni, so that clean batches score
    about 0 whatever their size), floored at 0; most rows score 0 (plus a
    deterministic jitter below ``1e-9`` from the row's hash, so tied rows get
    uniform rather than unit conformal p-values). The score depends on the
    batch as a whole: a trigger seen on only a handful of rows cannot stand out.

    Pairs of categorical (and boolean) values are cells too: a trigger made of
    two values that are each common (``plan = 'basic'`` and ``region =
    'north'``) hides in each value's cell among the honest rows that carry it,
    but its pair is as rare among trusted rows as the trigger is new. A pair
    cell's purity is measured against what its values already say: its
    pseudo-rows are drawn from the label shares of whichever of its two values
    (among trusted rows) gives the label the larger share, so a pair is not
    label-pure by chance when one of its values alone decides the label (every
    penguin of Torgersen island is an Adelie, so Torgersen females are too). Every
    pair of categorical columns is examined, those with the fewest joint values
    first, up to ``max_pairs``; a value the trusted rows never show is one more
    value of its column. Pair cells are scored as the others and count in the
    Bonferroni correction.

    Which values get a cell of their own is decided on a sample, so that the
    scan's summary stays small however large the batch (``WithinBatchDetector``):
    a first pass keeps the ``max_batch`` rows of smallest keyed hash of their
    position, a second counts exactly, over the whole batch, the values that
    sample holds at least twice, and those reaching ``min_support`` rows are the
    exact-value cells. In a batch of at most ``max_batch`` rows (the window
    included) the sample is the batch, and every value shared by ``min_support``
    rows has its cell; in a larger one, a value on a share ``f`` of the rows is
    found with probability about ``1 - (1 + f k) exp(-f k)``, ``k`` =
    ``max_batch`` (95% at ``f k = 4.7``). Bins cover every row either way.

    Parameters
    ----------
    min_support : int
        Fewest batch rows a cell needs to be examined (>= 2).
    n_bins : int
        Quantile bins per feature between the trusted extremes (>= 1).
    smoothing : float
        Pseudo-rows of the class prior added to each cell's trusted labels (> 0).
    max_batch : int
        Rows sampled to find the values worth a cell of their own (>= 2).
    max_pairs : int
        Most pairs of categorical columns examined (>= 0); fewer when their cells times
        the labels pass about four million counts.
    random_state : int
        Key of the sample's hash: a deployment that sets its own keeps an attacker
        from placing a trigger on rows the sample leaves out.
    """

    name: ClassVar[str] = "backdoor"
    # A trigger split over batches of one source adds up in its recent rows.
    windowed: ClassVar[bool] = True
    needs_label: ClassVar[bool] = True
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    # Like duplicates: a real trigger cell is surprising by tens of nats, so half a
    # share of the combination is enough.
    weight: ClassVar[float] = 0.5
    # A sample of the batch, then exact counts of the values it repeats.
    summary_passes: ClassVar[int] = 2
    # (the last summary scored against, its cells): explaining rows right after
    # scoring them costs no second scoring of the cells.
    _ready: tuple[CellCounts, _Cells] | None = None

    def __init__(
        self,
        *,
        min_support: int = 5,
        n_bins: int = 64,
        smoothing: float = 10.0,
        max_batch: int = 32768,
        max_pairs: int = 300,
        random_state: int = 0,
    ):
        self.min_support = min_support
        self.n_bins = n_bins
        self.smoothing = smoothing
        self.max_batch = max_batch
        self.max_pairs = max_pairs
        self.random_state = random_state

    def _validate_params(self) -> None:
        self._check_int("min_support", 2)
        self._check_int("n_bins", 1)
        self._check_real("smoothing", 0.0, low_open=True)
        self._check_int("max_batch", 2)
        self._check_int("max_pairs", 0)
        self._check_seed()

    def _fit(self, reference: Table) -> Self:
        self.min_support_ = int(self.min_support)
        self.max_batch_ = int(self.max_batch)
        self.seed_ = int(self.random_state)
        n_bins = int(self.n_bins)
        self.smoothing_ = float(self.smoothing)
        y = labels_of(reference, self.name, "reference")
        X = reference.x32
        self.n_slots_ = reference.n_classes + 1  # last slot: labels the reference never had
        self.m_ = reference.n_rows
        prior = class_prior(y, reference.n_classes)
        # The unseen slot gets a tiny prior so its purity can still be measured.
        self.prior_ = np.append(prior, 1.0 / (self.m_ + 1.0))
        self.prior_ /= self.prior_.sum()
        self.ref_y_ = self._slots(y)
        # Feature-major (one contiguous row per feature): every step reads one feature.
        XT = _feature_major(X)
        order = np.argsort(XT, axis=1)
        self.sorted_ = np.take_along_axis(XT, order, axis=1)
        # Trusted labels in each feature's sorted order: the labels of a run of equal values.
        self.sorted_y_ = self.ref_y_[order]
        qs = np.linspace(0.0, 1.0, n_bins + 1)
        self.edges_ = []
        self.bin_counts_ = []
        for f in range(X.shape[1]):
            col = self.sorted_[f]
            edges = np.unique(_sorted_quantiles(col, qs)) if len(col) else np.zeros(0, np.float32)
            edges = edges.astype(np.float32)
            self.edges_.append(edges)
            # Bin k holds the values with k edges at or below them: in the sorted
            # column, a run between consecutive edge positions.
            pos = np.searchsorted(col, edges, side="left")
            runs = np.diff(np.concatenate([[0], pos, [len(col)]]))
            b = np.repeat(np.arange(len(edges) + 1), runs)
            cnt = np.bincount(
                b * self.n_slots_ + self.sorted_y_[f], minlength=(len(edges) + 1) * self.n_slots_
            )
            self.bin_counts_.append(cnt.reshape(len(edges) + 1, self.n_slots_))
        self.edge_counts_ = np.array([len(e) for e in self.edges_], dtype=np.int64)
        self.edge_starts_ = np.cumsum(self.edge_counts_) - self.edge_counts_
        self.edges_flat_ = (
            np.concatenate(self.edges_).astype(np.float64) if self.edges_ else np.zeros(0)
        )
        self.features_ = reference.features
        self._fit_pairs(reference)
        self._ready = None
        return self

    def _fit_pairs(self, reference: Table) -> None:
        """The pairs of categorical columns examined and their trusted rows per label."""
        codes = reference.codes
        k = codes.shape[1] if codes.ndim == 2 else 0
        self.categories_ = reference.categories
        # One more level per column: values the trusted rows never show.
        self.pair_sizes_ = np.array([len(v) + 1 for _, v in reference.categories], np.int64)
        self.pairs_, self.pair_offsets_ = _pair_columns(
            list(self.pair_sizes_),
            int(self.max_pairs) if k >= 2 else 0,
            _PAIR_COUNTS // self.n_slots_,
        )
        self.pair_trusted_ = self._pair_counts(codes, self.ref_y_)
        # Each value's trusted label shares, smoothed as a cell's are (the pair cells' base).
        n_slots, s = self.n_slots_, self.smoothing_
        self.value_shares_ = []
        for j in range(k):
            at = np.where(codes[:, j] >= 0, codes[:, j], self.pair_sizes_[j] - 1)
            size = int(self.pair_sizes_[j])
            cnt = np.bincount(at * n_slots + self.ref_y_, minlength=size * n_slots)
            cnt = cnt.reshape(size, n_slots)
            self.value_shares_.append((cnt + s * self.prior_) / (cnt.sum(axis=1)[:, None] + s))

    def _pair_base(self, cells: np.ndarray) -> np.ndarray:
        """Per pair cell of ``cells``, each label's share its pseudo-rows are drawn with:
        the larger of its two values' trusted shares, ndarray (len(cells), n_slots)."""
        p = np.searchsorted(self.pair_offsets_, cells, side="right") - 1
        out = np.empty((len(cells), self.n_slots_))
        for q in np.unique(p):
            a, b = (int(j) for j in self.pairs_[q])
            mine = p == q
            local = cells[mine] - self.pair_offsets_[q]
            size_b = int(self.pair_sizes_[b])
            out[mine] = np.maximum(
                self.value_shares_[a][local // size_b], self.value_shares_[b][local % size_b]
            )
        return out

    def _pair_counts(self, codes: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Rows per label slot at every pair cell, ndarray of shape (n_pair_cells, n_slots)."""
        n_cells, n_slots = int(self.pair_offsets_[-1]), self.n_slots_
        out = np.zeros(n_cells * n_slots, dtype=np.int64)
        for p, (a, b) in enumerate(self.pairs_):
            cells = _pair_cells(codes, self.pair_sizes_, a, b, int(self.pair_offsets_[p]))
            out += np.bincount(cells * n_slots + slots, minlength=n_cells * n_slots)
        return out.reshape(n_cells, n_slots)

    def _slots(self, y: np.ndarray) -> np.ndarray:
        ok = (y >= 0) & (y < self.n_slots_ - 1)
        return np.where(ok, y, self.n_slots_ - 1).astype(np.int64)

    def _cell_scores(
        self,
        count: np.ndarray,
        label_counts: np.ndarray,
        trusted: np.ndarray,
        n: int,
        *,
        pairs: bool = False,
    ) -> np.ndarray:
        """Scores of cells x labels, ndarray of shape (n_cells, n_slots).

        Both tests compare the batch with a *sample* (the trusted rows), so
        their noise is accounted for: over-representation conditions on the
        cell's total over batch and trusted rows; purity uses a beta-binomial
        whose prior is the cell's trusted labels plus ``smoothing`` pseudo-rows
        of the class prior (of ``_pair_base`` for pair cells, ``pairs``).
        Without this, clean batches would score higher the larger they are.
        """
        cell = np.zeros(label_counts.shape)
        # Cells with fewer than min_support batch rows score 0: only the others are tested.
        live = np.flatnonzero(count >= self.min_support_)
        count, label_counts, trusted = count[live], label_counts[live], trusted[live]
        total_trusted = trusted.sum(axis=1)
        q = n / (n + self.m_)
        over = binomial_surprise(count, count + total_trusted, q)
        base = self._pair_base(live) if pairs else self.prior_
        a = trusted + self.smoothing_ * base
        b = (total_trusted + self.smoothing_)[:, None] - a
        # Plain binomial purity is a cheap upper bound on the beta-binomial one;
        # only cells it cannot rule out get the exact (slower) tail.
        scores = np.minimum(
            over[:, None], binomial_surprise(label_counts, count[:, None], a / (a + b))
        )
        hot = np.nonzero(scores > _OVER_SCREEN)
        if len(hot[0]):
            exact = beta_binomial_surprise(label_counts[hot], count[hot[0]], a[hot], b[hot])
            scores[hot] = np.minimum(over[hot[0]], exact)
        cell[live] = scores
        return cell

    # ------------------------------------------------------------------ summary
    def _summarize(
        self, batch: Table, positions: np.ndarray, prior: ValueSample | None
    ) -> ValueSample | CellCounts:
        if prior is None:
            hashes = keyed_hash(positions, self.seed_)
            keep = np.argsort(hashes, kind="stable")[: self.max_batch_]
            return ValueSample(batch.n_rows, hashes[keep], batch.x32[keep])
        y = self._slots(labels_of(batch, self.name, "batch"))
        candidates, counts = prior.repeated
        _, labels = self._assign(batch.x32, y, candidates, counts)
        return CellCounts(
            batch.n_rows, candidates, counts, labels, self._pair_counts(batch.codes, y)
        )

    def _merge(self, parts: list[ValueSample | CellCounts]) -> ValueSample | CellCounts:
        if len(parts) == 1:
            return parts[0]
        n = sum(p.n_rows for p in parts)
        if all(isinstance(p, ValueSample) for p in parts):
            samples = [p for p in parts if isinstance(p, ValueSample)]
            hashes = np.concatenate([p.hashes for p in samples])
            keep = np.argsort(hashes, kind="stable")[: self.max_batch_]
            values = np.concatenate([p.values for p in samples])
            return ValueSample(n, hashes[keep], values[keep])
        counts = [p for p in parts if isinstance(p, CellCounts)]
        if len(counts) != len(parts):
            raise ValueError("backdoor: summaries of different passes cannot be merged")
        first = counts[0]
        labels = np.sum([p.labels for p in counts], axis=0)
        pair_labels = np.sum([p.pair_labels for p in counts], axis=0)
        return CellCounts(n, first.candidates, first.candidate_counts, labels, pair_labels)

    def _assign(
        self, X: np.ndarray, y: np.ndarray, exact: np.ndarray, exact_counts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every value's cell and every cell's rows per label, with ``exact`` values as cells."""
        return _assign_cells(
            _feature_major(X),
            y,
            self.edges_flat_,
            self.edge_starts_,
            self.edge_counts_,
            exact,
            np.cumsum(exact_counts) - exact_counts,
            exact_counts,
            self.n_slots_,
        )

    def _cells(self, summary: CellCounts) -> _Cells:
        """The cells of a batch from its counts, and their scores (the last ones kept)."""
        ready = self._ready
        if ready is not None and ready[0] is summary:
            return ready[1]
        if not isinstance(summary, CellCounts):
            raise ValueError("backdoor scores against its second pass's summary (CellCounts)")
        n, d = summary.n_rows, len(self.edges_)
        n_bins = len(self.edges_flat_) + d
        values, per_feature = summary.candidates, summary.candidate_counts
        feature = np.repeat(np.arange(d), per_feature)
        at_value = summary.labels[n_bins:]
        counts = at_value.sum(axis=1)
        frequent = counts >= self.min_support_
        lo = np.empty(len(values), dtype=np.int64)
        hi = np.empty(len(values), dtype=np.int64)
        below = np.empty(len(values), dtype=np.int64)
        ends = np.cumsum(per_feature)
        for f in range(d):
            part = slice(ends[f] - per_feature[f], ends[f])
            lo[part] = np.searchsorted(self.sorted_[f], values[part], side="left")
            hi[part] = np.searchsorted(self.sorted_[f], values[part], side="right")
            below[part] = np.searchsorted(self.edges_[f], values[part].astype(np.float64), "right")
        q = n / (n + self.m_)
        promising = frequent & (binomial_surprise(counts, counts + hi - lo, q) > _OVER_SCREEN)
        # Rows of over-represented exact values are this feature's evidence
        # already; keeping them out of the bins stops a flood of copies from
        # lending its label purity to honest rows that share a bin with it. The
        # other candidates' rows go back to the bin their value falls in.
        bins = summary.labels[:n_bins].copy()
        back = np.flatnonzero(~promising)
        np.add.at(
            bins, self.edge_starts_[feature[back]] + feature[back] + below[back], at_value[back]
        )
        exact = values[promising]
        exact_feature = feature[promising]
        exact_counts = np.bincount(exact_feature, minlength=d)
        exact_trusted = np.zeros((len(exact), self.n_slots_), dtype=np.int64)
        for j, (f, a, b) in enumerate(
            zip(exact_feature, lo[promising], hi[promising], strict=True)
        ):
            exact_trusted[j] = np.bincount(self.sorted_y_[f, a:b], minlength=self.n_slots_)
        # Cells are every feature's trusted-quantile bins, then the exact values.
        labels = np.concatenate([bins, at_value[promising]])
        trusted = np.concatenate([*self.bin_counts_, exact_trusted])
        count = labels.sum(axis=1)
        # Bonferroni over every (cell, label) examined: a clean batch's best
        # cell then scores about 0 whatever the batch size, so batch rows and
        # the smaller calibration folds stay comparable. The features' cells and
        # the pair cells each have half the level: numeric bins are many, and would
        # otherwise drown the few pairs of a table's categories.
        pair_count = summary.pair_labels.sum(axis=1)
        n_tests = (int(frequent.sum()) + int(np.sum(count[:n_bins] >= self.min_support_))) * (
            self.n_slots_
        )
        n_pair_tests = int(np.sum(pair_count >= self.min_support_)) * self.n_slots_
        log_families = float(np.log(2.0)) if len(self.pairs_) else 0.0
        cells = _Cells(
            n_rows=n,
            scores=self._cell_scores(count, labels, trusted, n),
            exact=exact,
            exact_starts=np.cumsum(exact_counts) - exact_counts,
            exact_counts=exact_counts,
            feature=np.concatenate([np.repeat(np.arange(d), self.edge_counts_ + 1), exact_feature]),
            is_exact=np.arange(len(count)) >= n_bins,
            labels=labels,
            trusted=trusted,
            pair_scores=self._cell_scores(
                pair_count, summary.pair_labels, self.pair_trusted_, n, pairs=True
            ),
            log_tests=float(np.log(max(n_tests, 1))) + log_families,
            log_pair_tests=float(np.log(max(n_pair_tests, 1))) + log_families,
        )
        self._ready = (summary, cells)
        return cells

    # ------------------------------------------------------------------- scores
    def _scan(
        self, batch: Table, summary: CellCounts
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, _Cells]:
        """Label slots, scores before the jitter and the cell behind each (-1 for
        no evidence) of ``batch``'s rows, and the cells they were scored against."""
        cells = self._cells(summary)
        y = self._slots(labels_of(batch, self.name, "batch"))
        cell, _ = _assign_cells(
            _feature_major(batch.x32),
            y,
            self.edges_flat_,
            self.edge_starts_,
            self.edge_counts_,
            cells.exact,
            cells.exact_starts,
            cells.exact_counts,
            self.n_slots_,
        )
        best, which = _best_cells(cell, y, cells.scores)
        best = best - cells.log_tests
        # Pair cells are numbered after the others.
        n_cells = len(cells.scores)
        for p, (a, b) in enumerate(self.pairs_):
            at = _pair_cells(batch.codes, self.pair_sizes_, a, b, int(self.pair_offsets_[p]))
            s = cells.pair_scores[at, y] - cells.log_pair_tests
            better = s > best
            best = np.where(better, s, best)
            which = np.where(better, n_cells + at, which)
        return y, np.maximum(best, 0.0), which, cells

    _fitted_attr: ClassVar[str] = "sorted_"

    def _score_with(self, batch: Table, summary: CellCounts, positions: np.ndarray) -> np.ndarray:
        _, score, _, _ = self._scan(batch, summary)
        return score + tie_break(batch.x32)

    def _explain_with(
        self, batch: Table, rows: np.ndarray, summary: CellCounts, positions: np.ndarray
    ) -> list[str]:
        y, score, which, cells = self._scan(batch, summary)
        n_cells = len(cells.scores)
        out: list[str] = []
        for r in rows:
            c = int(which[r])
            if c < 0 or score[r] <= 0.0:
                out.append(
                    "no feature value here is both unusually common in this batch and label-pure"
                )
                continue
            if c < n_cells:
                lab, tr = cells.labels[c], cells.trusted[c]
                where = batch.describe(r, int(cells.feature[c])) + (
                    " is shared by" if cells.is_exact[c] else " falls in a bin shared by"
                )
                carry = ""
                base = self.prior_
            else:
                lab, tr = summary.pair_labels[c - n_cells], self.pair_trusted_[c - n_cells]
                where = f"{self._pair_text(batch, r, c - n_cells)}, together, are shared by"
                carry = f", {int(tr.sum()):,} of {self.m_:,} carry them"
                base = self._pair_base(np.array([c - n_cells]))[0]
            label = int(y[r])
            count = int(lab.sum())
            expected = cells.n_rows * float(tr.sum()) / max(self.m_, 1)
            share = float(lab[label]) / max(count, 1)
            share_expected = float(
                (tr[label] + self.smoothing_ * base[label]) / (tr.sum() + self.smoothing_)
            )
            shown = batch.label_of(label) if label < self.n_slots_ - 1 else "<unseen>"
            out.append(
                f"{where} {count} batch rows ({expected:.2g} expected from trusted rows{carry}), "
                f"{100 * share:.0f}% labelled {shown} ({100 * share_expected:.0f}% expected)"
            )
        return out

    def _pair_text(self, batch: Table, row: int, cell: int) -> str:
        """The two values of a row's pair cell as a person reads them."""
        p = int(np.searchsorted(self.pair_offsets_, cell, side="right")) - 1
        bits = []
        for j in self.pairs_[p]:
            column, values = self.categories_[int(j)]
            code = int(batch.codes[row, j])
            if code < 0:
                bits.append(f"{column} = a value no trusted row shows")
            elif values[code] is None:
                bits.append(f"{column} is missing")
            else:
                bits.append(f"{column} = {values[code]!r}")
        return " and ".join(bits)
