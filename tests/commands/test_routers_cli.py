"""`banditd routers` against real servers on port 0: apply, get, list, delete, as a user runs
them (the CLI's main, in process)."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest
import structlog

from banditd.commands import cli, routers_file
from banditd.config import Settings
from banditd.edge import keys
from banditd.edge.server import build_app
from banditd.store.api_keys import KeyStore
from banditd.v1 import banditd_pb2 as pb
from tests.commands.test_routers_file import ARM, BAD_ROUTERS, entry, router_file
from tests.helpers import REPO, SIGNING_KEY, Running, StartServer

EXAMPLE = REPO / "examples" / "routers.yaml"


class Cli:
    """`banditd routers ...` (or another Admin command) against one server; returns (exit
    status, stdout, stderr)."""

    def __init__(
        self, server: Running, capsys: pytest.CaptureFixture[str], command: str = "routers"
    ) -> None:
        self.server, self.capsys, self.command = server, capsys, command

    async def __call__(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        args = [self.command, *argv, "--target", self.server.address]
        with structlog.testing.capture_logs():  # the server's logs, not the command's output
            status = await asyncio.to_thread(cli.main, args)
        out, err = self.capsys.readouterr()
        return status, out, err


async def chat_applied(
    server: Running, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> tuple[Cli, Path]:
    """The command against ``server``, and a routers file of one router, acme/chat, applied."""
    banditd = Cli(server, capsys)
    path = tmp_path / "routers.yaml"
    path.write_text(router_file(entry()))
    assert (await banditd("apply", "-f", str(path)))[0] == 0
    return banditd, path


async def routers(server: Running) -> dict[str, int]:
    """tenant/name -> version of every router the server has."""
    listed = await server.admin.ListRouters(pb.ListRoutersRequest())
    return {f"{r.tenant}/{r.name}": r.version for r in listed.routers}


async def test_apply_then_get_round_trips(
    database_url: str, start_server: StartServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    server = await start_server(database_url)
    banditd = Cli(server, capsys)
    assert await banditd("apply", "-f", str(EXAMPLE)) == (0, "demo/chat: created (version 1)\n", "")
    # The router serves.
    decision = await server.router.Select(
        pb.SelectRequest(tenant="demo", router="chat", prompt="hello", metadata={"app": "x"})
    )
    assert decision.arm

    status, printed, _ = await banditd("get", "demo/chat")
    assert status == 0
    assert printed.startswith(f"# demo/chat version 1 on {server.address}\nrouters:\n")
    assert routers_file.parse(printed, "got.yaml") == routers_file.example()
    got = tmp_path / "got.yaml"
    got.write_text(printed)
    assert await banditd("apply", "-f", str(got)) == (0, "demo/chat: unchanged (version 1)\n", "")
    # JSON both ways too.
    status, printed, _ = await banditd("get", "demo/chat", "--json")
    assert json.loads(printed) == {"routers": [routers_file.document(routers_file.example()[0])]}
    got_json = tmp_path / "got.json"
    got_json.write_text(printed)
    assert await banditd("apply", "-f", str(got_json)) == (
        0,
        "demo/chat: unchanged (version 1)\n",
        "",
    )
    assert await routers(server) == {"demo/chat": 1}


RICH = router_file(
    entry(
        name="support",
        policy="thompson",
        exploration="0.3",
        default_reward="0.5",
        metadata_keys="[app]",
        shadows="[{name: eps, policy: epsilon-greedy, exploration: 0.1}]",
        breaker_error_rate="0.2",
    ),
    entry(
        name="batch",
        arms=f"[{ARM}, {{name: b, input_price_per_mtok: 0, "
        "output_price_per_mtok: 0, disabled: true}]",
    ),
)


async def test_apply_twice_is_a_no_op_and_only_changed_routers_are_updated(
    sqlite_url: str, start_server: StartServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    server = await start_server(sqlite_url)
    banditd = Cli(server, capsys)
    path = tmp_path / "routers.yaml"
    path.write_text(RICH)
    created = "acme/support: created (version 1)\nacme/batch: created (version 1)\n"
    assert await banditd("apply", "-f", str(path)) == (0, created, "")
    unchanged = "acme/support: unchanged (version 1)\nacme/batch: unchanged (version 1)\n"
    assert await banditd("apply", "-f", str(path)) == (0, unchanged, "")
    versions = await server.admin.ListRouterVersions(
        pb.ListRouterVersionsRequest(tenant="acme", name="support")
    )
    assert [v.version for v in versions.versions] == [1]

    path.write_text(RICH.replace("exploration: 0.3", "exploration: 0.4"))
    updated = "acme/support: updated (version 2)\nacme/batch: unchanged (version 1)\n"
    assert await banditd("apply", "-f", str(path), "--json") == (
        0,
        json.dumps(
            {
                "dry_run": False,
                "routers": [
                    {"router": "acme/support", "action": "update", "version": 2, "relearns": False},
                    {"router": "acme/batch", "action": "none", "version": 1, "relearns": False},
                ],
            }
        )
        + "\n",
        "",
    )
    assert await banditd("apply", "-f", str(path)) == (
        0,
        updated.replace("updated (version 2)", "unchanged (version 2)"),
        "",
    )
    live = await server.admin.GetRouter(pb.GetRouterRequest(tenant="acme", name="support"))
    assert live.router.exploration == 0.4 and live.router.default_reward == 0.5


async def test_dry_run_prints_the_diff_and_writes_nothing(
    sqlite_url: str, start_server: StartServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    server = await start_server(sqlite_url)
    banditd, path = await chat_applied(server, capsys, tmp_path)
    path.write_text(router_file(entry(policy="thompson"), entry(name="new")))
    status, printed, _ = await banditd("apply", "-f", str(path), "--dry-run")
    assert (status, printed) == (
        0,
        f"""--- acme/chat (live, version 1)
