"""A budget's configuration and its periods (pure: no I/O).

A budget caps what a tenant (or one of its routers) spends per period: a calendar hour, day or
month in UTC, or a fixed window of ``window_seconds`` repeating from ``window_start`` (Unix
seconds). Alerts fire when committed spend crosses a fraction of the limit, once per period.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from banditd.domain import check_name
from banditd.errors import InvalidArgument

PERIODS = ("hour", "day", "month", "window")
ON_EXHAUSTED = ("cheapest", "refuse")
MAX_ALERTS = 16


@dataclass(frozen=True)
class BudgetSpec:
    """One budget. router "" covers every router of the tenant."""

    tenant: str
    router: str
    limit_usd: float
    period: str
    window_seconds: int = 0
    window_start: float = 0.0
    alerts: tuple[float, ...] = ()
    on_exhausted: str = "cheapest"
    version: int = 0

    def __post_init__(self) -> None:
        check_name("budget.tenant", self.tenant)
        if self.router:
            check_name("budget.router", self.router)
        if not math.isfinite(self.limit_usd) or self.limit_usd < 0:
            raise InvalidArgument(
                "budget.limit_usd", f"must be a finite number >= 0, got {self.limit_usd:g}"
            )
        if self.period not in PERIODS:
            raise InvalidArgument(
                "budget.period", f"must be one of {', '.join(PERIODS)} (a period with an end)"
            )
        if self.period == "window":
            if self.window_seconds < 1:
                raise InvalidArgument(
                    "budget.window_seconds", "a window period needs window_seconds >= 1 (its end)"
                )
            if not math.isfinite(self.window_start) or self.window_start < 0:
                raise InvalidArgument("budget.window_start", "must be Unix seconds >= 0")
        elif self.window_seconds:
            raise InvalidArgument("budget.window_seconds", "only for period window")
        if len(self.alerts) > MAX_ALERTS:
            raise InvalidArgument("budget.alerts", f"at most {MAX_ALERTS} fractions")
        for fraction in self.alerts:
            if not (math.isfinite(fraction) and 0.0 < fraction <= 1.0):
                raise InvalidArgument(
                    "budget.alerts", f"fractions must be in (0, 1], got {fraction:g}"
                )
        if list(self.alerts) != sorted(set(self.alerts)):
            raise InvalidArgument("budget.alerts", "fractions must be increasing, without repeats")
        if self.on_exhausted not in ON_EXHAUSTED:
            raise InvalidArgument(
                "budget.on_exhausted", f"must be one of {', '.join(ON_EXHAUSTED)}"
            )

    @property
    def key(self) -> tuple[str, str]:
        return (self.tenant, self.router)

    @property
    def label(self) -> str:
        """tenant or tenant/router, for logs."""
        return f"{self.tenant}/{self.router}" if self.router else self.tenant


def period_bounds(spec: BudgetSpec, now: float) -> tuple[float, float]:
    """The [start, end) of the period holding ``now`` (Unix seconds)."""
    if spec.period == "window":  # before window_start too (k < 0): the windows leading to it
        # From the window's phase (fmod is exact): with a window_start far from now (stored
        # before SetBudget bounded it), now - window_start rounded now away, and the period
        # returned did not hold now (every Select rolled it again). The same windows otherwise.
        phase = math.fmod(spec.window_start, spec.window_seconds)
        k = math.floor((now - phase) / spec.window_seconds)
        start = phase + k * spec.window_seconds
        return (start, start + spec.window_seconds)
    t = datetime.fromtimestamp(now, UTC)
    if spec.period == "hour":
        start_dt = t.replace(minute=0, second=0, microsecond=0)
        end_dt = start_dt + timedelta(hours=1)
    elif spec.period == "day":
        start_dt = t.replace(hour=0, minute=0, second=0, microsecond=0)
        end_dt = start_dt + timedelta(days=1)
    else:
        start_dt = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end_dt = (start_dt + timedelta(days=32)).replace(day=1)
    return (start_dt.timestamp(), end_dt.timestamp())


def elapsed_fraction(bounds: tuple[float, float], now: float) -> float:
    """How much of the period [start, end) has passed at ``now``, in [0, 1]."""
    start, end = bounds
    return min(1.0, max(0.0, (now - start) / (end - start)))
