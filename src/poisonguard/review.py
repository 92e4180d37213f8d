"""Quarantine review: list what waits, show it, release or reject rows, with an audit trail.

A row is reviewed at most once. Repeating an action a row already had is a
no-op; asking for the other action on it is an error naming who decided it and
when. Released rows join the clean training set; rejected rows go on a
blocklist, so a near-copy of one arriving again in any batch (within the
duplicates detector's tolerance, whatever its id; see
``pipeline.held_by_blocklist``) is held with the reason ``near-copy of a row
rejected on DATE by NAME (batch B, row R)``.

A reviewer may also revoke a whole committed batch (``revoke``): its rows leave
the training set and the reference, and are treated as rejected from then on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pandas as pd

from poisonguard.errors import ReviewError, param_error
from poisonguard.store import PROVENANCE, Revocation, Store, crash_point, now

if TYPE_CHECKING:
    from poisonguard.config import Config
    from poisonguard.pipeline import RescanReport

ACTIONS = ("release", "reject")


@dataclass(frozen=True)
class Awaiting:
    """A batch with quarantined rows, and how many of them still await review.

    Attributes
    ----------
    awaiting : int
        Rows held and not yet released or rejected (the ledger's quarantined
        count, which reviews already decrease: never subtract ``reviewed`` again).
    reviewed : int
        Rows of the batch reviewers have released or rejected so far.
    """

    batch_id: str
    source: str
    awaiting: int
    reviewed: int
    since: str
    age_seconds: float


def awaiting_review(store: Store, now: datetime | None = None) -> list[Awaiting]:
    """Batches that had rows quarantined, oldest first (``awaiting`` may be 0)."""
    now = now or datetime.now(UTC)
    reviews = store.reviews()
    done = reviews.groupby("batch_id").size().to_dict() if len(reviews) else {}
    out = []
    for rec in store.batches():
        reviewed = int(done.get(rec.batch_id, 0))
        if rec.status != "committed" or rec.rows_quarantined + reviewed <= 0:
            continue
        since = datetime.fromisoformat(rec.finished_at)
        out.append(
            Awaiting(
                rec.batch_id,
                rec.source,
                rec.rows_quarantined,
                reviewed,
                rec.finished_at,
                (now - since).total_seconds(),
            )
        )
    return out


def held_rows(store: Store, batch_id: str) -> pd.DataFrame:
    """A batch's quarantined rows with their review state (``pending``, ``release``, ``reject``)."""
    if store.batch(batch_id) is None:
        raise ReviewError(f"no batch {batch_id!r} in the store {store.root}")
    rows = store.quarantine_frame(batch_id)
    if rows.empty:
        return rows
    reviews = store.reviews(batch_id).set_index("pg_row")
    rows["pg_review"] = rows["pg_row"].map(reviews["action"]).fillna("pending")
    rows["pg_reviewed_by"] = rows["pg_row"].map(reviews["actor"]).fillna("")
    return rows.sort_values(
        "pg_suspicion" if "pg_suspicion" in rows else "pg_row", ascending=False, na_position="first"
    ).reset_index(drop=True)


@dataclass(frozen=True)
class ReviewResult:
    action: str
    batch_id: str
    applied: tuple[int, ...]
    already: tuple[int, ...]


def review(
    store: Store,
    batch_id: str,
    action: str,
    *,
    by: str,
    note: str,
    rows: list[int] | None = None,
    id_column: str | None = None,
) -> ReviewResult:
    """Release or reject a batch's quarantined rows (all pending ones when ``rows`` is None).

    The whole review runs under the store's write lock, so two reviewers of one
    batch take turns: the second sees the first one's decisions.

    Raises
    ------
    ReviewError
        For an unknown batch or row, an empty reviewer name or note, a row that
        was already given the other action, or (with ``id_column``) the release
        of a row whose id is already in the training set.
    """
    _check_review(action, by, note)
    with store.writing():
        todo, already, chosen = _choose(store, batch_id, action, rows)
        if todo and action == "release" and id_column is not None and id_column in chosen:
            _check_new_ids(store, batch_id, chosen.set_index("pg_row")[id_column], id_column)
        if todo:
            store.commit_review(batch_id, action, chosen, actor=by.strip(), note=note.strip())
        return ReviewResult(action, batch_id, tuple(todo), tuple(already))


@dataclass(frozen=True)
class Rejection:
    """What ``reject`` did: the review, and the re-scan of the batch's source (None when
    the store has no reference or no row was newly rejected) with the rows it held per
    batch."""

    review: ReviewResult
    rescan: RescanReport | None
    held: dict[str, int]


