"""A data subject to erase: which rows a ``poisonguard forget`` request names.

A subject is one or more conditions on columns, all of which a row must meet
(``and``). It comes from the command line in three forms, each parsed here and
never evaluated as code:

``--column C --value V``
    ``C == V``.
``--column C --values-file FILE``
    ``C in (...)`` with one value a line (blank lines skipped).
``--where "C == V and D in (a, b)"``
    The small grammar below.

Grammar of ``--where`` (keywords are case-insensitive)::

    filter     := condition ("and" condition)*
    condition  := column op value | column "in" "(" value ("," value)* ")"
    op         := "==" | "!=" | "<" | "<=" | ">" | ">="
    column     := a name of letters, digits, "_" and "." | `any name in backquotes`
    value      := 'text' | "text" (a doubled quote stands for itself) | a bare word

Values are text, compared as the column's type in each file (``Condition.mask``):
``"123"`` matches the integer 123, the float 123.0 and the text ``123``; a value
that cannot be read as the column's type matches no row (``!=``: every row).
A missing cell never matches.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from poisonguard.errors import ReviewError, shown

#: The comparison operators of a condition (``in`` is the list form of ``==``).
OPERATORS = ("==", "!=", "<", "<=", ">", ">=", "in")
#: Operators whose values are the subject's own values (checked byte for byte after erasure).
_EQUALITY = ("==", "in")
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


@dataclass(frozen=True)
class Condition:
    """One condition of a subject: ``column op value`` (``in``: any of ``values``)."""

    column: str
    op: str
    values: tuple[str, ...]

    def mask(self, frame: pd.DataFrame) -> np.ndarray:
        """Which rows of ``frame`` meet the condition (none when it lacks the column).

        Returns
        -------
        ndarray of shape (n_rows,), bool
        """
        if self.column not in frame.columns:
            return np.zeros(len(frame), dtype=bool)
        column = frame[self.column]
        hit = np.zeros(len(frame), dtype=bool)
        for value in self.values:
            hit |= _compare(column, "==" if self.op == "in" else self.op, value)
        return hit


@dataclass(frozen=True)
class Subject:
    """The rows to erase: those meeting every condition."""

    conditions: tuple[Condition, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns the conditions name, in order, once each."""
        return tuple(dict.fromkeys(c.column for c in self.conditions))

    def mask(self, frame: pd.DataFrame) -> np.ndarray:
        """Which rows of ``frame`` belong to the subject.

        Returns
        -------
        ndarray of shape (n_rows,), bool
        """
        hit = np.ones(len(frame), dtype=bool)
        for condition in self.conditions:
            hit &= condition.mask(frame)
        return hit

    def canonical(self) -> str:
        """The subject as one string (what its keyed hash is taken of)."""
        return json.dumps([[c.column, c.op, list(c.values)] for c in self.conditions])

    def values(self) -> list[tuple[str, str]]:
        """``(column, value)`` of each value an equality names (``==``, ``in``): the subject's
        own values, which are looked for byte for byte in files that have no rows to read."""
        return [(c.column, v) for c in self.conditions if c.op in _EQUALITY for v in c.values]


def subject_of(column: str, values: list[str]) -> Subject:
    """The subject ``column == value`` (one value) or ``column in (values)``.

    Raises
    ------
    ReviewError
        For no column or no value, or an empty value.
    """
    if not column.strip():
        raise ReviewError("forget needs the column to match (--column NAME)")
    if not values:
        raise ReviewError(f"forget needs at least one value of {shown(column)} to erase")
    if any(not v for v in values):
        raise ReviewError(f"an empty value of {shown(column)} would match nothing; remove it")
    op = "==" if len(values) == 1 else "in"
    return Subject((Condition(column, op, tuple(dict.fromkeys(values))),))


