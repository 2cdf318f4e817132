"""SelectRequest -> SelectInput, and a Decision -> SelectResponse (the Select path: kept lean)."""

from __future__ import annotations

from typing import Any

from banditd.domain import Decision
from banditd.edge.codec.fields import decoded
from banditd.flows.select import SelectInput
from banditd.v1 import banditd_pb2 as pb

_SAME_NAMED = (
    "arm",
    "propensity",
    "explored",
    "expected_cost_usd",
    "budget_price",
    "budget_outcome",
)
_UPSTREAM_FIELDS = (
    "upstream_base_url",
    "upstream_model",
    "upstream_api_key_env",
    "input_price_per_mtok",
    "output_price_per_mtok",
)


def select_from_proto(msg: pb.SelectRequest) -> SelectInput:
    """Optional fields left unset are None (the router's defaults); ``prompt`` or
    ``embedding``, whichever the request carries."""
    embedding = list(msg.embedding.values) if msg.HasField("embedding") else None
    return SelectInput(
        **decoded(
            SelectInput,
            msg,
            embedding=embedding,
            candidates=list(msg.candidates),
            metadata=dict(msg.metadata),
        )
    )


def _upstreams(d: Decision) -> dict[str, dict[str, Any]]:
    """Per arm, the spec fields a ranking entry carries for the gateway (its upstream, prices)."""
    return {a.name: {n: getattr(a, n) for n in _UPSTREAM_FIELDS} for a in d.arm_specs}


def decision_to_proto(d: Decision) -> pb.SelectResponse:
    reply = pb.SelectResponse(
        decision_id=d.token,
        expires_at_unix=int(d.expires_at),
        context_version=d.context_version or "",
        challenger=d.challenger or "",
        **{name: getattr(d, name) for name in _SAME_NAMED},
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
