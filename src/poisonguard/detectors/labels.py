"""Label detectors: rows whose label disagrees with what their features say.

``knn_label`` asks the nearest *trusted* rows (so a cluster of flipped rows
cannot vouch for itself), ``batch_knn_label`` the nearest rows of the same
batch, ``model_label`` a classifier fitted on the trusted rows; ``label_excess``
asks whether the row's label is more common among the batch rows around it than
among the trusted rows around it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Self

import numpy as np

from poisonguard.detectors._common import (
    UNSEEN_SCORE,
    DetectorBase,
    WithinBatchBase,
    class_prior,
    keyed_hash,
    label_surprise,
    labels_of,
    one_thread,
    subsample,
)
from poisonguard.detectors._kernels import (
    _beta_binomial_log_tail,
    _neighbour_vote,
    _other_label_ends,
    _segment_residuals,
    _trust_ratio,
)
from poisonguard.detectors._neighbours import SAMPLE_ROWS, Neighbours, search
from poisonguard.detectors._stats import binomial_surprise
from poisonguard.detectors.base import Table, fingerprint
from poisonguard.errors import BatchError


def _given(prob: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probability of each row's own label, and whether the label is unseen."""
    unseen = (y < 0) | (y >= prob.shape[1])
    p = prob[np.arange(len(y)), np.where(unseen, 0, y)]
    return p, unseen


