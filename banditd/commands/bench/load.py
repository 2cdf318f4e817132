"""`banditd bench load`: Select capacity of one server, measured by a generator that is not the
bottleneck.

Worker processes (--processes, each its own asyncio loop and --connections gRPC channels, every
channel its own TCP connection) send Select with a supplied embedding at a fixed open-loop rate:
request k of a worker is due at start + k / rate whatever the server's answers do, so a slow
server shows as latency, not as a lower offered rate. Latency is measured from the moment a call
was due (so the generator's own lateness counts against the result, never hides it) and, as
`service`, from the moment it was sent. The first --warmup seconds are sent but not recorded.
In flight calls are capped per worker; calls over the cap are not sent and counted as dropped.

Without --target the command starts its own `banditd serve` (SQLite in a temporary directory, or a
throwaway Postgres with --postgres) on 127.0.0.1 and also reports the server process's CPU use and
its own latency histogram (banditd_rpc_seconds, from /metrics). --profile FILE records the server
with py-spy (the `load` extra) during the measured window and summarises where its time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import multiprocessing
import os
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from banditd.commands import reporting
from banditd.commands.argtypes import int_at_least, positive_float
from banditd.commands.bench import local
from banditd.commands.bench.load_probe import Watched, server_probe
from banditd.v1 import banditd_pb2 as pb
from banditd.v1 import banditd_pb2_grpc as rpc

TENANT = "bench"
ROUTER = "load"
TICK_S = 0.0005
MAX_IN_FLIGHT = 2000  # per worker
CALL_TIMEOUT_S = 5.0
DISTINCT_CONTEXTS = 512
TARGET_RATE = 3000.0
TARGET_P99_MS = 1.0
SEED = 20_251


@dataclass(frozen=True)
class LoadConfig:
    target: str
    rate: float  # Select/s, all workers together
    duration: float  # measured seconds
    warmup: float  # seconds sent before measuring
    processes: int
    connections: int  # per process
    dim: int


def router_config(dim: int, n_arms: int) -> pb.RouterConfig:
    """The benchmark router: n_arms arms with spread prices, contexts of dim floats."""
    return pb.RouterConfig(
        tenant=TENANT,
        name=ROUTER,
        embedding_dim=dim,
        arms=[
            pb.Arm(
                name=f"model-{k}",
                input_price_per_mtok=0.1 * (k + 1),
                output_price_per_mtok=0.4 * (k + 1),
            )
            for k in range(n_arms)
        ],
    )


def _requests(dim: int, seed: int) -> list[pb.SelectRequest]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((DISTINCT_CONTEXTS, dim)) / np.sqrt(dim)
    return [
        pb.SelectRequest(tenant=TENANT, router=ROUTER, embedding=pb.Embedding(values=v.tolist()))
        for v in vectors
    ]


# -- worker process ---------------------------------------------------------------------------


def _worker(cfg: LoadConfig, index: int, conn: Connection) -> None:
    """Entry point of one generator process: report ready, wait for the start time, drive."""
    try:
        result = asyncio.run(_drive(cfg, index, conn))
    except BaseException as exc:  # the parent must hear of it, whatever it was
        conn.send({"error": repr(exc)})
        raise
    conn.send(result)


async def _drive(cfg: LoadConfig, index: int, conn: Connection) -> dict[str, Any]:
    rate = cfg.rate / cfg.processes
    requests = _requests(cfg.dim, SEED + index)
    channels = [
        # A private subchannel pool per channel: one TCP connection each.
        grpc.aio.insecure_channel(cfg.target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(cfg.connections)
    ]
    stubs = [rpc.RouterStub(c) for c in channels]
    for stub in stubs:  # connect and warm every channel
        await stub.Select(requests[0], timeout=30.0)
    conn.send("ready")
    start_at = float(conn.recv())  # time.time() of the first call, shared by all workers

    loop = asyncio.get_running_loop()
    t0 = loop.time() + (start_at - time.time())
    total = int(rate * (cfg.warmup + cfg.duration))
    first = int(rate * cfg.warmup)  # the first recorded call
    latency = np.full(total - first, np.nan)
    service = np.full(total - first, np.nan)
    errors: collections.Counter[str] = collections.Counter()
    dropped = 0
    last_done = 0.0
    in_flight: set[asyncio.Task[None]] = set()

    async def call(k: int, due: float) -> None:
        nonlocal last_done
        sent = loop.time()
        try:
            await stubs[k % len(stubs)].Select(requests[k % len(requests)], timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            if k >= first:
                errors[exc.code().name] += 1
            return
        done = loop.time()
        if k >= first:
            latency[k - first] = done - due
            service[k - first] = done - sent
            last_done = max(last_done, done)

    cpu_started = 0.0
    k = 0
    while k < total:
        due_now = min(total, int((loop.time() - t0) * rate) + 1)
        while k < due_now:
            if k == first:
                cpu_started = time.process_time()
            if len(in_flight) >= MAX_IN_FLIGHT:
                dropped += k >= first
            else:
                task = asyncio.create_task(call(k, t0 + k / rate))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            k += 1
        await asyncio.sleep(TICK_S)
    if in_flight:
        await asyncio.gather(*in_flight)
    cpu = time.process_time() - cpu_started
    for channel in channels:
        await channel.close()
    return {
        "latency": latency.astype(np.float32).tobytes(),
        "service": service.astype(np.float32).tobytes(),
        "errors": dict(errors),
        "dropped": dropped,
        "window_end": last_done - t0 - cfg.warmup,  # seconds after the measured window opened
        "cpu_s": cpu,
    }


# -- the run ------------------------------------------------------------------------------------


def _stats_ms(seconds: np.ndarray[Any, np.dtype[np.float32]]) -> dict[str, float | None]:
    if seconds.size == 0:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    ms = seconds.astype(np.float64) * 1e3
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "max": round(float(ms.max()), 3),
    }


def _log(message: str) -> None:
    print(f"bench load: {message}", file=sys.stderr, flush=True)


def run_load(
    cfg: LoadConfig,
    *,
    server: Watched | None = None,
    profile: Path | None = None,
) -> dict[str, Any]:
    """Drive cfg.target at cfg.rate for warmup + duration seconds; the report (the --json)."""
    ctx = multiprocessing.get_context("spawn")  # no forked gRPC state
    pipes, procs = [], []
    for index in range(cfg.processes):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(cfg, index, child), daemon=True)
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    try:
        for pipe in pipes:
            message = pipe.recv()
            if message != "ready":
                raise RuntimeError(f"load worker failed to start: {message}")
        start_at = time.time() + 0.5
        for pipe in pipes:
            pipe.send(start_at)
        window_start = start_at + cfg.warmup
        with server_probe(server, window_start, cfg.duration, profile) as probe:
            results = [pipe.recv() for pipe in pipes]
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    failed = [r["error"] for r in results if "error" in r]
    if failed:
        raise RuntimeError(f"load worker failed: {failed[0]}")

    def merged(key: str) -> np.ndarray[Any, np.dtype[np.float32]]:
        values: np.ndarray[Any, np.dtype[np.float32]] = np.concatenate(
            [np.frombuffer(r[key], dtype=np.float32) for r in results]
        )
        kept: np.ndarray[Any, np.dtype[np.float32]] = values[~np.isnan(values)]
        return kept

    latency, service = merged("latency"), merged("service")
    errors: collections.Counter[str] = collections.Counter()
    for r in results:
        errors.update(r["errors"])
    window = max(cfg.duration, *(r["window_end"] for r in results))
    offered = int(cfg.rate / cfg.processes * cfg.duration) * cfg.processes
    stats = _stats_ms(latency)
    report: dict[str, Any] = {
        "config": {
            "target": cfg.target,
            "rate": cfg.rate,
            "duration_s": cfg.duration,
            "warmup_s": cfg.warmup,
            "processes": cfg.processes,
            "connections_per_process": cfg.connections,
            "embedding_dim": cfg.dim,
        },
        "machine": {"cores": os.cpu_count(), "load_average_at_end": list(os.getloadavg())},
        "offered": offered,
        "ok": int(latency.size),
        "errors": dict(errors),
        "dropped": sum(int(r["dropped"]) for r in results),
        "achieved_rps": round(latency.size / window, 1),
        "latency_ms": stats,
        "service_ms": _stats_ms(service),
        "client_cpu_cores": round(sum(r["cpu_s"] for r in results) / cfg.duration, 2),
        **probe,
    }
    report["targets"] = {
        "p99_1ms_at_3000_per_s": (
            None
            if cfg.rate < TARGET_RATE or stats["p99"] is None
            else report["achieved_rps"] >= 0.99 * TARGET_RATE and stats["p99"] <= TARGET_P99_MS
        )
    }
    return report


def render_text(report: dict[str, Any]) -> str:
    c, lat, svc = report["config"], report["latency_ms"], report["service_ms"]
    lines = [
        f"banditd bench load: Select with a {c['embedding_dim']}-float embedding against "
        f"{c['target']}, {c['rate']:.0f}/s offered for {c['duration_s']} s "
        f"({c['processes']} processes x {c['connections_per_process']} connections)",
        f"achieved {report['achieved_rps']:,.0f}/s; ok {report['ok']}, errors "
        f"{report['errors'] or 0}, dropped {report['dropped']}",
        f"latency from due time, ms: p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}  "
        f"max {lat['max']}",
        f"latency from send, ms:     p50 {svc['p50']}  p95 {svc['p95']}  p99 {svc['p99']}",
        f"client CPU {report['client_cpu_cores']} cores",
    ]
    if "server_cpu_cores" in report:
        lines.append(f"server CPU {report['server_cpu_cores']} cores")
    if "server_histogram_ms" in report:
        h = report["server_histogram_ms"]
        lines.append(
            f"server histogram (in the servicer), ms: p50 {h['p50']}  p95 {h['p95']}  "
            f"p99 {h['p99']}  ({h['under_1ms_pct']} % under 1 ms)"
        )
    if "self_pct" in report.get("profile", {}):
        lines.append(f"server profile ({report['profile']['samples']} samples), by area %:")
        lines += [f"  {pct:>5.1f}  {name}" for name, pct in report["profile"]["areas_pct"]]
        lines.append("self %:")
        lines += [f"  {pct:>5.1f}  {name}" for name, pct in report["profile"]["self_pct"]]
        lines.append("banditd functions, inclusive %:")
        lines += [f"  {pct:>5.1f}  {name}" for name, pct in report["profile"]["inclusive_pct"]]
    lines.append(f"targets: {report['targets']}")
    return "\n".join(lines)


def put_router(target: str, dim: int, n_arms: int) -> None:
    with grpc.insecure_channel(target) as channel:
        rpc.AdminStub(channel).PutRouter(
            pb.PutRouterRequest(router=router_config(dim, n_arms)), timeout=30
        )


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """`banditd bench load`'s report (the --json object)."""
    settings = (args.rate, args.duration, args.warmup, args.processes, args.connections, args.dim)
    profile = Path(args.profile).resolve() if args.profile else None
    if args.target:
        local.require_loopback(args.target, "--target")
        put_router(args.target, args.dim, args.arms)
        watched = Watched(args.server_pid, args.metrics) if args.server_pid else None
        return run_load(LoadConfig(args.target, *settings), server=watched, profile=profile)
    with contextlib.ExitStack() as stack:
        if args.postgres:
            url = stack.enter_context(local.throwaway_postgres())
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="banditd-bench-"))
            url = f"sqlite+aiosqlite:///{tmp}/bench.db"
        (server,) = stack.enter_context(
            local.servers(
                url, 1, signing_key=secrets.token_hex(32), log_level=args.server_log_level
            )
        )
        _log(f"server pid {server.pid} on {server.target} ({url.split(':')[0]})")
        put_router(server.target, args.dim, args.arms)
        watched = Watched(server.pid, server.metrics)
        report = run_load(LoadConfig(server.target, *settings), server=watched, profile=profile)
        report["config"]["database"] = url.split(":")[0]
        report["config"]["server_log_level"] = args.server_log_level
        return report


