"""Protobuf <-> domain objects. Pure functions: no I/O, no state."""

from __future__ import annotations

import dataclasses
from typing import Any

from banditd.budget.ledger import BudgetUsage
from banditd.domain import (
    DEFAULT_FEEDBACK_CAP_WINDOW_SECONDS,
    DEFAULT_METADATA_SLOTS,
    DEFAULT_PCA_FIT_SAMPLES,
    DEFAULT_PRIOR_QUALITY,
    DEFAULT_PRIOR_WEIGHT,
    DEFAULT_REWARD_WAIT_SECONDS,
    ENCODER_DIMS,
    ArmSpec,
    Decision,
    RouterSpec,
    ShadowSpec,
)
from banditd.domain.budgets import BudgetSpec
from banditd.domain.constants import (
    DEFAULT_COOLDOWN_SECONDS,
    DEFAULT_ERROR_RATE,
    DEFAULT_MIN_EVENTS,
)
from banditd.flows.admin import RouterStats, RouterVersion
from banditd.flows.feedback import BatchOutcome, FeedbackInput, FeedbackResult
from banditd.flows.select import SelectInput
from banditd.state.breaker import ArmHealthView, BreakerState
from banditd.store.budgets import SpendLine
from banditd.v1 import banditd_pb2 as pb

_THUMBS = {pb.THUMB_UP: "up", pb.THUMB_DOWN: "down"}
_PREFERENCES = {pb.PREFER_ARM: "arm", pb.PREFER_CHALLENGER: "challenger", pb.PREFER_TIE: "tie"}


def spec_from_proto(msg: pb.RouterConfig) -> RouterSpec:
    encoder = msg.encoder or "hashing"
    native = ENCODER_DIMS.get(encoder)
    return RouterSpec(
        encoder=encoder,
        metadata_keys=tuple(msg.metadata_keys),
        metadata_slots=msg.metadata_slots or DEFAULT_METADATA_SLOTS,
        pca_dim=msg.pca_dim,
        pca_fit_samples=msg.pca_fit_samples or DEFAULT_PCA_FIT_SAMPLES,
        knn_k=msg.knn_k,
        text_window_tokens=msg.text_window_tokens,
        tenant=msg.tenant,
        name=msg.name,
        arms=tuple(arm_from_proto(a) for a in msg.arms),
        policy=msg.policy or "linucb",
        exploration=msg.exploration,
        default_cost_weight=msg.default_cost_weight,
        forgetting=msg.forgetting or 1.0,
        explore_new_arm=msg.explore_new_arm,
        default_reward=msg.default_reward if msg.HasField("default_reward") else None,
        reward_wait_seconds=msg.reward_wait_seconds or DEFAULT_REWARD_WAIT_SECONDS,
        combine=msg.combine or "first",
        thumb_up_reward=msg.thumb_up_reward if msg.HasField("thumb_up_reward") else 1.0,
        thumb_down_reward=msg.thumb_down_reward if msg.HasField("thumb_down_reward") else 0.0,
        feedback_cap_per_key=msg.feedback_cap_per_key,
        feedback_cap_window_seconds=(
            msg.feedback_cap_window_seconds or DEFAULT_FEEDBACK_CAP_WINDOW_SECONDS
        ),
        prior_weight=msg.prior_weight or DEFAULT_PRIOR_WEIGHT,
        prior_quality=(
            msg.prior_quality if msg.HasField("prior_quality") else DEFAULT_PRIOR_QUALITY
        ),
        shadows=tuple(shadow_from_proto(s) for s in msg.shadows),
        breaker_error_rate=(
            msg.breaker_error_rate if msg.HasField("breaker_error_rate") else DEFAULT_ERROR_RATE
        ),
        breaker_min_events=msg.breaker_min_events or DEFAULT_MIN_EVENTS,
        breaker_cooldown_seconds=msg.breaker_cooldown_seconds or DEFAULT_COOLDOWN_SECONDS,
        default_latency_weight=msg.default_latency_weight,
        default_energy_weight=msg.default_energy_weight,
        **{
            key: value
            for key, value in (
                ("embedding_dim", msg.embedding_dim or native),
                ("feedback_ttl_seconds", msg.feedback_ttl_seconds),
                ("prior_output_tokens", msg.prior_output_tokens),
            )
            if value  # 0 means "the default"
        },
    )


def arm_from_proto(msg: pb.Arm) -> ArmSpec:
    return ArmSpec(
        msg.name,
        msg.input_price_per_mtok,
        msg.output_price_per_mtok,
        msg.disabled,
        msg.prior_latency_ms,
        msg.input_energy_wh_per_mtok,
        msg.output_energy_wh_per_mtok,
        msg.upstream_base_url,
        msg.upstream_model,
        msg.upstream_api_key_env,
    )


def shadow_from_proto(msg: pb.ShadowPolicy) -> ShadowSpec:
    return ShadowSpec(
        msg.name,
        msg.policy or "linucb",
        msg.exploration,
        msg.cost_weight if msg.HasField("cost_weight") else None,
    )


