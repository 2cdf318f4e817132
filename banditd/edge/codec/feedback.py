"""FeedbackRequest -> FeedbackInput, and what Feedback, StreamFeedback and UploadFeedback answer."""

from __future__ import annotations

from banditd.flows.feedback import BatchOutcome, FeedbackInput, FeedbackResult
from banditd.v1 import banditd_pb2 as pb

_THUMBS = {pb.THUMB_UP: "up", pb.THUMB_DOWN: "down"}
_PREFERENCES = {pb.PREFER_ARM: "arm", pb.PREFER_CHALLENGER: "challenger", pb.PREFER_TIE: "tie"}


def feedback_from_proto(msg: pb.FeedbackRequest, tenant: str | None = None) -> FeedbackInput:
    """``tenant``: the tenant to use instead of the message's (an UploadFeedback batch's).
    Optional fields left unset are None; an unknown thumb or preference is named, and refused
    by the flow. Spelled out, not copied by field name (codec/fields.py): this runs for every
    feedback event, bulk uploads included, and the loop costs about 1 us more."""
    which = msg.WhichOneof("signal")
    return FeedbackInput(
        tenant=msg.tenant if tenant is None else tenant,
        decision_id=msg.decision_id,
        reward=msg.reward if which == "reward" else None,
        thumb=_THUMBS.get(msg.thumb, f"value {msg.thumb}") if which == "thumb" else None,
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
        idempotency_key=msg.idempotency_key or None,
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
