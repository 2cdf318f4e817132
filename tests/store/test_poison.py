"""Issue 17: no value a caller can send stalls the service (regressions D1-D5, on both databases).

Each defect's repro now gets INVALID_ARGUMENT naming the field and its bound; rows the database
refuses are set aside (dead letters) while the rest commits; a log poisoned before the fix
rebuilds with the poisoned events skipped and reported.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from alembic import command
from sqlalchemy import insert, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

from banditd import logs, metrics
from banditd.config import DEFAULT_MIGRATIONS_DIR
from banditd.domain import Decision, FeedbackEvent, RankedArm
from banditd.domain.bounds import TABLE, numeric_fields
from banditd.domain.ceilings import SCORE_LIMIT, finite_scores
from banditd.errors import BadData, BanditdError, Unavailable
from banditd.flows.tokens import TokenClaims, TokenSigner
from banditd.store import Database, migrate
from banditd.store.dead_letters import DeadLetters
from banditd.store.engine import alembic_config
from banditd.store.events import EventLog
from banditd.store.models import arms, feedback_events, routers
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import REPO, SIGNING_KEY, Running, StartServer, router_config, wait_until

C = grpc.StatusCode
EMBEDDING = pb.Embedding(values=[1.0, 0.0, 0.0, 0.0])


def _finite(msg: Any) -> bool:
    """Every double and float in a response, recursively, is finite."""
    for _, value in msg.ListFields():
        values = value if isinstance(value, list) or hasattr(value, "extend") else [value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                return False
            if hasattr(v, "ListFields") and not _finite(v):
                return False
    return True


async def _refused(call: Any, request: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(request)
    return err.value


async def _stats(server: Running, tenant: str = "acme", name: str = "chat") -> pb.GetStatsResponse:
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant=tenant, name=name))
    assert _finite(stats), stats
    return stats


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


def _decision(server: Running, tenant: str, router_id: int, **changes: Any) -> Decision:
    """A decision as the Select flow makes it (then changed, as a pre-fix flow could have)."""
    now = time.time()
    base = Decision(
        decision_id=f"d-{tenant}-{time.perf_counter_ns()}",
        router_id=router_id,
        tenant=tenant,
        router="chat",
        request_id=None,
        arm="cheap",
        ranking=(RankedArm("cheap", 0.5, 0.6, 0.001),),
        propensity=1.0,
        explored=False,
        expected_cost_usd=0.001,
        token="t",
        expires_at=now + 60,
        created_at=now,
        policy="linucb",
        router_version=1,
        seed=1,
        candidates=("cheap",),
        x=np.ones(5),
    )
    return dataclasses.replace(base, **changes)


async def test_d1_a_poisoned_decision_is_set_aside_and_the_log_keeps_growing(
    database_url: str, start_server: StartServer
) -> None:
    """The repro's NaN score reaches the decision log of a real server (as before the fix):
    the group is split, the bad decision set aside, every other tenant's decisions commit."""
    server = await start_server(database_url, decision_flush_ms=60_000.0)  # flush by hand
    for tenant in ("evil", "good"):
        await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(tenant)))
    good = await server.router.Select(pb.SelectRequest(tenant="good", router="chat", prompt="a"))
    evil_id = server.app.catalog._by_name[("evil", "chat")]
    poisoned = [
        _decision(server, "evil", evil_id, ranking=(RankedArm("cheap", math.nan, math.inf, 1),)),
        _decision(server, "evil", evil_id, seed=2**64),  # past BIGINT: refused by any database
        _decision(server, "evil", evil_id, expected_cost_usd=math.inf),
    ]
    for d in poisoned:
        server.app.decisions.add(d)
    await server.router.Select(pb.SelectRequest(tenant="good", router="chat", prompt="b"))
    before = metrics.DEAD_LETTERS.labels("decision", "evil")._value.get()
    await server.app.decisions.flush()
    assert server.app.decisions.pending == 0  # nothing left to retry forever
    assert (await _stats(server, "good")).decisions == 2
    assert (await _stats(server, "evil")).decisions == 0
    letters = await DeadLetters(server.app.db).list(evil_id)
    assert [(x["kind"], x["ref"]) for x in letters] == [
        ("decision", d.decision_id) for d in poisoned
    ]
    assert "ranking is nan" in letters[0]["error"]
    assert "past 64 bits" in letters[1]["error"]
    assert "expected_cost_usd is inf" in letters[2]["error"]
    assert json.loads(letters[0]["payload"])["ranking"][0]["score"] == "nan"
    assert metrics.DEAD_LETTERS.labels("decision", "evil")._value.get() == before + 3
    # Feedback still works for the good tenant, and its log keeps growing.
    await server.router.Feedback(
        pb.FeedbackRequest(tenant="good", decision_id=good.decision_id, reward=1.0)
    )
    assert (await _stats(server, "good")).feedback_count == 1


