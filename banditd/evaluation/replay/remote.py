"""`banditd replay --server ADDR`: the stream driven through a live banditd over gRPC.

Per seed (and cost weight of a sweep) a fresh router is created under the tenant (by default
"replay"): ``replay-<seed>`` (``replay-<seed>-w<cost weight>`` for the other points of a sweep),
deleted first if it exists, with the file's models as arms priced as ``--arm-prices`` says and the
options' policy and context settings. With ``--keep-routers`` the routers must exist already, with
those context settings (warm-started with `banditd warm-start`, say): they keep their feedback log
and only take the options' configuration. Then for each prompt in file order: Select (the prompt
text, the ``--metadata-from`` fields as request metadata), the chosen model's outcome looked up in
the file, and Feedback (its quality as the reward, or with ``--feedback thumbs`` a thumbs-up drawn
with probability = quality, from the same draws as in process; its real cost as cost_usd; its
latency_ms and energy_wh where the file has them). ``--latency-weight``, ``--energy-weight`` and
``--max-latency-ms`` go in every SelectRequest; a Select refused for max_latency_ms is a refused
prompt, as in process. The picks are scored exactly as in process, so the report is the same for
the same picks: the server draws unseeded, so only LinUCB without pairwise feedback (whose
challenger is drawn) picks as in process. One call at a time, each with a deadline; a server
that cannot be reached within the connect timeout is a clear error.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np

from banditd import errors
from banditd.domain import ROUTER_POLICIES, RouterSpec
from banditd.edge import codec
from banditd.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from banditd.evaluation.replay.data import Outcomes
from banditd.evaluation.replay.engine import REFUSED, THUMBS_STREAM, measured, preference
from banditd.evaluation.replay.options import NO_TRADE_OFF, Server, TradeOff
from banditd.policy.base import IntArray
from banditd.v1 import banditd_pb2 as pb
from banditd.v1 import banditd_pb2_grpc as rpc

CALL_TIMEOUT_S = 30.0  # one Select, Feedback or PutRouter
# What x, the choice and the prior depend on: a kept router must match the replay's options in
# these (and its arms), or the report would describe a router other than the one that ran.
MATCHED_FIELDS = (
    "encoder",
    "embedding_dim",
    "text_window_tokens",
    "metadata_keys",
    "metadata_slots",
    "pca_dim",
    "pca_fit_samples",
    "knn_k",
    "policy",
    "alpha",
    "prior_quality",
    "prior_weight",
)


def check_remote(
    policy: str, warm_start: object, budget_usd: object, sweep_budgets: object
) -> None:
    """Refuse what a live server cannot replay the way the in-process run does."""
    if policy not in ROUTER_POLICIES:
        raise InvalidArgument(
            "server",
            f"needs a policy the server runs ({', '.join(ROUTER_POLICIES)}), not {policy!r}",
        )
    for given, flag, why in (
        (
            warm_start,
            "--warm-start",
            "warm-start its routers with `banditd warm-start`, then use --keep-routers",
        ),
        (budget_usd, "--budget-usd", "a server's budgets are paced over wall-clock periods"),
        (sweep_budgets, "--sweep-budgets", "a server's budgets are paced over wall-clock periods"),
    ):
        if given is not None:
            raise InvalidArgument("server", f"{flag} is not supported with --server ({why})")


def check_kept(admin: rpc.AdminStub, spec: RouterSpec, auth: object) -> None:
    """The server's router ``spec`` names exists with spec's arms, context settings, policy and
    prior, so its events (a warm start's) are the replay's data and the report describes it; else
    a clear error."""
    try:
        found = admin.GetRouter(
            pb.GetRouterRequest(tenant=spec.tenant, name=spec.name),
            metadata=auth,
            timeout=CALL_TIMEOUT_S,
        )
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
        raise NotFound(
            f"--keep-routers: no router {spec.tenant}/{spec.name} on the server; create and "
            "warm-start it first (banditd warm-start --router-config)"
        ) from None
    live = codec.spec_from_proto(found.router)
    differ = [f for f in MATCHED_FIELDS if getattr(live, f) != getattr(spec, f)]
    if [a.name for a in live.arms] != [a.name for a in spec.arms]:
        differ.insert(0, "arms")
    if differ:
        raise FailedPrecondition(
            f"--keep-routers: router {spec.tenant}/{spec.name} on the server differs from the "
            f"replay's options in {', '.join(differ)}"
        )


def router_name(seed: int, cost_weight: float, main_cost_weight: float) -> str:
    """The router of one run: replay-<seed>, with -w<cost weight> for a sweep's other points."""
    if cost_weight == main_cost_weight:
        return f"replay-{seed}"
    return f"replay-{seed}-w{cost_weight:g}"


def _select(
    router: rpc.RouterStub, request: pb.SelectRequest, auth: object, trade_off: TradeOff
) -> pb.SelectResponse | None:
    """Select's answer; None when it is FAILED_PRECONDITION for max_latency_ms."""
    try:
        response: pb.SelectResponse = router.Select(request, metadata=auth, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as exc:
        if (
            trade_off.max_latency_ms is None
            or exc.code() != grpc.StatusCode.FAILED_PRECONDITION
            or "max_latency_ms" not in (exc.details() or "")
        ):
            raise
        return None
    return response


def _preference(
    signal: pb.FeedbackRequest, quality: float, rival: float, coin: float
) -> pb.FeedbackRequest:
    """The side-by-side rating as a preference: no per-arm measurement goes with it."""
    won, _ = preference(quality, float(rival), float(coin))
    return pb.FeedbackRequest(
        tenant=signal.tenant,
        decision_id=signal.decision_id,
        cost_usd=signal.cost_usd,
        preference=pb.PREFER_ARM if won else pb.PREFER_CHALLENGER,
    )


def learn_remote(
    spec: RouterSpec,
    outcomes: Outcomes,
    *,
    server: Server,
    seed: int,
    feedback: str,
    progress: Callable[[int], None],
    trade_off: TradeOff = NO_TRADE_OFF,
    duels: IntArray | None = None,
) -> tuple[IntArray, float]:
    """Route the stream through the live router ``spec`` describes (created fresh), sending
    each chosen model's outcome as feedback (with its latency and energy where the file has
    them); the arm (column of outcomes) per prompt, shape (n,), REFUSED where Select found no
    arm under trade_off's max_latency_ms; and the router's prior_level (GetStats) at the end.
    Server errors raise from banditd.errors, naming the
    address and the status. feedback "pairwise": Select with compare, and a preference for
    the better answer (both answers' cost reported); duels, shape (n,), gets the challengers."""
    config = codec.spec_to_proto(spec)
    thumbs = np.random.default_rng([seed, THUMBS_STREAM]).random(outcomes.n)
    column = {arm: j for j, arm in enumerate(outcomes.arms)}
    metadata = outcomes.metadata or ({},) * outcomes.n
    picks = np.full(outcomes.n, REFUSED, dtype=np.int64)
    auth = server.security.metadata
    with server.security.channel(server.address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=server.connect_timeout_s)
        except grpc.FutureTimeoutError:
            raise Unavailable(
                f"cannot reach banditd at {server.address} "
                f"(no connection within {server.connect_timeout_s:g} s)"
            ) from None
        admin, router = rpc.AdminStub(channel), rpc.RouterStub(channel)
        try:
            if server.keep_routers:
                check_kept(admin, spec, auth)
            else:
                admin.DeleteRouter(
                    pb.DeleteRouterRequest(tenant=spec.tenant, name=spec.name),
                    metadata=auth,
                    timeout=CALL_TIMEOUT_S,
                )
            admin.PutRouter(
                pb.PutRouterRequest(router=config), metadata=auth, timeout=CALL_TIMEOUT_S
            )
            for t, prompt in enumerate(outcomes.prompts):
                request = pb.SelectRequest(
                    tenant=spec.tenant,
                    router=spec.name,
                    prompt=prompt,
                    metadata=metadata[t],
                    latency_weight=trade_off.latency_weight,
                    energy_weight=trade_off.energy_weight,
                    max_latency_ms=trade_off.max_latency_ms,
                    compare=feedback == "pairwise",
                )
                decision = _select(router, request, auth, trade_off)
                if decision is None:  # no arm under max_latency_ms: refused, as in process
                    progress(t + 1)
                    continue
                j = column[decision.arm]
                quality, cost = float(outcomes.quality[t, j]), float(outcomes.cost[t, j])
                signal = pb.FeedbackRequest(
                    tenant=spec.tenant,
                    decision_id=decision.decision_id,
                    cost_usd=cost,
                    latency_ms=measured(outcomes.latency_ms, t, j),
                    energy_wh=measured(outcomes.energy_wh, t, j),
                )
                if decision.challenger:
                    k = column[decision.challenger]
                    signal = _preference(signal, quality, outcomes.quality[t, k], thumbs[t])
                    signal.cost_usd += float(outcomes.cost[t, k])
                    if duels is not None:
                        duels[t] = k
                elif feedback == "thumbs":
                    signal.thumb = pb.THUMB_UP if thumbs[t] < quality else pb.THUMB_DOWN
                else:
                    signal.reward = quality
                if feedback != "pairwise" or decision.challenger:  # else: nothing compared
                    router.Feedback(signal, metadata=auth, timeout=CALL_TIMEOUT_S)
                picks[t] = j
                progress(t + 1)
            stats = admin.GetStats(
                pb.GetStatsRequest(tenant=spec.tenant, name=spec.name),
                metadata=auth,
                timeout=CALL_TIMEOUT_S,
            )
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
            message = f"banditd at {server.address} answered {code.name}: {details}"
            raise errors.from_status(code.name, message) from exc
    return picks, stats.prior_level
