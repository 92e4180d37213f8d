"""Memory across batches: a sequential test per landing source, and one over all of them.

An attacker who knows that each batch is judged on its own sends a little poison
in many batches. Every batch therefore leaves its evidence in the audit chain
(how many of its scored rows had a combined p-value over the anchored detectors,
which judge each row against the trusted rows alone, at or below each of
:data:`THRESHOLDS`; rows a reviewer rejected before count below all of them; and
the within-batch detectors' evidence once, as one more row: :class:`RowTally`), and
this module folds that evidence, batch by batch, into an **e-detector** per
source and one over every source pooled:

* **Per row**, the e-value ``g(p) = mean over j of 1[p <= a_j] / r_j`` for the
  thresholds ``a_j`` of :data:`THRESHOLDS`: 0 for an unremarkable row, large for
  a row far in the tail. ``r_j`` is the most often a clean row may reach ``a_j``:
  ``slack`` times the larger of ``a_j`` and the rate the trusted rows themselves
  reach it at when calibrated without their own fold, counted as a conformal
  p-value counts, ``(1 + k) / (1 + n)`` (``Guard.clean_rates_``). Below
  ``1 / n`` a p-value is the fitted tail's, not the data's, and a table with
  honest extremes reaches the tail more often than the model says; so the null
  never asks more of clean rows than the trusted rows showed. Under that null,
  ``E[g] <= 1``.
* **Per batch**, for each bet ``lam`` of :data:`BETS`, the product over its rows
  of ``1 + lam * (g - 1)``: an e-value (its expectation is at most 1 under
  the null). A batch of unremarkable rows shrinks it; a few rows far in the
  tail grow it, more the farther they are.
* **Over batches**, the Shiryaev-Roberts statistic ``R = (R + 1) * e`` per bet,
  averaged over the bets. Under the null its expectation after ``t`` batches is
  at most ``t``, so the average run of batches before a false alarm is at least
  ``1 / alarm_level``; it forgets a long clean history, so poison that starts
  late is seen as fast as poison that starts at once.

Poison that no row-level test finds suspicious enough to count (flips chosen to
look honest) still moves labels: rows of one class arrive labelled as another.
So each batch also records, for every ordered pair of classes ``(a, c)``, the
e-value of a **label flow** from ``a`` to ``c`` (:class:`LabelFlows`): the
likelihood ratio of "a share ``eps`` of the rows of class ``a`` were relabelled
``c``" against the trusted rows' model of labels given features. A row labelled
``c`` that the model gives to ``a`` counts up to its odds ``q(a|x) / q(c|x)``;
every row labelled ``a`` costs ``1 - eps``. Under the null (labels drawn as the
trusted rows' model says, whatever the mix of features a source sends) its
expectation is at most 1, so a source sending more of one class than another
is not evidence; only labels the features do not explain are. Its Shiryaev-Roberts
statistics, per pair and bet, are averaged, and a source's statistic is the
mean of the row-count statistic and this one.

A source **alarms** when its statistic reaches ``1 / alarm_level``; the pooled
statistic alarming alarms every source that contributed evidence (the product
of its batches' e-values since it was last cleared, averaged as the statistic
is, over bets and pairs, exceeds 1; or, when one label flow carries the pooled
alarm on its own, its product on that flow, averaged over bets, exceeds 1), so
poison split over many sources is still seen. An alarm holds for review the
batch whose evidence raised it (the pipeline counts a batch's evidence before
deciding it) and the source's later batches, and
fails the gate until a reviewer clears it (``poisonguard source clear``), which restarts its
statistic and the pooled one, with an audit entry.

Each source's batch sizes are watched too: a batch far outside the sizes the
source usually sends is reported as drift (an attacker diluting poison in a
large batch changes its size).

This module is pure: the store hands it the history (``Store.source_events``), and
keeps a :class:`SourceReplay` per ledger that each new entry of the audit chain is
added to (``Store.source_replay``), so a batch's cost does not grow with the history.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from poisonguard.errors import param_error

#: The p-value levels whose counts each batch records (nested, largest first).
THRESHOLDS: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
#: The bets the statistic averages over: shares of the e-value staked per row.
BETS: tuple[float, ...] = (0.01, 0.03, 0.1)
#: A batch's size is drift when outside [median / SIZE_FACTOR, median * SIZE_FACTOR]
#: of the source's last SIZE_HISTORY batches (with at least SIZE_MIN_HISTORY of them).
SIZE_FACTOR = 10.0
SIZE_HISTORY = 20
SIZE_MIN_HISTORY = 5
#: The largest log-statistic reported (a float's range); the alarm is decided in logs.
LOG_MAX = 700.0
#: How the reason of every row of a batch held whole by its source's alarm begins.
SOURCE_ALARM = "source alarm"
#: The name of the statistic over every source pooled.
POOLED = "all sources"
#: The label flows' bets: the share of a class's rows the alternative says were relabelled.
FLOW_BETS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4)
#: A row's odds for the class it may have come from count up to this: one honest row the
#: model is sure of the wrong way cannot carry a source alone.
FLOW_ODDS_CAP = 50.0
#: Label flows are followed on tables of at most this many classes (K (K - 1) pairs a batch).
MAX_FLOW_CLASSES = 20
#: How far, as a factor, the model may overstate a row's odds on clean rows.
FLOW_SLACK = 2.0
#: Once a source alarms on a label flow (a, c), its accepted rows labelled c whose odds for
#: a are at least this are held for review: rows the flow's evidence rests on, which a
#: calibrated model says are honest at most one time in eleven.
FLOW_ROW_ODDS = 10.0


#: How the defaults were chosen (development data only: the dev tables of
#: ``benchmarks/tables.py``, seeds 0 and 1, and scikit-learn's digits and
#: breast_cancer): clean batches of 100 rows resampled 200 times per table gave
#: no alarm at ``slack = 2`` (at 1 and 1.25 the small regression table hitters
#: alarmed: its batch rows reach the tail four times as often as its 100
#: trusted rows do), and two random label flips per 100-row batch alarmed in a
#: median of 11 (digits) to 15 batches, later or never on tables whose flips
#: the detectors see less well. The bets (0.01, 0.03, 0.1) alarmed no later
#: than a wider grid on those batches.
@dataclass(frozen=True)
class SourceTest:
    """The settings of the per-source test (``[sources]`` in the config).

    Attributes
    ----------
    alarm_level : float
        A source alarms when its statistic reaches ``1 / alarm_level``; on a clean
        source the average run of batches before a false alarm is at least that.
        0 turns the alarms off (the evidence is still recorded).
    slack : float
        How far, as a factor, clean rows may fall below each threshold more often
        than a valid p-value would (at least 1).
    """

    alarm_level: float = 0.001
    slack: float = 2.0

    def validated(self, owner: str = "[sources]") -> SourceTest:
        """This test, or a ``ConfigError`` naming the first bad setting."""
        level = self.alarm_level
        if isinstance(level, bool) or not isinstance(level, int | float) or not 0 <= level < 1:
            raise param_error("alarm_level", owner, "a number in [0, 1)", level)
        slack = self.slack
        if isinstance(slack, bool) or not isinstance(slack, int | float) or not slack >= 1:
            raise param_error("slack", owner, "a number >= 1", slack)
        return self


#: How the label flows' settings were chosen (development data only: scikit-learn's
#: digits, 40% trusted, three seeds, two flips of 3 into 9 per batch of 48 rows chosen
#: to be the least suspicious to the gate, and clean batches of 48 rows resampled 200
#: times, 20 trials): an odds cap of 20 alarmed at batches 10, 8 and 10, 50 at 5, 7 and
#: 8, 100 at 4 with a clean run's statistic reaching 8.9 nats once in 20 (the alarm is
#: at 6.9); at 50 no clean run passed 2.9 nats.
@dataclass(frozen=True, eq=False)
class LabelFlows:
    """The label-flow test of one fitted guard: per pair of classes, how much a row's odds count.

    A batch's e-value for the flow ``a -> c`` at bet ``eps`` is the product, over its
    rows labelled ``c``, of ``1 + eps * w[a, c] * min(FLOW_ODDS_CAP, q(a|x) / q(c|x))``
    and, over its rows labelled ``a``, of ``1 - eps``. For a model ``q`` of labels
    given features that is calibrated, its expectation is at most 1 when
    ``w <= 1``; ``w`` is ``1 / FLOW_SLACK``, lowered further for a pair where the trusted
    rows, scored out of fold, reach high odds more often than ``q`` says (``fit``).

    Attributes
    ----------
    classes : tuple of str
        The classes, as the reasons name them, in code order.
    weight : ndarray of shape (K, K)
        ``w[a, c]``; the diagonal is 0.
    """

    classes: tuple[str, ...]
    weight: np.ndarray

    @classmethod
    def fit(cls, log_q: np.ndarray, y: np.ndarray, classes: Sequence[str]) -> LabelFlows:
        """The test, from trusted rows the model scored without having seen them.

        Parameters
        ----------
        log_q : ndarray of shape (n, K)
            Out-of-fold log-probabilities of every class (``-inf`` for none).
        y : ndarray of shape (n,)
            Their label codes.
        classes : sequence of str
        """
        k = len(classes)
        odds, known = _odds(log_q, y, k)
        y_known = y[known]
        honest = np.zeros((k, k))  # mean over rows of 1[y = c] * odds(a), as [a, c]
        for c in range(k):
            mine = y_known == c
            if mine.any():
                honest[:, c] = odds[mine].sum(axis=0) / max(len(y), 1)
        share = np.bincount(y_known, minlength=k)[:k] / max(len(y), 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            room = np.where(honest > 0, share[:, None] / honest, 1.0)
        weight = np.minimum(room, 1.0) / FLOW_SLACK
        np.fill_diagonal(weight, 0.0)
        return cls(tuple(str(c) for c in classes), weight)

    def log_evalues(self, log_q: np.ndarray, y: np.ndarray) -> np.ndarray:
        """ndarray of shape (K, K, len(FLOW_BETS)): the log e-value of the flow ``a -> c``
        (as ``[a, c]``) from these rows, under each bet; 0 on the diagonal. A sum over
        rows: a batch's is the sum of its chunks'."""
        k = len(self.classes)
        out = np.zeros((k, k, len(FLOW_BETS)))
        odds, known = _odds(log_q, y, k)
        y_known = y[known]
        eps = np.asarray(FLOW_BETS)
        for c in range(k):
            mine = y_known == c
            if mine.any():
                gain = eps[None, None, :] * (odds[mine] * self.weight[:, c])[:, :, None]
                out[:, c, :] += np.log1p(gain).sum(axis=0)
        n_a = np.bincount(y_known, minlength=k)[:k].astype(np.float64)
        out += n_a[:, None, None] * np.log1p(-eps)[None, None, :]
        out[np.arange(k), np.arange(k), :] = 0.0
        return out

    def pairs(self, log_e: np.ndarray) -> tuple[tuple[str, str, tuple[float, ...]], ...]:
        """``log_evalues``'s result as ``BatchCounts.flows`` records it, by class name."""
        k = len(self.classes)
        return tuple(
            (self.classes[a], self.classes[c], tuple(float(v) for v in log_e[a, c]))
            for a in range(k)
            for c in range(k)
            if a != c
        )


