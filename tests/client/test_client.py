"""banditd.client against real servers on port 0: both clients, errors, deadlines, retries, auth."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme

from banditd import client as bc
from banditd.config import Settings
from banditd.edge import keys
from banditd.edge.server import App, build_app
from banditd.store.api_keys import KeyStore
from banditd.v1 import banditd_pb2 as pb
from banditd.v1 import banditd_pb2_grpc as rpc
from tests.helpers import SIGNING_KEY, Running, StartServer, router_config, wait_until

EMBEDDING = [1.0, 0.0, 0.0, 0.0]
FAST_RETRY = bc.RetryPolicy(attempts=30, initial_backoff_s=0.05, max_backoff_s=0.2, jitter_s=0.0)
Client = bc.Client | bc.AsyncClient


async def call(client: Client, method: str, *args: Any, **kwargs: Any) -> Any:
    """Run a client method: the sync client in a thread (the server shares this event loop)."""
    if isinstance(client, bc.AsyncClient):
        return await getattr(client, method)(*args, **kwargs)
    return await asyncio.to_thread(getattr(client, method), *args, **kwargs)


@pytest.fixture(params=["sync", "async"])
async def make_client(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(target: str, **options: Any) -> Client:
        kind = bc.Client if request.param == "sync" else bc.AsyncClient
        made.append(kind(target, **options))
        return made[-1]

    yield make
    for c in made:
        if isinstance(c, bc.AsyncClient):
            await c.close()
        else:
            c.close()


async def serving(start_server: StartServer, url: str, **settings: Any) -> Running:
    server = await start_server(url, **settings)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    return server


def test_importing_the_client_loads_no_server_code() -> None:
    code = (
        "import sys, banditd.client; "
        "print(sorted(m for m in ('sqlalchemy', 'numba', 'numpy', 'torch', 'pydantic', "
        "'banditd.edge.server', 'banditd.store') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_api() -> None:
    assert set(bc.__all__) == {
        *("Client", "AsyncClient", "RetryPolicy", "NO_RETRY", "SelectArgs", "FeedbackArgs"),
        *("Decision", "RankedArm", "FeedbackResult", "UploadSummary", "UploadError"),
        *("BanditdError", "InvalidArgument", "NotFound", "AlreadyExists", "PermissionDenied"),
        *("FailedPrecondition", "Aborted", "Unauthenticated", "ResourceExhausted"),
        *("Unavailable", "DeadlineExceeded", "Internal", "TLSConfigError", "ClientClosed"),
    }
    assert all(hasattr(bc, name) for name in bc.__all__)


async def test_select_and_feedback_round_trip(
    sqlite_url: str, start_server: StartServer, make_client: Callable[..., Client]
) -> None:
    server = await serving(start_server, sqlite_url)
    client = make_client(server.address, tenant="acme")
    decision = await call(
        client,
        "select",
        router="chat",
        embedding=EMBEDDING,
        metadata={"app": "docs"},
        cost_weight=0.5,
        candidates=["cheap", "mid"],
        request_id="req-1",
    )
    assert (decision.tenant, decision.router) == ("acme", "chat")
    assert decision.arm in ("cheap", "mid")
    assert {r.arm for r in decision.ranking} == {"cheap", "mid"}
    assert decision.fallbacks == tuple(r.arm for r in decision.ranking if r.arm != decision.arm)
    assert 0 < decision.propensity <= 1 and decision.expires_at_unix > time.time()
    assert decision.raw.decision_id == decision.decision_id
    again = await call(client, "select", router="chat", embedding=EMBEDDING, request_id="req-1")
    assert again == decision  # a repeated request_id answers the first decision

    result = await call(
        client,
        "feedback",
        decision_id=decision.decision_id,
        thumb="up",
        cost_usd=0.002,
        input_tokens=120,
        output_tokens=300,
        latency_ms=850.0,
        timeout=5.0,
    )
    assert result.event_id >= 1 and (result.reward, result.cost_usd) == (1.0, 0.002)
    assert not result.already_recorded and result.raw.event_id == result.event_id
    other = await call(client, "select", tenant="acme", router="chat", prompt="hello")
    scored = await call(client, "feedback", decision_id=other.decision_id, reward=0.25)
    assert scored.reward == 0.25 and scored.cost_usd == pytest.approx(other.expected_cost_usd)


async def test_upload_feedback_of_many_events(
    sqlite_url: str, start_server: StartServer, make_client: Callable[..., Client]
) -> None:
    server = await serving(start_server, sqlite_url)
    client = make_client(server.address)
    decisions = [
        await call(client, "select", tenant="acme", router="chat", prompt=f"question {i}")
        for i in range(24)
    ]

    def events() -> Iterator[bc.FeedbackArgs]:  # lazily, as from a file
        for i, d in enumerate(decisions):
            yield {"decision_id": d.decision_id, "thumb": ("up", "down")[i % 2], "cost_usd": 0.01}
        yield {"decision_id": decisions[0].decision_id, "reward": 1.0}  # 24: duplicate
        yield {"decision_id": "not-a-token", "thumb": "up"}  # 25: refused

    summary = await call(client, "upload_feedback", events(), tenant="acme", chunk_size=10)
    assert (summary.accepted, summary.duplicate, summary.invalid, summary.resent) == (24, 1, 1, 0)
    assert [(e.index, e.kind) for e in summary.errors] == [(24, "duplicate"), (25, "invalid")]
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.feedback_count == 24


@pytest.mark.parametrize(
    ("case", "error", "message"),
    [
        ("unknown tenant", bc.NotFound, "acme-missing"),
        ("unknown router", bc.NotFound, "nope"),
        ("bad field", bc.InvalidArgument, "cost_weight"),
        ("prompt and embedding", bc.InvalidArgument, "not both"),
        ("duplicate feedback", bc.AlreadyExists, "already has feedback"),
        ("reward out of range", bc.InvalidArgument, "reward"),
        ("bad thumb", bc.InvalidArgument, "'up' or 'down'"),
        ("forged decision", bc.PermissionDenied, "not a decision token"),
        ("another tenant's decision", bc.PermissionDenied, "not issued to this tenant"),
        ("unknown argument", TypeError, "unexpected arguments: colour"),
    ],
)
async def test_errors_map_to_the_exception_tree(
    sqlite_url: str,
    start_server: StartServer,
    make_client: Callable[..., Client],
    case: str,
    error: type[Exception],
    message: str,
) -> None:
    server = await serving(start_server, sqlite_url)
    client = make_client(server.address, tenant="acme")
    decision = await call(client, "select", router="chat", embedding=EMBEDDING)
    await call(client, "feedback", decision_id=decision.decision_id, thumb="down")
    fresh = (await call(client, "select", router="chat", embedding=EMBEDDING)).decision_id
    calls: dict[str, tuple[str, dict[str, Any]]] = {
        "unknown tenant": ("select", {"tenant": "acme-missing", "router": "chat"}),
        "unknown router": ("select", {"router": "nope", "prompt": "hi"}),
        "bad field": ("select", {"router": "chat", "prompt": "hi", "cost_weight": float("nan")}),
        "prompt and embedding": ("select", {"router": "chat", "prompt": "p", "embedding": [1]}),
        "duplicate feedback": ("feedback", {"decision_id": decision.decision_id, "thumb": "up"}),
        "reward out of range": ("feedback", {"decision_id": fresh, "reward": 2.0}),
        "bad thumb": ("feedback", {"decision_id": fresh, "thumb": "meh"}),
        "forged decision": ("feedback", {"decision_id": "forged", "thumb": "up"}),
        "another tenant's decision": (
            "feedback",
            {"tenant": "globex", "decision_id": fresh, "thumb": "up"},
        ),
        "unknown argument": ("select", {"router": "chat", "colour": "red"}),
    }
    method, kwargs = calls[case]
    with pytest.raises(error, match=message) as raised:
        await call(client, method, **kwargs)
    if isinstance(raised.value, bc.BanditdError):
        assert raised.value.code == type(raised.value).code
        assert raised.value.message == str(raised.value)


@pytest.fixture
async def silent_server() -> AsyncIterator[str]:
    """A TCP listener that accepts connections and never answers (a hung server)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    for writer in held:
        writer.close()
    server.close()


