"""`banditd replay` on small synthetic outcome files written here (never the files in data/)."""

from __future__ import annotations

import argparse
import copy
import gzip
import itertools
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from banditd.commands import replay as replay_command
from banditd.errors import InvalidArgument
from banditd.evaluation import replay
from banditd.evaluation.replay.data import Outcomes
from banditd.evaluation.replay.options import BUDGET_SWEEP_POINTS
from banditd.evaluation.replay.scoring import frontier_summary

# name: (mean quality, cost per call in USD)
ARMS = {"strong": (0.9, 0.010), "middle": (0.6, 0.002), "weak": (0.1, 0.001)}
WORDS = ["route", "model", "cost", "quality", "prompt", "answer", "token", "budget", "context"]


def write_outcomes(path: Path, records: list[dict[str, Any]]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return path


def synthetic(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """n prompts; each arm's quality is graded around its mean (so thumbs differ from scores),
    at its fixed cost."""
    rng = random.Random(seed)
    return [
        {
            "id": f"q{i}",
            "prompt": f"question {i}: " + " ".join(rng.choice(WORDS) for _ in range(6)),
            "models": {
                name: {"quality": round(min(max(rng.gauss(p, 0.2), 0.0), 1.0), 3), "cost_usd": cost}
                for name, (p, cost) in ARMS.items()
            },
        }
        for i in range(n)
    ]


def cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="banditd")
    replay_command.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["replay", *argv])


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    args = cli(*argv, "--json")
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # exactly one JSON object on stdout
    report: dict[str, Any] = json.loads(out)
    return report


@pytest.mark.parametrize("policy", ["linucb", "thompson", "epsilon-greedy"])
@pytest.mark.parametrize("feedback", ["score", "thumbs"])
def test_learning_policy_converges_to_the_best_arm(
    tmp_path: Path, policy: str, feedback: str
) -> None:
    data = write_outcomes(tmp_path / "synthetic.jsonl", synthetic(400))
    opts = replay.Options(data=data, policy=policy, feedback=feedback, exploration=0.1)
    run = replay.Replay(opts)

    picks = run.picks(seed=3, cost_weight=0.0, budget_usd=None)

    strong = run.outcomes.arms.index("strong")
    assert np.mean(picks[-100:] == strong) >= 0.8
    same_seed = run.picks(seed=3, cost_weight=0.0, budget_usd=None)
    np.testing.assert_array_equal(picks, same_seed)  # a replay is exact: same seed, same run


def test_cost_weight_moves_choice_to_the_cheaper_arm(tmp_path: Path) -> None:
    data = write_outcomes(tmp_path / "synthetic.jsonl", synthetic(400))
    run = replay.Replay(replay.Options(data=data, policy="linucb", exploration=0.1))

    # At 100 per USD, middle (0.6 - 0.2) beats strong (0.9 - 1.0) and weak (0.1 - 0.1).
    picks = run.picks(seed=0, cost_weight=100.0, budget_usd=None)

    assert np.mean(picks[-100:] == run.outcomes.arms.index("middle")) >= 0.8


HAND = [  # quality and cost per model, four prompts
    {"A": (1.0, 0.010), "B": (0.0, 0.001)},
    {"A": (0.0, 0.010), "B": (1.0, 0.001)},
    {"A": (1.0, 0.010), "B": (1.0, 0.001)},
    {"A": (1.0, 0.010), "B": (0.0, 0.001)},
]


def hand_file(path: Path) -> Path:
    records = []
    for i, row in enumerate(HAND):
        models = {m: {"quality": q, "cost_usd": c} for m, (q, c) in row.items()}
        records.append({"prompt": f"prompt {i}", "models": models})
    return write_outcomes(path, records)


