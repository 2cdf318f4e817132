"""SelectRequest -> SelectInput, and a Decision -> SelectResponse (the Select path: kept lean)."""

from __future__ import annotations

from banditd.domain import Decision
from banditd.flows.select import SelectInput
from banditd.v1 import banditd_pb2 as pb


def select_from_proto(msg: pb.SelectRequest) -> SelectInput:
    """Optional fields left unset are None (the router's defaults); ``prompt`` or
    ``embedding``, whichever the request carries. Spelled out, not copied by field name
    (codec/fields.py): this runs on every Select, and the loop costs about 2 us more."""
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
        input_tokens=msg.input_tokens if msg.HasField("input_tokens") else None,
    )


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
    upstreams = {a.name: a.upstream for a in d.arm_specs}
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
