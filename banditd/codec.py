"""Protobuf <-> domain objects. Pure functions: no I/O, no state."""

from __future__ import annotations

from banditd.admin import RouterStats
from banditd.domain import (
    DEFAULT_METADATA_SLOTS,
    DEFAULT_PCA_FIT_SAMPLES,
    DEFAULT_PRIOR_QUALITY,
    DEFAULT_REWARD_WAIT_SECONDS,
    ENCODER_DIMS,
    ArmSpec,
    Decision,
    RouterSpec,
)
from banditd.learner import BatchOutcome, FeedbackInput, FeedbackResult
from banditd.router import SelectInput
from banditd.v1 import banditd_pb2 as pb

_THUMBS = {pb.THUMB_UP: "up", pb.THUMB_DOWN: "down"}


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
        arms=tuple(
            ArmSpec(a.name, a.input_price_per_mtok, a.output_price_per_mtok, a.disabled)
            for a in msg.arms
        ),
        policy=msg.policy or "linucb",
        exploration=msg.exploration,
        default_cost_weight=msg.default_cost_weight,
        forgetting=msg.forgetting or 1.0,
        explore_new_arm=msg.explore_new_arm,
        default_reward=msg.default_reward if msg.HasField("default_reward") else None,
        reward_wait_seconds=msg.reward_wait_seconds or DEFAULT_REWARD_WAIT_SECONDS,
        prior_weight=msg.prior_weight or 1.0,
        prior_quality=(
            msg.prior_quality if msg.HasField("prior_quality") else DEFAULT_PRIOR_QUALITY
        ),
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
        encoder=spec.encoder,
        metadata_keys=list(spec.metadata_keys),
        metadata_slots=spec.metadata_slots,
        pca_dim=spec.pca_dim,
        pca_fit_samples=spec.pca_fit_samples,
        knn_k=spec.knn_k,
        text_window_tokens=spec.text_window_tokens,
    )


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
    )


def decision_to_proto(d: Decision) -> pb.SelectResponse:
    return pb.SelectResponse(
        decision_id=d.token,
        arm=d.arm,
        ranking=[
            pb.RankedArm(
                arm=r.arm,
                score=r.score,
                expected_cost_usd=r.expected_cost_usd,
                quality_score=r.quality_score,
            )
            for r in d.ranking
        ],
        propensity=d.propensity,
        explored=d.explored,
        expected_cost_usd=d.expected_cost_usd,
        expires_at_unix=int(d.expires_at),
        context_version=d.context_version or "",
    )


def feedback_from_proto(msg: pb.FeedbackRequest) -> FeedbackInput:
    which = msg.WhichOneof("signal")
    thumb = _THUMBS.get(msg.thumb, f"value {msg.thumb}") if which == "thumb" else None
    return FeedbackInput(
        tenant=msg.tenant,
        decision_id=msg.decision_id,
        reward=msg.reward if which == "reward" else None,
        thumb=thumb,
        cost_usd=msg.cost_usd if msg.HasField("cost_usd") else None,
        input_tokens=msg.input_tokens if msg.HasField("input_tokens") else None,
        output_tokens=msg.output_tokens if msg.HasField("output_tokens") else None,
        latency_ms=msg.latency_ms if msg.HasField("latency_ms") else None,
        error=msg.error,
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


def stats_to_proto(stats: RouterStats) -> pb.GetStatsResponse:
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
            )
            for a in stats.arms
        ],
        decisions=sum(a.decisions for a in stats.arms),
        feedback_count=sum(a.feedback_count for a in stats.arms),
        spend_usd=sum(a.spend_usd for a in stats.arms),
        applied_event_id=stats.applied_event_id,
        log_event_id=stats.log_event_id,
        lag_events=stats.lag_events,
        context_version=stats.context_version,
        knn_indexed=stats.knn_indexed,
    )
