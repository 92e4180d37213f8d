"""Score a batch against a trusted reference and decide which rows to quarantine.

``Guard`` is the fitted engine the flow uses batch after batch; ``scan()`` is the
one-call Python API::

    result = poisonguard.scan(batch, label="target", reference=trusted)
    batch[~result.quarantined]          # the rows that may join the training set
    result.reasons[result.quarantined]  # why the others are held

``Guard.judge_chunks`` judges a batch read a chunk at a time, in memory set by the
chunk, with the decision ``Guard.judge`` reaches on it whole (docs/decision.md, 4b).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self, cast

import numpy as np
import pandas as pd

from poisonguard.columns import KINDS, MAX_CATEGORIES, TASKS
from poisonguard.config import RESERVED_PREFIX, Config, DetectionSettings, load_config
from poisonguard.decision import (
    P_FLOOR,
    Calibration,
    ChunkedDecision,
    Decision,
    Explainer,
    anchored_log_p,
    combined_log_p,
    cut,
    decide,
    held_reasons,
    shares,
    within_log_p,
)
from poisonguard.detectors import REGISTRY, Detector, Encoder, Table
from poisonguard.detectors._common import TIE_JITTER
from poisonguard.detectors.base import SummaryFold, WithinBatchDetector
from poisonguard.detectors.labels import ModelLabelDetector
from poisonguard.errors import BatchError, ConfigError, param_error
from poisonguard.sampling import draw_sample, sample_rule, seed_key
from poisonguard.sources import FLOW_ROW_ODDS, MAX_FLOW_CLASSES, THRESHOLDS, LabelFlows, RowTally
from poisonguard.store.scratch import RowFile

#: With no trusted reference, the batch calibrates itself and is assumed to hold
#: at most this share of poison (its top scores are left out of the calibration).
SELF_REFERENCE_CONTAMINATION = 0.1

MIN_REFERENCE_ROWS = 30


def default_detectors(
    labelled: bool = True, task: str | None = "classification"
) -> tuple[str, ...]:
    """The registry's default suite, for a scan with or without a label, for its task."""
    from poisonguard import detectors

    if not labelled:
        return tuple(detectors.DEFAULT_LABEL_FREE_DETECTORS)
    if task == "regression":
        return tuple(detectors.DEFAULT_REGRESSION_DETECTORS)
    return tuple(detectors.DEFAULT_DETECTORS)


def detector_weights(names: tuple[str, ...] | list[str]) -> dict[str, float]:
    """Each detector's share of the combination, as its class declares it."""
    return {name: float(getattr(REGISTRY[name], "weight", 1.0)) for name in names}


def calibrate(name: str, scores: np.ndarray) -> Calibration:
    """Fit a detector's calibration with the tail model it declares (see ``Calibration.fit``)."""
    cls = REGISTRY[name]
    return Calibration.fit(
        scores,
        min_scale=getattr(cls, "tail_scale", None),
        shape=getattr(cls, "tail_shape", None),
        confidence=getattr(cls, "tail_confidence", None),
    )


def _clean_rates(fold_scores: Mapping[str, list[np.ndarray]], names: tuple[str, ...]) -> np.ndarray:
    """ndarray of shape (len(THRESHOLDS),): how often clean rows reach each of
    ``sources.THRESHOLDS``, from the trusted rows whose combined p-value over
    ``names`` (the anchored detectors, which the source test counts row by row),
    calibrated without their own fold, is at or below it, counted as a conformal
    p-value counts: ``(1 + k) / (1 + n)``. Below ``1 / n`` a p-value is the tail
    model's, not the data's; this is what the data can vouch for."""
    if not names:  # no row is counted: the thresholds themselves
        return np.asarray(THRESHOLDS, dtype=np.float64)
    n_folds = len(next(iter(fold_scores.values())))
    if n_folds < 2:
        return np.ones(len(THRESHOLDS))
    weights = detector_weights(names)
    below = np.zeros(len(THRESHOLDS))
    total = 0
    for f in range(n_folds):
        rest = {
            n: np.concatenate([s for g, s in enumerate(fold_scores[n]) if g != f]) for n in names
        }
        without = {n: calibrate(n, rest[n]) for n in names}
        held = {n: fold_scores[n][f] for n in names}
        log_p = combined_log_p(held, without, weights)[2]
        below += [np.count_nonzero(log_p <= np.log(a)) for a in THRESHOLDS]
        total += log_p.size
    return (below + 1.0) / (total + 1.0)


def infer_features(
    frame: pd.DataFrame, label: str | None, id_column: str | None = None
) -> list[str]:
    """Every column but the label, the id and poisonguard's own: numbers, booleans,
    categories, dates and text alike (``poisonguard.columns`` decides what each is)."""
    skip = {label, id_column}
    return [c for c in frame.columns if c not in skip and not str(c).startswith(RESERVED_PREFIX)]


def _check_kinds(columns: Mapping[str, str] | None, features: list[str], owner: str) -> None:
    """Kind overrides must name feature columns and known kinds.

    Unchecked, a misspelt kind would drop its column from every detector and an
    override of the label or of a column not scored would be ignored, both
    without a word.
    """
    for column, kind in (columns or {}).items():
        if kind not in KINDS:
            rule = f"a mapping of feature columns to kinds from {list(KINDS)}"
            raise param_error("columns", owner, rule, {column: kind})
        if column not in features:
            shown = ", ".join(map(str, features[:8])) + (", ..." if len(features) > 8 else "")
            raise param_error("columns", owner, f"keyed by feature columns ({shown})", column)


