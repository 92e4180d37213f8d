"""``poisonguard redteam``: adaptive attacks sent through a throw-away copy of your store.

The user's store, config, suite and landing folder are never written: the
store is copied into a temporary folder (the ledger by SQLite's backup, the
files byte for byte, a fresh audit key of its own, so the copy can never write
to the real audit chain), and each attack runs on its own copy of that copy.
Batches land in the copy's ``landing/<source>/`` and go through
:func:`poisonguard.pipeline.process_landing`, the same call as
``poisonguard run --local``. The attacker's rows (the *carrier*) are drawn from
the store's clean training set, rows outside the pinned reference first (a copy
of a trusted row is what the ``duplicates`` detector holds), with new ids; rows
held out for the damage figure are never sent.

The attacks (:data:`ATTACKS`), each at a budget of poisoned rows per batch:

``ratchet``
    ``n_batches`` batches, ``budget`` least-suspicious flips in each, chosen
    before each batch against the gate fitted on the copy's current reference
    (white-box) or on the attacker's own sample (gray-box);
    :func:`poisonguard.attacks.ratchet`.
``many_sources``
    The same, the batches spread over ``n_sources`` landing sources.
``near_copies``
    A probe batch of confident label flips; a reviewer rejects what the gate
    held; the rejected flips come back as near-copies (one number moved by one
    unit in the last place, new ids), ``budget`` per batch among clean rows.
``boundary``
    One batch whose ``budget`` flips the gate finds least suspicious (white-box).
``cluster``
    One batch with ``budget`` made-up rows in a tight cluster inside the suite's
    value ranges, carrying another class.

Per attack, :class:`Figures`: poison sent and accepted (rows of the copy's clean
training set after the last batch), poison in the copy's reference, clean rows out
of that training set (held, rejected or taken back by a later batch), the first batch
a source alarm held whole (quarantined rows of stage ``batch_hold`` whose reason
starts ``source ``), and the damage: test accuracy of a logistic regression on
held-out clean rows, trained on the clean rows alone, on every row sent (no
gate) and on what the gate let through.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from poisonguard.attacks import (
    MAX_RATE,
    clustered_injection,
    least_suspicious_flips,
    near_copies,
    plant,
    ratchet,
    spread_sources,
)
from poisonguard.config import Config
from poisonguard.errors import ConfigError, param_error
from poisonguard.pipeline import data_columns, fit_guard, guard_for, process_landing
from poisonguard.scan import Guard
from poisonguard.sources import SOURCE_ALARM
from poisonguard.store import (
    Store,
    copy_private_tree,
    copy_store,
    default_key_path,
    has_store,
    open_store,
    temporary_folder,
    write_table,
)

#: The attacks ``poisonguard redteam`` knows, in the order it runs them.
ATTACKS: tuple[str, ...] = ("ratchet", "many_sources", "near_copies", "boundary", "cluster")
#: Default budget per attack: poisoned rows per batch (an int), or a share of the batch.
DEFAULT_BUDGETS: dict[str, float] = {
    "ratchet": 2,
    "many_sources": 2,
    "near_copies": 1,
    "boundary": 0.1,
    "cluster": 0.1,
}
#: Attacks that send one batch; the others send ``n_batches``.
ONE_BATCH = ("boundary", "cluster")
KNOWLEDGE = ("white", "gray")
#: Clean rows held out of every attack to measure the damage.
TEST_ROWS = 500
#: Batches are never made smaller than this to fit the clean rows outside the reference.
MIN_BATCH_ROWS = 20
#: The gray-box attacker fits its gate on the carrier rows an attack does not send, when at
#: least this many are left (else on the whole carrier).
MIN_OWN_SAMPLE = 100
ACTOR = "redteam"

Progress = Callable[[int, int, str], None]


# ----------------------------------------------------------------------------- copies


def copy_project(config: Config, folder: str | Path) -> Config:
    """Copy a dataset's store and suite into ``folder``; the copy's config.

    The ledger is copied as a consistent snapshot into an embedded ledger of the
    copy's own (``copy_store``; a PostgreSQL ledger too, so that an attack never
    reaches the team's), the store's files byte for byte (not ``staging/`` or
    lock files), the expectations suite beside them. The copy gets a fresh audit
    key (``<folder>/store.key``), an empty landing folder and ``settle_seconds =
    0`` (its batches are written whole). Nothing of the original is written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    store = folder / "store"
    if not has_store(config.store, config.ledger):
        where = "ledger.sqlite" if config.ledger is None else f"ledger in {config.ledger.shown}"
        raise ConfigError(
            f"no poisonguard store at {config.store} (no {where}): nothing to red-team"
        )
    key = folder / "store.key"
    copy_store(config.store, store, key, config.ledger, config.data)
    suite = folder / "expectations" / config.expectations.name
    suite.parent.mkdir(exist_ok=True)
    shutil.copyfile(config.expectations, suite)
    landing = folder / "landing"
    landing.mkdir(exist_ok=True)
    return replace(
        config,
        path=folder / config.path.name,
        landing=landing,
        store=store,
        audit_key=key,
        expectations=suite,
        settle_seconds=0.0,
        ledger=None,
        data=None,
    )


