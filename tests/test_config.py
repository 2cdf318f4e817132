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
