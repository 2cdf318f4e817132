"""Issue 17's bounds on the values a caller sends (regressions D1-D5, on both databases).

Each defect's repro gets INVALID_ARGUMENT naming the field and its bound, and the largest value
allowed keeps every answer finite: D1 an admin's price, D2 a reported cost (and a log poisoned
before the fix, which rebuilds with those events skipped and reported), D3 a cost weight, D4 spend
totals, D5 tokens (standard JSON; a legacy infinite expected cost is never charged); scores and
log values are bounded too. Rows the database refuses are in test_dead_letters.py.
"""

from __future__ import annotations

import base64
import json
import math
import time
from typing import Any

import grpc
import numpy as np
import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine

from banditd import logs
from banditd.config import DEFAULT_MIGRATIONS_DIR
from banditd.domain.bounds import TABLE, numeric_fields
from banditd.domain.ceilings import SCORE_LIMIT, finite_scores
from banditd.flows.tokens import TokenClaims, TokenSigner
from banditd.store import migrate
from banditd.store.dead_letters import DeadLetters
from banditd.store.models import arms, feedback_events, routers
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import (
    EMBEDDING,
    REPO,
    SIGNING_KEY,
    Running,
    StartServer,
    all_finite,
    finite_stats,
    router_config,
)

C = grpc.StatusCode


async def _refused(call: Any, request: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(request)
    return err.value


def test_every_numeric_request_field_has_a_bound() -> None:
    """A field added to a request message without a bound fails here (the docs table too)."""
    requests = [m.input_type for s in pb.DESCRIPTOR.services_by_name.values() for m in s.methods]
    fields = {f for d in requests for f in numeric_fields(d)}
    assert fields == set(TABLE)
    docs = (REPO / "docs" / "security.md").read_text()
    assert all(f"`{key}`" in docs for key in TABLE), "docs/security.md lacks a bound"


# -- D1: an admin's absurd price ----------------------------------------------------------------


async def test_d1_absurd_price_is_refused(database_url: str, start_server: StartServer) -> None:
    server = await start_server(database_url)
    config = router_config("evil", "r", arms=("a",))
    config.arms[0].input_price_per_mtok = 1e308
    err = await _refused(server.admin.PutRouter, pb.PutRouterRequest(router=config))
    assert err.code() == C.INVALID_ARGUMENT
    assert err.details() == (
        "router.arms.input_price_per_mtok: must be in [0, 10000] "
        "(BANDITD_MAX_PRICE_PER_MTOK), got 1e+308"
    )


# -- D2: a feedback caller's absurd cost, and a log poisoned before the fix ---------------------


async def _evil_router(server: Running) -> None:
    config = router_config("evil", "r", arms=("a",))
    await server.admin.PutRouter(pb.PutRouterRequest(router=config))


async def test_d2_absurd_reported_cost_is_refused_and_the_largest_allowed_keeps_costs_finite(
    database_url: str, start_server: StartServer
) -> None:
    server = await start_server(database_url)
    await _evil_router(server)
    select = pb.SelectRequest(tenant="evil", router="r", embedding=EMBEDDING)
    for _ in range(22):
        token = (await server.router.Select(select)).decision_id
        err = await _refused(
            server.router.Feedback,
            pb.FeedbackRequest(tenant="evil", decision_id=token, reward=1, cost_usd=1e308),
        )
        assert err.code() == C.INVALID_ARGUMENT
        assert err.details() == (
            "cost_usd: must be in [0, 10000] (BANDITD_MAX_COST_USD), got 1e+308"
        )
        await server.router.Feedback(
            pb.FeedbackRequest(tenant="evil", decision_id=token, reward=1, cost_usd=10_000)
        )
    # The cost model now prices the arm well above its list price, short of the reports (the
    # prior, worth prior_weight events since issue 18's defaults, holds a share), and finite.
    answer = await server.router.Select(select)
    assert all_finite(answer) and 5_000 < answer.expected_cost_usd <= 10_000
    stats = await finite_stats(server, "evil", "r")
    assert stats.decisions == 23 and stats.spend_usd == pytest.approx(220_000)


async def _poisoned_log(url: str) -> None:
    """What a pre-fix server could leave: a router whose log holds events with cost 1e308
    (D2, D4) and, on Postgres, a NaN reward (SQLite stores NaN as NULL: it cannot hold one)."""
    await migrate(url, DEFAULT_MIGRATIONS_DIR, "0010")
    engine = create_async_engine(url)
    now = time.time()
    spec = router_config(tenant="acme", name="chat")
    async with engine.begin() as conn:
        router_id = (
            await conn.execute(
                insert(routers)
                .values(
                    tenant="acme",
                    name="chat",
                    policy="linucb",
                    exploration=0.0,
                    default_cost_weight=0.0,
                    embedding_dim=4,
                    feedback_ttl_seconds=86_400,
                    prior_output_tokens=300,
                    version=1,
                    created_at=now,
                    updated_at=now,
                )
                .returning(routers.c.id)
            )
        ).scalar_one()
        await conn.execute(
            insert(arms),
            [
                {
                    "router_id": router_id,
                    "name": a.name,
                    "position": i,
                    "input_price_per_mtok": a.input_price_per_mtok,
                    "output_price_per_mtok": a.output_price_per_mtok,
                    "disabled": False,
                }
                for i, a in enumerate(spec.arms)
            ],
        )
        x = np.array([1.0, 1.0, 0.0, 0.0, 0.0]).tobytes()
        rows = [
            {"cost_usd": 1e308, "reward": 1.0},
            {"cost_usd": 1e308, "reward": 1.0},
            {"cost_usd": 0.002, "reward": 0.5},
        ]
        if url.startswith("postgresql"):
            rows.append({"cost_usd": 0.001, "reward": math.nan})
        await conn.execute(
            insert(feedback_events),
            [
                {
                    "router_id": router_id,
                    "decision_id": f"old-{i}",
                    "arm": "cheap",
                    "x": x,
                    "input_tokens": None,
                    "output_tokens": None,
                    "latency_ms": None,
                    "error": False,
                    "created_at": now,
                    **row,
                }
                for i, row in enumerate(rows)
            ],
        )
    await engine.dispose()


async def test_d2_a_poisoned_log_rebuilds_with_those_events_skipped_and_reported(
    database_url: str, start_server: StartServer
) -> None:
    await _poisoned_log(database_url)
    server = await start_server(database_url)  # migrates to head, restores the router
    state = server.app.catalog._by_id[1]
    post = state.posterior
    for name in ("a", "a_inv", "b", "theta", "cost_theta", "observed_cost_sum"):
        assert np.all(np.isfinite(getattr(post, name))), name
    assert post.n_updates[post.index("cheap")] == 1  # only the good event counted
    letters = await DeadLetters(server.app.db).list(1)
    assert {x["kind"] for x in letters} == {"skipped_event"}
    assert len(letters) == (3 if database_url.startswith("postgresql") else 2)
    assert "past the ceilings: reward 1.0, cost_usd 1e+308" in letters[0]["error"]
    # Stats leave the skipped events out (D4: no overflow), Select and Feedback work.
    stats = await finite_stats(server)
    assert stats.feedback_count == 1 and stats.spend_usd == pytest.approx(0.002)
    answer = await server.router.Select(
        pb.SelectRequest(tenant="acme", router="chat", embedding=EMBEDDING)
    )
    assert all_finite(answer)
    await server.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=answer.decision_id, reward=1.0)
    )
    spend = await server.admin.GetSpend(pb.GetSpendRequest(tenant="acme"))
    assert all_finite(spend)
    assert (await finite_stats(server)).decisions == 1
    # A restart finds the same (no second letter: one per event, whoever reports it).
    await server.stop()
    again = await start_server(database_url)
    assert len(await DeadLetters(again.app.db).list(1)) == len(letters)
    assert (await finite_stats(again)).feedback_count == 2


