"""Feedback poisoning defences beyond the signed token: a per-client cap on the feedback one
client may put on an arm per window, and an anomaly signal when an arm's recent feedback
departs from its history.

Both live in this replica's memory and see the feedback this replica accepts (see
docs/security.md for the threat model and what they do not stop).
"""

from __future__ import annotations

import contextvars
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
from prometheus_client import Gauge

from banditd import metrics
from banditd.domain import FeedbackEvent, RouterSpec
from banditd.errors import BanditdError, ResourceExhausted
from banditd.flows.feedback_input import rated

log = structlog.get_logger(__name__)

# Who sends the current call: "key:<id>" with API keys, else "peer:<address>". Set by the edge.
CLIENT: contextvars.ContextVar[str] = contextvars.ContextVar("banditd_client", default="local")
MAX_CAP_BUCKETS = 100_000


class _Bucket:
    """A leaky bucket (as aiolimiter's): ``cap`` units, drained in ``window`` seconds; units
    taken can be given back."""

    __slots__ = ("_at", "_level", "cap", "window")

    def __init__(self, cap: int, window: float) -> None:
        self.cap, self.window = cap, window
        self._level, self._at = 0.0, time.monotonic()

    def level(self) -> float:
        now = time.monotonic()
        self._level = max(0.0, self._level - (now - self._at) * self.cap / self.window)
        self._at = now
        return self._level

    def room(self, units: int) -> bool:
        return self.level() + units <= self.cap

    def take(self, units: int) -> None:
        self._level += units

    def give_back(self, units: int) -> None:
        self._level = max(0.0, self.level() - units)


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
    _caps: dict[tuple[int, str, str], _Bucket] = field(default_factory=dict)
    _history: dict[tuple[int, str], _ArmHistory] = field(default_factory=dict)

    def within_caps(
        self,
        spec: RouterSpec,
        items: list[tuple[int, FeedbackEvent]],
        refused: list[tuple[int, BanditdError]],
    ) -> list[tuple[int, FeedbackEvent]]:
        """The items the client's per-arm feedback cap lets in, counted (``give_back`` those
        then not accepted); the rest go to ``refused``."""
        if not spec.feedback_cap_per_key:
            return items
        kept = []
        for i, event in items:
            try:
                self.check_cap(spec, event.router_id, *(arm for arm, _ in rated(event)))
            except ResourceExhausted as exc:
                refused.append((i, exc))
                continue
            kept.append((i, event))
        return kept

    def give_back(
        self, spec: RouterSpec, items: list[tuple[int, FeedbackEvent]], accepted: Sequence[int]
    ) -> None:
        """Uncount the items ``within_caps`` let in but for those at positions ``accepted``
        (committed): the cap counts accepted feedback, not attempts (a failed commit retried, a
        duplicate), which write nothing."""
        if spec.feedback_cap_per_key:
            taken = set(accepted)
            for n, (_, event) in enumerate(items):
                if n not in taken:
                    self.uncount(event.router_id, *(arm for arm, _ in rated(event)))

    def check_cap(self, spec: RouterSpec, router_id: int, *arms: str) -> None:
        """Count one feedback event of the current client on each of ``arms``; ResourceExhausted,
        counting none, once the client has put ``spec.feedback_cap_per_key`` events on one of
        them in the window."""
        cap = spec.feedback_cap_per_key
        if not cap:
            return
        client = CLIENT.get()
        window = spec.feedback_cap_window_seconds
        needed = Counter(arms)
        buckets = {}
        for arm, units in needed.items():
            bucket = self._caps.get((router_id, arm, client))
            if bucket is None or (bucket.cap, bucket.window) != (cap, window):
                if len(self._caps) >= MAX_CAP_BUCKETS:
                    self._caps = {k: b for k, b in self._caps.items() if b.level() > 0}
                bucket = self._caps[(router_id, arm, client)] = _Bucket(cap, window)
            if not bucket.room(units):
                metrics.FEEDBACK_CAPPED.labels(spec.tenant, spec.name, arm).inc()
                log.warning(
                    "feedback_capped", tenant=spec.tenant, router=spec.name, arm=arm, client=client
                )
                raise ResourceExhausted(
                    f"feedback cap: this client already put {cap} feedback events on arm {arm!r} "
                    f"within {window} s (router feedback_cap_per_key)"
                )
            buckets[arm] = bucket
        for arm, units in needed.items():
            buckets[arm].take(units)

    def uncount(self, router_id: int, *arms: str) -> None:
        """Give back what ``check_cap`` counted for the current client on ``arms``."""
        client = CLIENT.get()
        for arm in arms:
            if (bucket := self._caps.get((router_id, arm, client))) is not None:
                bucket.give_back(1)

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