@pytest.mark.postgres
async def test_d1_a_row_postgres_refuses_is_a_bad_row_not_an_outage(
    postgres_url: str, start_server: StartServer
) -> None:
    """The database's own refusal (NUL in text: SQLSTATE 22021), not our check, finds the row."""
    server = await start_server(postgres_url, decision_flush_ms=60_000.0)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    router_id = server.app.catalog._by_name[("acme", "chat")]
    bad = _decision(server, "acme", router_id, request_id="r\x00")
    server.app.decisions.add(bad)
    server.app.decisions.add(_decision(server, "acme", router_id))
    await server.app.decisions.flush()
    assert (await _stats(server)).decisions == 1
    [letter] = await DeadLetters(server.app.db).list(router_id)
    assert letter["ref"] == bad.decision_id and "invalid byte sequence" in letter["error"]


# -- the store tells a bad row from an outage -----------------------------------------------


async def _raise_in(url: str, sql: str, params: dict[str, Any] | None = None) -> BaseException:
    db = Database(url)
    try:
        async with db.transaction() as conn:
            await conn.execute(text(sql), params or {})
    except Exception as exc:
        return exc
    finally:
        await db.close()
    raise AssertionError(f"{sql} did not fail")


CLASSIFIED = [
    ("int past 64 bits", "both", "SELECT :v", {"v": 2**64}, BadData),
    ("invalid json (D1)", "postgresql", "SELECT CAST('{' AS json)", None, BadData),
    ("float overflow (D4)", "postgresql", "SELECT CAST(1e308 AS float8) * 10", None, BadData),
    ("not a number", "postgresql", "SELECT CAST('x' AS integer)", None, BadData),
    ("NUL in text", "postgresql", "SELECT CAST(:v AS text)", {"v": "a\x00"}, BadData),
    (
        "connection killed",
        "postgresql",
        "SELECT pg_terminate_backend(pg_backend_pid())",
        None,
        Unavailable,
    ),
    ("no such table", "sqlite", "SELECT * FROM nowhere", None, Unavailable),
]


def _classified_params() -> list[Any]:
    """One case per database it applies to (no skips: a case only runs where it means something)."""
    out = []
    for case, where, sql, params, expected in CLASSIFIED:
        for dialect in ("sqlite", "postgresql") if where == "both" else (where,):
            marks = [pytest.mark.postgres] if dialect == "postgresql" else []
            out.append(
                pytest.param(
                    case, dialect, sql, params, expected, marks=marks, id=f"{case}-{dialect}"
                )
            )
    return out


@pytest.mark.parametrize(("case", "dialect", "sql", "params", "expected"), _classified_params())
async def test_store_error_classification(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    case: str,
    dialect: str,
    sql: str,
    params: dict[str, Any] | None,
    expected: type[Exception],
) -> None:
    url = (
        str(request.getfixturevalue("postgres_url"))
        if dialect == "postgresql"
        else f"sqlite+aiosqlite:///{tmp_path / 'banditd.db'}"
    )
    assert type(await _raise_in(url, sql, params)) is expected, case


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
    assert _finite(answer) and 5_000 < answer.expected_cost_usd <= 10_000
    stats = await _stats(server, "evil", "r")
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
    stats = await _stats(server)
    assert stats.feedback_count == 1 and stats.spend_usd == pytest.approx(0.002)
    answer = await server.router.Select(
        pb.SelectRequest(tenant="acme", router="chat", embedding=EMBEDDING)
    )
    assert _finite(answer)
    await server.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=answer.decision_id, reward=1.0)
    )
    spend = await server.admin.GetSpend(pb.GetSpendRequest(tenant="acme"))
    assert _finite(spend)
    assert (await _stats(server)).decisions == 1
    # A restart finds the same (no second letter: one per event, whoever reports it).
    await server.stop()
    again = await start_server(database_url)
    assert len(await DeadLetters(again.app.db).list(1)) == len(letters)
    assert (await _stats(again)).feedback_count == 2


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
    assert _finite(answer) and answer.ranking[0].score < 0
    assert (await _stats(server, "evil", "r")).decisions == 1


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
    assert (await _stats(server, "evil", "r")).spend_usd == 20_000
    budget = await server.admin.GetBudget(pb.GetBudgetRequest(tenant="evil"))
    assert _finite(budget)
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
    assert (await _stats(server)).spend_usd == 0.01