@dataclass(frozen=True)
class ScanResult:
    """What a scan found, aligned to the scanned frame's index.

    Attributes
    ----------
    quarantined : Series of bool
    scores : DataFrame
        One column per detector (its raw score) plus ``suspicion`` (-log10 of
        the combined p-value; higher is more suspicious).
    reasons : Series of str
        Empty for rows not quarantined.
    p_values : DataFrame
        One column per detector, plus ``combined``.
    threshold : float
        The largest combined p-value quarantined.
    """

    quarantined: pd.Series
    scores: pd.DataFrame
    reasons: pd.Series
    p_values: pd.DataFrame
    threshold: float

    @property
    def n_quarantined(self) -> int:
        return int(self.quarantined.sum())


#: The detector whose model of labels given features the label flows are tested against.
FLOW_MODEL = "model_label"


def _follows_flows(names: tuple[str, ...], table: Table) -> bool:
    """Whether a guard of these detectors on this encoded reference follows label flows."""
    return FLOW_MODEL in names and table.y is not None and 2 <= table.n_classes <= MAX_FLOW_CLASSES


class Guard:
    """Detectors fitted on trusted rows, calibrated, ready to scan batches.

    Parameters
    ----------
    label : str or None
        The label column; None runs only the label-free detectors.
    features : list of str, optional
        Feature columns; default every column but label and id.
    id_column : str, optional
    settings : DetectionSettings, optional
    columns : mapping of str to str, optional
        Column kinds that override the inferred ones (``poisonguard.columns``).
    task : {"classification", "regression"}, optional
        What the label is; inferred from its values when None.
    max_categories : int, default MAX_CATEGORIES
        A string column with at most this many distinct values (each on a few
        trusted rows) is categorical, with more it is text (``poisonguard.columns``).
    """

    def __init__(
        self,
        *,
        label: str | None,
        features: list[str] | tuple[str, ...] | None = None,
        id_column: str | None = None,
        settings: DetectionSettings | None = None,
        columns: Mapping[str, str] | None = None,
        task: str | None = None,
        max_categories: int = MAX_CATEGORIES,
    ) -> None:
        self.label = label
        self.features = features
        self.id_column = id_column
        self.settings = settings
        self.columns = columns
        self.task = task
        self.max_categories = max_categories

    # ------------------------------------------------------------------ fit
    def fit(self, reference: pd.DataFrame) -> Self:
        """Fit every detector on the trusted rows and calibrate its scores on held-out ones."""
        settings = (self.settings or DetectionSettings()).validated("Guard")
        if self.label is not None and self.label not in reference.columns:
            raise ConfigError(
                f"The label column {self.label!r} is not in the reference. "
                f"Columns: {list(reference.columns)}"
            )
        if self.task is not None and self.task not in TASKS:
            raise param_error("task", "Guard", f"one of {TASKS} or None", self.task)
        limit = self.max_categories
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise param_error("max_categories", "Guard", "an int >= 1", limit)
        if len(reference) < MIN_REFERENCE_ROWS:
            raise ConfigError(
                f"The reference has {len(reference)} rows; poisonguard needs at least "
                f"{MIN_REFERENCE_ROWS} trusted rows to calibrate."
            )
        features = list(self.features or infer_features(reference, self.label, self.id_column))
        if not features:
            raise ConfigError("No feature columns to score in the reference.")
        _check_kinds(self.columns, features, "Guard")
        rng = np.random.default_rng(settings.random_state)
        if len(reference) > settings.max_reference_rows:
            # The store's rule (``poisonguard.sampling``), keyed by the seed: a store's
            # sample is within the limit already and is kept whole.
            rule = sample_rule(settings.max_reference_rows, self.label, self.task)
            reference = draw_sample(
                reference, rule.resolved(reference), seed_key(settings.random_state)
            )
        if self.label is not None:
            reference = reference[reference[self.label].notna()]

        self.settings_ = settings
        self.features_ = tuple(features)
        self.encoder_ = Encoder.fit(
            reference,
            features,
            self.label,
            self.columns,
            self.task,
            max_categories=self.max_categories,
        )
        table = self.encoder_.transform(reference, source="reference")
        if table.X.shape[1] == 0:
            raise ConfigError(
                "No feature column to compare rows by: every feature is text or ignored "
                f"({', '.join(map(str, features[:8]))})"
            )
        self.detector_names_ = self._active(settings, table)
        self.detectors_, self.calibrations_ = self._calibrate(table, settings, rng)
        self.reference_ = table
        return self

    def _active(self, settings: DetectionSettings, table: Table) -> tuple[str, ...]:
        """The detectors that run: the configured (or default) ones that fit the label's task
        and have something to look at in ``table`` (the encoded reference)."""
        task = self.encoder_.task
        names = (
            settings.detectors
            if settings.detectors is not None
            else default_detectors(labelled=self.label is not None, task=task)
        )
        for name in names:
            if name not in REGISTRY:
                raise param_error("detectors", "Guard", f"names from {sorted(REGISTRY)}", name)
        active = tuple(
            n
            for n in names
            if not REGISTRY[n].needs_label or (task is not None and task in REGISTRY[n].tasks)
        )
        if not active:
            what = "without a label column" if task is None else f"on a {task} label"
            raise ConfigError(f"None of the detectors {list(names)} can run {what}.")
        active = tuple(n for n in active if REGISTRY[n].applies_to(table))
        if not active:
            raise ConfigError(f"None of the detectors {list(names)} has anything to compare here.")
        return active

    def _make(self, name: str, settings: DetectionSettings) -> Detector:
        return REGISTRY[name].from_params(settings.params.get(name, {}))

    def _calibrate(
        self, table: Table, settings: DetectionSettings, rng: np.random.Generator
    ) -> tuple[dict[str, Detector], dict[str, Calibration]]:
        """The detectors that score batches, and their calibration on held-out trusted rows.

        A reference of at least ``folds`` times ``calibration_rows`` rows is split:
        the detectors are fitted once on the rows not held out, and those same
        detectors score the held-out rows and every batch (split conformal, exactly
        exchangeable, one fit). A smaller one is cross-fitted: each fold of the
        held-out rows is scored by detectors fitted on all the other rows, and the
        batch by detectors fitted on every row, so no trusted row is lost to a
        small set.
        """
        n = table.n_rows
        order = rng.permutation(n)
        cal = order[: min(n, settings.calibration_rows)]
        folds = np.array_split(cal, min(settings.folds, cal.size))
        names = self.detector_names_

        def fit_all(rows: Table) -> dict[str, Detector]:
            return {name: self._make(name, settings).fit(rows) for name in names}

        if n >= settings.folds * cal.size:
            self.calibration_ = "split"
            fitted = fit_all(table.take(np.sort(order[cal.size :])))
            scorers = [fitted] * len(folds)
        else:
            self.calibration_ = "cross-fitted"
            scorers = [
                fit_all(table.take(np.setdiff1d(np.arange(n), fold, assume_unique=True)))
                for fold in folds
            ]
            fitted = fit_all(table)
        # Fold by fold, so detectors sharing a neighbour search share it here too;
        # within-batch detectors see each fold as a batch of its own size.
        cal_scores: dict[str, list[np.ndarray]] = {name: [] for name in names}
        follow = _follows_flows(names, table)
        cal_log_q: list[np.ndarray] = []
        for scorer, fold in zip(scorers, folds, strict=True):
            held = table.take(fold)
            for name in names:
                cal_scores[name].append(scorer[name].score(held))
            if follow:
                cal_log_q.append(cast(ModelLabelDetector, scorer[FLOW_MODEL]).log_proba(held))
        # The label flows each batch of a source adds to its evidence (``sources``),
        # tested against what the trusted rows showed when scored out of fold.
        self.label_flows_ = (
            LabelFlows.fit(
                np.concatenate(cal_log_q),
                cast(np.ndarray, table.y)[np.concatenate(folds)],
                [str(table.label_of(c)) for c in range(table.n_classes)],
            )
            if follow
            else None
        )
        held_scores = {name: np.concatenate(s) for name, s in cal_scores.items()}
        calibrations = {name: calibrate(name, s) for name, s in held_scores.items()}
        # The detectors that judge a row against the trusted set alone: the source
        # test counts their evidence row by row (``sources.RowTally``).
        self.anchored_ = tuple(n for n in names if not REGISTRY[n].within_batch)
        self.clean_rates_ = _clean_rates(cal_scores, self.anchored_)
        # The calibration rows' own combined p-values over them: how clean rows
        # combine, at any batch size.
        anchored = {n: held_scores[n] for n in self.anchored_}
        self.null_ = (
            np.sort(combined_log_p(anchored, calibrations, detector_weights(self.anchored_))[2])
            if anchored
            else np.empty(0)
        )
        return fitted, calibrations

    # ----------------------------------------------------------------- scan
    def flow_log_e(self, table: Table) -> np.ndarray | None:
        """The label flows of these encoded rows (``LabelFlows.log_evalues``: a sum over
        rows, so a batch's is the sum of its chunks'), or None where the guard does not
        follow them."""
        flows = self.label_flows_
        if flows is None:
            return None
        if table.n_rows == 0:
            return flows.log_evalues(np.zeros((0, len(flows.classes))), np.zeros(0, np.int64))
        model = cast(ModelLabelDetector, self.detectors_[FLOW_MODEL])
        return flows.log_evalues(model.log_proba(table), np.asarray(table.y, dtype=np.int64))

    def flow_rows(
        self, window: pd.DataFrame, flow: tuple[str, str], source: str = "batch"
    ) -> np.ndarray:
        """Rows of ``window`` (a source's earlier rows) that follow the label flow ``flow`` =
        (from, to): labelled ``to`` where the trusted rows' model gives ``from`` at least
        ``FLOW_ROW_ODDS`` times the odds of ``to``. Positions in ``window``, ascending;
        empty where the guard follows no flows or reads no window."""
        flows = self.label_flows_
        earlier = self._earlier(window, source)
        if flows is None or earlier is None or not set(flow) <= set(flows.classes):
            return np.zeros(0, dtype=np.int64)
        a, c = (flows.classes.index(name) for name in flow)
        log_q = cast(ModelLabelDetector, self.detectors_[FLOW_MODEL]).log_proba(earlier)
        follows = (np.asarray(earlier.y) == c) & (
            log_q[:, a] - log_q[:, c] >= np.log(FLOW_ROW_ODDS)
        )
        return np.flatnonzero(follows)

    @property
    def windowed_(self) -> tuple[str, ...]:
        """The active detectors that score a batch together with a window of its source's rows."""
        return tuple(n for n in self.detectors_ if REGISTRY[n].windowed)

    def _encode(
        self, frame: pd.DataFrame, source: str, anchors: Mapping[str, Any] | None = None
    ) -> Table:
        """Rows of a batch encoded (their date columns parsed as ``anchors`` set)."""
        table = self.encoder_.transform(frame, source=source, anchors=anchors)
        if self.label is not None and table.y is None and table.target is None:
            raise ConfigError(f"{source}: the label column {self.label!r} is missing")
        return table

    def _earlier(self, window: pd.DataFrame | None, source: str) -> Table | None:
        """The window's rows encoded, when there are some and a detector reads them."""
        if window is None or window.empty or not self.windowed_:
            return None
        # Rows judged in earlier batches: a cell that no longer parses counts as missing
        # rather than stopping this batch.
        columns = [*self.encoder_.features, *([self.label] if self.label is not None else [])]
        rows = window.reindex(columns=columns)
        return self.encoder_.transform(rows, source=f"{source} (window)", errors="coerce")

    def _summaries(
        self,
        summarize: Summarize,
        earlier: Table | None,
        names: tuple[str, ...] | None = None,
    ) -> dict[str, Any]:
        """Phase 1 of the within-batch detectors (``WithinBatchDetector``): their summaries
        of the batch, passes over its parts as many as the detectors need (``summarize``,
        as ``BatchParts.summarize``), merged in batch order, with the window's rows after
        the batch's for the windowed ones."""
        within = {
            name: cast(WithinBatchDetector, det)
            for name, det in self.detectors_.items()
            if det.within_batch and (names is None or name in names)
        }
        done: dict[str, Any] = {}
        passes = max((det.summary_passes for det in within.values()), default=0)
        for step in range(passes):
            now = {name: det for name, det in within.items() if det.summary_passes > step}
            folds = {name: SummaryFold(det) for name, det in now.items()}
            n = 0
            for part, rows in summarize(tuple(now), done):
                for name in now:
                    folds[name].add(part[name])
                n += rows
            if n == 0:  # a batch of no rows: the summary of an empty table
                empty = self.reference_.take(np.zeros(0, dtype=np.int64))
                for name, det in now.items():
                    folds[name].add(det.summarize(empty, prior=done.get(name)))
            if earlier is not None:
                at = np.arange(n, n + earlier.n_rows)
                for name, det in now.items():
                    if det.windowed:
                        folds[name].add(det.summarize(earlier, positions=at, prior=done.get(name)))
            done.update({name: fold.result() for name, fold in folds.items()})
        return done

    def _summarize_part(
        self,
        table: Table,
        positions: np.ndarray,
        names: tuple[str, ...],
        done: Mapping[str, Any],
    ) -> dict[str, Any]:
        """Phase 1 on one part of a batch: the summaries of the within-batch detectors
        ``names`` of its rows (at ``positions`` in the batch), on the pass after ``done``."""
        out = {}
        for name in names:
            det = cast(WithinBatchDetector, self.detectors_[name])
            out[name] = det.summarize(table, positions=positions, prior=done.get(name))
        return out

    def _whole(self, table: Table) -> Summarize:
        """``summarize`` for a batch that is one part: ``table``."""
        whole = np.arange(table.n_rows)
        return lambda names, done: [(self._summarize_part(table, whole, names, done), table.n_rows)]

    def _scores(
        self, table: Table, positions: np.ndarray, summaries: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        """Phase 2: every active detector's raw scores of some rows of a batch."""
        out = {}
        for name, det in self.detectors_.items():
            if det.within_batch:
                batch_reader = cast(WithinBatchDetector, det)
                s = batch_reader.score(table, summary=summaries[name], positions=positions)
            else:
                s = det.score(table)
            out[name] = s
        return out

    def _explainer(
        self,
        table: Table,
        positions: np.ndarray,
        summaries: Mapping[str, Any],
        n_earlier: int,
    ) -> Explainer:
        """``explain(detector, rows)`` for rows of ``table`` (at ``positions`` in the batch),
        whose source sent ``n_earlier`` rows before (the window the windowed ones counted)."""

        def explain(name: str, rows: np.ndarray) -> list[str]:
            det = self.detectors_[name]
            if not det.within_batch:
                return det.explain(table, rows)
            batch_reader = cast(WithinBatchDetector, det)
            said = batch_reader.explain(table, rows, summary=summaries[name], positions=positions)
            if not det.windowed or n_earlier == 0:
                return said
            return [
                f"{s} (counted over this batch and the {n_earlier:,} rows its source sent before)"
                for s in said
            ]

        return explain

    def score(
        self, frame: pd.DataFrame, source: str = "batch", window: pd.DataFrame | None = None
    ) -> tuple[Table, dict[str, np.ndarray]]:
        """Every active detector's raw scores on a batch.

        ``window``: rows the batch's source sent before (its columns), newest first.
        Detectors that declare ``windowed`` (the backdoor scan) then count the
        window's rows with the batch's, so a trigger split thinly over batches adds
        up; the scores returned are the batch's rows' only. The calibration is
        unchanged: the backdoor score is corrected for the cells it examines, so
        that clean rows score 0 at any batch size (docs/decision.md, section 1).
        """
        table = self._encode(frame, source)
        summaries = self._summaries(self._whole(table), self._earlier(window, source))
        return table, self._scores(table, np.arange(table.n_rows), summaries)

    def _decide_options(self) -> dict[str, Any]:
        settings = self.settings_
        return {
            "fdr": settings.fdr,
            "excess_level": settings.excess_level,
            "row_level": settings.row_level,
            "null": self.null_,
        }

    def judge(
        self, frame: pd.DataFrame, source: str = "batch", window: pd.DataFrame | None = None
    ) -> tuple[Table, dict[str, np.ndarray], Decision]:
        """Score a batch and decide over its rows: the table, raw scores and decision.

        ``window`` as in ``score``: context for the windowed detectors, never decided on.
        The batch is judged as its one chunk: ``judge_chunks`` gives the same decision.
        """
        table = self._encode(frame, source)
        earlier = self._earlier(window, source)
        whole = np.arange(table.n_rows)
        summaries = self._summaries(self._whole(table), earlier)
        scores = self._scores(table, whole, summaries)
        n_earlier = 0 if earlier is None else earlier.n_rows
        decision = decide(
            scores,
            self.calibrations_,
            explain=self._explainer(table, whole, summaries, n_earlier),
            weights=detector_weights(tuple(scores)),
            anchored=self.anchored_,
            **self._decide_options(),
        )
        return table, scores, decision

    def judge_chunks(
        self,
        chunks: Callable[[], Iterable[pd.DataFrame]],
        source: str = "batch",
        window: pd.DataFrame | None = None,
        *,
        directory: str | Path | None = None,
        each: Callable[[Table, Mapping[str, np.ndarray]], None] | None = None,
    ) -> ChunkedDecision:
        """Judge a batch read in chunks, in memory set by the chunk, not the batch.

        The decision is ``judge``'s on the whole batch (docs/decision.md, section 4b):
        the same rows held, with the same combined p-values and reasons.

        The chunks are read four times at most: the within-batch detectors'
        summaries (``WithinBatchDetector``: copies counted per row hash, samples of
        the batch's rows; the backdoor scan reads twice), then every row's scores,
        of which only its combined p-value and the one over the anchored detectors
        are kept, then the cut over all rows (Benjamini-Hochberg, the per-row level,
        the excess rule: ``decision.cut``, as ``judge`` does), then, for the chunks
        holding held rows, those rows' scores again and their reasons.

        Parameters
        ----------
        chunks : callable
            Called with no argument, returns an iterable of DataFrames: the batch's
            rows in order, split anyhow (empty chunks allowed), the same every call
            (e.g. a function reading a Parquet file's row groups).
        source : str
            The batch's name, for messages and reasons.
        window : DataFrame, optional
            As in ``judge``: rows the source sent before, for the windowed detectors.
        directory : str or Path, optional
            Where to keep the per-row arrays (two float64 per row) as memory-mapped
            files rather than in memory. The files are unlinked as soon as they
            are mapped: nothing is left there, whatever happens.
        each : callable, optional
            Called with every chunk's encoded rows and their raw scores (detector name
            to array) once, in order (on the scoring read), for what the caller counts
            over the batch (``DriftCounts``, ``EvidenceCounts``).

        Returns
        -------
        ChunkedDecision
        """
        return self.judge_parts(_Chunks(self, chunks, source, each), source, window, directory)

    def judge_parts(
        self,
        parts: BatchParts,
        source: str = "batch",
        window: pd.DataFrame | None = None,
        directory: str | Path | None = None,
    ) -> ChunkedDecision:
        """``judge_chunks`` over a batch's parts, each phase mapped over them by ``parts``
        (in this process, or on a cluster: ``poisonguard.cluster``): the summaries merged
        here, every row's combined p-values kept here (in ``directory`` as there), the cut
        made here over all of them, then the held rows' reasons from the parts holding them."""
        earlier = self._earlier(window, source)
        summaries = self._summaries(parts.summarize, earlier)
        names = tuple(self.detectors_)
        anchored = self.settings_.excess_level > 0.0 and bool(self.anchored_)
        log_combined = RowFile(directory)
        log_anchored = RowFile(directory if anchored else None)
        tally = RowTally()
        for combined, over_anchored, part_tally in parts.log_p(summaries, anchored):
            log_combined.append(combined)
            tally += part_tally
            if over_anchored is not None:
                log_anchored.append(over_anchored)
        by_row = log_combined.finish()
        anchored_rows = log_anchored.finish() if anchored else None
        held = cut(
            by_row,
            shares(names, detector_weights(names)),
            log_anchored=anchored_rows,
            **self._decide_options(),
        )
        del anchored_rows, log_anchored
        rows = np.flatnonzero(held.quarantined)

        reasons: list[str] = []
        held_scores: dict[str, list[np.ndarray]] = {name: [] for name in names}
        held_logp: list[np.ndarray] = []
        n_earlier = 0 if earlier is None else earlier.n_rows
        for part in parts.held(rows, summaries, n_earlier, held.p_cuts):
            reasons += part.reasons
            held_logp.append(part.log_p)
            for name in names:
                held_scores[name].append(part.scores[name])
        logp_rows = np.concatenate(held_logp) if held_logp else np.zeros((0, len(names)))
        return ChunkedDecision(
            window_flagged=self._window_flags(earlier, by_row.size, summaries),
            log_combined=by_row,
            held=rows,
            reasons=tuple(reasons),
            scores={
                name: np.concatenate(s) if s else np.zeros(0) for name, s in held_scores.items()
            },
            p_values=np.maximum(np.exp(logp_rows), P_FLOOR),
            detectors=names,
            threshold=held.threshold,
            p_cuts=held.p_cuts,
            tally=tally,
        )

    def _log_p_of(
        self, scores: Mapping[str, np.ndarray], anchored: bool
    ) -> tuple[np.ndarray, np.ndarray | None, RowTally]:
        """Phase 2 on one part of a batch, from its raw scores (``_scores``): its rows'
        combined natural-log p-values, (``anchored``) the same over the anchored
        detectors, for the excess rule, and what they give the source test."""
        names = tuple(self.detectors_)
        logp, w, combined = combined_log_p(scores, self.calibrations_, detector_weights(names))
        over_anchored = anchored_log_p(logp, w, names, self.anchored_)
        tally = RowTally.of(over_anchored, within_log_p(logp, w, names, self.anchored_))
        return combined, over_anchored if anchored else None, tally

    def _held_part(
        self,
        table: Table,
        positions: np.ndarray,
        summaries: Mapping[str, Any],
        n_earlier: int,
        p_cuts: tuple[float, ...],
    ) -> HeldRows:
        """Phase 3 on held rows of one part (``table``, at ``positions`` in the batch):
        their scores, per-detector log p-values and reasons."""
        names = tuple(self.detectors_)
        scores = self._scores(table, positions, summaries)
        logp = combined_log_p(scores, self.calibrations_, detector_weights(names))[0]
        explain = self._explainer(table, positions, summaries, n_earlier)
        return HeldRows(held_reasons(logp, names, p_cuts, explain), logp, scores)

    def window_suspects(
        self, frame: pd.DataFrame, window: pd.DataFrame, source: str = "batch"
    ) -> np.ndarray:
        """Rows of ``window`` that, scored with the batch ``frame``, a windowed detector flags.

        A window row is flagged when a windowed detector's p-value, at its share of the
        combination, would bring the row to the per-row level (``row_level``; with the
        level off, the first Benjamini-Hochberg step over batch and window) and its score
        shows evidence at all: the batch's own rows are held by the same rule. They are
        not decided on here (they were judged with their own batch); the caller reports
        them.

        Returns
        -------
        ndarray of int64
            Positions in ``window``, ascending.
        """
        earlier = self._earlier(window, source)
        if earlier is None:
            return np.zeros(0, dtype=np.int64)
        table = self._encode(frame, source)
        summaries = self._summaries(self._whole(table), earlier, self.windowed_)
        return self._window_flags(earlier, table.n_rows, summaries)

    def _window_flags(
        self, earlier: Table | None, n: int, summaries: Mapping[str, Any]
    ) -> np.ndarray:
        """``window_suspects`` from the summaries of a batch of ``n`` rows and its window."""
        if earlier is None or not self.windowed_:
            return np.zeros(0, dtype=np.int64)
        weights = detector_weights(tuple(self.detectors_))
        total = sum(weights.values())
        settings = self.settings_
        flagged = np.zeros(earlier.n_rows, dtype=bool)
        at = np.arange(n, n + earlier.n_rows)
        for name in self.windowed_:
            det = cast(WithinBatchDetector, self.detectors_[name])
            s = det.score(earlier, summary=summaries[name], positions=at)
            level = settings.row_level or settings.fdr / (n + earlier.n_rows)
            cut_at = weights[name] / total * level
            flagged |= (self.calibrations_[name].p_values(s) <= cut_at) & (s > TIE_JITTER)
        return np.flatnonzero(flagged)

    def scan(self, frame: pd.DataFrame, source: str = "batch") -> ScanResult:
        """Score and decide: which rows of ``frame`` to quarantine, and why."""
        _, scores, decision = self.judge(frame, source)
        return _result(frame.index, scores, decision)


#: ``summarize(names, done)``: per part of a batch, in order, the summaries of the
#: within-batch detectors ``names`` on the pass after ``done``, and the part's row count.
Summarize = Callable[[tuple[str, ...], Mapping[str, Any]], Iterable[tuple[dict[str, Any], int]]]


@dataclass(frozen=True)
class HeldRows:
    """What judging keeps of some held rows of a batch part: one reason each, their
    per-detector log p-values (n_rows, n_detectors) and raw scores."""

    reasons: list[str]
    log_p: np.ndarray
    scores: dict[str, np.ndarray]


class BatchParts(Protocol):
    """A batch in parts, and each phase of judging it mapped over them, in batch order
    (``Guard.judge_parts``): by this process (``judge_chunks``) or by a cluster's workers
    (``poisonguard.cluster``). Each phase runs ``Guard``'s own step on every part."""

    def summarize(
        self, names: tuple[str, ...], done: Mapping[str, Any]
    ) -> Iterable[tuple[dict[str, Any], int]]:
        """Per part: ``Guard._summarize_part`` of it, and its row count."""
        ...

    def log_p(
        self, summaries: Mapping[str, Any], anchored: bool
    ) -> Iterable[tuple[np.ndarray, np.ndarray | None, RowTally]]:
        """Per part: ``Guard._log_p_of`` its ``Guard._scores``."""
        ...

    def held(
        self,
        rows: np.ndarray,
        summaries: Mapping[str, Any],
        n_earlier: int,
        p_cuts: tuple[float, ...],
    ) -> Iterable[HeldRows]:
        """Per part holding some of ``rows`` (batch positions, ascending): ``Guard._held_part``
        of those rows."""
        ...


class _Chunks:
    """A batch's chunks, read as often as judging needs, encoded alike on every read
    (``BatchParts`` in this process).

    The date columns of every chunk are parsed in the format of the batch's first
    date cell (``Encoder.date_anchors``), found on the first read: a column's cells
    before that one are all missing, and parse alike in any format.
    """

    def __init__(
        self,
        guard: Guard,
        chunks: Callable[[], Iterable[pd.DataFrame]],
        source: str,
        each: Callable[[Table, Mapping[str, np.ndarray]], None] | None = None,
    ) -> None:
        if not callable(chunks):
            raise param_error(
                "chunks", "Guard.judge_chunks()", "a callable returning DataFrames", chunks
            )
        self.guard = guard
        self.chunks = chunks
        self.source = source
        self.each = each
        self.anchors: dict[str, Any] = {}
        self.n_rows: int | None = None

    def frames(self) -> Iterator[tuple[pd.DataFrame, int]]:
        """Every chunk and the position of its first row, in batch order."""
        start = 0
        for frame in self.chunks():
            if not isinstance(frame, pd.DataFrame):
                rule = "a callable returning DataFrames"
                raise param_error("chunks", "Guard.judge_chunks()", rule, type(frame).__name__)
            if self.n_rows is None:
                self.anchors = self.guard.encoder_.date_anchors(frame, self.anchors)
            yield frame, start
            start += len(frame)
        if self.n_rows is None:
            self.n_rows = start
        elif start != self.n_rows:
            raise BatchError(
                self.source,
                f"the batch's chunks changed while it was judged: {self.n_rows:,} rows, "
                f"then {start:,}",
            )

    def encode(self, frame: pd.DataFrame) -> Table:
        """Rows of the batch, encoded."""
        return self.guard._encode(frame, self.source, self.anchors)

    def tables(self) -> Iterator[tuple[Table, np.ndarray]]:
        """Every chunk encoded, with its rows' positions in the batch."""
        for frame, start in self.frames():
            yield self.encode(frame), np.arange(start, start + len(frame))

    def summarize(
        self, names: tuple[str, ...], done: Mapping[str, Any]
    ) -> Iterator[tuple[dict[str, Any], int]]:
        for table, positions in self.tables():
            yield self.guard._summarize_part(table, positions, names, done), table.n_rows

    def log_p(
        self, summaries: Mapping[str, Any], anchored: bool
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None, RowTally]]:
        for table, positions in self.tables():
            scores = self.guard._scores(table, positions, summaries)
            if self.each is not None:
                self.each(table, scores)
            yield self.guard._log_p_of(scores, anchored)

    def held(
        self,
        rows: np.ndarray,
        summaries: Mapping[str, Any],
        n_earlier: int,
        p_cuts: tuple[float, ...],
    ) -> Iterator[HeldRows]:
        for frame, start in self.frames():
            mine = rows[(rows >= start) & (rows < start + len(frame))]
            if mine.size:
                table = self.encode(frame.iloc[mine - start])
                yield self.guard._held_part(table, mine, summaries, n_earlier, p_cuts)


