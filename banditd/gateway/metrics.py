"""The gateway's Prometheus metrics, in a registry of their own (served at the gateway's
/metrics). Labels are tenant, router and arm after Select accepted them: bounded by
configuration, never by request content."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)
LABELS = ["tenant", "router", "arm"]

REQUESTS = Counter(
    "banditd_gateway_requests_total",
    "Gateway HTTP requests by endpoint and status code.",
    ["endpoint", "status"],
    registry=REGISTRY,
)
UPSTREAM_CALLS = Counter(
    "banditd_gateway_upstream_calls_total",
    "Upstream calls by arm and outcome (ok, or the failure: connect, timeout, status_429, "
    "status_5xx, status_4xx, no_upstream, missing_key, stream_broken).",
    [*LABELS, "outcome"],
    registry=REGISTRY,
)
UPSTREAM_ERRORS = Counter(
    "banditd_gateway_upstream_errors_total",
    "Failed upstream calls by arm and reason (the failures of banditd_gateway_upstream_calls).",
    [*LABELS, "reason"],
    registry=REGISTRY,
)
CALLER_HANGUPS = Counter(
    "banditd_gateway_caller_hangups_total",
    "Streamed answers whose caller hung up before their end (reported with error set).",
    LABELS,
    registry=REGISTRY,
)
FALLBACKS = Counter(
    "banditd_gateway_fallbacks_total",
    "Times the gateway left an arm whose upstream failed for the next arm of the ranking.",
    LABELS,
    registry=REGISTRY,
)
UPSTREAM_SECONDS = Histogram(
    "banditd_gateway_upstream_seconds",
    "Total latency of successful upstream calls (to the last byte).",
    LABELS,
    registry=REGISTRY,
)
FIRST_TOKEN_SECONDS = Histogram(
    "banditd_gateway_first_token_seconds",
    "Time to the first streamed bytes of successful streaming upstream calls.",
    LABELS,
    registry=REGISTRY,
)
REPORTS = Counter(
    "banditd_gateway_reports_total",
    "Reports the gateway sent to banditd: usage (served calls) or failure (failed arms), by "
    "outcome (ok, or the refusal's gRPC code).",
    ["kind", "outcome"],
    registry=REGISTRY,
)
