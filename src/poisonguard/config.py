"""One TOML file per dataset: where batches land, where the store lives, how to judge rows.

Example (every key but ``dataset.label`` and ``dataset.expectations`` has a default)::

    [dataset]
    name = "digits"
    landing = "landing"            # folder watched for new batch files (Parquet or CSV)
    store = "store"                # clean set, quarantine, rejected batches, ledger
    label = "target"
    id = "row_id"                  # optional
    features = []                  # empty: every numeric column but label and id
    max_categories = 50            # a string column with at most this many values is categorical
    expectations = "expectations/digits.json"
    settle_seconds = 2.0           # a landed file is taken once unchanged this long
    audit_key = "store.key"        # default: <store>.key beside the store folder

    [detection]
    detectors = ["knn_label", "knn_distance", "tail"]
    fdr = 0.1                      # false-discovery rate of the quarantine
    calibration_rows = 2000
    folds = 5
    max_reference_rows = 20000
    random_state = 0

    [detection.params.knn_label]
    n_neighbors = 10

    [reference]
    max_source_share = 0.5         # the most of the reference one landing source may hold

    [gate]
    canary = true                  # omitted: on when there is a label and a large enough reference
    canary_folds = 5               # the reference's rows, split by row hash, are canary rows in turn
    canary_margin = 0.03           # refuse when canary accuracy drops more than this ...
    canary_class_margin = 0.1      # ... or one class's accuracy drops more than this ...
    canary_r2_margin = 0.02        # ... or, for a regression target, R^2 drops more than this,
    canary_level = 0.01            # and the drop is significant at this level
    canary_rows = 100000           # the training set's models train on a keyed sample past this

    [sources]
    alarm_level = 0.001            # a landing source alarms at e-value 1 / alarm_level
    slack = 2.0                    # how much more often than the trusted rows clean rows may reach the tail

    [schedule]
    cron = "*/15 * * * *"
    timezone = "UTC"

    [store]                        # optional: one store for several runners
    ledger = "postgresql://poisonguard@db.internal:5432/poisonguard"
    schema = "poisonguard_digits"  # default: poisonguard_<dataset name>
    data = "s3://bucket/digits"    # data files (clean, quarantine, rejected, anchor); default: the store folder

    [retention]                    # optional: left out, nothing is ever purged
    quarantine_days = 90           # held rows, counted from their review (or from when held)
    rejected_days = 30             # rejected batches and rows, from their rejection
    unreviewed = "keep"            # "keep": held rows nobody reviewed stay (overdue); "purge"
    auto = true                    # purge what is due at the end of each run

Relative paths are resolved against the folder holding the config file. The
environment variable ``POISONGUARD_LEDGER_URL``, when set, replaces
``store.ledger`` (so that a password need not be written in a config file);
messages show the URL without its password.
"""

from __future__ import annotations

import functools
import json
import os
import re
import tomllib
import urllib.parse
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from poisonguard.columns import KINDS, MAX_CATEGORIES, TASKS
from poisonguard.errors import ConfigError, ParamError
from poisonguard.pii import PII_KINDS
from poisonguard.sources import SourceTest

#: Default false-discovery rate of the quarantine (see docs/decision.md).
DEFAULT_FDR = 0.05

#: Default level of the excess rule (``decision.excess_cut``; docs/decision.md, section 4):
#: the chance it holds anything beyond Benjamini-Hochberg in a batch with no poison.
DEFAULT_EXCESS_LEVEL = 0.001

#: Default per-row level (docs/decision.md, section 4): a row whose combined p-value is at
#: most this is held whatever the batch's size, so poison cannot hide among many clean rows.
DEFAULT_ROW_LEVEL = 0.001

#: Default ``backdoor_window`` (docs/decision.md, section 1): the backdoor scan sees each
#: batch with at most this many rows its source sent before.
DEFAULT_BACKDOOR_WINDOW = 2000

#: A landed file is taken once its size and time have not changed for this long.
DEFAULT_SETTLE_SECONDS = 2.0

#: Default of ``reference.max_source_share``: no landing source may hold more of the
#: pinned reference than the seed and every other source together.
DEFAULT_MAX_SOURCE_SHARE = 0.5

#: Defaults of the ``[gate]`` canary (``poisonguard.canary``; README, "The canary").
#: A landed file larger than this (bytes), or a Parquet file of more rows than
#: ``DEFAULT_CHUNK_ROWS``, is read, validated, judged and committed in chunks.
DEFAULT_CHUNK_BYTES = 64 * 2**20
DEFAULT_CHUNK_ROWS = 500_000

DEFAULT_CANARY_FOLDS = 5
DEFAULT_CANARY_MARGIN = 0.03
DEFAULT_CANARY_CLASS_MARGIN = 0.1
DEFAULT_CANARY_R2_MARGIN = 0.02
DEFAULT_CANARY_LEVEL = 0.01
DEFAULT_CANARY_ROWS = 100_000

#: Columns with this prefix are poisonguard's own bookkeeping; input batches may not use it.
RESERVED_PREFIX = "pg_"

#: The environment variable that, when set, is the ledger's URL whatever ``store.ledger``
#: says: where a team keeps a URL that holds a password.
LEDGER_URL_ENV = "POISONGUARD_LEDGER_URL"

