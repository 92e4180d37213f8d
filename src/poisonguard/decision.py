"""From detector scores to a quarantine: conformal p-values, one per row, Benjamini-Hochberg.

The guarantee, and when it holds
--------------------------------
Each detector scores trusted *calibration* rows it was not fitted on, and the
batch's rows (``Guard`` fits it once on the other trusted rows when the trusted
set is large, and cross-fits smaller ones). A row's p-value for that detector is
its conformal p-value, the share of calibration scores at least as high::

    p = (1 + #{calibration score >= s}) / (n_calibration + 1)

If a clean batch row and the calibration rows are exchangeable (drawn from the
same distribution as the trusted set) this p-value is valid: P(p <= a) <= a.
Per-row p-values of several detectors are merged with the weighted Cauchy
combination (each detector declares its share; valid for any weights fixed in
advance, under arbitrary dependence up to a small, known inflation for small p),
and Benjamini-Hochberg at level ``fdr`` over the batch's rows quarantines a set
whose expected share of clean rows is at most ``fdr``; on a batch with no
poison, the chance of quarantining anything at all is at most about ``fdr``.

A calibration set of n rows cannot give a p-value below 1/(n+1): with 200 rows
nothing is below 0.005, too coarse for Benjamini-Hochberg on a large batch, and
one honest but extreme trusted row pins every score below it to 2/(n+1). So
above the tail threshold (the top 10% of calibration scores, and at least 20 of
them) the p-value is the peaks-over-threshold estimate: the conformal p-value at
the threshold times the survival of a generalized Pareto tail fitted to the
exceedances (its shape estimated, or fixed at 0, an exponential tail, by
detectors that declare it).
That is a model, not a guarantee: it assumes the clean score distribution keeps
the shape of its upper tail. Below the threshold the p-values are exactly the
conformal ones.
Detectors whose scores are surprises in nats (``tail_scale = 1``, e.g.
``duplicates``) floor the tail's scale at 1, so their tail never decays faster
than the null model their score already states.

Within-batch detectors (duplicates, backdoor triggers, batch label agreement)
see the batch as context, so the exchangeability argument holds only
approximately for them; their calibration rows are scored in folds of similar
size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.special import betaincinv, gammaincinv

from poisonguard.detectors._kernels import _log_cauchy, _rank_left
from poisonguard.detectors.drift import DriftReport
from poisonguard.errors import param_error
from poisonguard.sources import RowTally

#: The smallest p-value reported, so that logs stay finite.
P_FLOOR = 1e-300
#: Detector p-values above this enter the Cauchy combination at this value.
TRUNCATE_AT = 0.5
#: Past the tail threshold, a p-value is at least the lower bound, at this one-sided
#: level, of the share of calibration scores at or above the row's score.
TAIL_FLOOR_LEVEL = 0.05


@dataclass(frozen=True)
class Calibration:
    """A detector's sorted calibration scores and the tail fitted above them.

    Attributes
    ----------
    scores : ndarray of shape (n_calibration,)
        Calibration scores, sorted ascending.
    tail_start : float
        Largest calibration score.
    xi, sigma, threshold : float
        Generalized Pareto shape and scale of exceedances over ``threshold``.
    tail_share : float
        Share of calibration scores above ``threshold``.
    null_scale : float or None
        For scores that are surprises under the detector's own null (``min_scale``):
        no p-value is below ``exp(-score / null_scale)``, what that null allows.
    """

    scores: np.ndarray
    tail_start: float
    xi: float
    sigma: float
    threshold: float
    tail_share: float
    null_scale: float | None = None

    # The fitted tail applies above ``threshold`` (see the module docstring).

    @classmethod
    def fit(
        cls,
        scores: np.ndarray,
        *,
        tail_fraction: float = 0.1,
        min_tail: int = 20,
        min_scale: float | None = None,
        shape: float | None = None,
        confidence: float | None = None,
    ) -> Calibration:
        """Sort the calibration scores and fit the tail above them.

        ``min_scale`` is a floor on the tail's scale, for detectors whose scores
        are surprises (``-log`` of a probability under a stated null): the
        fitted tail then never decays faster than ``exp(-score / min_scale)``,
        whatever few or tied calibration scores it was fitted to, and no
        p-value is below ``exp(-score / min_scale)`` itself. Without that floor,
        when almost every calibration score is 0 (no trusted row has a copy)
        any positive score was put past the calibration maximum: one honest
        repeat in a table of whole numbers and a few categories (two workers
        of the same age, schooling and trade) got p = 1e-4.

        ``shape`` fixes the generalized Pareto shape instead of estimating it
        (0: an exponential tail, whose scale is then the mean exceedance). From
        the few tens of exceedances a small trusted set gives, the estimated
        shape swings widely; one ambiguous trusted row can make the fitted tail
        heavy enough that no batch row ever reaches Benjamini-Hochberg's cut.

        ``confidence`` (with ``shape = 0``) replaces the exponential scale's
        estimate by its upper confidence bound at that level: for ``m``
        exceedances of an exponential tail, ``2 m mean / scale`` is chi-squared
        with ``2 m`` degrees of freedom, so the bound is wide when a small
        trusted set leaves few exceedances and tends to the estimate as they grow.
        """
        s = np.sort(np.asarray(scores, dtype=np.float64))
        s = s[np.isfinite(s)]
        if s.size == 0:
            raise ValueError("calibration needs at least one finite score")
        n_tail = max(min_tail, int(np.ceil(tail_fraction * s.size)))
        n_tail = min(n_tail, s.size - 1) if s.size > 1 else 0
        threshold = float(s[s.size - n_tail - 1]) if n_tail > 0 else float(s[-1])
        excess = s[s.size - n_tail :] - threshold if n_tail > 0 else np.empty(0)
        xi, sigma = _fit_gpd(excess) if shape is None else _fit_gpd_fixed(excess, shape)
        if confidence is not None and shape == 0 and excess.size:
            sigma *= excess.size / float(gammaincinv(excess.size, 1.0 - confidence))
        if min_scale is not None and sigma < min_scale:
            sigma = float(min_scale)
        return cls(s, float(s[-1]), xi, sigma, threshold, n_tail / s.size, min_scale)

    @property
    def n(self) -> int:
        return int(self.scores.size)

    def log_p_values(self, x: np.ndarray) -> np.ndarray:
        """Natural log of ``p_values(x)``, finite however far out in the tail ``x`` lies."""
        x = np.asarray(x, dtype=np.float64)
        n = self.n
        n_ge = n - _rank_left(self.scores, x)
        logp = np.log1p(n_ge) - np.log(n + 1.0)
        above = x > self.threshold
        if above.any() and self.sigma > 0:
            # Peaks over threshold: the conformal p-value at the threshold times the
            # fitted tail's survival beyond it. Continuous with the conformal p-value
            # at the threshold, and finer than 1/(n+1) past the calibration maximum.
            n_tail = n - np.searchsorted(self.scores, self.threshold, side="right")
            at = np.log1p(n_tail) - np.log(n + 1.0)
            tail = at + _gpd_logsf(x[above] - self.threshold, self.xi, self.sigma)
            # The model may not contradict the calibration scores themselves: where
            # some lie at or above a score, its p-value is at least the lower 95% bound
            # of their share (a bimodal tail, e.g. a cluster of exact ties far out, is
            # otherwise extrapolated from the bulk's decay, far below what it shows).
            # At most n_tail distinct counts: the bound once per count, not per row.
            counts, at_count = np.unique(n_ge[above], return_inverse=True)
            floor = np.full(counts.size, -np.inf)
            some = counts > 0
            floor[some] = np.log(betaincinv(counts[some], n - counts[some] + 1.0, TAIL_FLOOR_LEVEL))
            logp[above] = np.maximum(tail, floor[at_count])
        if self.null_scale is not None:
            logp = np.maximum(logp, -np.maximum(x, 0.0) / self.null_scale)
        return np.minimum(logp, 0.0)

    def p_values(self, x: np.ndarray) -> np.ndarray:
        """Conformal p-values of new scores, continued along the fitted tail past the maximum."""
        return np.maximum(np.exp(self.log_p_values(x)), P_FLOOR)


def _fit_gpd(excess: np.ndarray) -> tuple[float, float]:
    """Probability-weighted-moment estimates of a generalized Pareto's shape and scale.

    The shape is clipped to [0, 0.5]. A negative shape means a bounded tail, which
    would give p-values of exactly zero past its end point; finite samples of
    light (Gaussian-like) tails often estimate one. Never assuming a tail lighter
    than exponential keeps the extrapolation conservative for those, and above
    0.5 the estimate from tens of points is noise.
    """
    if excess.size < 3 or not np.any(excess > 0):
        return 0.0, 0.0
    x = np.sort(excess)
    n = x.size
    a0 = x.mean()
    # a1 = E[X (1 - F(X))], estimated from the order statistics.
    a1 = np.sum((n - 1 - np.arange(n)) / (n - 1) * x) / n
    denom = a0 - 2 * a1
    if denom <= 0:
        return 0.0, float(a0)
    k = a0 / denom - 2.0
    sigma = 2 * a0 * a1 / denom
    # Hosking's convention F = 1 - (1 - k y / sigma)^(1/k) has k = -xi.
    xi = float(np.clip(-k, 0.0, 0.5))
    sigma = float(sigma if sigma > 0 else a0)
    return xi, sigma


def _fit_gpd_fixed(excess: np.ndarray, xi: float) -> tuple[float, float]:
    """The scale of a generalized Pareto with known shape ``xi`` (< 1), by the mean exceedance.

    The mean of a GPD(xi, sigma) is ``sigma / (1 - xi)``; for ``xi = 0`` this is
    the maximum-likelihood estimate of the exponential's scale.
    """
    if excess.size == 0 or not np.any(excess > 0):
        return float(xi), 0.0
    return float(xi), float(np.mean(excess) * (1.0 - xi))


def _gpd_logsf(y: np.ndarray, xi: float, sigma: float) -> np.ndarray:
    y = np.maximum(y, 0.0)
    if abs(xi) < 1e-9:
        return -y / sigma
    return -np.log1p(xi * y / sigma) / xi


def cauchy_combine(p: np.ndarray, weights: np.ndarray | list[float] | None = None) -> np.ndarray:
    """Combine each row's p-values (columns) with the Cauchy combination.

    Inputs above ``TRUNCATE_AT`` count as ``TRUNCATE_AT``, so one detector that finds a
    row perfectly ordinary cannot veto the others. ``log_cauchy_combine`` on plain
    p-values; see it for ``weights``.

    Parameters
    ----------
    p : ndarray of shape (n_rows, n_tests)
    weights : ndarray of shape (n_tests,), optional

    Returns
    -------
    ndarray of shape (n_rows,)
    """
    with np.errstate(divide="ignore"):
        logp = np.log(np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0))
    return np.clip(np.exp(log_cauchy_combine(logp, weights)), P_FLOOR, 1.0)


def log_cauchy_combine(
    logp: np.ndarray, weights: np.ndarray | list[float] | None = None
) -> np.ndarray:
    """``cauchy_combine`` on natural-log p-values, returning the log of the combined p-value.

    Works in log space throughout, so rows whose p-values underflow stay ordered
    (the suspicion score and Benjamini-Hochberg need that order).

    Parameters
    ----------
    logp : ndarray of shape (n_rows, n_tests)
    weights : ndarray of shape (n_tests,), optional
        Non-negative weights of the tests, normalised to sum to 1 (default
        equal). Any weights fixed before seeing the batch keep the combination
        valid; a test with weight ``w`` alone needs ``p <= w * a`` to bring the
        combined p-value to ``a``.

    Returns
    -------
    ndarray of shape (n_rows,)
    """
    logp = np.asarray(logp, dtype=np.float64)
    if logp.ndim != 2 or logp.shape[1] == 0:
        raise ValueError("the Cauchy combination needs a 2-D array with at least one column")
    k = logp.shape[1]
    w = np.full(k, 1.0 / k) if weights is None else _normalised(weights, k)
    # p-values above 0.5 enter as 0.5. Untruncated, a p of 1 (a score below every
    # calibration score, e.g. an exact copy of a trusted row for a distance detector)
    # contributes tan(-pi/2) ~ -1.6e16 and makes the row immune to every other
    # detector. The combination's small-p tail, where Benjamini-Hochberg cuts, is
    # unchanged (simulated with independent uniform p-values: P(p <= a) / a within 5%
    # of 1 for a <= 1e-3 and 2 to 8 detectors; up to 1.2 at a = 0.05). With the
    # truncation every tangent is >= 0, so their mean can be summed in log space.
    return _log_cauchy(np.ascontiguousarray(logp), w, float(np.log(TRUNCATE_AT)))


def _normalised(weights: np.ndarray | list[float], k: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (k,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be {k} finite non-negative numbers, not all 0; got {w}")
    return w / w.sum()


def benjamini_hochberg(p: np.ndarray, fdr: float, *, log: bool = False) -> np.ndarray:
    """Rows rejected by the Benjamini-Hochberg step-up procedure at level ``fdr``.

    With ``log=True``, ``p`` holds natural-log p-values (ordered even where the
    p-values themselves would underflow).

    Returns
    -------
    ndarray of shape (n_rows,), bool
    """
    p = np.asarray(p, dtype=np.float64)
    n = p.size
    out = np.zeros(n, dtype=bool)
    if n == 0:
        return out
    # Only rows with p <= fdr can pass (every cut is at most fdr), and they rank
    # first, so sorting them alone gives the same ranks.
    small = np.flatnonzero(p <= (np.log(fdr) if log else fdr))
    order = small[np.argsort(p[small], kind="stable")]
    cut = fdr * np.arange(1, order.size + 1) / n
    passed = p[order] <= (np.log(cut) if log else cut)
    if passed.any():
        k = int(np.nonzero(passed)[0].max())
        out[order[: k + 1]] = True
    return out


#: The excess rule cuts only where combined p-values are at most this: the tail, where the
#: calibration rows say how many clean rows fall, not the bulk of the batch.
EXCESS_MAX_P = 0.2


def excess_cut(log_p: np.ndarray, level: float, null: np.ndarray) -> int:
    """How many rows, smallest p-values first, the excess rule holds: 0 unless some run
    of them is significantly longer than clean rows give.

    ``log_p`` holds the batch's combined natural-log p-values and ``null`` those of
    clean rows (the calibration rows, sorted). The clean share below a cut ``t`` is
    taken at its most: the larger of ``t`` (what valid p-values allow) and the upper
    95% bound of the null's share below it. ``n`` clean rows would then put at most
    about ``Binomial(n, q)`` rows below ``t``, ``q`` that share; the ``k`` rows there
    are *significantly many* when that binomial's upper tail is at most ``level /
    n`` (Bonferroni over the cuts: on a batch with no poison whose rows are
    exchangeable with the calibration rows, the chance that any cut is significant
    is at most about ``level``). Among significant cuts the rule takes the one of
    highest estimated F1, ``2 (k - C) / (k + P)``, where ``C`` counts the clean rows
    below the cut at their most (that share, plus one binomial standard deviation)
    and ``P``, the largest ``k - C``, estimates the poisoned rows in the batch. Cuts
    stop at p-values of :data:`EXCESS_MAX_P`.
    """
    from scipy.stats import beta, binom

    log_p = np.asarray(log_p, dtype=np.float64)
    n = log_p.size
    if n == 0 or level <= 0.0 or null.size == 0:
        return 0
    cuts = np.sort(log_p)

    # Only the last row of a run of ties is a cut a threshold can make.
    ends = np.flatnonzero(np.r_[np.diff(cuts) != 0, True])
    ends = ends[cuts[ends] <= np.log(EXCESS_MAX_P)]
    if ends.size == 0:
        return 0
    k = ends + 1.0
    # A cut holding no more rows than valid p-values put there on average is never
    # significant (a binomial's median is at least the floor of its mean, and level / n is
    # below 1/2): only the others need the costly tails.
    if level / n < 0.5:
        keep = k > np.floor(n * np.exp(cuts[ends]))
        ends, k = ends[keep], k[keep]
        if ends.size == 0:
            return 0
    # The clean share below each cut at its most: what valid p-values allow, or the upper
    # 95% bound of the null's share (a few hundred calibration rows say little about 1%).
    below = np.searchsorted(null, cuts[ends], side="right")
    share = np.maximum(np.exp(cuts[ends]), beta.ppf(0.95, below + 1.0, null.size - below + 1.0))
    share = np.minimum(share, 1.0)
    significant = binom.logsf(k - 1.0, n, share) <= np.log(level / n)
    if not significant.any():
        return 0
    clean = n * share + np.sqrt(n * share * (1.0 - share))
    excess = np.where(significant, k - clean, -np.inf)
    f1 = 2.0 * excess / (k + excess.max())
    return int(k[int(np.argmax(f1))])


def combined_log_p(
    scores: Mapping[str, np.ndarray],
    calibrations: Mapping[str, Calibration],
    weights: Mapping[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each detector's log p-values (rows x detectors, ``scores`` order), the detectors'
    normalised shares, and every row's Cauchy-combined log p-value."""
    names = tuple(scores)
    n = len(next(iter(scores.values())))
    logp = np.empty((n, len(names)))
    for j, name in enumerate(names):
        logp[:, j] = calibrations[name].log_p_values(scores[name])
    w = shares(names, weights)
    return logp, w, log_cauchy_combine(logp, w) if n else np.empty(0)


