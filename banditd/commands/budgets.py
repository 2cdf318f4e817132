"""`banditd budgets`: set, read, list and delete spending budgets on a running server; its spend.

banditd budgets set TENANT[/ROUTER] --limit-usd X --period day [--alert 0.8 ...]
        [--on-exhausted cheapest|refuse] [--window-seconds N --window-start UNIX]
    creates or replaces the budget of a tenant (every router) or of one router (docs/operations.md).
banditd budgets get TENANT[/ROUTER] ... | list [--tenant T]
    the budgets with their current period: spent, leased and remaining.
banditd budgets delete TENANT[/ROUTER] ...
    stops enforcing budgets; set again, one counts its current period's spend so far.
banditd budgets spend TENANT[/ROUTER] [--since UNIX] [--until UNIX] [--by KEY]
    the spend of the decisions made in a time range, by router and arm (and a metadata key).

TENANT/ROUTER splits at the first "/". A tenant whose name holds "/" is named with
--tenant TENANT [--router ROUTER] instead (set, get, delete and spend; one budget).

Every command calls the Admin service at --target, with the API key and TLS flags of
`banditd ingest`; the server's refusals come back as its status and message. --json prints the
replies' messages as JSON, with the proto's field names.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

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
from banditd.commands.argtypes import UINT32_MAX, float_between, int_at_least
from banditd.v1 import banditd_pb2 as pb

PERIODS = {
    "hour": pb.BUDGET_PERIOD_HOUR,
    "day": pb.BUDGET_PERIOD_DAY,
    "month": pb.BUDGET_PERIOD_MONTH,
    "window": pb.BUDGET_PERIOD_WINDOW,
}
ON_EXHAUSTED = {"cheapest": pb.ON_EXHAUSTED_CHEAPEST, "refuse": pb.ON_EXHAUSTED_REFUSE}


def scope(text: str) -> tuple[str, str]:
    """argparse type: TENANT or TENANT/ROUTER (the router empty: every router of the tenant)."""
    tenant, sep, router = text.partition("/")
    if not tenant or (sep and not router):
        raise argparse.ArgumentTypeError(f"expected TENANT or TENANT/ROUTER, got {text!r}")
    return tenant, router


def scopes(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The (tenant, router) budgets a command names: by --tenant [--router], or by its
    positional TENANT[/ROUTER] arguments; raises ValueError for neither or both."""
    named = args.scope or []  # set and spend name one budget: (tenant, router) or None
    if isinstance(named, tuple):
        named = [named]
    if args.tenant is not None and named:
        raise ValueError("give TENANT[/ROUTER] or --tenant, not both")
    if args.tenant is not None:
        if not args.tenant:
            raise ValueError("--tenant must not be empty")
        return [(args.tenant, args.router or "")]
    if args.router is not None:
        raise ValueError("--router needs --tenant")
    if not named:
        raise ValueError("name a budget: TENANT[/ROUTER], or --tenant TENANT [--router ROUTER]")
    return list(named)


def _json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _name(tenant: str, router: str) -> str:
    return f"{tenant}/{router}" if router else tenant


def _period(budget: pb.Budget) -> str:
    if budget.period == pb.BUDGET_PERIOD_WINDOW:
        return f"window of {budget.window_seconds} s from {budget.window_start_unix:.0f}"
    return {v: k for k, v in PERIODS.items()}.get(budget.period, "unset")


def _describe(budget: pb.Budget) -> str:
    """One line: the limit, period, alerts and what happens past the limit."""
    alerts = ", ".join(f"{a:g}" for a in budget.alerts) or "none"
    past = "refuse" if budget.on_exhausted == pb.ON_EXHAUSTED_REFUSE else "cheapest arm"
    return (
        f"${budget.limit_usd:g} per {_period(budget)}; alerts at {alerts}; past the limit: "
        f"{past} (version {budget.version})"
    )


def _usage(usage: pb.BudgetUsage) -> str:
    fired = ", ".join(f"{a:g}" for a in usage.alerts_fired) or "none"
    return (
        f"  this period ({usage.elapsed:.0%} passed): spent ${usage.spent_usd:.6g}, leased "
        f"${usage.leased_usd:.6g}, remaining ${usage.remaining_usd:.6g}; alerts fired: {fired}"
    )


def _set(admin: AdminClient, args: argparse.Namespace) -> int:
    [(tenant, router)] = args.scopes
    budget = pb.Budget(
        tenant=tenant,
        router=router,
        limit_usd=args.limit_usd,
        period=PERIODS[args.period],
        window_seconds=args.window_seconds,
        window_start_unix=args.window_start,
        alerts=sorted(args.alert or ()),
        on_exhausted=ON_EXHAUSTED[args.on_exhausted],
    )
    reply = admin.call("SetBudget", pb.SetBudgetRequest(budget=budget))
    if args.json:
        print(json.dumps(_json(reply)))
    else:
        verb = "created" if reply.created else "replaced"
        b = reply.budget
        print(f"{_name(b.tenant, b.router)}: {verb}: {_describe(b)}")
    return 0


def _show(replies: Sequence[pb.GetBudgetResponse], as_json: bool) -> None:
    if as_json:
        print(json.dumps([_json(r) for r in replies]))
        return
    for r in replies:
        print(f"{_name(r.budget.tenant, r.budget.router)}: {_describe(r.budget)}")
        print(_usage(r.usage))


