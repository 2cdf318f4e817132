"""`banditd bench select`: a tiny run against its own server and echo server, and its report."""

from __future__ import annotations

import argparse
import json

import pytest

from banditd.commands import bench
from banditd.commands.bench import select


def test_tiny_run_prints_every_series_ratio_and_goal(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="banditd")
    bench.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        [
            *("bench", "select", "--calls", "20", "--warmup", "2"),
            *("--dim", "8", "--arms", "3", "--json"),
        ]
    )

    assert args.func(args) == 0

    report = json.loads(capsys.readouterr().out)
    series = report["latency_ms"]
    assert set(series) == {"echo", "select", "select_fresh", "echo_text", "select_text"}
    for stats in series.values():
        assert stats["n"] == 20
        assert 0 < stats["p50"] <= stats["p90"] <= stats["p99"]
    ratios = report["ratios"]
    assert set(ratios) == {"select_p50", "select_p99", "fresh_p50", "text_p50"}
    assert ratios["select_p50"] == pytest.approx(
        series["select"]["p50"] / series["echo"]["p50"], rel=1e-2
    )
    assert set(report["goals"]) == {
        "select_p50_le_1.3x",
        "select_p99_le_2x",
        "fresh_p50_le_1.5x",
        "text_p50_le_1.6x",
        "tokens_le_160_chars",
    }
    assert all(isinstance(met, bool) for met in report["goals"].values())
    tokens = report["config"]["token_chars"]
    assert set(tokens) == {"embedding", "prompt"}
    assert report["goals"]["tokens_le_160_chars"] == (max(tokens.values()) <= 160)


def test_report_leaves_text_out_when_not_measured() -> None:
    times = {"echo": [0.001, 0.002], "select": [0.002, 0.004], "select_fresh": [0.003, 0.003]}
    report = select.report_of(times, {})
    assert report["ratios"]["select_p50"] == pytest.approx(2.0)
    assert report["ratios"]["fresh_p50"] == pytest.approx(2.0)
    assert report["ratios"]["text_p50"] is None
    assert report["goals"]["text_p50_le_1.6x"] is None
    assert report["goals"]["select_p50_le_1.3x"] is False


@pytest.mark.postgres
def test_throughput_compares_two_workers_with_a_two_process_echo_server(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser(prog="banditd")
    bench.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        [
            *("bench", "select", "--calls", "5", "--warmup", "1", "--no-text", "--dim", "8"),
            *("--throughput", "--rate", "100", "--duration", "1", "--json"),
        ]
    )

    assert args.func(args) == 0

    report = json.loads(capsys.readouterr().out)
    assert "select_text" not in report["latency_ms"]
    t = report["throughput"]
    for side in ("banditd_workers_2", "echo_processes_2"):
        assert t[side]["rps"] > 0
        assert 0 < t[side]["latency_ms"]["p50"] <= t[side]["latency_ms"]["p99"]
    assert t["ratio"] == pytest.approx(
        t["banditd_workers_2"]["rps"] / t["echo_processes_2"]["rps"], rel=1e-2
    )
    assert report["goals"]["throughput_ge_75pct_echo"] is (t["ratio"] >= 0.75)