def shares(names: tuple[str, ...], weights: Mapping[str, float] | None = None) -> np.ndarray:
    """The detectors' normalised shares of the combination (missing weights count 1).

    Returns
    -------
    ndarray of shape (len(names),)
    """
    return _normalised([(weights or {}).get(name, 1.0) for name in names], len(names))


@dataclass(frozen=True)
class Decision:
    """The quarantine decision for one batch.

    Attributes
    ----------
    quarantined : ndarray of shape (n_rows,), bool
    p_values : ndarray of shape (n_rows, n_detectors)
        Per-detector p-values, columns in ``detectors`` order.
    combined : ndarray of shape (n_rows,)
        Each row's combined p-value.
    suspicion : ndarray of shape (n_rows,)
        ``-log10(combined)``: higher is more suspicious.
    reasons : tuple of str
        One per row; empty for rows not quarantined.
    detectors : tuple of str
    threshold : float
        The largest combined p-value quarantined (0 when none is).
    p_cuts : tuple of float
        Per detector (``detectors`` order), the p-value at or below which that
        detector alone flags a row of this batch: its share of the combination
        times the batch's threshold (times the first Benjamini-Hochberg step,
        ``fdr / n_rows``, when nothing was quarantined). Reasons name a detector
        when its p-value passes its cut; reports draw the same line.
    tally : sources.RowTally
        What the rows give their source's test.
    """

    quarantined: np.ndarray
    p_values: np.ndarray
    combined: np.ndarray
    suspicion: np.ndarray
    reasons: tuple[str, ...]
    detectors: tuple[str, ...]
    threshold: float
    p_cuts: tuple[float, ...]
    tally: RowTally = field(default_factory=RowTally)


