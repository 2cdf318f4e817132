"""`banditd bench load`: a tiny run against its own server, and the pure helpers of its report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from banditd.commands import bench
from banditd.commands.bench import load_probe


def test_tiny_run_reports_client_and_server_figures(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="banditd")
    bench.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        [
            *("bench", "load", "--rate", "100", "--duration", "1", "--warmup", "0.5"),
            *("--processes", "1", "--connections", "2", "--dim", "8", "--arms", "3", "--json"),
        ]
    )

    assert args.func(args) == 0

    report = json.loads(capsys.readouterr().out)
    assert report["offered"] == 100
    assert report["ok"] + sum(report["errors"].values()) + report["dropped"] == 100
    assert report["ok"] > 0 and report["achieved_rps"] > 0
    for key in ("latency_ms", "service_ms"):
        stats = report[key]
        assert 0 < stats["p50"] <= stats["p95"] <= stats["p99"] <= stats["max"]
    assert report["service_ms"]["p50"] <= report["latency_ms"]["p50"]
    assert report["server_cpu_cores"] > 0
    histogram = report["server_histogram_ms"]
    assert histogram["count"] > 0  # its window is scraped around, not exactly on, the client's
    assert 0 < histogram["p50"] <= histogram["p99"]
    assert report["targets"] == {"p99_1ms_at_3000_per_s": None}  # 100/s says nothing of it


def test_histogram_quantile_interpolates_within_a_bucket() -> None:
    cumulative = {0.001: 50.0, 0.002: 90.0, 0.005: 100.0, float("inf"): 100.0}
    assert load_probe.histogram_quantile(cumulative, 0.5) == pytest.approx(1.0)
    assert load_probe.histogram_quantile(cumulative, 0.7) == pytest.approx(1.5)
    assert load_probe.histogram_quantile(cumulative, 0.95) == pytest.approx(3.5)
    assert load_probe.histogram_quantile({float("inf"): 0.0}, 0.5) is None


def test_profile_summary_counts_areas_self_and_inclusive_samples(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    cli = "main (banditd/commands/cli.py:1)"
    select = "select (banditd/flows/select.py:9)"
    raw.write_text(
        f"{cli};{select};sign (banditd/flows/tokens.py:3) 5\n"
        f"{cli};{select};msg (structlog/_output.py:4) 2\n"
        f"{cli};{select} 1\n"
        f"{cli};select (selectors.py:5) 2\n"
    )
    summary = load_probe.summarise_profile(raw)
    assert summary["samples"] == 10
    assert dict(summary["areas_pct"]) == {
        "banditd code, NumPy included (decode, policy, sign, encode)": 60.0,
        "logging (structlog JSON lines)": 20.0,
        "waiting in epoll": 20.0,
    }
    assert summary["self_pct"][0] == ["tokens.py:sign", 50.0]
    assert dict(summary["inclusive_pct"]) == {"select.py:select": 80.0, "tokens.py:sign": 50.0}
