"""``poisonguard selftest``: plant known attacks in your own trusted data and see what the gate catches.

The store's clean training set is shuffled and split: one part plays the trusted
reference, the other the incoming batch. Each attack kind is planted in the batch
at the given rate, the configured detectors and decision judge it, and the
quarantine is compared with what was planted. A poison-free batch shows how many
clean rows the gate holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from poisonguard.attacks import (
    CATEGORICAL_ATTACKS,
    CLASSIFICATION_ATTACKS,
    REGRESSION_ATTACKS,
    plant,
)
from poisonguard.config import Config
from poisonguard.errors import ConfigError, param_error
from poisonguard.pipeline import data_columns
from poisonguard.scan import Guard
from poisonguard.store import open_store

#: The smallest clean set a selftest can split into a reference and a batch.
MIN_ROWS = 100


def selftest(
    config: Config,
    *,
    attacks: Sequence[str] | None = None,
    rate: float = 0.1,
    seeds: Sequence[int] = (0,),
    reference_share: float = 0.6,
    progress: Callable[[int, int, str], None] | None = None,
) -> pd.DataFrame:
    """What the configured gate catches of each attack kind planted in the store's clean set.

    ``attacks`` defaults to every kind for the label's task
    (``poisonguard.attacks.CLASSIFICATION_ATTACKS`` or ``REGRESSION_ATTACKS``), less
    the kinds that need a categorical column when the table has none.

    Returns
    -------
    DataFrame
        One row per attack kind (plus ``none``, a poison-free batch): rows, planted,
        quarantined, caught, precision, recall, f1, averaged over ``seeds``.
    """
    if config.label is None:
        raise ConfigError("selftest plants label attacks, so the config needs dataset.label")
    if not 0.0 < rate <= 0.5:
        raise param_error("rate", "selftest()", "in (0, 0.5]", rate)
    if not 0.1 <= reference_share <= 0.9:
        raise param_error("reference_share", "selftest()", "in [0.1, 0.9]", reference_share)
    clean = open_store(config).clean_frame()
    if len(clean) < MIN_ROWS:
        raise ConfigError(
            f"selftest needs at least {MIN_ROWS} clean rows in {config.store}; it has {len(clean)}"
        )
    clean = clean[data_columns(clean)]
    features = list(config.features) or None
    rows: list[dict] = []
    done = 0
    for seed in seeds:
        order = np.random.default_rng(seed).permutation(len(clean))
        cut = int(reference_share * len(clean))
        reference = clean.iloc[order[:cut]].reset_index(drop=True)
        batch = clean.iloc[order[cut:]].reset_index(drop=True)
        guard = Guard(
            label=config.label,
            features=features,
            id_column=config.id_column,
            settings=config.detection,
            columns=config.columns,
            task=config.task,
            max_categories=config.max_categories,
        ).fit(reference)
        if attacks is None:
            attacks = _default_attacks(guard)
        known = _default_attacks(guard, all_kinds=True)
        unknown = [a for a in attacks if a not in known]
        if unknown:
            raise param_error("attacks", "selftest()", f"names from {list(known)}", unknown[0])
        total = len(seeds) * (len(attacks) + 1)
        for kind in ("none", *attacks):
            if progress:
                progress(done, total, f"seed {seed}: {kind}")
            done += 1
            if kind == "none":
                frame, poison = batch, np.zeros(len(batch), dtype=bool)
            else:
                planted = plant(
                    batch,
                    label=config.label,
                    kind=kind,
                    rate=rate,
                    features=list(guard.features_),
                    reference=reference,
                    random_state=seed,
                )
                frame, poison = planted.frame, planted.is_poison
            held = guard.scan(frame).quarantined.to_numpy(dtype=bool)
            caught = int((held & poison).sum())
            rows.append(
                {
                    "attack": kind,
                    "seed": seed,
                    "rows": len(frame),
                    "planted": int(poison.sum()),
                    "quarantined": int(held.sum()),
                    "caught": caught,
                }
            )
    table = (
        pd.DataFrame(rows)
        .groupby("attack", sort=False)[["rows", "planted", "quarantined", "caught"]]
        .sum()
        .reset_index()
    )
    table["precision"] = table["caught"] / table["quarantined"].where(table["quarantined"] > 0)
    table["recall"] = table["caught"] / table["planted"].where(table["planted"] > 0)
    table["f1"] = (
        2
        * table["caught"]
        / (table["planted"] + table["quarantined"]).where(
            table["planted"] + table["quarantined"] > 0
        )
    )
    return table


def _default_attacks(guard: Guard, *, all_kinds: bool = False) -> tuple[str, ...]:
    """The attack kinds for the guard's task; without categorical columns, those that need
    none (unless ``all_kinds``)."""
    kinds = REGRESSION_ATTACKS if guard.encoder_.task == "regression" else CLASSIFICATION_ATTACKS
    if all_kinds or guard.reference_.codes.shape[1]:
        return kinds
    return tuple(k for k in kinds if k not in CATEGORICAL_ATTACKS)