def clone(config: Config, folder: str | Path) -> Config:
    """Copy a sandbox's folder (:func:`copy_project`, :meth:`Sandbox.seeded`) to ``folder``:
    store, ledger, audit key, suite and landing folder; the copy's config."""
    folder = Path(folder)
    copy_private_tree(config.path.parent, folder)
    key = config.audit_key or default_key_path(config.store)
    rel = {
        name: getattr(config, name).relative_to(config.path.parent)
        for name in ("landing", "store", "expectations")
    }
    return replace(
        config,
        path=folder / config.path.name,
        audit_key=folder / key.relative_to(config.path.parent),
        **{name: folder / p for name, p in rel.items()},
    )


# ----------------------------------------------------------------------------- sending


@dataclass(frozen=True)
class Delivery:
    """What the gate did with one batch the attacker sent.

    Attributes
    ----------
    batch_id : str or None
        None when the file was not taken (a notice instead).
    source : str
        The landing source it was sent from.
    status : str
        ``committed``, ``rejected`` (whole) or ``skipped``.
    accepted : ndarray of shape (n_rows,), bool
        Rows that joined the training set.
    is_poison : ndarray of shape (n_rows,), bool
    resent : ndarray of shape (n_rows,), bool
        Poison rows sent again after being turned away (near-copies).
    alarm : bool
        The batch was held whole because its source alarmed.
    """

    batch_id: str | None
    source: str
    status: str
    accepted: np.ndarray
    is_poison: np.ndarray
    resent: np.ndarray
    alarm: bool