def _result(index: pd.Index, scores: Mapping[str, np.ndarray], decision: Decision) -> ScanResult:
    score_frame = pd.DataFrame(
        {name: np.asarray(s, dtype=np.float64) for name, s in scores.items()}, index=index
    )
    score_frame["suspicion"] = decision.suspicion
    p_frame = pd.DataFrame(decision.p_values, index=index, columns=list(decision.detectors))
    p_frame["combined"] = decision.combined
    return ScanResult(
        quarantined=pd.Series(decision.quarantined, index=index, name="quarantined"),
        scores=score_frame,
        reasons=pd.Series(list(decision.reasons), index=index, name="reason", dtype=object),
        p_values=p_frame,
        threshold=decision.threshold,
    )


def _self_scan(frame: pd.DataFrame, guard: Guard) -> ScanResult:
    """Scan a batch with no trusted reference: it is scored out-of-fold against itself.

    The batch's own out-of-fold scores, less their top ``SELF_REFERENCE_CONTAMINATION``
    share, calibrate the p-values; the rows above are judged by the fitted tail.
    These p-values are estimates, not conformal guarantees.
    """
    settings = (guard.settings or DetectionSettings()).validated("scan()")
    features = list(guard.features or infer_features(frame, guard.label, guard.id_column))
    if len(frame) < MIN_REFERENCE_ROWS:
        raise ConfigError(
            f"scan() with no reference needs at least {MIN_REFERENCE_ROWS} rows; got {len(frame)}"
        )
    encoder = Encoder.fit(
        frame,
        features,
        guard.label,
        guard.columns,
        guard.task,
        max_categories=guard.max_categories,
    )
    table = encoder.transform(frame)
    guard.features_ = tuple(features)
    guard.encoder_ = encoder
    names = guard._active(settings, table)
    rng = np.random.default_rng(settings.random_state)
    folds = np.array_split(rng.permutation(table.n_rows), settings.folds)
    scores = {name: np.empty(table.n_rows) for name in names}
    fitted: dict[str, list[tuple[np.ndarray, Detector]]] = {name: [] for name in names}
    for fold in folds:
        rest = np.setdiff1d(np.arange(table.n_rows), fold, assume_unique=True)
        for name in names:
            det = guard._make(name, settings).fit(table.take(rest))
            scores[name][fold] = det.score(table.take(fold))
            fitted[name].append((fold, det))
    calibrations = {}
    for name, s in scores.items():
        trimmed = np.sort(s)[
            : max(MIN_REFERENCE_ROWS, int(len(s) * (1 - SELF_REFERENCE_CONTAMINATION)))
        ]
        calibrations[name] = calibrate(name, trimmed)

    # Each row was scored by the detectors fitted without its fold, at its place in that fold.
    fold_of = np.empty(table.n_rows, dtype=np.int64)
    place_in_fold = np.empty(table.n_rows, dtype=np.int64)
    for f, fold in enumerate(folds):
        fold_of[fold] = f
        place_in_fold[fold] = np.arange(fold.size)

    def explain(name: str, rows: np.ndarray) -> list[str]:
        out: dict[int, str] = {}
        for f, (fold, det) in enumerate(fitted[name]):
            mine = rows[fold_of[rows] == f]
            if mine.size:
                said = det.explain(table.take(fold), place_in_fold[mine])
                out.update(zip(mine.tolist(), said, strict=True))
        return [out[int(r)] for r in rows]

    decision = decide(
        scores,
        calibrations,
        fdr=settings.fdr,
        explain=explain,
        weights=detector_weights(names),
        row_level=settings.row_level,
    )
    return _result(frame.index, scores, decision)


