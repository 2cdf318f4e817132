"""Transport security: the server's credentials from settings, or a clear refusal to start;
and a client's channel (its credentials, and a reconnect backoff that lets retries through).

Plaintext is served only where it was asked for (``allow_plaintext``) or on a loopback address
(the embedded default); anything else needs a certificate and key, and a client CA turns on
mutual TLS (a client without a certificate that CA signed fails the handshake).
"""

from __future__ import annotations

import argparse
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:  # the client (banditd.client) uses this module without the server's settings
    from banditd.config import Settings


MIN_RECONNECT_MS = 100  # a channel's quickest reconnect, whatever is asked


class TLSConfigError(ValueError):
    """The settings cannot give a safe listener; the message says what to set."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"cannot read {what} {str(path)!r}: {exc.strerror}") from None


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials for the listener, or None for plaintext (only where allowed)."""
    cert, key, ca = settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    if cert is None and key is None:
        if ca is not None:
            raise TLSConfigError(
                "BANDITD_TLS_CLIENT_CA_FILE needs BANDITD_TLS_CERT_FILE and BANDITD_TLS_KEY_FILE"
            )
        if not settings.plaintext_allowed:
            raise TLSConfigError(
                f"refusing to serve plaintext on {settings.listen} (not a loopback address): set "
                "BANDITD_TLS_CERT_FILE and BANDITD_TLS_KEY_FILE, or BANDITD_ALLOW_PLAINTEXT=true "
                "where TLS ends in front of banditd (a mesh sidecar)"
            )
        return None
    if cert is None or key is None:
        raise TLSConfigError("set both BANDITD_TLS_CERT_FILE and BANDITD_TLS_KEY_FILE")
    pair = (_read(key, "TLS key"), _read(cert, "TLS certificate"))
    _check_pem(cert, key, ca, SERVER_FILES)
    if ca is None:
        return grpc.ssl_server_credentials([pair])
    return grpc.ssl_server_credentials(
        [pair], root_certificates=_read(ca, "client CA"), require_client_auth=True
    )


def channel_options(
    initial_backoff_s: float, max_backoff_s: float, options: Sequence[tuple[str, Any]] = ()
) -> tuple[tuple[str, Any], ...]:
    """``options``, with the channel's reconnect backoff (``initial_backoff_s``, growing to
    ``max_backoff_s``; at least 100 ms) unless they set it. gRPC's own (1 s, growing to 120 s)
    fails every call at once with UNAVAILABLE while it waits, so retries (the client's, a
    command's ``--wait``) would not reach a server that is back."""
    given = {name for name, _ in options}
    backoff = {
        "grpc.initial_reconnect_backoff_ms": initial_backoff_s,
        "grpc.max_reconnect_backoff_ms": max_backoff_s,
    }
    return tuple(options) + tuple(
        (name, max(MIN_RECONNECT_MS, round(seconds * 1000)))
        for name, seconds in backoff.items()
        if name not in given
    )


SERVER_FILES = ("BANDITD_TLS_CERT_FILE", "BANDITD_TLS_KEY_FILE", "BANDITD_TLS_CLIENT_CA_FILE")
CLIENT_FILES = ("client certificate", "client key", "CA")


def _check_pem(
    cert: Path | None, key: Path | None, ca: Path | None, names: tuple[str, str, str]
) -> None:
    """Refuse files grpc takes and then cannot use (a server: "Failed to bind"; a client: every
    call UNAVAILABLE): no certificate, no unencrypted key, a key of another certificate, a CA
    file without certificates. ``names``: what to call the cert, key and CA files. Security
    level 0: weak keys and digests that grpc accepts are not refused here."""
    cert_name, key_name, ca_name = names
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    for path, name in ((cert, cert_name), (ca, ca_name)):
        try:
            if path is not None:
                context.load_verify_locations(cafile=path)
        except ssl.SSLError:
            raise TLSConfigError(f"{name} {str(path)!r} holds no PEM certificate") from None
    if cert is None or key is None:
        return
    try:
        context.load_cert_chain(cert, key, password=lambda: b"")  # encrypted: refused, no prompt
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TLSConfigError(
                f"{key_name} {str(key)!r} is not the private key of the certificate in "
                f"{cert_name} {str(cert)!r}"
            ) from None
        raise TLSConfigError(
            f"{key_name} {str(key)!r} holds no usable PEM private key (it must not be encrypted)"
        ) from None


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of a command that calls a running server: its API key and TLS files
    (ClientSecurity.from_args reads them)."""
    parser.add_argument(
        "--api-key", default=os.environ.get("BANDITD_API_KEY"), help="env BANDITD_API_KEY"
    )
    parser.add_argument("--tls-ca", type=Path, help="CA of the server's certificate (TLS)")
    parser.add_argument("--tls-cert", type=Path, help="client certificate (mutual TLS)")
    parser.add_argument("--tls-key", type=Path, help="client key (mutual TLS)")


@dataclass(frozen=True)
class ClientSecurity:
    """How a banditd client (``banditd ingest``, ``replay --server``, ``routers``,
    banditd.client) reaches a secured server."""

    api_key: str | None = None
    ca_file: Path | None = None  # TLS: the CA that signed the server's certificate
    cert_file: Path | None = None  # mTLS: this client's certificate and key
    key_file: Path | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ClientSecurity:
        """From the flags add_client_arguments adds."""
        return cls(args.api_key, args.tls_ca, args.tls_cert, args.tls_key)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials from the files (read now), or None for plaintext."""
        if (self.cert_file is None) != (self.key_file is None):
            raise TLSConfigError("a client certificate needs its key, and a key its certificate")
        if self.ca_file is None and self.cert_file is None:
            return None
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "CA") if self.ca_file else None,
            private_key=_read(self.key_file, "client key") if self.key_file else None,
            certificate_chain=_read(self.cert_file, "client certificate")
            if self.cert_file
            else None,
        )
        _check_pem(self.cert_file, self.key_file, self.ca_file, CLIENT_FILES)
        return credentials

    def channel(self, target: str) -> grpc.Channel:
        """A blocking channel to ``target`` (a command's), reconnecting 0.1 s after a failed
        connection, at most 1 s: a command's retries try again every second at most."""
        credentials, options = self.credentials(), channel_options(0.1, 1.0)
        if credentials is None:
            return grpc.insecure_channel(target, options)
        return grpc.secure_channel(target, credentials, options)
