"""Prometheus metrics: one registry, exported over HTTP on the metrics port.

Labels are bounded by configuration (tenants, routers, arms), never by request content.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RPC_SECONDS = Histogram(
    "banditd_rpc_seconds",
    "Server-side latency of each RPC, by method and status code (refusals: code != OK).",
    ["method", "code"],
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
)
DECISIONS = Counter(
    "banditd_decisions_total",
    "Decisions made, by chosen arm and whether the pick was exploration.",
    ["tenant", "router", "arm", "explored"],
)
FEEDBACK = Counter(
    "banditd_feedback_events_total",
    "Feedback events by outcome (accepted, duplicate, expired, invalid).",
    ["outcome"],
)
SPEND = Counter(
    "banditd_spend_usd_total",
    "USD charged by accepted feedback (actual cost, or the expected cost when none came).",
    ["tenant", "router", "arm"],
)
APPLIED_EVENT = Gauge(
    "banditd_applied_event_id",
    "Id of the last feedback event folded into this replica's posterior.",
    ["tenant", "router"],
)
LOG_LAG = Gauge(
    "banditd_feedback_lag_events",
    "Feedback events in the log that this replica has not applied yet (at the last tail).",
    ["tenant", "router"],
)

# -- budgets (issue 6); router "*" is a budget over all of a tenant's routers
BUDGET_SPEND = Gauge(
    "banditd_budget_spend_usd",
    "Committed spend of a budget in its current period (settled plus reserved).",
    ["tenant", "router"],
)
BUDGET_REMAINING = Gauge(
    "banditd_budget_remaining_usd",
    "Limit minus committed spend of a budget in its current period.",
    ["tenant", "router"],
)
BUDGET_ALERTS = Counter(
    "banditd_budget_alerts_total",
    "Budget alerts fired (each fraction once per period, across replicas).",
    ["tenant", "router", "fraction"],
)
BUDGET_OUTCOMES = Counter(
    "banditd_budget_outcomes_total",
    "Selects a budget changed: fallback (no arm passed the pacer: cheapest affordable), "
    "over_budget (exhausted: cheapest arm anyway), refused (exhausted: RESOURCE_EXHAUSTED).",
    ["tenant", "router", "outcome"],
)


def serve_metrics(listen: str) -> None:
    """Expose /metrics on HOST:PORT in a background thread (for the process's lifetime)."""
    host, _, port = listen.rpartition(":")
    start_http_server(int(port), addr=host)
