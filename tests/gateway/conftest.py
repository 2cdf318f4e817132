"""The gateway's fixture: `launch` starts a Stack (tests.gateway.stack)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import pytest

from banditd.config import Settings
from banditd.edge import keys
from banditd.edge.tls import ClientSecurity
from banditd.gateway.app import create_app
from banditd.v1 import banditd_pb2 as pb
from tests.gateway.fakes import FakeUpstream, Served, uvicorn_server
from tests.gateway.stack import ALPHA_PRICES, BETA_PRICES, Launch, Stack, new_key
from tests.helpers import StartServer


@pytest.fixture
async def launch(
    sqlite_url: str, start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Launch]:
    served: list[Served] = []
    monkeypatch.setenv("FAKE_ALPHA_KEY", "sk-alpha")

    async def start(
        upstream_timeout_s: float = 10.0,
        target: Callable[[str], Awaitable[str]] | None = None,
        gateway_settings: Mapping[str, Any] | None = None,
        gateway_key_roles: tuple[str, ...] = (),
        **server_settings: Any,
    ) -> Stack:
        """``target``: the gateway's banditd target from banditd's address (e.g. a proxy's);
        ``gateway_settings``: the gateway's other Settings (``server_settings``: banditd's);
        ``gateway_key_roles``: the gateway's own key (--api-key), an acme key with these roles."""
        alpha, beta = FakeUpstream("alpha"), FakeUpstream("beta")
        upstreams.extend((alpha, beta))
        for upstream in (alpha, beta):
            s = Served(uvicorn_server(upstream.app()))
            upstream.port = await s.start()
            served.append(s)
        running = await start_server(sqlite_url, **server_settings)
        config = pb.RouterConfig(
            tenant="acme",
            name="chat",
            embedding_dim=8,
            arms=[
                pb.Arm(
                    name="alpha",
                    input_price_per_mtok=ALPHA_PRICES[0],
                    output_price_per_mtok=ALPHA_PRICES[1],
                    upstream_base_url=alpha.base_url,
                    upstream_model="alpha-model-v1",
                    upstream_api_key_env="FAKE_ALPHA_KEY",
                ),
                pb.Arm(
                    name="beta",
                    input_price_per_mtok=BETA_PRICES[0],
                    output_price_per_mtok=BETA_PRICES[1],
                    upstream_base_url=beta.base_url,
                ),
            ],
        )
        root: tuple[tuple[str, str], ...] = ()
        if server_settings.get("auth") == "required":
            root = (
                ("authorization", f"Bearer {await new_key(running, keys.ALL_TENANTS, 'admin')}"),
            )
        await running.admin.PutRouter(pb.PutRouterRequest(router=config), metadata=root)
        settings = Settings(
            gateway_listen="127.0.0.1:0",
            gateway_target=running.address if target is None else await target(running.address),
            gateway_upstream_timeout_s=upstream_timeout_s,
            **(gateway_settings or {}),
        )
        own_key = await new_key(running, "acme", *gateway_key_roles) if gateway_key_roles else None
        app = create_app(settings, ClientSecurity(api_key=own_key))
        gateway = Served(uvicorn_server(app))
        port = await gateway.start()
        served.insert(0, gateway)  # stopped first: it drains its reports into banditd
        stack = Stack(running, alpha, beta, port, app.state.gateway, gateway, [], root)
        stacks.append(stack)
        return stack

    stacks: list[Stack] = []
    upstreams: list[FakeUpstream] = []
    yield start
    for upstream in upstreams:
        upstream.release.set()
    for stack in stacks:
        for client in stack.clients:
            await client.close()
    for s in served:
        await s.stop()
