"""Three `banditd serve` processes on one Postgres: feedback sent to any replica reaches all, and a
replica killed with SIGKILL restarts from its snapshot and catches up."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from banditd.v1 import banditd_pb2 as pb
from banditd.v1 import banditd_pb2_grpc as rpc
from tests.conftest import router_config
from tests.processes import ServerProcess, migrate

pytestmark = pytest.mark.postgres

PROBES = [[1.0, 0.5, 0.0, 0.0], [1.0, -0.5, 0.3, 0.0], [1.0, 0.0, 0.0, 0.9]]


def _stubs(address: str) -> tuple[grpc.Channel, rpc.RouterStub, rpc.AdminStub]:
    channel = grpc.insecure_channel(address)
    return channel, rpc.RouterStub(channel), rpc.AdminStub(channel)


def _traffic(replicas: list[ServerProcess], rounds: int, rng: np.random.Generator) -> int:
    """Select on one replica, Feedback on another; the number of events sent."""
    stubs = [_stubs(r.address) for r in replicas]
    try:
        for i in range(rounds):
            x = rng.normal(size=4).astype(np.float32)
            chooser = stubs[i % len(stubs)][1]
            teller = stubs[(i + 1) % len(stubs)][1]
            d = chooser.Select(
                pb.SelectRequest(tenant="acme", router="chat", embedding=pb.Embedding(values=x))
            )
            teller.Feedback(
                pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=float(x[1] > 0))
            )
    finally:
        for channel, _, _ in stubs:
            channel.close()
    return rounds


def _view(replica: ServerProcess) -> tuple[pb.GetStatsResponse, list[pb.SelectResponse]]:
    channel, router, admin = _stubs(replica.address)
    with channel:
        stats = admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
        picks = [
            router.Select(
                pb.SelectRequest(tenant="acme", router="chat", embedding=pb.Embedding(values=p))
            )
            for p in PROBES
        ]
    return stats, picks


def _wait_applied(replicas: list[ServerProcess], event_id: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    for replica in replicas:
        channel, _, admin = _stubs(replica.address)
        with channel:
            while True:
                stats = admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
                if stats.applied_event_id >= event_id:
                    break
                assert time.monotonic() < deadline, f"{replica.address} stuck at {stats}"
                time.sleep(0.05)


def test_three_replicas_converge_and_a_killed_one_catches_up(
    postgres_url: str, tmp_path: Path
) -> None:
    migrate(postgres_url)
    env = {"BANDITD_TAIL_INTERVAL_S": "0.2", "BANDITD_SNAPSHOT_EVERY": "25"}
    replicas = [
        ServerProcess(postgres_url, tmp_path / f"replica-{i}.log", env=env) for i in range(3)
    ]
    try:
        for replica in replicas:
            replica.start()
        channel, _, admin = _stubs(replicas[0].address)
        with channel:
            admin.PutRouter(pb.PutRouterRequest(router=router_config(policy="linucb")))
        rng = np.random.default_rng(11)
        sent = _traffic(replicas, 90, rng)

        victim = replicas[2]
        victim.kill()
        sent += _traffic(replicas[:2], 60, rng)  # the log moves on without it
        lines_before = len(victim.logs())
        victim.start()
        restored = victim.wait_for("router_restored", after=lines_before)
        # It loaded a snapshot written before or during its absence and replayed only the tail.
        assert restored["snapshot_event_id"] >= 75
        assert restored["replayed_events"] == sent - restored["snapshot_event_id"]
        sent += _traffic(replicas, 30, rng)

        _wait_applied(replicas, sent)
        views = [_view(r) for r in replicas]
        first_stats, first_picks = views[0]
        assert first_stats.feedback_count == first_stats.applied_event_id == sent
        for stats, picks in views[1:]:
            assert stats.applied_event_id == first_stats.applied_event_id
            assert stats.feedback_count == first_stats.feedback_count
            by_arm = {a.arm: a for a in stats.arms}
            for arm in first_stats.arms:
                assert by_arm[arm.arm].feedback_count == arm.feedback_count
                assert by_arm[arm.arm].mean_reward == pytest.approx(arm.mean_reward, abs=1e-9)
            for pick, first in zip(picks, first_picks, strict=True):
                assert [r.arm for r in pick.ranking] == [r.arm for r in first.ranking]
                assert [r.score for r in pick.ranking] == pytest.approx(
                    [r.score for r in first.ranking], abs=1e-9
                )
    finally:
        for replica in replicas:
            replica.kill()