class FlowCounts:
    """A batch's label flows added up over its parts (``Guard.flow_log_e`` of each).

    Parameters
    ----------
    flows : LabelFlows or None
        The guard's (``Guard.label_flows_``); None when it does not follow them.
    """

    def __init__(self, flows: LabelFlows | None) -> None:
        self.flows = flows
        self.log_e: np.ndarray | None = None

    def add(self, log_e: np.ndarray | None) -> None:
        """Count one part's flows."""
        if log_e is not None:
            self.log_e = log_e if self.log_e is None else self.log_e + log_e

    def pairs(self) -> tuple[tuple[str, str, tuple[float, ...]], ...]:
        """What ``BatchCounts.flows`` records: () when nothing was counted."""
        if self.flows is None or self.log_e is None:
            return ()
        return self.flows.pairs(self.log_e)


def _odds(log_q: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row of a known label's capped odds ``q(a|x) / q(y|x)`` for every class ``a``
    (ndarray of shape (n_known, K)), and which rows those are."""
    y = np.asarray(y, dtype=np.int64)
    known = (y >= 0) & (y < k)
    lq = np.asarray(log_q, dtype=np.float64)[known]
    own = lq[np.arange(len(lq)), y[known]][:, None]
    with np.errstate(invalid="ignore", over="ignore"):
        log_odds = np.where(np.isneginf(lq), -np.inf, lq - np.maximum(own, -700.0))
    return np.minimum(np.exp(np.minimum(log_odds, 700.0)), FLOW_ODDS_CAP), known


@dataclass(frozen=True)
class RowTally:
    """What a batch's scored rows give its source's test, summed chunk by chunk.

    The anchored detectors judge each row against the trusted rows alone, so the
    rows of a clean batch are independent and their e-values multiply: each
    counts. The within-batch detectors read the batch itself: rows of one dense
    cluster share their evidence, and counted row by row a handful of honest rows
    in one corner would carry a clean source to an alarm. Their evidence counts
    once a batch: the smallest p-value they give any row, times the rows
    (Bonferroni, valid however the rows depend on each other).

    Attributes
    ----------
    rows : int
        Rows scored.
    below : tuple of int
        ``below[j]``: rows whose combined p-value over the anchored detectors is at
        or below ``THRESHOLDS[j]``.
    log_within : float or None
        The smallest combined natural-log p-value over the within-batch detectors
        (0 for no rows); None when the guard runs none.
    """

    rows: int = 0
    below: tuple[int, ...] = (0,) * len(THRESHOLDS)
    log_within: float | None = None

    @classmethod
    def of(cls, log_anchored: np.ndarray | None, log_within: np.ndarray | None) -> RowTally:
        """The tally of rows with these combined log p-values (None: no such detectors;
        rows without anchored detectors count at p = 1)."""
        sizes = [len(x) for x in (log_anchored, log_within) if x is not None]
        below = (0,) * len(THRESHOLDS)
        if log_anchored is not None:
            below = tuple(int(np.count_nonzero(log_anchored <= np.log(a))) for a in THRESHOLDS)
        least = None
        if log_within is not None:
            least = float(np.min(log_within)) if len(log_within) else 0.0
        return cls(max(sizes, default=0), below, least)

    def __add__(self, other: RowTally) -> RowTally:
        least = [x for x in (self.log_within, other.log_within) if x is not None]
        return RowTally(
            self.rows + other.rows,
            tuple(a + b for a, b in zip(self.below, other.below, strict=True)),
            min(least) if least else None,
        )

    def within_p(self) -> float | None:
        """The batch's p-value from the within-batch detectors: the smallest row's,
        times the rows (None without such detectors or rows)."""
        if self.log_within is None or self.rows == 0:
            return None
        return float(min(1.0, self.rows * np.exp(self.log_within)))


@dataclass(frozen=True)
class BatchCounts:
    """What one batch tells the test: its scored rows, how many fell below each
    threshold, and how often clean rows do.

    Attributes
    ----------
    rows : int
        Rows the detectors scored, plus rows held as near-copies of rejected ones.
    below : tuple of int
        ``below[j]``: rows at or below ``THRESHOLDS[j]`` (near-copies count below all).
    clean : tuple of float
        ``clean[j]``: the share of trusted rows at or below ``THRESHOLDS[j]`` when
        calibrated without them (``Guard.clean_rates_``): what clean rows of this
        table reach, tail model included.
    flows : tuple
        The batch's label flows (``LabelFlows.pairs``), if the guard follows them.
    within : float or None
        The batch's p-value from the within-batch detectors (``RowTally.within_p``),
        counted as one more row; None without them (and in entries written before).
    """

    rows: int
    below: tuple[int, ...]
    clean: tuple[float, ...] = (0.0,) * len(THRESHOLDS)
    flows: tuple[tuple[str, str, tuple[float, ...]], ...] = ()
    within: float | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "rows": self.rows,
            "below": {f"{a:g}": k for a, k in zip(THRESHOLDS, self.below, strict=True)},
            "clean": {f"{a:g}": c for a, c in zip(THRESHOLDS, self.clean, strict=True)},
        }
        if self.flows:
            out["flows"] = [[a, c, list(e)] for a, c, e in self.flows]
        if self.within is not None:
            out["within"] = self.within
        return out

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> BatchCounts:
        below, clean = value.get("below") or {}, value.get("clean") or {}
        return cls(
            int(value["rows"]),
            tuple(int(below.get(f"{a:g}", 0)) for a in THRESHOLDS),
            tuple(float(clean.get(f"{a:g}", 0.0)) for a in THRESHOLDS),
            tuple(
                (str(a), str(c), tuple(float(v) for v in e)) for a, c, e in value.get("flows") or ()
            ),
            None if value.get("within") is None else float(value["within"]),
        )

    def null_rates(self, slack: float) -> np.ndarray:
        """ndarray of shape (len(THRESHOLDS),): the most often a clean row may fall at or
        below each threshold: ``slack`` times the larger of the threshold and the
        trusted rows' own rate."""
        return slack * np.maximum(np.asarray(THRESHOLDS), np.asarray(self.clean))


def batch_counts(
    tally: RowTally,
    clean: Sequence[float] | np.ndarray,
    near_copies: int = 0,
    flows: tuple[tuple[str, str, tuple[float, ...]], ...] = (),
) -> BatchCounts:
    """The counts a batch records from its scored rows' tally.

    Parameters
    ----------
    tally : RowTally
    clean : sequence of float
        The guard's ``clean_rates_``.
    near_copies : int
        Rows held before scoring as near-copies of rejected rows: evidence as
        strong as any (a clean source does not resend what a reviewer rejected).
    flows : tuple
        The scored rows' label flows (``LabelFlows.pairs``), if the guard follows them.
    """
    below = tuple(k + near_copies for k in tally.below)
    return BatchCounts(
        tally.rows + near_copies, below, tuple(float(c) for c in clean), flows, tally.within_p()
    )


def log_evalues(counts: BatchCounts, slack: float) -> np.ndarray:
    """ndarray of shape (len(BETS),): the log e-value of one batch under each bet.

    A row's e-value is ``g = mean over j of 1[p <= THRESHOLDS[j]] / r[j]``, with
    ``r = counts.null_rates(slack)``: at most 1 in expectation for a clean row.
    """
    below = np.asarray(counts.below, dtype=np.float64)
    steps = np.cumsum(1.0 / counts.null_rates(slack)) / len(THRESHOLDS)
    g = np.concatenate([[0.0], steps])  # above every threshold, below the first, ...
    nested = np.concatenate([[counts.rows], below])
    in_bucket = nested - np.concatenate([below, [0.0]])
    if counts.within is not None:  # one more row, in the bucket its p-value falls in
        in_bucket[int(np.count_nonzero(counts.within <= np.asarray(THRESHOLDS)))] += 1.0
    lam = np.asarray(BETS)[:, None]
    return (in_bucket[None, :] * np.log1p(lam * (g[None, :] - 1.0))).sum(axis=1)


@dataclass(frozen=True)
class SourceState:
    """One source's evidence as it stands.

    Attributes
    ----------
    source : str
    statistic : float
        The Shiryaev-Roberts statistic, averaged over the bets (0 at the start).
    alarmed : bool
    alarmed_at : str or None
        The batch whose evidence first raised the current alarm.
    batches, rows : int
        Batches and scored rows since the source was last cleared.
    below : tuple of int
        Rows at or below each threshold since then.
    sizes : tuple of int
        The rows in of the source's recent batches (oldest first).
    pooled_alarm : bool
        Alarmed because the pooled statistic alarmed and this source contributed.
    flow : tuple of (str, str) or None
        The label flow ``(from, to)`` with the largest statistic, if labels are followed.
    flow_statistic : float
        Its statistic (averaged over the bets).
    pooled_flow : tuple of (str, str) or None
        The label flow that carried the pooled alarm this source was swept into, if one did.
    """

    source: str
    statistic: float = 0.0
    alarmed: bool = False
    alarmed_at: str | None = None
    batches: int = 0
    rows: int = 0
    below: tuple[int, ...] = (0,) * len(THRESHOLDS)
    sizes: tuple[int, ...] = field(default=())
    pooled_alarm: bool = False
    flow: tuple[str, str] | None = None
    flow_statistic: float = 0.0
    pooled_flow: tuple[str, str] | None = None

    def followed_flow(self, test: SourceTest) -> tuple[tuple[str, str], bool] | None:
        """The label flow whose rows leave the training set while the alarm lasts, and
        whether it is the pooled test's: the source's own top flow when that carries the
        alarm on its own (its statistic at ``1 / alarm_level``), else the flow of the
        pooled alarm it was swept into; None when neither is (an alarm on row counts has
        no flow to follow)."""
        if not self.alarmed or test.alarm_level == 0:
            return None
        if self.flow is not None and self.flow_statistic >= 1.0 / test.alarm_level:
            return self.flow, False
        return None if self.pooled_flow is None else (self.pooled_flow, True)

    def describe(self, test: SourceTest) -> str:
        """The evidence in words: ``partner-b: 9 of its 1,600 scored rows at p <= 0.001 ...``."""
        a = THRESHOLDS[1]
        k = self.below[1]
        share = k / self.rows if self.rows else 0.0
        words = (
            f"{self.source}: {k:,} of its {self.rows:,} scored rows at p <= {a:g} "
            f"({share:.1%}) over {self.batches} batches, clean rows at most "
            f"{test.slack * a:.1%}"
        )
        if self.flow is not None and self.flow_statistic > 1.0:
            was, now = self.flow
            words += (
                f"; rows labelled {now!r} that the trusted rows' model gives to {was!r} "
                f"arrive more often than clean rows allow (e = {self.flow_statistic:.3g} "
                "for that pair)"
            )
        words += f"; e = {self.statistic:.3g}"
        if self.alarmed:
            how = ", with every source's evidence pooled" if self.pooled_alarm else ""
            if self.pooled_flow is not None:
                was, now = self.pooled_flow
                how += f", on rows labelled {now!r} that the trusted rows' model gives to {was!r}"
            words += (
                f" (alarm at batch {self.alarmed_at}{how}; level e >= {1 / test.alarm_level:g})"
            )
        return words


@dataclass(frozen=True)
class Event:
    """One entry of a source's history, in ledger order: a batch's counts, or a clear."""

    source: str
    batch_id: str | None = None
    rows_in: int | None = None
    counts: BatchCounts | None = None
    cleared: bool = False


class _Flows:
    """One source's label-flow statistics: per pair of classes and bet, the Shiryaev-Roberts
    statistic and the product since the last clear, in logs, as arrays over every pair
    any source has recorded (``pairs``: pair to row); ``followed`` marks the pairs this
    source has recorded since it was last cleared, the only ones its statistic averages.
    One numpy step a batch, whatever the number of pairs: a history of thousands of
    batches of a table of many classes replays in milliseconds."""

    def __init__(self, pairs: dict[tuple[str, str], int]) -> None:
        self.pairs = pairs
        self.log_r = np.full((0, len(FLOW_BETS)), -np.inf)
        self.log_product = np.zeros((0, len(FLOW_BETS)))
        self.followed = np.zeros(0, dtype=bool)

    def _grow(self) -> None:
        extra = len(self.pairs) - len(self.followed)
        if extra > 0:
            self.log_r = np.vstack([self.log_r, np.full((extra, len(FLOW_BETS)), -np.inf)])
            self.log_product = np.vstack([self.log_product, np.zeros((extra, len(FLOW_BETS)))])
            self.followed = np.concatenate([self.followed, np.zeros(extra, dtype=bool)])

    def step(self, e: np.ndarray, present: np.ndarray) -> None:
        """One batch's flows: ``e`` (n_pairs, bets) its log e-values, 0 where it recorded
        none; ``present`` the pairs it recorded. A pair followed before that the batch does
        not record counts as an e-value of 1."""
        self._grow()
        self.followed |= present
        f = self.followed
        self.log_r[f] = np.logaddexp(self.log_r[f], 0.0) + e[f]
        self.log_product[f] += e[f]

    def statistic(self) -> np.ndarray | None:
        """The followed pairs' statistics (n_followed, bets), None when none is followed."""
        return self.log_r[self.followed] if self.followed.any() else None

    def product(self) -> np.ndarray | None:
        return self.log_product[self.followed] if self.followed.any() else None

    def best(self) -> tuple[int, float] | None:
        """The followed pair (its row) with the largest statistic and that statistic's log,
        both as means over bets; None when no pair is followed."""
        if not self.followed.any():
            return None
        rows = np.flatnonzero(self.followed)
        means = np.logaddexp.reduce(self.log_r[rows], axis=1) - np.log(len(FLOW_BETS))
        at = int(np.argmax(means))
        return int(rows[at]), float(means[at])

    def top(self) -> dict[str, Any]:
        """The followed pair with the largest statistic (mean over bets), and that statistic."""
        found = self.best()
        if found is None:
            return {}
        return {
            "flow": self.pair(found[0]),
            "flow_statistic": float(np.exp(min(found[1], LOG_MAX))),
        }

    def pair(self, row: int) -> tuple[str, str]:
        """The pair of classes at ``row``."""
        return next(p for p, i in self.pairs.items() if i == row)

    def favours(self, row: int) -> bool:
        """Whether the evidence on the pair at ``row`` since the last clear (the product of
        its batch e-values, mean over bets) favours the flow."""
        if row >= len(self.followed) or not self.followed[row]:
            return False
        return float(np.logaddexp.reduce(self.log_product[row]) - np.log(len(FLOW_BETS))) > 0.0


def _batch_flows(
    flows: Sequence[tuple[str, str, Sequence[float]]], pairs: dict[tuple[str, str], int]
) -> tuple[np.ndarray, np.ndarray]:
    """A batch's recorded flows as arrays over every pair known (new pairs added to
    ``pairs``): log e-values (n_pairs, bets), 0 where not recorded, and which it recorded."""
    rows = [pairs.setdefault((a, c), len(pairs)) for a, c, _ in flows]
    e = np.zeros((len(pairs), len(FLOW_BETS)))
    present = np.zeros(len(pairs), dtype=bool)
    if rows:
        e[rows] = np.asarray([v for _, _, v in flows], dtype=np.float64)
        present[rows] = True
    return e, present


class _Running:
    """One source's (or the pooled) running test since it was last cleared."""

    def __init__(self, pairs: dict[tuple[str, str], int]) -> None:
        self.log_r = np.full(len(BETS), -np.inf)  # per bet, in logs: it can pass 1e308
        self.log_product = np.zeros(len(BETS))  # per bet, since the last clear
        self.flows = _Flows(pairs)
        self.alarmed_at: str | None = None
        self.pooled = False
        self.pooled_flow: int | None = None  # the pair that carried the pooled alarm, if one did
        self.batches = 0
        self.rows = 0
        self.below = np.zeros(len(THRESHOLDS), dtype=np.int64)

    def statistic(self) -> float:
        return _statistic(self.log_r, self.flows.statistic())

    def evidence(self) -> float:
        """The log of its e-value since it was last cleared, weighed as its statistic is."""
        return _statistic(self.log_product, self.flows.product())


class SourceReplay:
    """The per-source tests run over a history, one event at a time: add events as the
    ledger records them, read every source's state at any point. ``source_states`` runs
    one over a whole history; the store keeps one per ledger, so a batch adds only its own
    event however long the history (``Store.source_replay``).

    Parameters
    ----------
    test : SourceTest
    """

    def __init__(self, test: SourceTest) -> None:
        self.test = test
        self._alarm_at = np.inf if test.alarm_level == 0 else 1.0 / test.alarm_level
        self._pairs: dict[tuple[str, str], int] = {}  # every label-flow pair recorded, to its row
        self._run: dict[str, _Running] = {POOLED: _Running(self._pairs)}
        self._sizes: dict[str, list[int]] = {}

    def copy(self) -> SourceReplay:
        """An independent copy (its label-flow pairs shared with its runs, as here)."""
        return copy.deepcopy(self)

    def add(self, events: Iterable[Event]) -> SourceReplay:
        """Run the tests over ``events`` (ledger order, after those added before); self."""
        for ev in events:
            self._add(ev)
        return self

    def _add(self, ev: Event) -> None:
        run = self._run
        if ev.source not in run:
            run[ev.source] = _Running(self._pairs)
        if ev.cleared:
            run[ev.source] = _Running(self._pairs)
            run[POOLED] = _Running(self._pairs)
            for r in run.values():  # a pooled alarm clears with its cause
                if r.pooled:
                    r.alarmed_at, r.pooled, r.pooled_flow = None, False, None
            return
        if ev.rows_in is not None:
            self._sizes.setdefault(ev.source, []).append(int(ev.rows_in))
            del self._sizes[ev.source][:-SIZE_HISTORY]
        if ev.counts is None:
            return
        e = log_evalues(ev.counts, self.test.slack)
        flow_e, present = _batch_flows(ev.counts.flows, self._pairs)
        for name in (ev.source, POOLED):
            r = run[name]
            r.log_r = np.logaddexp(r.log_r, 0.0) + e
            r.log_product += e
            r.flows.step(flow_e, present)
            r.batches += 1
            r.rows += ev.counts.rows
            r.below += np.asarray(ev.counts.below)
            if r.alarmed_at is None and r.statistic() >= np.log(self._alarm_at):
                r.alarmed_at = ev.batch_id
        pooled = run[POOLED]
        if pooled.alarmed_at is not None:
            # The label flow that carries the pooled alarm on its own, if one does.
            best = pooled.flows.best()
            flow = best[0] if best is not None and best[1] >= np.log(self._alarm_at) else None
            for name, r in run.items():
                # A source contributed when its own evidence, taken whole since it was
                # last cleared and weighed as its statistic is (a mean over bets, and over
                # pairs of classes), favours poison: not when one of many pairs or bets
                # happens to, as a clean source's often does. Or when its evidence on the
                # one flow the pooled test alarmed on favours that flow: the pair was
                # chosen by every source's rows, not by this one's, and a source that
                # sends a batch or two of a spread attack has too little evidence to
                # outweigh the other pairs' costs.
                if name == POOLED or r.alarmed_at is not None:
                    continue
                if r.evidence() > 0 or (flow is not None and r.flows.favours(flow)):
                    r.alarmed_at, r.pooled, r.pooled_flow = ev.batch_id, True, flow

    def sizes(self, source: str) -> tuple[int, ...]:
        """The rows in of ``source``'s last :data:`SIZE_HISTORY` batches, oldest first
        (clears do not forget them)."""
        return tuple(self._sizes.get(source, ()))

    def state(self, name: str) -> SourceState:
        """One source's state (:data:`POOLED` for the pooled one); a source never seen has
        the state of one that sent nothing."""
        r = self._run.get(name)
        if r is None:
            return SourceState(source=name, sizes=self.sizes(name))
        return SourceState(
            source=name,
            statistic=float(np.exp(min(r.statistic(), LOG_MAX))),
            alarmed=r.alarmed_at is not None,
            alarmed_at=r.alarmed_at,
            batches=r.batches,
            rows=r.rows,
            below=tuple(int(k) for k in r.below),
            sizes=self.sizes(name),
            pooled_alarm=r.pooled,
            pooled_flow=None if r.pooled_flow is None else r.flows.pair(r.pooled_flow),
            **r.flows.top(),
        )

    def states(self) -> dict[str, SourceState]:
        """Every source's state, and the pooled one as :data:`POOLED`."""
        return {name: self.state(name) for name in self._run}


def source_states(events: Iterable[Event], test: SourceTest) -> dict[str, SourceState]:
    """Every source's state after ``events`` (ledger order), and the pooled one as :data:`POOLED`."""
    return SourceReplay(test).add(events).states()


def _statistic(log_r: np.ndarray, flow_r: np.ndarray | None) -> float:
    """The log of a source's statistic: the row counts' (mean over their bets), or, where
    label flows are followed, the mean of that and the flows' (mean over pairs and bets).
    A mean of Shiryaev-Roberts statistics is one: at most ``t`` in expectation after ``t``
    clean batches; a mean of products (e-values) is an e-value."""
    counts = _log_mean(log_r)
    if flow_r is None:
        return counts
    return float(np.logaddexp(counts, _log_mean(flow_r.ravel())) - np.log(2.0))


def _log_mean(log_values: np.ndarray) -> float:
    """``log(mean(exp(log_values)))`` without overflow."""
    return float(np.logaddexp.reduce(log_values) - np.log(log_values.size))


def size_drift(sizes: Sequence[int], rows_in: int) -> str | None:
    """Why ``rows_in`` is far from the sizes a source usually sends, or None."""
    recent = list(sizes)[-SIZE_HISTORY:]
    if len(recent) < SIZE_MIN_HISTORY:
        return None
    median = float(np.median(recent))
    if median <= 0 or median / SIZE_FACTOR <= rows_in <= median * SIZE_FACTOR:
        return None
    return (
        f"batch size drift: {rows_in:,} rows, where the source's last {len(recent)} batches "
        f"had {min(recent):,} to {max(recent):,} (median {median:,.0f})"
    )


def alarms(states: Mapping[str, SourceState]) -> list[SourceState]:
    """The states in alarm, the pooled one last."""
    out = [s for name, s in sorted(states.items()) if s.alarmed and name != POOLED]
    pooled = states.get(POOLED)
    return out + ([pooled] if pooled is not None and pooled.alarmed else [])