# -- D3: a select caller's absurd cost weight ---------------------------------------------------


async def test_d3_absurd_cost_weight_is_refused_and_the_largest_allowed_scores_finite(
    database_url: str, start_server: StartServer
) -> None:
    server = await start_server(database_url)
    config = router_config("evil", "r", arms=("a",))
    config.arms[0].input_price_per_mtok, config.arms[0].output_price_per_mtok = 150, 600
    await server.admin.PutRouter(pb.PutRouterRequest(router=config))
    prompt = "word " * 39_000  # 195k characters
    err = await _refused(
        server.router.Select,
        pb.SelectRequest(tenant="evil", router="r", prompt=prompt, cost_weight=1.7e308),
    )
    assert err.code() == C.INVALID_ARGUMENT
    assert err.details() == (
        "cost_weight: must be in [0, 1e+06] (BANDITD_MAX_COST_WEIGHT), got 1.7e+308"
    )
    answer = await server.router.Select(
        pb.SelectRequest(tenant="evil", router="r", prompt=prompt, cost_weight=1e6)
    )
    assert all_finite(answer) and answer.ranking[0].score < 0
    assert (await finite_stats(server, "evil", "r")).decisions == 1


# -- D4: spend totals ---------------------------------------------------------------------------


async def test_d4_spend_cannot_overflow(database_url: str, start_server: StartServer) -> None:
    server = await start_server(database_url)
    await _evil_router(server)
    await server.admin.SetBudget(
        pb.SetBudgetRequest(
            budget=pb.Budget(tenant="evil", limit_usd=1e9, period=pb.BUDGET_PERIOD_DAY)
        )
    )
    select = pb.SelectRequest(tenant="evil", router="r", embedding=EMBEDDING)
    for _ in range(2):
        token = (await server.router.Select(select)).decision_id
        for cost in (1e308, math.inf, math.nan, -1e-9):
            err = await _refused(
                server.router.Feedback,
                pb.FeedbackRequest(tenant="evil", decision_id=token, reward=0, cost_usd=cost),
            )
            assert err.code() == C.INVALID_ARGUMENT and "BANDITD_MAX_COST_USD" in err.details()
        await server.router.Feedback(
            pb.FeedbackRequest(tenant="evil", decision_id=token, reward=0, cost_usd=10_000)
        )
    assert (await finite_stats(server, "evil", "r")).spend_usd == 20_000
    budget = await server.admin.GetBudget(pb.GetBudgetRequest(tenant="evil"))
    assert all_finite(budget)
    spend = await server.admin.GetSpend(pb.GetSpendRequest(tenant="evil"))
    assert spend.total_usd == 20_000