class Sandbox:
    """A store of its own where batches go through the real pipeline, one at a time.

    Parameters
    ----------
    config : Config
        The sandbox's config (:func:`copy_project`, :func:`clone` or :meth:`seeded`).
    trusting : bool, default False
        Today's behaviour before the pinned reference, as a baseline: after each
        batch, its held rows are rejected (as a reviewer would, so that it may be
        promoted) and its accepted rows are promoted into the reference, so the
        reference grows with acceptance.
    """

    def __init__(self, config: Config, *, trusting: bool = False) -> None:
        self.config = config
        self.trusting = trusting
        self.store = open_store(config)
        self.deliveries: list[Delivery] = []
        self.sent: list[pd.DataFrame] = []
        self._files = 0
        self._guard: tuple[str, Guard] | None = None

    @classmethod
    def seeded(
        cls,
        sample: pd.DataFrame,
        folder: str | Path,
        *,
        label: str,
        name: str,
        id_column: str | None = None,
        trusting: bool = False,
    ) -> Sandbox:
        """A new store in ``folder`` seeded with ``sample`` (``poisonguard init``)."""
        from poisonguard.initialize import init_dataset

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_table(folder / "trusted.parquet", sample)
        done = init_dataset(
            folder / "trusted.parquet",
            label=label,
            directory=folder,
            id_column=id_column,
            name=name,
        )
        return cls(replace(done.config, settle_seconds=0.0), trusting=trusting)

    def guard(self) -> Guard:
        """The gate as it is now: detectors fitted on the current reference version."""
        current = self.store.reference()
        digest = "" if current is None else current.digest
        if self._guard is None or self._guard[0] != digest:
            self._guard = (digest, fit_guard(self.config, self.store, current))
        return self._guard[1]

    def reference_frame(self) -> pd.DataFrame:
        current = self.store.reference()
        return pd.DataFrame() if current is None else self.store.reference_frame(current)

    def send(
        self,
        frame: pd.DataFrame,
        is_poison: np.ndarray,
        *,
        source: str,
        resent: np.ndarray | None = None,
    ) -> Delivery:
        """Land ``frame`` as ``landing/<source>/<n>.parquet`` and run the gate over it."""
        self._files += 1
        path = self.config.landing / source / f"{self._files:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_table(path, frame)
        run = process_landing(self.config, self.store)
        n = len(frame)
        is_poison = np.asarray(is_poison, dtype=bool)
        resent = np.zeros(n, dtype=bool) if resent is None else np.asarray(resent, dtype=bool)
        accepted = np.zeros(n, dtype=bool)
        if not run.records:
            delivery = Delivery(None, source, "skipped", accepted, is_poison, resent, False)
        else:
            record = run.records[-1]
            alarm = False
            if record.status == "committed":
                for f in self.store.files("clean"):
                    if f.batch_id == record.batch_id:
                        accepted[self.store.read(f, ["pg_row"])["pg_row"].to_numpy()] = True
                held = self.store.quarantine_frame(record.batch_id)
                alarm = bool(len(held)) and bool(
                    (
                        (held["pg_stage"] == "batch_hold")
                        & held["pg_reason"].astype(str).map(_alarm_reason)
                    ).any()
                )
            delivery = Delivery(
                record.batch_id, source, record.status, accepted, is_poison, resent, alarm
            )
            if self.trusting and record.status == "committed":
                self._trust(record.batch_id)
        self.deliveries.append(delivery)
        self.sent.append(frame.reset_index(drop=True))
        return delivery

    def reject_held(self, batch_id: str | None) -> None:
        """A reviewer rejects every row of the batch that awaits review."""
        from poisonguard.review import review

        record = None if batch_id is None else self.store.batch(batch_id)
        if record is not None and record.rows_quarantined:
            review(self.store, record.batch_id, "reject", by=ACTOR, note="red team: held, rejected")

    def _trust(self, batch_id: str) -> None:
        self.reject_held(batch_id)
        record = self.store.batch(batch_id)
        if record is not None and record.rows_clean:
            self.store.promote([batch_id], actor=ACTOR, note="trusting baseline")

    def poison_in(self, frame: pd.DataFrame) -> int:
        """How many rows of a store frame (with ``pg_batch`` and ``pg_row``) are poison sent here."""
        return self._sent_in(frame, poison=True)

    def clean_in(self, frame: pd.DataFrame) -> int:
        """How many rows of a store frame are clean rows sent here (the seed's are not)."""
        return self._sent_in(frame, poison=False)

    def _sent_in(self, frame: pd.DataFrame, *, poison: bool) -> int:
        if frame.empty:
            return 0
        keys = {
            (d.batch_id, int(r))
            for d in self.deliveries
            if d.batch_id is not None
            for r in np.flatnonzero(d.is_poison == poison)
        }
        pairs = zip(frame["pg_batch"].tolist(), frame["pg_row"].tolist(), strict=True)
        return sum((b, int(r)) in keys for b, r in pairs)


def _alarm_reason(reason: str) -> bool:
    return any(part.strip().startswith(SOURCE_ALARM) for part in reason.split(";"))


# ----------------------------------------------------------------------------- carrier


