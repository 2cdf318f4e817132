"""TLS and mutual TLS on the gRPC listener: real handshakes with throwaway certificates."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from banditd.commands.ingest import ingest
from banditd.config import Settings
from banditd.edge import keys
from banditd.edge.server import build_app
from banditd.edge.tls import ClientSecurity, TLSConfigError, server_credentials
from banditd.store.api_keys import KeyStore
from banditd.v1.banditd_pb2 import PutRouterRequest, SelectRequest
from banditd.v1.banditd_pb2_grpc import AdminStub, RouterStub
from tests.helpers import SIGNING_KEY, StartServer, router_config


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA with a server certificate for 127.0.0.1 and a client certificate, and a second,
    unrelated CA with its own client certificate."""
    out = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    files = {
        "ca": ca.cert_pem,
        "other_ca": other_ca.cert_pem,
    }
    for name, issued in (
        ("server", ca.issue_cert("127.0.0.1", "localhost")),
        ("client", ca.issue_cert("client@acme.example")),
        ("rogue", other_ca.issue_cert("client@acme.example")),
    ):
        files[f"{name}_key"] = issued.private_key_pem
        files[f"{name}_chain"] = trustme.Blob(b"".join(b.bytes() for b in issued.cert_chain_pems))
    paths = {}
    for name, blob in files.items():
        blob.write_to_path(str(out / f"{name}.pem"))
        paths[name] = out / f"{name}.pem"
    return paths


async def _health(
    port: int, pki: dict[str, Path], ca: str, client: str | None = None
) -> grpc.StatusCode:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki[ca].read_bytes(),
        private_key=pki[f"{client}_key"].read_bytes() if client else None,
        certificate_chain=pki[f"{client}_chain"].read_bytes() if client else None,
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def _plaintext(port: int) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def test_tls(sqlite_url: str, start_server: StartServer, pki: dict[str, Path]) -> None:
    server = await start_server(
        sqlite_url, tls_cert_file=pki["server_chain"], tls_key_file=pki["server_key"]
    )
    port = server.app.port
    assert await _health(port, pki, "ca") == grpc.StatusCode.OK
    assert await _health(port, pki, "other_ca") == grpc.StatusCode.UNAVAILABLE  # wrong CA
    assert await _plaintext(port) == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls(sqlite_url: str, start_server: StartServer, pki: dict[str, Path]) -> None:
    server = await start_server(
        sqlite_url,
        tls_cert_file=pki["server_chain"],
        tls_key_file=pki["server_key"],
        tls_client_ca_file=pki["ca"],
    )
    port = server.app.port
    assert await _health(port, pki, "ca", client="client") == grpc.StatusCode.OK
    assert await _health(port, pki, "ca") == grpc.StatusCode.UNAVAILABLE  # no client cert
    # A client certificate from another CA, and a server the client does not trust.
    assert await _health(port, pki, "ca", client="rogue") == grpc.StatusCode.UNAVAILABLE
    assert await _health(port, pki, "other_ca", client="client") == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"listen": "0.0.0.0:0"}, "refusing to serve plaintext on 0.0.0.0:0"),
        ({"listen": "10.0.0.1:0", "allow_plaintext": False}, "refusing to serve plaintext"),
        ({"listen": "127.0.0.1:0", "allow_plaintext": False}, "refusing to serve plaintext"),
        ({"tls_cert_file": "cert.pem"}, "set both"),
        ({"tls_client_ca_file": "ca.pem"}, "needs BANDITD_TLS_CERT_FILE"),
        ({"tls_cert_file": "missing.pem", "tls_key_file": "missing.pem"}, "cannot read TLS key"),
    ],
)
def test_unsafe_or_broken_listener_settings_refuse_to_start(
    fields: dict[str, str | bool], message: str
) -> None:
    with pytest.raises(TLSConfigError, match=message):
        server_credentials(Settings(**fields))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cert", "key", "ca", "message"),
    [
        ("server_key", "server_chain", None, "BANDITD_TLS_CERT_FILE .* holds no PEM certificate"),
        ("server_chain", "ca", None, "BANDITD_TLS_KEY_FILE .* holds no usable PEM private key"),
        ("server_chain", "encrypted_key", None, "no usable PEM private key .*encrypted"),
        ("server_chain", "client_key", None, "not the private key of the certificate"),
        ("server_chain", "server_key", "server_key", "BANDITD_TLS_CLIENT_CA_FILE .* holds no"),
    ],
)
def test_files_grpc_cannot_use_are_named_before_anything_starts(
    pki: dict[str, Path], tmp_path: Path, cert: str, key: str, ca: str | None, message: str
) -> None:
    # grpc took such files and then failed to bind: `banditd serve` said only "cannot listen on
    # ...", after migrating the database.
    server_key = serialization.load_pem_private_key(pki["server_key"].read_bytes(), None)
    encrypted = server_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    files = {**pki, "encrypted_key": tmp_path / "encrypted.pem"}
    files["encrypted_key"].write_bytes(encrypted)
    settings = Settings(
        tls_cert_file=files[cert],
        tls_key_file=files[key],
        tls_client_ca_file=files[ca] if ca else None,
    )
    with pytest.raises(TLSConfigError, match=message):
        server_credentials(settings)


