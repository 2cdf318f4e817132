"""`banditd replay` with latency and energy (issue 21): outcome files that measure them, the
--latency-weight / --energy-weight / --max-latency-ms flags, in process and through a server."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from banditd.commands import replay as replay_command
from banditd.errors import InvalidArgument
from banditd.evaluation import replay
from banditd.evaluation.replay.options import Server
from banditd.v1 import banditd_pb2 as pb
from tests.evaluation.test_replay import cli, run_json, synthetic, write_outcomes
from tests.helpers import StartServer

# name: (mean quality, USD per call, latency ms, Wh): the fast, the cheap and the best arm differ.
ARMS = {
    "fast": (0.6, 0.002, 200.0, 0.5),
    "cheap": (0.5, 0.0002, 3000.0, 0.2),
    "best": (0.9, 0.01, 8000.0, 4.0),
}


def timed(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """n prompts, each model's quality graded around its mean, its latency within 10 % of its
    mean, its energy fixed."""
    rng = random.Random(seed)
    return [
        {
            "prompt": f"question {i}: " + " ".join(rng.choice("abcdefgh") for _ in range(6)),
            "models": {
                name: {
                    "quality": round(min(max(rng.gauss(q, 0.2), 0.0), 1.0), 3),
                    "cost_usd": cost,
                    "latency_ms": round(ms * rng.uniform(0.9, 1.1), 1),
                    "energy_wh": wh,
                }
                for name, (q, cost, ms, wh) in ARMS.items()
            },
        }
        for i in range(n)
    ]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_outcomes(tmp_path / "timed.jsonl", timed(200))


def test_the_file_loads_latency_and_energy(data: Path) -> None:
    outcomes = replay.load_outcomes(data)
    assert outcomes.latency_ms is not None and outcomes.energy_wh is not None
    assert outcomes.latency_ms.shape == outcomes.energy_wh.shape == (200, 3)
    assert outcomes.energy_wh[0].tolist() == [0.5, 0.2, 4.0]


def test_latency_weight_moves_the_choice_to_the_fast_arm(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = run_json(capsys, "--data", str(data), "--exploration", "0.1")
    weighted = run_json(
        capsys, "--data", str(data), "--exploration", "0.1", "--latency-weight", "1"
    )

    assert plain["picks"]["best"] >= 0.8
    assert weighted["picks"]["fast"] >= 0.8
    assert weighted["latency_weight"] == 1.0 and plain["latency_weight"] is None
    assert weighted["mean_latency_ms"] < plain["mean_latency_ms"] / 5
    assert weighted["mean_energy_wh"] < plain["mean_energy_wh"]


def test_max_latency_ms_never_picks_the_slow_arms(data: Path) -> None:
    opts = replay.Options(data=data, exploration=0.1, max_latency_ms=2500)
    run = replay.Replay(opts)

    picks = run.picks(seed=0, cost_weight=0.0, budget_usd=None)

    assert set(picks.tolist()) == {run.outcomes.arms.index("fast")}


def test_max_latency_ms_under_every_arm_refuses_every_prompt(data: Path) -> None:
    report = replay.replay(replay.Options(data=data, max_latency_ms=10))
    assert report["refused"] == 200 and report["mean_quality"] == 0.0
    # The text says what refused them: no budget was set.
    assert "; 200 prompts refused by --max-latency-ms\n" in replay.render_text(report)
    both = replay.replay(replay.Options(data=data, max_latency_ms=10, budget_usd=1.0))
    assert "; 200 prompts refused by the budget or --max-latency-ms\n" in replay.render_text(both)


def test_feedback_teaches_the_heads(data: Path) -> None:
    """Zero-priced arms have no latency prior: the heads learn the file's reports, and the
    ceiling then keeps the slow arms out."""
    opts = replay.Options(data=data, arm_prices="zero", max_latency_ms=2500)
    run = replay.Replay(opts)
    picks = run.picks(seed=0, cost_weight=0.0, budget_usd=None)
    assert np.mean(picks[-100:] == run.outcomes.arms.index("fast")) == 1.0


def test_the_report_gives_mean_latency_and_energy(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = run_json(capsys, "--data", str(data), "--repeats", "2", "--energy-weight", "0.1")

    for key in ("mean_latency_ms", "mean_energy_wh"):
        assert key in report and key in report["spread"] and key in report["oracle"]
        assert all(key in run for run in report["runs"])
    by_model = {m["model"]: m for m in report["single_models"]}
    assert by_model["best"]["mean_energy_wh"] == pytest.approx(4.0)
    assert by_model["fast"]["mean_latency_ms"] == pytest.approx(200.0, rel=0.02)
    assert report["best_single"]["mean_latency_ms"] == by_model["best"]["mean_latency_ms"]

    args = cli("--data", str(data), "--latency-weight", "1", "--max-latency-ms", "5000")
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "mean latency ms" in text and "mean Wh" in text
    assert "trade-off: latency weight 1, max latency ms 5000" in text


def test_a_file_without_them_has_no_such_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_outcomes(tmp_path / "plain.jsonl", synthetic(30))
    assert replay.load_outcomes(data).latency_ms is None

    report = run_json(capsys, "--data", str(data), "--latency-weight", "1")

    text = json.dumps(report)
    assert "mean_latency_ms" not in text and "mean_energy_wh" not in text
    assert report["n"] == 30


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--latency-weight", "2e9"), "latency_weight: must be in [0, 1e+09]"),
        (("--max-latency-ms", "1", "--policy", "oracle"), "need a policy the server runs"),
        (("--energy-weight", "1", "--policy", "knn"), "need a policy the server runs"),
    ],
)
def test_bad_trade_offs_are_refused(data: Path, flags: tuple[str, ...], message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        replay.Replay(replay_command.options(cli("--data", str(data), *flags)))
    assert message in str(caught.value)


def test_a_bad_latency_names_the_line(tmp_path: Path) -> None:
    records = timed(3)
    records[1]["models"]["fast"]["latency_ms"] = -1
    data = write_outcomes(tmp_path / "bad.jsonl", records)
    with pytest.raises(InvalidArgument, match=r"bad.jsonl:2: model 'fast': latency_ms must be"):
        replay.load_outcomes(data)


async def test_live_server_gets_the_trade_off_and_the_reports(
    sqlite_url: str, start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(sqlite_url)
    data = write_outcomes(tmp_path / "timed.jsonl", timed(60))
    opts = replay.Options(data=data, max_latency_ms=2500, server=Server(server.address))
    run = await asyncio.to_thread(replay.Replay, opts)

    picks = await asyncio.to_thread(run.picks, 0, 0.0, None)

    assert set(picks.tolist()) == {run.outcomes.arms.index("fast")}
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="replay", name="replay-0"))
    fast = next(a for a in stats.arms if a.arm == "fast")
    assert fast.latency_reports == fast.energy_reports == 60
    assert fast.mean_energy_wh == pytest.approx(0.5)
    assert fast.mean_latency_ms == pytest.approx(run.outcomes.latency_ms[:, 0].mean())  # type: ignore[index]