def test_best_single_and_oracle_match_hand_computed_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = hand_file(tmp_path / "hand.jsonl")

    best = run_json(capsys, "--data", str(data), "--policy", "best-single")
    oracle = run_json(capsys, "--data", str(data), "--policy", "oracle")
    priced = run_json(capsys, "--data", str(data), "--policy", "oracle", "--cost-weight", "200")

    assert best["best_single"] == {"model": "A", "mean_quality": 0.75, "mean_cost_usd": 0.01}
    assert best["mean_quality"] == 0.75
    assert best["total_cost_usd"] == pytest.approx(0.04)
    assert best["cumulative_regret"] == pytest.approx(1.0)  # prompt 2: the oracle scores 1 more
    assert best["quality_vs_best_single"] == 1.0
    # The oracle takes A, B, B (cheapest of two right answers), A.
    assert oracle["mean_quality"] == 1.0
    assert oracle["mean_cost_usd"] == pytest.approx(0.0055)
    assert oracle["cumulative_regret"] == 0.0
    assert oracle["quality_vs_best_single"] == pytest.approx(1 / 0.75)
    assert oracle["cost_vs_best_single"] == pytest.approx(0.55)
    assert oracle["oracle"] == {"mean_quality": 1.0, "mean_cost_usd": pytest.approx(0.0055)}
    # At 200 per USD a right answer from A (1 - 2.0) loses to a wrong one from B (0 - 0.2).
    assert priced["mean_quality"] == 0.5
    assert priced["mean_cost_usd"] == pytest.approx(0.001)
    assert priced["picks"] == {"A": 0.0, "B": 1.0}


def test_json_report_schema_with_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_outcomes(tmp_path / "synthetic.jsonl.gz", synthetic(120))

    report = run_json(capsys, "--data", str(data), "--repeats", "2", "--sweep", "--limit", "100")

    assert report["n"] == 100
    assert report["policy"] == "linucb"
    assert report["arms"] == list(ARMS)
    assert report["seeds"] == [0, 1]
    for key in (
        "mean_quality",
        "mean_cost_usd",
        "total_cost_usd",
        "budget_usd",
        "quality_vs_best_single",
        "cost_vs_best_single",
        "cumulative_regret",
        "refused",
        "exploration",
        "embedding_dim",
        "wall_s",
    ):
        assert key in report, key
    assert set(report["best_single"]) == {"model", "mean_quality", "mean_cost_usd"}
    assert set(report["spread"]) >= {"mean_quality", "mean_cost_usd", "cumulative_regret"}
    assert len(report["runs"]) == 2
    assert sum(report["picks"].values()) == pytest.approx(1.0)
    assert len(report["frontier"]) == replay.SWEEP_POINTS
    assert report["frontier"][0]["cost_weight"] == 0.0
    for point in report["frontier"]:
        assert {"cost_weight", "mean_quality", "mean_cost_usd"} <= set(point)
    for key in ("aiq", "aiq_single_models", "aiq_oracle"):
        assert 0.0 <= report[key] <= 1.0
    assert report["aiq_oracle"] >= report["aiq_single_models"]
    fractions = [q["fraction_of_best_single"] for q in report["cost_at_quality"]]
    assert fractions == list(replay.QUALITY_FRACTIONS)


def test_gain_vs_zero_router_in_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_outcomes(tmp_path / "synthetic.jsonl", synthetic(200))
    sweep = ("--sweep", "0,50,1000")  # best-single picks strong, middle, weak at these weights

    singles = run_json(capsys, "--data", str(data), "--policy", "best-single", *sweep)
    oracle = run_json(capsys, "--data", str(data), "--policy", "oracle", "--sweep")
    unswept = run_json(capsys, "--data", str(data), "--policy", "cheapest")

    # The single models swept are the zero router itself; per-prompt hindsight is above it
    # (level at the cheap end, where the oracle too can only pick the cheapest model).
    assert singles["gain_vs_zero_router"] == {
        "mean": 0.0,
        "min": 0.0,
        "coverage": 1.0,
        "share_of_ceiling": None,  # no metadata keys: no ceiling to share
    }
    assert oracle["gain_vs_zero_router"]["min"] == 0.0
    assert oracle["gain_vs_zero_router"]["mean"] > 5
    # Without a sweep the policy's one point is its hull: flat at the cheapest model's quality.
    gain = unswept["gain_vs_zero_router"]
    quality = {m["model"]: m["mean_quality"] for m in unswept["single_models"]}
    assert gain["coverage"] == 1.0
    assert gain["min"] == pytest.approx(100 * (quality["weak"] / quality["strong"] - 1))


