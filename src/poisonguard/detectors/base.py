"""The detector contract and the numeric table every detector sees.

A detector is fitted on trusted rows and scores new ones::

    det = REGISTRY["knn_label"]().fit(reference)   # reference: Table
    s = det.score(batch)                           # ndarray of shape (batch.n_rows,)
    det.explain(batch, rows)                       # one reason string per row in ``rows``

Higher scores are more suspicious. Scores need not be on any common scale: the
decision step turns each detector's scores into conformal p-values against
trusted calibration rows scored the same way. ``score`` must therefore treat
its ``batch`` argument as a whole batch and must be deterministic for a fitted
detector. Detectors that look at the other rows of the same batch follow
``WithinBatchDetector``: they summarise the batch in mergeable pieces first, so
that a batch read in chunks scores as it does whole.

Detectors with ``needs_label = True`` use ``Table.y``; they are skipped when a
scan has no label column.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Literal, Protocol, Self, runtime_checkable

import numpy as np
import pandas as pd

from poisonguard.columns import MAX_CATEGORIES, infer_kinds, infer_task
from poisonguard.detectors._kernels import _finite_within, _standardize
from poisonguard.errors import BatchError, ConfigError, param_error

#: Label code given to a label value the trusted reference never contained.
UNSEEN_LABEL = -1
# Features are float32 on the scaled axis; this bound keeps squared
# distances finite in float32 (32 features * (1e15)^2 < 3.4e38).
_FEATURE_BOUND = 1.0e15
#: What ``Encoder.transform`` does with a number or date cell that does not parse.
Errors = Literal["raise", "coerce"]


def fingerprint(*arrays: np.ndarray | None) -> str:
    """A digest of the shapes, dtypes and bytes of the arrays (None allowed)."""
    h = hashlib.sha1(usedforsecurity=False)
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.data)
    return h.hexdigest()


@dataclass(frozen=True)
class Term:
    """What one column of ``Table.X`` stands for, in the user's terms.

    Attributes
    ----------
    column : str
        The input column it comes from (empty for ``novel``).
    kind : {"number", "date", "category", "missing", "novel"}
        ``number``/``date``: the column's value, scaled; ``category``: 1 when the
        column holds ``value`` (one-hot); ``missing``: 1 when the cell is missing;
        ``novel``: how many cells of the row hold what no trusted row does (a
        category never seen, a missing cell where trusted rows have none).
    value : object
        The category of a ``category`` term (None stands for a missing cell).
    """

    column: str
    kind: str
    value: Any = None

    @property
    def name(self) -> str:
        if self.kind == "category":
            return f"{self.column}={'<missing>' if self.value is None else self.value}"
        if self.kind == "missing":
            return f"{self.column} (missing)"
        if self.kind == "novel":
            return "(values never seen)"
        return self.column

    def describe(self, raw: float) -> str:
        """The row's value of this term as a person reads it: ``plan = 'basic'``, ``age = 41``."""
        if self.kind == "category":
            shown = "missing" if self.value is None else repr(self.value)
            if self.value is None:
                return f"{self.column} is missing" if raw > 0 else f"{self.column} is present"
            return f"{self.column} = {shown}" if raw > 0 else f"{self.column} is not {shown}"
        if self.kind == "missing":
            return f"{self.column} is missing" if raw > 0 else f"{self.column} is present"
        if self.kind == "novel":
            n = round(raw)
            return f"{n} value{'s' * (n != 1)} no trusted row shows"
        if self.kind == "date" and np.isfinite(raw):
            return f"{self.column} = {pd.Timestamp(raw, unit='D').date().isoformat()}"
        return f"{self.column} = {fmt_number(raw)}"


def fmt_number(value: float, digits: int = 4) -> str:
    """A number as reasons and reports show it: ``missing`` for NaN, whole numbers whole,
    thousands grouped (``912,000``), otherwise ``digits`` significant digits."""
    value = float(value)
    if not np.isfinite(value):
        return "missing" if np.isnan(value) else str(value)
    if abs(value) >= 1e15:
        return f"{value:.{digits}g}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return str(int(value)) if value.is_integer() else f"{value:.{digits}g}"