Explainer = Callable[[str, np.ndarray], list[str]]


@dataclass(frozen=True)
class Cut:
    """Which rows of a batch are held, from their combined p-values alone.

    Attributes
    ----------
    quarantined : ndarray of shape (n_rows,), bool
    threshold : float
        The largest combined p-value quarantined (0 when none is).
    p_cuts : tuple of float
        Per detector, the p-value at or below which it alone flags a row
        (``Decision.p_cuts``).
    """

    quarantined: np.ndarray
    threshold: float
    p_cuts: tuple[float, ...]


def anchored_log_p(
    logp: np.ndarray, shares: np.ndarray, names: tuple[str, ...], anchored: tuple[str, ...] | None
) -> np.ndarray | None:
    """Each row's combined log p-value over the ``anchored`` detectors (default all), which
    the excess rule reads; None when no detector is anchored.

    Parameters
    ----------
    logp : ndarray of shape (n_rows, n_detectors)
    shares : ndarray of shape (n_detectors,)
        The detectors' normalised shares (``combined_log_p``).
    names : tuple of str
        The detectors, in column order.
    anchored : tuple of str or None
    """
    return _over(
        logp, shares, [j for j, n in enumerate(names) if anchored is None or n in anchored]
    )


def within_log_p(
    logp: np.ndarray, shares: np.ndarray, names: tuple[str, ...], anchored: tuple[str, ...] | None
) -> np.ndarray | None:
    """Each row's combined log p-value over the detectors not ``anchored``, the ones that
    read the batch, which the source test counts once a batch (``sources.RowTally``);
    None when there are none (``anchored`` None means every detector is)."""
    if anchored is None:
        return None
    return _over(logp, shares, [j for j, n in enumerate(names) if n not in anchored])