def test_no_gain_names_the_best_single_model_whose_cost_ends_the_grid(tmp_path: Path) -> None:
    """The best model is not the priciest: a policy between the two reaches no grid cost,
    though it is cheaper than a single model."""
    models = {"dear": (0.5, 0.010), "best": (0.6, 0.002), "cheap": (0.3, 0.001)}
    outcomes = {m: {"quality": q, "cost_usd": c} for m, (q, c) in models.items()}
    records = [{"prompt": f"question {i}", "models": outcomes} for i in range(40)]
    data = write_outcomes(tmp_path / "dear.jsonl", records)

    report = replay.replay(replay.Options(data=data, policy="random"))

    assert models["best"][1] < report["mean_cost_usd"] < models["dear"][1]
    assert report["gain_vs_zero_router"]["mean"] is None
    assert (
        "gain vs the zero router: none (no point of the policy is as cheap as the best single "
        "model, best at $0.002000 a prompt)\n" in replay.render_text(report)
    )


def test_the_report_gives_the_ceiling_of_routing_by_metadata(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = synthetic(200)
    for i, record in enumerate(records):  # on "easy" prompts the middle arm is as good
        record["task"] = ("easy", "hard")[i % 2]
        if record["task"] == "easy":
            record["models"]["middle"]["quality"] = record["models"]["strong"]["quality"]
    data = write_outcomes(tmp_path / "tasks.jsonl", records)

    plain = run_json(capsys, "--data", str(data), "--policy", "best-single")
    tagged = run_json(capsys, "--data", str(data), "--policy", "linucb", "--metadata-from", "task")

    # Without keys there is one group: the single models themselves, no gain.
    assert plain["metadata_routing_ceiling"]["keys"] == []
    assert plain["metadata_routing_ceiling"]["groups"] == 1
    assert plain["metadata_routing_ceiling"]["mean"] == pytest.approx(0.0, abs=1e-9)
    assert plain["gain_vs_zero_router"]["share_of_ceiling"] is None
    ceiling = tagged["metadata_routing_ceiling"]
    assert tagged["gain_vs_zero_router"]["share_of_ceiling"] == pytest.approx(
        tagged["gain_vs_zero_router"]["mean"] / ceiling["mean"]
    )
    assert (ceiling["keys"], ceiling["groups"], ceiling["coverage"]) == (["task"], 2, 1.0)
    # Every single model is one of its choices (all groups on it), so it is never below them.
    # Sending "easy" to the middle arm at a fifth of the price gains: about 8 points at the
    # middle of the grid (0.9 against 0.825 at $0.006), about 3 on average over it.
    assert ceiling["min"] >= -1e-9
    assert ceiling["mean"] > 2
    cli_text = cli("--data", str(data), "--metadata-from", "task")
    assert cli_text.func(cli_text) == 0
    text = capsys.readouterr().out
    assert "routing each of the 2 groups of task to its best arms in hindsight" in text
    assert "of that" in text  # the policy's share of it
    # The plot draws the ceiling's hull through its frontier, up to its best quality; without
    # keys there is none to draw.
    drawn = [
        line
        for line in replay.figure(tagged).axes[0].get_lines()
        if line.get_label().startswith("task in hindsight")
    ]
    assert len(drawn) == 1
    top = max(p["mean_quality"] for p in ceiling["frontier"])
    assert drawn[0].get_ydata()[-1] == pytest.approx(top)
    assert not any(
        line.get_label().startswith("task in hindsight")
        for line in replay.figure(plain).axes[0].get_lines()
    )


@pytest.mark.parametrize("policy", ["linucb", "thompson", "random", "best-single", "oracle"])
def test_budget_is_never_exceeded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], policy: str
) -> None:
    data = write_outcomes(tmp_path / "synthetic.jsonl", synthetic(200))
    budget = 0.4  # the strong model for every prompt would cost 2.0

    report = run_json(
        capsys,
        *("--data", str(data), "--policy", policy, "--budget-usd", str(budget)),
        *("--repeats", "2", "--sweep-budgets", "0.05,0.2"),
    )

    assert report["budget_usd"] == budget
    for run in report["runs"]:
        assert run["total_cost_usd"] <= budget + 1e-12  # (summation order aside)
    for point in report["budget_frontier"]:
        assert point["mean_cost_usd"] * report["n"] <= point["budget_usd"] + 1e-12
    assert report["budget_frontier"][0]["refused"] > 0  # 0.05 cannot pay for every prompt