@dataclass(frozen=True, eq=False)
class Table:
    """Rows as detectors see them.

    Attributes
    ----------
    X : ndarray of shape (n_rows, n_features), float32
        One column per ``Term``: numbers and dates standardised with the
        reference's mean and standard deviation (missing values at the mean, 0),
        then a missing-indicator column for each number the trusted rows are
        sometimes missing, a one-hot column per category, and a count of the
        row's never-seen values. Indicators, one-hot and counts take the values
        0 and 1 (counts step by 1), so a category mismatch, or a missing cell
        where the other row has one, costs a squared distance of 2: what two
        random values of a standardised number differ by on average. Neither
        kind drowns the other.
    raw : ndarray of shape (n_rows, n_features), float64
        The same columns as they arrived, for reasons people read: numbers as
        numbers (NaN kept), dates as days since 1970, indicators and counts as
        they are in ``X``.
    y : ndarray of shape (n_rows,), int64, or None
        Label codes into ``classes``; ``UNSEEN_LABEL`` for a value the
        reference never had. None when the scan has no label.
    features : tuple of str
        A name per column of ``X`` (``Term.name``).
    classes : tuple
        Label values of the reference, indexed by code.
    terms : tuple of Term
        What each column of ``X`` stands for (empty: every column is a number
        named in ``features``).
    codes : ndarray of shape (n_rows, n_categorical), int64
        Each categorical (and boolean) column's value as an index into
        ``categories``; -1 for a value the trusted rows never show.
    categories : tuple of (str, tuple)
        Per categorical column, its name and the trusted values (None for missing).
    target : ndarray of shape (n_rows,), float64, or None
        A regression label's values (NaN where missing); None for classes or no label.
    label : str or None
        The label column's name, for reasons.
    """

    X: np.ndarray
    raw: np.ndarray
    y: np.ndarray | None
    features: tuple[str, ...]
    classes: tuple[Any, ...] = field(default=())
    terms: tuple[Term, ...] = field(default=())
    codes: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))
    categories: tuple[tuple[str, tuple[Any, ...]], ...] = field(default=())
    target: np.ndarray | None = None
    label: str | None = None

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def label_of(self, code: int) -> Any:
        """The label value behind a code, for reasons."""
        return "<unseen>" if code == UNSEEN_LABEL else self.classes[code]

    def describe(self, row: int, f: int) -> str:
        """Column ``f`` of one row as a person reads it (``plan = 'basic'``, ``x = 3.5``)."""
        raw = float(self.raw[row, f])
        if self.terms:
            return self.terms[f].describe(raw)
        return f"{self.features[f]} = {fmt_number(raw)}"

    @cached_property
    def x32(self) -> np.ndarray:
        """``X`` as C-contiguous float32 with every value finite and bounded (made once).

        Returns
        -------
        ndarray of shape (n_rows, n_features), float32
        """
        X = np.ascontiguousarray(self.X, dtype=np.float32)
        if X.size and not _finite_within(X, _FEATURE_BOUND):
            X = np.nan_to_num(X, nan=0.0, posinf=_FEATURE_BOUND, neginf=-_FEATURE_BOUND)
            X = np.clip(X, -_FEATURE_BOUND, _FEATURE_BOUND).astype(np.float32)
        return X

    @cached_property
    def key(self) -> str:
        """``fingerprint(x32)``, hashed once: the neighbour search memoises on it."""
        return fingerprint(self.x32)

    def take(self, rows: np.ndarray) -> Table:
        """The sub-table of the given row positions (used for cross-fitting)."""
        y = None if self.y is None else self.y[rows]
        return Table(
            self.X[rows],
            self.raw[rows],
            y,
            self.features,
            self.classes,
            self.terms,
            self.codes[rows] if self.codes.shape[0] else self.codes,
            self.categories,
            None if self.target is None else self.target[rows],
            self.label,
        )

    def stack(self, other: Table) -> Table:
        """This table's rows followed by ``other``'s (encoded by the same ``Encoder``).

        A windowed detector scores a batch stacked on its source's recent rows
        (``Guard.score``); the batch's rows keep their positions.
        """
        if other.features != self.features or other.classes != self.classes:
            raise ValueError("Table.stack() needs tables encoded by the same Encoder")

        def both(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
            return None if a is None or b is None else np.concatenate([a, b])

        return Table(
            np.concatenate([self.X, other.X]),
            np.concatenate([self.raw, other.raw]),
            both(self.y, other.y),
            self.features,
            self.classes,
            self.terms,
            np.concatenate([self.codes, other.codes]) if self.codes.shape[0] else self.codes,
            self.categories,
            both(self.target, other.target),
            self.label,
        )


#: A one-hot, indicator or count column's step: a mismatch costs 1 + 1 = 2 in squared
#: distance (one-hot) or sqrt(2)^2 = 2 (indicator, count), the mean squared difference
#: of two independent values of a standardised number.
_STEP = np.sqrt(2.0)


@dataclass(frozen=True, eq=False)
class Encoder:
    """Turns frames into ``Table``s, with everything learnt from the trusted reference.

    Attributes
    ----------
    features : tuple of str
        The input columns used, in order.
    kinds : dict of str to str
        Each input column's kind (see ``poisonguard.columns``).
    label : str or None
    center_, scale_ : ndarray of shape (n_numbers,)
        Mean and standard deviation of each number and date column.
    numbers_ : tuple of str
        The number and date columns, in ``X`` order.
    indicated_ : tuple of str
        Number columns the trusted rows are sometimes missing (an indicator each).
    categories_ : tuple of (str, tuple)
        Categorical and boolean columns and their trusted values.
    texts_ : tuple of str
        Text columns (ids, names, free text): not compared; the expectations
        and the rows' content hashes (``pg_row_hash``) cover them.
    classes_ : tuple
        The class labels (classification).
    task : {"classification", "regression"} or None
        None without a label.
    """

    features: tuple[str, ...]
    kinds: Mapping[str, str]
    label: str | None
    center_: np.ndarray
    scale_: np.ndarray
    numbers_: tuple[str, ...]
    indicated_: tuple[str, ...]
    categories_: tuple[tuple[str, tuple[Any, ...]], ...]
    texts_: tuple[str, ...]
    classes_: tuple[Any, ...]
    task: str | None = None

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        features: list[str],
        label: str | None,
        kinds: Mapping[str, str] | None = None,
        task: str | None = None,
        *,
        max_categories: int = MAX_CATEGORIES,
    ) -> Encoder:
        """Learn the columns' kinds, scales and categories from trusted rows.

        ``kinds`` overrides the inferred kind of any column, ``task`` the task the
        label suggests, ``max_categories`` how many distinct values a string
        column may hold and be categorical (default ``MAX_CATEGORIES``; see
        ``poisonguard.columns``).
        """
        missing = [c for c in features if c not in frame.columns]
        if missing:
            raise BatchError(
                "reference", f"missing feature column {missing[0]!r}", column=missing[0]
            )
        kind = infer_kinds(frame, list(features), kinds, max_categories=max_categories)
        used = tuple(c for c in features if kind[c] != "ignore")
        numbers = tuple(c for c in used if kind[c] in ("numeric", "date"))
        raw = _numbers(frame, list(numbers), kind, "reference")
        with np.errstate(all="ignore"):
            center = np.nanmean(raw, axis=0) if len(raw) else np.zeros(raw.shape[1])
            scale = np.nanstd(raw, axis=0) if len(raw) else np.ones(raw.shape[1])
        center = np.where(np.isfinite(center), center, 0.0)
        # Constant features carry no distance: scale 1 keeps them at 0.
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        indicated = tuple(c for j, c in enumerate(numbers) if np.isnan(raw[:, j]).any())
        categories = tuple(
            (c, _category_values(frame[c])) for c in used if kind[c] in ("categorical", "boolean")
        )
        texts = tuple(c for c in used if kind[c] == "text")
        classes: tuple[Any, ...] = ()
        if label is not None:
            task = task or infer_task(frame[label])
            if task == "classification":
                check_class_label(frame[label], label=label, source="reference")
                values = frame[label].dropna().unique().tolist()
                classes = tuple(sorted(values, key=lambda v: (str(type(v)), v)))
        else:
            task = None
        return cls(
            used,
            dict(kind),
            label,
            center,
            scale,
            numbers,
            indicated,
            categories,
            texts,
            classes,
            task,
        )

    @cached_property
    def terms(self) -> tuple[Term, ...]:
        """What each column of the tables this encoder makes stands for."""
        terms = [Term(c, "date" if self.kinds[c] == "date" else "number") for c in self.numbers_]
        terms += [Term(c, "missing") for c in self.indicated_]
        for column, values in self.categories_:
            terms += [Term(column, "category", v) for v in values]
        if len(self.numbers_) > len(self.indicated_) or self.categories_:
            terms.append(Term("", "novel"))
        return tuple(terms)

    def transform(
        self,
        frame: pd.DataFrame,
        source: str = "batch",
        errors: Errors = "raise",
        *,
        anchors: Mapping[str, Any] | None = None,
    ) -> Table:
        """Encode ``frame`` as the trusted rows were.

        Every row is encoded from its own cells and what the encoder learnt, so
        a batch encoded chunk by chunk gives the rows of the batch encoded whole,
        with one exception that ``anchors`` removes: pandas parses a column of
        date strings in the format it guesses from the column's first cell.

        Parameters
        ----------
        frame : DataFrame
            Rows with every feature column (and the label, when there is one).
        source : str
            The file (or other name) the rows come from, for messages.
        errors : {"raise", "coerce"}
            What a number or date cell that does not parse does: raise a
            ``BatchError`` naming the column, or count as missing (for rows that
            were never judged, such as rows an expectation held and a reviewer
            rejected).
        anchors : mapping of str to object, optional
            Per date column, the cell whose format the column is parsed in
            (``date_anchors``); default ``frame``'s own. A chunk of a batch
            passes the batch's, so that it parses its dates as the whole would.
        """
        if errors not in ("raise", "coerce"):
            raise param_error("errors", "Encoder.transform()", 'one of ("raise", "coerce")', errors)
        if anchors is None:
            anchors = self.date_anchors(frame)
        raw_numbers = _numbers(frame, list(self.numbers_), self.kinds, source, errors, anchors)
        n = len(frame)
        blocks = [_standardize(raw_numbers, self.center_, self.scale_, _FEATURE_BOUND)]
        raws = [raw_numbers]
        terms = self.terms
        codes = self._codes(frame, source)
        if len(terms) == len(self.numbers_):  # numbers only, each trusted-complete: done
            X, raw = blocks[0], raw_numbers
        else:
            missing = np.isnan(raw_numbers)
            indicated = [c in set(self.indicated_) for c in self.numbers_]
            flags = missing[:, np.flatnonzero(indicated)].astype(np.float64)
            raws.append(flags)
            blocks.append((flags * _STEP).astype(np.float32))
            # A missing number where trusted rows never miss one is a never-seen value.
            novel = missing[:, ~np.asarray(indicated, dtype=bool)].sum(axis=1).astype(np.float64)
            for (_, values), col_codes in zip(self.categories_, codes.T, strict=True):
                onehot = np.zeros((n, len(values)), dtype=np.float32)
                seen = col_codes >= 0
                onehot[np.flatnonzero(seen), col_codes[seen]] = 1.0
                novel += ~seen
                blocks.append(onehot)
                raws.append(onehot.astype(np.float64))
            raws.append(novel[:, None])
            blocks.append((novel * _STEP).astype(np.float32)[:, None])
            X = np.ascontiguousarray(np.hstack(blocks), dtype=np.float32)
            raw = np.hstack(raws)
        y = target = None
        if self.label is not None and self.label in frame.columns:
            if self.task == "regression":
                target = pd.to_numeric(frame[self.label], errors="coerce").to_numpy(
                    dtype=np.float64, na_value=np.nan
                )
            else:
                y = _label_codes(frame[self.label], self.classes_)
        return Table(
            X,
            raw,
            y,
            tuple(t.name for t in terms),
            self.classes_,
            terms,
            codes,
            self.categories_,
            target,
            self.label,
        )

    def date_anchors(
        self, frame: pd.DataFrame, known: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Per date column, the first cell of ``frame`` that pandas guesses a format from.

        ``pd.to_datetime`` parses a column of strings in the format it guesses
        from the column's first cell that is not missing (nor ``""``, a NaT
        spelling, ``"now"`` or ``"today"``, which it skips), so the same cell
        could parse differently in a chunk that starts elsewhere. A column
        parsed with its batch's anchor put in front parses as in the batch.

        Parameters
        ----------
        frame : DataFrame
            Rows, in batch order.
        known : mapping of str to object, optional
            Anchors of the batch's earlier rows; they are kept, and only columns
            without one are looked up in ``frame``.

        Returns
        -------
        dict of str to object
            ``known`` with the anchors ``frame`` adds. A column whose cells so
            far are all missing has none yet: its anchor does not change them.
        """
        out = dict(known or {})
        for column in self.numbers_:
            if self.kinds[column] != "date" or column in out or column not in frame.columns:
                continue
            cells = frame[column]
            present = np.flatnonzero(cells.notna().to_numpy())
            # Usually the first present cell; a run of skipped strings is read in blocks.
            for start in range(0, present.size, 64):
                block = cells.iloc[present[start : start + 64]].tolist()
                found = [v for v in block if not (isinstance(v, str) and v in _DATE_SKIPPED)]
                if found:
                    out[column] = found[0]
                    break
        return out

    def _codes(self, frame: pd.DataFrame, source: str) -> np.ndarray:
        """Categorical columns' codes into their trusted values; -1 for anything else."""
        out = np.empty((len(frame), len(self.categories_)), dtype=np.int64)
        for j, (column, values) in enumerate(self.categories_):
            if column not in frame.columns:
                raise BatchError(source, f"missing feature column {column!r}", column=column)
            out[:, j] = _value_codes(frame[column], values)
        return out