class Carrier:
    """The attacker's clean rows, handed out in order, each once, with new ids.

    Parameters
    ----------
    rows : DataFrame
        Clean rows (data columns only), in the order they will be taken.
    id_column : str, optional
        Given, every row taken gets a new id: the next integers after
        ``first_id`` for a numeric id column, else ``redteam-<n>``.
    first_id : int
    """

    def __init__(self, rows: pd.DataFrame, id_column: str | None = None, first_id: int = 0) -> None:
        self.rows = rows.reset_index(drop=True)
        self.id_column = id_column
        self.next_id = first_id
        self.taken = 0

    def __len__(self) -> int:
        return len(self.rows) - self.taken

    def take(self, n: int) -> pd.DataFrame:
        """The next ``n`` rows, with new ids."""
        if n > len(self):
            raise ConfigError(
                f"the red team ran out of clean rows: {n} asked, {len(self)} left "
                f"of {len(self.rows)}; use fewer or smaller batches"
            )
        out = self.rows.iloc[self.taken : self.taken + n].reset_index(drop=True)
        self.taken += n
        if self.id_column is not None:
            out[self.id_column] = pd.Series(self.ids(n), dtype=out[self.id_column].dtype)
        return out

    def ids(self, n: int) -> list[Any]:
        """``n`` ids no row of the store nor of this carrier has yet."""
        start, self.next_id = self.next_id, self.next_id + n
        column = self.rows[self.id_column] if self.id_column is not None else None
        if column is not None and pd.api.types.is_numeric_dtype(column):
            return list(range(start, start + n))
        return [f"{ACTOR}-{i}" for i in range(start, start + n)]


def first_free_id(store: Store, id_column: str | None) -> int:
    """One more than the largest numeric id of the store's rows (clean and held); 0 without."""
    if id_column is None:
        return 0
    frames = [store.clean_frame()] + [store.read(f) for f in store.files("quarantine")]
    ids = [
        pd.to_numeric(f[id_column], errors="coerce").max()
        for f in frames
        if id_column in f.columns and len(f)
    ]
    finite = [float(i) for i in ids if pd.notna(i)]
    return int(max(finite)) + 1 if finite else 0


# ----------------------------------------------------------------------------- the plays


@dataclass(frozen=True)
class Play:
    """What an attack needs to know to run: the label, the columns, the batches' shape."""

    label: str
    features: list[str]
    id_column: str | None
    n_batches: int = 16
    batch_rows: int = 100
    n_sources: int = 8
    knowledge: str = "white"
    source: Any = None  # flip only rows of this class
    target: Any = None  # flip only to this class
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    random_state: int = 0


def run_attack(
    attack: str,
    sandbox: Sandbox,
    carrier: Carrier,
    play: Play,
    budget: float,
    own_sample: pd.DataFrame | None = None,
    progress: Progress | None = None,
) -> None:
    """Send one attack's batches through ``sandbox`` (module docstring says what each does).

    ``budget`` is poisoned rows per batch when at least 1, else a share of the
    batch. ``own_sample`` is the gray-box attacker's own rows, which it fits its
    guess of the gate on.
    """
    per_batch = poisoned_rows(budget, play.batch_rows)
    n_batches = 1 if attack in ONE_BATCH else play.n_batches
    done = [0]

    def send(frame: pd.DataFrame, poison: np.ndarray, source: str, **kw: Any) -> Delivery:
        if progress:
            progress(done[0], n_batches, f"{attack}: batch {done[0] + 1}")
        done[0] += 1
        return sandbox.send(frame, poison, source=source, **kw)

    believe: Callable[[], Guard] = sandbox.guard
    if play.knowledge == "gray":
        sample = own_sample if own_sample is not None and len(own_sample) else carrier.rows
        believe = _always(guard_for(sandbox.config).fit(sample))
    if attack in ("ratchet", "many_sources"):
        sources = (
            spread_sources(
                n_batches, play.n_sources, prefix="partner", random_state=play.random_state
            )
            if attack == "many_sources"
            else ["attacker"] * n_batches
        )
        batches = ratchet(
            carrier.take(n_batches * play.batch_rows),
            label=play.label,
            believe=believe,
            n_batches=n_batches,
            per_batch=per_batch,
            batch_rows=play.batch_rows,
            source=play.source,
            target=play.target,
            random_state=play.random_state,
        )
        for batch, source in zip(batches, sources, strict=True):
            send(batch.frame, batch.is_poison, source)
    elif attack == "boundary":
        batch = least_suspicious_flips(
            carrier.take(play.batch_rows),
            label=play.label,
            guard=believe(),
            rate=per_batch / play.batch_rows,
            source=play.source,
            target=play.target,
            random_state=play.random_state,
        )
        send(batch.frame, batch.is_poison, "attacker")
    elif attack == "cluster":
        batch = clustered_injection(
            carrier.take(play.batch_rows),
            label=play.label,
            rate=per_batch / play.batch_rows,
            target=play.target,
            ranges=play.ranges,
            features=play.features,
            random_state=play.random_state,
        )
        send(batch.frame, batch.is_poison, "attacker")
    elif attack == "near_copies":
        _near_copies(sandbox, carrier, play, per_batch, n_batches, send)
    else:
        raise param_error("attack", "run_attack()", f"one of {list(ATTACKS)}", attack)


