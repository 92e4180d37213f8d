"""The reference sample: a mergeable, class-stratified bottom-k sample of trusted rows.

The detectors are fitted on at most ``detection.max_reference_rows`` trusted rows.
Which rows is decided here, once, for the store (which keeps each reference
version's sample as a file of its own) and for ``Guard`` users without a store.

Every row gets a priority: a keyed hash (SipHash under a secret key) of its
identity, the batch and position it arrived with (``pg_batch``, ``pg_row``),
or its position in a bare frame. Ranked by priority the rows are in a random
order no one without the key can predict or steer, so keeping the lowest
``k`` is a uniform sample without replacement, and it merges: the bottom-k of
``A`` and ``B`` together is the bottom-k of (the bottom-k of ``A``) and ``B``.
A promotion therefore reads only the previous sample and the files it adds.

With a class label the sample is stratified: every class keeps its lowest
``floor`` rows (or all of them, when it has fewer; ``class_floor``), so that a rare
class is not sampled away; the remaining places go to the lowest-priority rows of the rest.
That merges too, because a row outside its class's lowest ``floor`` in ``A``
stays outside it in ``A`` and ``B``, and the floor rows only grow in number.
It needs classes times ``floor`` to fit in ``limit``; when more classes come,
the floor rows themselves are cut to the ``limit`` lowest, and the store draws
such a sample from scratch instead of merging (``merges``).

A regression target is not stratified: quantile bins would move their edges
as rows arrive (so they would not merge), and a uniform sample already follows
the target's distribution.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from poisonguard.columns import infer_task
from poisonguard.config import DetectionSettings

if TYPE_CHECKING:
    from poisonguard.config import Config

#: Rows each class keeps at least (all of its rows when it has fewer), at most...
CLASS_FLOOR = 50
#: ... and at most one in this many of the limit (``class_floor``).
FLOOR_SHARE = 400


def class_floor(limit: int) -> int:
    """The class floor of a sample of ``limit`` rows: ``CLASS_FLOOR``, or one row in
    ``FLOOR_SHARE`` of the limit when that is fewer (at least 1).

    A floor lifts a rare class above its share of the reference, and the calibration rows
    are drawn from the sample: the further the sample's class mix is from the batches',
    the less a clean batch row is like a calibration row. Bounding the floor by the limit
    bounds that shift: no class gains more than 0.25% of the sample.
    """
    return max(1, min(CLASS_FLOOR, limit // FLOOR_SHARE))


@dataclass(frozen=True)
class SampleRule:
    """How a reference sample is drawn.

    Attributes
    ----------
    limit : int
        At most this many rows (``detection.max_reference_rows``).
    label : str or None
        The label column; None for no label.
    task : {"classification", "regression"} or None
        The label's task; None until a sample is drawn (``resolved``), for a
        label whose task is inferred from its values. Only a classification
        label is stratified.
    floor : int
        Rows each class keeps at least.
    key_id : str
        Which key drew the sample (``key_id``; not the key): a sample merges only with
        rows ranked under the same key. Empty for a rule not yet drawn.
    """

    limit: int
    label: str | None = None
    task: str | None = None
    floor: int = CLASS_FLOOR
    key_id: str = ""

    @property
    def strata(self) -> str | None:
        """The column the sample is stratified by: a classification label, or None."""
        return self.label if self.task == "classification" else None

    def resolved(self, frame: pd.DataFrame) -> SampleRule:
        """This rule with its task settled: inferred from ``frame``'s labels when not set (as
        the guard infers it); None when there is no label or ``frame`` lacks it."""
        if self.label is None or self.label not in frame.columns:
            return replace(self, task=None)
        if self.task is not None:
            return self
        return replace(self, task=infer_task(frame[self.label]))

    def draws(self, drawn: SampleRule) -> bool:
        """Whether a sample drawn under the resolved rule ``drawn`` is what this rule draws
        (a task left to inference takes the one ``drawn`` settled on; any key draws a
        uniform sample)."""
        same = (drawn.limit, drawn.label, drawn.floor) == (self.limit, self.label, self.floor)
        return same and (self.task is None or self.task == drawn.task)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SampleRule:
        return cls(**json.loads(text))


def rule_for(config: Config | None) -> SampleRule:
    """The rule a dataset's config sets: its label, task and ``detection.max_reference_rows``
    (None: the default limit and no label)."""
    limit = (config.detection if config is not None else DetectionSettings()).max_reference_rows
    if config is None:
        return sample_rule(limit)
    return sample_rule(limit, config.label, config.task)


def sample_rule(limit: int, label: str | None = None, task: str | None = None) -> SampleRule:
    """The rule of a sample of at most ``limit`` rows, stratified by a classification
    ``label``, with its floor (``class_floor``): the store's and ``Guard``'s."""
    return SampleRule(limit, label, task, class_floor(limit))


def sample_key(secret: bytes) -> str:
    """The 16-character SipHash key for row priorities, derived from a secret (a store's
    audit key, or a seed's bytes) so that the key itself is never the secret."""
    digest = hmac.new(secret, b"poisonguard reference sample", hashlib.sha256).digest()
    return base64.b64encode(digest).decode()[:16]


def key_id(key: str) -> str:
    """A short public name of a priority key, to tell samples drawn under different keys
    apart (a store copied with a new audit key): 48 bits of its SHA-256, which reveal
    nothing useful about a 96-bit key."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def seed_key(random_state: int) -> str:
    """The priority key of a guard without a store: its ``random_state``'s."""
    return sample_key(str(int(random_state)).encode())


def row_priorities(frame: pd.DataFrame, key: str) -> np.ndarray:
    """Each row's priority: SipHash under ``key`` of its identity.

    A row's identity is its ``pg_batch`` and ``pg_row`` (where it arrived, unique in
    a store's training set) when the frame has both, else its position.

    Returns
    -------
    ndarray of shape (n_rows,), dtype uint64
    """
    if {"pg_batch", "pg_row"} <= set(frame.columns):
        ids = frame["pg_batch"].astype(str) + "\x1f" + frame["pg_row"].astype("int64").astype(str)
        names = ids.to_numpy(dtype=object)
    else:
        names = np.arange(len(frame)).astype(str).astype(object)
    return np.asarray(pd.util.hash_array(names, hash_key=key, categorize=False), dtype=np.uint64)


def bottom_k(
    priority: np.ndarray, limit: int, classes: np.ndarray | None = None, floor: int = CLASS_FLOOR
) -> np.ndarray:
    """The positions the sample keeps: each class's lowest ``floor``, then the lowest of the rest.

    Parameters
    ----------
    priority : ndarray of shape (n_rows,)
        Row priorities (``row_priorities``); ties go to the earlier row.
    limit : int
        At most this many positions.
    classes : ndarray of shape (n_rows,), optional
        Each row's class (missing values are a class of their own); None for no strata.
    floor : int
        Rows each class keeps at least, while classes times ``floor`` fit in ``limit``.

    Returns
    -------
    ndarray of shape (min(n_rows, limit),), dtype int64
        Positions, ascending.
    """
    order = np.argsort(priority, kind="stable")
    if classes is None or floor <= 0:
        return np.sort(order[:limit]).astype(np.int64)
    codes, _ = pd.factorize(
        pd.Series(np.asarray(classes, dtype=object)[order]), use_na_sentinel=False
    )
    rank = pd.Series(codes).groupby(codes).cumcount().to_numpy()
    floored = rank < floor
    first = order[floored][:limit]
    rest = order[~floored][: limit - first.size]
    return np.sort(np.concatenate([first, rest])).astype(np.int64)


def draw_sample(frame: pd.DataFrame, rule: SampleRule, key: str) -> pd.DataFrame:
    """The rows of ``frame`` a resolved ``rule`` keeps, in their order, with a fresh index.

    Drawn from scratch over a reference's rows, or over a previous sample's rows followed
    by the rows added since: the result is the same (see the module notes).
    """
    classes = None
    if rule.strata is not None and rule.strata in frame.columns:
        classes = frame[rule.strata].to_numpy(dtype=object)
    keep = bottom_k(row_priorities(frame, key), rule.limit, classes, rule.floor)
    return frame.iloc[keep].reset_index(drop=True)


def merges(frame: pd.DataFrame, rule: SampleRule) -> bool:
    """Whether a sample drawn under ``rule`` over ``frame`` (a previous sample and the rows
    added since) equals the sample of every row: always, unless the classes' floors no
    longer fit in the limit."""
    if rule.strata is None or rule.strata not in frame.columns:
        return True
    n_classes = frame[rule.strata].nunique(dropna=False)
    return bool(n_classes * rule.floor <= rule.limit)
