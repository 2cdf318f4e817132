"""`banditd bench select`: Select latency, one caller, against the gRPC floor of the same run.

The command starts its own `banditd serve` (SQLite in a temporary directory) and its own grpc.aio
echo server (another process) that answers Select with a canned SelectResponse taken from banditd
(the same message sizes, both ways). One caller then sends the calls one at a time, interleaved
round by round in a rotating order, so load on the machine touches every series alike:

- ``echo``: a supplied 16-float embedding to the echo server (the floor);
- ``select``: the same request to banditd;
- ``select_fresh``: the same with a fresh ``request_id`` on every call (idempotency lookup);
- ``echo_text`` and ``select_text``: a prompt, to a router with the ``minilm-static`` encoder
  (``--no-text`` leaves them out).

It prints p50/p90/p99 per series, the ratios to the echo server and the goals of issue 20
(p50 <= 1.3x and p99 <= 2x echo, fresh p50 <= 1.5x, text p50 <= 1.6x). ``--profile FILE.svg``
records banditd with py-spy during the measured calls, as a flame graph. ``--throughput`` adds
the Selects/s of ``serve --workers 2`` against a two-process echo server, both driven by the
`bench load` generator at ``--rate`` (goal: >= 75 % of the echo server's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from banditd.commands import reporting
from banditd.commands.argtypes import int_at_least, positive_float
from banditd.commands.bench import load, local
from banditd.commands.bench.echo import echo_server
from banditd.v1 import banditd_pb2 as pb
from banditd.v1 import banditd_pb2_grpc as rpc

TENANT = "bench"
ROUTER = "select"
TEXT_ROUTER = "select-text"
SEED = 20_262
DISTINCT = 256
GOALS = {"p50": 1.3, "p99": 2.0, "fresh_p50": 1.5, "text_p50": 1.6, "throughput": 0.75}
CALL_TIMEOUT_S = 10.0
MAX_TOKEN_CHARS = 160  # issue 20: a decision token, for any router
FIRST_TEXT_TIMEOUT_S = 120.0  # the first text Select loads the encoder
_PROSE = (
    "explain the difference between a list and a tuple in python write a short poem about "
    "autumn summarise this article in three sentences translate the following paragraph into "
    "french what is the derivative of x squared times sine x give me a recipe for a vegan "
    "lasagna with spinach how do I configure nginx as a reverse proxy for a grpc service"
)
WORDS = tuple(_PROSE.split())


def _routers(dim: int, n_arms: int) -> list[pb.RouterConfig]:
    """The embedding and text routers: `bench load`'s arms (spread prices), under this bench's
    names."""
    arms = load.router_config(dim, n_arms).arms
    return [
        pb.RouterConfig(tenant=TENANT, name=ROUTER, embedding_dim=dim, arms=arms),
        pb.RouterConfig(tenant=TENANT, name=TEXT_ROUTER, encoder="minilm-static", arms=arms),
    ]


def _embedding_requests(dim: int, rng: np.random.Generator) -> list[pb.SelectRequest]:
    vectors = rng.standard_normal((DISTINCT, dim)) / np.sqrt(dim)
    return [
        pb.SelectRequest(tenant=TENANT, router=ROUTER, embedding=pb.Embedding(values=v.tolist()))
        for v in vectors
    ]


def _text_requests(rng: np.random.Generator) -> list[pb.SelectRequest]:
    """Prompts of 20-60 words (about 100-350 characters), like a chat turn."""
    return [
        pb.SelectRequest(
            tenant=TENANT,
            router=TEXT_ROUTER,
            prompt=" ".join(rng.choice(WORDS, size=int(rng.integers(20, 61)))),
        )
        for _ in range(DISTINCT)
    ]


# -- the caller ---------------------------------------------------------------------------------


def _stats(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "mean": None}
    ms = np.asarray(seconds) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "n": int(ms.size),
        "p50": round(float(p50), 4),
        "p90": round(float(p90), 4),
        "p99": round(float(p99), 4),
        "mean": round(float(ms.mean()), 4),
    }


async def _measure(
    banditd: str, echo: str, calls: int, warmup: int, dim: int, text: bool
) -> dict[str, list[float]]:
    rng = np.random.default_rng(SEED)
    emb = _embedding_requests(dim, rng)
    prompts = _text_requests(rng) if text else []
    async with (
        grpc.aio.insecure_channel(banditd) as b_channel,
        grpc.aio.insecure_channel(echo) as e_channel,
    ):
        b_stub, e_stub = rpc.RouterStub(b_channel), rpc.RouterStub(e_channel)
        fresh_prefix = uuid.uuid4().hex[:8]

        def fresh(k: int) -> pb.SelectRequest:
            request = pb.SelectRequest()
            request.CopyFrom(emb[k % DISTINCT])
            request.request_id = f"{fresh_prefix}-{k}"
            return request

        series: dict[str, Any] = {
            "echo": lambda k: e_stub.Select(emb[k % DISTINCT], timeout=CALL_TIMEOUT_S),
            "select": lambda k: b_stub.Select(emb[k % DISTINCT], timeout=CALL_TIMEOUT_S),
            "select_fresh": lambda k: b_stub.Select(fresh(k), timeout=CALL_TIMEOUT_S),
        }
        if text:
            series["echo_text"] = lambda k: e_stub.Select(
                prompts[k % DISTINCT], timeout=CALL_TIMEOUT_S
            )
            series["select_text"] = lambda k: b_stub.Select(
                prompts[k % DISTINCT], timeout=CALL_TIMEOUT_S
            )
        times: dict[str, list[float]] = {name: [] for name in series}
        names = list(series)
        gc.collect()
        gc.freeze()
        for k in range(warmup + calls):
            shift = k % len(names)
            for name in names[shift:] + names[:shift]:  # rotate: no series always goes first
                started = time.perf_counter()
                await series[name](k)
                if k >= warmup:
                    times[name].append(time.perf_counter() - started)
        gc.unfreeze()
    return times


# -- the run ------------------------------------------------------------------------------------


def _setup(target: str, dim: int, n_arms: int, text: bool) -> dict[str, bytes]:
    """Create the routers; one real answer of each kind, for the echo server to send back."""
    rng = np.random.default_rng(SEED)
    replies: dict[str, bytes] = {}
    with grpc.insecure_channel(target) as channel:
        admin, router = rpc.AdminStub(channel), rpc.RouterStub(channel)
        for config in _routers(dim, n_arms)[: 2 if text else 1]:
            admin.PutRouter(pb.PutRouterRequest(router=config), timeout=30)
        reply = router.Select(_embedding_requests(dim, rng)[0], timeout=CALL_TIMEOUT_S)
        replies["embedding"] = reply.SerializeToString()
        if text:
            reply = router.Select(_text_requests(rng)[0], timeout=FIRST_TEXT_TIMEOUT_S)
            replies["prompt"] = reply.SerializeToString()
    return replies


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def report_of(times: dict[str, list[float]], config: dict[str, Any]) -> dict[str, Any]:
    """The JSON report: per-series stats, ratios to the echo server, goals met."""
    stats = {name: _stats(seconds) for name, seconds in times.items()}
    echo, sel, fresh = stats["echo"], stats["select"], stats["select_fresh"]
    ratios = {
        "select_p50": _ratio(sel["p50"], echo["p50"]),
        "select_p99": _ratio(sel["p99"], echo["p99"]),
        "fresh_p50": _ratio(fresh["p50"], echo["p50"]),
        "text_p50": (
            _ratio(stats["select_text"]["p50"], stats["echo_text"]["p50"])
            if "select_text" in stats
            else None
        ),
    }

    def met(ratio: float | None, goal: float) -> bool | None:
        return None if ratio is None else ratio <= goal

    return {
        "config": config,
        "machine": {"cores": os.cpu_count(), "load_average_at_end": list(os.getloadavg())},
        "latency_ms": stats,
        "ratios": ratios,
        "goals": {
            "select_p50_le_1.3x": met(ratios["select_p50"], GOALS["p50"]),
            "select_p99_le_2x": met(ratios["select_p99"], GOALS["p99"]),
            "fresh_p50_le_1.5x": met(ratios["fresh_p50"], GOALS["fresh_p50"]),
            "text_p50_le_1.6x": met(ratios["text_p50"], GOALS["text_p50"]),
        },
    }


def _py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    beside = Path(sys.executable).with_name("py-spy")  # in this virtualenv, else on PATH
    return subprocess.Popen(
        [
            str(beside) if beside.exists() else "py-spy",
            *("record", "--pid", str(pid), "--rate", "500", "--nonblocking"),
            *("--format", "raw" if out.suffix == ".txt" else "flamegraph", "--output", str(out)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _log(message: str) -> None:
    print(f"bench select: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _server(url: str, log_level: str, workers: int = 1) -> Iterator[local.ServerProcess]:
    """One `banditd serve` (of ``workers`` processes) on ``url``, with a fresh signing key."""
    with local.servers(
        url,
        1,
        signing_key=secrets.token_hex(32),
        metrics=False,
        log_level=log_level,
        workers=workers,
    ) as (server,):
        yield server


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """`banditd bench select`'s report (the --json object)."""
    text = not args.no_text
    load_at_start = list(os.getloadavg())
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="banditd-bench-"))
        url = f"sqlite+aiosqlite:///{tmp}/bench.db"
        server = stack.enter_context(_server(url, args.server_log_level))
        _log(f"banditd pid {server.pid} on {server.target}")
        replies = _setup(server.target, args.dim, args.arms, text)
        echo = stack.enter_context(echo_server(replies))
        _log(f"echo server on {echo}; {args.calls} calls per series after {args.warmup}")
        spy = None
        if args.profile:
            # Started after the warm-up calls would be better; the warm-up is short beside them.
            spy = _py_spy(server.pid, Path(args.profile).resolve())
        try:
            times = asyncio.run(
                _measure(server.target, echo, args.calls, args.warmup, args.dim, text)
            )
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                spy.wait(60)
    config = {
        "calls_per_series": args.calls,
        "warmup_calls": args.warmup,
        "embedding_dim": args.dim,
        "arms": args.arms,
        "database": "sqlite",
        "server_log_level": args.server_log_level,
        "text_encoder": "minilm-static" if text else None,
        "token_chars": {
            kind: len(pb.SelectResponse.FromString(raw).decision_id)
            for kind, raw in replies.items()
        },
        "load_average_at_start": load_at_start,
    }
    report = report_of(times, config)
    tokens = config["token_chars"]
    report["goals"]["tokens_le_160_chars"] = max(tokens.values()) <= MAX_TOKEN_CHARS
    if args.profile:
        report["profile"] = str(Path(args.profile).resolve())
    if args.throughput:
        report["throughput"] = throughput(args, replies)
        report["goals"]["throughput_ge_75pct_echo"] = report["throughput"]["goal_met"]
    return report


