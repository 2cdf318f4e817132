"""Decisions as Feedback reads them (issue 20): a compact token's x, arm and costs, in one query
per batch, with nothing more decoded than the join needs.

``joined`` (banditd.flows.feedback_join) takes a decision's x, arm, propensity, expected cost
and challenger (and, for a compared decision only, the challenger's expected cost from the
ranking). Building whole decisions here (every ranking, candidates and metadata decoded from
JSON, a RankedArm per arm) cost more than the rest of the feedback path together, so the
decisions read here leave out ``candidates``, ``metadata`` and ``token``, and carry their
``ranking`` only when they compared two arms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, String, any_, case, literal, null, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from banditd.domain import Decision, RankedArm
from banditd.store.models import decisions, routers

_COMPARED_RANKING = case(
    (decisions.c.challenger.is_(None), null()), else_=decisions.c.ranking
).label("ranking")

_QUERY = select(
    decisions.c.id,
    decisions.c.router_id,
    decisions.c.request_id,
    decisions.c.arm,
    decisions.c.propensity,
    decisions.c.explored,
    decisions.c.expected_cost_usd,
    decisions.c.policy,
    decisions.c.router_version,
    decisions.c.seed,
    decisions.c.x,
    decisions.c.context_version,
    decisions.c.challenger,
    decisions.c.expires_at,
    decisions.c.created_at,
    _COMPARED_RANKING,
    routers.c.tenant,
    routers.c.name.label("router_name"),
).join(routers, routers.c.id == decisions.c.router_id)


def among(
    conn: AsyncConnection, column: ColumnElement[str], ids: Sequence[str]
) -> ColumnElement[bool]:
    """``column IN ids``; on Postgres as one array parameter (``= ANY``): one statement, prepared
    once, whatever the count, instead of a parameter per id."""
    if conn.dialect.name == "postgresql":
        return column == any_(literal(list(ids), postgresql.ARRAY(String)))
    return column.in_(ids)


async def decisions_for_feedback(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, Decision]:
    """The visible decisions of ``ids``, by id (see the module's docstring for what they
    leave out)."""
    if not ids:
        return {}
    result = await conn.execute(_QUERY.where(among(conn, decisions.c.id, ids)))
    rows: list[Any] = list(result.all())  # Rows unpack as tuples
    return {row[0]: _decision(*row) for row in rows}


def _decision(
    decision_id: str,
    router_id: int,
    request_id: str | None,
    arm: str,
    propensity: float,
    explored: bool,
    expected_cost_usd: float,
    policy: str,
    router_version: int,
    seed: int,
    x: bytes | None,
    context_version: str | None,
    challenger: str | None,
    expires_at: float,
    created_at: float,
    ranking: list[list[Any]] | None,
    tenant: str,
    router: str,
) -> Decision:
    """A row of _QUERY, unpacked by position (far cheaper than by name, row after row)."""
    return Decision(
        decision_id=decision_id,
        router_id=router_id,
        tenant=tenant,
        router=router,
        request_id=request_id,
        arm=arm,
        ranking=()
        if ranking is None
        else tuple(RankedArm(str(r[0]), *(float(v) for v in r[1:6])) for r in ranking),
        propensity=propensity,
        explored=explored,
        expected_cost_usd=expected_cost_usd,
        token="",
        expires_at=expires_at,
        created_at=created_at,
        policy=policy,
        router_version=router_version,
        seed=seed,
        candidates=(),
        x=None if x is None else np.frombuffer(x, dtype="<f8").copy(),
        context_version=context_version,
        challenger=challenger,
    )