def _always(guard: Guard) -> Callable[[], Guard]:
    """The gray-box attacker's belief: the guard fitted on its own sample, whatever happens."""
    return lambda: guard


def _near_copies(
    sandbox: Sandbox,
    carrier: Carrier,
    play: Play,
    per_batch: int,
    n_batches: int,
    send: Callable[..., Delivery],
) -> None:
    """A probe of confident flips; what the gate held is rejected; near-copies come back."""
    wanted = min(per_batch * n_batches, math.floor(MAX_RATE * play.batch_rows))
    probe = plant(
        carrier.take(play.batch_rows),
        label=play.label,
        kind="confident_flip",
        rate=wanted / play.batch_rows,
        features=play.features,
        random_state=play.random_state,
    )
    first = send(probe.frame, probe.is_poison, "attacker")
    sandbox.reject_held(first.batch_id)
    turned_away = probe.frame[probe.is_poison & ~first.accepted]
    if turned_away.empty:
        return
    copies = near_copies(
        turned_away,
        label=play.label,
        features=play.features,
        id_column=play.id_column,
        ids=carrier.ids(len(turned_away)) if play.id_column else None,
        random_state=play.random_state,
    )
    rng = np.random.default_rng(play.random_state)
    for start in range(0, len(copies.frame), per_batch):
        part = copies.frame.iloc[start : start + per_batch]
        batch = pd.concat([part, carrier.take(play.batch_rows - len(part))], ignore_index=True)
        poison = np.arange(len(batch)) < len(part)
        order = rng.permutation(len(batch))
        send(
            batch.iloc[order].reset_index(drop=True),
            poison[order],
            "attacker",
            resent=poison[order],
        )


def send_clean(
    sandbox: Sandbox, carrier: Carrier, n_batches: int, batch_rows: int, source: str = "clean"
) -> None:
    """``n_batches`` batches of ``batch_rows`` clean rows from one source."""
    for _ in range(n_batches):
        sandbox.send(carrier.take(batch_rows), np.zeros(batch_rows, dtype=bool), source=source)


def poisoned_rows(budget: float, batch_rows: int) -> int:
    """A budget as rows per batch: itself when at least 1, else that share of the batch."""
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not budget > 0:
        raise param_error("budget", "redteam()", "a number > 0", budget)
    rows = round(budget) if budget >= 1 else round(budget * batch_rows)
    if not 1 <= rows <= MAX_RATE * batch_rows:
        raise param_error(
            "budget",
            "redteam()",
            f"at least one and at most {MAX_RATE:g} x {batch_rows} rows per batch",
            budget,
        )
    return rows


# ----------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class Damage:
    """Test accuracy of a quick model trained three ways, overall and on the class poison hurt most.

    Attributes
    ----------
    clean, no_gate, gated : float
        Trained on the clean rows alone (the training set before the attack and
        the clean rows sent), on those and every poison row sent, and on the
        training set the gate left.
    attacked_class : object
        The class whose accuracy fell most from ``clean`` to ``no_gate``.
    class_clean, class_no_gate, class_gated : float
        Accuracy on test rows of that class.
    """

    clean: float
    no_gate: float
    gated: float
    attacked_class: Any
    class_clean: float
    class_no_gate: float
    class_gated: float


def quick_accuracy(
    train: pd.DataFrame, test: pd.DataFrame, guard: Guard
) -> tuple[float, dict[Any, float]]:
    """Accuracy (overall, per class) on ``test`` of a logistic regression trained on ``train``,
    on the columns as ``guard``'s encoder turns them into numbers."""
    from sklearn.linear_model import LogisticRegression

    label = str(guard.label)
    x = guard.encoder_.transform(train, "training set", errors="coerce").X
    model = LogisticRegression(max_iter=1000).fit(x, train[label].astype(str).to_numpy())
    truth = test[label].astype(str).to_numpy()
    hit = model.predict(guard.encoder_.transform(test, "test rows").X) == truth
    per_class = {c: float(hit[truth == c].mean()) for c in sorted(set(truth.tolist()))}
    return float(hit.mean()), per_class


