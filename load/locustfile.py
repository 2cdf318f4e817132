"""Locust load test of banditd: a realistic mix of Select and delayed thumbs, over gRPC.

Each simulated user is a service in front of an LLM: it asks banditd which model should answer a
request (Select with the prompt, or with the caller's own embedding), and for a share of the
answers a thumb comes back later, once the user has read the answer (Feedback). Every call is
recorded by locust under its own name: "Select text", "Select embedding", "Feedback thumb".

`python -m load.run` starts a server and runs this file; by hand, against a server on this
machine (only loopback targets are accepted):

    locust -f load/locustfile.py --headless -u 50 -r 25 -t 60s --host 127.0.0.1:50051

Knobs, from the environment (defaults in brackets):
  BANDITD_LOAD_TENANT, BANDITD_LOAD_ROUTER   the router to call [demo, chat: `make run`'s]
  BANDITD_LOAD_DIM                           its embedding_dim [16]
  BANDITD_LOAD_EMBEDDING_SHARE               Selects that carry an embedding [0.4]
  BANDITD_LOAD_FEEDBACK_SHARE                decisions that get a thumb [0.3]
  BANDITD_LOAD_FEEDBACK_DELAY                seconds from decision to thumb, MIN,MAX [0.5,3]
  BANDITD_LOAD_THUMBS_UP                     share of thumbs that are up [0.7]
  BANDITD_LOAD_WAIT                          a user's think time between calls, MIN,MAX [0.05,0.5]
  BANDITD_LOAD_RESULTS                       write exact per-call percentiles (JSON) here
"""

from __future__ import annotations

import heapq
import json
import math
import os
import random
import time
from collections import defaultdict
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, between, events, task
from locust.env import Environment
from locust.exception import StopUser

from banditd.commands.bench import local
from banditd.v1 import banditd_pb2 as pb
from banditd.v1 import banditd_pb2_grpc as rpc

grpc_gevent.init_gevent()  # after locust's gevent monkey-patching, before any channel


def _floats(name: str, default: str) -> tuple[float, float]:
    low, high = (float(v) for v in os.environ.get(name, default).split(","))
    return low, high


TENANT = os.environ.get("BANDITD_LOAD_TENANT", "demo")
ROUTER = os.environ.get("BANDITD_LOAD_ROUTER", "chat")
DIM = int(os.environ.get("BANDITD_LOAD_DIM", "16"))
EMBEDDING_SHARE = float(os.environ.get("BANDITD_LOAD_EMBEDDING_SHARE", "0.4"))
FEEDBACK_SHARE = float(os.environ.get("BANDITD_LOAD_FEEDBACK_SHARE", "0.3"))
FEEDBACK_DELAY = _floats("BANDITD_LOAD_FEEDBACK_DELAY", "0.5,3")
THUMBS_UP = float(os.environ.get("BANDITD_LOAD_THUMBS_UP", "0.7"))
WAIT = _floats("BANDITD_LOAD_WAIT", "0.05,0.5")
RESULTS = os.environ.get("BANDITD_LOAD_RESULTS")
CALL_TIMEOUT_S = 10.0

TASKS = [
    "Summarise this memo for the leadership team:",
    "Translate into French:",
    "Write a Python function that",
    "Explain to a new engineer why",
    "Draft a polite reply to a customer who",
    "List the risks of",
]
TOPICS = [
    "the quarterly budget overran by twelve percent",
    "parses ISO dates and rejects invalid ones",
    "our database migrations run before every deploy",
    "asked for a refund after the trial ended",
    "moving the billing service to another region",
    "the cache hit rate dropped after the release",
]


def _refusal(host: str) -> str | None:
    if local.is_loopback(host):
        return None
    return f"refusing to load-test {host!r}: only loopback targets (127.0.0.1)"


@events.init.add_listener
def _only_loopback(environment: Environment, **_: Any) -> None:
    # Early, for --headless; each user checks again (RouterUser.on_start): the web UI can
    # change the host after this.
    if refusal := _refusal(environment.host or ""):
        raise SystemExit(refusal)