#: A PostgreSQL schema name poisonguard keeps a ledger in (``pg_`` names are PostgreSQL's).
SCHEMA_NAME = re.compile(r"(?!pg_)[a-z_][a-z0-9_]{0,62}")

_LEDGER_SCHEMES = ("postgresql", "postgres")

# Columns of a suite listed in a message before "...".
_MAX_COLUMNS_SHOWN = 10


def _setting_error(owner: str, key_prefix: str | None) -> Callable[[str, str, Any], ConfigError]:
    """How a settings class names a bad value: by its parameter, or by its config key
    (``key_prefix``, e.g. ``"FILE: gate"``) when read from a file."""
    from poisonguard.errors import param_error

    def bad(name: str, rule: str, value: Any) -> ConfigError:
        error = param_error(name, owner, rule, value)
        return error if key_prefix is None else error.at_key(f"{key_prefix}.{name}")

    return bad


@dataclass(frozen=True)
class DetectionSettings:
    """How rows are scored and how the quarantine decision is made.

    Attributes
    ----------
    detectors : tuple of str or None
        Registry names to run; None means the registry's defaults.
    params : mapping
        Per-detector keyword parameters, keyed by detector name.
    fdr : float
        Target false-discovery rate of the quarantine, in (0, 1).
    calibration_rows : int
        At most this many trusted rows are held out and scored to calibrate p-values.
    folds : int
        Folds the calibration rows are scored in. A trusted set of at least
        ``folds * calibration_rows`` rows is split (detectors fitted once on the
        rest); a smaller one is cross-fitted (each fold scored by detectors fitted
        on every other trusted row).
    max_reference_rows : int
        The reference is subsampled (deterministically) to at most this many rows.
    hold_label_shift : float
        Total-variation distance between the batch's and the reference's label
        distributions past which (when also significant) the whole batch is held
        for review; 1 disables it.
    hold_feature_drift : float
        Share of features drifted (significant KS and PSI >= 0.1) past which the
        whole batch is held for review; 1 disables it.
    excess_level : float
        Level of the excess rule, which holds more rows than Benjamini-Hochberg
        where the batch shows significantly more small p-values than clean rows
        give (on a batch with no poison it fires with probability at most about
        this); 0 disables it.
    row_level : float
        A row whose combined p-value is at most this is held whatever
        Benjamini-Hochberg says (whose cut for one row shrinks as the batch
        grows); each clean row is held with probability at most about this.
        0 disables it.
    backdoor_window : int
        The backdoor scan (every detector that declares ``windowed``) sees a
        batch together with at most this many rows its landing source sent
        before, newest first, so that a trigger split thinly over batches still
        adds up; only the batch's own rows are decided on. 0 disables it.
    random_state : int
        Seed for every random choice, so runs are repeatable.
    """

    detectors: tuple[str, ...] | None = None
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    fdr: float = DEFAULT_FDR
    calibration_rows: int = 2000
    folds: int = 5
    max_reference_rows: int = 20000
    hold_label_shift: float = 1.0
    hold_feature_drift: float = 1.0
    excess_level: float = DEFAULT_EXCESS_LEVEL
    row_level: float = DEFAULT_ROW_LEVEL
    backdoor_window: int = DEFAULT_BACKDOOR_WINDOW
    random_state: int = 0

    def validated(
        self, owner: str = "the detection settings", key_prefix: str | None = None
    ) -> DetectionSettings:
        """Return self after checking every value, or raise ConfigError naming the bad one.

        With ``key_prefix`` (a config file's ``"FILE: detection"``) the message names
        the config key; otherwise the parameter of ``owner`` (for a detector's
        parameters, the parameter of its class). Detector parameters are checked
        by the detector's own ``from_params``, the same check that builds it.
        """
        from poisonguard.detectors import REGISTRY

        bad = _setting_error(owner, key_prefix)

        if not 0.0 < self.fdr < 1.0:
            raise bad("fdr", "in (0, 1)", self.fdr)
        if self.calibration_rows < 20:
            raise bad("calibration_rows", "an int >= 20", self.calibration_rows)
        if self.folds < 2:
            raise bad("folds", "an int >= 2", self.folds)
        if self.max_reference_rows < 50:
            raise bad("max_reference_rows", "an int >= 50", self.max_reference_rows)
        if not 0.0 < self.hold_label_shift <= 1.0:
            raise bad("hold_label_shift", "in (0, 1]", self.hold_label_shift)
        if not 0.0 < self.hold_feature_drift <= 1.0:
            raise bad("hold_feature_drift", "in (0, 1]", self.hold_feature_drift)
        if not 0.0 <= self.excess_level < 1.0:
            raise bad("excess_level", "in [0, 1)", self.excess_level)
        if not 0.0 <= self.row_level < 1.0:
            raise bad("row_level", "in [0, 1)", self.row_level)
        window = self.backdoor_window
        if isinstance(window, bool) or not isinstance(window, int) or window < 0:
            raise bad("backdoor_window", "an int >= 0 (rows; 0 = off)", window)
        for name, params in self.params.items():
            if name not in REGISTRY:
                raise bad("params", f"keyed by detector names from {sorted(REGISTRY)}", name)
            if not isinstance(params, Mapping):
                raise bad(f"params.{name}", "a mapping of parameter names to values", params)
            key = None if key_prefix is None else f"{key_prefix}.params.{name}"
            REGISTRY[name].from_params(params, key=key)
        return self