def test_the_default_budget_grid_of_free_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Local models that cost nothing (cost_usd 0 is valid): every budget pays for every prompt.
    free = [
        {**r, "models": {m: {**o, "cost_usd": 0.0} for m, o in r["models"].items()}}
        for r in synthetic(20)
    ]
    data = write_outcomes(tmp_path / "free.jsonl", free)

    report = run_json(capsys, "--data", str(data), "--policy", "best-single", "--sweep-budgets")

    assert len(report["budget_frontier"]) == BUDGET_SWEEP_POINTS
    assert all(p["refused"] == 0 and p["mean_cost_usd"] == 0.0 for p in report["budget_frontier"])


def test_a_learning_policy_is_paced_through_the_budget_pacer(tmp_path: Path) -> None:
    """The budget lasts the whole stream and is used: the pacer's price rises when spend runs
    ahead of the stream's clock and falls when it lags, as Select's does."""
    data = write_outcomes(tmp_path / "synthetic.jsonl", synthetic(400))
    budget = 1.6  # the strong model costs 4.0 for every prompt, the middle one 0.8
    opts = replay.Options(data=data, policy="linucb", budget_usd=budget, exploration=0.1)
    run = replay.Replay(opts)
    picks = run.picks(seed=0, cost_weight=0.0, budget_usd=budget)
    cost = np.where(picks >= 0, run.outcomes.cost[np.arange(400), np.maximum(picks, 0)], 0.0)
    spend = np.cumsum(cost)
    assert spend[-1] <= budget
    assert spend[-1] >= 0.9 * budget
    assert spend[199] <= budget * 0.55 + 0.01  # half the stream: about half the budget
    assert spend[199] >= budget * 0.35
    assert (picks[-50:] != replay.REFUSED).all()  # money left for the end of the stream


def test_warm_start_fits_priors_before_the_stream(tmp_path: Path) -> None:
    history = write_outcomes(tmp_path / "history.jsonl", synthetic(200, seed=1))
    data = write_outcomes(tmp_path / "synthetic.jsonl", synthetic(20, seed=2))
    # Unpriced (no price tier) and weakest first, so a cold router must learn where strong is.
    arms = ("weak", "middle", "strong")
    cold = replay.Replay(replay.Options(data=data, exploration=0.1, arms=arms, arm_prices="zero"))
    warm = replay.Replay(
        replay.Options(data=data, exploration=0.1, arms=arms, arm_prices="zero", warm_start=history)
    )

    strong = warm.outcomes.arms.index("strong")
    assert warm.warm_report is not None and warm.warm_report.events == 200 * len(ARMS)
    assert np.all(warm.picks(0, 0.0, None) == strong)
    assert np.mean(cold.picks(0, 0.0, None) == strong) < 1.0  # cold, it must try other arms


def test_priced_arms_start_from_their_price_tier(tmp_path: Path) -> None:
    data = write_outcomes(tmp_path / "synthetic.jsonl", synthetic(20, seed=2))
    arms = ("weak", "middle", "strong")
    priced = replay.Replay(replay.Options(data=data, arms=arms))

    # The file's mean costs as prices: the priciest (strong) starts highest and is kept.
    assert priced.prices["strong"] > priced.prices["middle"] > priced.prices["weak"]
    assert np.all(priced.picks(0, 0.0, None) == priced.outcomes.arms.index("strong"))


