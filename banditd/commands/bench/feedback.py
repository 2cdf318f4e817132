"""`banditd bench feedback`: how fast feedback lands in Postgres and reaches every replica.

Starts --replicas `banditd serve` processes on one database (a throwaway Postgres on 127.0.0.1
unless --database-url) sharing a signing key, creates a router with --dim floats of context and
--arms arms, and logs decisions for it as Select does (rows in ``decisions``, compact tokens
signed with that key; banditd.commands.bench.decisions): what is timed is the production feedback
path, the lookup of each decision's x included.

  stream       --events thumbs in one StreamFeedback upload to the first replica: events/s from
               the first message sent to the reply (which comes only after the last commit)
  ingest       --events more in a JSONL file, sent by `banditd ingest` (run in this process,
               committed chunks of 1,000 lines, a state file written after each): events/s
  bulk         after the upload, the time until every replica has applied all of it
  convergence  --probes single Feedback calls, --probe-rate a second, round-robin over the
               replicas; for each, the time from its commit (the reply) until each other replica
               reports it applied (banditd_applied_event_id on its /metrics, polled every
               POLL_S): p50 / p99 / max over (event, replica) pairs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from sqlalchemy.engine import make_url

from banditd.commands import reporting
from banditd.commands.argtypes import int_at_least
from banditd.commands.bench import local
from banditd.commands.bench.decisions import DecisionMaker
from banditd.commands.bench.load import router_config
from banditd.commands.ingest import ingest
from banditd.flows.tokens import TokenSigner
from banditd.v1 import banditd_pb2 as pb
from banditd.v1 import banditd_pb2_grpc as rpc

TENANT, ROUTER = "bench", "load"  # the router of bench.load.router_config
POLL_S = 0.005
CONVERGE_TIMEOUT_S = 60.0
TARGET_EVENTS_PER_S = 20_000
TARGET_CONVERGENCE_P99_MS = 1000.0


@dataclass(frozen=True)
class FeedbackConfig:
    events: int
    replicas: int
    probes: int
    probe_rate: float
    dim: int
    arms: int


def _thumb(k: int) -> pb.Thumb.ValueType:
    return pb.THUMB_UP if k % 3 else pb.THUMB_DOWN


def _log(message: str) -> None:
    print(f"bench feedback: {message}", file=sys.stderr, flush=True)


def _ms(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    ms = np.asarray(values) * 1e3
    p50, p99 = np.percentile(ms, [50, 99])
    return {
        "n": len(values),
        "p50": round(float(p50), 2),
        "p99": round(float(p99), 2),
        "max": round(float(ms.max()), 2),
    }


async def _applied_id(metrics: str) -> int:
    """banditd_applied_event_id of the benchmark router on a replica's /metrics (0 if absent)."""
    host, _, port = metrics.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"GET /metrics?name[]=banditd_applied_event_id HTTP/1.0\r\nHost: bench\r\n\r\n"
        )
        await writer.drain()
        text = (await reader.read()).decode()
    finally:
        writer.close()
    for line in text.splitlines():
        if line.startswith("banditd_applied_event_id{") and f'router="{ROUTER}"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


async def _wait_applied(servers: list[local.ServerProcess], event_id: int) -> float:
    """Seconds until every replica has applied event_id."""
    started = time.perf_counter()
    for server in servers:
        assert server.metrics is not None
        while await _applied_id(server.metrics) < event_id:
            if time.perf_counter() - started > CONVERGE_TIMEOUT_S:
                raise RuntimeError(f"replica {server.target} did not apply event {event_id}")
            await asyncio.sleep(POLL_S)
    return time.perf_counter() - started


UPLOAD_BATCH = 1000  # events per UploadFeedback message (as `banditd ingest` sends a chunk)


def _stream(target: str, tokens: list[str], per_message: int = 1) -> dict[str, Any]:
    """One upload: StreamFeedback (one event per message), or UploadFeedback with
    ``per_message`` events in each message."""
    events = [
        pb.FeedbackRequest(tenant=TENANT, decision_id=t, thumb=_thumb(k), output_tokens=200)
        for k, t in enumerate(tokens)
    ]
    with grpc.insecure_channel(target) as channel:
        stub = rpc.RouterStub(channel)
        started = time.perf_counter()
        if per_message == 1:
            reply = stub.StreamFeedback(iter(events), timeout=600)
        else:
            batches = [
                pb.FeedbackBatch(tenant=TENANT, events=events[i : i + per_message])
                for i in range(0, len(events), per_message)
            ]
            reply = stub.UploadFeedback(iter(batches), timeout=600)
        seconds = time.perf_counter() - started
    return {
        "events": len(tokens),
        "accepted": reply.accepted,
        "refused": reply.duplicate + reply.expired + reply.invalid,
        "seconds": round(seconds, 3),
        "events_per_s": round(reply.accepted / seconds),
    }


