"""`banditd budgets` against a real server on port 0: set, get, list and spend, as a user runs
them (the CLI's main, in process)."""

from __future__ import annotations

import json

import pytest

from banditd.v1 import banditd_pb2 as pb
from tests.commands.test_routers_cli import Cli
from tests.helpers import StartServer, router_config


async def test_set_get_list_and_spend(
    sqlite_url: str, start_server: StartServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    banditd = Cli(server, capsys, "budgets")
    status, printed, _ = await banditd(
        "set", "acme", "--limit-usd", "50", "--period", "day", "--alert", "0.8", "--alert", "0.5"
    )
    assert (status, printed) == (
        0,
        "acme: created: $50 per day; alerts at 0.5, 0.8; past the limit: cheapest arm "
        "(version 1)\n",
    )
    status, printed, _ = await banditd(
        "set", "acme/chat", "--limit-usd", "2", "--period", "window", "--window-seconds", "600",
        "--on-exhausted", "refuse", "--json",
    )  # fmt: skip
    assert status == 0
    made = json.loads(printed)
    assert made["created"] is True
    assert made["budget"]["router"] == "chat" and made["budget"]["on_exhausted"] == (
        "ON_EXHAUSTED_REFUSE"
    )
    live = await server.admin.GetBudget(pb.GetBudgetRequest(tenant="acme", router="chat"))
    assert live.budget.window_seconds == 600 and live.budget.limit_usd == 2.0

    d = await server.router.Select(pb.SelectRequest(tenant="acme", router="chat", prompt="hi"))
    await server.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=1, cost_usd=0.25)
    )
    status, printed, _ = await banditd("get", "acme/chat")
    assert status == 0
    lines = printed.splitlines()
    assert lines[0] == (
        "acme/chat: $2 per window of 600 s from 0; alerts at none; past the limit: refuse "
        "(version 1)"
    )
    assert "spent $0.25, leased $" in lines[1] and "remaining $1.75" in lines[1]
    status, printed, _ = await banditd("list", "--json")
    assert status == 0
    listed = json.loads(printed)
    assert [(b["budget"]["tenant"], b["budget"]["router"]) for b in listed] == [
        ("acme", ""),
        ("acme", "chat"),
    ]
    assert listed[1]["usage"]["spent_usd"] == 0.25

    status, printed, _ = await banditd("spend", "acme", "--json")
    assert status == 0
    spend = json.loads(printed)
    assert spend["total_usd"] == 0.25
    assert spend["lines"] == [
        {"router": "chat", "arm": d.arm, "metadata_value": "", "decisions": "1", "spend_usd": 0.25}
    ]
    status, printed, _ = await banditd("spend", "acme/chat")
    assert (status, printed.splitlines()[-1]) == (0, "total: $0.25")
    assert printed.splitlines()[1].split() == ["chat", d.arm, "1", "0.25"]

    status, printed, _ = await banditd("delete", "acme/chat")
    assert (status, printed) == (0, "acme/chat: budget deleted\n")
    status, printed, error = await banditd("delete", "acme/chat", "acme")
    assert (status, printed) == (1, "acme: budget deleted\n")
    assert error == "banditd: no budget for acme/chat\n"
    status, printed, _ = await banditd("list")
    assert (status, printed) == (0, "no budgets\n")


async def test_refusals_print_the_servers_status(
    sqlite_url: str, start_server: StartServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server = await start_server(sqlite_url)
    banditd = Cli(server, capsys, "budgets")
    status, printed, error = await banditd("get", "nobody")
    assert (status, printed) == (1, "")
    assert "NOT_FOUND" in error
    status, printed, error = await banditd(
        "set", "acme", "--limit-usd", "1", "--period", "window"
    )  # a window needs its length
    assert (status, printed) == (1, "")
    assert "INVALID_ARGUMENT" in error and "window_seconds" in error
    for seconds in ("-5", str(2**32)):  # out of the proto's uint32: refused before any call
        with pytest.raises(SystemExit) as exited:
            await banditd("set", "acme", "--limit-usd", "1", "--period", "window",
                          "--window-seconds", seconds)  # fmt: skip
        assert exited.value.code == 2
        assert "argument --window-seconds: expected an integer in [0, " in capsys.readouterr().err
    status, printed, _ = await banditd("list")
    assert (status, printed) == (0, "no budgets\n")


async def test_a_tenant_with_a_slash_is_named_by_tenant(
    sqlite_url: str, start_server: StartServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """TENANT/ROUTER splits at the first "/": the tenant "org/team" is named with --tenant,
    for each command, end to end; the positional forms keep working alongside."""
    server = await start_server(sqlite_url)
    banditd = Cli(server, capsys, "budgets")
    status, printed, _ = await banditd(
        "set", "--tenant", "org/team", "--limit-usd", "5", "--period", "day"
    )
    assert (status, printed) == (
        0,
        "org/team: created: $5 per day; alerts at none; past the limit: cheapest arm (version 1)\n",
    )
    status, printed, _ = await banditd(
        "set", "--tenant", "org/team", "--router", "chat", "--limit-usd", "1", "--period", "hour"
    )
    assert status == 0
    status, printed, _ = await banditd("set", "org/team", "--limit-usd", "2", "--period", "day")
    assert status == 0  # the positional form: tenant "org", router "team"
    listed = await server.admin.ListBudgets(pb.ListBudgetsRequest())
    assert sorted((b.budget.tenant, b.budget.router) for b in listed.budgets) == [
        ("org", "team"),
        ("org/team", ""),
        ("org/team", "chat"),
    ]
    status, printed, _ = await banditd("get", "--tenant", "org/team", "--json")
    assert status == 0
    [got] = json.loads(printed)
    assert (got["budget"]["tenant"], got["budget"]["router"]) == ("org/team", "")
    assert got["budget"]["limit_usd"] == 5
    status, printed, _ = await banditd("spend", "--tenant", "org/team", "--json")
    assert (status, json.loads(printed)["total_usd"]) == (0, 0)
    status, printed, _ = await banditd("delete", "--tenant", "org/team", "--router", "chat")
    assert (status, printed) == (0, "org/team/chat: budget deleted\n")
    status, printed, _ = await banditd("delete", "--tenant", "org/team")
    assert (status, printed) == (0, "org/team: budget deleted\n")
    listed = await server.admin.ListBudgets(pb.ListBudgetsRequest())
    assert [(b.budget.tenant, b.budget.router) for b in listed.budgets] == [("org", "team")]
    for argv, why in [
        (("get",), "name a budget"),
        (("get", "org", "--tenant", "org/team"), "not both"),
        (("get", "--router", "chat"), "--router needs --tenant"),
        (("delete", "--tenant", ""), "--tenant must not be empty"),
    ]:
        status, printed, error = await banditd(*argv)
        assert (status, printed) == (2, "") and why in error
