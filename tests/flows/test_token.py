from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import uuid
from dataclasses import fields, replace

import numpy as np
import pytest

from banditd.domain import Decision, RankedArm
from banditd.errors import PermissionDenied
from banditd.flows.feedback_join import joined
from banditd.flows.tokens import NO_ARM, TokenClaims, TokenSigner, new_decision_id, uuid4_text

DECISION = str(uuid.UUID(int=0x1234_5678_9ABC_DEF0_0FED_CBA9_8765_4321))


def claims(challenger: str | None = None) -> TokenClaims:
    x = np.array([1.0, 0.1, -2.5, 3e-7], dtype=np.float32).astype(np.float64)
    return TokenClaims(
        DECISION,
        "acme",
        7,
        "gpt-4o-mini",
        x,
        0.25,
        0.0012,
        1_900_000_000.0,
        challenger=challenger,
        challenger_cost_usd=0.0 if challenger is None else 0.03,
        arm_index=3,
        challenger_index=NO_ARM if challenger is None else 1,
    )


def test_v1_round_trip_is_exact() -> None:
    signer = TokenSigner(b"k" * 32)
    back = signer.verify(signer.sign_v1(claims()), "acme")
    assert back.x is not None
    np.testing.assert_array_equal(back.x, claims().x)  # type: ignore[arg-type]
    assert (back.decision_id, back.tenant, back.router_id, back.arm) == (
        DECISION,
        "acme",
        7,
        "gpt-4o-mini",
    )
    assert (back.propensity, back.expected_cost_usd, back.expires_at) == (
        0.25,
        0.0012,
        1_900_000_000.0,
    )


@pytest.mark.parametrize("challenger", [None, "claude"])
def test_compact_round_trip(challenger: str | None) -> None:
    signer = TokenSigner(b"k" * 32)
    token = signer.sign(claims(challenger))
    assert token.startswith("2.") and len(token) == 88
    back = signer.verify(token, "acme")
    assert back.x is None and back.arm == ""  # x and the names stay on the server
    assert (back.decision_id, back.tenant, back.router_id, back.expires_at) == (
        DECISION,
        "acme",
        7,
        1_900_000_000.0,
    )
    assert back.arm_index == 3
    assert back.challenger_index == (NO_ARM if challenger is None else 1)
    assert (back.challenger is None) == (challenger is None)
    assert back.propensity == np.float32(0.25)
    assert back.expected_cost_usd == pytest.approx(0.0012, rel=1e-7)
    assert back.challenger_cost_usd == pytest.approx(claims(challenger).challenger_cost_usd)


def test_compact_token_length_does_not_depend_on_x() -> None:
    signer = TokenSigner(b"k" * 32)
    big = TokenClaims(DECISION, "a" * 128, 2**40, "m", np.ones(257), 1e-9, 1e6, 4e9)
    assert len(signer.sign(big)) == len(signer.sign(claims())) <= 160


def _flip(token: str, at: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(token[2:] + "=" * (-len(token[2:]) % 4)))
    raw[at] ^= 0x01
    return "2." + base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


@pytest.mark.parametrize("at", [0, 1, 17, 25, 27, 29, 33, 37, 45, 48, 63])
def test_compact_tamper_anywhere_is_refused(at: int) -> None:
    signer = TokenSigner(b"k" * 32)
    with pytest.raises(PermissionDenied):
        signer.verify(_flip(signer.sign(claims()), at), "acme")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1],
        lambda t: t + "A",
        lambda t: t.replace("2.", "3.", 1),
        lambda t: t[:20] + "!" + t[21:],
        lambda t: "2.",
    ],
)
def test_compact_mangled_tokens_are_refused(mangle: object) -> None:
    signer = TokenSigner(b"k" * 32)
    with pytest.raises(PermissionDenied):
        signer.verify(mangle(signer.sign(claims())), "acme")  # type: ignore[operator]