def read_values(text: str) -> list[str]:
    """The values of a values file: one a line, surrounding blanks and blank lines dropped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


# --------------------------------------------------------------------------- the --where grammar

_SPACE = re.compile(r"\s*")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*|`([^`]+)`")
_OP = re.compile(r"==|!=|<=|>=|<|>|in\b", re.IGNORECASE)
_AND = re.compile(r"and\b", re.IGNORECASE)
_QUOTED = re.compile(r"'((?:[^']|'')*)'|\"((?:[^\"]|\"\")*)\"")
_BARE = re.compile(r"[^\s,()'\"`]+")


class _Parser:
    """A recursive-descent reader of one ``--where`` text (see the module's grammar)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def fail(self, expected: str) -> ReviewError:
        rest = self.text[self.at :].strip()
        found = f"{shown(rest[:20])!r}" if rest else "the end"
        return ReviewError(
            f"--where {shown(self.text)!r}: expected {expected} at character {self.at + 1}, "
            f"found {found}"
        )

    def take(self, pattern: re.Pattern[str]) -> re.Match[str] | None:
        self.at = _SPACE.match(self.text, self.at).end()  # type: ignore[union-attr]
        found = pattern.match(self.text, self.at)
        if found is not None:
            self.at = found.end()
        return found

    def literal(self, char: str) -> bool:
        return self.take(re.compile(re.escape(char))) is not None

    def value(self) -> str:
        quoted = self.take(_QUOTED)
        if quoted is not None:
            single, double = quoted.groups()
            return single.replace("''", "'") if single is not None else double.replace('""', '"')
        bare = self.take(_BARE)
        if bare is None:
            raise self.fail("a value")
        return bare.group()

    def condition(self) -> Condition:
        name = self.take(_NAME)
        if name is None:
            raise self.fail("a column name")
        column = name.group(1) or name.group()
        op = self.take(_OP)
        if op is None:
            raise self.fail("one of ==, !=, <, <=, >, >=, in")
        if op.group().lower() != "in":
            return Condition(column, op.group(), (self.value(),))
        if not self.literal("("):
            raise self.fail("'(' after in")
        values = [self.value()]
        while self.literal(","):
            values.append(self.value())
        if not self.literal(")"):
            raise self.fail("',' or ')'")
        return Condition(column, "in", tuple(dict.fromkeys(values)))

    def subject(self) -> Subject:
        conditions = [self.condition()]
        while self.take(_AND) is not None:
            conditions.append(self.condition())
        if self.take(re.compile(r"\S")) is not None:
            self.at -= 1
            raise self.fail("'and' or the end")
        return Subject(tuple(conditions))


def parse_where(text: str) -> Subject:
    """A ``--where`` filter as a subject (the grammar in the module's docstring).

    Raises
    ------
    ReviewError
        Naming the character where the text leaves the grammar.
    """
    return _Parser(text).subject()


# --------------------------------------------------------------------------- comparing as the column's type


def _compare(column: pd.Series, op: str, text: str) -> np.ndarray:
    """``column op text``, with ``text`` read as the column's type; missing cells are False."""
    present = column.notna().to_numpy(dtype=bool)
    value = _as_type(column, text)
    if value is None:  # not a value of this column's type: equal to none of its cells
        return present if op == "!=" else np.zeros(len(column), dtype=bool)
    cells = column.astype("string") if isinstance(value, str) else column
    if op in ("<", "<=", ">", ">=") and isinstance(value, bool):
        raise ReviewError(f"{op} does not order the true/false column {shown(str(column.name))}")
    compared = {
        "==": cells == value,
        "!=": cells != value,
        "<": cells < value,
        "<=": cells <= value,
        ">": cells > value,
        ">=": cells >= value,
    }[op]
    return np.asarray(pd.Series(compared).fillna(False), dtype=bool) & present


def _as_type(column: pd.Series, text: str) -> object:
    """``text`` as a value of ``column``'s type; None when it is not one."""
    dtype = column.dtype
    if pd.api.types.is_bool_dtype(dtype):
        low = text.strip().lower()
        return True if low in _TRUE else False if low in _FALSE else None
    if pd.api.types.is_integer_dtype(dtype):
        with contextlib.suppress(ValueError):
            return int(text.strip())  # exactly: a float loses ids past 2**53
    if pd.api.types.is_numeric_dtype(dtype):
        try:
            number = float(text)
        except ValueError:
            return None
        return None if np.isnan(number) else number
    if pd.api.types.is_datetime64_any_dtype(dtype):
        try:
            stamp = pd.Timestamp(text)
        except (ValueError, TypeError):
            return None
        tz = getattr(dtype, "tz", None)
        if (stamp.tzinfo is None) != (tz is None):
            stamp = stamp.tz_localize(tz) if tz is not None else stamp.tz_convert(None)
        return stamp
    return text
