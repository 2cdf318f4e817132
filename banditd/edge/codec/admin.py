"""What the Admin service answers about a router: its statistics and its off-policy evaluation."""

from __future__ import annotations

import dataclasses
from typing import Any

from banditd.flows.admin import RouterStats
from banditd.state.breaker import ArmHealthView, BreakerState
from banditd.store.reports import ArmTotals, ShadowTotals
from banditd.v1 import banditd_pb2 as pb


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def _arm_stats(stats: RouterStats, a: ArmTotals) -> pb.ArmStats:
    view = stats.health.get(a.arm) or ArmHealthView(BreakerState.CLOSED, 0.0, 0.0)
    latency, latency_reports, energy, energy_reports = stats.heads.get(a.arm, (0.0, 0, 0.0, 0))
    usage = stats.usage.get(a.arm)  # ArmStats.usage_* are UsageTotals' fields
    return pb.ArmStats(
        arm=a.arm,
        decisions=a.decisions,
        feedback_count=a.feedback_count,
        mean_reward=_ratio(a.reward_sum, a.feedback_count),
        spend_usd=a.spend_usd,
        breaker=view.state.value,
        recent_error_rate=view.error_rate,
        breaker_open_until_unix=view.open_until,
        mean_latency_ms=latency,
        latency_reports=latency_reports,
        mean_energy_wh=energy,
        energy_reports=energy_reports,
        **(
            {} if usage is None else {f"usage_{k}": v for k, v in dataclasses.asdict(usage).items()}
        ),
    )


def _shadow_stats(t: ShadowTotals) -> pb.ShadowStats:
    """A shadow policy's agreement with the live one and its off-policy (IPS) estimates."""
    return pb.ShadowStats(
        name=t.shadow,
        decisions=t.decisions,
        agreement=_ratio(t.agreements, t.decisions),
        feedback_count=t.feedback_count,
        estimated_mean_reward=_ratio(t.weighted_reward_sum, t.weight_sum),
        estimated_mean_cost_usd=_ratio(t.weighted_cost_sum, t.weight_sum),
        effective_sample_size=_ratio(t.weight_sum**2, t.weight_sq_sum),
    )


def stats_to_proto(stats: RouterStats) -> pb.GetStatsResponse:
    fed = sum(a.feedback_count for a in stats.arms)
    return pb.GetStatsResponse(
        tenant=stats.tenant,
        name=stats.name,
        arms=[_arm_stats(stats, a) for a in stats.arms],
        decisions=sum(a.decisions for a in stats.arms),
        feedback_count=fed,
        spend_usd=sum(a.spend_usd for a in stats.arms),
        applied_event_id=stats.applied_event_id,
        log_event_id=stats.log_event_id,
        lag_events=stats.lag_events,
        shadows=[_shadow_stats(t) for t in stats.shadows],
        mean_reward=_ratio(sum(a.reward_sum for a in stats.arms), fed),
        mean_cost_usd=_ratio(sum(a.spend_usd for a in stats.arms), fed),
        context_version=stats.context_version,
        knn_indexed=stats.knn_indexed,
        prior_level=stats.prior_level,
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
        mean_cost_weight=report["mean_cost_weight"],
        request_cost_weights=report["request_cost_weights"],
        budget_raised_cost_weights=report["budget_raised_cost_weights"],
        unversioned_decisions=report["unversioned_decisions"],
        mean_latency_weight=report["mean_latency_weight"],
        mean_energy_weight=report["mean_energy_weight"],
        request_latency_weights=report["request_latency_weights"],
        request_energy_weights=report["request_energy_weights"],
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