def reject(
    config: Config,
    store: Store,
    batch_id: str,
    *,
    by: str,
    note: str,
    rows: list[int] | None = None,
) -> Rejection:
    """Reject a batch's quarantined rows (all pending ones when ``rows`` is None) and
    re-score what its source sent since its last clean checkpoint, with them known-bad
    (``pipeline.rescan_after_rejection``: what that re-scan flags is held for review).

    The re-scan is held first and the rejection recorded after, so a run killed in
    between leaves rows held and the rejection to make again (fail closed), never a
    rejection whose re-scan was lost. The rejection is of the rows asked for when the
    re-scan began, not of rows of the batch the re-scan itself held.

    Raises
    ------
    ReviewError
        As ``review``.
    """
    rescanned: RescanReport | None = None
    held: dict[str, int] = {}
    already: list[int] = []
    if store.reference() is not None:
        _check_review("reject", by, note)
        with store.writing():
            _, already, chosen = _choose(store, batch_id, "reject", rows)
        if len(chosen):
            # Here, not at the top: the gate imports this module, and needs no detectors.
            from poisonguard.pipeline import rescan_after_rejection

            bad = chosen.assign(pg_batch=batch_id, pg_rejected_at=now(), pg_rejected_by=by.strip())
            rescanned, held = rescan_after_rejection(config, store, bad, actor=by)
            crash_point("after-rejection-rescan")
            rows = [int(r) for r in chosen["pg_row"]]
    done = review(
        store, batch_id, "reject", by=by, note=note, rows=rows, id_column=config.id_column
    )
    if already:  # rows rejected before the re-scan began, left out of the rows asked for
        done = ReviewResult(done.action, batch_id, done.applied, (*already, *done.already))
    return Rejection(done, rescanned, held)


def _check_review(action: str, by: str, note: str) -> None:
    if action not in ACTIONS:
        raise param_error("action", "review()", f"one of {ACTIONS}", action)
    if not by.strip():
        raise ReviewError("a review needs the reviewer's name (--by NAME)")
    if not note.strip():
        raise ReviewError("a review needs a note saying why (--note TEXT)")


def _choose(
    store: Store, batch_id: str, action: str, rows: list[int] | None
) -> tuple[list[int], list[int], pd.DataFrame]:
    """The rows a review of ``batch_id`` would change (``todo``), those it already gave
    ``action`` (``already``), and ``todo``'s rows as ``Store.commit_review`` takes them."""
    held = held_rows(store, batch_id)
    record = store.batch(batch_id)
    if record is not None and record.status == "revoked":
        raise ReviewError(
            f"batch {batch_id} was {record.reason}; its rows stay out of the training set"
        )
    if held.empty:
        raise ReviewError(f"batch {batch_id} has no quarantined rows")
    by_row = held.set_index("pg_row")
    wanted = list(by_row.index) if rows is None else list(dict.fromkeys(int(r) for r in rows))
    unknown = [r for r in wanted if r not in by_row.index]
    if unknown:
        raise ReviewError(
            f"batch {batch_id} has no quarantined row {unknown[0]} "
            f"(held rows: {', '.join(map(str, sorted(by_row.index)[:20]))}"
            f"{', ...' if len(by_row) > 20 else ''})"
        )
    reviews = store.reviews(batch_id).set_index("pg_row")
    already, todo = [], []
    for r in wanted:
        if r in reviews.index:
            prior = reviews.loc[r]
            if prior["action"] == action:
                already.append(r)
            elif rows is not None:
                raise ReviewError(
                    f"row {r} of batch {batch_id} was already {_past(prior['action'])} "
                    f"on {prior['at'][:10]} by {prior['actor']}; a row is reviewed once"
                )
        else:
            todo.append(r)
    chosen = by_row.loc[todo].reset_index()
    keep = [c for c in chosen.columns if not str(c).startswith("pg_") or c in PROVENANCE]
    return todo, already, chosen[keep]


def revoke(store: Store, batch_id: str, *, actor: str, note: str) -> Revocation:
    """Revoke a committed batch: its rows leave the training set and the reference.

    Use it when a batch turns out to be bad after it was accepted (its source
    alarmed, a reviewer found poison among its accepted rows). A revoked batch is
    judged bad as a whole, so its rows are treated as rejected ones: its clean
    rows (released ones included) leave the training set, rows still awaiting
    review are rejected, and all of them join the blocklist, so that near-copies
    sent again are held. If the batch is in the current reference, a new
    reference version without it judges the batches after it; rows other batches
    had accepted against the old version are what ``pipeline.rescan`` re-scores.
    Nothing is deleted: the clean files stay, listed as ``revoked``. Revoking a
    revoked batch changes nothing.

    Raises
    ------
    ReviewError
        For an empty actor or note, an unknown batch, a batch rejected whole, or
        the seed.
    """
    return store.revoke(batch_id, actor=actor, note=note)


def _check_new_ids(store: Store, batch_id: str, ids: pd.Series, id_column: str) -> None:
    taken = ids.index[store.id_owners(id_column).find(store.value_keys(ids)) >= 0].tolist()
    if taken:
        raise ReviewError(
            f"row {taken[0]} of batch {batch_id} cannot be released: its {id_column} is "
            f"already in the training set ({len(taken)} such rows); reject it instead"
        )


def _past(action: str) -> str:
    return {"release": "released", "reject": "rejected"}[action]
