"""`banditd evaluate`: off-policy evaluation of candidate configurations on a router's log.

banditd evaluate --router TENANT/NAME [--candidate FILE ...] [--json]
    reads the router's decision log from the database (BANDITD_DATABASE_URL or
    --database-url) and estimates each candidate (a RouterConfig JSON file, like
    `banditd example-router` prints; tenant and name may be left out), or with no --candidate
    the router's shadow policies. Reports IPS, self-normalised IPS, direct-method and
    doubly-robust estimates of mean reward, mean cost and utility (reward - cost weight x
    cost, at each decision's own weight: its request's cost_weight, else the router's default,
    never less than the budget pacer's price then; --cost-weight W: at W for every decision;
    latency and energy likewise, per decision or --latency-weight L and --energy-weight E),
    95 % bootstrap intervals, the effective sample size, and warnings.

banditd evaluate --replay-proof DATA [--seeds N] [--limit N] [--json]
    the estimators against the truth on a full-information outcome file (see
    banditd/evaluation/ope_proof.py): logs an exploring policy's decisions, estimates candidates
    from that log alone, and compares with their exact value. Its candidates and cost weight
    are its own: --router, --candidate, the weights and --database-url are refused with it.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from banditd import progress
from banditd.commands import reporting
from banditd.commands.argtypes import int_at_least, rpc_number
from banditd.config import Settings
from banditd.context.encoders import get_encoder
from banditd.context.pipeline import encoder_weights
from banditd.domain import RouterSpec
from banditd.edge import codec
from banditd.errors import BanditdError, InvalidArgument
from banditd.evaluation import ope_proof
from banditd.flows import candidates as evaluation
from banditd.flows.admin import named_candidates
from banditd.flows.ope import DEFAULT_BOOTSTRAP
from banditd.flows.ope_log import load_log
from banditd.store import Database, Store, migrate
from banditd.v1 import banditd_pb2 as pb


def read_candidate(path: Path, tenant: str, name: str) -> RouterSpec:
    """A RouterConfig JSON file as a candidate for the router tenant/name."""
    try:
        msg = json_format.Parse(path.read_text(), pb.RouterConfig())
    except json_format.ParseError as exc:
        raise InvalidArgument("candidate", f"{path}: not a RouterConfig ({exc})") from exc
    return codec.candidate_from_proto(msg, tenant, name)


async def evaluate_router(args: argparse.Namespace) -> dict[str, Any]:
    tenant, sep, name = args.router.partition("/")
    if not sep or not tenant or not name:
        raise InvalidArgument("router", f"expected TENANT/NAME, got {args.router!r}")
    overrides = {"database_url": args.database_url} if args.database_url else {}
    settings = Settings(**overrides)
    if settings.should_migrate:
        await migrate(settings.database_url, settings.migrations_dir)
    db = Database(settings.database_url)
    try:
        store = Store.over(db)
        stored = await store.routers.get(tenant, name)
        candidates = [read_candidate(p, tenant, name) for p in args.candidate]
        limit = evaluation.DEFAULT_LIMIT if args.limit is None else args.limit
        spec = stored.spec  # the weights a server would load: the events its posterior folds
        encoder = await asyncio.to_thread(get_encoder, spec.encoder, spec.embedding_dim)
        weights = encoder_weights(spec, encoder)
        log = await load_log(store, stored.router_id, limit, stored.context_since, weights)
    finally:
        await db.close()
    return evaluation.report(
        args.router,
        stored.spec,
        log,
        named_candidates(stored.spec, candidates),
        cost_weight=args.cost_weight,
        latency_weight=args.latency_weight,
        energy_weight=args.energy_weight,
        replicates=args.bootstrap,
        seed=args.seed,
    )


# What --replay-proof has no use for (it logs and scores its own candidates, from DATA): given
# with it, an error rather than ignored.
NOT_WITH_PROOF = {
    "router": "--router",
    "candidate": "--candidate",
    "cost_weight": "--cost-weight",
    "latency_weight": "--latency-weight",
    "energy_weight": "--energy-weight",
    "database_url": "--database-url",
}


PROOF_SEEDS = 5  # --replay-proof's logs by default


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """The report of --replay-proof, or of --router (the --json object)."""
    if args.replay_proof is not None:
        for key, flag in NOT_WITH_PROOF.items():
            if getattr(args, key) not in (None, []):
                raise InvalidArgument(
                    "replay_proof",
                    f"{flag} cannot go with --replay-proof (it scores its own candidates at "
                    f"cost weight {ope_proof.COST_WEIGHT:g})",
                )
        with progress.shown(quiet=args.quiet):
            return ope_proof.proof(
                args.replay_proof,
                seeds=range(args.seed, args.seed + (args.seeds or PROOF_SEEDS)),
                limit=args.limit,
                replicates=args.bootstrap,
            )
    if args.router:
        if args.seeds is not None:
            raise InvalidArgument("seeds", "--seeds is for --replay-proof (a router has one log)")
        with progress.shown(quiet=args.quiet):
            return asyncio.run(evaluate_router(args))
    raise InvalidArgument("router", "give --router TENANT/NAME (or --replay-proof DATA)")


def render_text(report: dict[str, Any]) -> str:
    """A router's evaluation (it names the router) or the replay proof, as tables."""
    return evaluation.render_text(report) if "router" in report else ope_proof.render_text(report)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `evaluate` to a command's subparsers: tables, or one JSON object with --json."""
    p = reporting.add(
        subparsers,
        "evaluate",
        help="estimate candidate router configurations on a router's decision log (off-policy)",
        description=__doc__,
        run=reporting.Command(
            measure,
            render_text,
            name="banditd evaluate",
            errors=(BanditdError, OSError, ValueError),
        ),
    )
    p.add_argument("--router", help="TENANT/NAME of the router whose log to use")
    p.add_argument(
        "--candidate",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="RouterConfig JSON (repeatable); none: the router's shadow policies",
    )
    p.add_argument(
        "--cost-weight",
        type=rpc_number("EvaluateRequest.cost_weight"),
        help="utility = reward - W x cost for every decision (default: each decision's own "
        "weight, as its Select formed it); the candidates' choices keep each decision's weight",
    )
    p.add_argument(
        "--latency-weight",
        type=rpc_number("EvaluateRequest.latency_weight"),
        help="utility also - L x latency (seconds) for every decision (default: each "
        "decision's own weight); the candidates' choices keep each decision's weight",
    )
    p.add_argument(
        "--energy-weight",
        type=rpc_number("EvaluateRequest.energy_weight"),
        help="utility also - E x energy (Wh) for every decision (default: each decision's own "
        "weight); the candidates' choices keep each decision's weight",
    )
    p.add_argument(
        "--bootstrap", type=int_at_least(1), default=DEFAULT_BOOTSTRAP, help="(%(default)s)"
    )
    p.add_argument(
        "--limit",
        type=int_at_least(1),
        help=f"newest decisions with feedback to use ({evaluation.DEFAULT_LIMIT}); with "
        "--replay-proof, the first records of DATA (all)",
    )
    p.add_argument("--seed", type=int_at_least(0), default=0, help="(0)")
    p.add_argument("--database-url", help="SQLAlchemy async URL (env BANDITD_DATABASE_URL)")
    p.add_argument(
        "--replay-proof",
        type=Path,
        metavar="DATA",
        help="check the estimators against the truth on a full-information outcome file",
    )
    p.add_argument("--seeds", type=int_at_least(1), help=f"logs for --replay-proof ({PROOF_SEEDS})")
    progress.add_quiet_flag(p)