@dataclass(frozen=True)
class ReferencePolicy:
    """How the pinned reference may grow (``[reference]``; see ``Store.promote``).

    Attributes
    ----------
    max_source_share : float
        The share of the reference's rows, in (0, 1], that the promoted batches of
        one landing source may hold.
    """

    max_source_share: float = DEFAULT_MAX_SOURCE_SHARE


@dataclass(frozen=True)
class LedgerSettings:
    """Where a store's ledger lives when it is not the embedded SQLite file (``[store]``).

    Attributes
    ----------
    url : str
        A PostgreSQL connection URL. It may hold a password, so it is left out of
        ``repr``; messages show ``shown``.
    schema : str
        The PostgreSQL schema holding this store's ledger.
    """

    url: str = field(repr=False)
    schema: str

    @property
    def shown(self) -> str:
        """The URL without its password."""
        return shown_url(self.url)


def shown_url(url: str) -> str:
    """A connection URL as messages show it: its password, in the user part or the query,
    replaced by ``***``."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "(an unreadable URL)"
    user, at, host = parts.netloc.rpartition("@")
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    if not (at and ":" in user) and all(k != "password" for k, _ in query):
        return url
    if at and ":" in user:
        user = user.partition(":")[0] + ":***"
    hidden = urllib.parse.urlencode(
        [(k, "***" if k == "password" else v) for k, v in query], safe="*"
    )
    return (
        f"{parts.scheme}://{user}{at}{host}{parts.path}"
        + (f"?{hidden}" if hidden else "")
        + (f"#{parts.fragment}" if parts.fragment else "")
    )


def default_schema(name: str) -> str:
    """A dataset's ledger schema unless ``store.schema`` names one: ``poisonguard_<name>``,
    lower-case, with ``_`` for anything but letters and digits."""
    return ("poisonguard_" + re.sub(r"[^a-z0-9_]", "_", name.lower()))[:63]


def ledger_settings(path: Path, section: Mapping[str, Any], name: str) -> LedgerSettings | None:
    """The ledger of the config at ``path`` whose ``[store]`` is ``section`` and whose dataset
    is ``name``: ``POISONGUARD_LEDGER_URL``'s or ``store.ledger``'s, checked; None for the
    embedded ledger.

    Raises
    ------
    ConfigError
        For a URL that is not a PostgreSQL one, or a schema name PostgreSQL would not take.
    """
    from_env = os.environ.get(LEDGER_URL_ENV, "")
    url = from_env or section.get("ledger")
    where = f"the environment variable {LEDGER_URL_ENV}" if from_env else f"{path}: store.ledger"
    if url is None:
        if "schema" in section:
            raise ConfigError(
                f"{path}: store.schema is set but store.ledger is not (nor {LEDGER_URL_ENV}); "
                "the embedded ledger has no schema"
            )
        return None
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (parsing the port is the check)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in _LEDGER_SCHEMES:
        raise ConfigError(
            f"{where} must be a PostgreSQL URL such as "
            f"postgresql://user@host:5432/database. Got {shown_url(url)!r} instead."
        )
    schema = section.get("schema", default_schema(name))
    if not SCHEMA_NAME.fullmatch(schema):
        raise ConfigError(
            f"{path}: store.schema must be a PostgreSQL schema name of at most 63 lower-case "
            f"letters, digits and '_', not starting with a digit or 'pg_'. Got {schema!r} instead."
        )
    return LedgerSettings(url=url, schema=schema)


def _data_location(path: Path, base: Path, section: Mapping[str, Any]) -> str | None:
    """``store.data``: an fsspec URL as written, a folder resolved against the config's;
    None for the store's own folder."""
    data = section.get("data")
    if data is None:
        return None
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", data)
    if scheme is None:
        return str((base / data).resolve())
    if scheme.group(1) == "file" and not data.startswith("file:///"):
        raise ConfigError(
            f"{path}: store.data must be a folder or a URL such as file:///mnt/shared/digits "
            f"or s3://bucket/digits. Got {shown_url(data)!r} instead."
        )
    return data


@dataclass(frozen=True)
class ExecutionSettings:
    """How a batch is read and held in memory (``[execution]``).

    A batch whose landed file is larger than ``chunk_bytes``, or a Parquet batch of
    more than ``chunk_rows`` rows, takes the chunked path (``pipeline``, docs/decision.md
    section 4b): read, validated, judged and committed a chunk at a time, in memory
    set by the chunk. Smaller batches are read whole. Either path reaches the same
    decision.

    Attributes
    ----------
    chunk_bytes : int
        The largest file read whole, and about the size of a chunk (bytes of the
        file: a CSV block, or Parquet rows by their uncompressed size), at least 1024.
    chunk_rows : int
        The largest number of rows in a chunk (and in a Parquet batch read whole),
        at least 1.
    engine : {"local", "dask"}
        Where a chunked batch's detectors run: in the judging process, or mapped over
        its chunks on a Dask cluster (``poisonguard.cluster``; the same decision).
    address : str
        The Dask scheduler's address (``tcp://host:8786``); empty starts a local
        cluster of ``workers`` processes on loopback for the run.
    workers, threads_per_worker : int
        The local cluster's worker processes and threads in each, at least 1.
    memory_limit : str
        Each local worker's memory limit, as Dask reads it (``"2GiB"``, ``"auto"``).
    worker_wait : int
        Seconds a batch waits on a cluster with no workers (none started, or every one
        gone) before it stops with ``ClusterError``, nothing decided; at least 1.
    """

    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    engine: str = "local"
    address: str = ""
    workers: int = 2
    threads_per_worker: int = 1
    memory_limit: str = "auto"
    worker_wait: int = 300


