"""`banditd gateway`: serve the OpenAI-compatible gateway (docs/gateway.md)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from banditd.commands.argtypes import int_at_least
from banditd.config import Settings
from banditd.edge.tls import ClientSecurity, TLSConfigError, add_client_arguments
from banditd.logs import configure_logging

FLAGS = {  # flag dest -> Settings field
    "listen": "gateway_listen",
    "target": "gateway_target",
    "max_fallbacks": "gateway_max_fallbacks",
    "upstream_timeout": "gateway_upstream_timeout_s",
    "log_level": "log_level",
}


def run(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {
        field: value for dest, field in FLAGS.items() if (value := getattr(args, dest)) is not None
    }
    try:
        settings = Settings(**overrides)
        security = ClientSecurity.from_args(args)
        security.credentials()  # unreadable TLS files: fail now, not at the first request
    except (ValueError, OSError, TLSConfigError) as exc:
        print(f"banditd gateway: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    from banditd.gateway.app import serve  # starlette and uvicorn only for this command

    try:
        asyncio.run(serve(settings, security))
    except KeyboardInterrupt:
        return 130
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `gateway` to a command's subparsers; the parsed args carry func=run."""
    p = subparsers.add_parser(
        "gateway",
        help="serve the OpenAI-compatible HTTP gateway (a client of a banditd server)",
        description=__doc__,
    )
    p.add_argument("--listen", help="HOST:PORT to serve HTTP on (env BANDITD_GATEWAY_LISTEN)")
    p.add_argument("--target", help="banditd gRPC HOST:PORT (env BANDITD_GATEWAY_TARGET)")
    p.add_argument(
        "--max-fallbacks",
        type=int_at_least(0),
        help="arms tried after the chosen one fails (env BANDITD_GATEWAY_MAX_FALLBACKS; 2)",
    )
    p.add_argument(
        "--upstream-timeout",
        type=float,
        help="seconds each step of an upstream attempt may take: connecting, sending, waiting "
        "for a pooled connection, and each wait for the answer's next bytes (not the whole "
        "answer: a stream lasts as long as its chunks keep coming) "
        "(env BANDITD_GATEWAY_UPSTREAM_TIMEOUT_S; 60)",
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    add_client_arguments(p)
    p.set_defaults(func=run)
