"""Signed decision tokens: what Feedback needs, carried by the caller, forged by no one.

Layout: ``v1.<base64url(payload)>.<base64url(hmac-sha256(payload))>``. The payload is JSON with
the context vector as base64 float32 bytes; x is stored as float32 everywhere (see context), so the
float64 x rebuilt from the token equals the one the policy scored, bit for bit.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass

import numpy as np

from banditd.domain import FloatArray
from banditd.errors import InvalidArgument, PermissionDenied

_PREFIX = "v1"
MAX_TOKEN_CHARS = 65_536


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _unb64(text: str) -> bytes:
    """base64.urlsafe_b64decode of unpadded text, without its per-call overhead (same result,
    same ValueError for what it cannot decode)."""
    return binascii.a2b_base64(text.encode("ascii").translate(_URLSAFE) + b"=" * (-len(text) % 4))


@dataclass(frozen=True)
class TokenClaims:
    """x: shape (dim,), float64 holding float32-exact values."""

    decision_id: str
    tenant: str
    router_id: int
    arm: str
    x: FloatArray
    propensity: float
    expected_cost_usd: float
    expires_at: float
    # Pairwise feedback (issue 21): one token covers both arms of a compared decision.
    challenger: str | None = None
    challenger_cost_usd: float = 0.0


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

    def verify(self, token: str) -> TokenClaims:
        """Claims of a token this deployment signed; PermissionDenied for anything else."""
        if not token:
            raise InvalidArgument("decision_id", "must not be empty")
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidArgument("decision_id", "too long to be a decision token")
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != _PREFIX:
            raise PermissionDenied("decision_id is not a decision token issued by this server")
        try:
            payload, mac = _unb64(parts[1]), _unb64(parts[2])
        except ValueError:
            raise PermissionDenied(
                "decision_id is not a decision token issued by this server"
            ) from None
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