def throughput(args: argparse.Namespace, replies: dict[str, bytes]) -> dict[str, Any]:
    """Selects/s of `serve --workers 2` against a two-process echo server, each driven by the
    same `bench load` generator (open loop at --rate, 2 processes x 4 connections), one after
    the other; banditd on a throwaway Postgres (workers are replicas of one database)."""

    def drive(target: str) -> dict[str, Any]:
        cfg = load.LoadConfig(target, args.rate, args.duration, 1.0, 2, 4, args.dim)
        report = load.run_load(cfg)
        return {"rps": report["achieved_rps"], "latency_ms": report["latency_ms"]}

    with echo_server(replies, processes=2) as echo:
        _log(f"throughput: two-process echo server on {echo}, {args.rate:.0f}/s offered")
        echo_ms = drive(echo)
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(local.throwaway_postgres())  # workers need Postgres
        server = stack.enter_context(_server(url, args.server_log_level, workers=2))
        _log(f"throughput: serve --workers 2 on {server.target}")
        load.put_router(server.target, args.dim, args.arms)
        banditd_ms = drive(server.target)
    ratio = _ratio(banditd_ms["rps"], echo_ms["rps"])
    return {
        "offered_rps": args.rate,
        "duration_s": args.duration,
        "banditd_workers_2": banditd_ms,
        "echo_processes_2": echo_ms,
        "ratio": ratio,
        "goal_met": None if ratio is None else ratio >= GOALS["throughput"],
    }