# -- a batch of feedback that fails on data -----------------------------------------------------


async def test_a_feedback_batch_that_fails_on_data_commits_all_but_the_bad_events(
    database_url: str, start_server: StartServer
) -> None:
    server = await start_server(database_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    tokens = [
        (
            await server.router.Select(
                pb.SelectRequest(tenant="acme", router="chat", embedding=EMBEDDING)
            )
        ).decision_id
        for _ in range(8)
    ]
    learner_events = []  # the events the Learner builds for these tokens, two of them bad
    for n, token in enumerate(tokens):
        c = await server.claims(token)
        learner_events.append(
            _event(c, reward=0.5, input_tokens=2**64 if n in (2, 5) else 10)  # past BIGINT
        )
    async with server.app.catalog.locked(1) as state:
        bad: list[tuple[int, BanditdError]] = []
        added = (await server.app.catalog.record(state, learner_events, bad)).positions
    assert added == [0, 1, 3, 4, 6, 7] and [i for i, _ in bad] == [2, 5]
    assert all(isinstance(exc, BadData) for _, exc in bad)
    stats = await _stats(server)
    assert stats.feedback_count == 6 and stats.applied_event_id == stats.log_event_id
    letters = await DeadLetters(server.app.db).list(1)
    assert [x["kind"] for x in letters] == ["feedback_event"] * 2
    # One event alone (the Feedback RPC's path): refused, set aside, never retried.
    token = (
        await server.router.Select(
            pb.SelectRequest(tenant="acme", router="chat", embedding=EMBEDDING)
        )
    ).decision_id
    async with server.app.catalog.locked(1) as state:
        one = [_event(await server.claims(token), output_tokens=2**64)]
        assert not (await server.app.catalog.record(state, one, bad)).positions
    assert isinstance(bad[-1][1], BadData) and "past 64 bits" in str(bad[-1][1])
    assert len(await DeadLetters(server.app.db).list(1)) == 3
    ok = await server.router.Feedback(
        pb.FeedbackRequest(tenant="acme", decision_id=token, reward=1)
    )
    assert ok.event_id > 0  # the decision itself is untouched


def _event(claims: TokenClaims, **fields: Any) -> FeedbackEvent:
    base = FeedbackEvent(
        0,
        claims.router_id,
        claims.decision_id,
        claims.arm,
        claims.x,
        0.0,
        0.001,
        None,
        None,
        None,
        False,
        time.time(),
    )
    return dataclasses.replace(base, **fields)


async def test_migration_0011_goes_down_and_up(database_url: str) -> None:
    await migrate(database_url, DEFAULT_MIGRATIONS_DIR)
    config = alembic_config(database_url, DEFAULT_MIGRATIONS_DIR)
    await asyncio.to_thread(command.downgrade, config, "0010")
    await asyncio.to_thread(command.upgrade, config, "head")
    exc = await _raise_in(
        database_url,
        "INSERT INTO budget_charges (decision_id, budget_id, period_start, expected_cost_usd,"
        " created_at) VALUES ('d', 1, 0, 1e12, 0)",
    )
    assert isinstance(exc, IntegrityError)  # the ceiling holds again (before the missing FK)


async def test_one_routers_unreadable_log_row_never_stops_the_others_tail(
    database_url: str, start_server: StartServer
) -> None:
    server = await start_server(database_url, tail_interval_s=0.05)
    for name in ("broken", "fine"):
        await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(name=name)))
    token = (
        await server.router.Select(pb.SelectRequest(tenant="acme", router="fine", prompt="hi"))
    ).decision_id
    claims = await server.claims(token)
    broken = _event(claims, router_id=1, decision_id="garbled", x=np.ones(5))
    log = EventLog(server.app.db)
    await log.append([broken])
    async with server.app.db.transaction() as conn:  # a row no decoder can read (3 bytes of x)
        await conn.execute(
            text("UPDATE feedback_events SET x = :x WHERE router_id = 1"), {"x": b"abc"}
        )
    await log.append([_event(claims, reward=1.0)])  # another replica's event for "fine"
    fine = server.app.catalog._by_id[2].posterior
    # Applied by the tail, round after round.
    await wait_until(lambda: fine.last_event_id == 2, "the tail to apply the fine router's event")
    assert (await _stats(server, "acme", "fine")).feedback_count == 1


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