@dataclass(frozen=True)
class GateSettings:
    """The pre-training gate's canary (``[gate]``; see ``poisonguard.canary``).

    Attributes
    ----------
    canary : bool or None
        True: the gate trains a quick model on the training set and one on the
        pinned reference and refuses when the first does worse on trusted canary
        rows; a canary that cannot run (too few canary rows) is then a reason.
        None (the default): the same, but a store without a label, or whose
        reference is too small to hold out canary rows, is noted and not judged.
        False: off.
    canary_folds : int
        The pinned reference's rows are split in this many folds by row hash
        (always the same rows in the same fold); each fold in turn is the canary,
        kept out of both training sets of the two models that predict it, so
        every reference row is a canary row once (at least 2).
    canary_margin : float
        Refuse when canary accuracy drops by more than this (significantly).
    canary_class_margin : float
        Refuse when one class's canary accuracy drops by more than this (significantly).
    canary_r2_margin : float
        For a regression target, refuse when canary R^2 drops by more than this
        (significantly).
    canary_level : float
        A drop counts only when a paired test says the training set's model is
        worse than the reference's at this level, in (0, 1), split (Bonferroni)
        over the overall figure and the classes (the noise of which rows are
        canaries; the margins absorb the noise of which rows a clean batch brought).
    canary_rows : int
        The training set's models train on at most this many of its rows: past it, a
        keyed sample (each class keeps its share), read file by file, so the gate's
        memory and time do not grow with the training set's history (at least 100).
    """

    canary: bool | None = None
    canary_folds: int = DEFAULT_CANARY_FOLDS
    canary_margin: float = DEFAULT_CANARY_MARGIN
    canary_class_margin: float = DEFAULT_CANARY_CLASS_MARGIN
    canary_r2_margin: float = DEFAULT_CANARY_R2_MARGIN
    canary_level: float = DEFAULT_CANARY_LEVEL
    canary_rows: int = DEFAULT_CANARY_ROWS

    def validated(
        self, owner: str = "the gate settings", key_prefix: str | None = None
    ) -> GateSettings:
        """Return self after checking every value, or raise ConfigError naming the bad one
        (the config key with ``key_prefix``, e.g. ``"FILE: gate"``)."""
        bad = _setting_error(owner, key_prefix)

        if self.canary not in (None, True, False):
            raise bad("canary", "true, false or left out", self.canary)
        folds = self.canary_folds
        if isinstance(folds, bool) or not isinstance(folds, int) or not 2 <= folds <= 100:
            raise bad("canary_folds", "an int in [2, 100]", folds)
        for name in ("canary_margin", "canary_class_margin", "canary_r2_margin"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise bad(name, "in [0, 1)", getattr(self, name))
        if not 0.0 < self.canary_level < 1.0:
            raise bad("canary_level", "in (0, 1)", self.canary_level)
        rows = self.canary_rows
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 100:
            raise bad("canary_rows", "an int >= 100", rows)
        return self


#: What ``retention.unreviewed`` may say about held rows nobody reviewed in time.
UNREVIEWED = ("keep", "purge")


@dataclass(frozen=True)
class RetentionSettings:
    """How long quarantine and rejected data are kept (``[retention]``; docs/privacy.md).

    Attributes
    ----------
    quarantine_days : int or None
        A batch's held rows are purged once each was released or rejected at
        least this many days ago (a rejected row also waits ``rejected_days``);
        None keeps them for ever.
    rejected_days : int or None
        A batch rejected whole, or revoked, is purged this many days after its
        rejection, and a row a reviewer rejected counts as due this long after
        the decision; None keeps them for ever.
    unreviewed : str
        ``"keep"``: held rows nobody reviewed are kept past ``quarantine_days``
        (counted from when they were held) and shown as overdue for review;
        ``"purge"``: they are purged then too, counted as rejected.
    auto : bool
        Purge what is due at the end of each ``poisonguard run``.
    """

    quarantine_days: int | None = None
    rejected_days: int | None = None
    unreviewed: str = "keep"
    auto: bool = True

    @property
    def enabled(self) -> bool:
        """Whether anything is ever purged (an age is set)."""
        return self.quarantine_days is not None or self.rejected_days is not None

    def validated(
        self, owner: str = "the retention settings", key_prefix: str | None = None
    ) -> RetentionSettings:
        """Return self after checking every value, or raise ConfigError naming the bad one
        (the config key with ``key_prefix``, e.g. ``"FILE: retention"``)."""
        bad = _setting_error(owner, key_prefix)

        for name in ("quarantine_days", "rejected_days"):
            days = getattr(self, name)
            if days is not None and (
                isinstance(days, bool) or not isinstance(days, int) or days < 1
            ):
                raise bad(name, "an int >= 1 (days; left out = kept for ever)", days)
        if self.unreviewed not in UNREVIEWED:
            raise bad("unreviewed", f"one of {', '.join(map(repr, UNREVIEWED))}", self.unreviewed)
        if self.auto not in (True, False):
            raise bad("auto", "true or false", self.auto)
        return self


@dataclass(frozen=True)
class Config:
    """A dataset's configuration, with paths resolved."""

    path: Path
    name: str
    landing: Path
    store: Path
    label: str | None
    id_column: str | None
    features: tuple[str, ...]
    expectations: Path
    detection: DetectionSettings = DetectionSettings()
    cron: str | None = None
    timezone: str = "UTC"
    settle_seconds: float = DEFAULT_SETTLE_SECONDS
    audit_key: Path | None = None
    task: str | None = None
    columns: Mapping[str, str] = field(default_factory=dict)
    pii: Mapping[str, str] = field(default_factory=dict)
    max_categories: int = MAX_CATEGORIES
    reference: ReferencePolicy = ReferencePolicy()
    gate: GateSettings = GateSettings()
    sources: SourceTest = field(default_factory=SourceTest)
    ledger: LedgerSettings | None = None
    data: str | None = None
    execution: ExecutionSettings = ExecutionSettings()
    retention: RetentionSettings = RetentionSettings()

    def with_detection(self, **changes: Any) -> Config:
        return replace(self, detection=replace(self.detection, **changes).validated())


_SECTIONS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "dataset": {
        "name": str,
        "landing": str,
        "store": str,
        "label": str,
        "id": str,
        "features": list,
        "expectations": str,
        "settle_seconds": (float, int),
        "audit_key": str,
        "task": str,
        "columns": dict,
        "max_categories": int,
    },
    "detection": {
        "detectors": list,
        "params": dict,
        "fdr": (float, int),
        "calibration_rows": int,
        "folds": int,
        "max_reference_rows": int,
        "hold_label_shift": (float, int),
        "hold_feature_drift": (float, int),
        "excess_level": (float, int),
        "row_level": (float, int),
        "backdoor_window": int,
        "random_state": int,
    },
    "reference": {"max_source_share": (float, int)},
    "gate": {
        "canary": bool,
        "canary_folds": int,
        "canary_margin": (float, int),
        "canary_class_margin": (float, int),
        "canary_r2_margin": (float, int),
        "canary_level": (float, int),
        "canary_rows": int,
    },
    "sources": {"alarm_level": (float, int), "slack": (float, int)},
    "schedule": {"cron": str, "timezone": str},
    "store": {"ledger": str, "schema": str, "data": str},
    "execution": {
        "chunk_bytes": int,
        "chunk_rows": int,
        "engine": str,
        "address": str,
        "workers": int,
        "threads_per_worker": int,
        "memory_limit": str,
        "worker_wait": int,
    },
    "retention": {"quarantine_days": int, "rejected_days": int, "unreviewed": str, "auto": bool},
}


