"""RouterConfig <-> RouterSpec, and the versions of a router's configuration."""

from __future__ import annotations

from banditd.domain import ENCODER_DIMS, ArmSpec, RouterSpec, ShadowSpec
from banditd.edge.codec.fields import decoded, encoded
from banditd.flows.admin import RouterVersion
from banditd.v1 import banditd_pb2 as pb


def spec_from_proto(msg: pb.RouterConfig) -> RouterSpec:
    """A router's configuration; fields at zero (or unset) take RouterSpec's defaults, and a
    message's ``version`` is the store's to set, never the caller's."""
    native = ENCODER_DIMS.get(msg.encoder or "hashing")
    return RouterSpec(
        **decoded(
            RouterSpec,
            msg,
            arms=tuple(arm_from_proto(a) for a in msg.arms),
            shadows=tuple(shadow_from_proto(s) for s in msg.shadows),
            metadata_keys=tuple(msg.metadata_keys),
            version=0,  # the store sets it
            **({} if msg.embedding_dim or not native else {"embedding_dim": native}),
        )
    )


def arm_from_proto(msg: pb.Arm) -> ArmSpec:
    return ArmSpec(**decoded(ArmSpec, msg))


def shadow_from_proto(msg: pb.ShadowPolicy) -> ShadowSpec:
    return ShadowSpec(**decoded(ShadowSpec, msg))


def spec_to_proto(spec: RouterSpec) -> pb.RouterConfig:
    return pb.RouterConfig(
        **encoded(spec)
        | {
            "arms": [pb.Arm(**encoded(a)) for a in spec.arms],
            "shadows": [pb.ShadowPolicy(**encoded(s)) for s in spec.shadows],
            "metadata_keys": list(spec.metadata_keys),
        }
    )


def candidate_from_proto(msg: pb.RouterConfig, tenant: str, name: str) -> RouterSpec:
    """A candidate configuration for a router: empty tenant and name mean the router's."""
    filled = pb.RouterConfig()
    filled.CopyFrom(msg)
    filled.tenant = filled.tenant or tenant
    filled.name = filled.name or name
    return spec_from_proto(filled)


def version_to_proto(v: RouterVersion) -> pb.RouterVersion:
    return pb.RouterVersion(
        version=v.version,
        action=v.action,
        created_at_unix=v.created_at,
        router=spec_to_proto(v.spec),
    )
