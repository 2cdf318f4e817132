"""Fault behaviour with real processes: SIGTERM drain, SIGKILL under load, a Postgres outage.

Each test runs `banditd serve` as a child process and drives a bounded Select+Feedback load at it
over loopback, then checks the database itself: every Feedback that was answered OK is in the
event log. The numbers of each run are printed (pytest -s shows them).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import grpc
import numpy as np
import port_for
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from banditd.domain import FeedbackEvent
from banditd.state.posterior import Posterior
from banditd.state.prior import Prior
from banditd.store import Database, engine
from banditd.store.events import EventLog
from banditd.v1 import banditd_pb2 as pb
from banditd.v1 import banditd_pb2_grpc as rpc
from tests.helpers import SIGNING_KEY, StartServer, router_config, wait_until
from tests.postgres_plugin import OwnPostgres

BANDITD = [sys.executable, "-m", "banditd.commands.cli", "serve"]
WORKERS = 8
MAX_ROUNDS = 3000  # per worker: the load is bounded even if a stop signal never comes


@dataclass
class Server:
    proc: asyncio.subprocess.Process
    address: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@asynccontextmanager
async def serve(url: str, log: Path, **settings: str) -> AsyncIterator[Server]:
    """`banditd serve` on a free loopback port; killed at the end if still running."""
    address = f"127.0.0.1:{port_for.select_random()}"
    env = {
        **os.environ,
        "BANDITD_DATABASE_URL": url,
        "BANDITD_LISTEN": address,
        "BANDITD_METRICS_LISTEN": "",
        "BANDITD_SIGNING_KEY": SIGNING_KEY,
        "BANDITD_MIGRATE_ON_START": "true",
        **{f"BANDITD_{k.upper()}": v for k, v in settings.items()},
    }
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *BANDITD, stdout=out, stderr=asyncio.subprocess.STDOUT, env=env
        )
    server = Server(proc, address, log)
    try:
        await _wait_serving(server)
        yield server
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), 30)


async def _wait_serving(server: Server) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        async def serving() -> bool:
            assert server.proc.returncode is None, f"server exited:\n{server.output()[-3000:]}"
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.aio.AioRpcError:
                return False
            return reply.status == health_pb2.HealthCheckResponse.SERVING

        try:
            await wait_until(serving, "the server to start", 90)
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{server.output()[-3000:]}") from None


@dataclass
class Tally:
    """What the clients saw."""

    selects_ok: int = 0
    select_failures: Counter[str] = field(default_factory=Counter)
    acked: dict[int, str] = field(default_factory=dict)  # event_id -> arm, for Feedback OK
    acked_at: list[float] = field(default_factory=list)
    feedback_failures: Counter[str] = field(default_factory=Counter)
    failure_details: set[str] = field(default_factory=set)
    failed_calls_started: list[float] = field(default_factory=list)  # Feedback that failed

    def report(self, title: str) -> str:
        return (
            f"{title}: selects ok={self.selects_ok} failed={dict(self.select_failures)}; "
            f"feedback ok={len(self.acked)} failed={dict(self.feedback_failures)}"
        )


async def load(address: str, tally: Tally, stop: asyncio.Event) -> None:
    """WORKERS concurrent clients, each Select then Feedback in a loop, until ``stop``."""
    async with grpc.aio.insecure_channel(address) as channel:
        router = rpc.RouterStub(channel)

        async def worker(seed: int) -> None:
            rng = np.random.default_rng(seed)
            for _ in range(MAX_ROUNDS):
                if stop.is_set():
                    return
                x = rng.normal(size=4).astype(np.float32)
                try:
                    d = await router.Select(
                        pb.SelectRequest(
                            tenant="acme", router="chat", embedding=pb.Embedding(values=x)
                        ),
                        timeout=10,
                    )
                except grpc.aio.AioRpcError as exc:
                    tally.select_failures[exc.code().name] += 1
                    await asyncio.sleep(0.05)
                    continue
                tally.selects_ok += 1
                started = time.monotonic()
                try:
                    r = await router.Feedback(
                        pb.FeedbackRequest(
                            tenant="acme",
                            decision_id=d.decision_id,
                            reward=float(x[0] > 0),
                            error=bool(rng.random() < 0.05),
                        ),
                        timeout=10,
                    )
                except grpc.aio.AioRpcError as exc:
                    tally.feedback_failures[exc.code().name] += 1
                    tally.failure_details.add(exc.details() or "")
                    tally.failed_calls_started.append(started)
                    continue
                tally.acked[r.event_id] = d.arm
                tally.acked_at.append(time.monotonic())

        await asyncio.gather(*(worker(i) for i in range(WORKERS)))


async def _put_router(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        await rpc.AdminStub(channel).PutRouter(pb.PutRouterRequest(router=router_config()))


async def _stats(address: str) -> pb.GetStatsResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        return await rpc.AdminStub(channel).GetStats(
            pb.GetStatsRequest(tenant="acme", name="chat"), timeout=10
        )


async def _log(url: str) -> list[FeedbackEvent]:
    """The whole feedback log of router 1, read straight from the database."""
    db = Database(url)
    try:
        log = EventLog(db)
        events: list[FeedbackEvent] = []
        while batch := await log.after(1, events[-1].event_id if events else 0):
            events.extend(batch)
        return events
    finally:
        await db.close()


def _assert_acked_in_log(tally: Tally, events: list[FeedbackEvent]) -> None:
    logged = {e.event_id: e.arm for e in events}
    lost = {i: arm for i, arm in tally.acked.items() if logged.get(i) != arm}
    assert not lost, f"{len(lost)} acknowledged feedback events are not in the log"


async def test_sigterm_drains_flushes_and_snapshots(tmp_path: Path) -> None:
    """SIGTERM mid-load: the process exits 0; every Select answered is in the decision log
    (pending ones were flushed at stop), every Feedback answered is in the event log, and a
    final snapshot covers the whole log."""
    db = tmp_path / "drain.db"
    url = f"sqlite+aiosqlite:///{db}"
    async with serve(
        url,
        tmp_path / "server.log",
        decision_flush_ms="500",  # decisions sit pending long enough to need the final flush
        snapshot_every="100000",  # no snapshot but the one taken at stop
        grace_seconds="5",
        log_level="warning",
    ) as server:
        await _put_router(server.address)
        tally, stop = Tally(), asyncio.Event()
        task = asyncio.create_task(load(server.address, tally, stop))
        await wait_until(lambda: len(tally.acked) >= 200 or task.done(), "200 feedback events", 60)
        server.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(server.proc.wait(), 60)
        stop.set()
        await task
    print(tally.report("sigterm"))
    assert code == 0, server.output()[-3000:]
    # Calls that reached the server before it stopped were finished; later ones found no server
    # (UNAVAILABLE), or gRPC cancelled them as they arrived during its shutdown (CANCELLED, seen
    # once in CI on 2 cores): either way unacknowledged, so the client retries.
    assert set(tally.select_failures) | set(tally.feedback_failures) <= {"UNAVAILABLE", "CANCELLED"}
    with sqlite3.connect(db) as conn:
        decisions = conn.execute("select count(*) from decisions").fetchone()[0]
        head = conn.execute("select max(id) from feedback_events").fetchone()[0]
        snapshot = conn.execute("select max(last_event_id) from posterior_snapshots").fetchone()[0]
    assert decisions == tally.selects_ok
    assert snapshot == head
    _assert_acked_in_log(tally, await _log(url))


@pytest.mark.postgres
async def test_sigkill_under_load_loses_no_acknowledged_feedback(
    postgres_url: str, start_server: StartServer, tmp_path: Path
) -> None:
    async with serve(
        postgres_url, tmp_path / "server.log", snapshot_every="50", log_level="warning"
    ) as server:
        await _put_router(server.address)
        tally, stop = Tally(), asyncio.Event()
        task = asyncio.create_task(load(server.address, tally, stop))
        await wait_until(lambda: len(tally.acked) >= 300 or task.done(), "300 feedback events", 60)
        server.proc.kill()  # SIGKILL: no drain, no flush, no snapshot
        await asyncio.wait_for(server.proc.wait(), 30)
        await wait_until(  # clients keep calling a dead server
            lambda: sum(tally.select_failures.values()) >= WORKERS or task.done(),
            "the clients to find the server dead",
        )
        stop.set()
        await task
    print(tally.report("sigkill"))
    assert len(tally.acked) >= 300
    events = await _log(postgres_url)
    _assert_acked_in_log(tally, events)

    # Restart (snapshot + tail): the posterior equals one rebuilt from the whole log.
    restarted = await start_server(postgres_url)
    state = restarted.app.catalog._by_id[1]
    assert state.posterior.last_event_id == events[-1].event_id
    rebuilt = Posterior.empty(Prior.of(state.spec), state.spec.prior_output_tokens)
    for event in events:
        rebuilt.apply(event)
    for arm in rebuilt.arms:
        got, want = state.posterior.index(arm), rebuilt.index(arm)
        assert state.posterior.n_updates[got] == rebuilt.n_updates[want]
        np.testing.assert_allclose(state.posterior.a_inv[got], rebuilt.a_inv[want], atol=1e-9)
        np.testing.assert_allclose(state.posterior.theta[got], rebuilt.theta[want], atol=1e-9)


@pytest.mark.postgres
async def test_postgres_outage_select_serves_feedback_unavailable_then_recovers(
    own_postgres: OwnPostgres, tmp_path: Path
) -> None:
    postgres, url = own_postgres, own_postgres.url
    async with (
        serve(url, tmp_path / "a.log", log_level="warning") as a,
        # A second replica that only hears of new events through LISTEN/NOTIFY (polling rare).
        serve(url, tmp_path / "b.log", tail_interval_s="60") as b,
    ):
        await _put_router(a.address)
        tally, stop = Tally(), asyncio.Event()
        task = asyncio.create_task(load(a.address, tally, stop))
        await wait_until(lambda: len(tally.acked) >= 100 or task.done(), "100 feedback events", 60)
        await postgres.stop()
        down_at, selects_at_down = time.monotonic(), tally.selects_ok
        await asyncio.sleep(3.0)
        failed_while_down = sum(tally.feedback_failures.values())
        selects_while_down = tally.selects_ok - selects_at_down
        await postgres.start()
        up_at = time.monotonic()
        await wait_until(
            lambda: sum(1 for t in tally.acked_at if t > up_at) >= 100 or task.done(),
            "feedback to succeed again after the outage",
            60,
        )
        stop.set()
        await task
        print(
            tally.report("outage")
            + f"; down {up_at - down_at:.1f} s; while down: selects ok={selects_while_down}, "
            f"feedback failed={failed_while_down}"
        )
        # Select never failed; it kept answering from memory while the database was down.
        assert not tally.select_failures
        assert selects_while_down > 0
        # Feedback failed only as UNAVAILABLE, saying why, and did fail: the outage was real.
        assert set(tally.feedback_failures) == {"UNAVAILABLE"}
        assert failed_while_down > 0
        assert all("database unavailable" in d for d in tally.failure_details)
        # Once one Feedback succeeded after the restart, no Feedback begun later failed.
        recovered_at = min(t for t in tally.acked_at if t > up_at)
        assert not [t for t in tally.failed_calls_started if t > recovered_at]

        # Recovered without a restart: the decision log committed the decisions buffered in
        # the outage, and every acknowledged event is in the log.
        stats = await _stats(a.address)
        assert stats.decisions == tally.selects_ok
        events = await _log(url)
        _assert_acked_in_log(tally, events)
        assert stats.applied_event_id == stats.log_event_id == events[-1].event_id

        # Replica b re-established LISTEN: it catches up on a NOTIFY, not its 60 s poll.
        async def b_applied(event_id: int) -> bool:
            return (await _stats(b.address)).applied_event_id == event_id

        head = events[-1].event_id
        await wait_until(partial(b_applied, head), "replica b to catch up after the outage", 20)
        more = Tally()
        stop = asyncio.Event()
        stop_soon = asyncio.get_running_loop().call_later(0.2, stop.set)
        await load(a.address, more, stop)
        stop_soon.cancel()
        new_head = max(more.acked)
        await wait_until(partial(b_applied, new_head), "replica b to be woken after the outage", 20)
        assert '"listen_connection_restored"' in b.output()


def _postgres_processes(postgres: OwnPostgres) -> list[int]:
    """The postmaster's pid and its children's (every backend)."""
    main = int(Path(postgres.executor.datadir, "postmaster.pid").read_text().split()[0])
    children = subprocess.run(
        ["pgrep", "-P", str(main)], capture_output=True, text=True, check=False
    )
    return [main, *map(int, children.stdout.split())]


@pytest.mark.postgres
async def test_a_postgres_that_stops_answering_fails_calls_and_lets_the_server_stop(
    own_postgres: OwnPostgres, start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Postgres frozen (SIGSTOP: its sockets stay open, nothing answers, as in a network
    partition or a failover that left the connections dead): a statement sent to it fails as
    UNAVAILABLE once the statement timeout runs out, instead of waiting for an answer forever
    (the background loops' pre-ping of a pooled connection did, and with them shutdown)."""
    monkeypatch.setattr(engine, "STATEMENT_TIMEOUT_S", 1.0)
    server = await start_server(own_postgres.url, feedback_attempts=1)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    d = await server.router.Select(
        pb.SelectRequest(tenant="acme", router="chat", embedding=pb.Embedding(values=[1, 0, 0, 0]))
    )
    await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))  # pool: idle
    frozen = _postgres_processes(own_postgres)
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await server.router.Feedback(
                pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=1.0),
                timeout=60,
            )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.details()
        assert "database unavailable" in (refused.value.details() or "")
        stopping = asyncio.ensure_future(server.stop())
        done, _ = await asyncio.wait([stopping], timeout=60)
        assert done, "the server did not stop while Postgres did not answer"
        await stopping
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
