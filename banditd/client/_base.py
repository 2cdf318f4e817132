"""What Client and AsyncClient share: their settings, built once by one constructor."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from banditd.client._retry import Deadline, RetryPolicy
from banditd.edge.tls import ClientSecurity

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_CHUNK = 1000  # events per UploadFeedback call (and commit), as `banditd ingest`


def _path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)


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
        retry: backoff for UNAVAILABLE (``NO_RETRY``: none).
        options: gRPC channel arguments, e.g. ``(("grpc.keepalive_time_ms", 30000),)``.
        """
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive or None, got {timeout}")
        self.target = target
        self.tenant = tenant
        self.timeout = timeout
        self.retry = retry
        security = ClientSecurity(api_key, _path(tls_ca), _path(tls_cert), _path(tls_key))
        self._metadata = security.metadata
        self._credentials = security.credentials()  # reads the files now: fail here, not later
        self._options = tuple(options)
        self._open()

    def _open(self) -> None:
        """Make the channel (now, or on first use)."""
        raise NotImplementedError

    def _metadata_for(self, api_key: str | None) -> tuple[tuple[str, str], ...]:
        """A call's metadata: its own API key (a gateway forwarding its caller's), or the
        client's."""
        return self._metadata if api_key is None else ClientSecurity(api_key).metadata

    def _deadline(self, timeout: float | None) -> Deadline:
        return Deadline(self.timeout if timeout is None else timeout)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r}, tenant={self.tenant!r})"
