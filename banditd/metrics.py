"""Prometheus metrics: one registry, exported over HTTP on the metrics port.

Labels are bounded by configuration (tenants, routers, arms), never by request content.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge, Histogram, Summary, start_http_server
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)
# The label sets of per-arm and per-router metrics.
ARM_LABELS = ("tenant", "router", "arm")
ROUTER_LABELS = ("tenant", "router")
_CHILDREN: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}


def child(metric: M, *labels: str) -> M:
    """``metric.labels(*labels)``, looked up once: labels() validates and locks on every call
    (a few microseconds; the hot paths call it per request). Label values are bounded by
    configuration (see above), so this cache is too."""
    key = (metric, labels)
    found = _CHILDREN.get(key)
    if found is None:
        found = _CHILDREN[key] = metric.labels(*labels)
    return found


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
    "Feedback events by outcome (accepted, duplicate, expired, invalid; usage: usage reports).",
    ["outcome"],
)
REWARD = Summary(
    "banditd_feedback_reward",
    "Rewards of accepted feedback, by arm (_sum / _count: the mean reward; rate of both: the "
    "reward rate).",
    ARM_LABELS,
)
SPEND = Counter(
    "banditd_spend_usd_total",
    "USD charged by accepted feedback (actual cost, or the expected cost when none came).",
    ARM_LABELS,
)
REPORTED_LATENCY = Summary(
    "banditd_reported_latency_seconds",
    "Latency reported by accepted feedback (_sum / _count: the mean per arm).",
    ARM_LABELS,
)
ENERGY = Counter(
    "banditd_energy_wh_total", "Energy (Wh) reported by accepted feedback.", ARM_LABELS
)
APPLIED_EVENT = Gauge(
    "banditd_applied_event_id",
    "Id of the last feedback event folded into this replica's posterior.",
    ROUTER_LABELS,
)
LOG_LAG = Gauge(
    "banditd_feedback_lag_events",
    "Feedback events in the log that this replica has not applied yet (at the last tail).",
    ROUTER_LABELS,
)

ARM_BREAKER = Gauge(
    "banditd_arm_breaker_state",
    "Arm health circuit breaker: 0 closed (in rotation), 1 half-open (probed), 2 open (skipped).",
    ARM_LABELS,
)


def forget_router(tenant: str, router: str) -> None:
    """Drop a deleted router's gauges: their last values would otherwise stay on every scrape
    until a restart. (Counters and summaries stay: a rate over them needs their history.)"""
    for gauge in (APPLIED_EVENT, LOG_LAG, ARM_BREAKER):
        gauge.remove_by_labels({"tenant": tenant, "router": router})


def forget_arms(tenant: str, router: str, arms: Iterable[str]) -> None:
    """Drop the breaker gauges of arms removed from a router (as ``forget_router``)."""
    for arm in arms:
        ARM_BREAKER.remove(tenant, router, arm)


DECISIONS_DROPPED = Counter(
    "banditd_decisions_unlogged_total",
    "Decisions answered but dropped from the decision log because its buffer was full "
    "(database down for long): their feedback is parked and never joined "
    "(banditd_feedback_unjoined_total); default rewards and stats miss them.",
)
FEEDBACK_PARKED = Counter(
    "banditd_feedback_parked_total",
    "Feedback accepted before its decision row was visible (compact token), parked to be joined "
    "to the decision when the row appears.",
)
FEEDBACK_UNJOINED = Counter(
    "banditd_feedback_unjoined_total",
    "Parked feedback whose decision row never appeared within BANDITD_FEEDBACK_JOIN_WAIT_S "
    "(lost in a crash, or dropped from a full decision log): kept, never applied.",
    ROUTER_LABELS,
)
FEEDBACK_JOIN_REFUSED = Counter(
    "banditd_feedback_join_refused_total",
    "Parked feedback whose decision appeared but that the join refused (invalid, or a stored "
    "request that cannot be read back): kept, never applied, never tried again.",
    ROUTER_LABELS,
)
DECISIONS_PENDING = Gauge(
    "banditd_decision_log_pending",
    "Decisions made but not yet committed to the decision log.",
)
# -- budgets (issue 6); router "*" is a budget over all of a tenant's routers
BUDGET_SPEND = Gauge(
    "banditd_budget_spend_usd",
    "Committed spend of a budget in its current period (settled plus reserved).",
    ROUTER_LABELS,
)
BUDGET_REMAINING = Gauge(
    "banditd_budget_remaining_usd",
    "Limit minus committed spend of a budget in its current period.",
    ROUTER_LABELS,
)
BUDGET_ALERTS = Counter(
    "banditd_budget_alerts_total",
    "Budget alerts fired (each fraction once per period, across replicas).",
    ["tenant", "router", "fraction"],
)
BUDGET_DEFERRED = Gauge(
    "banditd_budget_charges_deferred",
    "Budget charges of decisions served while the database was unreachable, not yet written.",
)
BUDGET_OUTCOMES = Counter(
    "banditd_budget_outcomes_total",
    "Selects a budget changed: fallback (no arm passed the pacer: cheapest affordable), "
    "over_budget (exhausted: cheapest arm anyway), refused (exhausted: RESOURCE_EXHAUSTED).",
    ["tenant", "router", "outcome"],
)
# The GPU path (issue 23): where FAISS runs, chosen once at start (banditd.context.device).
FAISS_DEVICE = Gauge(
    "banditd_faiss_device",
    "1 for the device this process's kNN indexes live on (gpu or cpu), 0 for the other.",
    ["device"],
)


def serve_metrics(listen: str) -> None:
    """Expose /metrics on HOST:PORT in a background thread (for the process's lifetime)."""
    host, _, port = listen.rpartition(":")
    start_http_server(int(port), addr=host.strip("[]"))  # [::1]: the brackets are not the host


# Security (issue 10).
AUTH_REFUSALS = Counter(
    "banditd_auth_refusals_total",
    "Calls refused at the edge, by reason (unauthenticated, permission_denied, rate_limited,"
    " invalid: a request that does not decode, unavailable: key store unreachable).",
    ["reason"],
)
FEEDBACK_CAPPED = Counter(
    "banditd_feedback_capped_total",
    "Feedback refused by a router's per-client cap on one arm (feedback_cap_per_key).",
    ARM_LABELS,
)
FEEDBACK_DIVERGENCE = Gauge(
    "banditd_feedback_divergence",
    "Mean reward of an arm's recent feedback minus the mean of its older feedback.",
    ARM_LABELS,
)
FEEDBACK_ANOMALIES = Counter(
    "banditd_feedback_anomalies_total",
    "Times an arm's recent feedback diverged from its history past the anomaly threshold.",
    ARM_LABELS,
)
DEAD_LETTERS = Counter(
    "banditd_dead_letters_total",
    "Rows set aside instead of written (table dead_letters): decision and feedback_event rows"
    " the database refused as data, skipped_event for log events the posterior skips.",
    ["kind", "tenant"],
)
