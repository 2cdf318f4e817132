"""An arm's upstream (issue 22, banditd/domain/upstreams.py): checked when the router is put."""

from __future__ import annotations

import grpc
import pytest

from banditd.v1 import banditd_pb2 as pb
from tests.helpers import StartServer


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("upstream_base_url", "ftp://models.example.com"),
        ("upstream_base_url", "https://api.example.com/v1 extra"),
        ("upstream_model", "a model"),
        ("upstream_api_key_env", "sk-live-1234"),  # a key pasted where its variable's name goes
    ],
)
async def test_a_bad_upstream_is_refused_when_the_router_is_put(
    sqlite_url: str, start_server: StartServer, field: str, value: str
) -> None:
    server = await start_server(sqlite_url)
    arm = pb.Arm(name="a", input_price_per_mtok=1, output_price_per_mtok=1, **{field: value})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.admin.PutRouter(
            pb.PutRouterRequest(router=pb.RouterConfig(tenant="acme", name="chat", arms=[arm]))
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in str(err.value.details())
    assert value not in str(err.value.details())  # a pasted key is not echoed back