class _Timings:
    """Exact response times per call name (locust's own stats round below 100 ms to whole ms)."""

    def __init__(self) -> None:
        self.ms: dict[str, list[float]] = defaultdict(list)
        self.failures: dict[str, int] = defaultdict(int)
        self.started = self.stopped = 0.0

    def summary(self) -> dict[str, Any]:
        seconds = max(self.stopped - self.started, 1e-9)
        out: dict[str, Any] = {"seconds": round(seconds, 3), "calls": {}}
        every = [t for times in self.ms.values() for t in times]
        for name, times in [*sorted(self.ms.items()), ("all", every)]:
            ordered = sorted(times)
            failures = sum(self.failures.values()) if name == "all" else self.failures[name]
            out["calls"][name] = {
                "requests": len(ordered),
                "failures": failures,
                "rps": round(len(ordered) / seconds, 1),
                **{f"p{q}": _percentile(ordered, q) for q in (50, 95, 99)},
            }
        return out


def _percentile(ordered: list[float], q: int) -> float | None:
    if not ordered:
        return None
    rank = max(0, math.ceil(q / 100 * len(ordered)) - 1)
    return round(ordered[rank], 3)


TIMINGS = _Timings()


@events.test_start.add_listener
def _started(**_: Any) -> None:
    TIMINGS.started = time.perf_counter()


@events.request.add_listener
def _record(name: str, response_time: float, exception: BaseException | None, **_: Any) -> None:
    TIMINGS.ms[name].append(response_time)
    if exception is not None:
        TIMINGS.failures[name] += 1


@events.test_stop.add_listener
def _stopped(**_: Any) -> None:
    TIMINGS.stopped = time.perf_counter()
    if RESULTS:
        with open(RESULTS, "w") as out:
            json.dump(TIMINGS.summary(), out)


class RouterUser(User):
    """A service routing its users' LLM requests through banditd, and passing their thumbs on."""

    wait_time = between(*WAIT)

    _channel: grpc.Channel | None = None

    def on_start(self) -> None:
        # Checked here, where the host is used: locust's web UI can change it after start-up.
        if refusal := _refusal(self.host or ""):
            raise StopUser(refusal)
        self._channel = grpc.insecure_channel(self.host)
        self._stub = rpc.RouterStub(self._channel)
        self._due: list[tuple[float, str]] = []  # (when, decision_id): thumbs still to send
        self._rng = random.Random()

    def on_stop(self) -> None:
        if self._channel is not None:
            self._channel.close()

    def _call(self, name: str, method: Any, request: Any) -> Any:
        started = time.perf_counter()
        response, error = None, None
        try:
            response = method(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            error = exc
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0 if response is None else response.ByteSize(),
            exception=error,
            context={},
        )
        return response

    def _send_due_feedback(self) -> None:
        now = time.monotonic()
        while self._due and self._due[0][0] <= now:
            _, decision_id = heapq.heappop(self._due)
            up = self._rng.random() < THUMBS_UP
            self._call(
                "Feedback thumb",
                self._stub.Feedback,
                pb.FeedbackRequest(
                    tenant=TENANT,
                    decision_id=decision_id,
                    thumb=pb.THUMB_UP if up else pb.THUMB_DOWN,
                    output_tokens=self._rng.randint(40, 900),
                    latency_ms=self._rng.uniform(300, 8000),
                ),
            )

    @task
    def route_a_request(self) -> None:
        self._send_due_feedback()
        request = pb.SelectRequest(tenant=TENANT, router=ROUTER, metadata={"app": "loadtest"})
        if self._rng.random() < EMBEDDING_SHARE:
            name = "Select embedding"
            values = [self._rng.gauss(0.0, 1.0) for _ in range(DIM)]
            norm = math.sqrt(sum(v * v for v in values)) or 1.0
            request.embedding.values.extend(v / norm for v in values)
        else:
            name = "Select text"
            request.prompt = f"{self._rng.choice(TASKS)} {self._rng.choice(TOPICS)}"
        decision = self._call(name, self._stub.Select, request)
        if decision is not None and self._rng.random() < FEEDBACK_SHARE:
            when = time.monotonic() + self._rng.uniform(*FEEDBACK_DELAY)
            heapq.heappush(self._due, (when, decision.decision_id))
