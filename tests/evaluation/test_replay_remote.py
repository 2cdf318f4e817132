"""`banditd replay --server`: the same replay driven through a real server on port 0."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format

from banditd.commands import replay as replay_command
from banditd.edge import codec, keys
from banditd.errors import InvalidArgument, Unauthenticated, Unavailable
from banditd.evaluation import replay
from banditd.evaluation.replay.remote import Server
from banditd.store.api_keys import KeyStore
from banditd.v1 import banditd_pb2 as pb
from tests.evaluation.test_replay import cli, run_json, synthetic, write_outcomes
from tests.helpers import StartServer


async def test_live_router_converges_to_the_best_arm(
    sqlite_url: str, start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(sqlite_url)
    data = write_outcomes(tmp_path / "synthetic.jsonl", synthetic(300))
    opts = replay.Options(
        data=data, exploration=0.1, feedback="thumbs", server=Server(server.address)
    )
    run = await asyncio.to_thread(replay.Replay, opts)

    picks = await asyncio.to_thread(run.picks, 3, 0.0, None)

    strong = run.outcomes.arms.index("strong")
    assert np.mean(picks[-100:] == strong) >= 0.8
    # The live router made every decision and learned from every one.
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="replay", name="replay-3"))
    assert stats.decisions == 300
    assert stats.feedback_count == 300
    by_arm = {a.arm: a.feedback_count for a in stats.arms}
    assert by_arm["strong"] == int(np.sum(picks == strong))
    spent = run.outcomes.cost[np.arange(300), picks].sum()  # every call's real cost reported
    assert stats.spend_usd == pytest.approx(spent)


async def test_report_has_the_in_process_keys(
    sqlite_url: str,
    start_server: StartServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = await start_server(sqlite_url)
    capsys.readouterr()  # the server's start-up log line
    data = write_outcomes(tmp_path / "synthetic.jsonl", synthetic(40))
    argv = ("--data", str(data), "--sweep", "0,100", "--metadata-from", "id")

    local = run_json(capsys, *argv)
    args = cli(*argv, "--server", server.address, "--tenant", "eval", "--json")
    assert await asyncio.to_thread(args.func, args) == 0
    # The server runs in this process and may log to stdout too (JSON lines with an "event",
    # where an earlier test set logging up so): the report is the JSON line without one.
    lines = capsys.readouterr().out.splitlines()
    objects = [json.loads(line) for line in lines if line.startswith("{")]
    live = next(o for o in objects if "event" not in o)

    assert set(live) == set(local)
    assert set(live["frontier"][0]) == set(local["frontier"][0])
    assert live["server"] == {"address": server.address, "tenant": "eval"}
    assert local["server"] is None
    assert live["n"] == 40 and sum(live["picks"].values()) == pytest.approx(1.0)
    # The same file, references and hindsight numbers; the live run's own picks.
    for key in ("best_single", "oracle", "single_models", "aiq_single_models", "aiq_oracle"):
        assert live[key] == local[key], key
    names = {r.name for r in (await server.admin.ListRouters(pb.ListRoutersRequest())).routers}
    assert names == {"replay-0", "replay-0-w100"}  # one fresh router per sweep point
    config = await server.admin.GetRouter(pb.GetRouterRequest(tenant="eval", name="replay-0"))
    assert list(config.router.metadata_keys) == ["id"]
    assert [a.name for a in config.router.arms] == live["arms"]


async def test_api_key(
    sqlite_url: str, start_server: StartServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BANDITD_API_KEY", raising=False)
    server = await start_server(sqlite_url, auth="required", auth_cache_seconds=0)
    key, _ = await keys.create_key(KeyStore(server.app.db), "replay", keys.ROLES)
    data = write_outcomes(tmp_path / "synthetic.jsonl", synthetic(10))

    def report(api_key: str | None) -> dict[str, Any]:
        key = ("--api-key", api_key) if api_key else ()
        return replay.replay(
            replay_command.options(cli("--data", str(data), "--server", server.address, *key))
        )

    with pytest.raises(Unauthenticated, match="answered UNAUTHENTICATED: missing API key"):
        await asyncio.to_thread(report, None)
    assert (await asyncio.to_thread(report, key))["n"] == 10


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = write_outcomes(tmp_path / "synthetic.jsonl", synthetic(5))
    opts = replay.Options(data=data, server=Server(f"127.0.0.1:{port}", connect_timeout_s=0.5))

    with pytest.raises(Unavailable, match=f"cannot reach banditd at 127.0.0.1:{port}"):
        replay.replay(opts)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--policy", "oracle"), "needs a policy the server runs"),
        (("--policy", "knn"), "needs a policy the server runs"),
        (("--budget-usd", "1"), "--budget-usd is not supported with --server"),
        (("--sweep-budgets",), "--sweep-budgets is not supported with --server"),
        (("--warm-start", "x.jsonl"), "--warm-start is not supported with --server"),
    ],
)
def test_what_a_server_cannot_replay_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: tuple[str, ...], message: str
) -> None:
    data = write_outcomes(tmp_path / "synthetic.jsonl", synthetic(5))
    args = cli("--data", str(data), "--server", "127.0.0.1:1", *flags)

    assert args.func(args) == 1

    assert message in capsys.readouterr().err
    with pytest.raises(InvalidArgument, match="server"):
        replay.Replay(replay_command.options(args))


def test_print_router_prints_the_router_the_replay_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Its arms priced from the replayed records' costs (--arm-prices data, the default), as
    # --server creates (and --keep-routers puts) each run's router.
    data = write_outcomes(tmp_path / "synthetic.jsonl", synthetic(20))
    args = cli("--data", str(data), "--split", "0.5", "--print-router")

    assert args.func(args) == 0

    printed = codec.spec_from_proto(json_format.Parse(capsys.readouterr().out, pb.RouterConfig()))
    run = replay.Replay(replay_command.options(args))
    ran = replay.router_spec(run.outcomes.arms, run.opts, 0.0, run.prices, run.heads)
    assert printed.arms == ran.arms
    assert all(a.input_price_per_mtok > 0 for a in printed.arms)
