"""`banditd bench feedback`: a tiny run on real replicas and Postgres; the report's shape."""

from __future__ import annotations

import argparse
import asyncio
import json

import pytest
from sqlalchemy import text

from banditd import bench
from banditd.bench import local
from banditd.errors import Unavailable
from banditd.store import Database

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
    for upload in ("stream", "ingest"):
        assert report[upload]["events"] == report[upload]["accepted"] == 300
        assert report[upload]["refused"] == 0
        assert report[upload]["events_per_s"] > 0
    assert report["bulk_converged_s"] >= 0
    assert report["commit_ms"]["n"] == 6
    # Every probe reached the one other replica.
    convergence = report["convergence_ms"]
    assert convergence["n"] == 6
    assert 0 <= convergence["p50"] <= convergence["p99"] <= convergence["max"]
    assert set(report["targets"]) == {
        "stream_20k_events_per_s",
        "ingest_20k_events_per_s",
        "convergence_p99_under_1s",
    }
    assert all(ok in (True, False) for ok in report["targets"].values())


def test_throwaway_postgres_serves_and_is_removed(postgres_server: object) -> None:
    """The bench's own Postgres (used without --database-url) answers, and goes on exit."""

    async def select_one(url: str) -> int:
        db = Database(url)
        try:
            async with db.transaction() as conn:
                return int(await conn.scalar(text("select 1")) or 0)
        finally:
            await db.close()

    with local.throwaway_postgres() as url:
        assert asyncio.run(select_one(url)) == 1
    with pytest.raises(Unavailable):
        asyncio.run(select_one(url))