def _over(logp: np.ndarray, shares: np.ndarray, cols: list[int]) -> np.ndarray | None:
    if not cols:
        return None
    return log_cauchy_combine(logp[:, cols], shares[cols]) if len(logp) else np.empty(0)


def cut(
    log_combined: np.ndarray,
    shares: np.ndarray,
    *,
    fdr: float,
    row_level: float = 0.0,
    excess_level: float = 0.0,
    null: np.ndarray | None = None,
    log_anchored: np.ndarray | None = None,
) -> Cut:
    """Hold rows by their combined p-values: Benjamini-Hochberg, the per-row level and
    the excess rule (``decide`` has the parameters).

    Each rule reads every row's combined p-value (the excess rule, the anchored
    one), never anything else, so a batch judged chunk by chunk, whose rows' p-values
    are kept (a few numbers a row), is cut exactly as the batch judged whole.

    Parameters
    ----------
    log_combined : ndarray of shape (n_rows,)
        Every row's combined natural-log p-value.
    shares : ndarray of shape (n_detectors,)
        The detectors' normalised shares, for ``p_cuts``.
    log_anchored : ndarray of shape (n_rows,), optional
        The same over the anchored detectors; the excess rule needs it and ``null``.

    Returns
    -------
    Cut
    """
    n = log_combined.size
    quarantined = benjamini_hochberg(log_combined, fdr, log=True)
    if row_level > 0.0:
        quarantined |= log_combined <= np.log(row_level)
    if excess_level > 0.0 and null is not None and log_anchored is not None:
        # The excess rule adds rows to what Benjamini-Hochberg and the row level hold,
        # never removes one: the run of smallest p-values over the anchored detectors.
        more = excess_cut(log_anchored, excess_level, null)
        quarantined[np.argsort(log_anchored, kind="stable")[:more]] = True
    held = log_combined[quarantined]
    threshold = float(max(np.exp(held.max()), P_FLOOR)) if held.size else 0.0
    # A detector "flags" a row when its own p-value alone would pass the batch's
    # threshold after its share of the combination.
    p_cuts = tuple(float(wj) * (threshold if threshold > 0 else fdr / max(n, 1)) for wj in shares)
    return Cut(quarantined, threshold, p_cuts)


