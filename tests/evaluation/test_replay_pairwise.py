"""`banditd replay --feedback pairwise` (issue 21): the router compares two answers per prompt,
the better one wins (ties a coin flip), in process and through a live server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from banditd.errors import InvalidArgument
from banditd.evaluation import replay
from banditd.evaluation.replay.engine import REFUSED, preference
from banditd.evaluation.replay.options import Server
from banditd.v1 import banditd_pb2 as pb
from tests.evaluation.test_replay import run_json, synthetic, write_outcomes
from tests.helpers import StartServer


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_outcomes(tmp_path / "synthetic.jsonl", synthetic(400))


def test_the_rating_prefers_the_better_answer_and_flips_a_coin_on_ties() -> None:
    assert preference(0.9, 0.2, 0.99) == (1.0, 0.0)
    assert preference(0.1, 0.2, 0.01) == (0.0, 1.0)
    assert preference(0.5, 0.5, 0.3) == (1.0, 0.0)
    assert preference(0.5, 0.5, 0.7) == (0.0, 1.0)


@pytest.mark.parametrize("policy", ["linucb", "thompson"])
def test_pairwise_feedback_alone_converges_to_the_best_arm(data: Path, policy: str) -> None:
    run = replay.Replay(
        replay.Options(data=data, policy=policy, feedback="pairwise", exploration=0.1)
    )
    duels = np.full(run.outcomes.n, REFUSED, dtype=np.int64)

    picks = run.picks(seed=3, cost_weight=0.0, budget_usd=None, duels=duels)

    assert np.mean(picks[-100:] == run.outcomes.arms.index("strong")) >= 0.8
    assert (duels != REFUSED).all() and (duels != picks).all()  # a distinct challenger each
    again = np.full(run.outcomes.n, REFUSED, dtype=np.int64)
    np.testing.assert_array_equal(run.picks(3, 0.0, None, again), picks)  # exact per seed
    np.testing.assert_array_equal(again, duels)


def test_the_report_counts_the_challengers_cost(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pairwise = run_json(capsys, "--data", str(data), "--feedback", "pairwise")
    thumbs = run_json(capsys, "--data", str(data), "--feedback", "thumbs")
    assert pairwise["feedback"] == "pairwise"
    assert pairwise["mean_challenger_cost_usd"] > 0
    assert "mean_challenger_cost_usd" not in thumbs
    assert "gain_vs_zero_router" in pairwise


def test_a_budget_pays_both_answers(data: Path) -> None:
    run = replay.Replay(replay.Options(data=data, feedback="pairwise", exploration=0.1))
    duels = np.full(run.outcomes.n, REFUSED, dtype=np.int64)
    # $0.80 binds by some ten prompts; at $1.00 the stream ran out in its last prompt or two,
    # or not at all, as the first pick went.
    picks = run.picks(0, 0.0, 0.8, duels)
    rows = np.arange(run.outcomes.n)
    served, compared = picks != REFUSED, duels != REFUSED
    paid = run.outcomes.cost[rows[served], picks[served]].sum()
    paid += run.outcomes.cost[rows[compared], duels[compared]].sum()
    assert paid <= 0.8 and (picks == REFUSED).any()
    assert compared.any() and not (compared & ~served).any()  # a duel only where one was served


def test_knn_cannot_compare(data: Path) -> None:
    with pytest.raises(InvalidArgument, match="pairwise"):
        replay.Replay(replay.Options(data=data, policy="knn", feedback="pairwise"))


async def test_live_server_gets_compare_and_preferences(
    sqlite_url: str, start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(sqlite_url)
    data = write_outcomes(tmp_path / "synthetic.jsonl", synthetic(60))
    opts = replay.Options(data=data, feedback="pairwise", server=Server(server.address))
    run = await asyncio.to_thread(replay.Replay, opts)
    duels = np.full(run.outcomes.n, REFUSED, dtype=np.int64)

    picks = await asyncio.to_thread(run.picks, 0, 0.0, None, duels)

    assert (picks != REFUSED).all() and (duels != picks).all() and (duels != REFUSED).all()
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="replay", name="replay-0"))
    assert stats.applied_event_id == 60  # one preference per prompt
    router_id = server.app.catalog._by_name[("replay", "replay-0")]
    posterior = server.app.catalog._by_id[router_id].posterior
    assert int(posterior.n_updates.sum()) == 120  # each taught two arms