def damage(sandbox: Sandbox, base: pd.DataFrame, test: pd.DataFrame, guard: Guard) -> Damage:
    """The damage of the batches sent through ``sandbox`` (see :class:`Damage`).

    ``base`` is the training set before the attack, ``test`` held-out clean rows
    (left out of every training set by ``pg_batch`` and ``pg_row`` where they
    have them); ``guard`` encodes the columns.
    """
    columns = data_columns(base)
    sent = [f[columns] for f in sandbox.sent]
    poison = [d.is_poison for d in sandbox.deliveries]
    clean_sent = [f[~p] for f, p in zip(sent, poison, strict=True)]
    bad_sent = [f[p] for f, p in zip(sent, poison, strict=True)]
    gated = _without(sandbox.store.clean_frame(), test)
    base = _without(base, test)
    frames = {
        "clean": pd.concat([base[columns], *clean_sent], ignore_index=True),
        "no_gate": pd.concat([base[columns], *clean_sent, *bad_sent], ignore_index=True),
        "gated": gated[columns],
    }
    scores = {name: quick_accuracy(frame, test, guard) for name, frame in frames.items()}
    drop = {c: scores["clean"][1][c] - scores["no_gate"][1][c] for c in scores["clean"][1]}
    worst = max(drop, key=lambda c: drop[c])
    return Damage(
        scores["clean"][0],
        scores["no_gate"][0],
        scores["gated"][0],
        worst,
        scores["clean"][1][worst],
        scores["no_gate"][1][worst],
        scores["gated"][1][worst],
    )


