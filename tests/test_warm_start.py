"""Warm start from an outcome file: the router knows the best arm per kind of prompt at once."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from banditd.v1 import banditd_pb2 as pb
from tests.conftest import StartServer, router_config

TOPICS = {
    "math": ("integral derivative equation algebra", "strong"),
    "poem": ("poem rhyme verse sonnet", "cheap"),
}


def write_outcomes(path: Path, n: int) -> None:
    """Full-information records: the best arm depends on the topic of the prompt."""
    with gzip.open(path, "wt") as out:
        for i in range(n):
            topic = ("math", "poem")[i % 2]
            words, best = TOPICS[topic]
            models = {
                arm: {"quality": 0.95 if arm == best else 0.1, "cost_usd": 0.001}
                for arm in ("cheap", "mid", "strong")
            }
            models["not-in-router"] = {"quality": 1.0, "cost_usd": 0.0}
            record = {"id": f"r{i}", "prompt": f"{words} question {i}", "models": models}
            out.write(json.dumps(record) + "\n")
        out.write(json.dumps({"id": "broken", "prompt": "", "models": {}}) + "\n")


def warm_start(url: str, data: Path) -> dict[str, object]:
    args = ["--tenant", "acme", "--router", "chat", "--data", str(data), "--database-url", url]
    done = subprocess.run(
        [sys.executable, "-m", "banditd.cli", "warm-start", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


async def test_warm_start_then_serve(
    database_url: str, start_server: StartServer, tmp_path: Path
) -> None:
    data = tmp_path / "outcomes.jsonl.gz"
    write_outcomes(data, 200)
    server = await start_server(database_url)
    await server.admin.PutRouter(
        pb.PutRouterRequest(router=router_config(embedding_dim=32, exploration=0.1))
    )
    await server.stop()

    first = warm_start(database_url, data)
    assert first["records"] == 201 and first["added"] == 600 and first["skipped"] == 1
    assert first["unknown_models"] == ["not-in-router"]
    again = warm_start(database_url, data)
    assert again["added"] == 0 and again["already_present"] == 600

    served = await start_server(database_url)
    for topic, (words, best) in TOPICS.items():
        d = await served.router.Select(
            pb.SelectRequest(tenant="acme", router="chat", prompt=f"{words} new {topic}")
        )
        assert d.arm == best
    stats = await served.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.feedback_count == 0  # offline events shape the posterior but are not feedback
    assert stats.applied_event_id >= 600


def test_unknown_router_is_a_clear_error(sqlite_url: str, tmp_path: Path) -> None:
    data = tmp_path / "o.jsonl"
    data.write_text("")
    with pytest.raises(subprocess.CalledProcessError) as err:
        warm_start(sqlite_url, data)
    assert "unknown tenant 'acme'" in err.value.stderr