@pytest.mark.parametrize(
    ("client_timeout", "call_timeout"), [(0.3, None), (30.0, 0.3)], ids=["default", "per-call"]
)
async def test_deadline_exceeded(
    silent_server: str,
    make_client: Callable[..., Client],
    client_timeout: float,
    call_timeout: float | None,
) -> None:
    client = make_client(silent_server, tenant="acme", timeout=client_timeout, retry=FAST_RETRY)
    started = time.monotonic()
    with pytest.raises(bc.DeadlineExceeded) as raised:
        await call(client, "select", router="chat", prompt="hi", timeout=call_timeout)
    assert 0.25 < time.monotonic() - started < 5
    assert raised.value.code == "DEADLINE_EXCEEDED"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def server_on(url: str, port: int, **settings: Any) -> App:
    app = await build_app(
        Settings(
            listen=f"127.0.0.1:{port}",
            database_url=url,
            migrate_on_start=True,
            signing_key=SIGNING_KEY,
            metrics_listen="",
            **settings,
        )
    )
    await app.start()
    return app


def retries(caplog: pytest.LogCaptureFixture) -> int:
    return sum(r.name == "banditd.client" and ": retry " in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("rpc", ["select", "feedback", "upload_feedback"])
async def test_unavailable_is_retried_until_the_server_comes_up(
    sqlite_url: str,
    start_server: StartServer,
    make_client: Callable[..., Client],
    caplog: pytest.LogCaptureFixture,
    rpc: str,
) -> None:
    """The server is down at the first attempt; a retry reaches the one started meanwhile. A
    feedback whose retry is answered ALREADY_EXISTS counts as recorded."""
    caplog.set_level(logging.INFO, logger="banditd.client")
    first = await serving(start_server, sqlite_url)
    rated, fresh = [
        (await first.router.Select(pb.SelectRequest(tenant="acme", router="chat", prompt=p)))
        for p in ("a", "b")
    ]
    await first.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=rated.decision_id, thumb=pb.THUMB_UP)
    )
    await first.stop()
    client = make_client(f"127.0.0.1:{first.app.port}", tenant="acme", retry=FAST_RETRY)
    args: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
        "select": ((), {"router": "chat", "prompt": "hi", "request_id": "r-1"}),
        "feedback": ((), {"decision_id": rated.decision_id, "thumb": "up"}),
        "upload_feedback": (
            ([{"decision_id": d.decision_id, "reward": 0.5} for d in (rated, fresh)],),
            {},
        ),
    }
    pending = asyncio.ensure_future(call(client, rpc, *args[rpc][0], **args[rpc][1]))
    await wait_until(lambda: retries(caplog), "the first attempt to fail")
    app = await server_on(sqlite_url, first.app.port)
    try:
        result = await pending
    finally:
        await app.stop(grace=1.0)
    if rpc == "select":
        assert result.arm in ("cheap", "mid", "strong")
    elif rpc == "feedback":
        assert result == bc.FeedbackResult(None, None, None, already_recorded=True)
    else:
        assert (result.accepted, result.duplicate) == (1, 1)
        assert result.resent == 2 * retries(caplog)