REPORT = reporting.Command(measure, render_text, json_indent=2)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `bench load`."""
    p.add_argument("--target", help="HOST:PORT of a running server (default: start one here)")
    p.add_argument(
        "--server-pid", type=int, help="with --target: its process id, for CPU use and --profile"
    )
    p.add_argument("--metrics", help="with --server-pid: its /metrics HOST:PORT, for the histogram")
    p.add_argument("--postgres", action="store_true", help="local server on a throwaway Postgres")
    p.add_argument("--rate", type=positive_float, default=3000.0, help="Select/s offered (3000)")
    p.add_argument("--duration", type=positive_float, default=10.0, help="measured s (10)")
    p.add_argument("--warmup", type=float, default=2.0, help="s sent before measuring (2)")
    p.add_argument("--processes", type=int_at_least(1), default=2, help="generator processes (2)")
    p.add_argument("--connections", type=int_at_least(1), default=4, help="per process (4)")
    p.add_argument("--dim", type=int_at_least(1), default=32, help="embedding size (32)")
    p.add_argument("--arms", type=int_at_least(1), default=11, help="router arms (11)")
    local.add_log_level_argument(
        p, "log level of the local server (info: one JSON line per decision, as deployed)"
    )
    p.add_argument("--profile", help="py-spy raw profile of the local server to this file")