+++ acme/chat ({path})
@@ -1,4 +1,5 @@
 tenant: acme
 name: chat
 arms:
   - {{name: a, input_price_per_mtok: 1.0, output_price_per_mtok: 2.0}}
+policy: thompson
acme/chat: would be updated (version 1)
--- acme/new (absent)
+++ acme/new ({path})
@@ -0,0 +1,4 @@
+tenant: acme
+name: new
+arms:
+  - {{name: a, input_price_per_mtok: 1.0, output_price_per_mtok: 2.0}}
acme/new: would be created
dry run: nothing applied
""",
    )
    assert await routers(server) == {"acme/chat": 1}
    live = await server.admin.GetRouter(pb.GetRouterRequest(tenant="acme", name="chat"))
    assert live.router.policy == "linucb"


async def test_apply_says_when_an_update_makes_the_router_learn_again(
    sqlite_url: str, start_server: StartServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    server = await start_server(sqlite_url)
    banditd, path = await chat_applied(server, capsys, tmp_path)
    path.write_text(router_file(entry(embedding_dim="32")))  # x: 1 + 16 -> 1 + 32 values
    status, printed, _ = await banditd("apply", "-f", str(path), "--dry-run")
    assert status == 0
    assert (
        "acme/chat: would be updated (version 1); x goes from 17 to 33 values, so it learns "
        "again from its prior (its logged feedback no longer fits)\n"
    ) in printed
    status, printed, _ = await banditd("apply", "-f", str(path), "--json")
    assert json.loads(printed)["routers"] == [
        {"router": "acme/chat", "action": "update", "version": 2, "relearns": True}
    ]
    # A change that keeps x's size (the prior, the policy) keeps the learning: no such words.
    path.write_text(router_file(entry(embedding_dim="32", prior_quality="0.6")))
    status, printed, _ = await banditd("apply", "-f", str(path))
    assert (status, printed) == (0, "acme/chat: updated (version 3)\n")


async def test_apply_says_when_x_is_built_another_way(
    sqlite_url: str, start_server: StartServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """x of the same size built otherwise: the router learns again too, and apply says how."""
    server = await start_server(sqlite_url)
    banditd, path = await chat_applied(server, capsys, tmp_path)
    path.write_text(router_file(entry(text_window_tokens="64")))
    status, printed, _ = await banditd("apply", "-f", str(path), "--dry-run")
    assert status == 0
    assert (
        "acme/chat: would be updated (version 1); x is built another way (text_window_tokens: "
        "0 -> 64), so it learns again from its prior (its logged feedback no longer fits)\n"
    ) in printed
    status, printed, _ = await banditd("apply", "-f", str(path), "--json")
    assert json.loads(printed)["routers"] == [
        {"router": "acme/chat", "action": "update", "version": 2, "relearns": True}
    ]


async def test_a_write_refused_midway_is_reported_with_what_was_applied(
    sqlite_url: str, start_server: StartServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A bound only the server knows (its BANDITD_MAX_LATENCY_MS) refuses the second router of
    the file after the first was created: --json still says what was applied."""
    server = await start_server(sqlite_url, max_latency_ms=1000.0)
    slow = "[{name: a, input_price_per_mtok: 1, output_price_per_mtok: 2, prior_latency_ms: 5000}]"
    path = tmp_path / "routers.yaml"
    path.write_text(router_file(entry(name="first"), entry(name="second", arms=slow)))
    status, printed, err = await Cli(server, capsys)("apply", "-f", str(path), "--json")
    assert status == 1 and "INVALID_ARGUMENT" in err and "prior_latency_ms" in err
    shown = json.loads(printed)
    assert shown["routers"] == [
        {"router": "acme/first", "action": "create", "version": 1, "relearns": False}
    ]
    assert "prior_latency_ms" in shown["error"]
    assert await routers(server) == {"acme/first": 1}


