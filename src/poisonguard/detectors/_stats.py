"""Tail probabilities as surprises (``-log p``), finite even far out in the tail."""

from __future__ import annotations

import numpy as np
from scipy import special


def poisson_surprise(count: np.ndarray, lam: np.ndarray | float) -> np.ndarray:
    """``-log P(X >= count)`` for ``X ~ Poisson(lam)``; 0 where ``count <= 0``.

    Where the probability underflows, ``-log`` of the point mass at ``count``
    corrected by the geometric bound on the rest of the tail is used, which
    is accurate far out in the tail.

    Parameters
    ----------
    count : ndarray of int
    lam : ndarray of float, > 0 (broadcast against ``count``)

    Returns
    -------
    ndarray of float64
    """
    c, lam = np.broadcast_arrays(np.asarray(count, dtype=np.float64), np.asarray(lam, np.float64))
    out = np.zeros(c.shape)
    pos = c > 0
    if not pos.any():
        return out
    cp, lp = c[pos], lam[pos]
    p = special.pdtrc(cp - 1.0, lp)
    with np.errstate(divide="ignore", invalid="ignore"):
        direct = -np.log(p)
        log_pmf = cp * np.log(lp) - lp - special.gammaln(cp + 1.0)
        ratio = np.clip(lp / (cp + 1.0), 0.0, 1.0 - 1e-12)
        far = -(log_pmf - np.log1p(-ratio))
    out[pos] = np.where(p > 1e-250, direct, far)
    return np.maximum(out, 0.0)


def binomial_surprise(k: np.ndarray, n: np.ndarray, p: np.ndarray | float) -> np.ndarray:
    """``-log P(X >= k)`` for ``X ~ Binomial(n, p)``; 0 where ``k <= 0``.

    Parameters
    ----------
    k, n : ndarray of int (broadcast together)
    p : ndarray of float in (0, 1)

    Returns
    -------
    ndarray of float64
    """
    k, n, p = np.broadcast_arrays(
        np.asarray(k, np.float64), np.asarray(n, np.float64), np.asarray(p, np.float64)
    )
    out = np.zeros(k.shape)
    pos = (k > 0) & (n > 0)
    if not pos.any():
        return out
    kp, n_, pp = k[pos], n[pos], np.clip(p[pos], 1e-300, 1.0 - 1e-16)
    tail = special.bdtrc(kp - 1.0, n_, pp)
    with np.errstate(divide="ignore", invalid="ignore"):
        direct = -np.log(tail)
        log_pmf = (
            special.gammaln(n_ + 1.0)
            - special.gammaln(kp + 1.0)
            - special.gammaln(n_ - kp + 1.0)
            + kp * np.log(pp)
            + (n_ - kp) * np.log1p(-pp)
        )
    out[pos] = np.where(tail > 1e-250, direct, -log_pmf)
    return np.maximum(np.nan_to_num(out, nan=0.0, posinf=1e300), 0.0)


def beta_binomial_surprise(
    k: np.ndarray, n: np.ndarray, a: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """``-log P(X >= k)`` for ``X ~ BetaBinomial(n, a, b)``, element by element.

    The tail is summed exactly in log space, so use it on few elements (it
    costs ``n - k`` terms each).

    Parameters
    ----------
    k, n : ndarray of int
    a, b : ndarray of float, > 0

    Returns
    -------
    ndarray of float64, same shape as ``k``
    """
    k, n, a, b = np.broadcast_arrays(
        np.asarray(k, np.float64),
        np.asarray(n, np.float64),
        np.asarray(a, np.float64),
        np.asarray(b, np.float64),
    )
    out = np.zeros(k.shape)
    for pos in zip(*np.nonzero((k > 0) & (n > 0)), strict=True):
        kk, nn, aa, bb = k[pos], n[pos], a[pos], b[pos]
        j = np.arange(kk, nn + 1.0)
        log_pmf = (
            special.gammaln(nn + 1.0)
            - special.gammaln(j + 1.0)
            - special.gammaln(nn - j + 1.0)
            + special.betaln(j + aa, nn - j + bb)
            - special.betaln(aa, bb)
        )
        top = log_pmf.max()
        out[pos] = max(0.0, -(top + np.log(np.exp(log_pmf - top).sum())))
    return out
