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

    def __reduce__(self) -> tuple[Any, ...]:
        # Raised on a cluster's worker, it comes back to the judging process whole.
        return (_batch_error, (self.source, self.reason, self.column, self.rows))


def _batch_error(source: str, reason: str, column: str | None, rows: int | None) -> BatchError:
    return BatchError(source, reason, column=column, rows=rows)


class StoreError(PoisonguardError, RuntimeError):
    """The store on disk is inconsistent or cannot be written."""


class ClusterError(PoisonguardError, RuntimeError):
    """The Dask cluster judging a batch could not be reached or lost its work: the batch is
    not decided (``poisonguard.cluster``)."""


class ReviewError(PoisonguardError, ValueError):
    """A review action names rows or batches that cannot take it."""


class GateError(PoisonguardError, RuntimeError):
    """The training set is not safe to use; ``reasons`` says why, one line each."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = list(reasons)
        super().__init__("; ".join(self.reasons) if self.reasons else "gate failed")


class ParamError(ConfigError):
    """A parameter breaks its rule; built by :func:`param_error`.

    ``param``, ``rule`` and ``value`` are kept so that a caller that knows the
    parameter by another name (a config file's key) can say the same thing in
    its own words with :meth:`at_key`.
    """

    def __init__(self, param: str, owner: str, rule: str, value: Any) -> None:
        self.param = param
        self.owner = owner
        self.rule = rule
        self.value = value
        super().__init__(
            f"The {param!r} parameter of {owner} must be {rule}. Got {value!r} instead."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.param, self.owner, self.rule, self.value))

    def at_key(self, key: str) -> ConfigError:
        """The same rule, naming ``key`` (e.g. ``"pg.toml: detection.fdr"``) instead.

        >>> str(param_error("fdr", "scan()", "in (0, 1)", 1.5).at_key("pg.toml: detection.fdr"))
        'pg.toml: detection.fdr must be in (0, 1). Got 1.5 instead.'
        """
        return ConfigError(f"{key} must be {self.rule}. Got {self.value!r} instead.")


def param_error(name: str, owner: str, rule: str, value: Any) -> ParamError:
    """Build the one error message poisonguard uses for a bad parameter.

    >>> str(param_error("fdr", "scan()", "in (0, 1)", 1.5))
    "The 'fdr' parameter of scan() must be in (0, 1). Got 1.5 instead."
    """
    return ParamError(name, owner, rule, value)


def shown(text: str, limit: int = 120) -> str:
    """Untrusted text (a file name, a cell) as it may appear in a one-line message.

    Control characters, newlines and non-ASCII are escaped, quotes too, and long
    text is cut, so a hostile name can neither break a line nor flood a log.
    """
    out = text.encode("unicode_escape", "backslashreplace").decode("ascii").replace('"', '\\"')
    return out if len(out) <= limit else out[: limit - 3] + "..."
