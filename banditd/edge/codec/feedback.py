"""FeedbackRequest -> FeedbackInput, and what Feedback, StreamFeedback and UploadFeedback answer."""

from __future__ import annotations

from banditd.edge.codec.fields import decoded
from banditd.flows.feedback import BatchOutcome, FeedbackInput, FeedbackResult
from banditd.v1 import banditd_pb2 as pb

_THUMBS = {pb.THUMB_UP: "up", pb.THUMB_DOWN: "down"}
_PREFERENCES = {pb.PREFER_ARM: "arm", pb.PREFER_CHALLENGER: "challenger", pb.PREFER_TIE: "tie"}


def feedback_from_proto(msg: pb.FeedbackRequest, tenant: str | None = None) -> FeedbackInput:
    """``tenant``: the tenant to use instead of the message's (an UploadFeedback batch's).
    Optional fields left unset are None; an unknown thumb or preference is named, and refused
    by the flow."""
    thumb = _THUMBS.get(msg.thumb, f"value {msg.thumb}") if msg.HasField("thumb") else None
    preference = (
        _PREFERENCES.get(msg.preference, f"value {msg.preference}") if msg.preference else None
    )
    return FeedbackInput(
        **decoded(
            FeedbackInput,
            msg,
            tenant=msg.tenant if tenant is None else tenant,
            thumb=thumb,
            preference=preference,
        )
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