def load_config(path: str | Path) -> Config:
    """Read and check a dataset's TOML configuration.

    Raises
    ------
    ConfigError
        For a missing or unparsable file, an unknown section or key, a value of
        the wrong type or range, a referenced file that does not exist, a
        detector parameter that is unknown or out of range (checked by the
        detector's ``from_params``), a label, id or feature that is not a column
        of the suite (when the suite fixes its columns) or a feature that is the
        label or the id, a column kind that is unknown or given for a column that
        is not a feature, a time zone that is not an IANA name, or
        ``gate.canary = true`` without a label. The message names the file and
        the key.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc

    for section, body in raw.items():
        if section not in _SECTIONS:
            raise ConfigError(
                f"{path}: unknown section [{section}]; expected one of {sorted(_SECTIONS)}"
            )
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        for key, value in body.items():
            _check_key(path, section, key, value)

    ds = raw.get("dataset", {})
    for key in ("expectations",):
        if key not in ds:
            raise ConfigError(f"{path}: missing key dataset.{key}")
    base = path.parent.resolve()
    expectations = (base / ds["expectations"]).resolve()
    if not expectations.is_file():
        raise ConfigError(
            f"{path}: dataset.expectations points to {expectations}, which does not exist"
        )
    features = tuple(ds.get("features", []))
    for f in features:
        if not isinstance(f, str) or not f:
            raise ConfigError(f"{path}: dataset.features must be a list of column names")
    for key in ("label", "id"):
        if key in ds and ds[key].startswith(RESERVED_PREFIX):
            raise ConfigError(
                f"{path}: dataset.{key} {ds[key]!r} uses the reserved prefix {RESERVED_PREFIX!r}"
            )
        if key in ds and ds[key] in features:
            raise ConfigError(
                f"{path}: dataset.features lists {ds[key]!r}, which is dataset.{key}; "
                "features may not include the label or the id"
            )
    _check_suite_columns(path, ds, expectations)

    task = ds.get("task")
    if task is not None and task not in TASKS:
        raise ConfigError(
            f"{path}: dataset.task must be one of {', '.join(TASKS)} (or left out to infer it "
            f"from the label). Got {task!r} instead."
        )
    columns, pii = _column_entries(path, ds.get("columns", {}))
    for column, kind in columns.items():
        if kind not in KINDS:
            raise ConfigError(
                f"{path}: dataset.columns.{column} must be one of {', '.join(KINDS)}. "
                f"Got {kind!r} instead."
            )
        for key in ("label", "id"):
            if ds.get(key) == column:
                raise ConfigError(
                    f"{path}: dataset.columns.{column}: {column!r} is dataset.{key}, not a feature"
                )
        if features and column not in features:
            raise ConfigError(
                f"{path}: dataset.columns.{column}: {column!r} is not in dataset.features, "
                "so its kind would never be used"
            )

    max_categories = ds.get("max_categories", MAX_CATEGORIES)
    if max_categories < 1:
        raise ConfigError(
            f"{path}: dataset.max_categories must be an int >= 1. Got {max_categories!r} instead."
        )

    settle = float(ds.get("settle_seconds", DEFAULT_SETTLE_SECONDS))
    if not 0.0 <= settle <= 3600.0:
        raise ConfigError(
            f"{path}: dataset.settle_seconds must be in [0, 3600]. Got {settle!r} instead."
        )

    det = raw.get("detection", {})
    detectors = det.get("detectors")
    if detectors is not None:
        _check_detector_names(path, "detection.detectors", detectors)
    params = det.get("params", {})
    _check_detector_names(path, "detection.params", list(params))
    for name, body in params.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: detection.params.{name} must be a table of parameters")

    settings = DetectionSettings(
        detectors=tuple(detectors) if detectors is not None else None,
        params={k: dict(v) for k, v in params.items()},
        fdr=float(det.get("fdr", DEFAULT_FDR)),
        calibration_rows=det.get("calibration_rows", 2000),
        folds=det.get("folds", 5),
        max_reference_rows=det.get("max_reference_rows", 20000),
        hold_label_shift=float(det.get("hold_label_shift", 1.0)),
        hold_feature_drift=float(det.get("hold_feature_drift", 1.0)),
        excess_level=float(det.get("excess_level", DEFAULT_EXCESS_LEVEL)),
        row_level=float(det.get("row_level", DEFAULT_ROW_LEVEL)),
        backdoor_window=det.get("backdoor_window", DEFAULT_BACKDOOR_WINDOW),
        random_state=det.get("random_state", 0),
    )
    settings.validated(key_prefix=f"{path}: detection")

    share = float(raw.get("reference", {}).get("max_source_share", DEFAULT_MAX_SOURCE_SHARE))
    if not 0.0 < share <= 1.0:
        raise ConfigError(
            f"{path}: reference.max_source_share must be in (0, 1]. Got {share!r} instead."
        )

    gate = raw.get("gate", {})
    gate_settings = GateSettings(
        canary=gate.get("canary"),
        canary_folds=gate.get("canary_folds", DEFAULT_CANARY_FOLDS),
        canary_margin=float(gate.get("canary_margin", DEFAULT_CANARY_MARGIN)),
        canary_class_margin=float(gate.get("canary_class_margin", DEFAULT_CANARY_CLASS_MARGIN)),
        canary_r2_margin=float(gate.get("canary_r2_margin", DEFAULT_CANARY_R2_MARGIN)),
        canary_level=float(gate.get("canary_level", DEFAULT_CANARY_LEVEL)),
        canary_rows=gate.get("canary_rows", DEFAULT_CANARY_ROWS),
    ).validated(key_prefix=f"{path}: gate")
    if gate_settings.canary and "label" not in ds:
        raise ConfigError(
            f"{path}: gate.canary = true needs dataset.label: the canary trains a model "
            "of the label"
        )

    src = raw.get("sources", {})
    try:
        sources = SourceTest(
            alarm_level=src.get("alarm_level", SourceTest.alarm_level),
            slack=src.get("slack", SourceTest.slack),
        ).validated()
    except ParamError as exc:
        raise exc.at_key(f"{path}: sources.{exc.param}") from exc

    run = raw.get("execution", {})
    execution = ExecutionSettings(
        chunk_bytes=run.get("chunk_bytes", DEFAULT_CHUNK_BYTES),
        chunk_rows=run.get("chunk_rows", DEFAULT_CHUNK_ROWS),
        **{k: run[k] for k in _ENGINE_KEYS if k in run},
    )
    _check_execution(path, execution)

    sched = raw.get("schedule", {})
    cron = sched.get("cron")
    if cron is not None and len(cron.split()) != 5:
        raise ConfigError(
            f"{path}: schedule.cron must have five fields (minute hour day month weekday). "
            f"Got {cron!r} instead."
        )
    timezone = sched.get("timezone", "UTC")
    # The names Prefect accepts for a schedule's timezone: the same zoneinfo list.
    if timezone not in _time_zones():
        raise ConfigError(
            f'{path}: schedule.timezone must be an IANA time zone name such as "UTC" or '
            f'"Europe/Berlin". Got {timezone!r} instead.'
        )
    kept = raw.get("retention", {})
    retention = RetentionSettings(
        quarantine_days=kept.get("quarantine_days"),
        rejected_days=kept.get("rejected_days"),
        unreviewed=kept.get("unreviewed", "keep"),
        auto=kept.get("auto", True),
    ).validated(key_prefix=f"{path}: retention")

    name = ds.get("name", path.stem)
    ledger = ledger_settings(path, raw.get("store", {}), name)
    data = _data_location(path, base, raw.get("store", {}))
    return Config(
        path=path.resolve(),
        name=name,
        landing=(base / ds.get("landing", "landing")).resolve(),
        store=(base / ds.get("store", "store")).resolve(),
        label=ds.get("label"),
        id_column=ds.get("id"),
        features=features,
        expectations=expectations,
        detection=settings,
        cron=cron,
        timezone=timezone,
        settle_seconds=settle,
        audit_key=(base / ds["audit_key"]).resolve() if "audit_key" in ds else None,
        task=task,
        columns=columns,
        pii=pii,
        max_categories=max_categories,
        reference=ReferencePolicy(max_source_share=share),
        gate=gate_settings,
        sources=sources,
        ledger=ledger,
        data=data,
        execution=execution,
        retention=retention,
    )


_ENGINE_KEYS = (
    "engine",
    "address",
    "workers",
    "threads_per_worker",
    "memory_limit",
    "worker_wait",
)
ENGINES = ("local", "dask")


def _check_execution(path: Path, execution: ExecutionSettings) -> None:
    """``[execution]``'s ranges: chunk sizes, the engine, the scheduler address and the local
    cluster's sizes (Dask itself is imported only when a batch is judged on it)."""
    for key, least in (
        ("chunk_bytes", 1024),
        ("chunk_rows", 1),
        ("workers", 1),
        ("threads_per_worker", 1),
        ("worker_wait", 1),
    ):
        if getattr(execution, key) < least:
            raise ConfigError(
                f"{path}: execution.{key} must be at least {least}. "
                f"Got {getattr(execution, key)!r} instead."
            )
    if execution.engine not in ENGINES:
        raise ConfigError(
            f"{path}: execution.engine must be one of {', '.join(ENGINES)}. "
            f"Got {execution.engine!r} instead."
        )
    address = execution.address
    if address and not re.fullmatch(r"(tcp|tls|ucx)://[^\s/]+:\d+", address):
        raise ConfigError(
            f"{path}: execution.address must be a Dask scheduler address such as "
            f'"tcp://10.0.0.5:8786" (or empty for a local cluster). Got {address!r} instead.'
        )
    limit = execution.memory_limit.strip().lower()
    if limit != "auto" and not re.fullmatch(r"\d+(\.\d+)?\s*([kmgt]i?b?|b)?", limit):
        raise ConfigError(
            f'{path}: execution.memory_limit must be a size such as "2GiB" or "500MB", or '
            f'"auto". Got {execution.memory_limit!r} instead.'
        )


