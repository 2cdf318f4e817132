"""`banditd replay` on the command line: its options and what it prints."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from banditd import progress
from banditd.commands import reporting
from banditd.commands.argtypes import float_between, int_at_least, positive_float
from banditd.domain import (
    DEFAULT_EMBEDDING_DIM,
    DEFAULT_METADATA_SLOTS,
    DEFAULT_PCA_FIT_SAMPLES,
    DEFAULT_PRIOR_QUALITY,
    DEFAULT_PRIOR_WEIGHT,
    ENCODERS,
)
from banditd.edge import codec
from banditd.edge.tls import ClientSecurity, TLSConfigError, add_client_arguments
from banditd.errors import BanditdError, InvalidArgument
from banditd.evaluation.replay.data import load_outcomes, split_point
from banditd.evaluation.replay.features import arm_heads, arm_prices, router_spec
from banditd.evaluation.replay.options import (
    ARM_PRICES,
    AUTO,
    DEFAULT_TENANT,
    FEEDBACK,
    REFERENCE_POLICIES,
    Options,
    Server,
)
from banditd.evaluation.replay.plot import plot
from banditd.evaluation.replay.remote import router_name
from banditd.evaluation.replay.render import render_text
from banditd.evaluation.replay.runner import replay
from banditd.policy import POLICIES
from banditd.v1 import banditd_pb2 as pb


def _floats(text: str) -> tuple[float, ...]:
    """A comma list of numbers >= 0."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas: {text!r}"
        ) from None
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers >= 0: {text!r}")
    return values


def options(args: argparse.Namespace) -> Options:
    """The replay options of parsed command-line arguments: the flags named like an Options
    field, and those that need parsing."""
    if args.keep_routers and args.server is None:
        raise InvalidArgument(
            "keep_routers", "--keep-routers needs --server (it replays the routers a server has)"
        )
    given = {
        "arms": tuple(a.strip() for a in args.arms.split(",") if a.strip()) if args.arms else (),
        "metadata_from": tuple(
            f.strip() for f in (args.metadata_from or "").split(",") if f.strip()
        ),
        "text_window_tokens": args.text_window,
        "server": None
        if args.server is None
        else Server(
            args.server,
            args.tenant,
            ClientSecurity.from_args(args),
            keep_routers=args.keep_routers,
        ),
    }
    named = {f.name for f in dataclasses.fields(Options)} - set(given)
    return Options(**{name: getattr(args, name) for name in named if hasattr(args, name)}, **given)


def router_config(opts: Options) -> pb.RouterConfig:
    """The configuration of the router a replay of ``opts`` runs (``replay-<seed>`` under the
    server's tenant, or "replay"), its arms priced as the replay prices them (from the replayed
    records with --arm-prices data): what to create and warm-start for --keep-routers."""
    head = 0 if opts.split is None else split_point(opts.data, opts.split)
    outcomes = load_outcomes(opts.data, opts.arms, opts.limit, skip=head)
    priced = opts.arm_prices == "data"
    prices, heads = (arm_prices(outcomes), arm_heads(outcomes)) if priced else ({}, {})
    spec = router_spec(outcomes.arms, opts, opts.cost_weight, prices, heads)
    tenant = DEFAULT_TENANT if opts.server is None else opts.server.tenant
    name = router_name(opts.seed, opts.cost_weight, opts.cost_weight)
    return codec.spec_to_proto(dataclasses.replace(spec, tenant=tenant, name=name))


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """The replay's report (the --json object); with --plot, the plot written too."""
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        raise InvalidArgument("plot", "needs matplotlib (pip install matplotlib)")
    with progress.shown(quiet=args.quiet):
        report = replay(options(args))
    if args.plot is not None:
        plot(report, args.plot)
    return report


REPORT = reporting.Command(
    measure, render_text, name="banditd replay", errors=(BanditdError, OSError, TLSConfigError)
)