def _get(admin: AdminClient, args: argparse.Namespace) -> int:
    replies = [
        admin.call("GetBudget", pb.GetBudgetRequest(tenant=tenant, router=router))
        for tenant, router in args.scopes
    ]
    _show(replies, args.json)
    return 0


def _list(admin: AdminClient, args: argparse.Namespace) -> int:
    reply = admin.call("ListBudgets", pb.ListBudgetsRequest(tenant=args.tenant or ""))
    replies = sorted(reply.budgets, key=lambda r: (r.budget.tenant, r.budget.router))
    _show(replies, args.json)
    if not replies and not args.json:
        print("no budgets")
    return 0


def _delete(admin: AdminClient, args: argparse.Namespace) -> int:
    """Each budget named; exit status 1 when one was not found (the others are deleted)."""
    named = [(_name(t, r), pb.DeleteBudgetRequest(tenant=t, router=r)) for t, r in args.scopes]
    return delete_each(admin, "DeleteBudget", named, "budget deleted", "no budget for {}")


def _spend(admin: AdminClient, args: argparse.Namespace) -> int:
    [(tenant, router)] = args.scopes
    request = pb.GetSpendRequest(
        tenant=tenant,
        router=router,
        since_unix=args.since,
        until_unix=args.until,
        metadata_key=args.by or "",
    )
    reply = admin.call("GetSpend", request)
    if args.json:
        print(json.dumps(_json(reply)))
        return 0
    table = [("ROUTER", "ARM", *((args.by.upper(),) if args.by else ()), "DECISIONS", "USD")]
    for line in reply.lines:
        by = (line.metadata_value,) if args.by else ()
        table.append((line.router, line.arm, *by, str(line.decisions), f"{line.spend_usd:.6g}"))
    print_table(table)
    print(f"total: ${reply.total_usd:.6g}")
    return 0


def run(args: argparse.Namespace) -> int:
    """`banditd budgets ...`; the exit status (1 for a server's refusal)."""
    commands: dict[str, Command] = {
        "set": _set,
        "get": _get,
        "list": _list,
        "delete": _delete,
        "spend": _spend,
    }
    if args.budgets_command != "list":
        try:
            args.scopes = scopes(args)
        except ValueError as exc:
            print_refusal(exc)
            return 2
    return with_admin(args, commands[args.budgets_command])


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    commands = add_command_parser(
        sub,
        "budgets",
        "set, get, list and delete spending budgets on a running server; its spend",
        __doc__ or "",
        run,
    )
    p_set = commands.add_parser("set", help="create or replace a budget (bumps its version)")
    p_set.add_argument("scope", type=scope, nargs="?", metavar="TENANT[/ROUTER]")
    p_set.add_argument(
        "--limit-usd",
        type=float_between(0.0),
        required=True,
        help="USD a period (>= 0)",
    )
    p_set.add_argument("--period", choices=PERIODS, required=True, help="the period's length")
    p_set.add_argument(
        "--window-seconds",
        type=int_at_least(0, UINT32_MAX),
        default=0,
        help="with --period window: its length in seconds",
    )
    p_set.add_argument(
        "--window-start",
        type=float,
        default=0.0,
        metavar="UNIX",
        help="with --period window: when the first window starts (%(default)s)",
    )
    p_set.add_argument(
        "--alert",
        type=float_between(0.0, 1.0),
        action="append",
        metavar="FRACTION",
        help="alert when this fraction of the limit is spent, in (0, 1]; repeat for several",
    )
    p_set.add_argument(
        "--on-exhausted",
        choices=ON_EXHAUSTED,
        default="cheapest",
        help="past the limit: serve the cheapest arm, or refuse Select (%(default)s)",
    )
    p_get = commands.add_parser("get", help="budgets with their current period")
    p_get.add_argument("scope", type=scope, nargs="*", metavar="TENANT[/ROUTER]")
    p_list = commands.add_parser("list", help="every budget with its current period")
    p_list.add_argument("--tenant", help="only this tenant's budgets (default: every tenant)")
    p_delete = commands.add_parser(
        "delete", help="stop enforcing budgets (a later set revives one with its period's spend)"
    )
    p_delete.add_argument("scope", type=scope, nargs="*", metavar="TENANT[/ROUTER]")
    p_spend = commands.add_parser("spend", help="spend by router and arm over a time range")
    p_spend.add_argument("scope", type=scope, nargs="?", metavar="TENANT[/ROUTER]")
    p_spend.add_argument(
        "--since", type=float, default=0.0, metavar="UNIX", help="from (%(default)s)"
    )
    p_spend.add_argument("--until", type=float, default=0.0, metavar="UNIX", help="to (0: now)")
    p_spend.add_argument("--by", metavar="KEY", help="also group by this request metadata key")
    for command in (p_set, p_get, p_delete, p_spend):
        command.add_argument(
            "--tenant", help='the tenant, whole (it may hold "/"), instead of TENANT[/ROUTER]'
        )
        command.add_argument("--router", help="with --tenant: one router's budget")
    for command in (p_set, p_get, p_list, p_delete, p_spend):
        add_connection_arguments(command)
        if command is not p_delete:
            command.add_argument("--json", action="store_true", help="print JSON on stdout")
