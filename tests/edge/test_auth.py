"""API keys at the gRPC edge: authentication, roles and tenancy on every RPC, over real gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from grpc import StatusCode as C
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY
from sqlalchemy import event
from structlog.testing import capture_logs

from banditd.config import Settings
from banditd.edge import keys
from banditd.edge.auth import EdgeGuard, tenant_of
from banditd.edge.limits import TenantLimits
from banditd.store.api_keys import KeyStore
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import Running, StartServer, router_config

Metadata = tuple[tuple[str, str], ...]


def bearer(key: str) -> Metadata:
    return (("authorization", f"Bearer {key}"),)


async def new_key(server: Running, tenant: str, *roles: str) -> str:
    secret, _ = await keys.create_key(KeyStore(server.app.db), tenant, roles)
    return secret


async def secured(start_server: StartServer, url: str) -> tuple[Running, Metadata]:
    """A server with auth on (keys looked up on every call), routers acme/chat and
    globex/chat, and an operator key ('*', admin)."""
    server = await start_server(url, auth="required", auth_cache_seconds=0)
    root = bearer(await new_key(server, keys.ALL_TENANTS, "admin"))
    for tenant in ("acme", "globex"):
        await server.admin.PutRouter(
            pb.PutRouterRequest(router=router_config(tenant)), metadata=root
        )
    return server, root


def select(tenant: str) -> pb.SelectRequest:
    return pb.SelectRequest(
        tenant=tenant, router="chat", embedding=pb.Embedding(values=[1, 0, 0, 0])
    )


async def _code(call: Awaitable[Any]) -> tuple[C, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code(), err.value.details() or ""


def test_auth_is_off_by_default_only_on_loopback() -> None:
    assert not Settings(listen="127.0.0.1:50051").auth_required
    assert not Settings(listen="[::1]:50051").auth_required
    assert not Settings(listen="localhost:50051").auth_required
    assert Settings(listen="0.0.0.0:50051").auth_required
    assert Settings(listen="10.1.2.3:50051", auth="required").auth_required
    assert not Settings(listen="0.0.0.0:50051", auth="disabled").auth_required
    assert Settings(listen="127.0.0.1:50051", auth="required").auth_required


async def test_calls_without_a_valid_key_are_unauthenticated(
    database_url: str, start_server: StartServer
) -> None:
    server, root = await secured(start_server, database_url)
    good = await new_key(server, "acme", "select")
    key_id, _ = keys.split_key(good)
    cases: list[tuple[Metadata, str]] = [
        ((), "missing API key"),
        ((("authorization", good),), "Bearer"),
        (bearer("not-a-key"), "malformed"),
        (bearer(f"bdk_{key_id}_wrong-secret"), "unknown API key"),
        (bearer("bdk_0000000000000000_secret"), "unknown API key"),
    ]
    for metadata, message in cases:
        for call in (
            server.router.Select(select("acme"), metadata=metadata),
            server.admin.GetStats(
                pb.GetStatsRequest(tenant="acme", name="chat"), metadata=metadata
            ),
        ):
            code, details = await _code(call)
            assert code == C.UNAUTHENTICATED and message in details, (metadata, details)
    assert (await server.router.Select(select("acme"), metadata=bearer(good))).arm
    await keys.revoke_key(KeyStore(server.app.db), key_id)
    code, details = await _code(server.router.Select(select("acme"), metadata=bearer(good)))
    assert code == C.UNAUTHENTICATED and "revoked" in details
    stats = await server.admin.GetStats(
        pb.GetStatsRequest(tenant="acme", name="chat"), metadata=root
    )
    assert stats.decisions == 1


async def test_health_is_open_and_reflection_needs_a_key(
    sqlite_url: str, start_server: StartServer
) -> None:
    server, root = await secured(start_server, sqlite_url)
    health = health_pb2_grpc.HealthStub(server.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    ask = reflection_pb2.ServerReflectionRequest(list_services="")

    async def services(metadata: Metadata) -> list[str]:
        call = stub.ServerReflectionInfo(iter([ask]), metadata=metadata)
        return [s.name async for r in call for s in r.list_services_response.service]

    assert "banditd.v1.Router" in await services(root)
    code, details = await _code(services(()))
    assert code == C.UNAUTHENTICATED and "missing API key" in details


async def test_roles(sqlite_url: str, start_server: StartServer) -> None:
    server, _ = await secured(start_server, sqlite_url)
    selector = bearer(await new_key(server, "acme", "select"))
    reporter = bearer(await new_key(server, "acme", "feedback"))
    admin = bearer(await new_key(server, "acme", "admin"))
    d = await server.router.Select(select("acme"), metadata=selector)
    fb = pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=1.0)
    stats = pb.GetStatsRequest(tenant="acme", name="chat")
    for call, role in (
        (server.router.Feedback(fb, metadata=selector), "feedback"),
        (server.router.StreamFeedback(iter([fb]), metadata=selector), "feedback"),
        (server.admin.GetStats(stats, metadata=selector), "admin"),
        (server.router.Select(select("acme"), metadata=reporter), "select"),
        (
            server.admin.ListRouters(pb.ListRoutersRequest(tenant="acme"), metadata=reporter),
            "admin",
        ),
        (server.router.Select(select("acme"), metadata=admin), "select"),
        (server.router.Feedback(fb, metadata=admin), "feedback"),
    ):
        code, details = await _code(call)
        assert code == C.PERMISSION_DENIED and f"{role!r} role" in details, details
    assert (await server.admin.GetStats(stats, metadata=admin)).feedback_count == 0
    assert (await server.router.Feedback(fb, metadata=reporter)).event_id > 0
    assert (await server.admin.GetStats(stats, metadata=admin)).feedback_count == 1


async def test_a_key_never_reaches_another_tenant(
    database_url: str, start_server: StartServer
) -> None:
    """Every RPC, with a key holding every role for tenant acme, aimed at globex."""
    server, root = await secured(start_server, database_url)
    acme = bearer(await new_key(server, "acme", "select", "feedback", "admin"))
    globex = bearer(await new_key(server, "globex", "select", "feedback"))
    theirs = await server.router.Select(select("globex"), metadata=globex)
    ours = await server.router.Select(select("acme"), metadata=acme)

    def fb(tenant: str, token: str) -> pb.FeedbackRequest:
        return pb.FeedbackRequest(tenant=tenant, decision_id=token, reward=0.0)

    attempts: dict[str, Callable[[], Awaitable[Any]]] = {
        "Select": lambda: server.router.Select(select("globex"), metadata=acme),
        "Feedback": lambda: server.router.Feedback(fb("globex", theirs.decision_id), metadata=acme),
        "Feedback, their token as ours": lambda: server.router.Feedback(
            fb("acme", theirs.decision_id), metadata=acme
        ),
        "StreamFeedback": lambda: server.router.StreamFeedback(
            iter([fb("globex", theirs.decision_id)]), metadata=acme
        ),
        "StreamFeedback, theirs after ours": lambda: server.router.StreamFeedback(
            iter([fb("acme", ours.decision_id), fb("globex", theirs.decision_id)]), metadata=acme
        ),
        "PutRouter": lambda: server.admin.PutRouter(
            pb.PutRouterRequest(router=router_config("globex", arms=("cheap",))), metadata=acme
        ),
        "GetRouter": lambda: server.admin.GetRouter(
            pb.GetRouterRequest(tenant="globex", name="chat"), metadata=acme
        ),
        "ListRouters": lambda: server.admin.ListRouters(
            pb.ListRoutersRequest(tenant="globex"), metadata=acme
        ),
        "ListRouters, every tenant": lambda: server.admin.ListRouters(
            pb.ListRoutersRequest(), metadata=acme
        ),
        "DeleteRouter": lambda: server.admin.DeleteRouter(
            pb.DeleteRouterRequest(tenant="globex", name="chat"), metadata=acme
        ),
        "GetStats": lambda: server.admin.GetStats(
            pb.GetStatsRequest(tenant="globex", name="chat"), metadata=acme
        ),
    }
    # And every RPC of every banditd service, also those added later, with a request naming
    # globex wherever it names a tenant.
    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            attempts[f"{method.name} (generic)"] = _generic_call(server, method, acme)
    before = await server.admin.GetStats(
        pb.GetStatsRequest(tenant="globex", name="chat"), metadata=root
    )
    for name, attempt in attempts.items():
        code, details = await _code(attempt())
        assert code == C.PERMISSION_DENIED, (name, code, details)
        assert "tenant" in details, (name, details)
    after = await server.admin.GetStats(
        pb.GetStatsRequest(tenant="globex", name="chat"), metadata=root
    )
    assert after == before and after.decisions == 1 and after.feedback_count == 0
    router = await server.admin.GetRouter(
        pb.GetRouterRequest(tenant="globex", name="chat"), metadata=root
    )
    assert router.router.version == 1 and len(router.router.arms) == 3
    # The same key does all of it on its own tenant.
    await server.router.Feedback(fb("acme", ours.decision_id), metadata=acme)
    own = await server.admin.ListRouters(pb.ListRoutersRequest(tenant="acme"), metadata=acme)
    assert [r.tenant for r in own.routers] == ["acme"]
    stats = await server.admin.GetStats(
        pb.GetStatsRequest(tenant="acme", name="chat"), metadata=acme
    )
    assert stats.feedback_count == 1
    everyone = await server.admin.ListRouters(pb.ListRoutersRequest(), metadata=root)
    assert sorted(r.tenant for r in everyone.routers) == ["acme", "globex"]


async def test_a_refused_stream_message_is_counted_and_logged_like_a_refused_call(
    sqlite_url: str, start_server: StartServer
) -> None:
    """A message of StreamFeedback or UploadFeedback naming another tenant is refused inside
    the stream, and counted in banditd_auth_refusals_total and logged as edge_refused, as a
    refused unary call is."""
    server, _ = await secured(start_server, sqlite_url)
    acme = bearer(await new_key(server, "acme", "select", "feedback"))
    ours = await server.router.Select(select("acme"), metadata=acme)
    mine = pb.FeedbackRequest(tenant="acme", decision_id=ours.decision_id, reward=1.0)
    foreign = pb.FeedbackRequest(tenant="globex", decision_id=ours.decision_id, reward=1.0)
    labels = {"reason": "permission_denied"}
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "Feedback": lambda: server.router.Feedback(foreign, metadata=acme),
        "StreamFeedback": lambda: server.router.StreamFeedback(
            iter([mine, foreign]), metadata=acme
        ),
        "UploadFeedback": lambda: server.router.UploadFeedback(
            iter([pb.FeedbackBatch(tenant="globex", events=[mine])]), metadata=acme
        ),
    }
    for name, call in calls.items():
        before = REGISTRY.get_sample_value("banditd_auth_refusals_total", labels) or 0.0
        with capture_logs() as logs:
            code, details = await _code(call())
        assert code == C.PERMISSION_DENIED and "tenant" in details, (name, code, details)
        after = REGISTRY.get_sample_value("banditd_auth_refusals_total", labels)
        assert after == before + 1, name
        refused = [e for e in logs if e["event"] == "edge_refused"]
        assert [(e["method"], e["reason"]) for e in refused] == [
            (f"/banditd.v1.Router/{name}", "permission_denied")
        ]


def _generic_call(server: Running, method: Any, metadata: Metadata) -> Callable[[], Awaitable[Any]]:
    """A call of any RPC whose request (or its sub-message) names tenant globex."""
    cls = message_factory.GetMessageClass(method.input_type)
    request = cls()
    if "tenant" in method.input_type.fields_by_name:
        request.tenant = "globex"
    for field in method.input_type.fields:
        sub = field.message_type
        if sub is not None and not field.is_repeated and "tenant" in sub.fields_by_name:
            getattr(request, field.name).tenant = "globex"
    path = f"/{method.containing_service.full_name}/{method.name}"
    codec = {"request_serializer": cls.SerializeToString, "response_deserializer": None}
    channel = server.channel
    if method.client_streaming and method.server_streaming:
        return lambda: _drain(
            channel.stream_stream(path, **codec)(iter([request]), metadata=metadata)
        )
    if method.client_streaming:
        return lambda: channel.stream_unary(path, **codec)(iter([request]), metadata=metadata)
    if method.server_streaming:
        return lambda: _drain(channel.unary_stream(path, **codec)(request, metadata=metadata))
    return lambda: channel.unary_unary(path, **codec)(request, metadata=metadata)


async def _drain(call: Any) -> list[Any]:
    return [reply async for reply in call]


def test_tenant_of_every_request() -> None:
    assert tenant_of(select("a")) == "a"
    assert tenant_of(pb.PutRouterRequest(router=router_config("b"))) == "b"
    assert tenant_of(pb.ListRoutersRequest()) == ""
    assert tenant_of(pb.FeedbackRequest(tenant="c")) == "c"
    assert tenant_of(pb.Embedding()) is None


async def test_streaming_replies_are_guarded_too() -> None:
    """An RPC shape v1 does not use yet (server and bidi streaming) gets the same checks."""
    server = grpc.aio.server(interceptors=[EdgeGuard(None, TenantLimits(0.01, 0, 100))])

    async def watch(
        request: pb.GetStatsRequest, context: Any
    ) -> AsyncIterator[pb.GetStatsResponse]:
        for _ in range(2):
            yield pb.GetStatsResponse(tenant=request.tenant)

    async def chat(requests: Any, context: Any) -> AsyncIterator[pb.GetStatsResponse]:
        async for request in requests:
            yield pb.GetStatsResponse(tenant=request.tenant)

    codec = {
        "request_deserializer": pb.GetStatsRequest.FromString,
        "response_serializer": pb.GetStatsResponse.SerializeToString,
    }
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "banditd.v1.Router",
                {
                    "Select": grpc.unary_stream_rpc_method_handler(watch, **codec),
                    "Feedback": grpc.stream_stream_rpc_method_handler(chat, **codec),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            one = channel.unary_stream(
                "/banditd.v1.Router/Select",
                request_serializer=pb.GetStatsRequest.SerializeToString,
                response_deserializer=pb.GetStatsResponse.FromString,
            )
            many = channel.stream_stream(
                "/banditd.v1.Router/Feedback",
                request_serializer=pb.GetStatsRequest.SerializeToString,
                response_deserializer=pb.GetStatsResponse.FromString,
            )
            request = pb.GetStatsRequest(tenant="acme")
            got = [r.tenant async for r in one(request)]
            assert got == ["acme", "acme"]
            # The select rate (burst of 1) is spent: the next streamed request is refused.
            with pytest.raises(grpc.aio.AioRpcError) as err:
                _ = [r async for r in one(request)]
            assert err.value.code() == C.RESOURCE_EXHAUSTED
            got = [r.tenant async for r in many(iter([request, request]))]
            assert got == ["acme", "acme"]
    finally:
        await server.stop(0)


@pytest.mark.parametrize("rpc", ["StreamFeedback", "UploadFeedback"])
async def test_a_key_revoked_while_its_stream_is_open_ends_the_stream(
    sqlite_url: str, start_server: StartServer, rpc: str
) -> None:
    # The key was checked once, when the stream began: a stream held open (a service's
    # StreamFeedback, an hour of ingest) went on sending feedback with a revoked key.
    server, _ = await secured(start_server, sqlite_url)  # keys looked up on every call
    store = KeyStore(server.app.db)
    key, stored = await keys.create_key(store, "acme", ["select", "feedback"])
    decision = await server.router.Select(select("acme"), metadata=bearer(key))
    one = pb.FeedbackRequest(tenant="acme", decision_id=decision.decision_id, reward=1.0)
    message = one if rpc == "StreamFeedback" else pb.FeedbackBatch(tenant="acme", events=[one])
    looked_up = asyncio.Event()

    def on_statement(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if "api_keys" in statement:
            looked_up.set()

    async def messages() -> AsyncIterator[Any]:
        yield message
        await asyncio.wait_for(looked_up.wait(), 30)  # the stream was let in with the key
        await keys.revoke_key(store, stored.key_id)
        yield message

    engine = server.app.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", on_statement)
    try:
        code, details = await _code(getattr(server.router, rpc)(messages(), metadata=bearer(key)))
    finally:
        event.remove(engine, "before_cursor_execute", on_statement)
    assert code == C.UNAUTHENTICATED and "revoked" in details
