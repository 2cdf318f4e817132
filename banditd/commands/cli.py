"""The `banditd` command: serve, gateway, migrate, warm-start, ingest, replay, evaluate, bench."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import grpc

from banditd import __version__, progress
from banditd.commands import bench, replay, reporting, routers_file
from banditd.commands import budgets as budgets_cli
from banditd.commands import evaluate as evaluate_cli
from banditd.commands import gateway as gateway_cli
from banditd.commands import routers as routers_cli
from banditd.commands import warm_start as warm_start_cli
from banditd.commands.argtypes import int_at_least
from banditd.commands.ingest import MAX_CHUNK, ingest
from banditd.commands.workers import run_workers
from banditd.config import MAX_MESSAGE_BYTES, Settings
from banditd.context import distill
from banditd.edge import codec, keys
from banditd.edge.lifecycle import serve
from banditd.edge.server import App
from banditd.edge.tls import ClientSecurity, TLSConfigError, add_client_arguments
from banditd.errors import BanditdError, NotFound
from banditd.logs import configure_logging
from banditd.store import Database, describe_database, migrate
from banditd.store.api_keys import KeyStore
from banditd.v1 import banditd_pb2 as pb

HOW_TO_CALL = """
banditd is serving {tenant}/{router} on {host}:{port} ({database}).

  grpcurl -plaintext -d '{{"tenant":"{tenant}","router":"{router}","prompt":"Write a haiku about routers"}}' \\
      {host}:{port} banditd.v1.Router/Select

  # Python (docs/client.md):
  from banditd.client import Client
  c = Client("{host}:{port}", tenant="{tenant}")
  d = c.select(router="{router}", prompt="Summarise this memo")
  c.feedback(decision_id=d.decision_id, thumb="up")
