"""Issue 17: the store tells a bad row from an outage, and sets bad rows aside (on both databases).

A row the database refuses (a poisoned decision in a group commit, an event in a feedback batch
that fails on data) is set aside as a dead letter while the rest commits; real driver errors are
classified as BadData or Unavailable; migration 0011's ceilings refuse a row; one router's
unreadable log row never stops the others' tail. The bounds on caller values are in
test_value_bounds.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from banditd import metrics
from banditd.config import DEFAULT_MIGRATIONS_DIR
from banditd.domain import Decision, FeedbackEvent, RankedArm
from banditd.errors import BadData, BanditdError, Unavailable
from banditd.flows.tokens import TokenClaims
from banditd.store import Database, migrate
from banditd.store.dead_letters import DeadLetters
from banditd.store.engine import alembic_config
from banditd.store.events import EventLog
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import (
    EMBEDDING,
    Running,
    StartServer,
    finite_stats,
    router_config,
    wait_until,
)

# -- D1: a poisoned decision in a group commit -------------------------------------------------


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
    assert (await finite_stats(server, "good")).decisions == 2
    assert (await finite_stats(server, "evil")).decisions == 0
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
    assert (await finite_stats(server, "good")).feedback_count == 1


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
    assert (await finite_stats(server)).decisions == 1
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
    stats = await finite_stats(server)
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
    assert (await finite_stats(server, "acme", "fine")).feedback_count == 1
