from __future__ import annotations

import numpy as np
import pytest

from banditd.errors import PermissionDenied
from banditd.flows.tokens import TokenClaims, TokenSigner


def claims() -> TokenClaims:
    x = np.array([1.0, 0.1, -2.5, 3e-7], dtype=np.float32).astype(np.float64)
    return TokenClaims("d-1", "acme", 7, "gpt-4o-mini", x, 0.25, 0.0012, 1_900_000_000.0)


def test_round_trip_is_exact() -> None:
    signer = TokenSigner(b"k" * 32)
    back = signer.verify(signer.sign(claims()))
    np.testing.assert_array_equal(back.x, claims().x)
    assert (back.decision_id, back.tenant, back.router_id, back.arm) == (
        "d-1",
        "acme",
        7,
        "gpt-4o-mini",
    )
    assert (back.propensity, back.expected_cost_usd, back.expires_at) == (
        0.25,
        0.0012,
        1_900_000_000.0,
    )


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t.replace("v1.", "v2.", 1),
        lambda t: t + "x",
        lambda t: t.split(".")[0] + "." + t.split(".")[1],
        lambda t: "v1." + t.split(".")[1][::-1] + "." + t.split(".")[2],
    ],
)
def test_tampered_tokens_are_refused(mangle: object) -> None:
    signer = TokenSigner(b"k" * 32)
    with pytest.raises(PermissionDenied):
        signer.verify(mangle(signer.sign(claims())))  # type: ignore[operator]


def test_other_key_is_refused() -> None:
    with pytest.raises(PermissionDenied, match="signature"):
        TokenSigner(b"a" * 32).verify(TokenSigner(b"b" * 32).sign(claims()))
