"""Off-policy evaluation on a router's log weighs each decision's cost as its Select did: the
request's own cost_weight (else the default), raised to the budget pacer's price."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import grpc
import numpy as np
import pytest
import structlog
from google.protobuf import json_format
from sqlalchemy import delete

from banditd.commands import cli
from banditd.domain import ArmSpec, RouterSpec
from banditd.errors import FailedPrecondition
from banditd.flows.candidates import evaluate_candidate, render_text, report
from banditd.flows.ope_log import DecisionLog, LoggedDecision
from banditd.store import Database
from banditd.store.models import router_versions
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import EMBEDDING, Running, StartServer, dear_dollars, router_config, wait_until

ARMS = ("cheap", "strong")
REWARD = {"cheap": 0.2, "strong": 0.9}
COST = {"cheap": 0.0001, "strong": 0.01}
HEAVY = 1e5  # a request's cost weight at which the cost decides: cheap wins by far


async def select_and_feed(server: Running, cost_weight: float | None) -> pb.SelectResponse:
    d = await server.router.Select(
        pb.SelectRequest(tenant="acme", router="chat", embedding=EMBEDDING, cost_weight=cost_weight)
    )
    await server.router.Feedback(
        pb.FeedbackRequest(
            tenant="acme", decision_id=d.decision_id, reward=REWARD[d.arm], cost_usd=COST[d.arm]
        )
    )
    return d


async def test_each_decision_is_scored_at_its_requests_cost_weight(
    sqlite_url: str, start_server: StartServer
) -> None:
    """Half the evaluated requests carried a heavy cost weight. A greedy candidate picks cheap
    for those and strong for the rest (by default it would pick strong for all), and their
    utility counts cost at that weight; the IPS estimates match the hand-computed ones."""
    server = await start_server(sqlite_url)
    live = router_config(arms=ARMS, policy="epsilon-greedy", exploration=0.5)
    await server.admin.PutRouter(pb.PutRouterRequest(router=live))
    for _ in range(40):  # the posterior learns that strong is better, at the default weight 0
        await select_and_feed(server, None)
    weights = [HEAVY if i % 2 else None for i in range(20)]
    decisions = [await select_and_feed(server, w) for w in weights]
    candidate = router_config(arms=ARMS, policy="epsilon-greedy", exploration=0.1)
    report = await server.admin.Evaluate(
        pb.EvaluateRequest(
            tenant="acme", name="chat", candidates=[candidate], bootstrap_replicates=10, limit=20
        )
    )

    # By hand: the candidate gives its greedy arm 0.95 and the other 0.05.
    def ips(picks: list[str], lam: list[float]) -> tuple[float, float, float]:
        terms = [
            (0.95 if d.arm == pick else 0.05) / d.propensity * np.array([r, c, r - w * c])
            for d, pick, w in zip(decisions, picks, lam, strict=True)
            for r, c in [(REWARD[d.arm], COST[d.arm])]
        ]
        reward, cost, utility = np.mean(terms, axis=0)
        return float(reward), float(cost), float(utility)

    picks = ["strong" if w is None else "cheap" for w in weights]
    lam = [0.0 if w is None else w for w in weights]
    expected = ips(picks, lam)
    at_default = ips(["strong"] * 20, [0.0] * 20)  # every decision at the router's default
    estimate = report.candidates[0].estimates[0]
    assert estimate.estimator == "ips"
    got = (estimate.reward.value, estimate.cost_usd.value, estimate.utility.value)
    assert got == pytest.approx(expected, rel=1e-9)
    assert estimate.reward.value != pytest.approx(at_default[0], rel=1e-3)
    assert report.candidates[0].agreement == pytest.approx(
        np.mean([0.95 if d.arm == p else 0.05 for d, p in zip(decisions, picks, strict=True)])
    )
    assert report.cost_weight == 0.0 and report.mean_cost_weight == pytest.approx(HEAVY / 2)
    assert report.request_cost_weights == 10 and report.budget_raised_cost_weights == 0
    logged = np.mean([REWARD[d.arm] - w * COST[d.arm] for d, w in zip(decisions, lam, strict=True)])
    assert report.logged_utility == pytest.approx(logged)

    # An explicit cost weight is the utility's for every decision; the choices do not change.
    fixed = await server.admin.Evaluate(
        pb.EvaluateRequest(
            tenant="acme",
            name="chat",
            candidates=[candidate],
            bootstrap_replicates=10,
            limit=20,
            cost_weight=0.0,
        )
    )
    ips_fixed = fixed.candidates[0].estimates[0]
    assert ips_fixed.reward.value == pytest.approx(expected[0], rel=1e-9)
    assert ips_fixed.utility.value == pytest.approx(ips(picks, [0.0] * 20)[2], rel=1e-9)
    assert fixed.cost_weight == 0.0 and fixed.mean_cost_weight == 0.0


async def test_under_a_budget_a_candidate_scores_at_the_pacers_price(
    sqlite_url: str, start_server: StartServer
) -> None:
    """The budget pacer's price raised the live choice's cost weight: the live configuration,
    evaluated as a candidate on its own (deterministic) log, agrees with every decision."""
    server = await start_server(sqlite_url, budget_refresh_s=3600)
    for tenant, name in (("acme", "chat"), ("other", "chat")):
        await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(tenant, name)))
    await dear_dollars(server)
    for _ in range(3):
        live = await server.router.Select(
            pb.SelectRequest(tenant="acme", router="chat", embedding=EMBEDDING)
        )
        free = await server.router.Select(
            pb.SelectRequest(tenant="other", router="chat", embedding=EMBEDDING)
        )
        assert live.budget_price > 0 and live.arm != free.arm  # the price changed the choice
        await server.router.Feedback(
            pb.FeedbackRequest(tenant="acme", decision_id=live.decision_id, reward=1)
        )

    async def evaluated() -> pb.EvaluateResponse | None:
        report = await server.admin.Evaluate(
            pb.EvaluateRequest(
                tenant="acme", name="chat", candidates=[router_config()], bootstrap_replicates=10
            )
        )
        return report if report.decisions == 3 else None

    report = await wait_until(evaluated, "the three decisions with feedback to be logged")
    [candidate] = report.candidates
    assert candidate.agreement == 1.0
    assert candidate.effective_sample_size == pytest.approx(3.0)
    assert report.budget_raised_cost_weights == 3 and report.request_cost_weights == 0
    assert report.mean_cost_weight > report.cost_weight == 0.0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"metadata_keys": ["app"]}, "metadata_keys"),  # x longer than the logged one
        ({"pca_dim": 2}, "pca_dim"),  # shorter
        ({"knn_k": 5}, "knn_k"),
        ({"text_window_tokens": 64}, "text_window_tokens"),  # the same size, built otherwise
    ],
)
async def test_a_candidate_that_builds_x_otherwise_is_refused(
    sqlite_url: str, start_server: StartServer, change: dict[str, object], field: str
) -> None:
    """The log holds the router's x only: a candidate whose context settings build x of another
    size or another way would score vectors that are not its own (past the end of a shorter
    one), so it is refused, naming the setting, rather than given numbers."""
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(arms=ARMS)))
    for _ in range(5):
        await select_and_feed(server, None)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.admin.Evaluate(
            pb.EvaluateRequest(
                tenant="acme",
                name="chat",
                candidates=[router_config(arms=ARMS, **change)],
                bootstrap_replicates=10,
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(f"candidate.{field}: ")


def test_a_candidates_arm_the_log_never_offered_is_named_in_the_warnings() -> None:
    """An arm added by the candidate was eligible at no logged decision: the estimate is of the
    candidate without it, and the warnings say so (it used to be silent, the numbers read as
    the new arm's)."""
    live = RouterSpec("acme", "chat", (ArmSpec("cheap", 0.1, 0.4), ArmSpec("strong", 3, 15)))
    log = alternating_log(live, 20)
    assert not evaluate_candidate(live, log, cost_weight=0.0, replicates=0).warnings
    wider = dataclasses.replace(live, arms=(*live.arms, ArmSpec("fresh", 1, 1)))
    result = evaluate_candidate(wider, log, cost_weight=0.0, replicates=0)
    assert any(w.startswith("new arms: fresh ") for w in result.warnings), result.warnings


def alternating_log(live: RouterSpec, n: int) -> DecisionLog:
    """n decisions without weights of their own, alternating cheap and strong at propensity 0.5."""
    rng = np.random.default_rng(0)
    return DecisionLog(
        tuple(
            LoggedDecision(
                created_at=float(t),
                x=np.concatenate([[1.0], rng.normal(size=live.dim - 1)]),
                candidates=ARMS,
                expected_costs=(COST["cheap"], COST["strong"]),
                arm=ARMS[t % 2],
                propensity=0.5,
                reward=REWARD[ARMS[t % 2]],
                cost_usd=COST[ARMS[t % 2]],
            )
            for t in range(n)
        ),
        (),
    )


@pytest.mark.parametrize("given", [True, False])
def test_one_weight_for_every_decision_is_reported_as_itself(given: bool) -> None:
    """One weight for every decision (the caller's, or the router's default where no request
    had one): its mean is that weight, as docs/evaluation.md says, and the text header names it.
    Before, the mean was a float sum over n (0.1 x 3 / 3 = 0.10000000000000002), so the header
    read the --cost-weight as "the decision's cost weight (mean 0.1; the live router's default
    0.1, 0 requests' own ...)" and mean_cost_weight != cost_weight."""
    arms = (ArmSpec("cheap", 0.1, 0.4), ArmSpec("strong", 3, 15))
    weights = {"default_latency_weight": 0.1, "default_energy_weight": 0.1}
    live = RouterSpec("acme", "chat", arms, default_cost_weight=0.0 if given else 0.1, **weights)
    log = alternating_log(live, 3)
    flags = {"cost_weight": 0.1, "latency_weight": 0.1, "energy_weight": 0.1} if given else {}
    out = report("acme/chat", live, log, [("live", live)], replicates=0, **flags)
    assert (out["cost_weight"], out["mean_cost_weight"]) == (0.1, 0.1)
    assert (out["mean_latency_weight"], out["mean_energy_weight"]) == (0.1, 0.1)
    assert "feedback; utility = reward - 0.1 x cost" in render_text(out).splitlines()[0]


def test_the_text_header_names_the_latency_and_energy_weights() -> None:
    """The utility takes off latency and energy at their weights: the text report's header says
    so (it named the cost weight alone, "utility = reward - 0 x cost", while the numbers under
    it had latency and energy taken off)."""
    live = RouterSpec("acme", "chat", (ArmSpec("cheap", 0.1, 0.4), ArmSpec("strong", 3, 15)))
    log = alternating_log(live, 4)
    out = report("acme/chat", live, log, [("live", live)], replicates=0, latency_weight=2.5)
    header = render_text(out).splitlines()[0]
    assert header.endswith("utility = reward - 0 x cost - 2.5 x latency (s)")
    out = report("acme/chat", live, log, [("live", live)], replicates=0, energy_weight=0.5)
    assert render_text(out).splitlines()[0].endswith("- 0 x cost - 0.5 x energy (Wh)")


async def test_a_decision_without_its_own_weight_is_scored_at_its_router_versions_default(
    sqlite_url: str, start_server: StartServer
) -> None:
    """The router's default cost weight changed between two runs of decisions whose requests
    had none: each is scored at the default its Select ranked by (version 1's 0, version 2's
    HEAVY), not all at today's. A decision whose version the history no longer holds (as for
    routers older than migration 0008) takes today's default, and the report counts it."""
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(arms=ARMS)))
    first = [await select_and_feed(server, None) for _ in range(10)]
    heavy = router_config(arms=ARMS, default_cost_weight=HEAVY)
    await server.admin.PutRouter(pb.PutRouterRequest(router=heavy))
    second = [await select_and_feed(server, None) for _ in range(10)]
    request = pb.EvaluateRequest(
        tenant="acme", name="chat", candidates=[router_config(arms=ARMS)], bootstrap_replicates=0
    )

    def utility(weights: list[float]) -> float:
        decisions = first + second
        return float(
            np.mean(
                [REWARD[d.arm] - w * COST[d.arm] for d, w in zip(decisions, weights, strict=True)]
            )
        )

    report = await server.admin.Evaluate(request)
    assert report.decisions == 20 and report.cost_weight == HEAVY
    assert report.mean_cost_weight == pytest.approx(HEAVY / 2)
    assert report.logged_utility == pytest.approx(utility([0.0] * 10 + [HEAVY] * 10))
    assert report.unversioned_decisions == 0

    db = Database(sqlite_url)
    try:
        async with db.transaction() as conn:
            await conn.execute(delete(router_versions).where(router_versions.c.version == 1))
    finally:
        await db.close()
    fallback = await server.admin.Evaluate(request)
    assert fallback.unversioned_decisions == 10
    assert fallback.mean_cost_weight == HEAVY
    assert fallback.logged_utility == pytest.approx(utility([HEAVY] * 20))