def test_split_replays_the_tail_and_warm_starts_on_the_head(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = synthetic(41, seed=3)
    data = write_outcomes(tmp_path / "all.jsonl", records)
    head = write_outcomes(tmp_path / "head.jsonl", records[:20])
    tail = write_outcomes(tmp_path / "tail.jsonl", records[20:])
    metadata = ("--feedback", "thumbs", "--sweep", "0,100")

    split = run_json(capsys, "--data", str(data), "--split", "0.5", "--warm-start-head", *metadata)
    files = run_json(capsys, "--data", str(tail), "--warm-start", str(head), *metadata)
    cold = run_json(capsys, "--data", str(data), "--split", "0.5")

    assert split["n"] == cold["n"] == 21  # 41 x 0.5 = 20 records before the split
    assert split["split"] == {"fraction": 0.5, "skipped": 20}
    assert split["warm_start"]["events"] == 20 * len(ARMS) and split["warm_start"]["head"] == 20
    assert cold["warm_start"] is None
    for key in ("mean_quality", "mean_cost_usd", "frontier", "gain_vs_zero_router"):
        assert split[key] == files[key], key


@pytest.mark.parametrize("policy", ["linucb", "random"])
def test_shuffle_replays_each_seed_in_its_own_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], policy: str
) -> None:
    records = synthetic(61, seed=5)
    head, tail = records[:30], records[30:]  # 61 x 0.5: 30 records before the split
    data = write_outcomes(tmp_path / "all.jsonl", records)
    argv = ("--split", "0.5", "--warm-start-head", "--feedback", "thumbs", "--policy", policy)
    argv += ("--sweep", "0,100")
    shuffled = run_json(
        capsys, "--data", str(data), *argv, "--shuffle", "--seed", "3", "--repeats", "2"
    )

    assert len(shuffled["gain_vs_zero_router"]["runs"]) == 2
    for i, seed in enumerate((3, 4)):
        # Each seed's run is a plain replay of the file with the tail in that seed's order.
        order = np.random.default_rng([seed, replay.SHUFFLE_STREAM]).permutation(len(tail))
        assert sorted(order) == list(range(len(tail))) and list(order) != sorted(order)
        reordered = write_outcomes(tmp_path / f"{seed}.jsonl", head + [tail[j] for j in order])
        one = run_json(capsys, "--data", str(reordered), *argv, "--seed", str(seed))
        for key, value in one["runs"][0].items():
            assert shuffled["runs"][i][key] == pytest.approx(value), key
        for key, value in one["gain_vs_zero_router"].items():
            assert shuffled["gain_vs_zero_router"]["runs"][i][key] == pytest.approx(value), key
    # The regret curve follows the order each run saw, not the file's.
    in_file_order = run_json(capsys, "--data", str(data), *argv, "--seed", "3", "--repeats", "2")
    curves = shuffled["regret_over_time"]["cumulative_regret"]
    assert curves["random"] != in_file_order["regret_over_time"]["cumulative_regret"]["random"]
    assert "runs" in in_file_order["gain_vs_zero_router"]
    worst = min(run["min"] for run in shuffled["gain_vs_zero_router"]["runs"])
    assert f"worst min {worst:+.2f}" in replay.render_text(shuffled)


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (("--split", "1"), "a number in (0, 1)"),
        (("--split", "0"), "a number in (0, 1)"),
        (("--warm-start-head",), "needs --split"),
        # 10 records x 0.05 < 1: nothing to warm-start on
        (("--split", "0.05", "--warm-start-head"), "no records before the split at 0.05"),
    ],
)
def test_bad_splits_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], problem: str
) -> None:
    data = write_outcomes(tmp_path / "all.jsonl", synthetic(10))
    try:
        args = cli("--data", str(data), *argv)
    except SystemExit:
        assert problem in capsys.readouterr().err
        return
    assert args.func(args) == 1
    assert problem in capsys.readouterr().err


def test_arms_subset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_outcomes(tmp_path / "synthetic.jsonl", synthetic(50))

    report = run_json(capsys, "--data", str(data), "--arms", "weak,middle")

    assert report["arms"] == ["weak", "middle"]
    assert report["best_single"]["model"] == "middle"


def test_hull_aiq_and_cost_at_quality() -> None:
    points = [(2.0, 0.6), (1.0, 0.5), (3.0, 0.9), (4.0, 0.8)]

    assert replay.upper_hull(points) == [(1.0, 0.5), (3.0, 0.9)]  # (2, .6) under the chord
    assert replay.aiq(points, 1.0, 3.0) == pytest.approx(0.7)
    assert replay.aiq(points, 0.0, 4.0) == pytest.approx((1.4 + 0.9) / 4)  # 0 below cost 1
    assert replay.aiq(points, 2.0, 2.0) is None
    assert replay.cost_at_quality(points, 0.7) == pytest.approx(2.0)
    assert replay.cost_at_quality(points, 0.4) == pytest.approx(1.0)
    assert replay.cost_at_quality(points, 0.95) is None