def _category_values(series: pd.Series) -> tuple[Any, ...]:
    """A categorical column's trusted values, sorted, with None last when some are missing."""
    values = [v.item() if isinstance(v, np.generic) else v for v in series.dropna().unique()]
    try:
        values = sorted(values)
    except TypeError:
        values = sorted(values, key=repr)
    return (*values, None) if series.isna().any() else tuple(values)


def _value_codes(series: pd.Series, values: tuple[Any, ...]) -> np.ndarray:
    """Codes of a column's cells into ``values`` (None matches a missing cell); -1 otherwise."""
    known = [v for v in values if v is not None]
    as_object = series.astype(object)
    try:
        codes = pd.Index(known, dtype=object).get_indexer(as_object)
    except (TypeError, ValueError):
        lookup = {v: i for i, v in enumerate(known)}
        codes = np.fromiter((lookup.get(v, -1) for v in as_object.tolist()), np.int64, len(series))
    codes = np.asarray(codes, dtype=np.int64)
    if values and values[-1] is None:
        codes[series.isna().to_numpy()] = len(values) - 1
    return codes


def check_class_label(values: pd.Series, *, label: str, source: str) -> None:
    """Refuse classes that are a regression target: floats not all whole numbers.

    Called where the task is classification (set, or inferred): a price or a
    temperature taken as classes would be hundreds of classes with a row or two
    each. Whole-number floats (1.0, 2.0: an int column read from a CSV with a
    missing cell) and strings, ints and bools are fine class labels.

    Parameters
    ----------
    values : Series
        The label column.
    label : str
        Its name, for the message.
    source : str
        The file (or other name) it comes from, for the message.

    Raises
    ------
    ConfigError
        One line naming ``source``, the label and how many distinct
        non-integer values it holds.
    """
    values = values.dropna()
    if pd.api.types.is_float_dtype(values.dtype):
        x = values.to_numpy(dtype=np.float64)
    elif pd.api.types.is_object_dtype(values.dtype) or isinstance(
        values.dtype, pd.CategoricalDtype
    ):
        floats = [v for v in values.tolist() if isinstance(v, float | np.floating)]
        x = np.asarray(floats, dtype=np.float64)
    else:
        return
    with np.errstate(invalid="ignore"):
        whole = np.isfinite(x) & (x == np.round(x))
    n = int(np.unique(x[~whole]).size)
    if n:
        raise ConfigError(
            f"{source}: label {label!r} holds {n} distinct non-integer value{'s' * (n != 1)}, "
            'so it is a regression target, not classes: set task = "regression" (or leave '
            "the task out to infer it)"
        )