"""


def example_router() -> pb.RouterConfig:
    """demo/chat, from the example routers file (banditd/examples/routers.yaml)."""
    return codec.spec_to_proto(routers_file.example()[0])


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        key: value
        for key in ("listen", "database_url", "log_level", "metrics_listen")
        if (value := getattr(args, key, None)) is not None
    }
    return Settings(**overrides)


async def _seed_example(app: App) -> None:
    spec = routers_file.example()[0]
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
            database=describe_database(app.settings.database_url),
        ),
        file=sys.stderr,
        flush=True,
    )


def _add_keys_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p_keys = sub.add_parser(
        "keys",
        help="create, list and revoke API keys (in the database)",
        description="Keys are sent as gRPC metadata 'authorization: Bearer <key>'. Only a hash "
        "is stored: the key is printed once, by create.",
    )
    keys_sub = p_keys.add_subparsers(dest="keys_command", required=True)
    p_create = keys_sub.add_parser("create", help="create a key and print it (only this once)")
    p_create.add_argument("--tenant", required=True, help="the key's tenant ('*': every tenant)")
    p_create.add_argument(
        "--role",
        action="append",
        required=True,
        choices=keys.ROLES,
        help="select, feedback or admin; repeat for several",
    )
    p_create.add_argument("--name", default="", help="a label (who or what uses the key)")
    p_list = keys_sub.add_parser("list", help="list keys (never their secrets)")
    p_list.add_argument("--tenant", help="only this tenant's keys ('*': the keys for all tenants)")
    p_revoke = keys_sub.add_parser("revoke", help="revoke a key (kept, marked revoked)")
    p_revoke.add_argument("key_id", help="the key id (or the whole key)")
    for p in (p_create, p_list, p_revoke):
        p.add_argument("--database-url", help="SQLAlchemy async URL (env BANDITD_DATABASE_URL)")
        p.add_argument("--json", action="store_true", help="print JSON on stdout")


async def _keys(settings: Settings, args: argparse.Namespace) -> None:
    if settings.should_migrate:
        await migrate(settings.database_url, settings.migrations_dir)
    db = Database(settings.database_url)
    try:
        store = KeyStore(db)
        if args.keys_command == "create":
            secret, stored = await keys.create_key(store, args.tenant, args.role, args.name)
            shown = {**keys.describe(stored), "key": secret}
            if args.json:
                print(json.dumps(shown))
            else:
                print(secret)
                print(
                    f"key {stored.key_id} for tenant {stored.tenant!r}, roles "
                    f"{','.join(sorted(stored.roles))}: keep it now, it is not shown again",
                    file=sys.stderr,
                )
        elif args.keys_command == "list":
            listed = [keys.describe(k) for k in await keys.list_keys(store, args.tenant)]
            if args.json:
                print(json.dumps(listed))
            for k in [] if args.json else listed:
                state = "revoked" if k["revoked"] else "active"
                roles = ",".join(k["roles"])  # type: ignore[arg-type]
                name = str(k["name"])  # one made before names had to be printable: escaped
                name = name if name.isprintable() else name.encode("unicode_escape").decode()
                print(f"{k['key_id']}  {k['tenant']}  {roles}  {state}  {name}")
        else:
            stored, newly = await keys.revoke_key(store, args.key_id)
            if args.json:
                print(json.dumps({**keys.describe(stored), "already_revoked": not newly}))
            elif newly:
                print(f"revoked {stored.key_id}", file=sys.stderr)
            else:
                print(f"{stored.key_id} was already revoked", file=sys.stderr)
    finally:
        await db.close()


def main(argv: list[str] | None = None) -> int:
    try:
        return _command(argv)
    except BrokenPipeError:
        # Whoever read stdout stopped (`banditd replay --json | head`): nothing more to say, and
        # no traceback. stdout goes to /dev/null so that its flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE: what a shell reports for a command the pipe ended


def _command(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="banditd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p_serve = sub.add_parser("serve", help="run the gRPC server")
    p_serve.add_argument("--listen", help="HOST:PORT (env BANDITD_LISTEN)")
    p_serve.add_argument("--database-url", help="SQLAlchemy async URL (env BANDITD_DATABASE_URL)")
    p_serve.add_argument(
        "--metrics-listen", help="HOST:PORT of /metrics, empty: none (env BANDITD_METRICS_LISTEN)"
    )
    p_serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p_serve.add_argument(
        "--example-router",
        action="store_true",
        help="create the example router demo/chat if absent and print how to call it",
    )
    p_serve.add_argument(
        "--workers",
        type=int_at_least(1),
        default=1,
        help="server processes sharing the port, one core each (Postgres only; default 1)",
    )
    # Internal, set by `serve --workers` for its workers: drain when this pipe reads EOF.
    p_serve.add_argument("--parent-fd", type=int, help=argparse.SUPPRESS)

    p_migrate = sub.add_parser("migrate", help="upgrade the database schema (Alembic)")
    p_migrate.add_argument("--database-url", help="SQLAlchemy async URL (env BANDITD_DATABASE_URL)")
    p_migrate.add_argument("--revision", default="head")

    sub.add_parser(
        "example-router",
        help="print the example router configuration as JSON (examples/routers.yaml has it as YAML)",
    )

    warm_start_cli.add_parser(sub)

    p_ingest = sub.add_parser(
        "ingest",
        help="send thumbs/rewards from a JSONL or CSV file to a running server",
        description="Columns/keys: decision_id, tenant (or --tenant), thumb (up/down), reward or "
        "preference (arm/challenger/tie), optional cost_usd, input_tokens, output_tokens, "
        "latency_ms, energy_wh, error, idempotency_key. Resumable: the lines done are kept in a "
        "state file with their hash (a file that no longer starts with them is refused). Each line's event has an idempotency key (its own, else one made from its "
        "line number and content), so a line sent again is a duplicate, never a second signal "
        "(docs/api.md).",
    )
    p_ingest.add_argument("file", type=Path)
    p_ingest.add_argument("--target", default="127.0.0.1:50051", help="server HOST:PORT")
    p_ingest.add_argument("--tenant", help="tenant for lines without one")
    p_ingest.add_argument("--rejects", type=Path, help="default: FILE.rejects.jsonl")
    p_ingest.add_argument("--state", type=Path, help="default: FILE.ingest-state")
    p_ingest.add_argument(
        "--chunk",
        type=int_at_least(1, MAX_CHUNK),
        default=MAX_CHUNK,
        help="lines per committed upload, at most %(default)s (an upload lists 1,000 refusals)",
    )
    p_ingest.add_argument(
        "--max-message-bytes",
        type=int_at_least(1024),
        default=MAX_MESSAGE_BYTES,
        help="the server's BANDITD_MAX_MESSAGE_BYTES (default %(default)s): a chunk ends before "
        "its events would pass it, and a line over it alone is refused as too_large",
    )
    p_ingest.add_argument("--restart", action="store_true", help="ignore the state file")
    p_ingest.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    progress.add_quiet_flag(p_ingest)
    add_client_arguments(p_ingest)

    bench.add_parser(sub)
    replay.add_parser(sub)
    evaluate_cli.add_parser(sub)
    routers_cli.add_parser(sub)
    budgets_cli.add_parser(sub)
    _add_keys_parser(sub)
    distill.add_parser(sub)
    gateway_cli.add_parser(sub)

    args = parser.parse_args(argv)
    # Commands that read settings themselves, if at all: a bad BANDITD_* must not block them.
    if args.command in (
        "bench",
        "replay",
        "evaluate",
        "distill-encoder",
        "routers",
        "budgets",
        "gateway",
    ):
        return int(args.func(args))
    try:
        settings = _settings(args)
    except ValueError as exc:
        print(f"banditd: invalid settings: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, cache=args.command == "serve")
    try:
        if args.command == "serve" and args.workers > 1:
            return run_workers(settings, args.workers, args.example_router)
        if args.command == "serve":
            on_started = _seed_example if args.example_router else None
            asyncio.run(serve(settings, on_started, parent_fd=args.parent_fd))
        elif args.command == "migrate":
            asyncio.run(migrate(settings.database_url, settings.migrations_dir, args.revision))
            print(f"migrated to {args.revision}", file=sys.stderr)
        elif args.command == "example-router":
            print(json.dumps(routers_file.document(routers_file.example()[0]), indent=2))
        elif args.command == "ingest":
            with progress.shown(quiet=args.quiet):
                summary = ingest(
                    args.file,
                    args.target,
                    tenant=args.tenant,
                    state_path=args.state or args.file.with_name(args.file.name + ".ingest-state"),
                    rejects_path=args.rejects
                    or args.file.with_name(args.file.name + ".rejects.jsonl"),
                    chunk=args.chunk,
                    fresh=args.restart,
                    security=ClientSecurity.from_args(args),
                    max_message_bytes=args.max_message_bytes,
                ).as_dict()
            reporting.emit(args, summary, reporting.key_values(14))
        elif args.command == "keys":
            asyncio.run(_keys(settings, args))
        elif args.command == "warm-start":
            with progress.shown(quiet=args.quiet):
                summary = asyncio.run(warm_start_cli.warm_start(settings, args))
            reporting.emit(args, summary, reporting.key_values(18))
    except BrokenPipeError:
        raise  # main's to handle, for every command
    except (BanditdError, OSError, TLSConfigError) as exc:
        print(f"banditd: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:  # a client command (ingest) and the server said no
        print(f"banditd: server answered {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
