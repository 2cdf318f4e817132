"""Issue 17, as a property: no number in any request stalls the service, on SQLite and Postgres.

Extreme finite and non-finite values go into every numeric field of every RPC (each field of
banditd.domain.bounds.TABLE, which covers them all), sent by a hostile tenant. After each call:
it ended with a status a caller can act on (never INTERNAL, UNKNOWN or UNAVAILABLE); another
tenant still serves Select, Feedback and GetStats; every statistic served and every posterior
held is finite; and the decision log keeps growing. Derandomized and bounded: well under a
minute per database.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pytest_postgresql.executors import PostgreSQLExecutor
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy import text

from banditd.domain.bounds import TABLE
from banditd.v1 import banditd_pb2 as pb
from banditd.v1 import banditd_pb2_grpc as rpc
from tests.edge.test_fuzz import Served
from tests.helpers import router_config

C = grpc.StatusCode
ANSWERS = {
    C.OK,
    C.INVALID_ARGUMENT,
    C.NOT_FOUND,
    C.FAILED_PRECONDITION,
    C.ALREADY_EXISTS,
    C.ABORTED,
    C.RESOURCE_EXHAUSTED,
}
SETTINGS = settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
EVIL, GOOD = "evil", "good"
EXTREME_FLOATS = [
    math.nan,
    math.inf,
    -math.inf,
    1.7e308,
    -1.7e308,
    1e308,
    3.4028235e38,
    1e30,
    1e9 + 1,
    5e-324,
    -5e-324,
    -0.0,
    0.0,
    1.0,
    -1.0,
]
INT_RANGES = {
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
}


def _field(key: str) -> FieldDescriptor:
    message, name = key.split(".")
    return pb.DESCRIPTOR.message_types_by_name[message].fields_by_name[name]


def values_for(key: str) -> st.SearchStrategy[Any]:
    """Extremes for the field's type: its bound's ends and just past them, the type's ends, and
    (floats) NaN, infinities, huge, tiny and negative values."""
    field, bound = _field(key), TABLE[key]
    if field.type in INT_RANGES:
        low, high = INT_RANGES[field.type]
        ends = [low, high, 0, 1]
        if not math.isnan(bound.high):
            ends += [int(bound.high), int(bound.high) + 1]
        return st.sampled_from([v for v in ends if low <= v <= high])
    ends = list(EXTREME_FLOATS)
    if not math.isnan(bound.high):
        ends += [bound.high, math.nextafter(bound.high, math.inf), bound.low - 1e-9]
    width = 32 if field.type == FieldDescriptor.TYPE_FLOAT else 64
    if width == 32:
        ends = [v for v in ends if math.isnan(v) or abs(v) <= 3.4028235e38]
    return st.sampled_from(ends) | st.floats(width=width)


def _config(**fields: Any) -> pb.RouterConfig:
    return router_config(EVIL, "r", arms=("cheap", "strong"), **fields)


def _calls(served: Served, key: str, value: Any, stream: bool) -> list[tuple[Any, Any]]:
    """The (stub method, request) pairs that send ``value`` in the field ``key``."""
    router, admin = rpc.RouterStub(served.channel), rpc.AdminStub(served.channel)
    message, name = key.split(".")
    many = _field(key).is_repeated
    setting = {name: [value] if many else value}
    if message == "SelectRequest":
        return [(router.Select, pb.SelectRequest(tenant=EVIL, router="r", prompt="p", **setting))]
    if message == "Embedding":
        embedding = pb.Embedding(values=[value, 0.0, 0.0, 0.0])
        return [(router.Select, pb.SelectRequest(tenant=EVIL, router="r", embedding=embedding))]
    if message == "FeedbackRequest":
        token = router.Select(pb.SelectRequest(tenant=EVIL, router="r", prompt="p")).decision_id
        event = pb.FeedbackRequest(tenant=EVIL, decision_id=token, reward=0.5)
        setattr(event, name, value)
        if stream:
            batch = pb.FeedbackBatch(tenant=EVIL, events=[event])
            return [(lambda b, **kw: router.UploadFeedback(iter([b]), **kw), batch)]
        return [(router.Feedback, event)]
    if message in ("Arm", "RouterConfig", "ShadowPolicy"):
        config = _config()
        target = {
            "Arm": lambda: config.arms[0],
            "RouterConfig": lambda: config,
            "ShadowPolicy": lambda: config.shadows.add(name="s", policy="linucb"),
        }[message]()
        if many:
            getattr(target, name).append(value)
        else:
            setattr(target, name, value)
        return [
            (admin.PutRouter, pb.PutRouterRequest(router=config)),
            (admin.Evaluate, pb.EvaluateRequest(tenant=EVIL, name="r", candidates=[config])),
        ]
    if message == "EvaluateRequest":
        request = pb.EvaluateRequest(tenant=EVIL, name="r", candidates=[_config()], **setting)
        return [(admin.Evaluate, request)]
    if message == "PromoteRouterRequest":
        request = pb.PromoteRouterRequest(tenant=EVIL, name="r", candidate=_config(), **setting)
        return [(admin.PromoteRouter, request)]
    if message == "RollbackRouterRequest":
        return [(admin.RollbackRouter, pb.RollbackRouterRequest(tenant=EVIL, name="r", **setting))]
    if message == "Budget":
        window = name in ("window_seconds", "window_start_unix")
        budget = pb.Budget(
            tenant=EVIL,
            limit_usd=10.0,
            period=pb.BUDGET_PERIOD_WINDOW if window else pb.BUDGET_PERIOD_DAY,
            window_seconds=3600,
        )
        if many:
            getattr(budget, name).append(value)
        else:
            setattr(budget, name, value)
        return [(admin.SetBudget, pb.SetBudgetRequest(budget=budget))]
    assert message == "GetSpendRequest", key
    return [(admin.GetSpend, pb.GetSpendRequest(tenant=EVIL, **setting))]


def _answer(call: Any, request: Any) -> C:
    try:
        call(request, timeout=30)
    except grpc.RpcError as exc:
        code: C = exc.code()  # type: ignore[attr-defined]
        assert code in ANSWERS, (code, exc.details())  # type: ignore[attr-defined]
        return code
    return C.OK


def _finite(msg: Any) -> bool:
    for _, value in msg.ListFields():
        for v in value if hasattr(value, "extend") else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                return False
            if hasattr(v, "ListFields") and not _finite(v):
                return False
    return True


def _healthy(served: Served) -> int:
    """Both tenants' statistics are finite; the good tenant selects and gives feedback.
    Returns the good tenant's decisions logged."""
    router, admin = rpc.RouterStub(served.channel), rpc.AdminStub(served.channel)
    answer = router.Select(pb.SelectRequest(tenant=GOOD, router="chat", prompt="hello"))
    assert _finite(answer)
    router.Feedback(pb.FeedbackRequest(tenant=GOOD, decision_id=answer.decision_id, reward=1.0))
    stats = admin.GetStats(pb.GetStatsRequest(tenant=GOOD, name="chat"))
    assert _finite(stats)
    assert _finite(admin.GetStats(pb.GetStatsRequest(tenant=EVIL, name="r")))
    assert _finite(admin.GetSpend(pb.GetSpendRequest(tenant=EVIL)))
    assert _finite(admin.ListBudgets(pb.ListBudgetsRequest()))
    assert served.run(_stored_out_of_bounds(served)) == 0
    for state in list(served.app.catalog._by_id.values()):
        post = state.posterior
        for name in ("a", "a_inv", "b", "theta", "cost_a_inv", "cost_theta", "observed_cost_sum"):
            assert np.all(np.isfinite(getattr(post, name))), (state.spec.name, name)
    return stats.decisions


