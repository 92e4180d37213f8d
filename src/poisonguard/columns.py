"""What each column of a table is: the one place column kinds and the task are decided.

Kinds
-----
``numeric``
    Numbers (ints and floats): compared on their scale.
``boolean``
    True/False: two categories.
``categorical``
    Strings (or pandas ``category``) with few distinct values, each seen often:
    at most ``max_categories`` values (``dataset.max_categories``, default
    ``MAX_CATEGORIES``), on average at least ``MIN_ROWS_PER_CATEGORY`` rows each.
    Compared by equality.
``date``
    Dates and times: compared as numbers (days since 1970), so a date far
    outside the trusted span is an outlier like any far number.
``text``
    Other strings (ids, names, free text): not a distance, but part of a row's
    content (duplicates, hashes) and of the expectations (lengths).
``ignore``
    Left out of the detectors altogether (only by configuration).

The kinds are inferred from the trusted rows; ``[dataset.columns]`` in the
config overrides any of them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

KINDS = ("numeric", "boolean", "categorical", "date", "text", "ignore")
#: A string column is categorical with at most this many distinct values (the default
#: of ``dataset.max_categories``) ...
MAX_CATEGORIES = 50
#: ... each seen, on average, on at least this many trusted rows. Names, ids and
#: free text have about one row per value and stay text.
MIN_ROWS_PER_CATEGORY = 5
#: A whole-number label with more distinct values than this is a regression target.
MAX_CLASSES = 20
TASKS = ("classification", "regression")


def looks_categorical(series: pd.Series, *, max_categories: int = MAX_CATEGORIES) -> bool:
    """True for a string (or ``category``) column with few, often repeated values:
    at most ``max_categories`` distinct ones, each on ``MIN_ROWS_PER_CATEGORY`` rows on average."""
    values = series.dropna()
    n_distinct = int(values.nunique())
    return 0 < n_distinct <= max_categories and len(values) >= MIN_ROWS_PER_CATEGORY * n_distinct


def kind_of(series: pd.Series, *, max_categories: int = MAX_CATEGORIES) -> str:
    """The kind a trusted column's values suggest (never ``ignore``)."""
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "date"
    if pd.api.types.is_numeric_dtype(dtype):
        return "numeric"
    if isinstance(dtype, pd.CategoricalDtype):
        few = looks_categorical(series.astype(object), max_categories=max_categories)
        return "categorical" if few else "text"
    values = series.dropna()
    if len(values) and all(isinstance(v, bool | np.bool_) for v in values.head(1000)):
        return "boolean"
    return "categorical" if looks_categorical(series, max_categories=max_categories) else "text"


def infer_kinds(
    frame: pd.DataFrame,
    columns: list[str],
    overrides: Mapping[str, str] | None = None,
    *,
    max_categories: int = MAX_CATEGORIES,
) -> dict[str, str]:
    """Each column's kind: the override where one is given, else what its values suggest."""
    overrides = overrides or {}
    return {
        c: overrides.get(c) or kind_of(frame[c], max_categories=max_categories) for c in columns
    }


def infer_task(series: pd.Series) -> str:
    """``"regression"`` for a numeric label with non-whole values or many distinct ones."""
    values = series.dropna()
    if pd.api.types.is_bool_dtype(values.dtype) or not pd.api.types.is_numeric_dtype(values.dtype):
        return "classification"
    x = values.to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        whole = bool(np.all(np.isfinite(x) & (x == np.round(x))))
    if not whole or np.unique(x).size > MAX_CLASSES:
        return "regression"
    return "classification"