def render_text(report: dict[str, Any]) -> str:
    lines = [
        f"banditd bench select: one caller, {report['config']['calls_per_series']} calls per "
        f"series, interleaved (load average {report['machine']['load_average_at_end'][0]:.2f})",
        f"{'series':<14}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'mean ms':>10}",
    ]
    for name, s in report["latency_ms"].items():
        lines.append(f"{name:<14}{s['p50']:>10}{s['p90']:>10}{s['p99']:>10}{s['mean']:>10}")
    lines.append(f"ratios to echo: {report['ratios']}")
    if "throughput" in report:
        t = report["throughput"]
        lines.append(
            f"throughput at {t['offered_rps']:.0f}/s offered: serve --workers 2 "
            f"{t['banditd_workers_2']['rps']}/s, two-process echo {t['echo_processes_2']['rps']}/s"
            f" (ratio {t['ratio']})"
        )
    lines.append(f"goals: {report['goals']}")
    return "\n".join(lines)


REPORT = reporting.Command(measure, render_text, json_indent=2)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `bench select`."""
    p.add_argument("--calls", type=int_at_least(1), default=2000, help="per series (2000)")
    p.add_argument("--warmup", type=int_at_least(0), default=200, help="rounds not kept (200)")
    p.add_argument("--dim", type=int_at_least(1), default=16, help="embedding size (16)")
    p.add_argument("--arms", type=int_at_least(1), default=11, help="router arms (11)")
    p.add_argument("--no-text", action="store_true", help="leave out the minilm-static series")
    local.add_log_level_argument(
        p, "log level of banditd (info: one JSON line per decision, as deployed)"
    )
    p.add_argument("--profile", help="py-spy flame graph (SVG; raw if FILE ends in .txt)")
    p.add_argument(
        "--throughput",
        action="store_true",
        help="also Selects/s of serve --workers 2 against a two-process echo server",
    )
    p.add_argument(
        "--rate", type=positive_float, default=6000.0, help="--throughput: offered/s (6000)"
    )
    p.add_argument(
        "--duration", type=positive_float, default=5.0, help="--throughput: measured s (5)"
    )