def spec_to_proto(spec: RouterSpec) -> pb.RouterConfig:
    return pb.RouterConfig(
        tenant=spec.tenant,
        name=spec.name,
        arms=[
            pb.Arm(
                name=a.name,
                input_price_per_mtok=a.input_price_per_mtok,
                output_price_per_mtok=a.output_price_per_mtok,
                disabled=a.disabled,
                prior_latency_ms=a.prior_latency_ms,
                input_energy_wh_per_mtok=a.input_energy_wh_per_mtok,
                output_energy_wh_per_mtok=a.output_energy_wh_per_mtok,
                upstream_base_url=a.upstream_base_url,
                upstream_model=a.upstream_model,
                upstream_api_key_env=a.upstream_api_key_env,
            )
            for a in spec.arms
        ],
        policy=spec.policy,
        exploration=spec.exploration,
        default_cost_weight=spec.default_cost_weight,
        embedding_dim=spec.embedding_dim,
        feedback_ttl_seconds=spec.feedback_ttl_seconds,
        prior_output_tokens=spec.prior_output_tokens,
        version=spec.version,
        forgetting=spec.forgetting,
        prior_quality=spec.prior_quality,
        prior_weight=spec.prior_weight,
        explore_new_arm=spec.explore_new_arm,
        default_reward=spec.default_reward,
        reward_wait_seconds=spec.reward_wait_seconds,
        combine=spec.combine,
        thumb_up_reward=spec.thumb_up_reward,
        thumb_down_reward=spec.thumb_down_reward,
        shadows=[
            pb.ShadowPolicy(
                name=s.name, policy=s.policy, exploration=s.exploration, cost_weight=s.cost_weight
            )
            for s in spec.shadows
        ],
        feedback_cap_per_key=spec.feedback_cap_per_key,
        feedback_cap_window_seconds=spec.feedback_cap_window_seconds,
        breaker_error_rate=spec.breaker_error_rate,
        breaker_min_events=spec.breaker_min_events,
        breaker_cooldown_seconds=spec.breaker_cooldown_seconds,
        encoder=spec.encoder,
        metadata_keys=list(spec.metadata_keys),
        metadata_slots=spec.metadata_slots,
        pca_dim=spec.pca_dim,
        pca_fit_samples=spec.pca_fit_samples,
        knn_k=spec.knn_k,
        text_window_tokens=spec.text_window_tokens,
        default_latency_weight=spec.default_latency_weight,
        default_energy_weight=spec.default_energy_weight,
    )


def candidate_from_proto(msg: pb.RouterConfig, tenant: str, name: str) -> RouterSpec:
    """A candidate configuration for a router: empty tenant and name mean the router's."""
    filled = pb.RouterConfig()
    filled.CopyFrom(msg)
    filled.tenant = filled.tenant or tenant
    filled.name = filled.name or name
    return spec_from_proto(filled)


def select_from_proto(msg: pb.SelectRequest) -> SelectInput:
    which = msg.WhichOneof("context")
    return SelectInput(
        tenant=msg.tenant,
        router=msg.router,
        request_id=msg.request_id,
        prompt=msg.prompt if which == "prompt" else None,
        embedding=list(msg.embedding.values) if which == "embedding" else None,
        candidates=list(msg.candidates),
        cost_weight=msg.cost_weight if msg.HasField("cost_weight") else None,
        max_cost_usd=msg.max_cost_usd if msg.HasField("max_cost_usd") else None,
        metadata=dict(msg.metadata),
        latency_weight=msg.latency_weight if msg.HasField("latency_weight") else None,
        energy_weight=msg.energy_weight if msg.HasField("energy_weight") else None,
        max_latency_ms=msg.max_latency_ms if msg.HasField("max_latency_ms") else None,
        compare=msg.compare,
    )


_UPSTREAM_FIELDS = (
    "upstream_base_url",
    "upstream_model",
    "upstream_api_key_env",
    "input_price_per_mtok",
    "output_price_per_mtok",
)


def _upstreams(d: Decision) -> dict[str, dict[str, Any]]:
    """Per arm, the spec fields a ranking entry carries for the gateway (its upstream, prices)."""
    return {a.name: {n: getattr(a, n) for n in _UPSTREAM_FIELDS} for a in d.arm_specs}


def decision_to_proto(d: Decision) -> pb.SelectResponse:
    reply = pb.SelectResponse(
        decision_id=d.token,
        arm=d.arm,
        propensity=d.propensity,
        explored=d.explored,
        expected_cost_usd=d.expected_cost_usd,
        expires_at_unix=int(d.expires_at),
        budget_price=d.budget_price,
        budget_outcome=d.budget_outcome,
        context_version=d.context_version or "",
        challenger=d.challenger or "",
    )
    add = reply.ranking.add  # built in place: a RankedArm passed in a list is copied
    upstreams = _upstreams(d)
    for r in d.ranking:
        add(
            arm=r.arm,
            score=r.score,
            expected_cost_usd=r.expected_cost_usd,
            quality_score=r.quality_score,
            expected_latency_ms=r.expected_latency_ms,
            expected_energy_wh=r.expected_energy_wh,
            **upstreams.get(r.arm, {}),
        )
    return reply


