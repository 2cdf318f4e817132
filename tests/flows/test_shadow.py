"""Shadow policies: logged beside every Select, never changing it; compared in GetStats and
Evaluate; and `banditd evaluate` on the same log."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import json_format

from banditd.edge import codec
from banditd.flows.select import SelectInput, Selector
from banditd.flows.tokens import TokenSigner
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import SIGNING_KEY, Running, StartServer, dear_dollars, router_config, wait_until

SHADOWS = [
    pb.ShadowPolicy(name="ucb", policy="linucb"),
    pb.ShadowPolicy(name="ts", policy="thompson", exploration=2.0, cost_weight=100.0),
]


def embedding(rng: np.random.Generator) -> list[float]:
    return [float(v) for v in rng.normal(size=4)]


async def test_shadows_never_change_the_live_decision(
    sqlite_url: str, start_server: StartServer
) -> None:
    # Two routers alike but for their shadows, both without feedback (the same posterior): with
    # the same seeds, Thompson sampling answers each request identically, draws and all.
    server = await start_server(sqlite_url)
    plain = router_config(name="plain", policy="thompson", exploration=2.0)
    shadowed = router_config(name="shadowed", policy="thompson", exploration=2.0, shadows=SHADOWS)
    for config in (plain, shadowed):
        await server.admin.PutRouter(pb.PutRouterRequest(router=config))
    rng = np.random.default_rng(3)
    app = server.app
    for seed in range(30):
        x = embedding(rng)
        answers = []
        for name in ("plain", "shadowed"):
            selector = Selector(
                app.catalog,
                app.decisions,
                TokenSigner(SIGNING_KEY.encode()),
                max_prompt_chars=1000,
                max_metadata_entries=8,
                seeds=lambda seed=seed: seed,  # type: ignore[misc]
            )
            answers.append(
                await selector.select(SelectInput(tenant="acme", router=name, embedding=x))
            )
        live, with_shadows = answers
        assert not live.shadows and {s.shadow for s in with_shadows.shadows} == {"ucb", "ts"}
        assert with_shadows.arm == live.arm and with_shadows.propensity == live.propensity
        assert with_shadows.ranking == live.ranking


async def feed(server: Running, rounds: int, seed: int = 0) -> None:
    """Select and feed back: 'cheap' is the good arm where x0 > 0, 'strong' elsewhere."""
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        x = embedding(rng)
        d = await server.router.Select(
            pb.SelectRequest(tenant="acme", router="chat", embedding=pb.Embedding(values=x))
        )
        good = "cheap" if x[0] > 0 else "strong"
        await server.router.Feedback(
            pb.FeedbackRequest(
                tenant="acme",
                decision_id=d.decision_id,
                reward=0.9 if d.arm == good else 0.2,
                cost_usd=0.001,
            )
        )


async def test_under_a_budget_shadows_score_at_the_cost_weight_the_live_choice_used(
    sqlite_url: str, start_server: StartServer
) -> None:
    """The budget pacer's price is the least cost weight the live choice uses: a shadow that is
    the live policy's twin scores at that weight too, so it agrees with every live decision and
    gives the live arm probability 1 (its IPS weight), though the price changes the choice."""
    server = await start_server(sqlite_url, budget_refresh_s=3600)
    twin = [pb.ShadowPolicy(name="twin", policy="linucb")]
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(shadows=twin)))
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config("other", "chat")))
    await dear_dollars(server)
    x = pb.Embedding(values=[1.0, 0.0, 0.0, 0.0])
    for _ in range(3):
        live = await server.router.Select(
            pb.SelectRequest(tenant="acme", router="chat", embedding=x)
        )
        free = await server.router.Select(
            pb.SelectRequest(tenant="other", router="chat", embedding=x)
        )
        assert live.budget_price > 0 and live.arm != free.arm  # the price changed the choice
        await server.router.Feedback(
            pb.FeedbackRequest(tenant="acme", decision_id=live.decision_id, reward=1)
        )

    async def twin_stats() -> pb.ShadowStats | None:
        stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
        return next((s for s in stats.shadows if s.feedback_count == 3), None)

    stats = await wait_until(twin_stats, "the decisions and their feedback to be logged")
    assert stats.decisions == 3 and stats.agreement == 1.0
    assert stats.effective_sample_size == pytest.approx(3.0)  # probability 1 of each live arm


async def test_stats_and_evaluate_compare_live_and_shadows(
    database_url: str, start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(database_url)
    live = router_config(policy="epsilon-greedy", exploration=0.5, shadows=SHADOWS)
    await server.admin.PutRouter(pb.PutRouterRequest(router=live))
    await feed(server, 80)
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.feedback_count == 80
    assert stats.mean_reward == pytest.approx(
        sum(a.mean_reward * a.feedback_count for a in stats.arms) / 80
    )
    assert stats.mean_cost_usd == pytest.approx(0.001)
    assert [s.name for s in stats.shadows] == ["ts", "ucb"]
    for shadow in stats.shadows:
        assert shadow.decisions == 80 and shadow.feedback_count == 80
        assert 0.0 < shadow.agreement <= 1.0
        assert 0.2 <= shadow.estimated_mean_reward <= 0.9
        assert shadow.estimated_mean_cost_usd == pytest.approx(0.001)
        assert 0.0 < shadow.effective_sample_size <= 80.0

    # Evaluate with no candidates: the router's shadows.
    report = await server.admin.Evaluate(
        pb.EvaluateRequest(tenant="acme", name="chat", bootstrap_replicates=200)
    )
    assert report.decisions == 80 and report.version == 1
    assert [c.name for c in report.candidates] == ["shadow ucb", "shadow ts"]
    for c in report.candidates:
        assert [e.estimator for e in c.estimates] == ["ips", "snips", "dm", "dr"]
        dr = c.estimates[3].reward
        assert dr.low <= dr.value <= dr.high
    assert report.logged_reward == pytest.approx(stats.mean_reward)
    # Offline, the shadow's posterior at each decision is rebuilt from the log: for the
    # deterministic shadow it is the one the live Select used, so the estimates agree exactly.
    recorded = next(s for s in stats.shadows if s.name == "ucb")
    rebuilt = report.candidates[0]
    assert rebuilt.estimates[1].reward.value == pytest.approx(recorded.estimated_mean_reward)
    assert rebuilt.effective_sample_size == pytest.approx(recorded.effective_sample_size)

    # A candidate file through the CLI, on the same database.
    candidate = tmp_path / "candidate.json"
    config = router_config(policy="linucb", exploration=0.5)
    candidate.write_text(json_format.MessageToJson(config))
    if database_url.startswith("sqlite"):  # the server's database file, read beside it
        args = ["evaluate", "--router", "acme/chat", "--candidate", str(candidate)]
        args += ["--database-url", database_url, "--bootstrap", "100", "--json"]
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "banditd.commands.cli", *args, stdout=asyncio.subprocess.PIPE
        )
        stdout, _ = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode == 0
        out = json.loads(stdout)
        assert out["decisions"] == 80 and out["router"] == "acme/chat"
        assert out["logged"]["reward"] == pytest.approx(stats.mean_reward)
        [row] = out["candidates"]
        assert row["name"] == "candidate 1" and row["policy"] == "linucb"
        assert [e["estimator"] for e in row["estimates"]] == ["ips", "snips", "dm", "dr"]


async def test_evaluate_refuses_bad_requests(sqlite_url: str, start_server: StartServer) -> None:
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))

    async def code(request: pb.EvaluateRequest) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await server.admin.Evaluate(request)
        return err.value.code(), err.value.details() or ""

    unknown = await code(pb.EvaluateRequest(tenant="acme", name="nope"))
    assert unknown == (grpc.StatusCode.NOT_FOUND, "tenant 'acme' has no router 'nope'")
    assert (await code(pb.EvaluateRequest(tenant="acme", name="chat")))[1].startswith(
        "candidates: give at least one candidate"
    )
    candidate = router_config(tenant="", name="")
    empty = await code(pb.EvaluateRequest(tenant="acme", name="chat", candidates=[candidate]))
    assert empty[0] == grpc.StatusCode.FAILED_PRECONDITION
    assert "no logged decisions with feedback" in empty[1]
    await feed(server, 5)
    wide = router_config(embedding_dim=8)
    assert await code(pb.EvaluateRequest(tenant="acme", name="chat", candidates=[wide])) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "candidate.embedding_dim: 8 differs from the router's 4: the log holds contexts of the "
        "router's size only (the prompts are not logged)",
    )
    other_arms = router_config(arms=("elsewhere",))
    missing = await code(pb.EvaluateRequest(tenant="acme", name="chat", candidates=[other_arms]))
    assert missing[0] == grpc.StatusCode.FAILED_PRECONDITION
    assert missing[1].startswith("candidate 1: none of its arms (elsewhere) was eligible at any")
    too_many = router_config(shadows=[pb.ShadowPolicy(name=f"s{i}") for i in range(5)])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.admin.PutRouter(pb.PutRouterRequest(router=too_many))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "router.shadows: at most 4 shadow policies"


async def test_after_the_arms_are_replaced_evaluate_skips_the_decisions_on_the_old_ones(
    sqlite_url: str, start_server: StartServer
) -> None:
    """PutRouter replaced arms cheap and strong by new and newer. The decisions on the old arms
    tell nothing about a configuration of the new ones: Evaluate skips them and says so (before,
    every candidate and shadow was refused, "candidate.arms: the candidate has none of the arms
    ...", until the old decisions left the window of 100,000). With no decision on the new arms
    yet, it is refused naming the shadow, not a candidate that was not given."""
    server = await start_server(sqlite_url)
    old = router_config(arms=("cheap", "strong"), policy="epsilon-greedy", exploration=0.5)
    await server.admin.PutRouter(pb.PutRouterRequest(router=old))
    await feed(server, 12)
    new = router_config(arms=("new", "newer"), policy="epsilon-greedy", shadows=SHADOWS)
    await server.admin.PutRouter(pb.PutRouterRequest(router=new))
    shadows = pb.EvaluateRequest(tenant="acme", name="chat", bootstrap_replicates=20)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.admin.Evaluate(shadows)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details() == (
        "shadow ucb: none of its arms (new, newer) was eligible at any of the 12 logged "
        "decisions (they offered cheap, strong), so no decision is left to evaluate it on; "
        "decisions logged on its arms will be"
    )

    rng = np.random.default_rng(1)
    for i in range(8):
        d = await server.router.Select(
            pb.SelectRequest(
                tenant="acme", router="chat", embedding=pb.Embedding(values=embedding(rng))
            )
        )
        await server.router.Feedback(
            pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=i / 8)
        )
    candidate = router_config(arms=("new", "newer"), policy="thompson")
    given = pb.EvaluateRequest(tenant="acme", name="chat", candidates=[candidate])
    for request, names in ((shadows, ["shadow ucb", "shadow ts"]), (given, ["candidate 1"])):
        report = await server.admin.Evaluate(request)
        assert report.decisions == 20 and [c.name for c in report.candidates] == names
        for c in report.candidates:
            assert c.effective_sample_size <= 8.0  # over the 8 decisions on its arms
            assert (
                "skipped decisions: 12 of 20 logged decisions had none of its arms eligible (as "
                "when they were made before the router's arms were replaced), so they tell nothing "
                "about it; its estimates rest on the other 8"
            ) in c.warnings
            assert any(
                w.startswith("on the 8 decisions kept the live policy earned utility ")
                for w in c.warnings
            ), c.warnings


def test_shadow_config_round_trips_through_the_codec() -> None:
    spec = codec.spec_from_proto(router_config(shadows=SHADOWS))
    assert [(s.name, s.policy, s.cost_weight) for s in spec.shadows] == [
        ("ucb", "linucb", None),
        ("ts", "thompson", 100.0),
    ]
    assert codec.spec_from_proto(codec.spec_to_proto(spec)) == spec
    assert json.loads(json_format.MessageToJson(codec.spec_to_proto(spec)))["shadows"][1] == {
        "name": "ts",
        "policy": "thompson",
        "exploration": 2.0,
        "costWeight": 100.0,
    }