def test_frontier_summary_reads_the_frontier_and_the_oracle_at_its_weights(tmp_path: Path) -> None:
    # Two prompts, two arms: "cheap" ($1 a call) answers only the second, "dear" ($3) both.
    outcomes = Outcomes(
        path=tmp_path / "hand-made.jsonl",
        arms=("cheap", "dear"),
        prompts=("a", "b"),
        lines=(1, 2),
        quality=np.array([[0.0, 1.0], [1.0, 1.0]]),
        cost=np.array([[1.0, 3.0], [1.0, 3.0]]),
    )
    frontier = [
        {"cost_weight": 0.0, "mean_cost_usd": 3.0, "mean_quality": 1.0},
        {"cost_weight": 1.0, "mean_cost_usd": 1.0, "mean_quality": 0.5},
    ]
    best = {"mean_quality": 1.0, "mean_cost_usd": 3.0}

    singles = [
        {"mean_cost_usd": 1.0, "mean_quality": 0.5},
        {"mean_cost_usd": 3.0, "mean_quality": 1.0},
    ]

    summary = frontier_summary(outcomes, frontier, singles, best)

    assert summary["frontier"] == frontier
    # The frontier is the single models' own line from (1, 0.5) to (3, 1.0).
    assert summary["aiq"] == pytest.approx(0.75)
    assert summary["aiq_single_models"] == pytest.approx(0.75)
    # At weight 0 the oracle sends "a" to dear and "b" to cheap (cheapest on ties): $2, 1.0;
    # at weight 1 both to cheap: $1, 0.5. Its hull is 0.75 on average over [1, 2], 1.0 after.
    oracle = [
        (o["cost_weight"], o["mean_cost_usd"], o["mean_quality"])
        for o in summary["oracle_frontier"]
    ]
    assert oracle == [(0.0, 2.0, 1.0), (1.0, 1.0, 0.5)]
    assert summary["aiq_oracle"] == pytest.approx((0.75 + 1.0) / 2)
    # Read off the frontier's hull: quality q costs 1 + 4 (q - 0.5).
    for row, fraction in zip(summary["cost_at_quality"], (0.9, 0.95, 0.98), strict=True):
        assert row["fraction_of_best_single"] == fraction
        assert row["mean_cost_usd"] == pytest.approx(1.0 + 4.0 * (fraction - 0.5))
        assert row["cost_vs_best_single"] == pytest.approx(row["mean_cost_usd"] / 3.0)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG, from its IHDR chunk."""
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_text_report_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_outcomes(tmp_path / "synthetic.jsonl", synthetic(60))
    args = cli("--data", str(data), "--sweep", "0,100", "--policy", "thompson")

    assert args.func(args) == 0

    text = capsys.readouterr().out
    assert "best single: strong" in text and "oracle" in text and "AIQ" in text
    assert "gain vs the zero router" in text
    # matplotlib comes with the dev extra: the plot is tested for real, never skipped.
    png = tmp_path / "frontier.png"
    args = cli("--data", str(data), "--sweep", "0,100", "--plot", str(png), "--repeats", "2")
    assert args.func(args) == 0
    width, height = png_size(png)
    assert width > 1.5 * height  # two panels side by side

    report = replay.replay(replay.Options(data=data, sweep=(0.0, 100.0), repeats=2))
    fig = replay.figure(report)
    frontier, regret = fig.axes
    assert frontier.get_xscale() == "log"
    labels = {t.get_text() for t in frontier.texts}
    assert labels == set(ARMS)  # each single model labelled
    legend = {t.get_text() for t in frontier.get_legend().get_texts()}
    assert {"oracle", "linucb", "linucb hull"} < legend
    assert any(label.startswith("zero router") for label in legend)  # the hull it is measured on
    lines = {line.get_label(): line for line in regret.get_lines()}
    assert set(lines) == {"linucb (mean of 2 seeds)", "best-single", "random (mean of 2 seeds)"}
    assert (
        list(lines["best-single"].get_ydata())
        == report["regret_over_time"]["cumulative_regret"]["best-single"]
    )


def test_regret_over_time(tmp_path: Path) -> None:
    data = write_outcomes(tmp_path / "synthetic.jsonl", synthetic(400))

    report = replay.replay(replay.Options(data=data, exploration=0.1, repeats=2))

    curves = report["regret_over_time"]
    steps = curves["prompts"]
    assert steps[0] == 1 and steps[-1] == 400 and steps == sorted(set(steps))
    assert len(steps) == 100
    assert set(curves["cumulative_regret"]) == {"linucb", "best-single", "random"}
    for policy, regret in curves["cumulative_regret"].items():
        assert len(regret) == len(steps)
        assert all(b >= a - 1e-9 for a, b in itertools.pairwise(regret)), policy
    learner = curves["cumulative_regret"]["linucb"]
    assert learner[-1] == pytest.approx(report["cumulative_regret"])
    # Learning: the regret piles up in the first half, while the policy tries every arm.
    half = steps.index(min(steps, key=lambda s: abs(s - 200)))
    assert learner[-1] - learner[half] < 0.8 * learner[half]
    assert learner[-1] < curves["cumulative_regret"]["random"][-1]


def bad_files() -> list[tuple[str, list[dict[str, Any]] | str, str]]:
    """(case, records or raw text, the error's text after the file name)."""
    good = synthetic(3)
    missing, nan, no_prompt = copy.deepcopy(good), copy.deepcopy(good), copy.deepcopy(good)
    del missing[1]["models"]["middle"]
    nan[2]["models"]["weak"]["quality"] = float("nan")  # json.dumps writes NaN
    del no_prompt[0]["prompt"]
    return [
        ("missing model", missing, ":2: no outcome for model 'middle'"),
        ("NaN quality", nan, ":3: model 'weak': quality must be in [0, 1], got nan"),
        ("no prompt", no_prompt, ":1: no prompt"),
        ("empty file", "", ":1: no records (the file is empty)"),
        ("not JSON", json.dumps(good[0]) + "\n{oops\n", ":2: not JSON"),
    ]


BAD_FILES = bad_files()


@pytest.mark.parametrize(("case", "content", "message"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_file_names_the_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    content: list[dict[str, Any]] | str,
    message: str,
) -> None:
    path = tmp_path / "bad.jsonl"
    if isinstance(content, str):
        path.write_text(content)
    else:
        write_outcomes(path, content)

    with pytest.raises(InvalidArgument) as caught:
        replay.load_outcomes(path)
    assert f"{path}{message}" in str(caught.value), case

    args = cli("--data", str(path), "--json")
    assert args.func(args) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err


def test_the_routers_prior_is_a_replay_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_outcomes(tmp_path / "synthetic.jsonl", synthetic(200))
    at = ("--data", str(data), "--cost-weight", "50")  # the middle arm is the best buy
    default = run_json(capsys, *at)
    level = default["prior"].pop("level_at_end")
    assert default["prior"] == {"quality": 0.7, "weight": 30.0}  # RouterSpec's defaults
    # The arms' feedback (their mean quality is 0.54) brought the shared level down, as
    # GetStats's prior_level reports it live; the run reports where it ended.
    assert 0.4 < level < 0.7
    assert level == default["runs"][0]["prior_level"]
    low = run_json(capsys, *at, "--prior-quality", "0.2", "--prior-weight", "5")
    assert low["prior"].pop("level_at_end") == 0.2  # never above the prior
    assert low["prior"] == {"quality": 0.2, "weight": 5.0}
    # The router runs with it: a prior far below the arms' qualities makes trying another arm
    # look worse, so it explores the weak arm less.
    assert low["picks"]["weak"] < default["picks"]["weak"]
    assert run_json(capsys, "--data", str(data), "--policy", "random")["prior"] is None
    # The text report notes a cold router's prior far above the models' mean quality (here
    # 0.54: 0.87, 0.59 and 0.16), not one near it, nor a warm-started router's.
    for prior, noted in (("0.9", True), ("0.6", False)):
        text = cli(*at, "--prior-quality", prior)
        assert text.func(text) == 0
        out = capsys.readouterr().out
        assert ("note: the models' mean quality here is 0.54" in out) is noted
        assert f"prior {prior} worth 30 events (0." in out and "after its feedback)" in out
    warm = cli(*at, "--prior-quality", "0.9", "--warm-start", str(data), "--limit", "50")
    assert warm.func(warm) == 0
    assert "note:" not in capsys.readouterr().out
    for flag, bad in (
        ("--prior-quality", "1.5"),
        ("--prior-weight", "0"),
        ("--prior-weight", "-1"),
    ):
        with pytest.raises(SystemExit):
            cli("--data", str(data), flag, bad)
        assert f"argument {flag}: expected" in capsys.readouterr().err
