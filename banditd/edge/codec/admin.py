"""What the Admin service answers about a router: its statistics and its off-policy evaluation."""

from __future__ import annotations

import dataclasses
from typing import Any

from banditd.flows.admin import RouterStats
from banditd.state.breaker import ArmHealthView, BreakerState
from banditd.v1 import banditd_pb2 as pb


def _heads(stats: RouterStats, arm: str) -> tuple[float, int, float, int]:
    """(mean latency_ms, reports, mean energy_wh, reports) of an arm."""
    return stats.heads.get(arm, (0.0, 0, 0.0, 0))


def _usage(stats: RouterStats, arm: str) -> dict[str, Any]:
    u = stats.usage.get(arm)  # ArmStats.usage_* are UsageTotals' fields
    return {} if u is None else {f"usage_{k}": v for k, v in dataclasses.asdict(u).items()}


def stats_to_proto(stats: RouterStats) -> pb.GetStatsResponse:
    fed = sum(a.feedback_count for a in stats.arms)
    return pb.GetStatsResponse(
        tenant=stats.tenant,
        name=stats.name,
        arms=[
            pb.ArmStats(
                arm=a.arm,
                decisions=a.decisions,
                feedback_count=a.feedback_count,
                mean_reward=a.reward_sum / a.feedback_count if a.feedback_count else 0.0,
                spend_usd=a.spend_usd,
                breaker=_view(stats, a.arm).state.value,
                recent_error_rate=_view(stats, a.arm).error_rate,
                breaker_open_until_unix=_view(stats, a.arm).open_until,
                mean_latency_ms=_heads(stats, a.arm)[0],
                latency_reports=_heads(stats, a.arm)[1],
                mean_energy_wh=_heads(stats, a.arm)[2],
                energy_reports=_heads(stats, a.arm)[3],
                **_usage(stats, a.arm),
            )
            for a in stats.arms
        ],
        decisions=sum(a.decisions for a in stats.arms),
        feedback_count=sum(a.feedback_count for a in stats.arms),
        spend_usd=sum(a.spend_usd for a in stats.arms),
        applied_event_id=stats.applied_event_id,
        log_event_id=stats.log_event_id,
        lag_events=stats.lag_events,
        shadows=[
            pb.ShadowStats(
                name=t.shadow,
                decisions=t.decisions,
                agreement=t.agreements / t.decisions if t.decisions else 0.0,
                feedback_count=t.feedback_count,
                estimated_mean_reward=t.weighted_reward_sum / t.weight_sum if t.weight_sum else 0.0,
                estimated_mean_cost_usd=t.weighted_cost_sum / t.weight_sum if t.weight_sum else 0.0,
                effective_sample_size=t.weight_sum**2 / t.weight_sq_sum if t.weight_sq_sum else 0.0,
            )
            for t in stats.shadows
        ],
        mean_reward=sum(a.reward_sum for a in stats.arms) / fed if fed else 0.0,
        mean_cost_usd=sum(a.spend_usd for a in stats.arms) / fed if fed else 0.0,
        context_version=stats.context_version,
        knn_indexed=stats.knn_indexed,
    )


def _interval(cell: dict[str, Any]) -> pb.ValueInterval:
    return pb.ValueInterval(value=cell["value"], low=cell["low"], high=cell["high"])


def evaluation_to_proto(report: dict[str, Any]) -> pb.EvaluateResponse:
    """The report of ``Admin.evaluate`` (see banditd.flows.candidates.report)."""
    logged = report["logged"]
    return pb.EvaluateResponse(
        version=report["version"],
        decisions=report["decisions"],
        cost_weight=report["cost_weight"],
        logged_reward=logged["reward"],
        logged_cost_usd=logged["cost_usd"],
        logged_utility=logged["utility"],
        candidates=[
            pb.CandidateEvaluation(
                name=c["name"],
                policy=c["policy"],
                estimates=[
                    pb.OffPolicyEstimate(
                        estimator=e["estimator"],
                        reward=_interval(e["reward"]),
                        cost_usd=_interval(e["cost_usd"]),
                        utility=_interval(e["utility"]),
                    )
                    for e in c["estimates"]
                ],
                effective_sample_size=c["effective_sample_size"],
                agreement=c["agreement"],
                min_propensity=c["min_propensity"],
                warnings=c["warnings"],
            )
            for c in report["candidates"]
        ],
    )


def _view(stats: RouterStats, arm: str) -> ArmHealthView:
    return stats.health.get(arm) or ArmHealthView(BreakerState.CLOSED, 0.0, 0.0)