def run(args: argparse.Namespace) -> int:
    """`banditd replay`: print the report (tables, or one JSON object with --json), or with
    --print-router the router's configuration."""
    if not args.print_router:
        return REPORT(args)
    try:
        print(json_format.MessageToJson(router_config(options(args))))
    except REPORT.errors as exc:
        return reporting.fail(REPORT.name, exc)
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `replay` to a command's subparsers; the parsed args carry func=run."""
    import banditd.evaluation.replay as package  # its docstring is the command's description

    p = reporting.add(
        subparsers,
        "replay",
        help="evaluate a policy online on full-information outcome data (offline, in process)",
        description=package.__doc__,
        run=run,
    )
    p.add_argument("--data", type=Path, required=True, help="outcome file (JSONL, optionally .gz)")
    p.add_argument(
        "--policy",
        choices=(*POLICIES, *REFERENCE_POLICIES),
        default="linucb",
        help="(linucb) random, cheapest, best-single and oracle are references, not learning",
    )
    p.add_argument("--cost-weight", type=float_between(0.0), default=0.0, help="USD -> quality (0)")
    p.add_argument(
        "--latency-weight",
        type=float_between(0.0),
        help="utility per second of expected latency, as SelectRequest.latency_weight (0)",
    )
    p.add_argument(
        "--energy-weight",
        type=float_between(0.0),
        help="utility per Wh of expected energy, as SelectRequest.energy_weight (0)",
    )
    p.add_argument(
        "--max-latency-ms",
        type=float_between(0.0),
        help="arms whose expected latency is over it are not eligible (none); a prompt with no "
        "arm left is refused",
    )
    p.add_argument("--budget-usd", type=float_between(0.0), help="total spend allowed (none)")
    p.add_argument("--feedback", choices=FEEDBACK, default="score", help="(score)")
    p.add_argument(
        "--arm-prices",
        choices=ARM_PRICES,
        default="data",
        help="(data) the models' prices: their mean cost per call in the file, or zero "
        "(learnt from the costs reported)",
    )
    p.add_argument(
        "--warm-start", type=Path, help="outcome file to fit priors on first (learning policies)"
    )
    p.add_argument(
        "--split",
        type=float_between(0.0, 1.0, strict=True),
        metavar="FRACTION",
        help="replay only the records after this fraction of --data (by line order)",
    )
    p.add_argument(
        "--warm-start-head",
        action="store_true",
        help="with --split: warm-start on the records of --data before the split",
    )
    p.add_argument("--arms", help="comma list of models to route between (all of the file's)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="first seed (0)")
    p.add_argument("--repeats", type=int_at_least(1), default=1, help="seeds to average over (1)")
    p.add_argument(
        "--shuffle",
        action="store_true",
        help="each seed replays the records in its own random order (the warm start keeps "
        "the file's)",
    )
    p.add_argument(
        "--sweep",
        type=_floats,
        nargs="?",
        const=AUTO,
        metavar="WEIGHTS",
        help="frontier over cost weights (comma list; default 0 and a log grid) with AIQ",
    )
    p.add_argument(
        "--sweep-budgets",
        type=_floats,
        nargs="?",
        const=AUTO,
        metavar="USD",
        help="frontier over budgets (comma list; default a log grid) at --cost-weight",
    )
    p.add_argument("--limit", type=int_at_least(1), help="replay only the first N records")
    p.add_argument(
        "--embedding-dim", type=int_at_least(1), default=DEFAULT_EMBEDDING_DIM, help="(%(default)s)"
    )
    p.add_argument(
        "--exploration",
        type=float_between(0.0),
        default=0.0,
        help="policy parameter (0: its default)",
    )
    p.add_argument(
        "--prior-quality",
        type=float_between(0.0, 1.0),
        default=DEFAULT_PRIOR_QUALITY,
        help="an arm's quality before its feedback, mid price tier (%(default)s); about the "
        "arms' mean quality on your data (the report's single models) suits a router best",
    )
    p.add_argument(
        "--prior-weight",
        type=positive_float,
        default=DEFAULT_PRIOR_WEIGHT,
        help="what the prior is worth, in feedback events (%(default)s)",
    )
    p.add_argument(
        "--metadata-from",
        metavar="FIELD[,FIELD]",
        help="send these record fields (e.g. task) as request metadata the router declares",
    )
    p.add_argument(
        "--metadata-slots",
        type=int_at_least(2),
        default=DEFAULT_METADATA_SLOTS,
        help="(%(default)s)",
    )
    p.add_argument("--encoder", choices=ENCODERS, default="hashing", help="text encoder (hashing)")
    p.add_argument(
        "--text-window",
        type=int_at_least(0),
        default=0,
        metavar="TOKENS",
        help="encode only the last N tokens of each prompt (hashing encoder: whitespace-separated "
        "chunks; 0: whole prompt)",
    )
    p.add_argument("--pca-dim", type=int_at_least(0), default=0, help="PCA size (0: none)")
    p.add_argument(
        "--pca-fit-samples",
        type=int_at_least(1),
        default=DEFAULT_PCA_FIT_SAMPLES,
        help="(%(default)s)",
    )
    p.add_argument("--knn-k", type=int_at_least(0), default=0, help="kNN outcome features (0: off)")
    p.add_argument(
        "--embeddings-cache",
        type=Path,
        metavar="DIR",
        help="keep the prompts' embeddings here, reused by later runs with the same encoder",
    )
    p.add_argument(
        "--server",
        metavar="ADDR",
        help="drive a live banditd at ADDR (host:port) over gRPC instead of in process",
    )
    p.add_argument(
        "--tenant", default=DEFAULT_TENANT, help="with --server: the routers' tenant (%(default)s)"
    )
    add_client_arguments(p)  # with --server
    p.add_argument(
        "--keep-routers",
        action="store_true",
        help="with --server: replay the routers as they are there (say warm-started with "
        "`banditd warm-start`) instead of creating them fresh",
    )
    p.add_argument(
        "--print-router",
        action="store_true",
        help="print the RouterConfig JSON of the router this replay runs, and stop",
    )
    p.add_argument("--plot", type=Path, help="write a quality-cost plot (PNG; needs matplotlib)")
    progress.add_quiet_flag(p)
