"""`banditd routers`: routers files applied to a running server; list, get and delete routers.

banditd routers apply -f FILE [--dry-run]
    reads and checks every router of FILE (docs/routers.md) before the first write; then
    creates the routers the server lacks, replaces those that differ and leaves the others
    alone (so their version and in-memory state stay as they are). --dry-run prints a diff per
    router and writes nothing.
banditd routers list [--tenant T] | get T/N ... | delete T/N ...
    get prints a routers file (YAML; --json: JSON) that apply takes back unchanged.

Every command calls the Admin service at --target, with the API key and TLS flags of
`banditd ingest`; the server's refusals (auth, validation) come back as its status and message.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from banditd.commands import routers_file
from banditd.commands.admin_client import (
    AdminClient,
    Command,
    add_command_parser,
    add_connection_arguments,
    delete_each,
    print_refusal,
    print_table,
    with_admin,
)
from banditd.commands.argtypes import positive_float
from banditd.commands.routers_file import RoutersFileError
from banditd.domain import RouterSpec
from banditd.edge import codec
from banditd.v1 import banditd_pb2 as pb

# A router's decision and feedback logs go in one transaction: a large one's takes long, and a
# delete cut off by its deadline is rolled back whole.
DELETE_TIMEOUT_S = 600.0


def live_router(admin: AdminClient, tenant: str, name: str) -> RouterSpec | None:
    """The server's router, None where it has none."""
    try:
        reply = admin.call("GetRouter", pb.GetRouterRequest(tenant=tenant, name=name))
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise
    return live_spec(reply.router)


def live_spec(msg: pb.RouterConfig) -> RouterSpec:
    """A server's router, with its version (which a file, and so codec, leaves out)."""
    return dataclasses.replace(codec.spec_from_proto(msg), version=msg.version)


@dataclass(frozen=True)
class Change:
    """What apply does to one router of the file."""

    wanted: RouterSpec
    live: RouterSpec | None

    @property
    def key(self) -> str:
        return f"{self.wanted.tenant}/{self.wanted.name}"

    @property
    def action(self) -> str:
        if self.live is None:
            return "create"
        return "none" if routers_file.same(self.live, self.wanted) else "update"

    @property
    def relearns(self) -> bool:
        """Whether the update changes x (its size, or how it is built): the logged events no
        longer fit the posterior, so the router learns again from its prior (docs/routers.md)."""
        live = self.live
        return live is not None and self.action == "update" and live.changes_x(self.wanted)

    def how_x_changes(self) -> str:
        """What the update does to x, for the router's line (only where it relearns)."""
        live, wanted = self.live, self.wanted
        assert live is not None
        if live.dim != wanted.dim:
            return f"x goes from {live.dim} to {wanted.dim} values"
        before, after = live.context_fields, wanted.context_fields

        def shown(fields: dict[str, object], name: str) -> str:
            return repr(fields[name]) if name in fields else "-"  # "-": not in effect

        changed = [
            f"{name}: {shown(before, name)} -> {shown(after, name)}"
            for name in {**before, **after}
            if before.get(name) != after.get(name)
        ]
        return f"x is built another way ({', '.join(changed)})"


def plan(admin: AdminClient, specs: list[RouterSpec]) -> list[Change]:
    """Each router of the file against the server's (reads only)."""
    return [Change(spec, live_router(admin, spec.tenant, spec.name)) for spec in specs]


def _apply(admin: AdminClient, args: argparse.Namespace) -> int:
    specs = routers_file.read(args.file)  # every router checked before anything is written
    source = "<stdin>" if str(args.file) == "-" else str(args.file)
    verbs = (
        {"create": "would be created", "update": "would be updated", "none": "unchanged"}
        if args.dry_run
        else {"create": "created", "update": "updated", "none": "unchanged"}
    )
    if not specs and not args.json:
        print(f"{source}: no routers")
    results: list[dict[str, Any]] = []
    try:
        for change in plan(admin, specs):
            version = change.live.version if change.live is not None else None
            if change.action != "none" and args.dry_run and not args.json:
                print("\n".join(routers_file.diff(change.live, change.wanted, source)))
            elif change.action != "none" and not args.dry_run:
                request = pb.PutRouterRequest(router=codec.spec_to_proto(change.wanted))
                version = admin.call("PutRouter", request).router.version
            relearns = change.relearns
            results.append(
                {
                    "router": change.key,
                    "action": change.action,
                    "version": version,
                    "relearns": relearns,
                }
            )
            if not args.json:  # as it happens: a later failure leaves these lines true
                shown = "" if version is None else f" (version {version})"
                if relearns:
                    shown += (
                        f"; {change.how_x_changes()}, so it learns again from its prior (its "
                        "logged feedback no longer fits)"
                    )
                print(f"{change.key}: {verbs[change.action]}{shown}", flush=True)
    except grpc.RpcError as exc:
        if args.json:  # the routers applied before the failure, as the text lines say them
            error = f"{exc.code().name}: {exc.details()}"
            print(json.dumps({"dry_run": args.dry_run, "routers": results, "error": error}))
        raise
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "routers": results}))
    elif args.dry_run:
        print("dry run: nothing applied")
    return 0


class AmbiguousName(ValueError):
    """TENANT/NAME that names routers at two of its "/"."""