def held_reasons(
    logp: np.ndarray,
    names: tuple[str, ...],
    p_cuts: tuple[float, ...],
    explain: Explainer | None = None,
) -> list[str]:
    """The reasons of held rows: each names the detectors that flagged it.

    A detector flags a row when its p-value passes its cut (``Cut.p_cuts``); the
    strongest one always counts.

    Parameters
    ----------
    logp : ndarray of shape (n_held, n_detectors)
        The held rows' log p-values per detector.
    names : tuple of str
        The detectors, in column order.
    p_cuts : tuple of float
    explain : callable, optional
        ``explain(detector_name, rows) -> list[str]``, ``rows`` indexing ``logp``'s rows.

    Returns
    -------
    list of str
        One per held row.
    """
    n_held = logp.shape[0]
    parts: list[list[str]] = [[] for _ in range(n_held)]
    if n_held == 0:
        return []
    p = np.maximum(np.exp(logp), P_FLOOR)
    rows = np.arange(n_held)
    strongest = np.argmin(logp, axis=1)
    for j, name in enumerate(names):
        hit = rows[(p[:, j] <= p_cuts[j]) | (strongest == j)]
        if hit.size == 0:
            continue
        sentences = explain(name, hit) if explain else [""] * hit.size
        for r, pr, said in zip(hit.tolist(), p[hit, j].tolist(), sentences, strict=True):
            label = f"{name} (p={pr:.2g})"
            parts[r].append(f"{label}: {said}" if said else label)
    return ["; ".join(bits) for bits in parts]