def _label_codes(values: pd.Series, classes: tuple[Any, ...]) -> np.ndarray:
    """Codes of ``values`` into ``classes``; ``UNSEEN_LABEL`` for anything else (and missing)."""
    try:
        codes = pd.Index(list(classes), dtype=object).get_indexer(values.astype(object))
        if not (codes < 0).any():
            return codes.astype(np.int64)
    except (TypeError, ValueError):
        pass
    # Slow path, exact for mixed types and values that compare equal across types.
    lookup = {v: i for i, v in enumerate(classes)}
    return np.fromiter(
        (lookup.get(v, UNSEEN_LABEL) for v in values.tolist()), dtype=np.int64, count=len(values)
    )


#: Strings ``pd.to_datetime`` passes over when it guesses a column's format from its first cell.
_DATE_SKIPPED = ("", "NaT", "nat", "NAT", "nan", "NaN", "NAN", "now", "today")


def _dates(cells: pd.Series, errors: Errors, anchor: Any) -> pd.Series:
    """``cells`` as UTC timestamps, parsed in the format ``anchor`` sets when there is one."""
    if anchor is None or pd.api.types.is_datetime64_any_dtype(cells.dtype):
        return pd.to_datetime(cells, errors=errors, utc=True)
    cells = pd.concat([pd.Series([anchor], dtype=object), cells.astype(object)], ignore_index=True)
    return pd.to_datetime(cells, errors=errors, utc=True).iloc[1:]


