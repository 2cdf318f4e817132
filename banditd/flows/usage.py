"""The usage-report flow (issue 22): Feedback with usage_only, sent by the gateway for each
served call. A report carries the call's cost, tokens, latency and error, never a rating: it is
stored apart from the event log (banditd.store.usage, once per decision) and folded into the
decision's first event when that is appended (docs/gateway.md, "Usage and rating")."""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from banditd import metrics
from banditd.errors import InvalidArgument
from banditd.flows.feedback_input import FeedbackInput
from banditd.flows.tokens import TokenClaims
from banditd.store.usage import Usage, UsageStore

log = structlog.get_logger(__name__)


def check_usage_only(req: FeedbackInput) -> None:
    """Refuse a usage report that also rates the call (checked before its token)."""
    if req.thumb is not None or req.reward is not None or req.preference is not None:
        raise InvalidArgument(
            "usage_only", "a usage report has no thumb or reward: rate it separately"
        )


class UsageFlow:
    def __init__(
        self,
        store: UsageStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._clock = clock

    async def record(self, req: FeedbackInput, claims: TokenClaims) -> float:
        """Commit the report, whose token the Feedback flow has verified (``claims``, after
        ``check_usage_only``), its cost settling the decision's budget charges in the same
        transaction; returns the cost it reported (0 when none)."""
        await self._store.add(
            Usage(
                claims.decision_id,
                claims.router_id,
                claims.arm,
                req.cost_usd,
                req.input_tokens,
                req.output_tokens,
                req.latency_ms,
                req.first_token_ms,
                req.energy_wh,
                req.error,
                self._clock(),
            )
        )
        metrics.FEEDBACK.labels("usage").inc()
        log.info("usage", tenant=req.tenant, arm=claims.arm, decision_id=claims.decision_id)
        return req.cost_usd or 0.0