def _margin(nb: Neighbours) -> np.ndarray:
    """``log`` of how much farther the nearest same-label row is than the k nearest rows on average.

    0 or less when the label is among the row's own neighbours; large for a
    row sitting deep among rows of other labels. It extends the vote, which
    saturates once all k neighbours disagree, so that a flipped row deep
    inside another class outranks a trusted row on a class boundary.

    Returns
    -------
    ndarray of shape (n_rows,), float64; 0 where there is no same-label row.
    """
    ok = np.isfinite(nb.dist)
    count = ok.sum(axis=1)
    mean = np.sqrt(np.where(ok, nb.dist, 0.0)).sum(axis=1) / np.maximum(count, 1)
    same = np.sqrt(nb.class_dist[:, 0]) if nb.class_dist.shape[1] else np.full(len(mean), np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.log(same / mean)
    return np.where(np.isfinite(m) & (count > 0), np.maximum(m, 0.0), 0.0)


def _label_scores(
    nb: Neighbours, neighbour_labels: np.ndarray, y: np.ndarray, prior: np.ndarray, smoothing: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores, vote probabilities (n_rows, n_classes) and margins of label agreement."""
    prob = _neighbour_vote(nb.dist, nb.index, neighbour_labels, prior, smoothing)
    p, unseen = _given(prob, y)
    margin = _margin(nb)
    s = label_surprise(p, prob.max(axis=1), unseen)
    return np.where(unseen, s, np.minimum(s + margin, UNSEEN_SCORE - 1.0)), prob, margin


def _knn_reason(
    batch: Table, r: int, y: int, lab: np.ndarray, prob: np.ndarray, where: str, margin: float
) -> str:
    text = _vote_reason(batch, r, y, lab, prob, where)
    if margin > 0.05:
        text += f"; the nearest one labelled {batch.label_of(y)} is {np.exp(margin):.3g}x farther"
    return text


def _vote_reason(
    batch: Table, r: int, y: int, lab: np.ndarray, prob: np.ndarray, where: str
) -> str:
    lab = lab[lab >= 0]
    k = len(lab)
    label = batch.label_of(y)
    if k == 0:
        return f"label {label}, with no {where} to compare"
    values, counts = np.unique(lab, return_counts=True)
    top = int(values[np.argmax(counts)])
    agree = int(np.sum(lab == y))
    if agree == k:
        return f"label {label}, as all {k} of its nearest {where} (p={prob[r]:.2f})"
    if top == y:
        return f"label {label}, shared by {agree} of its {k} nearest {where}"
    return (
        f"label {label}, but {int(counts.max())} of its {k} nearest {where} are "
        f"{batch.label_of(top)} ({agree} agree)"
    )


def _trusted_sample(
    reference: Table, who: str, max_rows: int, seed: int, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """The reference's labels, and the stratified sample of trusted rows a kNN label
    detector searches (at least ``k + 1`` rows per label): its rows, labels and key.
    Detectors drawing it with the same settings search the same rows (and share searches)."""
    y = labels_of(reference, who, "reference")
    if reference.n_rows < 1:
        raise BatchError("reference", f"detector {who!r} needs at least 1 trusted row")
    keep = subsample(reference.n_rows, max_rows, y, seed, k + 1)
    R = np.ascontiguousarray(reference.x32[keep])
    r_y = np.ascontiguousarray(y[keep])
    return y, R, r_y, fingerprint(R, r_y)


@dataclass(frozen=True, eq=False)
class LabelSample:
    """A summary of a batch for neighbours among its own rows: rows per label, and per
    label the ``max_rows`` rows whose keyed hash of their position is smallest.

    The rows searched (``sample``) are, per label, the first of those rows up to the
    label's quota, which is the label's share of ``max_rows`` rows (at least
    ``min_per_class``, at most all it has): a stratified sample that any chunking of
    the batch finds alike, and every row when the batch has at most ``max_rows``.

    Attributes
    ----------
    n_rows : int
    label_counts : ndarray of shape (n_labels + 1,), int64
        Rows per label code plus one (slot 0: labels the trusted rows never had).
    slots, hashes, positions : ndarray of shape (n_kept,)
        The kept rows' label slots, hashes and positions, sorted by slot then hash.
    values : ndarray of shape (n_kept, n_features), float32
        Their features (``Table.x32``).
    max_rows, min_per_class : int
    """

    n_rows: int
    label_counts: np.ndarray
    slots: np.ndarray
    hashes: np.ndarray
    positions: np.ndarray
    values: np.ndarray
    max_rows: int
    min_per_class: int

    @cached_property
    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        """The rows searched, by position: positions, features, labels and search key."""
        counts = self.label_counts
        n = max(self.n_rows, 1)
        quota = np.maximum(np.round(counts * (self.max_rows / n)).astype(np.int64), 1)
        quota = np.minimum(np.maximum(quota, min(self.min_per_class, self.max_rows)), counts)
        rank = _rank_within(self.slots)
        take = np.flatnonzero(rank < quota[self.slots])
        take = take[np.argsort(self.positions[take], kind="stable")]
        R = np.ascontiguousarray(self.values[take])
        r_y = np.ascontiguousarray(self.slots[take] - 1)
        return self.positions[take], R, r_y, fingerprint(R, r_y)


def _rank_within(groups: np.ndarray) -> np.ndarray:
    """Each element's place among the elements of its group, for ``groups`` sorted."""
    if groups.size == 0:
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    sizes = np.diff(np.r_[starts, groups.size])
    return np.arange(groups.size) - np.repeat(starts, sizes)


class _BatchSampled(WithinBatchBase):
    """What ``batch_knn_label`` and ``label_excess`` share: neighbours among a stratified
    sample of the batch's own rows (``LabelSample``).

    Subclasses have ``max_batch`` and ``random_state``, and set ``k_`` when fitted.
    """

    max_batch: int
    random_state: int
    n_classes_: int
    k_: int

    def _summarize(self, batch: Table, positions: np.ndarray, prior: object) -> LabelSample:
        y = labels_of(batch, self.name, "batch")
        slots = np.where((y >= 0) & (y < self.n_classes_), y + 1, 0).astype(np.int64)
        hashes = keyed_hash(positions, int(self.random_state))
        return self._kept(
            batch.n_rows,
            np.bincount(slots, minlength=self.n_classes_ + 1),
            slots,
            hashes,
            positions,
            batch.x32,
        )

    def _merge(self, parts: list[LabelSample]) -> LabelSample:
        if len(parts) == 1:
            return parts[0]
        return self._kept(
            sum(p.n_rows for p in parts),
            np.sum([p.label_counts for p in parts], axis=0),
            np.concatenate([p.slots for p in parts]),
            np.concatenate([p.hashes for p in parts]),
            np.concatenate([p.positions for p in parts]),
            np.concatenate([p.values for p in parts]),
        )

    def _kept(
        self,
        n_rows: int,
        counts: np.ndarray,
        slots: np.ndarray,
        hashes: np.ndarray,
        positions: np.ndarray,
        values: np.ndarray,
    ) -> LabelSample:
        """The summary keeping, per label, the ``max_batch`` rows of smallest hash."""
        order = np.lexsort((hashes, slots))
        order = order[_rank_within(slots[order]) < int(self.max_batch)]
        return LabelSample(
            n_rows,
            counts.astype(np.int64),
            slots[order],
            hashes[order],
            positions[order],
            values[order],
            int(self.max_batch),
            self.k_ + 1,
        )

    def _neighbours(
        self, batch: Table, y: np.ndarray, positions: np.ndarray, summary: LabelSample, kc: int = 0
    ) -> tuple[np.ndarray, Neighbours]:
        """Each row's ``k_`` nearest rows of the batch's sample, itself left out (``kc`` of
        its own label too): the sample's labels and the neighbours."""
        ids, R, r_y, r_key = summary.sample
        nb = search(
            batch.x32,
            R,
            max(1, min(self.k_, len(r_y) - 1)),
            kc=kc,
            q_lab=y,
            r_lab=r_y,
            q_ids=positions,
            r_ids=ids,
            r_key=r_key,
            q_key=batch.key,
        )
        return r_y, nb


class _TrustedNeighbours(DetectorBase):
    """What ``knn_label`` and ``interpolation`` share: a sample of trusted rows and its search.

    Subclasses have ``n_neighbors``, ``n_close``, ``max_reference`` and ``random_state``.
    With the same values both use one neighbour search (``search`` caches by content).
    """

    n_neighbors: int
    n_close: int
    max_reference: int
    random_state: int

    def _validate_params(self) -> None:
        k = self._check_int("n_neighbors", 1)
        self._check_int("n_close", 1, k)
        self._check_int("max_reference", 2)
        self._check_seed()

    def _fit_sample(self, reference: Table) -> np.ndarray:
        """Keep the trusted sample; the reference's labels."""
        k = int(self.n_neighbors)
        y, self.R_, self.r_y_, self.r_key_ = _trusted_sample(
            reference, self.name, int(self.max_reference), int(self.random_state), k
        )
        self.k_ = min(k, len(self.r_y_))
        self.n_close_ = min(int(self.n_close), self.k_)
        return y

    def _search(self, batch: Table) -> tuple[np.ndarray, Neighbours]:
        """The batch's labels, and its nearest trusted rows overall and of its own label."""
        y = labels_of(batch, self.name, "batch")
        nb = search(
            batch.x32,
            self.R_,
            self.k_,
            kc=self.n_close_,
            q_lab=y,
            r_lab=self.r_y_,
            r_key=self.r_key_,
            q_key=batch.key,
        )
        return y, nb

    def _search_rows(self, batch: Table, rows: np.ndarray) -> tuple[np.ndarray, Neighbours]:
        """``_search`` for some rows of ``batch``, read off the whole batch's search.

        ``explain`` runs right after ``score`` on the same batch, whose search is
        memoised: slicing it costs nothing, where searching the rows again would
        repeat the search for every row a large batch quarantines.
        """
        y, nb = self._search(batch)
        return y[rows], nb.take(rows)


class KnnLabelDetector(_TrustedNeighbours):
    """How much farther a row's label lies than the other labels, among trusted rows.

    Score: ``log(d_own / d_other)``, with ``d_own`` the mean distance to the
    ``n_close`` nearest trusted rows of the row's label and ``d_other`` the
    same for the nearest trusted rows of any other label (a trust-score
    ratio). About 0 on a class boundary, negative inside the row's own class,
    and growing without bound the deeper the row sits inside another class, so
    flipped rows land beyond every trusted calibration score rather than tying
    with honest boundary rows, as a saturating neighbour vote would. Trusted
    rows come from a stratified, deterministic sample of the reference, so a
    cluster of flipped batch rows cannot vouch for itself. Labels the
    reference never had score above every seen label.

    Parameters
    ----------
    n_neighbors : int
        Global neighbours searched (>= 1); other-label distances come from
        them. Same value, seed and ``max_reference`` as ``knn_distance``
        means both share one neighbour search.
    n_close : int
        Rows averaged on each side of the ratio (in [1, n_neighbors]).
    max_reference : int
        Most trusted rows searched (>= 2).
    smoothing : float
        Pseudo-votes spread over classes by their trusted frequency (> 0);
        used by the neighbour vote that reasons quote.
    random_state : int
    """

    name: ClassVar[str] = "knn_label"
    needs_label: ClassVar[bool] = True
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    # A log distance ratio: an exponential tail here is a power-law tail of the
    # ratio itself (docs/decision.md, "The tail").
    tail_shape: ClassVar[float | None] = 0.0

    def __init__(
        self,
        *,
        n_neighbors: int = 10,
        n_close: int = 5,
        max_reference: int = SAMPLE_ROWS,
        smoothing: float = 1.0,
        random_state: int = 0,
    ):
        self.n_neighbors = n_neighbors
        self.n_close = n_close
        self.max_reference = max_reference
        self.smoothing = smoothing
        self.random_state = random_state

    def _validate_params(self) -> None:
        super()._validate_params()
        self._check_real("smoothing", 0.0, low_open=True)

    def _fit(self, reference: Table) -> Self:
        y = self._fit_sample(reference)
        self.n_classes_ = reference.n_classes
        self.prior_ = class_prior(y, reference.n_classes)
        return self

    _fitted_attr: ClassVar[str] = "R_"

    def _score(self, batch: Table) -> np.ndarray:
        y, nb = self._search(batch)
        s, _, _ = _trust_ratio(nb.dist, nb.index, nb.class_dist, self.r_y_, y, self.n_close_)
        # Seen labels with no trusted row in the sample rank with the unseen ones, by
        # the neighbour vote; no other row needs the vote.
        unseen = (y < 0) | (y >= self.n_classes_) | ~np.isfinite(nb.class_dist[:, 0])
        rows = np.flatnonzero(unseen)
        prob = _neighbour_vote(
            nb.dist[rows], nb.index[rows], self.r_y_, self.prior_, self.smoothing
        )
        p, _ = _given(prob, y[rows])
        s[rows] = label_surprise(p, prob.max(axis=1), unseen[rows])
        return s

    def _explain(self, batch: Table, rows: np.ndarray) -> list[str]:
        y, nb = self._search_rows(batch, rows)
        _, d_own, d_other = _trust_ratio(
            nb.dist, nb.index, nb.class_dist, self.r_y_, y, self.n_close_
        )
        prob = _neighbour_vote(nb.dist, nb.index, self.r_y_, self.prior_, self.smoothing)
        p, _ = _given(prob, y)
        lab = np.where(nb.index >= 0, self.r_y_[np.maximum(nb.index, 0)], -1)
        n = lab.shape[0]
        n_cls = max(self.n_classes_, 1)
        # Neighbour label counts of every row at once (a per-row np.unique is slow
        # when a large batch has thousands of rows to explain).
        valid = (lab >= 0) & (lab < n_cls)
        cells = np.arange(n)[:, None] * n_cls + np.where(valid, lab, 0)
        counts = np.bincount(cells[valid], minlength=n * n_cls).reshape(n, n_cls)
        n_valid = valid.sum(axis=1)
        top = counts.argmax(axis=1)
        seen = (y >= 0) & (y < n_cls)
        agree = np.where(seen, counts[np.arange(n), np.where(seen, y, 0)], 0)
        most = counts[np.arange(n), top]
        # Python scalars: indexing numpy arrays element by element is slow in this loop.
        ratio = np.where(
            np.isfinite(d_own) & (d_other > 0) & (d_own > d_other),
            d_own / np.where(d_other > 0, d_other, 1.0),
            0.0,
        ).tolist()
        yl, kl, al, tl, ml, sl, pl = (
            a.tolist() for a in (y, n_valid, agree, top, most, seen & (top == y), p)
        )
        out = []
        for r in range(n):
            label = batch.label_of(yl[r])
            kr = kl[r]
            if kr == 0:
                text = f"label {label}, with no trusted rows to compare"
            elif al[r] == kr:
                text = f"label {label}, as all {kr} of its nearest trusted rows (p={pl[r]:.2f})"
            elif sl[r]:
                text = f"label {label}, shared by {al[r]} of its {kr} nearest trusted rows"
            else:
                text = (
                    f"label {label}, but {ml[r]} of its {kr} nearest trusted rows "
                    f"are {batch.label_of(tl[r])} ({al[r]} agree)"
                )
            if ratio[r] > 0:
                text += (
                    f"; trusted rows labelled {label} are "
                    f"{ratio[r]:.3g}x farther than those of other labels"
                )
            out.append(text)
        return out


class BatchKnnLabelDetector(_BatchSampled):
    """How little a row's nearest rows *in the same batch* support its label.

    Like ``knn_label`` but the neighbours come from the batch itself (a
    deterministic, label-stratified sample of at most ``max_batch`` of its
    rows, never the row itself). It sees label noise in regions the trusted
    set does not cover, but a large enough cluster of identically flipped rows
    does vouch for itself, and scores depend on the batch's size and
    make-up.

    Parameters
    ----------
    n_neighbors : int
    max_batch : int
        Most batch rows used as neighbours (>= 2).
    smoothing : float
    random_state : int
    """

    name: ClassVar[str] = "batch_knn_label"
    needs_label: ClassVar[bool] = True
    tasks: ClassVar[tuple[str, ...]] = ("classification",)

    def __init__(
        self,
        *,
        n_neighbors: int = 10,
        max_batch: int = 2048,
        smoothing: float = 1.0,
        random_state: int = 0,
    ):
        self.n_neighbors = n_neighbors
        self.max_batch = max_batch
        self.smoothing = smoothing
        self.random_state = random_state

    def _validate_params(self) -> None:
        self._check_int("n_neighbors", 1)
        self._check_int("max_batch", 2)
        self._check_real("smoothing", 0.0, low_open=True)
        self._check_seed()

    def _fit(self, reference: Table) -> Self:
        self.k_ = int(self.n_neighbors)
        self.max_batch_ = int(self.max_batch)
        self.seed_ = int(self.random_state)
        y = labels_of(reference, self.name, "reference")
        self.n_classes_ = reference.n_classes
        self.prior_ = class_prior(y, reference.n_classes)
        return self

    def _scores(
        self, batch: Table, summary: LabelSample, positions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        y = labels_of(batch, self.name, "batch")
        r_y, nb = self._neighbours(batch, y, positions, summary, kc=1)
        s, prob, margin = _label_scores(nb, r_y, y, self.prior_, self.smoothing)
        lab = np.where(nb.index >= 0, r_y[np.maximum(nb.index, 0)], -1)
        return s, prob, margin, lab, y

    _fitted_attr: ClassVar[str] = "prior_"

    def _score_with(self, batch: Table, summary: LabelSample, positions: np.ndarray) -> np.ndarray:
        return self._scores(batch, summary, positions)[0]

    def _explain_with(
        self, batch: Table, rows: np.ndarray, summary: LabelSample, positions: np.ndarray
    ) -> list[str]:
        _, prob, margin, lab, y = self._scores(batch, summary, positions)
        p, _ = _given(prob, y)
        return [
            _knn_reason(batch, int(r), int(y[r]), lab[r], p, "rows of this batch", float(margin[r]))
            for r in rows
        ]


class ModelLabelDetector(DetectorBase):
    """How unlikely a classifier fitted on the trusted rows finds each row's label.

    Score: ``-log p(label)`` from the model's class probabilities; batch rows
    are out-of-sample by construction. ``model="logistic"`` is a multinomial
    logistic regression (fast, linear); ``"hist_gradient_boosting"`` is
    non-linear and slower to fit and predict. Labels the model never saw
    (unseen, or absent from the fitting rows) score above every seen label.

    Parameters
    ----------
    model : {"logistic", "hist_gradient_boosting"}
    C : float
        Inverse regularisation of the logistic model (> 0).
    max_iter : int
        Iterations (solver steps or boosting rounds, >= 1).
    max_reference : int
        Most trusted rows used to fit (stratified sample, >= 2).
    random_state : int
    """

    name: ClassVar[str] = "model_label"
    needs_label: ClassVar[bool] = True
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    # -log p(label) is a surprise in nats: for a calibrated K-class model,
    # P(-log p(label) >= s) <= K exp(-s), an exponential tail of scale at most 1.
    # A sharp model's tail is narrower; its scale, estimated from a few tens of
    # exceedances on small trusted sets, is taken at its upper 90% bound.
    tail_shape: ClassVar[float | None] = 0.0
    tail_confidence: ClassVar[float | None] = 0.9

    def __init__(
        self,
        *,
        model: str = "logistic",
        C: float = 1.0,
        max_iter: int = 200,
        max_reference: int = 8192,
        random_state: int = 0,
    ):
        self.model = model
        self.C = C
        self.max_iter = max_iter
        self.max_reference = max_reference
        self.random_state = random_state

    def _validate_params(self) -> None:
        self._check_choice("model", ("logistic", "hist_gradient_boosting"))
        self._check_real("C", 0.0, low_open=True)
        self._check_int("max_iter", 1)
        self._check_int("max_reference", 2)
        self._check_seed()

    def _fit(self, reference: Table) -> Self:
        kind, C, max_iter = str(self.model), float(self.C), int(self.max_iter)
        max_ref, seed = int(self.max_reference), int(self.random_state)
        y = labels_of(reference, self.name, "reference")
        keep = subsample(reference.n_rows, max_ref, y, seed, 2)
        X = reference.x32[keep]
        yk = y[keep]
        self.n_classes_ = reference.n_classes
        present = np.unique(yk[(yk >= 0) & (yk < reference.n_classes)])
        self.present_ = present
        self.model_ = None
        if len(present) >= 2:
            import warnings

            from sklearn.ensemble import HistGradientBoostingClassifier
            from sklearn.exceptions import ConvergenceWarning
            from sklearn.linear_model import LogisticRegression

            est: Any = (
                LogisticRegression(C=C, max_iter=max_iter, tol=1e-3)
                if kind == "logistic"
                else HistGradientBoostingClassifier(
                    max_iter=max_iter, early_stopping=False, random_state=seed
                )
            )
            # One BLAS thread: these problems are small, and threaded BLAS
            # stalls badly when another process holds one of few cores.
            with warnings.catch_warnings(), one_thread():
                # A not-quite-converged model still ranks labels well.
                warnings.simplefilter("ignore", ConvergenceWarning)
                est.fit(X, yk)
            self.model_ = est
        return self

    def log_proba(self, batch: Table) -> np.ndarray:
        """Log-probabilities, ndarray of shape (n_rows, n_classes); -inf for classes never fitted."""
        self._check_fitted(self._fitted_attr)
        n = batch.n_rows
        out = np.full((n, self.n_classes_), -np.inf)
        if self.model_ is None:
            if len(self.present_) == 1:
                out[:, self.present_[0]] = 0.0
            return out
        # In float64: float32 products round differently with the number of rows (BLAS
        # blocks them), and a row must score alike in a batch, a chunk or alone.
        X = batch.x32.astype(np.float64)
        with one_thread():
            return self._fill(out, self.model_, X)

    @staticmethod
    def _fill(out: np.ndarray, est: object, X: np.ndarray) -> np.ndarray:
        if hasattr(est, "coef_"):
            z = est.decision_function(X)  # type: ignore[attr-defined]
            if z.ndim == 1:
                # Binary: log sigmoid of either sign, computed without overflow.
                lp = np.stack([-np.logaddexp(0.0, z), -np.logaddexp(0.0, -z)], axis=1)
            else:
                lp = z - np.logaddexp.reduce(z, axis=1, keepdims=True)
        else:
            with np.errstate(divide="ignore"):
                lp = np.log(np.maximum(est.predict_proba(X), 1e-300))  # type: ignore[attr-defined]
        out[:, est.classes_.astype(np.int64)] = lp  # type: ignore[attr-defined]
        return out

    _fitted_attr: ClassVar[str] = "present_"

    def _score(self, batch: Table) -> np.ndarray:
        y = labels_of(batch, self.name, "batch")
        lp = self.log_proba(batch)
        unseen = (y < 0) | (y >= self.n_classes_)
        given = lp[np.arange(len(y)), np.where(unseen, 0, y)]
        unseen |= ~np.isfinite(given)
        return label_surprise(np.exp(given), np.exp(lp.max(axis=1)), unseen)

    def _explain(self, batch: Table, rows: np.ndarray) -> list[str]:
        sub = batch.take(rows)
        y = labels_of(sub, self.name, "batch")
        lp = self.log_proba(sub)
        prob = np.exp(lp)
        n = len(rows)
        top = lp.argmax(axis=1)
        unseen = (y < 0) | (y >= self.n_classes_)
        # From the log: a far outlier's probability underflows to 0 without its label
        # being unseen (-inf marks the classes the model never fitted).
        unseen |= ~np.isfinite(lp[np.arange(n), np.where(unseen, 0, y)])
        given = prob[np.arange(n), np.where(unseen, 0, y)]
        # Python scalars: indexing numpy arrays element by element is slow in this loop.
        yl, tl, pt, pg, ul = (a.tolist() for a in (y, top, prob[np.arange(n), top], given, unseen))
        out = []
        for r in range(n):
            label = sub.label_of(yl[r])
            if ul[r]:
                out.append(
                    f"label {label} was never seen by the model "
                    f"(most likely {sub.label_of(tl[r])}, {pt[r]:.2f})"
                )
            elif tl[r] == yl[r]:
                out.append(f"model gives label {label} probability {pt[r]:.2f} (its top)")
            else:
                p_given = f"{pg[r]:.2g}" if pg[r] > 0 else "below 1e-300"
                out.append(
                    f"model gives label {label} probability {p_given} "
                    f"(most likely {sub.label_of(tl[r])}, {pt[r]:.2f})"
                )
        return out


class InterpolationDetector(_TrustedNeighbours):
    """Rows lying on the segment between a trusted row of their label and one of another label.

    Boundary poison is often built from the trusted data itself: a point
    part of the way from a row ``a`` towards a nearby row ``b`` of another
    class, labelled as ``a`` (mixup- or SMOTE-style synthesis), which drags
    ``a``'s region into ``b``'s. Honest rows almost never sit exactly on such
    a segment. Score: ``log(d_k / r)``, with ``r`` the smallest distance from
    the row to a segment joining one of its ``n_close`` nearest trusted rows
    of its label to one of its ``n_neighbors`` nearest trusted rows of another
    label, and ``d_k`` the row's mean distance to its ``n_neighbors`` nearest
    trusted rows (so the score is scale-free). Uses the same neighbour search
    as ``knn_label`` with the same settings.

    Parameters
    ----------
    n_neighbors : int
        Global neighbours searched (>= 1); the other-label ends come from them.
    n_close : int
        Nearest trusted rows of the row's own label tried as the other end
        (in [1, n_neighbors]).
    max_reference : int
        Most trusted rows searched (>= 2).
    random_state : int
    """

    name: ClassVar[str] = "interpolation"
    needs_label: ClassVar[bool] = True
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    # A log distance ratio, like knn_label's: an exponential tail.
    tail_shape: ClassVar[float | None] = 0.0

    def __init__(
        self,
        *,
        n_neighbors: int = 10,
        n_close: int = 5,
        max_reference: int = SAMPLE_ROWS,
        random_state: int = 0,
    ):
        self.n_neighbors = n_neighbors
        self.n_close = n_close
        self.max_reference = max_reference
        self.random_state = random_state

    def _fit(self, reference: Table) -> Self:
        self._fit_sample(reference)
        return self

    def _parts(self, y: np.ndarray, nb: Neighbours) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        i_other, spread = _other_label_ends(nb.dist, nb.index, self.r_y_, y)
        # _segment_residuals skips ends whose index is -1: i_other alone leaves out the row's label.
        resid = _segment_residuals(nb.class_dist, nb.class_index, nb.dist, i_other, self.R_)
        r = np.sqrt(resid)
        # A row without neighbours has no segment either: r is inf, the score -inf, then 0.
        with np.errstate(invalid="ignore", divide="ignore"):
            score = np.log((spread + 1e-12) / (r + 1e-6 * spread + 1e-12))
        score = np.where(np.isfinite(score), score, 0.0)
        return score, r, spread

    _fitted_attr: ClassVar[str] = "R_"

    def _score(self, batch: Table) -> np.ndarray:
        return self._parts(*self._search(batch))[0]

    def _explain(self, batch: Table, rows: np.ndarray) -> list[str]:
        _, r, spread = self._parts(*self._search_rows(batch, rows))
        out = []
        for i in range(len(rows)):
            if np.isfinite(r[i]):
                out.append(
                    f"lies {r[i]:.3g} from the segment between a trusted row of its label and "
                    f"one of another label ({spread[i]:.3g} to its nearest trusted rows)"
                )
            else:
                out.append("no trusted rows of its label and another label nearby")
        return out


class _Regional(_BatchSampled):
    """What ``label_excess`` and ``crowding`` share: each batch row's nearest rows of the
    batch's sample (itself left out) and its nearest trusted rows of the same reach.

    Both search ``knn_label``'s trusted sample with the same settings, so a scan running
    them all searches it once.
    """

    needs_label: ClassVar[bool] = True
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    # -log of a tail probability: exponential above the threshold.
    tail_shape: ClassVar[float | None] = 0.0

    def __init__(
        self,
        *,
        n_neighbors: int = 10,
        max_batch: int = SAMPLE_ROWS,
        max_reference: int = SAMPLE_ROWS,
        random_state: int = 0,
    ):
        self.n_neighbors = n_neighbors
        self.max_batch = max_batch
        self.max_reference = max_reference
        self.random_state = random_state

    def _validate_params(self) -> None:
        self._check_int("n_neighbors", 2)
        self._check_int("max_batch", 2)
        self._check_int("max_reference", 2)
        self._check_seed()

    def _fit(self, reference: Table) -> Self:
        # knn_label's sample with the same settings: when the batch sample is as
        # large as this one, the trusted search is knn_label's own.
        _, self.R_, self.r_y_, self.r_key_ = _trusted_sample(
            reference,
            self.name,
            int(self.max_reference),
            int(self.random_state),
            int(self.n_neighbors),
        )
        self.n_classes_ = reference.n_classes
        self.k_ = int(self.n_neighbors)
        return self

    _fitted_attr: ClassVar[str] = "R_"

    def _both(
        self, batch: Table, y: np.ndarray, positions: np.ndarray, summary: LabelSample
    ) -> tuple[np.ndarray, Neighbours, Neighbours]:
        """The batch sample's labels, each row's nearest rows of it (itself left out) and
        its nearest trusted rows of the same reach (as many as make the same share of the
        trusted sample, so both lists cover about the same region). Both searches are of
        the whole table, memoised."""
        b_y, near = self._neighbours(batch, y, positions, summary)
        kb = near.index.shape[1]
        m = len(self.r_y_)
        kt = int(min(m, max(kb, round(kb * m / len(b_y)))))
        trusted = search(batch.x32, self.R_, kt, r_key=self.r_key_, q_key=batch.key)
        return b_y, near, trusted


class LabelExcessDetector(_Regional):
    """Rows whose label is far more common among the batch rows around them than among trusted ones.

    Poison aimed at a population (every row of one group relabelled, the rows a
    model is surest of flipped, a region of the feature space relabelled) need
    not make any single row look wrong: on a coarse table a flipped row can be
    the honest label of half its look-alikes. What it does change is the share
    of labels in that part of the batch. For each batch row, its
    ``n_neighbors`` nearest *batch* rows (itself left out) are compared with
    its nearest *trusted* rows of the same reach (as many as make the same
    share of the trusted sample, so both cover about the same region): with
    ``c`` of ``k_t`` trusted neighbours carrying the row's label, the count
    ``O`` of its ``k`` batch neighbours carrying it is referred to the
    beta-binomial a trusted region with that share predicts (``c + smoothing *
    prior``, ``k_t - c + smoothing * (1 - prior)``), which allows for the trusted
    share being itself an estimate. A row whose label is no more common among
    its batch neighbours than among its trusted ones scores 0: scoring agreement
    itself made scores depend on the batch's size (a large clean batch of
    well-separated classes had every row past every calibration score). Score: ``-log P(X >= O)`` in nats. A row
    scores high when its label is in excess around it, so the honest rows of
    that label in a poisoned region score alike with the poison: the detector
    finds the region, the row-level label detectors rank within it.

    Parameters
    ----------
    n_neighbors : int
        Batch neighbours compared (>= 2).
    max_batch : int
        Most batch rows searched as neighbours (a stratified sample past it, >= 2).
    max_reference : int
        Most trusted rows searched (>= 2).
    smoothing : float
        Pseudo-rows spread over labels by their trusted frequency (> 0).
    random_state : int
    """

    name: ClassVar[str] = "label_excess"

    def __init__(
        self,
        *,
        n_neighbors: int = 10,
        max_batch: int = SAMPLE_ROWS,
        max_reference: int = SAMPLE_ROWS,
        smoothing: float = 1.0,
        random_state: int = 0,
    ):
        super().__init__(
            n_neighbors=n_neighbors,
            max_batch=max_batch,
            max_reference=max_reference,
            random_state=random_state,
        )
        self.smoothing = smoothing

    def _validate_params(self) -> None:
        super()._validate_params()
        self._check_real("smoothing", 0.0, low_open=True)

    def _fit(self, reference: Table) -> Self:
        super()._fit(reference)
        y = labels_of(reference, self.name, "reference")
        self.prior_ = class_prior(y, reference.n_classes)
        return self

    def _counts(
        self,
        batch: Table,
        summary: LabelSample,
        positions: np.ndarray,
        rows: np.ndarray | None = None,
    ) -> tuple[np.ndarray, ...]:
        """Per row of ``rows`` (default all): its label, whether the trusted rows know it,
        its batch neighbours, those with its label, its trusted neighbours, those with it.
        The neighbour searches are of the whole table (memoised), whatever ``rows`` is."""
        y = labels_of(batch, self.name, "batch")
        rows = np.arange(batch.n_rows) if rows is None else rows
        seen = (y >= 0) & (y < self.n_classes_)
        if summary.n_rows < 2:
            zero = np.zeros(len(rows), np.int64)
            return y[rows], seen[rows], zero, zero, zero, zero
        b_y, near, trusted = self._both(batch, y, positions, summary)
        near_index, trusted_index = near.index[rows], trusted.index[rows]
        ok_b = near_index >= 0
        lab_b = np.where(ok_b, b_y[np.maximum(near_index, 0)], -1)
        lab_t = np.where(trusted_index >= 0, self.r_y_[np.maximum(trusted_index, 0)], -1)
        own = y[rows, None]
        return (
            y[rows],
            seen[rows],
            ok_b.sum(axis=1),
            (lab_b == own).sum(axis=1),
            (trusted_index >= 0).sum(axis=1),
            (lab_t == own).sum(axis=1),
        )

    def _score_with(self, batch: Table, summary: LabelSample, positions: np.ndarray) -> np.ndarray:
        y, seen, k_b, o_b, k_t, o_t = self._counts(batch, summary, positions)
        prior = self.prior_[np.where(seen, y, 0)]
        s = float(self.smoothing)
        a = o_t + s * prior
        b = (k_t - o_t) + s * (1.0 - prior)
        score = -_beta_binomial_log_tail(o_b, k_b, a, b)
        # A label no more common among the batch neighbours than among the trusted ones is
        # no excess. Without this, agreement itself scored: k_t grows as the batch sample
        # shrinks, so a small calibration fold's all-agreeing rows scored lower than a
        # large batch's, and every row of a large clean batch of well-separated classes
        # fell past every calibration score.
        excess = o_b * np.maximum(k_t, 1) > o_t * k_b
        return np.where(seen & (k_b > 0) & excess, np.clip(score, 0.0, UNSEEN_SCORE - 1.0), 0.0)

    def _explain_with(
        self, batch: Table, rows: np.ndarray, summary: LabelSample, positions: np.ndarray
    ) -> list[str]:
        y, _, k_b, o_b, k_t, o_t = (
            v.tolist() for v in self._counts(batch, summary, positions, rows)
        )
        names = {c: batch.label_of(c) for c in set(y)}
        return [
            f"label {names[c]} on {ob} of its {kb} nearest rows of this batch, "
            f"against {ot} of its {kt} nearest trusted rows"
            for c, kb, ob, kt, ot in zip(y, k_b, o_b, k_t, o_t, strict=True)
        ]


class CrowdingDetector(_Regional):
    """Rows the batch crowds together far more densely than the trusted rows lie there.

    A flood of near-copies (each jittered below the duplicate detector's grid),
    a cluster of rows injected inside the expectations, rows synthesised around
    one point: each makes a small region of the feature space much denser in
    the batch than among trusted rows, while no single row need be an outlier.
    For each batch row, take the distance to its ``n_neighbors``-th nearest row
    of the batch's sample (itself left out) and count the trusted sample's rows
    within it. Where batch and trusted rows are drawn alike, the pooled samples'
    rows nearest a point are batch rows with chance ``p = n_b / (n_b + n_t)``
    (the two samples' sizes), so the ``c`` trusted rows met before the ``k``-th
    batch row are negative binomial: score ``-log P(C <= c)``, that is ``-log
    P(Binomial(k + c, p) >= k)``, in nats; at most ``k log(1 / p)`` (no trusted
    row at all within the reach of ``k`` batch rows). The statistic depends on
    the samples' sizes only, not on the batch's. Ties count for the trusted
    rows, and ``c`` counts at most the trusted rows listed (as many as the
    reach's share of the trusted sample), so honest repeats that the trusted
    rows also show score below one nat. Searches are ``label_excess``'s with
    the same settings, so the detector costs no search of its own.

    Parameters
    ----------
    n_neighbors : int
        Batch neighbours whose reach is compared (>= 2).
    max_batch : int
        Most batch rows searched as neighbours (a stratified sample past it, >= 2).
    max_reference : int
        Most trusted rows searched (>= 2).
    random_state : int
    """

    name: ClassVar[str] = "crowding"
    # Its evidence marks a region (honest rows beside a flood score with it), as a flood's
    # does: half a share, so it dilutes the row-level detectors less (docs/decision.md).
    weight: ClassVar[float] = 0.5

    def _crowd(
        self, batch: Table, summary: LabelSample, positions: np.ndarray, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
        """Per row of ``rows``: batch neighbours counted, the squared reach of the last,
        the trusted rows within it; and the two samples' sizes."""
        y = labels_of(batch, self.name, "batch")
        if summary.n_rows < 2:
            zero = np.zeros(len(rows), np.int64)
            return zero, np.zeros(len(rows)), zero, 1.0, float(len(self.r_y_))
        b_y, near, trusted = self._both(batch, y, positions, summary)
        ok = near.index[rows] >= 0
        k_b = ok.sum(axis=1)
        reach = near.dist[rows, -1]
        # A row with fewer neighbours than asked reaches its last one.
        short = k_b < near.index.shape[1]
        if short.any():
            reach = reach.copy()
            last = np.maximum(k_b[short] - 1, 0)
            reach[short] = near.dist[rows[short], last]
        within = ((trusted.dist[rows] <= reach[:, None]) & (trusted.index[rows] >= 0)).sum(axis=1)
        return k_b, reach, within, float(max(len(b_y) - 1, 1)), float(len(self.r_y_))

    def _score_with(self, batch: Table, summary: LabelSample, positions: np.ndarray) -> np.ndarray:
        k_b, _, within, n_b, n_t = self._crowd(batch, summary, positions, np.arange(batch.n_rows))
        if k_b.size == 0:
            return np.zeros(0)
        # k and c are small counts (the two neighbour lists' lengths): every tail once, in a
        # table, then one lookup per row.
        k, c = np.ogrid[: int(k_b.max()) + 1, : int(within.max()) + 1]
        table = binomial_surprise(k, k + c, n_b / (n_b + n_t))
        return table[k_b, within]

    def _explain_with(
        self, batch: Table, rows: np.ndarray, summary: LabelSample, positions: np.ndarray
    ) -> list[str]:
        k_b, reach, within, n_b, n_t = self._crowd(batch, summary, positions, rows)
        out = []
        for kb, r, c in zip(k_b.tolist(), np.sqrt(reach).tolist(), within.tolist(), strict=True):
            expected = kb * n_t / n_b
            out.append(
                f"{kb} rows of this batch lie within {r:.3g} of it, but only {c} of "
                f"{int(n_t)} sampled trusted rows do (about {expected:.0f} expected)"
            )
        return out