def _numbers(
    frame: pd.DataFrame,
    columns: list[str],
    kinds: Mapping[str, str],
    source: str,
    errors: Errors = "raise",
    anchors: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Number and date columns as float64 (dates in days since 1970); NaN for missing
    (and, with ``errors="coerce"``, for cells that do not parse). A date column is
    parsed in the format of its anchor (``Encoder.date_anchors``), when it has one."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise BatchError(
            source, f"missing feature column {missing[0]!r} (expected numeric)", column=missing[0]
        )
    if all(pd.api.types.is_numeric_dtype(frame[c]) for c in columns) and not any(
        kinds.get(c) == "date" for c in columns
    ):
        return frame[columns].to_numpy(dtype=np.float64, na_value=np.nan)
    out = np.empty((len(frame), len(columns)), dtype=np.float64)
    for j, col in enumerate(columns):
        try:
            if kinds.get(col) == "date":
                when = _dates(frame[col], errors, (anchors or {}).get(col))
                days = (when - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(days=1)
                out[:, j] = days.to_numpy(dtype=np.float64, na_value=np.nan)
            else:
                out[:, j] = pd.to_numeric(frame[col], errors=errors).to_numpy(
                    dtype=np.float64, na_value=np.nan
                )
        except (TypeError, ValueError, OverflowError) as exc:
            expected = "dates" if kinds.get(col) == "date" else "numbers"
            raise BatchError(
                source,
                f"column {col!r} must hold {expected}, found {frame[col].dtype} ({exc})",
                column=col,
            ) from exc
    return out


@runtime_checkable
class Detector(Protocol):
    """Scores rows against a trusted reference; higher = more suspicious.

    ``__init__`` only stores keyword-only parameters. ``from_params`` builds a
    detector and checks its parameters without data (unknown names, then
    values), so a config is judged when it loads; ``fit`` checks them again
    (a detector built directly is checked too), then learns; learnt state ends
    in ``_``. Checks that need the data stay in ``fit``. ``score`` returns a float64 array of
    shape ``(batch.n_rows,)`` with no NaN. ``explain`` returns one short
    sentence per requested row saying what this detector saw, e.g.
    ``"label 3, but 9 of its 10 nearest trusted rows are 5"``.
    """

    name: ClassVar[str]
    needs_label: ClassVar[bool]
    tasks: ClassVar[tuple[str, ...]]
    #: Whether the detector reads the batch itself as context (copies, triggers, label
    #: agreement among batch rows), not only the trusted rows.
    within_batch: ClassVar[bool]
    #: Whether, given one, the detector scores a batch together with its source's recent
    #: rows (``Guard.score``'s ``window``): evidence split thinly over batches adds up.
    windowed: ClassVar[bool]

    @classmethod
    def applies_to(cls, reference: Table) -> bool: ...

    @classmethod
    def from_params(cls, params: Mapping[str, Any], *, key: str | None = None) -> Self: ...

    def fit(self, reference: Table) -> Self: ...

    def score(self, batch: Table) -> np.ndarray: ...

    def explain(self, batch: Table, rows: np.ndarray) -> list[str]: ...


@runtime_checkable
class WithinBatchDetector(Detector, Protocol):
    """A detector that reads the batch itself, in two phases, so that a batch scores
    the same whole or in chunks.

    Phase 1 summarises: ``summarize(chunk, positions=...)`` per chunk, then ``merge``
    of the parts, in any grouping and order; a detector whose ``summary_passes`` is 2
    reads the batch twice, the second time with the first pass's merged summary as
    ``prior`` (e.g. counting exactly the values a first pass found repeated). Phase 2
    scores each chunk against the merged summary: ``score(chunk, summary=...,
    positions=...)``, and ``explain`` likewise. A row's score depends only on its
    cells, its position in the batch and the summary, so a batch scored chunk by
    chunk gets the scores it gets whole. ``score(batch)`` without a summary is the
    same two phases with the batch as its only chunk: one code path.

    A summary is small beside the batch: counts per value, cell or row hash, and
    bounded samples of rows, never every row.

    ``positions`` are the rows' positions in the whole batch (ndarray of shape
    (n_rows,), int64; default ``0 .. n_rows - 1``): samples are drawn by a keyed hash
    of them, and a row is never its own neighbour. Rows of a source's window
    (``windowed`` detectors) follow the batch's, at positions ``n_rows ..``.
    """

    summary_passes: ClassVar[int]

    def summarize(
        self, batch: Table, *, positions: np.ndarray | None = None, prior: Any = None
    ) -> Any: ...

    def merge(self, parts: Sequence[Any]) -> Any: ...

    def score(
        self, batch: Table, *, summary: Any = None, positions: np.ndarray | None = None
    ) -> np.ndarray: ...

    def explain(
        self,
        batch: Table,
        rows: np.ndarray,
        *,
        summary: Any = None,
        positions: np.ndarray | None = None,
    ) -> list[str]: ...


class SummaryFold:
    """Merges a within-batch detector's chunk summaries as they arrive.

    Parts are merged like the digits of a binary counter (two of equal rank into
    one of the next), so a batch of ``c`` chunks costs ``log2(c)`` merges per
    row summarised, not ``c``, and at most about ``log2(c)`` parts wait at once.
    """

    def __init__(self, detector: WithinBatchDetector) -> None:
        self.detector = detector
        self._stack: list[tuple[int, Any]] = []

    def add(self, part: Any) -> None:
        """Fold in one chunk's summary."""
        rank = 0
        while self._stack and self._stack[-1][0] == rank:
            _, top = self._stack.pop()
            part = self.detector.merge([top, part])
            rank += 1
        self._stack.append((rank, part))

    def result(self) -> Any:
        """The summary of every part added (at least one)."""
        if not self._stack:
            raise ValueError("SummaryFold.result() needs at least one part")
        return self.detector.merge([part for _, part in self._stack])


def summarize_chunks(
    detector: WithinBatchDetector, chunks: Iterable[tuple[Table, np.ndarray]], prior: Any = None
) -> Any:
    """One pass of ``detector``'s summary over ``(table, positions)`` chunks, merged."""
    fold = SummaryFold(detector)
    for table, positions in chunks:
        fold.add(detector.summarize(table, positions=positions, prior=prior))
    return fold.result()