def _check_key(path: Path, section: str, key: str, value: Any) -> None:
    expected = _SECTIONS[section].get(key)
    if expected is None:
        raise ConfigError(
            f"{path}: unknown key {section}.{key}; expected one of {sorted(_SECTIONS[section])}"
        )
    # bool is an int subclass in Python, never a valid number here.
    if (isinstance(value, bool) and expected is not bool) or not isinstance(value, expected):
        names = (
            " or ".join(t.__name__ for t in expected)
            if isinstance(expected, tuple)
            else expected.__name__
        )
        raise ConfigError(
            f"{path}: {section}.{key} must be of type {names}. Got {value!r} instead."
        )


@functools.cache
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _column_entries(
    path: Path, entries: Mapping[str, Any]
) -> tuple[dict[str, str], dict[str, str]]:
    """``[dataset.columns]``: each entry a kind (``"text"``) or a table with a kind, a
    personal-data kind or both (``{ kind = "text", pii = "email" }``). Returns the kinds
    and the personal-data kinds, by column."""
    kinds: dict[str, str] = {}
    pii: dict[str, str] = {}
    for column, entry in entries.items():
        if isinstance(entry, str):
            kinds[column] = entry
            continue
        where = f"{path}: dataset.columns.{column}"
        if not isinstance(entry, Mapping) or not entry or set(entry) - {"kind", "pii"}:
            raise ConfigError(
                f"{where} must be a kind or a table with 'kind' and/or 'pii'. Got {entry!r}."
            )
        if "kind" in entry:
            kinds[column] = entry["kind"]
        if "pii" in entry:
            if entry["pii"] not in PII_KINDS:
                raise ConfigError(
                    f"{where}.pii must be one of {', '.join(PII_KINDS)}. Got {entry['pii']!r}."
                )
            pii[column] = entry["pii"]
    return kinds, pii


