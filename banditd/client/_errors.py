"""gRPC errors -> the banditd exception tree (banditd.errors), translated here only; and the
one error of the client's own, ClientClosed."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import grpc

from banditd.errors import BanditdError, from_status


class ClientClosed(BanditdError, code="CANCELLED"):
    """A call on a client after its close(): refused before anything is sent (gRPC would raise
    an error of its own); or a call in flight that close() cancelled. Not in the server's tree:
    a CANCELLED from the wire stays the base class, as a server may cancel a call of a client
    that is open."""


@runtime_checkable
class _Status(Protocol):
    """What a failed call's error offers: grpc.aio.AioRpcError, and the sync channel's error
    (a grpc.Call), though grpc.RpcError itself promises neither."""

    def code(self) -> grpc.StatusCode: ...

    def details(self) -> str | None: ...


def map_rpc_error(exc: grpc.RpcError) -> BanditdError:
    """The banditd error for a failed call: the class of its status code, the server's message
    (or gRPC's, where the call never reached a server)."""
    if not isinstance(exc, _Status):
        return from_status("UNKNOWN", repr(exc))
    code = exc.code()
    return from_status(code.name, exc.details() or code.name.lower().replace("_", " "))