# -- D5: tokens carry standard JSON, and a legacy infinite expected cost is not charged ----------


def _legacy_token(claims: dict[str, Any]) -> str:
    """A token as the pre-fix signer wrote it: json.dumps allowed Infinity."""
    signer = TokenSigner(SIGNING_KEY.encode())
    payload = json.dumps(claims, separators=(",", ":")).encode()
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
    return f"v1.{b64(payload)}.{b64(signer._mac(payload))}"


async def test_d5_tokens_are_standard_json_and_an_infinite_expected_cost_is_never_charged(
    database_url: str, start_server: StartServer
) -> None:
    server = await start_server(database_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    answer = await server.router.Select(
        pb.SelectRequest(tenant="acme", router="chat", embedding=EMBEDDING)
    )
    joined = await server.claims(answer.decision_id)
    assert joined.x is not None
    with pytest.raises(ValueError, match="Out of range float"):  # v1 tokens: standard JSON
        TokenSigner(SIGNING_KEY.encode()).sign_v1(
            TokenClaims("d", "acme", 1, "cheap", np.ones(5), 1.0, math.inf, 2e9)
        )
    claims = {
        "t": "acme",
        "r": joined.router_id,
        "a": joined.arm,
        "x": base64.urlsafe_b64encode(joined.x.astype("<f4").tobytes()).rstrip(b"=").decode(),
        "p": joined.propensity,
        "e": joined.expires_at,
    }
    legacy = _legacy_token({**claims, "d": "legacy-1", "c": math.inf})
    err = await _refused(
        server.router.Feedback, pb.FeedbackRequest(tenant="acme", decision_id=legacy, reward=1)
    )
    assert err.code() == C.INVALID_ARGUMENT
    assert err.details() == (
        "cost_usd: required for this decision: its expected cost (inf) is not a usable number"
    )
    ok = await server.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=legacy, reward=1, cost_usd=0.01)
    )
    assert ok.cost_usd == 0.01
    assert (await finite_stats(server)).spend_usd == 0.01


def test_finite_scores_bound_every_value_and_make_nan_the_worst() -> None:
    values = np.array([math.nan, math.inf, -math.inf, 1e30, -1e30, 0.5, -0.0, SCORE_LIMIT])
    expected = np.clip(
        np.nan_to_num(values, nan=-SCORE_LIMIT, posinf=SCORE_LIMIT, neginf=-SCORE_LIMIT),
        -SCORE_LIMIT,
        SCORE_LIMIT,
    )
    got = finite_scores(values)
    assert got.shape == values.shape and np.array_equal(got, expected)
    assert got.tolist()[:3] == [-SCORE_LIMIT, SCORE_LIMIT, -SCORE_LIMIT]
    assert np.isnan(values[0])  # the input is left as it was


def test_log_events_keep_plain_values_and_get_non_finite_floats_as_strings() -> None:
    plain = {"event": "decision", "arm": "a", "n": 3, "ok": True, "p": 0.5, "m": {}, "x": None}
    assert logs._standard_numbers(None, "info", plain) == plain
    odd = {"event": "e", "cost": math.inf, "nested": {"v": [math.nan, 1.0]}, "f": np.float64(2)}
    assert logs._standard_numbers(None, "info", odd) == {
        "event": "e",
        "cost": "inf",
        "nested": {"v": ["nan", 1.0]},
        "f": 2.0,
    }
    assert logs._standard_numbers(None, "info", {"event": "e", "v": -math.inf})["v"] == "-inf"