def _ingest(target: str, tokens: list[str], workdir: Path) -> dict[str, Any]:
    path = workdir / "thumbs.jsonl"
    with path.open("w") as out:
        for k, token in enumerate(tokens):
            thumb = "up" if _thumb(k) == pb.THUMB_UP else "down"
            out.write(json.dumps({"decision_id": token, "tenant": TENANT, "thumb": thumb}) + "\n")
    started = time.perf_counter()
    summary = ingest(
        path,
        target,
        tenant=None,
        state_path=workdir / "thumbs.jsonl.ingest-state",
        rejects_path=workdir / "thumbs.jsonl.rejects.jsonl",
        chunk=1000,
        fresh=True,
    )
    seconds = time.perf_counter() - started
    return {
        "events": len(tokens),
        "accepted": summary.accepted,
        "refused": summary.duplicate + summary.expired + summary.invalid + summary.unparsable,
        "seconds": round(seconds, 3),
        "events_per_s": round(summary.accepted / seconds),
    }


async def _convergence(
    servers: list[local.ServerProcess], tokens: list[str], rate: float
) -> tuple[list[float], list[float]]:
    """(commit latencies, commit-to-applied delays) of single Feedback calls."""
    channels = [grpc.aio.insecure_channel(s.target) for s in servers]
    stubs = [rpc.RouterStub(c) for c in channels]
    loop = asyncio.get_running_loop()
    committed: dict[int, tuple[float, int]] = {}  # event id -> (commit time, origin replica)
    seen: set[tuple[int, int]] = set()
    delays: list[float] = []
    commits: list[float] = []
    done = asyncio.Event()

    async def poll(replica: int, metrics: str) -> None:
        while not done.is_set() or any(
            (e, replica) not in seen for e, (_, o) in committed.items() if o != replica
        ):
            applied = await _applied_id(metrics)
            now = loop.time()
            for event_id, (at, origin) in list(committed.items()):
                if origin != replica and event_id <= applied and (event_id, replica) not in seen:
                    seen.add((event_id, replica))
                    delays.append(max(0.0, now - at))
            await asyncio.sleep(POLL_S)

    async def send(k: int, token: str) -> None:
        sent = loop.time()
        reply = await stubs[k % len(stubs)].Feedback(
            pb.FeedbackRequest(tenant=TENANT, decision_id=token, thumb=_thumb(k)), timeout=30
        )
        at = loop.time()
        commits.append(at - sent)
        committed[reply.event_id] = (at, k % len(stubs))

    pollers = [asyncio.create_task(poll(i, s.metrics)) for i, s in enumerate(servers) if s.metrics]
    start = loop.time()
    sends = []
    for k, token in enumerate(tokens):
        await asyncio.sleep(max(0.0, start + k / rate - loop.time()))
        sends.append(asyncio.create_task(send(k, token)))
    await asyncio.gather(*sends)
    done.set()
    try:
        await asyncio.wait_for(asyncio.gather(*pollers), CONVERGE_TIMEOUT_S)
    finally:
        for channel in channels:
            await channel.close()
    return commits, delays


def _router_id(target: str, key: str, dim: int) -> int:
    """The router's id, read from a token Select signed (the API does not show ids)."""
    with grpc.insecure_channel(target) as channel:
        reply = rpc.RouterStub(channel).Select(
            pb.SelectRequest(
                tenant=TENANT, router=ROUTER, embedding=pb.Embedding(values=[0.0] * dim)
            ),
            timeout=30,
        )
    return TokenSigner(key.encode()).verify(reply.decision_id, TENANT).router_id