@pytest.mark.parametrize("sign", ["sign", "sign_v1"])
def test_tokens_are_bound_to_their_tenant(sign: str) -> None:
    signer = TokenSigner(b"k" * 32)
    token = getattr(signer, sign)(claims())
    assert signer.verify(token, "acme").tenant == "acme"
    with pytest.raises(PermissionDenied, match="tenant"):
        signer.verify(token, "acme2")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t.replace("v1.", "v2.", 1),
        lambda t: t + "x",
        lambda t: t.split(".")[0] + "." + t.split(".")[1],
        lambda t: "v1." + t.split(".")[1][::-1] + "." + t.split(".")[2],
    ],
)
def test_tampered_v1_tokens_are_refused(mangle: object) -> None:
    signer = TokenSigner(b"k" * 32)
    with pytest.raises(PermissionDenied):
        signer.verify(mangle(signer.sign_v1(claims())), "acme")  # type: ignore[operator]


@pytest.mark.parametrize("sign", ["sign", "sign_v1"])
def test_other_key_is_refused(sign: str) -> None:
    token = getattr(TokenSigner(b"b" * 32), sign)(claims())
    with pytest.raises(PermissionDenied, match="signature"):
        TokenSigner(b"a" * 32).verify(token, "acme")


@pytest.mark.parametrize("challenger", [None, "claude"])
def test_compact_token_is_its_documented_layout(challenger: str | None) -> None:
    """The token's bytes: the struct of the module docstring, written out here from the
    claims (the decision id through uuid.UUID), then HMAC-SHA256 of it and the tenant."""
    key, c = b"k" * 32, claims(challenger)
    head = struct.pack(
        "<B16sQHHIfff3x",
        2,
        uuid.UUID(c.decision_id).bytes,
        c.router_id,
        c.arm_index,
        c.challenger_index,
        int(c.expires_at),
        c.propensity,
        c.expected_cost_usd,
        c.challenger_cost_usd,
    )
    mac = hmac.new(key, head + b"acme", hashlib.sha256).digest()[:16]
    want = "2." + base64.urlsafe_b64encode(head + mac).decode().rstrip("=")
    assert TokenSigner(key).sign(c) == want


def test_decision_ids_are_uuid4_text() -> None:
    """new_decision_id is str(uuid.uuid4()): the same bits set in the same 16 random bytes."""
    rng = np.random.default_rng(5)
    for raw in [bytes(16), b"\xff" * 16, *(rng.bytes(16) for _ in range(500))]:
        assert uuid4_text(raw) == str(uuid.UUID(bytes=raw, version=4))
    ids = {new_decision_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(str(uuid.UUID(i)) == i and uuid.UUID(i).version == 4 for i in ids)


def test_a_decision_id_that_is_not_a_uuid_is_not_signed() -> None:
    with pytest.raises(ValueError):
        TokenSigner(b"k" * 32).sign(replace(claims(), decision_id="1234"))


@pytest.mark.parametrize("challenger", [None, "claude-haiku"])
def test_joined_claims_take_every_other_field_from_the_token(challenger: str | None) -> None:
    """joined builds its claims field by field: a field it does not take from the decision
    must come from the token (a TokenClaims field added later is not dropped)."""
    signer = TokenSigner(b"k" * 32)
    compact = signer.verify(signer.sign(replace(claims(challenger), x=None)), "acme")
    ranking = (
        RankedArm("gpt-4o-mini", 0.6, 0.1, 0.0012345),
        RankedArm("claude-haiku", 0.5, 0.1, 0.0301),
    )
    decision = Decision(
        DECISION, 7, "acme", "r", None, "gpt-4o-mini", ranking, 0.2501, False, 0.0012345,
        "", 1_900_000_000.0, 1.0, "linucb", 1, 0, (), x=np.arange(4.0), challenger=challenger,
    )  # fmt: skip
    got = joined(compact, decision.join_record())
    from_decision = {
        "arm": decision.arm,
        "x": decision.x,
        "propensity": decision.propensity,
        "expected_cost_usd": decision.expected_cost_usd,
        "challenger": challenger,
        "challenger_cost_usd": 0.0 if challenger is None else 0.0301,
        "router_version": decision.router_version,
    }
    for f in fields(TokenClaims):
        want = from_decision.get(f.name, getattr(compact, f.name))
        assert getattr(got, f.name) is want or getattr(got, f.name) == want, f.name
