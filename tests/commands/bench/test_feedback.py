"""`banditd bench feedback`: a tiny run on real replicas and Postgres; the report's shape."""

from __future__ import annotations

import argparse
import json

import pytest

from banditd.commands import bench

pytestmark = pytest.mark.postgres


def test_tiny_run_reports_throughput_and_convergence(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="banditd")
    bench.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        [
            *("bench", "feedback", "--database-url", postgres_url, "--events", "300"),
            *("--replicas", "2", "--probes", "6", "--probe-rate", "30", "--dim", "4", "--json"),
        ]
    )

    assert args.func(args) == 0

    report = json.loads(capsys.readouterr().out)
    for upload in ("stream", "upload", "ingest"):
        assert report[upload]["events"] == report[upload]["accepted"] == 300
        assert report[upload]["refused"] == 0
        assert report[upload]["events_per_s"] > 0
    assert report["bulk_converged_s"] >= 0
    # Compact tokens, every decision found by its lookup (none parked to be joined later).
    assert report["config"]["token_format"] == "compact"
    assert report["config"]["token_chars"] <= 160
    assert report["parked"] == 0
    assert report["commit_ms"]["n"] == 6
    # Every probe reached the one other replica.
    convergence = report["convergence_ms"]
    assert convergence["n"] == 6
    assert 0 <= convergence["p50"] <= convergence["p99"] <= convergence["max"]
    assert set(report["targets"]) == {
        "stream_20k_events_per_s",
        "upload_20k_events_per_s",
        "ingest_20k_events_per_s",
        "convergence_p99_under_1s",
    }
    assert all(ok in (True, False) for ok in report["targets"].values())