def decide(
    scores: Mapping[str, np.ndarray],
    calibrations: Mapping[str, Calibration],
    *,
    fdr: float = 0.05,
    explain: Explainer | None = None,
    weights: Mapping[str, float] | None = None,
    excess_level: float = 0.0,
    row_level: float = 0.0,
    null: np.ndarray | None = None,
    anchored: tuple[str, ...] | None = None,
) -> Decision:
    """Turn every detector's scores on a batch into one partition of its rows.

    Parameters
    ----------
    scores : mapping of detector name to ndarray of shape (n_rows,)
    calibrations : mapping of detector name to Calibration
    fdr : float
        False-discovery rate for Benjamini-Hochberg, in (0, 1).
    explain : callable, optional
        ``explain(detector_name, rows) -> list[str]``; gives each quarantined
        row a sentence from each detector that flagged it.
    weights : mapping of detector name to weight, optional
        Each detector's share of the combination (default equal; missing names 1).
    excess_level : float, default 0
        Level of the excess rule (:func:`excess_cut`), which holds more rows than
        Benjamini-Hochberg where the batch shows a significant excess of small
        p-values; 0 turns it off.
    row_level : float, default 0
        Rows whose combined p-value is at most this are held whatever the
        batch's size; 0 turns it off.
    null : ndarray, optional
        Sorted combined log p-values of clean rows over the ``anchored`` detectors,
        which the excess rule needs.
    anchored : tuple of str, optional
        The detectors the excess rule combines (default all): those whose
        calibration scores are exchangeable with a batch's at any batch size.

    Returns
    -------
    Decision
    """
    if not 0.0 < fdr < 1.0:
        raise param_error("fdr", "decide()", "in (0, 1)", fdr)
    names = tuple(scores)
    if not names:
        raise ValueError("decide() needs the scores of at least one detector")
    n = len(next(iter(scores.values())))
    logp, w, log_combined = combined_log_p(scores, calibrations, weights)
    over_anchored = anchored_log_p(logp, w, names, anchored)
    held = cut(
        log_combined,
        w,
        fdr=fdr,
        row_level=row_level,
        excess_level=excess_level,
        null=null,
        log_anchored=over_anchored if excess_level > 0.0 else None,
    )
    reasons = [""] * n
    rows = np.flatnonzero(held.quarantined)
    said = held_reasons(
        logp[rows],
        names,
        held.p_cuts,
        None if explain is None else (lambda name, hit: explain(name, rows[hit])),
    )
    for r, text in zip(rows.tolist(), said, strict=True):
        reasons[r] = text
    p = np.maximum(np.exp(logp), P_FLOOR)
    combined = np.maximum(np.exp(log_combined), P_FLOOR)
    # From the log, so rows far in the tail stay ordered instead of tying at P_FLOOR.
    suspicion = -log_combined / np.log(10.0) if n else np.empty(0)
    return Decision(
        held.quarantined,
        p,
        combined,
        suspicion,
        tuple(reasons),
        names,
        held.threshold,
        held.p_cuts,
        RowTally.of(over_anchored, within_log_p(logp, w, names, anchored)),
    )