def test_an_async_client_made_before_its_event_loop_works_in_it(sqlite_url: str) -> None:
    client = bc.AsyncClient(f"127.0.0.1:{free_port()}", tenant="acme")  # as at import time

    async def main() -> str:
        port = int(client.target.rsplit(":", 1)[1])
        app = await server_on(sqlite_url, port)
        try:
            async with grpc.aio.insecure_channel(client.target) as channel:
                await rpc.AdminStub(channel).PutRouter(pb.PutRouterRequest(router=router_config()))
            decision: bc.Decision = await client.select(router="chat", prompt="hi")
            return decision.arm
        finally:
            await client.close()
            await app.stop(grace=1.0)

    assert asyncio.run(main()) in ("cheap", "mid", "strong")


@pytest.mark.parametrize(
    ("args", "attempts"),
    [
        ({"router": "chat", "prompt": "hi", "request_id": "r-1"}, 3),
        ({"router": "chat", "prompt": "hi"}, 1),  # no request_id: a retry could decide twice
    ],
    ids=["select-with-request-id", "select-without"],
)
async def test_a_stopped_server_is_unavailable_after_the_allowed_attempts(
    make_client: Callable[..., Client],
    caplog: pytest.LogCaptureFixture,
    args: dict[str, str],
    attempts: int,
) -> None:
    caplog.set_level(logging.INFO, logger="banditd.client")
    policy = bc.RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02, jitter_s=0)
    client = make_client(f"127.0.0.1:{free_port()}", tenant="acme", retry=policy)
    with pytest.raises(bc.Unavailable) as raised:
        await call(client, "select", **args)
    assert raised.value.code == "UNAVAILABLE"
    assert retries(caplog) == attempts - 1


