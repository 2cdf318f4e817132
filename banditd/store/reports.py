"""Reports over the logs: per-arm totals, decisions with their feedback (off-policy
evaluation), and per-shadow importance-weighted sums."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Subquery, and_, case, false, func, select

from banditd.domain import Decision
from banditd.store.decisions import decision_from_row, with_router
from banditd.store.engine import Database
from banditd.store.finite import bounded_event
from banditd.store.models import decisions, feedback_events, shadow_picks


@dataclass(frozen=True)
class ArmTotals:
    arm: str
    decisions: int
    feedback_count: int
    reward_sum: float
    spend_usd: float


@dataclass(frozen=True)
class FedDecision:
    """A decision with its feedback: reward, settled cost, and the latency and energy reported
    (None: none was)."""

    decision: Decision
    reward: float
    cost_usd: float
    latency_ms: float | None
    energy_wh: float | None


@dataclass(frozen=True)
class ShadowTotals:
    shadow: str
    decisions: int
    agreements: int
    feedback_count: int
    weight_sum: float
    weight_sq_sum: float
    weighted_reward_sum: float
    weighted_cost_sum: float


class Reports:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def arm_totals(self, router_id: int) -> list[ArmTotals]:
        settled = settled_feedback(router_id)
        async with self.db.transaction() as conn:
            made: dict[str, int] = dict(
                (
                    await conn.execute(
                        select(decisions.c.arm, func.count())
                        .where(decisions.c.router_id == router_id)
                        .group_by(decisions.c.arm)
                    )
                ).all()
            )
            fed = {
                r.arm: r
                for r in (
                    await conn.execute(
                        select(
                            settled.c.arm,
                            func.count().label("n"),
                            func.sum(settled.c.reward).label("reward_sum"),
                            func.sum(settled.c.cost_usd).label("spend"),
                        )
                        .where(settled.c.defaulted == false())
                        .group_by(settled.c.arm)
                    )
                ).all()
            }
        return [
            ArmTotals(
                arm=arm,
                decisions=int(made.get(arm, 0)),
                feedback_count=int(fed[arm].n) if arm in fed else 0,
                reward_sum=float(fed[arm].reward_sum) if arm in fed else 0.0,
                spend_usd=float(fed[arm].spend) if arm in fed else 0.0,
            )
            for arm in sorted(set(made) | set(fed))
        ]

    async def decisions_with_feedback(self, router_id: int, limit: int) -> list[FedDecision]:
        """The newest ``limit`` decisions that carry a context and got feedback, oldest first."""
        settled = settled_feedback(router_id)
        query = (
            with_router()
            .add_columns(
                settled.c.reward.label("feedback_reward"),
                settled.c.cost_usd.label("feedback_cost_usd"),
                settled.c.latency_ms.label("feedback_latency_ms"),
                settled.c.energy_wh.label("feedback_energy_wh"),
            )
            .join(settled, settled.c.decision_id == decisions.c.id)
            .where(decisions.c.router_id == router_id, decisions.c.x.is_not(None))
            .order_by(decisions.c.created_at.desc())
            .limit(limit)
        )
        async with self.db.transaction() as conn:
            rows = (await conn.execute(query)).all()
        return [
            FedDecision(
                decision_from_row(r),
                float(r.feedback_reward),
                float(r.feedback_cost_usd),
                r.feedback_latency_ms,
                r.feedback_energy_wh,
            )
            for r in reversed(rows)
        ]

    async def shadow_totals(self, router_id: int) -> list[ShadowTotals]:
        """Per shadow: decisions, agreements with the live arm, and importance-weighted sums
        over the decisions with feedback (weight = shadow's probability of the live arm /
        the live propensity)."""
        weight = shadow_picks.c.live_arm_probability / func.nullif(decisions.c.propensity, 0)
        settled = settled_feedback(router_id)
        fed = settled.c.decision_id.is_not(None)
        query = (
            select(
                shadow_picks.c.shadow,
                func.count().label("n"),
                func.sum(case((shadow_picks.c.arm == decisions.c.arm, 1), else_=0)).label("agree"),
                func.sum(case((fed, 1), else_=0)).label("fed"),
                func.sum(case((fed, weight), else_=0.0)).label("w"),
                func.sum(case((fed, weight * weight), else_=0.0)).label("w2"),
                func.sum(case((fed, weight * settled.c.reward), else_=0.0)).label("wr"),
                func.sum(case((fed, weight * settled.c.cost_usd), else_=0.0)).label("wc"),
            )
            .join(decisions, decisions.c.id == shadow_picks.c.decision_id)
            .outerjoin(
                settled,
                and_(settled.c.decision_id == decisions.c.id, settled.c.defaulted == false()),
            )
            .where(shadow_picks.c.router_id == router_id)
            .group_by(shadow_picks.c.shadow)
            .order_by(shadow_picks.c.shadow)
        )
        async with self.db.transaction() as conn:
            rows = (await conn.execute(query)).all()
        return [
            ShadowTotals(
                shadow=r.shadow,
                decisions=int(r.n),
                agreements=int(r.agree or 0),
                feedback_count=int(r.fed or 0),
                weight_sum=float(r.w or 0.0),
                weight_sq_sum=float(r.w2 or 0.0),
                weighted_reward_sum=float(r.wr or 0.0),
                weighted_cost_sum=float(r.wc or 0.0),
            )
            for r in rows
        ]


def settled_feedback(router_id: int) -> Subquery:
    """Per decision of the router with online feedback: its arm, its effective reward (that of
    its latest signal), its settled cost (the sum over its signals), the latency and energy its
    signals reported (the largest; null: none did) and whether that latest signal is a default
    reward. One row per decision, whatever the router's combine rule.
    Events past the ceilings (logged before issue 17; the posterior skips them) are left out."""
    fe = feedback_events
    latest = (
        select(
            fe.c.decision_id,
            func.max(fe.c.signal).label("signal"),
            func.sum(fe.c.cost_usd).label("cost_usd"),
            func.max(fe.c.latency_ms).label("latency_ms"),
            func.max(fe.c.energy_wh).label("energy_wh"),
        )
        .where(fe.c.router_id == router_id, fe.c.offline == false(), bounded_event())
        .group_by(fe.c.decision_id)
        .subquery()
    )
    return (
        select(
            fe.c.decision_id,
            fe.c.arm,
            func.coalesce(fe.c.effective_reward, fe.c.reward).label("reward"),
            latest.c.cost_usd,
            latest.c.latency_ms,
            latest.c.energy_wh,
            fe.c.defaulted,
        )
        .join(
            latest, and_(latest.c.decision_id == fe.c.decision_id, latest.c.signal == fe.c.signal)
        )
        .subquery()
    )