@dataclass(frozen=True)
class ChunkedDecision:
    """The quarantine decision for a batch judged in chunks (``Guard.judge_chunks``).

    The same decision as ``Decision`` for the same batch judged whole, kept to a
    few numbers per row: per-detector scores, p-values and reasons are kept for
    the held rows only.

    Attributes
    ----------
    log_combined : ndarray of shape (n_rows,), float64
        Every row's combined natural-log p-value (an ``np.memmap`` when the
        judging was given a directory).
    held : ndarray of shape (n_held,), int64
        Positions of the quarantined rows in the batch, ascending.
    reasons : tuple of str
        One per held row.
    scores : dict of str to ndarray of shape (n_held,)
        Each detector's raw score of the held rows.
    p_values : ndarray of shape (n_held, n_detectors)
        The held rows' per-detector p-values, columns in ``detectors`` order.
    detectors : tuple of str
    threshold : float
        The largest combined p-value quarantined (0 when none is).
    p_cuts : tuple of float
        As ``Decision.p_cuts``.
    window_flagged : ndarray of shape (n_flagged,), int64
        Positions of the window's rows that the windowed detectors flag with this
        batch (``Guard.window_suspects``); empty without a window.
    tally : sources.RowTally
        As ``Decision.tally``, summed over the chunks.
    """

    log_combined: np.ndarray
    held: np.ndarray
    reasons: tuple[str, ...]
    scores: dict[str, np.ndarray]
    p_values: np.ndarray
    detectors: tuple[str, ...]
    threshold: float
    p_cuts: tuple[float, ...]
    window_flagged: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    tally: RowTally = field(default_factory=RowTally)

    @property
    def n_rows(self) -> int:
        return int(self.log_combined.size)

    @property
    def quarantined(self) -> np.ndarray:
        """ndarray of shape (n_rows,), bool: the held rows."""
        out = np.zeros(self.n_rows, dtype=bool)
        out[self.held] = True
        return out

    @property
    def combined(self) -> np.ndarray:
        """ndarray of shape (n_rows,): every row's combined p-value (as ``Decision.combined``)."""
        return np.maximum(np.exp(self.log_combined), P_FLOOR)

    @property
    def suspicion(self) -> np.ndarray:
        """ndarray of shape (n_rows,): ``-log10`` of the combined p-value."""
        return -np.asarray(self.log_combined) / np.log(10.0)


# ----------------------------------------------------------------------------- the batch

#: Why a row is held, in the order its stage is chosen when several reasons apply:
#: it broke an expectation; a reviewer rejected the same row before; the detectors
#: flagged it; the whole batch was held for review.
STAGES = ("expectations", "blocklist", "detectors", "batch_hold")