# Rows holding a number no sum may meet: a cost past the ceiling, a reward outside [0, 1], a NaN
# (no range holds it, on either database), an infinite or unbounded spend or limit.
OUT_OF_BOUNDS = [
    "SELECT count(*) FROM feedback_events WHERE NOT (cost_usd BETWEEN -1e9 AND 1e9)"
    " OR NOT (reward BETWEEN 0 AND 1) OR NOT (COALESCE(latency_ms, 0) BETWEEN 0 AND 1e10)",
    "SELECT count(*) FROM decisions WHERE NOT (expected_cost_usd BETWEEN 0 AND 1e9)"
    " OR NOT (propensity BETWEEN 0 AND 1)",
    "SELECT count(*) FROM budget_ledger WHERE NOT (spent_usd BETWEEN -1e15 AND 1e15)"
    " OR NOT (leased_usd BETWEEN -1e15 AND 1e15) OR NOT (limit_usd BETWEEN 0 AND 1e12)",
]


async def _stored_out_of_bounds(served: Served) -> int:
    async with served.app.db.transaction() as conn:
        return sum([int(await conn.scalar(text(sql)) or 0) for sql in OUT_OF_BOUNDS])


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    if request.param == "sqlite":
        yield from _serve(f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('poison') / 'b.db'}")
        return
    pg: PostgreSQLExecutor = request.getfixturevalue("postgres_server")
    dbname = f"banditd_{uuid.uuid4().hex[:12]}"
    with DatabaseJanitor(user=pg.user, host=pg.host, port=pg.port, dbname=dbname):
        yield from _serve(f"postgresql+asyncpg://{pg.user}@{pg.host}:{pg.port}/{dbname}")


def _serve(url: str) -> Iterator[Served]:
    server = Served(url)
    admin = rpc.AdminStub(server.channel)
    admin.PutRouter(pb.PutRouterRequest(router=router_config(GOOD, "chat")))
    admin.PutRouter(pb.PutRouterRequest(router=_config()))
    try:
        yield server
    finally:
        server.close()


@SETTINGS
@given(key=st.sampled_from(sorted(TABLE)), data=st.data(), stream=st.booleans())
def test_no_number_stalls_another_tenant(
    served: Served, key: str, data: st.DataObject, stream: bool
) -> None:
    value = data.draw(values_for(key), label="value")
    before = _healthy(served)
    for call, request in _calls(served, key, value, stream):
        event(f"{_answer(call, request).name}")
    assert _healthy(served) == before + 1  # the decision log keeps growing
