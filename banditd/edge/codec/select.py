"""SelectRequest -> SelectInput, and a Decision -> SelectResponse (the Select path: kept lean)."""

from __future__ import annotations

from typing import Any

from banditd.domain import ArmSpec, Decision
from banditd.flows.select import SelectInput
from banditd.v1 import banditd_pb2 as pb

_UPSTREAM_FIELDS = (
    "upstream_base_url",
    "upstream_model",
    "upstream_api_key_env",
    "input_price_per_mtok",
    "output_price_per_mtok",
)


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
    )


# By id of a router's arms tuple (a spec's, which Decision.arm_specs is): that tuple and its
# _upstreams. An entry holds its tuple, so no other object takes that id while it is kept.
_UPSTREAMS: dict[int, tuple[tuple[ArmSpec, ...], dict[str, dict[str, Any]]]] = {}
_UPSTREAMS_KEPT = 1024  # routers' arm tuples; past this, the cache starts again


def _upstreams(arms: tuple[ArmSpec, ...]) -> dict[str, dict[str, Any]]:
    """Per arm, the spec fields a ranking entry carries for the gateway (its upstream, prices):
    built once per spec (its arms tuple), not on every Select. Read-only for callers. Empty
    strings are left out: the reply is the same (proto3 does not send them), 3 us sooner."""
    kept = _UPSTREAMS.get(id(arms))
    if kept is not None and kept[0] is arms:
        return kept[1]
    if len(_UPSTREAMS) >= _UPSTREAMS_KEPT:
        _UPSTREAMS.clear()
    upstreams = {
        a.name: {n: v for n in _UPSTREAM_FIELDS if (v := getattr(a, n)) != ""} for a in arms
    }
    _UPSTREAMS[id(arms)] = (arms, upstreams)
    return upstreams


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
    upstreams = _upstreams(d.arm_specs)
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
