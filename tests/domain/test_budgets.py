"""A budget's periods (pure): the period holding a time holds it, whatever window_start."""

from __future__ import annotations

import pytest

from banditd.domain.budgets import BudgetSpec, period_bounds

NOW = 1_796_675_400.5

# Far from now: the API refuses a window_start past 1e10 (banditd.domain.bounds), but a row
# stored before that bound loads as it is.
STARTS = [0.0, 0.1, NOW, NOW + 600, 1e10, 1e17, 1e20, 1e300]


@pytest.mark.parametrize("window_start", STARTS)
@pytest.mark.parametrize("window_seconds", [1, 60, 86_400])
def test_a_window_holds_now_whatever_its_start(window_start: float, window_seconds: int) -> None:
    spec = BudgetSpec("acme", "", 1.0, "window", window_seconds, window_start)
    start, end = period_bounds(spec, NOW)
    assert start <= NOW < end  # else every Select rolled the period again
    assert end - start == pytest.approx(window_seconds)
    assert period_bounds(spec, start) == (start, end) == period_bounds(spec, end - 1e-3)
    assert period_bounds(spec, end)[0] == end  # the next one
