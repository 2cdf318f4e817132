"""The `banditd` command: serve, migrate."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from importlib import resources
from typing import Any

from google.protobuf import json_format

from banditd import codec
from banditd.config import Settings
from banditd.errors import BanditdError, NotFound
from banditd.logs import configure_logging
from banditd.server import App, serve
from banditd.store import migrate
from banditd.v1 import banditd_pb2 as pb

HOW_TO_CALL = """
banditd is serving {tenant}/{router} on {host}:{port} ({database}).

  grpcurl -plaintext -d '{{"tenant":"{tenant}","router":"{router}","prompt":"Write a haiku about routers"}}' \\
      {host}:{port} banditd.v1.Router/Select

  # Python (pip install grpcio; generated stubs in banditd.v1):
  import grpc
  from banditd.v1 import banditd_pb2 as pb, banditd_pb2_grpc as rpc
  router = rpc.RouterStub(grpc.insecure_channel("{host}:{port}"))
  d = router.Select(pb.SelectRequest(tenant="{tenant}", router="{router}", prompt="Summarise this memo"))
  router.Feedback(pb.FeedbackRequest(tenant="{tenant}", decision_id=d.decision_id, thumb=pb.THUMB_UP))
"""


def example_router() -> pb.RouterConfig:
    text = resources.files("banditd").joinpath("examples/router.json").read_text()
    return json_format.Parse(text, pb.RouterConfig())


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        key: value
        for key in ("listen", "database_url", "log_level")
        if (value := getattr(args, key, None)) is not None
    }
    return Settings(**overrides)


async def _seed_example(app: App) -> None:
    spec = codec.spec_from_proto(example_router())
    try:
        await app.catalog.get(spec.tenant, spec.name)
    except NotFound:
        await app.catalog.put(spec)
    host = app.settings.listen.rpartition(":")[0]
    print(
        HOW_TO_CALL.format(
            tenant=spec.tenant,
            router=spec.name,
            host=host,
            port=app.port,
            database=app.settings.database_url,
        ),
        file=sys.stderr,
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="banditd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p_serve = sub.add_parser("serve", help="run the gRPC server")
    p_serve.add_argument("--listen", help="HOST:PORT (env BANDITD_LISTEN)")
    p_serve.add_argument("--database-url", help="SQLAlchemy async URL (env BANDITD_DATABASE_URL)")
    p_serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p_serve.add_argument(
        "--example-router",
        action="store_true",
        help="create the example router demo/chat if absent and print how to call it",
    )

    p_migrate = sub.add_parser("migrate", help="upgrade the database schema (Alembic)")
    p_migrate.add_argument("--database-url", help="SQLAlchemy async URL (env BANDITD_DATABASE_URL)")
    p_migrate.add_argument("--revision", default="head")

    sub.add_parser("example-router", help="print the example router configuration as JSON")

    args = parser.parse_args(argv)
    try:
        settings = _settings(args)
    except ValueError as exc:
        print(f"banditd: invalid settings: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        if args.command == "serve":
            asyncio.run(serve(settings, _seed_example if args.example_router else None))
        elif args.command == "migrate":
            asyncio.run(migrate(settings.database_url, settings.migrations_dir, args.revision))
            print(f"migrated to {args.revision}", file=sys.stderr)
        elif args.command == "example-router":
            print(json.dumps(json_format.MessageToDict(example_router()), indent=2))
    except (BanditdError, OSError) as exc:
        print(f"banditd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