def _check_suite_columns(path: Path, ds: Mapping[str, Any], suite_path: Path) -> None:
    """``dataset.label``, ``dataset.id`` and ``dataset.features`` must be columns of the suite.

    Only when the suite fixes its columns (an exact column set or an ordered
    column list); the JSON is read directly, without Great Expectations.
    """
    try:
        suite = json.loads(suite_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{path}: dataset.expectations points to {suite_path}, which cannot be read ({exc})"
        ) from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: dataset.expectations points to {suite_path}, which is not valid JSON "
            f"({exc.msg}, line {exc.lineno})"
        ) from None
    columns = suite_columns(suite)
    if columns is None:
        return
    known = set(columns)
    shown = ", ".join(columns[:_MAX_COLUMNS_SHOWN])
    if len(columns) > _MAX_COLUMNS_SHOWN:
        shown += f", ... ({len(columns)} in all)"
    named = [(f"dataset.{key}", ds[key]) for key in ("label", "id") if key in ds]
    named += [("dataset.features entry", f) for f in ds.get("features", [])]
    named += [("dataset.columns entry", c) for c in ds.get("columns", {})]
    for key, column in named:
        if column not in known:
            raise ConfigError(
                f"{path}: {key} {column!r} is not a column of the suite "
                f"{ds['expectations']}; its columns: {shown}"
            )