@dataclass(frozen=True)
class BatchDecision:
    """Where every row of one batch goes, and why: the one place a row is held.

    Attributes
    ----------
    stage : ndarray of shape (n_rows,), object
        ``""`` for a row that joins the training set, else one of ``STAGES``:
        the first reason, in that order, that holds the row.
    reason : ndarray of shape (n_rows,), object
        Every reason the row is held, joined by ``"; "``; empty for clean rows.
    suspicion : ndarray of shape (n_rows,)
        ``-log10`` of the combined p-value; NaN for rows no detector scored
        (held by an expectation or the blocklist before scoring).
    scores : dict of str to ndarray of shape (n_rows,)
        Each detector's raw score, NaN for rows it did not score.
    detectors : Decision or None
        The detectors' decision over the scored rows (None when none was scored).
    scored : ndarray of shape (n_scored,), int64
        The row positions the detectors scored, in ``detectors`` order.
    batch_hold : str or None
        Why the whole batch was held for review, when it was.
    """

    stage: np.ndarray
    reason: np.ndarray
    suspicion: np.ndarray
    scores: dict[str, np.ndarray]
    detectors: Decision | None
    scored: np.ndarray
    batch_hold: str | None

    @property
    def n_rows(self) -> int:
        return int(self.stage.size)

    @property
    def quarantined(self) -> np.ndarray:
        """ndarray of shape (n_rows,), bool: the rows held back."""
        return self.stage != ""

    def held_by(self) -> dict[str, int]:
        """How many rows each stage holds (every stage named, zeros included)."""
        return {s: int(np.count_nonzero(self.stage == s)) for s in STAGES}


def decide_batch(
    n_rows: int,
    *,
    failed: Mapping[int, str] | None = None,
    blocked: Mapping[int, str] | None = None,
    scored: np.ndarray | None = None,
    detectors: Decision | None = None,
    scores: Mapping[str, np.ndarray] | None = None,
    batch_hold: str | None = None,
) -> BatchDecision:
    """Partition a batch's rows into clean and held, each held row with its stage and reasons.

    Parameters
    ----------
    n_rows : int
    failed : mapping of row position to reason, optional
        Rows that broke a row-level expectation.
    blocked : mapping of row position to reason, optional
        Rows a reviewer rejected before (by content).
    scored : ndarray of shape (n_scored,), optional
        Row positions the detectors scored, in the order of ``detectors`` and ``scores``.
    detectors : Decision, optional
        The detectors' decision over the ``scored`` rows.
    scores : mapping of detector name to ndarray of shape (n_scored,), optional
    batch_hold : str, optional
        Hold every row for review, with this reason.

    Returns
    -------
    BatchDecision
    """
    stage = np.full(n_rows, "", dtype=object)
    reasons: list[list[str]] = [[] for _ in range(n_rows)]

    def hold(row: int, name: str, why: str) -> None:
        if not stage[row]:
            stage[row] = name
        reasons[row].append(why)

    for row, why in sorted((failed or {}).items()):
        hold(row, "expectations", why)
    for row, why in sorted((blocked or {}).items()):
        hold(row, "blocklist", why)
    positions = np.zeros(0, dtype=np.int64) if scored is None else np.asarray(scored, np.int64)
    suspicion = np.full(n_rows, np.nan)
    full_scores: dict[str, np.ndarray] = {}
    if detectors is not None:
        suspicion[positions] = detectors.suspicion
        for name, s in (scores or {}).items():
            full_scores[name] = np.full(n_rows, np.nan)
            full_scores[name][positions] = s
        for k in np.flatnonzero(detectors.quarantined).tolist():
            hold(int(positions[k]), "detectors", detectors.reasons[k])
    if batch_hold:
        for row in range(n_rows):
            hold(row, "batch_hold", batch_hold)
    reason = np.array(["; ".join(r) for r in reasons], dtype=object)
    return BatchDecision(stage, reason, suspicion, full_scores, detectors, positions, batch_hold)


def batch_hold_reason(
    drift: DriftReport, *, hold_label_shift: float, hold_feature_drift: float
) -> str | None:
    """Why the whole batch is held for review, when its drift passes the configured levels."""
    tv, p = drift.label_tv, drift.label_p_value
    if tv is not None and tv > hold_label_shift and drift.label_drifted:
        return (
            f"batch held for review: its label shares are {tv:.2f} (total variation) from the "
            f"trusted set's (chi-square p={p:.2g}), past hold_label_shift {hold_label_shift}"
        )
    share = len(drift.drifted_features) / max(len(drift.features), 1)
    if hold_feature_drift < 1.0 and share > hold_feature_drift:
        return (
            f"batch held for review: {len(drift.drifted_features)} of {len(drift.features)} "
            f"features drifted from the trusted set, past hold_feature_drift {hold_feature_drift}"
        )
    return None
