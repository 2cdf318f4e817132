"""Budgets (issue 6): Budget <-> BudgetSpec, a budget's usage, and spend lines."""

from __future__ import annotations

from banditd.budget.usage import BudgetUsage
from banditd.domain.budgets import BudgetSpec
from banditd.edge.codec.fields import encoded
from banditd.errors import InvalidArgument
from banditd.store.budgets import SpendLine
from banditd.v1 import banditd_pb2 as pb

_PERIODS = {
    pb.BUDGET_PERIOD_HOUR: "hour",
    pb.BUDGET_PERIOD_DAY: "day",
    pb.BUDGET_PERIOD_MONTH: "month",
    pb.BUDGET_PERIOD_WINDOW: "window",
}
_PERIOD_ENUM = {name: value for value, name in _PERIODS.items()}
_ON_EXHAUSTED = {pb.ON_EXHAUSTED_CHEAPEST: "cheapest", pb.ON_EXHAUSTED_REFUSE: "refuse"}


def budget_from_proto(msg: pb.Budget) -> BudgetSpec:
    # Here rather than in BudgetSpec: a budget stored with one before this check still loads.
    if msg.window_start_unix and msg.period != pb.BUDGET_PERIOD_WINDOW:
        raise InvalidArgument("budget.window_start", "only for period window (it would be ignored)")
    return BudgetSpec(
        tenant=msg.tenant,
        router=msg.router,
        limit_usd=msg.limit_usd,
        period=_PERIODS.get(msg.period, f"unspecified ({msg.period})"),
        window_seconds=msg.window_seconds,
        window_start=msg.window_start_unix,
        alerts=tuple(msg.alerts),
        on_exhausted=_ON_EXHAUSTED.get(msg.on_exhausted, f"value {msg.on_exhausted}"),
    )


def budget_to_proto(spec: BudgetSpec) -> pb.Budget:
    return pb.Budget(
        tenant=spec.tenant,
        router=spec.router,
        limit_usd=spec.limit_usd,
        period=_PERIOD_ENUM[spec.period],
        window_seconds=spec.window_seconds,
        window_start_unix=spec.window_start,
        alerts=list(spec.alerts),
        on_exhausted=(
            pb.ON_EXHAUSTED_REFUSE if spec.on_exhausted == "refuse" else pb.ON_EXHAUSTED_CHEAPEST
        ),
        version=spec.version,
    )


def budget_usage_to_proto(usage: BudgetUsage) -> pb.GetBudgetResponse:
    return pb.GetBudgetResponse(
        budget=budget_to_proto(usage.spec),
        usage=pb.BudgetUsage(
            period_start_unix=usage.period_start,
            period_end_unix=usage.period_end,
            spent_usd=usage.committed_usd,
            alerts_fired=list(usage.alerts_fired),
            **{name: getattr(usage, name) for name in ("leased_usd", "remaining_usd", "elapsed")},
        ),
    )


def spend_to_proto(lines: list[SpendLine]) -> pb.GetSpendResponse:
    return pb.GetSpendResponse(
        lines=[pb.SpendLine(**encoded(line)) for line in lines],
        total_usd=sum(line.spend_usd for line in lines),
    )
