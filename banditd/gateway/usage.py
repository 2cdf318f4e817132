"""What a served call used: latency (first token and total), tokens and cost, measured by the
gateway and sent to banditd as a usage report (Feedback with usage_only; docs/gateway.md).

Tokens come from the upstream's ``usage`` (a JSON answer, or the last chunk of a stream asked
with ``stream_options.include_usage``). An answer without it is counted roughly: one token per
4 characters of the prompt and of the answer's content (CHARS_PER_TOKEN): the messages' of a
JSON answer, the deltas' of a stream, with the name and arguments of each tool call.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from banditd.client import AsyncClient, BanditdError
from banditd.gateway import metrics
from banditd.gateway.upstream import Upstream

log = structlog.get_logger(__name__)

CHARS_PER_TOKEN = 4
MAX_LINE = 1 << 20  # an SSE line longer than this is passed through but not parsed


def rough_tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def _chars(text: Any) -> int:
    return len(text) if isinstance(text, str) else 0


@dataclass
class Meter:
    """Timing and token counts of one upstream attempt."""

    prompt_chars: int
    started: float = field(default_factory=time.perf_counter)
    first_token_s: float | None = None
    total_s: float | None = None
    input_tokens: int | None = None  # from the upstream's usage
    output_tokens: int | None = None
    content_chars: int = 0  # of the answer's content (messages, or a stream's deltas)
    _pending: bytes = b""

    def first_bytes(self) -> None:
        if self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self.started

    def done(self) -> None:
        self.total_s = time.perf_counter() - self.started

    def read_json(self, body: bytes) -> None:
        """Usage of a whole (non-streaming) answer."""
        with contextlib.suppress(ValueError, RecursionError):  # unreadable: counted from nothing
            answer = json.loads(body)
            self._content(answer, "message")
            self._usage(answer)

    def feed(self, chunk: bytes) -> None:
        """Fold in a chunk of an SSE stream (any split: lines are reassembled)."""
        self._pending += chunk
        *lines, self._pending = self._pending.split(b"\n")
        if len(self._pending) > MAX_LINE:
            self._pending = b""
        for line in lines:
            self._line(line.strip())

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return
        data = line[5:].strip()
        if not data or data == b"[DONE]":
            return
        try:
            event = json.loads(data)
        except (ValueError, RecursionError):
            return
        self._content(event, "delta")
        self._usage(event)

    def _content(self, answer: Any, key: str) -> None:
        """Count the content of each choice's ``key`` (message, or a chunk's delta), and the
        name and arguments of its tool calls (a tool call has no content)."""
        choices = answer.get("choices") if isinstance(answer, dict) else None
        for choice in choices if isinstance(choices, list) else ():
            part = choice.get(key) if isinstance(choice, dict) else None
            if not isinstance(part, dict):
                continue
            self.content_chars += _chars(part.get("content"))
            calls = part.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    self.content_chars += _chars(function.get("name"))
                    self.content_chars += _chars(function.get("arguments"))

    def _usage(self, answer: Any) -> None:
        usage = answer.get("usage") if isinstance(answer, dict) else None
        if not isinstance(usage, dict):
            return
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int) and prompt >= 0:
            self.input_tokens = prompt
        if isinstance(completion, int) and completion >= 0:
            self.output_tokens = completion

    def tokens(self) -> tuple[int, int]:
        """(input, output): reported, else counted roughly."""
        return (
            self.input_tokens if self.input_tokens is not None else rough_tokens(self.prompt_chars),
            self.output_tokens
            if self.output_tokens is not None
            else rough_tokens(self.content_chars),
        )


@dataclass(frozen=True)
class Served:
    """A decision whose arm answered: what to report once the answer is complete."""

    tenant: str
    router: str
    decision_id: str
    upstream: Upstream
    meter: Meter


async def report_usage(
    client: AsyncClient, served: Served, api_key: str | None, *, error: bool = False
) -> None:
    """Send the usage report of a served call (never a rating: the caller rates it later)."""
    meter, up = served.meter, served.upstream
    input_tokens, output_tokens = meter.tokens()
    labels = (served.tenant, served.router, up.arm)
    if meter.total_s is not None and not error:
        metrics.UPSTREAM_SECONDS.labels(*labels).observe(meter.total_s)
    args: dict[str, Any] = {
        "tenant": served.tenant,
        "decision_id": served.decision_id,
        "usage_only": True,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cost_usd": up.cost_usd(input_tokens, output_tokens),
        "error": error,
    }
    if meter.total_s is not None:
        args["latency_ms"] = meter.total_s * 1000.0
    if meter.first_token_s is not None:
        args["first_token_ms"] = meter.first_token_s * 1000.0
    await _send(client, "usage", api_key, args)


async def report_failure(
    client: AsyncClient, tenant: str, decision_id: str, api_key: str | None, elapsed_s: float
) -> None:
    """A failed arm's decision gets its rating now: reward 0 with error set, so the arm's
    breaker and the posterior learn from it (this decision is never given to the caller)."""
    args: dict[str, Any] = {
        "tenant": tenant,
        "decision_id": decision_id,
        "reward": 0.0,
        "error": True,
        "cost_usd": 0.0,
        "latency_ms": elapsed_s * 1000.0,
    }
    await _send(client, "failure", api_key, args)


async def _send(client: AsyncClient, kind: str, api_key: str | None, args: dict[str, Any]) -> None:
    try:
        await client.feedback(api_key=api_key, **args)
    except BanditdError as exc:
        metrics.REPORTS.labels(kind, exc.code).inc()
        log.warning("gateway_report_refused", kind=kind, code=exc.code, message=exc.message)
        return
    metrics.REPORTS.labels(kind, "ok").inc()