def scan(
    frame: pd.DataFrame,
    *,
    label: str | None,
    reference: pd.DataFrame | None = None,
    config: Config | DetectionSettings | str | Path | None = None,
    features: list[str] | None = None,
    task: str | None = None,
    columns: dict[str, str] | None = None,
) -> ScanResult:
    """Score every row of ``frame`` and quarantine the suspicious ones.

    Parameters
    ----------
    frame : DataFrame
        The batch to judge.
    label : str or None
        Its label column; None runs only the label-free detectors.
    reference : DataFrame, optional
        Trusted rows to anchor on. Without one, the batch is scored against
        itself out-of-fold, and p-values are estimates (see ``_self_scan``).
    config : Config, DetectionSettings or path, optional
        Detector choice and the decision's false-discovery rate.
    features : list of str, optional
        Feature columns; default every column but the label (and the config's id).
    task : {"classification", "regression"}, optional
        What the label is; default the config's, else inferred from its values
        (a numeric label with non-whole values or more than 20 distinct ones is
        a regression target).
    columns : dict of str to str, optional
        Column kinds that override the inferred ones (``poisonguard.columns.KINDS``);
        default the config's ``[dataset.columns]``. The others are inferred with
        the config's ``dataset.max_categories`` (default ``MAX_CATEGORIES``).

    Returns
    -------
    ScanResult
        ``.quarantined``, ``.scores`` and ``.reasons``, aligned to ``frame.index``.
    """
    if not isinstance(frame, pd.DataFrame):
        raise param_error("frame", "scan()", "a pandas DataFrame", type(frame).__name__)
    if label is not None and label not in frame.columns:
        raise param_error("label", "scan()", f"a column of frame {list(frame.columns)}", label)
    if task is not None and task not in TASKS:
        raise param_error("task", "scan()", f"one of {TASKS} or None", task)
    id_column = None
    max_categories = MAX_CATEGORIES
    if isinstance(config, (str, Path)):
        config = load_config(config)
    if isinstance(config, Config):
        id_column = config.id_column
        features = features or list(config.features) or None
        settings = config.detection
        task = task or config.task
        columns = columns if columns is not None else dict(config.columns)
        max_categories = config.max_categories
    else:
        settings = (config or DetectionSettings()).validated("scan()")
    guard = Guard(
        label=label,
        features=features,
        id_column=id_column,
        settings=settings,
        columns=columns,
        task=task,
        max_categories=max_categories,
    )
    scored = features or infer_features(frame if reference is None else reference, label, id_column)
    _check_kinds(columns, scored, "scan()")
    if reference is None:
        return _self_scan(frame, guard)
    return guard.fit(reference).scan(frame)
