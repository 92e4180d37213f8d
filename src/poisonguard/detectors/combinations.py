"""Rare categories and impossible combinations: values the trusted rows (of a class) never show.

A categorical value, or a pair of them, that trusted rows of a row's class show
far less often than their frequencies predict is evidence on its own: an
injected row assembled from plausible parts (``country = "NZ"`` with
``currency = "EUR"``), a label moved onto a population it never covers, a
backdoor trigger made of two common values that never occur together.
"""

from __future__ import annotations

from itertools import combinations
from typing import ClassVar, Self

import numpy as np

from poisonguard.detectors._common import DetectorBase
from poisonguard.detectors.base import Table


def _groups(table: Table, n_classes: int) -> np.ndarray:
    """Each row's class code, or ``n_classes`` (the all-rows group) without a usable one."""
    if table.y is None or n_classes == 0:
        return np.full(table.n_rows, n_classes, dtype=np.int64)
    y = table.y
    return np.where((y >= 0) & (y < n_classes), y, n_classes).astype(np.int64)


def _rarity(observed: np.ndarray, share: np.ndarray, alpha: float) -> np.ndarray:
    """``log(share / smoothed share)`` per cell: how many times rarer a group's rows show a
    value than ``share`` predicts, ``alpha`` pseudo-rows drawn as predicted added to the
    observed counts (so a group of ``n`` rows gives at most ``log((n + alpha) / alpha)``);
    never below 0: a value seen more often than predicted is not evidence. ``observed``
    is groups x values (x values); ``share`` broadcasts against it."""
    size = observed.sum(axis=tuple(range(1, observed.ndim)), keepdims=True)
    smoothed = (observed + alpha * share) / (size + alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log(share) - np.log(smoothed)
    return np.where(share > 0, np.maximum(ratio, 0.0), 0.0)


class CombinationDetector(DetectorBase):
    """How much rarer a row's categories, and pairs of them, are among trusted rows of its class.

    For each categorical (or boolean) column value ``v`` and each class ``c``,
    trusted rows give an observed count ``O`` and an expected one ``E = n_c x
    share of v among all trusted rows``; for each pair of values, ``E = n_c x
    P(a | c) x P(b | c)``, what the class would show if the two were unrelated.
    A term scores ``log(E / O)`` after ``smoothing`` pseudo-rows drawn as the
    expectation says are added to ``O``: how many times rarer the class shows it
    than expected. A pair expected 40 times among 1,204 rows and never seen scores
    ``log 1,205`` (7.1); a value the class shows half as often as the table
    (men among survivors) scores ``log 2``; one seen as often as expected, 0. The
    score depends on shares, not on how many trusted rows there are, so an honest
    row of a common but label-dependent value is not held because the trusted set
    grew (a Poisson deficit, which this replaced, grows with the counts: on titanic
    every man who survived scored like an impossible pair). A row scores its
    largest term over its values and pairs. Without a label, only pairs count
    (among all trusted rows). Most rows score 0.

    Parameters
    ----------
    smoothing : float
        Pseudo-rows spread over a column's values when estimating ``P(a | c)``
        (> 0); keeps a class's few rows from making every pair impossible.
    max_pairs : int
        Most column pairs examined (>= 0), the pairs of the columns with the
        fewest values first.
    """

    name: ClassVar[str] = "combination"
    needs_label: ClassVar[bool] = False
    _fitted_attr: ClassVar[str] = "columns_"

    def __init__(self, *, smoothing: float = 1.0, max_pairs: int = 300):
        self.smoothing = smoothing
        self.max_pairs = max_pairs

    def _validate_params(self) -> None:
        self._check_real("smoothing", 0.0, low_open=True)
        self._check_int("max_pairs", 0)

    @classmethod
    def applies_to(cls, reference: Table) -> bool:
        """Only tables with categorical (or boolean) columns have categories to compare."""
        return reference.codes.ndim == 2 and reference.codes.shape[1] >= 1

    def _fit(self, reference: Table) -> Self:
        alpha = float(self.smoothing)
        codes = reference.codes
        k = codes.shape[1] if codes.ndim == 2 else 0
        sizes = [len(values) for _, values in reference.categories]
        self.columns_ = tuple(name for name, _ in reference.categories)
        self.values_ = tuple(values for _, values in reference.categories)
        labelled = reference.y is not None and reference.n_classes > 0
        self.n_classes_ = reference.n_classes if labelled else 0
        groups = _groups(reference, self.n_classes_)
        n_groups = self.n_classes_ + 1
        # The all-rows group is every row, whatever its class.
        group_sizes = np.bincount(groups, minlength=n_groups).astype(np.float64)
        group_sizes[-1] = float(reference.n_rows)

        def counts(j: int) -> np.ndarray:
            out = np.zeros((n_groups, sizes[j]))
            ok = codes[:, j] >= 0
            np.add.at(out, (groups[ok], codes[ok, j]), 1.0)
            out[-1] = out[:-1].sum(axis=0) if self.n_classes_ else out[-1]
            return out

        single = [counts(j) for j in range(k)]
        self.singles_: list[np.ndarray] = []
        self.single_expected_: list[np.ndarray] = []
        for j in range(k):
            share = single[j][-1] / max(single[j][-1].sum(), 1.0)
            expected = group_sizes[:, None] * share[None, :]
            surprise = _rarity(single[j], share[None, :], alpha)
            surprise[-1] = 0.0  # overall, every value is seen exactly as often as it is
            self.singles_.append(surprise)
            self.single_expected_.append(expected)
        self.single_counts_ = single
        order = sorted(combinations(range(k), 2), key=lambda p: sizes[p[0]] * sizes[p[1]])
        self.pairs_ = tuple(order[: int(self.max_pairs)])
        self.pair_surprise_: list[np.ndarray] = []
        self.pair_counts_: list[np.ndarray] = []
        self.pair_expected_: list[np.ndarray] = []
        for a, b in self.pairs_:
            joint = np.zeros((n_groups, sizes[a], sizes[b]))
            ok = (codes[:, a] >= 0) & (codes[:, b] >= 0)
            np.add.at(joint, (groups[ok], codes[ok, a], codes[ok, b]), 1.0)
            joint[-1] = joint[:-1].sum(axis=0) if self.n_classes_ else joint[-1]
            pa = (single[a] + alpha / sizes[a]) / (group_sizes[:, None] + alpha)
            pb = (single[b] + alpha / sizes[b]) / (group_sizes[:, None] + alpha)
            share = pa[:, :, None] * pb[:, None, :]
            expected = group_sizes[:, None, None] * share
            self.pair_surprise_.append(_rarity(joint, share, alpha))
            self.pair_counts_.append(joint)
            self.pair_expected_.append(expected)
        self.group_sizes_ = group_sizes
        return self

    def _matrix(self, batch: Table) -> tuple[np.ndarray, list[tuple[int, ...]]]:
        """Each row's surprise per term (singles, then pairs) and the terms' columns."""
        codes = batch.codes
        groups = _groups(batch, self.n_classes_)
        terms: list[tuple[int, ...]] = []
        parts = []
        if self.n_classes_:
            for j, table in enumerate(self.singles_):
                c = codes[:, j]
                parts.append(np.where(c >= 0, table[groups, np.maximum(c, 0)], 0.0))
                terms.append((j,))
        for (a, b), table in zip(self.pairs_, self.pair_surprise_, strict=True):
            ca, cb = codes[:, a], codes[:, b]
            ok = (ca >= 0) & (cb >= 0)
            parts.append(np.where(ok, table[groups, np.maximum(ca, 0), np.maximum(cb, 0)], 0.0))
            terms.append((a, b))
        if not parts:
            return np.zeros((batch.n_rows, 0)), terms
        return np.column_stack(parts), terms

    def _score(self, batch: Table) -> np.ndarray:
        M, _ = self._matrix(batch)
        return M.max(axis=1) if M.shape[1] else np.zeros(batch.n_rows)

    def _explain(self, batch: Table, rows: np.ndarray) -> list[str]:
        sub = batch.take(rows)
        M, terms = self._matrix(sub)
        groups = _groups(sub, self.n_classes_)
        out = []
        for r in range(len(rows)):
            if M.shape[1] == 0 or M[r].max() <= 0:
                out.append("no category or pair of categories here is rarer than expected")
                continue
            t = int(np.argmax(M[r]))
            g = int(groups[r])
            where = "trusted rows"
            if g < self.n_classes_ and sub.y is not None:
                where = f"trusted rows of class {sub.label_of(int(sub.y[r]))}"
            of = f"{int(self.group_sizes_[g]):,} {where}"
            cols = terms[t]
            shown = " and ".join(
                f"{self.columns_[j]} = {self._value(j, int(sub.codes[r, j]))}" for j in cols
            )
            if len(cols) == 1:
                j = cols[0]
                c = int(sub.codes[r, j])
                seen, expected = self.single_counts_[j][g, c], self.single_expected_[j][g, c]
            else:
                k = terms.index(cols) - (len(self.singles_) if self.n_classes_ else 0)
                a, b = cols
                ca, cb = int(sub.codes[r, a]), int(sub.codes[r, b])
                seen = self.pair_counts_[k][g, ca, cb]
                expected = self.pair_expected_[k][g, ca, cb]
            out.append(f"{shown}: {int(seen)} of {of} ({expected:.3g} expected)")
        return out

    def _value(self, column: int, code: int) -> str:
        value = self.values_[column][code]
        return "missing" if value is None else repr(value)
