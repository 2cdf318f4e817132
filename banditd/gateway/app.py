"""The gateway's ASGI app (starlette) and its process (uvicorn, started, drained and stopped by
banditd.edge.lifecycle as `banditd serve` is)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from asyncio import Task
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager

import httpx
import structlog
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from banditd.client import AsyncClient
from banditd.config import Settings
from banditd.edge import lifecycle
from banditd.edge.tls import ClientSecurity
from banditd.gateway import metrics
from banditd.gateway.chat import Gateway, chat_completions
from banditd.gateway.http_errors import unauthenticated
from banditd.gateway.jsonapi import feedback_json, select_json
from banditd.gateway.routing import NotBearer

log = structlog.get_logger(__name__)
NO_SECURITY = ClientSecurity()
Endpoint = Callable[[Gateway, Request], Awaitable[Response]]


def create_app(settings: Settings, security: ClientSecurity = NO_SECURITY) -> Starlette:
    """The gateway as an ASGI app; banditd's client and the upstreams' HTTP client open with
    the app's lifespan and close with it (after the usage reports still in flight)."""
    state: dict[str, Gateway] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = AsyncClient(
            settings.gateway_target,
            tls_ca=security.ca_file,
            tls_cert=security.cert_file,
            tls_key=security.key_file,
        )
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
        async with httpx.AsyncClient(limits=limits) as http:
            gw = Gateway(
                client,
                http,
                settings.gateway_max_fallbacks,
                settings.gateway_upstream_timeout_s,
                settings.gateway_max_answer_bytes,
                security.api_key,
                frozenset(
                    filter(None, map(str.strip, settings.gateway_upstream_key_envs.split(",")))
                ),
            )
            state["gw"] = app.state.gateway = gw
            try:
                yield
            finally:
                await gw.drain()
                await client.close()

    def endpoint(name: str, handler: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            try:
                response = await handler(state["gw"], request)
            except NotBearer as exc:
                response = unauthenticated(str(exc))
            metrics.REQUESTS.labels(name, str(response.status_code)).inc()
            return response

        return run

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def prometheus(_: Request) -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route(
            "/v1/chat/completions",
            endpoint("chat_completions", chat_completions),
            methods=["POST"],
        ),
        Route("/v1/select", endpoint("select", select_json), methods=["POST"]),
        Route("/v1/feedback", endpoint("feedback", feedback_json), methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


class Server(uvicorn.Server):
    """uvicorn's server, its signals left to banditd.edge.lifecycle (uvicorn's own handlers
    raised a SIGTERM again once drained: the process died of it, 143, as of one while it
    started), and ``listening`` set once it listens."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)  # it exits the process when it cannot start
        self.listening.set()


def server(settings: Settings, security: ClientSecurity = NO_SECURITY) -> Server:
    """A uvicorn server for the gateway (not started); port 0 picks a free port."""
    host, _, port = settings.gateway_listen.rpartition(":")
    config = uvicorn.Config(
        create_app(settings, security),
        host=host.strip("[]"),
        port=int(port),
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(settings.grace_seconds),
    )
    return Server(config)


async def serve(settings: Settings, security: ClientSecurity = NO_SECURITY) -> None:
    """Serve until SIGINT/SIGTERM, then drain: the calls in flight finish (up to
    grace_seconds) and their reports are sent; a stop while starting ends the start-up."""
    await lifecycle.run(
        _start(settings, security),
        stop=_stop,
        cut=_cut,
        grace_seconds=settings.grace_seconds,
    )


async def _start(settings: Settings, security: ClientSecurity) -> tuple[Server, Task[None]]:
    """The server and the task serving it, once it listens; cancelled, it is stopped again."""
    log.info("gateway_start", listen=settings.gateway_listen, target=settings.gateway_target)
    srv = server(settings, security)
    serving = asyncio.create_task(srv.serve(), name="gateway")
    listening = asyncio.create_task(srv.listening.wait())
    try:
        await asyncio.wait((listening, serving), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        await _stop((srv, serving))
        raise
    finally:
        listening.cancel()
    if serving.done():  # it ended before it listened
        serving.result()
    host, port = srv.servers[0].sockets[0].getsockname()[:2]  # port 0: the one bound
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    log.info("gateway_serving", listen=listen, port=port)
    return srv, serving


async def _stop(running: tuple[Server, Task[None]]) -> None:
    srv, serving = running
    srv.should_exit = True
    await serving


async def _cut(running: tuple[Server, Task[None]]) -> None:
    running[0].force_exit = True  # no waiting for calls in flight
