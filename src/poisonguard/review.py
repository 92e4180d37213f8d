"""Quarantine review: list what waits, show it, release or reject rows, with an audit trail.

A row is reviewed at most once. Repeating an action a row already had is a
no-op; asking for the other action on it is an error naming who decided it and
when. Released rows join the clean training set; rejected rows' content hashes
go to a blocklist, so the same row arriving again in any batch is held with the
reason ``previously rejected on DATE by NAME``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd

from poisonguard.errors import ReviewError, param_error
from poisonguard.store import Store

ACTIONS = ("release", "reject")


@dataclass(frozen=True)
class Pending:
    """A batch with quarantined rows that no one has reviewed yet."""

    batch_id: str
    source: str
    pending: int
    reviewed: int
    since: str
    age_seconds: float


def pending(store: Store, now: datetime | None = None) -> list[Pending]:
    """Batches with rows awaiting review, oldest first."""
    now = now or datetime.now(UTC)
    reviews = store.reviews()
    done = reviews.groupby("batch_id").size().to_dict() if len(reviews) else {}
    out = []
    for rec in store.batches():
        if rec.status != "committed":
            continue
        held = rec.rows_quarantined
        if held <= 0:
            continue
        since = datetime.fromisoformat(rec.finished_at)
        out.append(
            Pending(
                rec.batch_id,
                rec.source,
                held,
                int(done.get(rec.batch_id, 0)),
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
) -> ReviewResult:
    """Release or reject a batch's quarantined rows (all pending ones when ``rows`` is None).

    Raises
    ------
    ReviewError
        For an unknown batch or row, an empty reviewer name or note, or a row
        that was already given the other action.
    """
    if action not in ACTIONS:
        raise param_error("action", "review()", f"one of {ACTIONS}", action)
    if not by.strip():
        raise ReviewError("a review needs the reviewer's name (--by NAME)")
    if not note.strip():
        raise ReviewError("a review needs a note saying why (--note TEXT)")
    held = held_rows(store, batch_id)
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
    if todo:
        chosen = by_row.loc[todo].reset_index()
        keep = [
            c
            for c in chosen.columns
            if not str(c).startswith("pg_") or c in ("pg_batch", "pg_row", "pg_row_hash")
        ]
        store.commit_review(batch_id, action, chosen[keep], actor=by.strip(), note=note.strip())
    return ReviewResult(action, batch_id, tuple(todo), tuple(already))


def _past(action: str) -> str:
    return {"release": "released", "reject": "rejected"}[action]
