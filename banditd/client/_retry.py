"""Deadlines and retries: what may be retried, how often, and the time each attempt has.

A call's ``timeout`` covers all its attempts: each attempt gets the time that is left, and no
attempt starts once the backoff would pass the deadline. Only UNAVAILABLE and ABORTED are
retried, and only for calls that are safe to repeat (Call.retry_safe). UNAVAILABLE: the server
(or its database) could not be reached, the attempt may or may not have been done. ABORTED: the
server lost a race with a concurrent change and undid the attempt (a Select: no decision logged,
nothing charged), so a repeat can succeed. An attempt fails with the gRPC error; the client maps
the last one to the banditd exception tree.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import grpc
from tenacity import (
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from banditd.client._errors import map_rpc_error
from banditd.errors import Aborted, Unavailable

log = logging.getLogger("banditd.client")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for UNAVAILABLE and ABORTED; ``attempts=1`` turns retries
    off."""

    attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    jitter_s: float = 0.1

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if not 0 <= self.initial_backoff_s <= self.max_backoff_s or self.jitter_s < 0:
            raise ValueError("need 0 <= initial_backoff_s <= max_backoff_s and jitter_s >= 0")


NO_RETRY = RetryPolicy(attempts=1)


class Deadline:
    """The end of a call's time (None: no deadline), measured on the monotonic clock."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._at = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        return None if self._at is None else max(self._at - time.monotonic(), 0.0)


def tenacity_args(
    policy: RetryPolicy, method: str, retry_safe: bool, deadline: Deadline
) -> dict[str, Any]:
    """Arguments for tenacity's Retrying and AsyncRetrying alike."""

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, grpc.RpcError):
            error = map_rpc_error(error)
        log.info(
            "banditd %s: retry %d of %d in %.2f s after %s",
            method,
            state.attempt_number,
            policy.attempts - 1,
            state.upcoming_sleep,
            error,
        )

    stop: stop_base = stop_after_attempt(policy.attempts if retry_safe else 1)
    if deadline.timeout is not None:
        stop = stop | stop_before_delay(deadline.timeout)
    return {
        "stop": stop,
        "wait": wait_exponential_jitter(
            multiplier=policy.initial_backoff_s, max=policy.max_backoff_s, jitter=policy.jitter_s
        ),
        "retry": retry_if_exception(
            lambda exc: (
                isinstance(exc, grpc.RpcError)
                and isinstance(map_rpc_error(exc), Unavailable | Aborted)
            )
        ),
        "before_sleep": before_sleep,
        "reraise": True,
    }