async def test_api_keys(
    sqlite_url: str, start_server: StartServer, make_client: Callable[..., Client]
) -> None:
    server = await start_server(sqlite_url, auth="required", auth_cache_seconds=0)
    store = KeyStore(server.app.db)
    root, _ = await keys.create_key(store, keys.ALL_TENANTS, ["admin"])
    await server.admin.PutRouter(
        pb.PutRouterRequest(router=router_config()), metadata=(("authorization", f"Bearer {root}"),)
    )
    key, _ = await keys.create_key(store, "acme", ["select", "feedback"])
    other, _ = await keys.create_key(store, "globex", ["select", "feedback"])
    client = make_client(server.address, tenant="acme", api_key=key)
    decision = await call(client, "select", router="chat", prompt="hi")
    assert (await call(client, "feedback", decision_id=decision.decision_id, thumb="up")).event_id
    for api_key, error in [(None, bc.Unauthenticated), (other, bc.PermissionDenied)]:
        refused = make_client(server.address, tenant="acme", api_key=api_key)
        with pytest.raises(error):
            await call(refused, "select", router="chat", prompt="hi")
    # A call's own key (a gateway forwarding its caller's) replaces the client's.
    assert (await call(refused, "select", router="chat", prompt="hi", api_key=key)).arm
    with pytest.raises(bc.Unauthenticated, match="unknown API key"):
        await call(client, "select", router="chat", prompt="hi", api_key=f"{key}x")


async def test_mutual_tls_with_an_api_key(
    sqlite_url: str, start_server: StartServer, make_client: Callable[..., Client], tmp_path: Path
) -> None:
    ca = trustme.CA()
    files = {"ca": ca.cert_pem}
    for name, issued in (("server", ca.issue_cert("localhost")), ("client", ca.issue_cert("c"))):
        files[f"{name}_key"] = issued.private_key_pem
        files[f"{name}_cert"] = trustme.Blob(b"".join(b.bytes() for b in issued.cert_chain_pems))
    for name, blob in files.items():
        blob.write_to_path(str(tmp_path / f"{name}.pem"))
    pem = {name: tmp_path / f"{name}.pem" for name in files}
    plain = await serving(start_server, sqlite_url)
    await plain.stop()  # the router is in the database; serve it again over mutual TLS
    server = await start_server(
        sqlite_url,
        auth="required",
        auth_cache_seconds=0,
        tls_cert_file=pem["server_cert"],
        tls_key_file=pem["server_key"],
        tls_client_ca_file=pem["ca"],
    )
    key, _ = await keys.create_key(KeyStore(server.app.db), "acme", ["select"])
    target = f"localhost:{server.app.port}"
    mtls = {"tls_ca": pem["ca"], "tls_cert": pem["client_cert"], "tls_key": pem["client_key"]}
    client = make_client(target, api_key=key, **mtls)
    assert (await call(client, "select", tenant="acme", router="chat", prompt="hi")).arm
    no_cert = make_client(target, api_key=key, tls_ca=pem["ca"], retry=bc.NO_RETRY)
    with pytest.raises(bc.Unavailable):
        await call(no_cert, "select", tenant="acme", router="chat", prompt="hi", request_id="x")
    with pytest.raises(bc.TLSConfigError, match="needs its key"):
        make_client(target, tls_ca=pem["ca"], tls_cert=pem["client_cert"])
