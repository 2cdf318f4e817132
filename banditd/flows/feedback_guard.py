"""Feedback poisoning defences beyond the signed token: a per-client cap on the feedback one
client may put on an arm per window, and an anomaly signal when an arm's recent feedback
departs from its history.

Both live in this replica's memory and see the feedback this replica accepts (see
docs/security.md for the threat model and what they do not stop).
"""

from __future__ import annotations

import contextvars
from collections import deque
from dataclasses import dataclass, field

import structlog
from aiolimiter import AsyncLimiter
from prometheus_client import Gauge

from banditd import metrics
from banditd.domain import FeedbackEvent, RouterSpec
from banditd.errors import BanditdError, ResourceExhausted
from banditd.flows.feedback_input import rated

log = structlog.get_logger(__name__)

# Who sends the current call: "key:<id>" with API keys, else "peer:<address>". Set by the edge.
CLIENT: contextvars.ContextVar[str] = contextvars.ContextVar("banditd_client", default="local")
MAX_CAP_BUCKETS = 100_000


@dataclass
class _ArmHistory:
    """Rewards of one arm: the last ``window`` in ``recent``, everything older summed."""

    recent: deque[float]
    older_count: int = 0
    older_sum: float = 0.0
    quiet_until: int = 0  # no second signal before this many events (one per window)
    seen: int = 0
    divergence: Gauge | None = None  # the arm's banditd_feedback_divergence gauge, once looked up


@dataclass
class FeedbackGuard:
    """Per-client caps (``check_cap``) and the divergence signal (``observe``)."""

    anomaly_window: int = 50
    anomaly_min_history: int = 200
    anomaly_threshold: float = 0.3
    _caps: dict[tuple[int, str, str], AsyncLimiter] = field(default_factory=dict)
    _history: dict[tuple[int, str], _ArmHistory] = field(default_factory=dict)

    async def within_caps(
        self,
        spec: RouterSpec,
        items: list[tuple[int, FeedbackEvent]],
        refused: list[tuple[int, BanditdError]],
    ) -> list[tuple[int, FeedbackEvent]]:
        """The items the client's per-arm feedback cap lets in; the rest go to ``refused``."""
        if not spec.feedback_cap_per_key:
            return items
        kept = []
        for i, event in items:
            try:
                for arm, _ in rated(event):
                    await self.check_cap(spec, event.router_id, arm)
            except ResourceExhausted as exc:
                refused.append((i, exc))
                continue
            kept.append((i, event))
        return kept

    async def check_cap(self, spec: RouterSpec, router_id: int, arm: str) -> None:
        """Count one feedback event of the current client on ``arm``; ResourceExhausted once
        the client has put ``spec.feedback_cap_per_key`` events on it in the window."""
        cap = spec.feedback_cap_per_key
        if not cap:
            return
        client = CLIENT.get()
        key = (router_id, arm, client)
        bucket = self._caps.get(key)
        if bucket is None or bucket.max_rate != cap:
            if len(self._caps) >= MAX_CAP_BUCKETS:
                self._caps = {k: b for k, b in self._caps.items() if not b.has_capacity(b.max_rate)}
            bucket = self._caps[key] = AsyncLimiter(cap, spec.feedback_cap_window_seconds)
        if not bucket.has_capacity():
            metrics.FEEDBACK_CAPPED.labels(spec.tenant, spec.name, arm).inc()
            log.warning(
                "feedback_capped", tenant=spec.tenant, router=spec.name, arm=arm, client=client
            )
            raise ResourceExhausted(
                f"feedback cap: this client already put {cap} feedback events on arm {arm!r} "
                f"within {spec.feedback_cap_window_seconds} s (router feedback_cap_per_key)"
            )
        await bucket.acquire()

    def observe(self, spec: RouterSpec, router_id: int, arm: str, reward: float) -> bool:
        """Fold in an accepted reward; True (with a metric and a log line) when the mean of the
        arm's last ``anomaly_window`` rewards is ``anomaly_threshold`` or more away from the
        mean of all its older ones (at least ``anomaly_min_history`` of them)."""
        history = self._history.get((router_id, arm))
        if history is None:
            history = self._history[(router_id, arm)] = _ArmHistory(deque())
        history.recent.append(reward)
        history.seen += 1
        if len(history.recent) > self.anomaly_window:
            old = history.recent.popleft()
            history.older_count += 1
            history.older_sum += old
        if (
            history.older_count < self.anomaly_min_history
            or len(history.recent) < self.anomaly_window
        ):
            return False
        recent_mean = sum(history.recent) / len(history.recent)
        older_mean = history.older_sum / history.older_count
        divergence = recent_mean - older_mean
        if history.divergence is None:
            history.divergence = metrics.FEEDBACK_DIVERGENCE.labels(spec.tenant, spec.name, arm)
        history.divergence.set(divergence)
        if abs(divergence) < self.anomaly_threshold or history.seen < history.quiet_until:
            return False
        history.quiet_until = history.seen + self.anomaly_window
        metrics.FEEDBACK_ANOMALIES.labels(spec.tenant, spec.name, arm).inc()
        log.warning(
            "feedback_anomaly",
            tenant=spec.tenant,
            router=spec.name,
            arm=arm,
            recent_mean_reward=round(recent_mean, 4),
            historic_mean_reward=round(older_mean, 4),
            window=len(history.recent),
            history=history.older_count,
            client=CLIENT.get(),
        )
        return True