def run_feedback(cfg: FeedbackConfig, database_url: str) -> dict[str, Any]:
    key = secrets.token_hex(32)
    with (
        local.servers(database_url, cfg.replicas, signing_key=key) as servers,
        tempfile.TemporaryDirectory(prefix="banditd-bench-") as tmp,
    ):
        first = servers[0].target
        with grpc.insecure_channel(first) as channel:
            rpc.AdminStub(channel).PutRouter(
                pb.PutRouterRequest(router=router_config(cfg.dim, cfg.arms)), timeout=30
            )
        minter = DecisionMaker(
            database_url, key, TENANT, ROUTER, _router_id(first, key, cfg.dim), cfg.dim, cfg.arms
        )
        _log(f"{cfg.replicas} replicas on {database_url.split(':')[0]}; logging decisions")
        stream_tokens, ingest_tokens = minter.tokens(cfg.events), minter.tokens(cfg.events)
        upload_tokens = minter.tokens(cfg.events)
        probe_tokens = minter.tokens(cfg.probes)

        _log(f"StreamFeedback of {cfg.events} events")
        stream = _stream(first, stream_tokens)
        last = asyncio.run(_applied_id(servers[0].metrics or ""))
        bulk_s = asyncio.run(_wait_applied(servers, last))
        _log(f"UploadFeedback of {cfg.events} events, {UPLOAD_BATCH} per message")
        upload = _stream(first, upload_tokens, UPLOAD_BATCH)
        _log(f"ingest of {cfg.events} lines")
        ingested = _ingest(first, ingest_tokens, Path(tmp))
        _log(f"{cfg.probes} single Feedback calls at {cfg.probe_rate:g}/s")
        commits, delays = asyncio.run(_convergence(servers, probe_tokens, cfg.probe_rate))
        parked = minter.parked()

    convergence = _ms(delays)
    return {
        "config": {
            "database": database_url.split(":")[0],
            "replicas": cfg.replicas,
            "events": cfg.events,
            "probes": cfg.probes,
            "probe_rate": cfg.probe_rate,
            "embedding_dim": cfg.dim,
            "arms": cfg.arms,
            "poll_ms": POLL_S * 1e3,
            "tail_interval_s": float(os.environ.get("BANDITD_TAIL_INTERVAL_S", "1.0")),
            "token_format": "compact",
            "token_chars": len(upload_tokens[0]),
        },
        "machine": {"cores": os.cpu_count(), "load_average_at_end": list(os.getloadavg())},
        "stream": stream,
        "upload": upload,
        "ingest": ingested,
        "bulk_converged_s": round(bulk_s, 3),
        "parked": parked,
        "commit_ms": _ms(commits),
        "convergence_ms": convergence,
        "targets": {
            "stream_20k_events_per_s": stream["events_per_s"] >= TARGET_EVENTS_PER_S,
            "upload_20k_events_per_s": upload["events_per_s"] >= TARGET_EVENTS_PER_S,
            "ingest_20k_events_per_s": ingested["events_per_s"] >= TARGET_EVENTS_PER_S,
            "convergence_p99_under_1s": (
                None
                if convergence["p99"] is None
                else convergence["p99"] <= TARGET_CONVERGENCE_P99_MS
            ),
        },
    }


def render_text(report: dict[str, Any]) -> str:
    c, s, i = report["config"], report["stream"], report["ingest"]
    u = report["upload"]
    conv, commit = report["convergence_ms"], report["commit_ms"]
    return "\n".join(
        [
            f"banditd bench feedback: {c['replicas']} replicas on {c['database']}, "
            f"{c['events']} events per upload, context of {c['embedding_dim']} floats, "
            f"{c['token_format']} tokens of {c['token_chars']} characters",
            f"StreamFeedback  {s['events_per_s']:>8,} events/s  ({s['accepted']} accepted in "
            f"{s['seconds']} s)",
            f"UploadFeedback  {u['events_per_s']:>8,} events/s  ({u['accepted']} accepted in "
            f"{u['seconds']} s, {UPLOAD_BATCH} events per message)",
            f"banditd ingest  {i['events_per_s']:>8,} events/s  ({i['accepted']} accepted in "
            f"{i['seconds']} s)",
            f"every replica had applied the upload {report['bulk_converged_s']} s after the reply",
            f"Feedback commit, ms: p50 {commit['p50']}  p99 {commit['p99']}",
            f"commit -> applied on another replica, ms ({conv['n']} pairs, polled every "
            f"{c['poll_ms']:g} ms): p50 {conv['p50']}  p99 {conv['p99']}  max {conv['max']}",
            f"targets: {report['targets']}",
        ]
    )


@contextlib.contextmanager
def _database(url: str | None) -> Iterator[str]:
    if url:
        host = make_url(url).host
        if host:  # no host: a SQLite file or a local socket
            local.require_loopback(host, "--database-url host")
        yield url
    else:
        with local.throwaway_postgres() as throwaway:
            yield throwaway


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """`banditd bench feedback`'s report (the --json object)."""
    cfg = FeedbackConfig(
        events=args.events,
        replicas=args.replicas,
        probes=args.probes,
        probe_rate=args.probe_rate,
        dim=args.dim,
        arms=args.arms,
    )
    with _database(args.database_url) as url:
        return run_feedback(cfg, url)


REPORT = reporting.Command(measure, render_text, json_indent=2)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `bench feedback`."""
    p.add_argument(
        "--database-url",
        help="an empty database to use (default: a throwaway Postgres on 127.0.0.1)",
    )
    p.add_argument("--events", type=int_at_least(1), default=20_000, help="per upload (20000)")
    p.add_argument("--replicas", type=int_at_least(2), default=3, help="server processes (3)")
    p.add_argument(
        "--probes", type=int_at_least(1), default=200, help="single Feedback calls (200)"
    )
    p.add_argument("--probe-rate", type=float, default=50.0, help="probes a second (50)")
    p.add_argument("--dim", type=int_at_least(1), default=32, help="embedding size (32)")
    p.add_argument("--arms", type=int_at_least(1), default=11, help="router arms (11)")
