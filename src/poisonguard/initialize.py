"""``poisonguard init``: a config, an inferred expectations suite and a seeded store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from poisonguard.columns import MAX_CATEGORIES, infer_kinds, infer_task
from poisonguard.config import Config, ledger_settings, load_config, render_config
from poisonguard.errors import ConfigError
from poisonguard.pii import find_pii
from poisonguard.pipeline import check_seed, seed_store
from poisonguard.store import BatchRecord, atomic_write_bytes, has_store, open_store, read_batch

CONFIG_NAME = "poisonguard.toml"


@dataclass(frozen=True)
class Initialized:
    config: Config
    seed: BatchRecord
    n_expectations: int


def init_dataset(
    sample: str | Path,
    *,
    label: str | None,
    directory: str | Path = ".",
    id_column: str | None = None,
    name: str | None = None,
    margin: float = 0.25,
    force: bool = False,
    task: str | None = None,
    max_categories: int = MAX_CATEGORIES,
) -> Initialized:
    """Infer a suite from a trusted sample, write a config beside it, seed the store.

    Writes ``DIR/poisonguard.toml`` (with the label's task and every feature
    column's kind, inferred unless given, for a person to check and edit),
    ``DIR/expectations/NAME.json`` and ``DIR/landing/``, and commits the sample as
    the store's first clean batch. ``max_categories`` (written as
    ``dataset.max_categories``) decides both which string columns are categorical
    and which get a value set in the suite. Columns holding personal data
    (``poisonguard.pii``: e-mail, phone, card, IBAN, national id, IP, name, date of
    birth) are written with their kind (``pii = "email"``); the others get the
    suite's leak guards.

    Raises
    ------
    ConfigError
        When the sample lacks the label or id column, or the config exists and
        ``force`` is not set.
    """
    from poisonguard.validation import infer_suite, write_suite

    sample = Path(sample)
    directory = Path(directory)
    frame = read_batch(sample)
    for key, col in (("--label", label), ("--id", id_column)):
        if col is not None and col not in frame.columns:
            raise ConfigError(
                f"{sample}: the {key} column {col!r} is not in the sample; "
                f"columns: {list(frame.columns)}"
            )
    name = name or sample.stem
    config_path = directory / CONFIG_NAME
    if config_path.exists() and not force:
        raise ConfigError(f"{config_path} already exists; pass --force to overwrite it")
    if label is not None:
        task = task or infer_task(frame[label])
    pii = find_pii(frame, skip=[c for c in (label,) if c is not None])
    suite = infer_suite(
        frame,
        label=label,
        id_column=id_column,
        name=name,
        margin=margin,
        source=str(sample),
        task=task,
        max_categories=max_categories,
        pii=pii,
    )
    features = [c for c in frame.columns if c not in (label, id_column)]
    kinds = infer_kinds(frame, features, max_categories=max_categories)
    store_root = directory / "store"
    ledger = ledger_settings(config_path, {}, name)  # the new config's: POISONGUARD_LEDGER_URL's
    if has_store(store_root, ledger):
        # Refuse before writing anything: --force rewrites a config, never mixes two seeds.
        check_seed(frame, str(sample), open_store(store_root, ledger=ledger))
    suite_rel = f"expectations/{name}.json"
    directory.mkdir(parents=True, exist_ok=True)
    write_suite(suite, directory / suite_rel)
    (directory / "landing").mkdir(exist_ok=True)
    text = render_config(
        name=name,
        label=label,
        id_column=id_column,
        expectations=suite_rel,
        task=task,
        columns=kinds,
        max_categories=max_categories,
        pii=pii,
    )
    atomic_write_bytes(config_path, text.encode())
    config = load_config(config_path)
    record = seed_store(frame, str(sample), config, open_store(config, create=True))
    return Initialized(config, record, len(suite["expectations"]))
