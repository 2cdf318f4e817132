"""Abuse limits: per-tenant request and feedback rates, enforced at the gRPC edge.

Each replica keeps its own buckets (leaky buckets from aiolimiter, in memory): with N replicas
behind a balancer a tenant gets up to N times the configured rate. Size limits (prompt,
embedding, candidates, metadata, message bytes) are checked where each field is decoded.
"""

from __future__ import annotations

from aiolimiter import AsyncLimiter

from banditd.errors import InvalidArgument, ResourceExhausted

MAX_BUCKETS = 10_000  # past this, idle (empty) buckets are dropped before a new one is made


class RateLimiter:
    """Named per-key rates: ``admit(key)`` takes ``amount`` or raises ResourceExhausted.

    rate_per_s 0 turns the limit off; a bucket holds ``burst_s`` seconds' worth of the rate (at
    least 1), and a larger ``amount`` (an UploadFeedback message's events) is InvalidArgument.
    """

    def __init__(self, name: str, setting: str, rate_per_s: float, burst_s: float) -> None:
        self.name = name
        self._setting = setting
        self._rate = rate_per_s
        self._capacity = max(1.0, rate_per_s * burst_s)
        self._period = self._capacity / rate_per_s if rate_per_s else 1.0
        self._buckets: dict[str, AsyncLimiter] = {}

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def _bucket(self, key: str) -> AsyncLimiter:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._buckets = {
                    k: b for k, b in self._buckets.items() if not b.has_capacity(self._capacity)
                }
            bucket = self._buckets[key] = AsyncLimiter(self._capacity, self._period)
        return bucket

    async def admit(self, key: str, amount: float = 1.0) -> None:
        if not self._rate:
            return
        if amount > self._capacity:  # more than the bucket holds: no wait would admit it
            raise InvalidArgument(
                "events",
                f"{amount:g} in one message, more than rate limit {self.name} admits at once: "
                f"at most {self._capacity:g} per message ({self._setting} x "
                "BANDITD_RATE_LIMIT_BURST_S on this replica); send smaller messages",
            )
        bucket = self._bucket(key)
        if not bucket.has_capacity(amount):
            raise ResourceExhausted(
                f"rate limit {self.name}: tenant {key!r} is over {self._setting}="
                f"{self._rate:g} per second on this replica; retry later"
            )
        await bucket.acquire(amount)  # has capacity: returns without waiting


class TenantLimits:
    """The edge's rate limits, one bucket per tenant and kind of call."""

    def __init__(self, selects_per_s: float, feedback_per_s: float, burst_s: float) -> None:
        self.selects = RateLimiter(
            "selects", "BANDITD_RATE_LIMIT_SELECTS_PER_S", selects_per_s, burst_s
        )
        self.feedback = RateLimiter(
            "feedback", "BANDITD_RATE_LIMIT_FEEDBACK_PER_S", feedback_per_s, burst_s
        )
