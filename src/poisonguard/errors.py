"""One error tree for everything poisonguard raises on purpose.

Each class also inherits the builtin it refines, so callers that already catch
``ValueError`` or ``RuntimeError`` keep working.
"""

from __future__ import annotations

from typing import Any


class PoisonguardError(Exception):
    """Root of every error poisonguard raises on purpose."""


class ConfigError(PoisonguardError, ValueError):
    """A configuration file or parameter is missing, unknown or out of range."""


class BatchError(PoisonguardError, ValueError):
    """A batch cannot be used: it is rejected whole.

    Parameters
    ----------
    source : str
        The file (or other name) of the batch.
    reason : str
        One line a person can act on: names the column and what was expected.
    column : str, optional
        The offending column, when there is one.
    rows : int, optional
        How many rows the batch held, when it could be read.
    """

    def __init__(
        self, source: str, reason: str, *, column: str | None = None, rows: int | None = None
    ) -> None:
        self.source = source
        self.reason = reason
        self.column = column
        self.rows = rows
        super().__init__(f"{source}: {reason}")


class StoreError(PoisonguardError, RuntimeError):
    """The store on disk is inconsistent or cannot be written."""


class ReviewError(PoisonguardError, ValueError):
    """A review action names rows or batches that cannot take it."""


class GateError(PoisonguardError, RuntimeError):
    """The training set is not safe to use; ``reasons`` says why, one line each."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = list(reasons)
        super().__init__("; ".join(self.reasons) if self.reasons else "gate failed")


def param_error(name: str, owner: str, rule: str, value: Any) -> ConfigError:
    """Build the one error message poisonguard uses for a bad parameter.

    >>> str(param_error("fdr", "scan()", "in (0, 1)", 1.5))
    "The 'fdr' parameter of scan() must be in (0, 1). Got 1.5 instead."
    """
    return ConfigError(f"The {name!r} parameter of {owner} must be {rule}. Got {value!r} instead.")


def shown(text: str, limit: int = 120) -> str:
    """Untrusted text (a file name, a cell) as it may appear in a one-line message.

    Control characters, newlines and non-ASCII are escaped, quotes too, and long
    text is cut, so a hostile name can neither break a line nor flood a log.
    """
    out = text.encode("unicode_escape", "backslashreplace").decode("ascii").replace('"', '\\"')
    return out if len(out) <= limit else out[: limit - 3] + "..."
