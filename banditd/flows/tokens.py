"""Signed decision tokens: what Feedback needs to find its decision, forged by no one.

Two layouts, told apart by their prefix:

- ``2.<base64url(struct + mac)>`` (compact, issued by Select): a fixed little-endian struct of
  48 bytes (``_COMPACT``: version, decision id, router id, arm and challenger index, expiry,
  propensity and expected costs as float32) followed by HMAC-SHA256 of the struct and the
  tenant, truncated to 16 bytes. 88 characters for any router. It is bound to its tenant
  without carrying it, and it does not carry x: Feedback takes x, the arm names and the exact
  costs from the decision (banditd.flows.feedback_join).
- ``v1.<base64url(payload)>.<base64url(hmac-sha256(payload))>`` (issued before compact tokens,
  accepted until they expire): JSON with the tenant and x as base64 float32 bytes; x is float32
  everywhere (see context), so the float64 x rebuilt from it equals the one the policy scored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import os
import struct

import numpy as np

from banditd.domain import FloatArray, record
from banditd.errors import InvalidArgument, PermissionDenied

_PREFIX = "v1"
COMPACT_PREFIX = "2."
COMPACT_VERSION = 2
MAX_TOKEN_CHARS = 65_536
NO_ARM = 0xFFFF  # challenger index of a decision without one
# version, decision id (UUID bytes), router id, arm index, challenger index, expires_at (unix s),
# propensity, expected cost of the arm and of the challenger (float32), 3 reserved zero bytes.
_COMPACT = struct.Struct("<B16sQHHIfff3x")
_MAC_BYTES = 16
_F32_MAX = float(np.finfo(np.float32).max)
_NOT_OURS = "decision_id is not a decision token issued by this server"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _unb64(text: str) -> bytes:
    """base64.urlsafe_b64decode of unpadded text, without its per-call overhead (same result,
    same ValueError for what it cannot decode)."""
    return binascii.a2b_base64(text.encode("ascii").translate(_URLSAFE) + b"=" * (-len(text) % 4))


def new_decision_id() -> str:
    """A random decision id: ``str(uuid.uuid4())`` (the same 16 random bytes, the same
    text), without building a UUID object."""
    return uuid4_text(os.urandom(16))


def uuid4_text(raw: bytes) -> str:
    """``str(uuid.UUID(bytes=raw, version=4))``: the version and variant bits set in ``raw``'s
    16 bytes, as canonical hex text."""
    b = bytearray(raw)
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # variant RFC 4122
    return _uuid_text(b)


def _uuid_text(raw: bytes | bytearray) -> str:
    """``str(uuid.UUID(bytes=raw))`` without the UUID object (once per feedback event)."""
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _f32(value: float) -> float:
    """The value, or an infinity of its sign where float32 cannot hold it (struct refuses)."""
    return value if not abs(value) > _F32_MAX else math.copysign(math.inf, value)


@record
class TokenClaims:
    """x: shape (dim,), float64 holding float32-exact values; None in the claims of a compact
    token, whose arm names are then unknown too ("", and challenger "" when there is one) until
    they are joined to the decision (``banditd.flows.feedback_join.joined``)."""

    decision_id: str
    tenant: str
    router_id: int
    arm: str
    x: FloatArray | None
    propensity: float
    expected_cost_usd: float
    expires_at: float
    # Pairwise feedback (issue 21): one token covers both arms of a compared decision.
    challenger: str | None = None
    challenger_cost_usd: float = 0.0
    # Compact tokens: the arms' positions in the router's arm list at decision time.
    arm_index: int = 0
    challenger_index: int = NO_ARM
    # The router's version at decision time, from the decision (joined); None: not known.
    router_version: int | None = None


class TokenSigner:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("signing key must be at least 16 bytes")
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)  # copied per message: no rekeying

    def _mac(self, payload: bytes) -> bytes:
        mac = self._keyed.copy()
        mac.update(payload)
        return mac.digest()

    def sign(self, claims: TokenClaims) -> str:
        """A compact token (what Select issues): x and the arm names stay on the server.
        claims.decision_id: a UUID in canonical text (``str(uuid.UUID)``)."""
        decision = bytes.fromhex(claims.decision_id.replace("-", ""))
        if len(decision) != 16:
            raise ValueError(f"decision_id is not a UUID: {claims.decision_id!r}")
        head = _COMPACT.pack(
            COMPACT_VERSION,
            decision,
            claims.router_id,
            claims.arm_index,
            NO_ARM if claims.challenger is None else claims.challenger_index,
            min(max(int(claims.expires_at), 0), 0xFFFF_FFFF),
            _f32(claims.propensity),
            _f32(claims.expected_cost_usd),
            _f32(claims.challenger_cost_usd),
        )
        mac = self._mac(head + claims.tenant.encode())[:_MAC_BYTES]
        return COMPACT_PREFIX + _b64(head + mac)

    def sign_v1(self, claims: TokenClaims) -> str:
        """A token of the first layout, carrying x (for tools whose decisions have no row, such
        as ``bench feedback``'s synthetic ones, and for tests of old tokens)."""
        if claims.x is None:
            raise ValueError("a v1 token carries x")
        body = {
            "d": claims.decision_id,
            "t": claims.tenant,
            "r": claims.router_id,
            "a": claims.arm,
            "x": _b64(claims.x.astype("<f4").tobytes()),
            "p": claims.propensity,
            "c": claims.expected_cost_usd,
            "e": claims.expires_at,
        }
        if claims.challenger is not None:  # absent otherwise: tokens without one are unchanged
            body["h"], body["hc"] = claims.challenger, claims.challenger_cost_usd
        payload = json.dumps(
            body,
            separators=(",", ":"),
            allow_nan=False,  # standard JSON: a NaN or infinity here is a bug, not a token
        ).encode()
        return f"{_PREFIX}.{_b64(payload)}.{_b64(self._mac(payload))}"

    def verify(self, token: str, tenant: str) -> TokenClaims:
        """Claims of a token this deployment signed for ``tenant``; PermissionDenied for anything
        else. Expiry is the caller's to check (it knows the time)."""
        if not token:
            raise InvalidArgument("decision_id", "must not be empty")
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidArgument("decision_id", "too long to be a decision token")
        if token.startswith(COMPACT_PREFIX):
            return self._verify_compact(token, tenant)
        claims = self._verify_v1(token)
        if claims.tenant != tenant:
            raise PermissionDenied("decision_id was not issued to this tenant")
        return claims

    def _verify_compact(self, token: str, tenant: str) -> TokenClaims:
        try:
            raw = _unb64(token[len(COMPACT_PREFIX) :])
        except ValueError:
            raise PermissionDenied(_NOT_OURS) from None
        if len(raw) != _COMPACT.size + _MAC_BYTES or raw[0] != COMPACT_VERSION:
            raise PermissionDenied(_NOT_OURS)
        head, mac = raw[: _COMPACT.size], raw[_COMPACT.size :]
        if not hmac.compare_digest(mac, self._mac(head + tenant.encode())[:_MAC_BYTES]):
            raise PermissionDenied(
                "decision_id signature does not verify (forged, altered, or not issued to "
                "this tenant)"
            )
        _, did, router_id, arm, rival, expires, propensity, cost, rival_cost = _COMPACT.unpack(head)
        return TokenClaims(
            decision_id=_uuid_text(did),
            tenant=tenant,
            router_id=router_id,
            arm="",
            x=None,
            propensity=propensity,
            expected_cost_usd=cost,
            expires_at=float(expires),
            challenger=None if rival == NO_ARM else "",
            challenger_cost_usd=rival_cost,
            arm_index=arm,
            challenger_index=rival,
        )

    def _verify_v1(self, token: str) -> TokenClaims:
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != _PREFIX:
            raise PermissionDenied(_NOT_OURS)
        try:
            payload, mac = _unb64(parts[1]), _unb64(parts[2])
        except ValueError:
            raise PermissionDenied(_NOT_OURS) from None
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise PermissionDenied("decision_id signature does not verify (forged or altered)")
        body = json.loads(payload)
        x = np.frombuffer(_unb64(body["x"]), dtype="<f4").astype(np.float64)
        return TokenClaims(
            decision_id=str(body["d"]),
            tenant=str(body["t"]),
            router_id=int(body["r"]),
            arm=str(body["a"]),
            x=x,
            propensity=float(body["p"]),
            expected_cost_usd=float(body["c"]),
            expires_at=float(body["e"]),
            challenger=None if "h" not in body else str(body["h"]),
            challenger_cost_usd=float(body.get("hc", 0.0)),
        )
