"""Settings: what the environment may set, and what it may not."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from banditd.config import Settings


@pytest.mark.parametrize(
    "name",
    [
        # inf passed ge=0: every Select was then RESOURCE_EXHAUSTED "over inf per second".
        "rate_limit_selects_per_s",
        "rate_limit_feedback_per_s",
        "rate_limit_burst_s",
        "grace_seconds",
        "tail_interval_s",
        "budget_refresh_s",
        "auth_cache_seconds",
    ],
)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_a_setting_is_a_finite_number(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"BANDITD_{name.upper()}", value)
    with pytest.raises(ValidationError, match=name):
        Settings()


@pytest.mark.parametrize("value", ["3601", "86400", "1e12"])
def test_the_auth_cache_time_is_bounded(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    # A huge cache time was accepted: a revoked key then kept working for as long (for ever).
    monkeypatch.setenv("BANDITD_AUTH_CACHE_SECONDS", value)
    with pytest.raises(ValidationError, match="auth_cache_seconds") as err:
        Settings()
    assert "less than or equal to 3600" in str(err.value)
    monkeypatch.setenv("BANDITD_AUTH_CACHE_SECONDS", "3600")
    assert Settings().auth_cache_seconds == 3600