def _without(frame: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    if "pg_batch" not in test.columns or frame.empty:
        return frame
    keys = set(zip(test["pg_batch"], test["pg_row"], strict=True))
    keep = [(b, r) not in keys for b, r in zip(frame["pg_batch"], frame["pg_row"], strict=True)]
    return frame[np.array(keep, dtype=bool)]


@dataclass(frozen=True)
class Figures:
    """What one attack achieved through the gate.

    Attributes
    ----------
    attack : str
    budget : int
        Poisoned rows per batch.
    batches : int
        Batches sent (the near-copies' probe included).
    batch_rows : int
    poison_sent, poison_accepted : int
        Poison rows sent, and those in the training set afterwards.
    poison_in_reference : int
        Poison rows in the pinned reference afterwards.
    clean_sent, clean_held : int
        Clean rows sent, and those not in the training set afterwards (held, rejected, or
        taken back for review by a later batch).
    first_alarm : int or None
        The 1-based number of the first batch a source alarm held whole; None if none did.
    resent, resent_accepted : int
        Turned-away poison rows sent again (near-copies), and those accepted.
    damage : Damage or None
    seconds : float
    canary : str
        The gate's canary on the training set the attack left (``refuses``, ``passes``, or
        ``unable: <why>``): whether a training job would have been stopped.
    """

    attack: str
    budget: int
    batches: int
    batch_rows: int
    poison_sent: int
    poison_accepted: int
    poison_in_reference: int
    clean_sent: int
    clean_held: int
    first_alarm: int | None
    resent: int
    resent_accepted: int
    damage: Damage | None
    seconds: float
    canary: str = "not run"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.damage is not None:
            out["damage"]["attacked_class"] = str(self.damage.attacked_class)
        return out


def figures(
    attack: str,
    budget: int,
    sandbox: Sandbox,
    batch_rows: int,
    damage_of: Damage | None = None,
    seconds: float = 0.0,
) -> Figures:
    """Count what the gate did with every batch ``sandbox`` sent."""
    ds = sandbox.deliveries
    alarms = [i + 1 for i, d in enumerate(ds) if d.alarm]
    training = sandbox.store.clean_frame()
    clean_sent = sum(int((~d.is_poison).sum()) for d in ds)
    return Figures(
        attack=attack,
        budget=budget,
        batches=len(ds),
        batch_rows=batch_rows,
        poison_sent=sum(int(d.is_poison.sum()) for d in ds),
        poison_accepted=sandbox.poison_in(training),
        poison_in_reference=sandbox.poison_in(sandbox.reference_frame()),
        clean_sent=clean_sent,
        clean_held=clean_sent - sandbox.clean_in(training),
        first_alarm=alarms[0] if alarms else None,
        resent=sum(int(d.resent.sum()) for d in ds),
        resent_accepted=sum(int((d.resent & d.accepted).sum()) for d in ds),
        damage=damage_of,
        seconds=seconds,
        canary=_canary(sandbox),
    )


def _canary(sandbox: Sandbox) -> str:
    """The gate's canary verdict on the sandbox's training set against its reference."""
    from poisonguard.canary import run_canary

    result = run_canary(sandbox.reference_frame(), sandbox.store.clean_frame(), sandbox.config)
    if result.unable:
        return f"unable: {result.unable}"
    return "refuses" if result.reasons else "passes"


# ----------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class RedTeam:
    """A red-team run: every attack's figures and how the attacker's rows were drawn.

    Attributes
    ----------
    figures : list of Figures
    carrier_rows : int
        Clean rows the attacker could send.
    carrier_from_reference : int
        Of those, copies of rows of the pinned reference (taken only when the rows
        outside it ran short; the ``duplicates`` detector holds some of them, so
        clean rows held reads high).
    test_rows : int
    batch_rows : int
    knowledge : str
    """

    figures: list[Figures]
    carrier_rows: int
    carrier_from_reference: int
    test_rows: int
    batch_rows: int
    knowledge: str

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["figures"] = [f.as_dict() for f in self.figures]
        return out


def redteam(
    config: Config,
    *,
    attacks: Sequence[str] | None = None,
    budgets: Sequence[float] | None = None,
    n_batches: int = 16,
    batch_rows: int = 100,
    n_sources: int = 8,
    knowledge: str = "white",
    random_state: int = 0,
    progress: Progress | None = None,
) -> RedTeam:
    """Run adaptive attacks through throw-away copies of the dataset's store (module docstring).

    Parameters
    ----------
    config : Config
        The dataset; its store is read, never written.
    attacks : sequence of str, optional
        Names from :data:`ATTACKS` (default all).
    budgets : sequence of float, optional
        Each attack runs once per budget: poisoned rows per batch (>= 1) or a
        share of the batch (< 1). Default :data:`DEFAULT_BUDGETS`.
    n_batches, batch_rows, n_sources : int
        Batches per multi-batch attack, rows per batch (fewer when the store has
        too few clean rows), landing sources of ``many_sources``.
    knowledge : {"white", "gray"}
        What the attacker fits its guess of the gate on: the store's pinned
        reference, or its own sample (the carrier rows the attack does not send).
    random_state : int
    progress : callable, optional
        ``progress(done, total, what)`` per batch.

    Raises
    ------
    ConfigError
        Without a class label, for unknown attacks or bad counts, or with too few
        clean rows to attack with.
    """
    attacks = list(attacks or ATTACKS)
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise param_error("attacks", "redteam()", f"names from {list(ATTACKS)}", unknown[0])
    if knowledge not in KNOWLEDGE:
        raise param_error("knowledge", "redteam()", f"one of {KNOWLEDGE}", knowledge)
    for name, value in (
        ("n_batches", n_batches),
        ("batch_rows", batch_rows),
        ("n_sources", n_sources),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise param_error(name, "redteam()", "an int >= 1", value)
    if config.label is None:
        raise ConfigError("redteam flips and injects labels, so the config needs dataset.label")
    with temporary_folder("poisonguard-redteam-") as tmp:
        template = copy_project(config, tmp / "template")
        first = Sandbox(template)
        guard = first.guard()
        if guard.encoder_.task != "classification":
            raise ConfigError(
                "redteam's attacks flip class labels; this dataset's label is a target"
            )
        carrier, test, outside, rows = _draw(first, guard, n_batches, batch_rows, random_state)
        base = first.store.clean_frame()
        from poisonguard.validation import load_suite, value_ranges

        play = Play(
            label=config.label,
            features=list(guard.features_),
            id_column=config.id_column,
            n_batches=n_batches,
            batch_rows=rows,
            n_sources=n_sources,
            knowledge=knowledge,
            ranges=value_ranges(load_suite(template.expectations)),
            random_state=random_state,
        )
        runs = [(a, b) for a in attacks for b in (budgets or [DEFAULT_BUDGETS[a]])]
        for _, b in runs:
            poisoned_rows(b, rows)  # every budget checked before the first attack runs
        out = []
        first_id = first_free_id(first.store, config.id_column)
        for i, (attack, budget) in enumerate(runs):
            started = time.perf_counter()
            sandbox = Sandbox(clone(template, tmp / f"attack-{i}"))
            own = Carrier(carrier, config.id_column, first_id)
            needed = rows * (1 if attack in ONE_BATCH else n_batches)
            run_attack(
                attack,
                sandbox,
                own,
                play,
                budget,
                own_sample=carrier.iloc[needed:]
                if len(carrier) >= needed + MIN_OWN_SAMPLE
                else None,
                progress=progress,
            )
            hurt = damage(sandbox, base, test, guard)
            out.append(
                figures(
                    attack,
                    poisoned_rows(budget, rows),
                    sandbox,
                    rows,
                    hurt,
                    time.perf_counter() - started,
                )
            )
            shutil.rmtree(sandbox.config.path.parent, ignore_errors=True)
        used = max((f.clean_sent + f.poison_sent for f in out), default=0)
        return RedTeam(
            figures=out,
            carrier_rows=len(carrier),
            carrier_from_reference=max(0, used - outside),
            test_rows=len(test),
            batch_rows=rows,
            knowledge=knowledge,
        )


def _draw(
    sandbox: Sandbox, guard: Guard, n_batches: int, batch_rows: int, random_state: int
) -> tuple[pd.DataFrame, pd.DataFrame, int, int]:
    """The carrier (rows outside the reference first), the test rows, how many carrier rows
    lie outside the reference, and the rows per batch the carrier allows."""
    clean = sandbox.store.clean_frame()
    if clean.empty:
        raise ConfigError(f"the store {sandbox.config.store} has no clean rows to attack with")
    rng = np.random.default_rng(random_state)
    order = rng.permutation(len(clean))
    n_test = min(TEST_ROWS, len(clean) // 5)
    test = clean.iloc[order[:n_test]].reset_index(drop=True)
    rest = clean.iloc[order[n_test:]]
    reference = sandbox.reference_frame()
    trusted = set(zip(reference["pg_batch"], reference["pg_row"], strict=True))
    inside = np.array(
        [(b, r) in trusted for b, r in zip(rest["pg_batch"], rest["pg_row"], strict=True)],
        dtype=bool,
    )
    carrier = pd.concat([rest[~inside], rest[inside]], ignore_index=True)
    carrier = carrier[data_columns(carrier)]
    outside = int((~inside).sum())
    # Batches as large as asked, or as the rows outside the reference allow.
    rows = min(batch_rows, max(outside // n_batches, MIN_BATCH_ROWS))
    if n_batches * rows > len(carrier):
        raise ConfigError(
            f"the store has {len(carrier)} clean rows to attack with; {n_batches} batches of "
            f"{rows} rows need {n_batches * rows}: use --batches or --batch-rows"
        )
    return carrier, test, outside, rows


def figures_table(run: RedTeam) -> list[dict[str, Any]]:
    """One row per attack for a printed table."""
    rows = []
    for f in run.figures:
        d = f.damage
        rows.append(
            {
                "attack": f.attack,
                "budget": f"{f.budget}/{f.batch_rows}",
                "batches": f.batches,
                "poison sent": f.poison_sent,
                "accepted": f.poison_accepted,
                "in reference": f.poison_in_reference,
                "clean held": f"{f.clean_held}/{f.clean_sent}",
                "alarm at": "none" if f.first_alarm is None else f.first_alarm,
                "canary": f.canary,
                "acc clean/no gate/gated": "-"
                if d is None
                else f"{d.clean:.3f}/{d.no_gate:.3f}/{d.gated:.3f}",
                "class": "-" if d is None else str(d.attacked_class),
                "class acc": "-"
                if d is None
                else f"{d.class_clean:.3f}/{d.class_no_gate:.3f}/{d.class_gated:.3f}",
            }
        )
    return rows