LATENCY_MS = {"cheap": 100.0, "strong": 20_000.0}
ENERGY_WH = {"cheap": 0.5, "strong": 5.0}


async def test_each_decision_is_scored_at_its_requests_latency_and_energy_weights(
    sqlite_url: str,
    start_server: StartServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A third of the evaluated requests carried a latency weight that makes slow strong lose
    to cheap, a third an energy weight (no arm has an expected energy: it changes no choice).
    The utility takes off each decision's latency and energy, as reported, at its own weights;
    the candidate picks cheap where the latency weight made Select do so; the IPS estimates
    match the hand-computed ones (before: the weights were not logged, the utility had no such
    terms and the candidate ranked on quality and USD)."""
    server = await start_server(sqlite_url)
    live = router_config(arms=ARMS, policy="epsilon-greedy", exploration=0.5)
    for arm in live.arms:
        arm.prior_latency_ms = LATENCY_MS[arm.name]
    await server.admin.PutRouter(pb.PutRouterRequest(router=live))

    async def select_and_feed_timed(weights: dict[str, float]) -> pb.SelectResponse:
        d = await server.router.Select(
            pb.SelectRequest(tenant="acme", router="chat", embedding=EMBEDDING, **weights)
        )
        await server.router.Feedback(
            pb.FeedbackRequest(
                tenant="acme",
                decision_id=d.decision_id,
                reward=REWARD[d.arm],
                cost_usd=COST[d.arm],
                latency_ms=LATENCY_MS[d.arm],
                energy_wh=ENERGY_WH[d.arm],
            )
        )
        return d

    for _ in range(40):  # the posterior learns that strong is better, at no weights
        await select_and_feed_timed({})
    asked = [({"latency_weight": 1.0}, {"energy_weight": 0.1}, {})[i % 3] for i in range(21)]
    decisions = [await select_and_feed_timed(w) for w in asked]
    candidate = router_config(arms=ARMS, policy="epsilon-greedy", exploration=0.1)
    report = await server.admin.Evaluate(
        pb.EvaluateRequest(
            tenant="acme", name="chat", candidates=[candidate], bootstrap_replicates=0, limit=21
        )
    )

    def utility(d: pb.SelectResponse, w: dict[str, float]) -> float:
        seconds = LATENCY_MS[d.arm] / 1000.0
        lost = (
            w.get("latency_weight", 0.0) * seconds + w.get("energy_weight", 0.0) * ENERGY_WH[d.arm]
        )
        return REWARD[d.arm] - lost

    assert decisions[0].arm == "cheap" or decisions[0].explored  # the latency weight's choice
    picks = ["cheap" if "latency_weight" in w else "strong" for w in asked]
    terms = [
        (0.95 if d.arm == pick else 0.05) / d.propensity * np.array([REWARD[d.arm], utility(d, w)])
        for d, pick, w in zip(decisions, picks, asked, strict=True)
    ]
    reward, expected_utility = np.mean(terms, axis=0)
    ips = report.candidates[0].estimates[0]
    assert ips.estimator == "ips"
    assert ips.reward.value == pytest.approx(reward, rel=1e-9)
    assert ips.utility.value == pytest.approx(expected_utility, rel=1e-9)
    logged = np.mean([utility(d, w) for d, w in zip(decisions, asked, strict=True)])
    assert report.logged_utility == pytest.approx(logged)
    assert report.mean_latency_weight == pytest.approx(7 / 21)
    assert report.mean_energy_weight == pytest.approx(0.7 / 21)
    assert report.request_latency_weights == 7 and report.request_energy_weights == 7

    # One latency and one energy weight for every decision (EvaluateRequest.latency_weight and
    # energy_weight; `banditd evaluate --latency-weight --energy-weight`): the utility takes them
    # for every decision, the candidate's choices keep each decision's own (the same picks).
    # Before: no such fields or flags, each decision's own weights only.
    given = {"latency_weight": 2.0, "energy_weight": 0.5}
    expected_utility = np.mean(
        [
            (0.95 if d.arm == pick else 0.05) / d.propensity * utility(d, given)
            for d, pick in zip(decisions, picks, strict=True)
        ]
    )
    logged = np.mean([utility(d, given) for d in decisions])
    fixed = await server.admin.Evaluate(
        pb.EvaluateRequest(
            tenant="acme",
            name="chat",
            candidates=[candidate],
            bootstrap_replicates=0,
            limit=21,
            **given,
        )
    )
    assert fixed.candidates[0].estimates[0].utility.value == pytest.approx(expected_utility)
    assert fixed.logged_utility == pytest.approx(logged)
    assert (fixed.mean_latency_weight, fixed.mean_energy_weight) == (2.0, 0.5)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.admin.Evaluate(
            pb.EvaluateRequest(tenant="acme", name="chat", candidates=[candidate], energy_weight=-1)
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "energy_weight: must be in [0, 1e+09], got -1"

    path = tmp_path / "candidate.json"
    path.write_text(json_format.MessageToJson(candidate))
    argv = ["evaluate", "--router", "acme/chat", "--candidate", str(path), "--limit", "21"]
    argv += ["--database-url", sqlite_url, "--bootstrap", "1", "--json"]
    argv += ["--latency-weight", "2", "--energy-weight", "0.5"]
    capsys.readouterr()
    with structlog.testing.capture_logs():  # the server's logs, not the command's output
        assert await asyncio.to_thread(cli.main, argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["logged"]["utility"] == pytest.approx(logged)
    ips = out["candidates"][0]["estimates"][0]
    assert ips["estimator"] == "ips" and ips["utility"]["value"] == pytest.approx(expected_utility)
    assert (out["mean_latency_weight"], out["mean_energy_weight"]) == (2.0, 0.5)


def test_decisions_without_any_of_the_candidates_arms_are_skipped_with_a_warning() -> None:
    """The router's arms were all replaced: 20 old decisions offered cheap and strong only, 10
    new ones new and newer. A candidate on the new arms is estimated on the 10 new decisions
    alone, each at its own utility weight, exactly as on a log of those 10, with a warning that
    counts the skipped ones (before: refused, "candidate.arms: the candidate has none of the
    arms that were eligible at 20 of 30 logged decisions", until the old ones left the window).
    With none of its arms anywhere, it is refused under its own name."""
    live = RouterSpec("acme", "chat", (ArmSpec("new", 1, 1), ArmSpec("newer", 2, 2)))
    swap = {"cheap": "new", "strong": "newer"}
    old = alternating_log(live, 20).decisions
    new = tuple(
        dataclasses.replace(
            d, created_at=20.0 + i, candidates=("new", "newer"), arm=swap[d.arm], reward=i / 10
        )
        for i, d in enumerate(alternating_log(live, 10).decisions)
    )
    weights = np.r_[np.full(20, 1e6), np.arange(10.0)]  # each decision's own cost weight
    got = evaluate_candidate(live, DecisionLog(old + new, ()), cost_weight=weights, replicates=50)
    alone = evaluate_candidate(live, DecisionLog(new, ()), cost_weight=weights[20:], replicates=50)
    assert got.n == 10 and got.estimates == alone.estimates
    assert got.effective_sample_size == alone.effective_sample_size
    # The live policy on those 10 too, to compare like with like (the report's logged values
    # cover all 30).
    reward, cost = np.array([d.reward for d in new]), np.array([d.cost_usd for d in new])
    utility = float(np.mean(reward - weights[20:] * cost))
    assert [w for w in got.warnings if w not in alone.warnings] == [
        "skipped decisions: 20 of 30 logged decisions had none of its arms eligible (as when "
        "they were made before the router's arms were replaced), so they tell nothing about it; "
        "its estimates rest on the other 10",
        f"on the 10 decisions kept the live policy earned utility {utility:.4f} (reward "
        f"{reward.mean():.4f}, cost ${cost.mean():.6f}); the report's logged values cover all 30",
    ]

    elsewhere = dataclasses.replace(live, arms=(ArmSpec("elsewhere", 1, 1),))
    with pytest.raises(FailedPrecondition) as refused:
        report("acme/chat", live, DecisionLog(old, ()), [("shadow ucb", elsewhere)], replicates=0)
    assert refused.value.message == (
        "shadow ucb: none of its arms (elsewhere) was eligible at any of the 20 logged decisions "
        "(they offered cheap, strong), so no decision is left to evaluate it on; decisions "
        "logged on its arms will be"
    )
