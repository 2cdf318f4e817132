"""The Admin service from the command line: what `banditd routers` and `banditd budgets` share.

The server address (--target), the API key and TLS flags of `banditd ingest`, a retry of an
unavailable server for --wait seconds, and the server's refusals printed as its status and
message (exit status 1).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.protobuf.message import Message

from banditd.commands.argtypes import positive_float
from banditd.edge.tls import ClientSecurity, TLSConfigError, add_client_arguments
from banditd.v1 import banditd_pb2_grpc as rpc

DEFAULT_TARGET = "127.0.0.1:50051"
CALL_TIMEOUT_S = 30.0  # each call's deadline, but a delete's: see delete_each


class AdminClient:
    """Admin calls with the command's credentials. Until ``wait_s`` after the first call, an
    UNAVAILABLE answer (server not up yet, or its database briefly gone) is retried."""

    def __init__(self, channel: grpc.Channel, security: ClientSecurity, wait_s: float) -> None:
        self._stub = rpc.AdminStub(channel)
        self._metadata = security.metadata
        self._wait_s = wait_s
        self._deadline: float | None = None

    def call(self, method: str, request: Message) -> Any:
        return self._call(method, request, CALL_TIMEOUT_S)[0]

    def delete(self, method: str, request: Message, timeout_s: float = CALL_TIMEOUT_S) -> bool:
        """A delete RPC's ``deleted``, each try given ``timeout_s``. A try whose answer was lost
        (UNAVAILABLE: the server may have deleted it before the connection went) and whose retry
        finds nothing to delete counts as deleted: what was named is gone either way."""
        reply, retried = self._call(method, request, timeout_s)
        return bool(reply.deleted or retried)

    def _call(self, method: str, request: Message, timeout_s: float) -> tuple[Any, bool]:
        """The reply, and whether an UNAVAILABLE try came before it."""
        rpc_method: Callable[..., Any] = getattr(self._stub, method)
        if self._deadline is None:
            self._deadline = time.monotonic() + self._wait_s
        retried = False
        while True:
            try:
                reply = rpc_method(request, timeout=timeout_s, metadata=self._metadata)
                return reply, retried
            except grpc.RpcError as exc:
                left = self._deadline - time.monotonic()
                if exc.code() != grpc.StatusCode.UNAVAILABLE or left <= 0:
                    raise
                retried = True
                time.sleep(min(1.0, left))


def add_command_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    doc: str,
    run: Callable[[argparse.Namespace], int],
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """`banditd NAME`, run by ``run`` and described by its module's ``doc`` (after the first
    paragraph); returns its subcommands' parsers, the chosen one in ``NAME_command``."""
    parser = sub.add_parser(
        name,
        help=summary,
        description=doc.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=run)
    return parser.add_subparsers(dest=f"{name}_command", required=True)


def add_connection_arguments(command: argparse.ArgumentParser) -> None:
    """--target, the client's API key and TLS flags, and --wait."""
    command.add_argument("--target", default=DEFAULT_TARGET, help="server HOST:PORT (%(default)s)")
    add_client_arguments(command)
    command.add_argument(
        "--wait",
        type=positive_float,
        default=5.0,
        metavar="SECONDS",
        help="retry an unavailable server this long (%(default)s)",
    )


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Rows of cells (the header first) in columns two spaces apart, no trailing space."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def delete_each(
    admin: AdminClient,
    method: str,
    named: Sequence[tuple[str, Message]],
    done: str,
    absent: str,
    timeout_s: float = CALL_TIMEOUT_S,
) -> int:
    """Call the delete RPC ``method`` with each (name, request), each given ``timeout_s`` (a
    large router's logs take long to delete): "NAME: done" for each deleted, ``absent`` (its
    "{}" the name) on stderr for each not there or not answered in time; exit status 1 when
    one was not deleted."""
    missing = 0
    for name, request in named:
        try:
            deleted = admin.delete(method, request, timeout_s)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            missing += 1
            print(
                f"banditd: {name}: no answer within {timeout_s:g} s (DEADLINE_EXCEEDED; "
                "--timeout): a delete cut off is rolled back, so it may still be there; run it "
                "again with a longer --timeout",
                file=sys.stderr,
            )
            continue
        if deleted:
            print(f"{name}: {done}")
        else:
            missing += 1
            print(f"banditd: {absent.format(name)}", file=sys.stderr)
    return 1 if missing else 0


def print_refusal(exc: Exception) -> None:
    """An error of the command's input on stderr, each line after "banditd: "."""
    print("\n".join(f"banditd: {line}" for line in str(exc).splitlines()), file=sys.stderr)


Command = Callable[[AdminClient, argparse.Namespace], int]


def with_admin(args: argparse.Namespace, command: Command) -> int:
    """``command`` against the server of ``args``; its exit status, or 1 (the refusal printed
    on stderr) for bad TLS flags or a server's refusal."""
    security = ClientSecurity.from_args(args)
    try:
        with security.channel(args.target) as channel:
            return command(AdminClient(channel, security, args.wait), args)
    except TLSConfigError as exc:
        print_refusal(exc)
        return 1
    except grpc.RpcError as exc:
        print(f"banditd: {args.target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
