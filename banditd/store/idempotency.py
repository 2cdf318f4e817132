"""Idempotency keys (FeedbackRequest.idempotency_key): a resend of a feedback event its decision
has recorded (a retry whose answer was lost, an upload sent again) is answered as that event,
never logged again, whatever the router's ``combine``.

A resend is looked for only where the log or the parked table refused an event as a duplicate:
the append does that under the router's append lock, so a resend sees every event committed
before it, and the unique index on (decision, key) makes sure that two resends never both
commit. The first signal's own check (one per decision) or a later signal's look at its
decision's signals finds it (banditd.store.events); parking finds the decision's feedback there
already (banditd.store.pending)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from banditd.domain import FeedbackEvent
from banditd.errors import AlreadyExists, Recorded
from banditd.store.feedback_decisions import among
from banditd.store.models import feedback_events, feedback_pending


async def answer_recorded(
    conn: AsyncConnection, events: Sequence[FeedbackEvent], duplicates: dict[int, AlreadyExists]
) -> None:
    """Make Recorded each of ``duplicates`` (positions into ``events``) whose idempotency key
    its decision has logged, this transaction's rows included: the logged event's id, reward and
    cost as its Feedback was answered (a later signal's cost is its decision's, the sum of the
    changes its signals up to it logged)."""
    keyed = [p for p in duplicates if events[p].idempotency_key is not None]
    if not keyed:
        return
    fe, earlier = feedback_events.c, feedback_events.alias("earlier").c
    cost = (
        select(func.sum(earlier.cost_usd))
        .where(earlier.decision_id == fe.decision_id, earlier.signal <= fe.signal)
        .scalar_subquery()
    )
    rows = await conn.execute(
        select(fe.decision_id, fe.idempotency_key, fe.id, fe.reward, cost).where(
            among(conn, fe.decision_id, [events[p].decision_id for p in keyed]),
            among(conn, fe.idempotency_key, [str(events[p].idempotency_key) for p in keyed]),
        )
    )
    found = {(r[0], r[1]): (int(r[2]), float(r[3]), float(r[4])) for r in rows}
    for p in keyed:
        e = events[p]
        if (answer := found.get((e.decision_id, e.idempotency_key))) is not None:
            duplicates[p] = Recorded(
                f"decision {e.decision_id} already has the event of this idempotency_key "
                f"(event {answer[0]})",
                *answer,
            )


async def recorded_keys(conn: AsyncConnection, keys: Mapping[str, str]) -> dict[str, int]:
    """Of decisions and the idempotency key each one's feedback came with, those that have it
    recorded, logged or parked (in any state: its Feedback was answered): the id of its event,
    0 while it has none (parked, or refused or orphaned there)."""
    if not keys:
        return {}
    ids, wanted = list(keys), list(keys.values())
    found: dict[str, int] = {}
    for table in (feedback_pending, feedback_events):  # a logged event's id wins
        rows = await conn.execute(
            select(table.c.decision_id, table.c.idempotency_key, table.c.id).where(
                among(conn, table.c.decision_id, ids), among(conn, table.c.idempotency_key, wanted)
            )
        )
        logged = table is feedback_events
        found.update((r[0], int(r[2]) if logged else 0) for r in rows if keys[r[0]] == r[1])
    return found