async def test_a_router_past_a_fixed_bound_after_a_good_one_applies_nothing(
    sqlite_url: str, start_server: StartServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A bound every server has (not a setting's) is checked with the file: the good router
    before it is not created."""
    server = await start_server(sqlite_url)
    path = tmp_path / "f.yaml"
    path.write_text(router_file(entry(name="good"), entry(prior_quality="500")))
    status, out, err = await Cli(server, capsys)("apply", "-f", str(path))
    assert (status, out) == (1, "")
    assert (
        err
        == f"banditd: {path}: router acme/chat: prior_quality: must be in [-100, 100], got 500\n"
    )
    assert await routers(server) == {}


@pytest.mark.parametrize(("text", "error"), BAD_ROUTERS)
async def test_a_bad_file_applies_nothing(
    sqlite_url: str,
    start_server: StartServer,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    text: str,
    error: str,
) -> None:
    """Each bad file ends with a good router: the error names file, router and field, and
    not even the good router is applied."""
    server = await start_server(sqlite_url)
    path = tmp_path / "f.yaml"
    path.write_text(text + router_file(entry(name="good")).removeprefix("routers:\n"))
    status, out, err = await Cli(server, capsys)("apply", "-f", str(path))
    shown = "\n".join(
        f"banditd: {line.replace('f.yaml', str(path), 1)}" for line in error.splitlines()
    )
    assert (status, out, err) == (1, "", shown + "\n")
    assert await routers(server) == {}


async def test_list_get_and_delete(
    sqlite_url: str, start_server: StartServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    server = await start_server(sqlite_url)
    banditd = Cli(server, capsys)
    assert await banditd("list") == (0, "ROUTER  VERSION  POLICY  ARMS\n", "")
    path = tmp_path / "routers.yaml"
    path.write_text("routers: []\n")
    assert await banditd("apply", "-f", str(path)) == (0, f"{path}: no routers\n", "")
    path.write_text(RICH)
    await banditd("apply", "-f", str(path))
    await banditd("apply", "-f", str(EXAMPLE))
    assert await banditd("list") == (
        0,
        "ROUTER        VERSION  POLICY    ARMS\n"
        "acme/batch    1        linucb    2 (1 disabled)\n"
        "acme/support  1        thompson  1\n"
        "demo/chat     1        linucb    6\n",
        "",
    )
    _, printed, _ = await banditd("list", "--tenant", "demo", "--json")
    assert json.loads(printed) == [
        {"router": "demo/chat", "version": 1, "policy": "linucb", "arms": 6, "disabled_arms": 0}
    ]
    _, printed, _ = await banditd("get", "acme/batch", "acme/support")
    assert routers_file.parse(printed, "x") == list(reversed(routers_file.parse(RICH, "x")))
    assert await banditd("get", "acme/nope") == (
        1,
        "",
        f"banditd: {server.address}: NOT_FOUND: tenant 'acme' has no router 'nope'\n",
    )
    assert await banditd("delete", "acme/batch", "acme/nope") == (
        1,
        "acme/batch: deleted\n",
        "banditd: router acme/nope not found\n",
    )
    assert await routers(server) == {"acme/support": 1, "demo/chat": 1}
    assert await banditd("delete", "acme/support") == (0, "acme/support: deleted\n", "")
    assert await routers(server) == {"demo/chat": 1}


async def test_api_keys_and_roles(
    sqlite_url: str, start_server: StartServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server = await start_server(sqlite_url, auth="required", auth_cache_seconds=0)
    store = KeyStore(server.app.db)
    admin, _ = await keys.create_key(store, "demo", ["admin"])
    select, _ = await keys.create_key(store, "demo", ["select"])
    banditd = Cli(server, capsys)
    status, _, err = await banditd("apply", "-f", str(EXAMPLE))
    assert status == 1 and "UNAUTHENTICATED" in err
    status, _, err = await banditd("apply", "-f", str(EXAMPLE), "--api-key", select)
    assert status == 1 and "PERMISSION_DENIED" in err and "admin" in err
    applied = await banditd("apply", "-f", str(EXAMPLE), "--api-key", admin)
    assert applied == (0, "demo/chat: created (version 1)\n", "")
    # A key of one tenant lists its tenant's routers, not everyone's.
    status, _, err = await banditd("list", "--api-key", admin)
    assert status == 1 and "PERMISSION_DENIED" in err
    listed = await banditd("list", "--api-key", admin, "--tenant", "demo", "--json")
    assert [r["router"] for r in json.loads(listed[1])] == ["demo/chat"]


async def test_a_slash_in_a_tenant_or_a_name(
    sqlite_url: str, start_server: StartServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Tenants and names may hold "/": list prints org/team/chat, and get and delete take it
    back (they split at the first "/", asking for tenant org's router team/chat)."""
    server = await start_server(sqlite_url)
    banditd = Cli(server, capsys)
    path = tmp_path / "routers.yaml"
    path.write_text(router_file(entry(tenant="org/team"), entry(tenant="x", name="y/z")))
    await banditd("apply", "-f", str(path))
    listed = json.loads((await banditd("list", "--json"))[1])
    assert [r["router"] for r in listed] == ["org/team/chat", "x/y/z"]
    status, printed, _ = await banditd("get", "org/team/chat", "x/y/z")
    assert status == 0
    assert [(s.tenant, s.name) for s in routers_file.parse(printed, "x")] == [
        ("org/team", "chat"),
        ("x", "y/z"),
    ]
    # Where both splits name a router, the command cannot tell which: it says so.
    path.write_text(router_file(entry(tenant="org", name="team/chat")))
    await banditd("apply", "-f", str(path))
    assert await banditd("delete", "org/team/chat") == (
        1,
        "",
        "banditd: org/team/chat names 2 routers (tenant 'org', router 'team/chat'; tenant "
        "'org/team', router 'chat'): the Admin API takes tenant and name apart\n",
    )
    assert await banditd("delete", "x/y/z") == (0, "x/y/z: deleted\n", "")
    assert len((await server.admin.ListRouters(pb.ListRoutersRequest())).routers) == 2


def test_bad_router_names_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["routers", "get", "demo"])
    assert exited.value.code == 2
    assert "expected TENANT/NAME, got 'demo'" in capsys.readouterr().err


def test_an_unreachable_server_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["routers", "list", "--target", "127.0.0.1:1", "--wait", "0.5"])
    err = capsys.readouterr().err
    assert status == 1 and err.startswith("banditd: 127.0.0.1:1: UNAVAILABLE: ")


async def test_apply_waits_for_a_server_still_starting(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """As the Helm Job does while the release's pods start: UNAVAILABLE is retried."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = ["routers", "apply", "-f", str(EXAMPLE), "--target", f"127.0.0.1:{port}", "--wait", "60"]
    with structlog.testing.capture_logs():
        applying = asyncio.ensure_future(asyncio.to_thread(cli.main, argv))
        await asyncio.sleep(1.5)
        assert not applying.done()
        settings = Settings(
            listen=f"127.0.0.1:{port}",
            database_url=sqlite_url,
            migrate_on_start=True,
            signing_key=SIGNING_KEY,
            metrics_listen="",
        )
        app = await build_app(settings)
        await app.start()
        try:
            status = await asyncio.wait_for(applying, 60)
        finally:
            await app.stop(grace=1.0)
    assert (status, capsys.readouterr().out) == (0, "demo/chat: created (version 1)\n")