def feedback_from_proto(msg: pb.FeedbackRequest, tenant: str | None = None) -> FeedbackInput:
    """``tenant``: the tenant to use instead of the message's (an UploadFeedback batch's)."""
    which = msg.WhichOneof("signal")
    thumb = _THUMBS.get(msg.thumb, f"value {msg.thumb}") if which == "thumb" else None
    return FeedbackInput(
        tenant=msg.tenant if tenant is None else tenant,
        decision_id=msg.decision_id,
        reward=msg.reward if which == "reward" else None,
        thumb=thumb,
        cost_usd=msg.cost_usd if msg.HasField("cost_usd") else None,
        input_tokens=msg.input_tokens if msg.HasField("input_tokens") else None,
        output_tokens=msg.output_tokens if msg.HasField("output_tokens") else None,
        latency_ms=msg.latency_ms if msg.HasField("latency_ms") else None,
        error=msg.error,
        energy_wh=msg.energy_wh if msg.HasField("energy_wh") else None,
        usage_only=msg.usage_only,
        first_token_ms=msg.first_token_ms if msg.HasField("first_token_ms") else None,
        preference=(
            _PREFERENCES.get(msg.preference, f"value {msg.preference}") if msg.preference else None
        ),
    )


def feedback_to_proto(result: FeedbackResult) -> pb.FeedbackResponse:
    return pb.FeedbackResponse(
        event_id=result.event_id, reward=result.reward, cost_usd=result.cost_usd
    )


def batch_outcome_to_proto(outcome: BatchOutcome) -> pb.StreamFeedbackResponse:
    return pb.StreamFeedbackResponse(
        accepted=outcome.accepted,
        duplicate=outcome.duplicate,
        expired=outcome.expired,
        invalid=outcome.invalid,
        errors=[pb.FeedbackError(index=i, kind=k, message=m) for i, k, m in outcome.errors],
    )


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


def version_to_proto(v: RouterVersion) -> pb.RouterVersion:
    return pb.RouterVersion(
        version=v.version,
        action=v.action,
        created_at_unix=v.created_at,
        router=spec_to_proto(v.spec),
    )


def _view(stats: RouterStats, arm: str) -> ArmHealthView:
    return stats.health.get(arm) or ArmHealthView(BreakerState.CLOSED, 0.0, 0.0)


# -- budgets (issue 6) ---------------------------------------------------------------------------

_PERIODS = {
    pb.BUDGET_PERIOD_HOUR: "hour",
    pb.BUDGET_PERIOD_DAY: "day",
    pb.BUDGET_PERIOD_MONTH: "month",
    pb.BUDGET_PERIOD_WINDOW: "window",
}
_PERIOD_ENUM = {name: value for value, name in _PERIODS.items()}
_ON_EXHAUSTED = {pb.ON_EXHAUSTED_CHEAPEST: "cheapest", pb.ON_EXHAUSTED_REFUSE: "refuse"}


def budget_from_proto(msg: pb.Budget) -> BudgetSpec:
    return BudgetSpec(
        tenant=msg.tenant,
        router=msg.router,
        limit_usd=msg.limit_usd,
        period=_PERIODS.get(msg.period, f"unspecified ({msg.period})"),
        window_seconds=msg.window_seconds,
        window_start=msg.window_start_unix,
        alerts=tuple(msg.alerts),
        on_exhausted=_ON_EXHAUSTED.get(msg.on_exhausted, f"value {msg.on_exhausted}"),
    )


def budget_to_proto(spec: BudgetSpec) -> pb.Budget:
    return pb.Budget(
        tenant=spec.tenant,
        router=spec.router,
        limit_usd=spec.limit_usd,
        period=_PERIOD_ENUM[spec.period],
        window_seconds=spec.window_seconds,
        window_start_unix=spec.window_start,
        alerts=list(spec.alerts),
        on_exhausted=(
            pb.ON_EXHAUSTED_REFUSE if spec.on_exhausted == "refuse" else pb.ON_EXHAUSTED_CHEAPEST
        ),
        version=spec.version,
    )


def budget_usage_to_proto(usage: BudgetUsage) -> pb.GetBudgetResponse:
    return pb.GetBudgetResponse(
        budget=budget_to_proto(usage.spec),
        usage=pb.BudgetUsage(
            period_start_unix=usage.period_start,
            period_end_unix=usage.period_end,
            spent_usd=usage.committed_usd,
            leased_usd=usage.leased_usd,
            remaining_usd=usage.remaining_usd,
            alerts_fired=list(usage.alerts_fired),
            elapsed=usage.elapsed,
        ),
    )


def spend_to_proto(lines: list[SpendLine]) -> pb.GetSpendResponse:
    return pb.GetSpendResponse(
        lines=[
            pb.SpendLine(
                router=line.router,
                arm=line.arm,
                metadata_value=line.metadata_value,
                decisions=line.decisions,
                spend_usd=line.spend_usd,
            )
            for line in lines
        ],
        total_usd=sum(line.spend_usd for line in lines),
    )
