"""What Client and AsyncClient share: their settings, built once by one constructor, and how a
call's attempts are set up (``_attempts``); each client only does the I/O."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
from tenacity import AsyncRetrying, Retrying

from banditd.client._calls import Attempts, Call
from banditd.client._errors import ClientClosed, map_rpc_error
from banditd.client._results import UploadSummary
from banditd.client._retry import Deadline, RetryPolicy, tenacity_args
from banditd.edge.tls import ClientSecurity, channel_options
from banditd.errors import InvalidArgument

T = TypeVar("T")

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 10.0


def _path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)


def _api_key(key: str | None) -> str | None:
    """``key``, if a str (or None): bytes would be sent as "Bearer b'...'" (TypeError, as for
    other arguments; the key itself is never echoed)."""
    if key is not None and not isinstance(key, str):
        raise TypeError(f"api_key must be a str, got {type(key).__name__}")
    return key


def _sendable(metadata: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """``metadata``, if gRPC can send it: the API key goes as a header, printable ASCII. Else
    InvalidArgument from both clients alike (gRPC fails a sync call as INTERNAL, and an async one
    with an error of its own, not even a grpc.RpcError)."""
    if any(not " " <= c <= "~" for _, value in metadata for c in value):
        raise InvalidArgument(
            "api_key", "must be printable ASCII (sent as a gRPC header): a trailing newline?"
        )
    return metadata


def stopped_upload(error: Exception, uploaded: UploadSummary) -> None:
    """Give the error that stopped upload_feedback the summary of the calls committed before it
    (a BanditdError declares ``uploaded``; any other error gets it too, where it can)."""
    with contextlib.suppress(AttributeError):  # an error class with __slots__ only
        setattr(error, "uploaded", uploaded)  # noqa: B010 - not every error declares it


class ClientBase:
    """Settings shared by Client and AsyncClient (their constructor)."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        tenant: str | None = None,
        api_key: str | None = None,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, shared safely
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """Connect to a banditd server (lazily: the first call connects).

        target: ``host:port`` of a banditd server, or any gRPC target (``dns:///banditd:50051``).
        tenant: the tenant of calls that name none.
        api_key: sent as ``authorization: Bearer <key>`` (see ``banditd keys create``).
        tls_ca: CA of the server's certificate, to use TLS; tls_cert and tls_key: this client's
            certificate and key, for mutual TLS. The files are read here.
        timeout: seconds a call may take, retries included (None: no deadline); a call's
            ``timeout=`` overrides it.
        retry: backoff for UNAVAILABLE and ABORTED (``NO_RETRY``: none).
        options: gRPC channel arguments, e.g. ``(("grpc.keepalive_time_ms", 30000),)``; the
            channel's reconnect backoff follows ``retry`` unless they set it.
        """
        if timeout is not None and not 0 < timeout < math.inf:
            raise ValueError(f"timeout must be positive and finite, or None, got {timeout}")
        self.target = target
        self.tenant = tenant
        self.timeout = timeout
        self.retry = retry
        security = ClientSecurity(_api_key(api_key), _path(tls_ca), _path(tls_cert), _path(tls_key))
        self._metadata = security.metadata
        self._credentials = security.credentials()  # reads the files now: fail here, not later
        self._options = channel_options(retry.initial_backoff_s, retry.max_backoff_s, options)
        self._closed = False  # set by close(): every later call raises ClientClosed
        self._open()

    def _open(self) -> None:
        """Make the channel (now, or on first use)."""
        raise NotImplementedError

    def _router(self) -> Any:
        """The Router stub on the client's channel (made on first use by AsyncClient)."""
        raise NotImplementedError

    def _attempts(
        self, call: Call[T], retrying: type[Retrying] | type[AsyncRetrying]
    ) -> Attempts[T]:
        """The attempts of ``call``, within its deadline, with its API key (or the client's),
        each with the time that is left; each refused once the client is closed (a close()
        during a retry's backoff included)."""
        if call.timeout is not None and not 0 < call.timeout < math.inf:
            # As the constructor: gRPC would race such a deadline (NaN, inf and <= 0 pass at
            # once), failing it as DEADLINE_EXCEEDED or not; no deadline is None.
            raise ValueError(
                f"timeout must be positive and finite, or None (the client's), got {call.timeout}"
            )
        deadline = Deadline(self.timeout if call.timeout is None else call.timeout)
        own = _api_key(call.api_key)
        key = self._metadata if own is None else ClientSecurity(own).metadata
        metadata = _sendable(key)

        def invoke() -> Any:
            if self._closed:
                raise ClientClosed(f"{self!r} is closed: make a new client to call banditd")
            method = getattr(self._router(), call.method)
            return method(call.payload(), timeout=deadline.remaining(), metadata=metadata)

        return Attempts(
            call,
            retrying(**tenacity_args(self.retry, call.method, call.retry_safe, deadline)),
            invoke,
        )

    def _failed(self, attempts: Attempts[T], exc: grpc.RpcError) -> T:
        """The banditd error for the last attempt's ``exc``: ClientClosed where close() cancelled
        the call in flight."""
        if self._closed and map_rpc_error(exc).code == "CANCELLED":
            raise self._closed_during_call() from exc
        return attempts.failed(exc)

    def _closed_during_call(self) -> ClientClosed:
        return ClientClosed(
            f"{self!r} was closed during the call, which the server may have done (as after a "
            "DeadlineExceeded): make a new client to call banditd"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r}, tenant={self.tenant!r})"