@pytest.mark.parametrize(
    ("ca", "cert", "key", "message"),
    [
        ("client_key", None, None, "CA .* holds no PEM certificate"),
        ("ca", "client_key", "client_chain", "client certificate .* holds no PEM certificate"),
        ("ca", "client_chain", "server_key", "not the private key of the certificate"),
    ],
)
def test_client_files_grpc_cannot_use_are_refused_when_the_client_is_made(
    pki: dict[str, Path], ca: str, cert: str | None, key: str | None, message: str
) -> None:
    # grpc took them: every call was UNAVAILABLE 'Failed to create security handshaker' (and
    # retried), a gateway answered each request 503.
    security = ClientSecurity(None, pki[ca], pki[cert] if cert else None, pki[key] if key else None)
    with pytest.raises(TLSConfigError, match=message):
        security.credentials()


def test_plaintext_defaults() -> None:
    assert server_credentials(Settings(listen="127.0.0.1:0")) is None
    assert server_credentials(Settings(listen="0.0.0.0:0", allow_plaintext=True)) is None


@pytest.mark.parametrize("value", ["127.0.0.1:99999", "127.0.0.1:metrics", "127.0.0.1"])
def test_a_bad_metrics_address_is_refused_like_the_other_listeners(value: str) -> None:
    # Unchecked, it ended `banditd serve` in a traceback (int(), getaddrinfo or bind).
    with pytest.raises(ValidationError, match="metrics_listen must be HOST:PORT"):
        Settings(metrics_listen=value)
    assert Settings(metrics_listen="").metrics_listen == ""  # empty: no /metrics endpoint


async def test_build_app_refuses_before_touching_the_database(tmp_path: Path) -> None:
    db = tmp_path / "never.db"
    settings = Settings(
        listen="0.0.0.0:0", database_url=f"sqlite+aiosqlite:///{db}", signing_key=SIGNING_KEY
    )
    with pytest.raises(TLSConfigError):
        await build_app(settings)
    assert not db.exists()


def test_serve_says_why_it_will_not_start(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "banditd.commands.cli", "serve", "--listen", "0.0.0.0:0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert "refusing to serve plaintext on 0.0.0.0:0" in done.stderr
    assert "BANDITD_TLS_CERT_FILE" in done.stderr


async def test_plaintext_health_port_serves_health_only(
    sqlite_url: str, start_server: StartServer, pki: dict[str, Path]
) -> None:
    server = await start_server(
        sqlite_url,
        tls_cert_file=pki["server_chain"],
        tls_key_file=pki["server_key"],
        health_listen="127.0.0.1:0",
    )
    assert server.app.health_port and server.app.health_port != server.app.port
    assert await _plaintext(server.app.health_port) == grpc.StatusCode.OK
    assert await _plaintext(server.app.port) == grpc.StatusCode.UNAVAILABLE
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.app.health_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await RouterStub(channel).Select(SelectRequest(tenant="acme", router="chat"))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_ingest_over_mutual_tls_with_an_api_key(
    sqlite_url: str, start_server: StartServer, pki: dict[str, Path], tmp_path: Path
) -> None:
    server = await start_server(
        sqlite_url,
        tls_cert_file=pki["server_chain"],
        tls_key_file=pki["server_key"],
        tls_client_ca_file=pki["ca"],
        auth="required",
    )
    key, _ = await keys.create_key(KeyStore(server.app.db), "acme", ["select", "feedback"])
    root, _ = await keys.create_key(KeyStore(server.app.db), "*", ["admin"])
    security = ClientSecurity(key, pki["ca"], pki["client_chain"], pki["client_key"])
    target = f"localhost:{server.app.port}"

    async with grpc.aio.secure_channel(
        target,
        grpc.ssl_channel_credentials(
            pki["ca"].read_bytes(), pki["client_key"].read_bytes(), pki["client_chain"].read_bytes()
        ),
    ) as channel:
        admin = AdminStub(channel)
        await admin.PutRouter(
            PutRouterRequest(router=router_config()),
            metadata=(("authorization", f"Bearer {root}"),),
        )
        d = await RouterStub(channel).Select(
            SelectRequest(tenant="acme", router="chat", prompt="hello"), metadata=security.metadata
        )
    data = tmp_path / "thumbs.jsonl"
    data.write_text(json.dumps({"decision_id": d.decision_id, "thumb": "up"}) + "\n")

    def run(security: ClientSecurity) -> dict[str, object]:
        return ingest(
            data,
            target,
            tenant="acme",
            state_path=tmp_path / "state",
            rejects_path=tmp_path / "rejects",
            chunk=10,
            fresh=True,
            security=security,
        ).as_dict()

    without_key = ClientSecurity(None, pki["ca"], pki["client_chain"], pki["client_key"])
    with pytest.raises(grpc.RpcError) as err:
        await asyncio.to_thread(run, without_key)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert (await asyncio.to_thread(run, security))["accepted"] == 1