def suite_columns(suite: Any) -> list[str] | None:
    """The columns a suite's column-set expectation fixes; None when it fixes none."""
    items = suite.get("expectations") if isinstance(suite, Mapping) else None
    for item in items if isinstance(items, list) else []:
        kind = item.get("type") if isinstance(item, Mapping) else None
        kwargs = item.get("kwargs") if isinstance(item, Mapping) else None
        if not isinstance(kwargs, Mapping):
            continue
        if kind == "expect_table_columns_to_match_ordered_list":
            columns = kwargs.get("column_list")
        # A column set with exact_match false allows other columns too (GX reads null as true).
        elif kind == "expect_table_columns_to_match_set" and kwargs.get("exact_match") is not False:
            columns = kwargs.get("column_set")
        else:
            continue
        if isinstance(columns, list):
            return [str(c) for c in columns]
    return None


def _check_detector_names(path: Path, key: str, names: list[Any]) -> None:
    from poisonguard.detectors import REGISTRY

    for name in names:
        if name not in REGISTRY:
            raise ConfigError(
                f"{path}: {key} names unknown detector {name!r}; known: {sorted(REGISTRY)}"
            )


def render_config(
    *,
    name: str,
    label: str | None,
    id_column: str | None,
    expectations: str,
    landing: str = "landing",
    store: str = "store",
    features: list[str] | None = None,
    fdr: float = DEFAULT_FDR,
    cron: str = "*/15 * * * *",
    task: str | None = None,
    columns: Mapping[str, str] | None = None,
    max_categories: int = MAX_CATEGORIES,
    pii: Mapping[str, str] | None = None,
) -> str:
    """The text of a new config file, with comments, as ``poisonguard init`` writes it."""

    def q(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [
        "# poisonguard configuration: one file per dataset. Paths are relative to this file.",
        "[dataset]",
        f"name = {q(name)}",
        f"landing = {q(landing)}        # new batch files (Parquet or CSV) arrive here",
        f"store = {q(store)}            # clean set, quarantine, rejected batches, ledger",
    ]
    if label is not None:
        lines.append(f"label = {q(label)}")
    if task is not None:
        lines.append(f"task = {q(task)}       # classification or regression")
    if id_column is not None:
        lines.append(f"id = {q(id_column)}")
    feats = ", ".join(q(f) for f in features or [])
    lines += [
        f"features = [{feats}]   # empty: every column but label and id",
        f"expectations = {q(expectations)}",
        f"max_categories = {max_categories}   # a string column with at most this many "
        "values is categorical",
        "",
    ]
    pii = dict(pii or {})
    if columns or pii:
        lines.append(
            "[dataset.columns]    # each feature's kind: "
            + " | ".join(KINDS)
            + " (inferred; edit to override)"
        )
        lines.append(
            "                     # pii: the personal data a column holds ("
            + " | ".join(PII_KINDS)
            + ")"
        )
        for c, k in (columns or {}).items():
            lines.append(
                f"{q(c)} = {{ kind = {q(k)}, pii = {q(pii.pop(c))} }}"
                if c in pii
                else f"{q(c)} = {q(k)}"
            )
        lines += [f"{q(c)} = {{ pii = {q(k)} }}" for c, k in pii.items()]
        lines.append("")
    lines += [
        "[detection]",
        f"fdr = {fdr}                # false-discovery rate of the quarantine",
        "calibration_rows = 2000",
        "folds = 5",
        "max_reference_rows = 20000",
        "random_state = 0",
        "",
        "[reference]          # the trusted rows batches are judged against; grows only by",
        "                     # `poisonguard reference promote`",
        f"max_source_share = {DEFAULT_MAX_SOURCE_SHARE}   # the most of it one landing source may hold",
        "",
        "[gate]               # the canary: a quick model of the training set against one of the",
        "                     # reference, on trusted rows kept out of both (README, `The canary`)",
        "# canary = false     # left out: on when there is a label and a large enough reference",
        f"canary_folds = {DEFAULT_CANARY_FOLDS}      # each reference row is a canary row in one fold",
        f"canary_margin = {DEFAULT_CANARY_MARGIN}        # accuracy points, overall",
        f"canary_class_margin = {DEFAULT_CANARY_CLASS_MARGIN}  # accuracy points, per class",
        f"canary_r2_margin = {DEFAULT_CANARY_R2_MARGIN}     # R^2 points, for a regression target",
        f"canary_level = {DEFAULT_CANARY_LEVEL}        # a drop counts when significant at this level",
        f"canary_rows = {DEFAULT_CANARY_ROWS}     # the training set's models train on a sample past this",
        "",
        "[sources]            # a sequential test per landing source (docs/decision.md)",
        f"alarm_level = {SourceTest.alarm_level}   # alarm at e-value 1 / alarm_level",
        f"slack = {SourceTest.slack}",
        "",
        "# [retention]        # left out: quarantine and rejected data are kept for ever",
        "# quarantine_days = 90   # held rows, this long after their review (docs/privacy.md)",
        "# rejected_days = 30     # rejected batches and rows, this long after the rejection",
        '# unreviewed = "keep"    # held rows nobody reviewed: "keep" (shown overdue) or "purge"',
        "# auto = true            # purge what is due at the end of each run",
        "",
        "[schedule]",
        f"cron = {q(cron)}",
        'timezone = "UTC"',
        "",
    ]
    return "\n".join(lines)