def router_name(text: str) -> str:
    """argparse type: TENANT/NAME, where either may hold "/" too (``resolve`` splits it)."""
    if not _splits(text):
        raise argparse.ArgumentTypeError(f"expected TENANT/NAME, got {text!r}")
    return text


def _splits(text: str) -> list[tuple[str, str]]:
    """Each (tenant, name) that TENANT/NAME can mean."""
    parts = text.split("/")
    halves = [("/".join(parts[:i]), "/".join(parts[i:])) for i in range(1, len(parts))]
    return [(tenant, name) for tenant, name in halves if tenant and name]


def resolve(admin: AdminClient, text: str) -> tuple[str, str]:
    """The (tenant, name) of TENANT/NAME: with several "/", the split the server has a router
    for (the first where it has none, for the server to say so)."""
    splits = _splits(text)
    if len(splits) == 1:
        return splits[0]
    found = [split for split in splits if _visible(admin, *split)]
    if len(found) > 1:
        named = "; ".join(f"tenant {t!r}, router {n!r}" for t, n in found)
        raise AmbiguousName(
            f"{text} names {len(found)} routers ({named}): the Admin API takes tenant and name "
            "apart"
        )
    return (found or splits)[0]


def _visible(admin: AdminClient, tenant: str, name: str) -> bool:
    """Whether the server has the router and lets this command's key see it."""
    try:
        admin.call("GetRouter", pb.GetRouterRequest(tenant=tenant, name=name))
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED):
            return False
        raise
    return True


def _get(admin: AdminClient, args: argparse.Namespace) -> int:
    specs: list[RouterSpec] = []
    for tenant, name in [resolve(admin, text) for text in args.router]:
        reply = admin.call("GetRouter", pb.GetRouterRequest(tenant=tenant, name=name))
        specs.append(live_spec(reply.router))
    versions = ", ".join(f"{s.tenant}/{s.name} version {s.version}" for s in specs)
    comment = f"{versions} on {args.target}"
    sys.stdout.write(routers_file.dump(specs, as_json=args.json, comment=comment))
    return 0


def _list(admin: AdminClient, args: argparse.Namespace) -> int:
    reply = admin.call("ListRouters", pb.ListRoutersRequest(tenant=args.tenant or ""))
    rows = [
        {
            "router": f"{r.tenant}/{r.name}",
            "version": r.version,
            "policy": r.policy,
            "arms": len(r.arms),
            "disabled_arms": sum(a.disabled for a in r.arms),
        }
        for r in sorted(reply.routers, key=lambda r: (r.tenant, r.name))
    ]
    if args.json:
        print(json.dumps(rows))
        return 0
    table = [("ROUTER", "VERSION", "POLICY", "ARMS")]
    for row in rows:
        disabled = f" ({row['disabled_arms']} disabled)" if row["disabled_arms"] else ""
        table.append(
            (row["router"], str(row["version"]), row["policy"], f"{row['arms']}{disabled}")
        )
    print_table(table)
    return 0


def _delete(admin: AdminClient, args: argparse.Namespace) -> int:
    resolved = [(text, resolve(admin, text)) for text in args.router]  # all before a delete
    named = [(text, pb.DeleteRouterRequest(tenant=t, name=n)) for text, (t, n) in resolved]
    return delete_each(
        admin, "DeleteRouter", named, "deleted", "router {} not found", timeout_s=args.timeout
    )


def run(args: argparse.Namespace) -> int:
    """`banditd routers ...`; the exit status (1 for a bad file or a server's refusal)."""
    commands: dict[str, Command] = {
        "apply": _apply,
        "get": _get,
        "list": _list,
        "delete": _delete,
    }
    try:
        return with_admin(args, commands[args.routers_command])
    except (RoutersFileError, AmbiguousName) as exc:
        print_refusal(exc)
        return 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    commands = add_command_parser(
        sub,
        "routers",
        "apply a routers file to a running server; list, get and delete routers",
        __doc__ or "",
        run,
    )
    p_apply = commands.add_parser(
        "apply",
        help="create and update the routers of a file (docs/routers.md)",
        description="Checks every router of the file first: a bad file applies nothing. "
        "Routers the server has with the same configuration are left alone; routers the file "
        "does not name are never deleted.",
    )
    p_apply.add_argument(
        "-f",
        "--file",
        type=Path,
        required=True,
        help="YAML, or JSON if it ends in .json; - reads stdin",
    )
    p_apply.add_argument(
        "--dry-run", action="store_true", help="print what would change (a diff) and write nothing"
    )
    p_list = commands.add_parser("list", help="list routers: version, policy, arms")
    p_list.add_argument("--tenant", help="only this tenant's routers (default: every tenant)")
    p_get = commands.add_parser("get", help="print routers as a routers file (YAML)")
    p_get.add_argument("router", nargs="+", type=router_name, metavar="TENANT/NAME")
    p_delete = commands.add_parser(
        "delete", help="delete routers with their decision and feedback logs (no undo)"
    )
    p_delete.add_argument("router", nargs="+", type=router_name, metavar="TENANT/NAME")
    p_delete.add_argument(
        "--timeout",
        type=positive_float,
        default=DELETE_TIMEOUT_S,
        metavar="SECONDS",
        help="how long each delete may take; one cut off is rolled back (%(default)s)",
    )
    for command in (p_apply, p_list, p_get, p_delete):
        add_connection_arguments(command)
        if command is not p_delete:
            command.add_argument("--json", action="store_true", help="print JSON on stdout")
