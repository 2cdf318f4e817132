"""Decisions as Feedback reads them (issue 20): a compact token's join record (x, arm,
propensity, expected costs, challenger, the router's version and featurisation), in one query
per batch, with nothing more decoded than the join needs.

Building whole decisions here (every ranking, candidates and metadata decoded from JSON, a
RankedArm per arm) cost more than the rest of the feedback path together, so only the join
record's columns are read, and the ranking only of a decision that compared two arms (for its
challenger's expected cost).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, String, any_, case, literal, null, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from banditd.domain import JoinRecord
from banditd.store.models import decisions, routers

# A decision's ranking when it compared two arms (for its challenger's expected cost), else null.
COMPARED_RANKING = case(
    (decisions.c.challenger.is_(None), null()), else_=decisions.c.ranking
).label("ranking")

_QUERY = select(
    decisions.c.id,
    decisions.c.router_id,
    routers.c.tenant,
    decisions.c.arm,
    decisions.c.x,
    decisions.c.propensity,
    decisions.c.expected_cost_usd,
    decisions.c.challenger,
    COMPARED_RANKING,
    decisions.c.router_version,
    decisions.c.context_version,
).join(routers, routers.c.id == decisions.c.router_id)


def among(
    conn: AsyncConnection, column: ColumnElement[str], ids: Sequence[str]
) -> ColumnElement[bool]:
    """``column IN ids``; on Postgres as one array parameter (``= ANY``): one statement, prepared
    once, whatever the count, instead of a parameter per id."""
    if conn.dialect.name == "postgresql":
        return column == any_(literal(list(ids), postgresql.ARRAY(String)))
    return column.in_(ids)


async def decisions_for_feedback(
    conn: AsyncConnection, ids: Sequence[str]
) -> dict[str, JoinRecord]:
    """The join records of the visible decisions of ``ids``, by id."""
    if not ids:
        return {}
    result = await conn.execute(_QUERY.where(among(conn, decisions.c.id, ids)))
    rows: list[Any] = list(result.all())  # Rows unpack as tuples
    return {row[0]: _join_record(*row) for row in rows}


def _join_record(
    decision_id: str,
    router_id: int,
    tenant: str,
    arm: str,
    x: bytes | None,
    propensity: float,
    expected_cost_usd: float,
    challenger: str | None,
    ranking: list[list[Any]] | None,
    router_version: int,
    context_version: str | None,
) -> JoinRecord:
    """A row of _QUERY, unpacked by position (far cheaper than by name, row after row)."""
    return JoinRecord(
        decision_id=decision_id,
        router_id=router_id,
        tenant=tenant,
        arm=arm,
        x=None if x is None else np.frombuffer(x, dtype="<f8").copy(),
        propensity=propensity,
        expected_cost_usd=expected_cost_usd,
        challenger=challenger,
        challenger_cost_usd=challenger_cost(ranking, challenger),
        router_version=router_version,
        context_version=context_version,
    )


def challenger_cost(ranking: list[list[Any]] | None, challenger: str | None) -> float:
    """The challenger's expected cost from its decision's ``COMPARED_RANKING`` (0 for none). A
    ranking entry is [arm, score, quality score, expected cost, ...] (banditd.store.decisions)."""
    rival = None if ranking is None else next((r for r in ranking if r[0] == challenger), None)
    return 0.0 if rival is None else float(rival[3])
