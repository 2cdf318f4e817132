"""Retries against a server that comes back, or that lost a race, over real gRPC on loopback
(both clients)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest
from sqlalchemy import Table, func, select

from banditd import client as bc
from banditd.store.budget_leases import Leases
from banditd.store.budget_tables import budget_charges
from banditd.store.models import decisions
from banditd.v1 import banditd_pb2 as pb
from tests.client.test_client import (
    FAST_RETRY,
    Client,
    call,
    free_port,
    make_client,
    retries,
    serving,
)
from tests.helpers import Running, StartServer, listening

__all__ = ["make_client"]  # test_client's fixture: sync and async clients


@pytest.mark.parametrize("own_backoff", [False, True], ids=["policy's", "options'"])
async def test_a_retry_reaches_a_server_that_is_back(
    sqlite_url: str,
    start_server: StartServer,
    make_client: Callable[..., Client],
    own_backoff: bool,
) -> None:
    """gRPC's channel waits its own reconnect backoff (1 s, growing to 120 s) after a failed
    connection, failing every attempt meanwhile at once with UNAVAILABLE: the retries all failed
    though the server was back. The channel now backs off as the RetryPolicy does, unless
    ``options`` set its backoff (kept: here 5 s, and the retries fail as before)."""
    server = await serving(start_server, sqlite_url)
    port = free_port()
    policy = bc.RetryPolicy(attempts=6, initial_backoff_s=0.05, max_backoff_s=0.1, jitter_s=0)
    options = [(f"grpc.{e}_reconnect_backoff_ms", 5000) for e in ("initial", "max") if own_backoff]
    client = make_client(f"127.0.0.1:{port}", tenant="acme", retry=policy, options=options)
    with pytest.raises(bc.Unavailable):  # nothing listens; one attempt (no request_id)
        await call(client, "select", router="chat", prompt="hi")
    async with listening(port, server.app.port):
        if own_backoff:
            with pytest.raises(bc.Unavailable):
                await call(client, "select", router="chat", prompt="hi", request_id="r-1")
        else:
            decision = await call(client, "select", router="chat", prompt="hi", request_id="r-1")
            assert decision.arm in ("cheap", "mid", "strong")


async def _rows(server: Running, table: Table) -> int:
    await server.app.decisions.flush()  # the decision log's group commit
    async with server.app.db.transaction() as conn:
        return int(await conn.scalar(select(func.count()).select_from(table)) or 0)


async def test_aborted_is_retried_where_a_resend_is_safe(
    sqlite_url: str,
    start_server: StartServer,
    make_client: Callable[..., Client],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A replica whose budget lease was closed under it (it stalled past the lease's expiry and
    another replica reaped it) answers the Select charged to that lease ABORTED, having written
    nothing, and drops the lease: a resend takes a new one and is served. The client retried
    UNAVAILABLE only, so the Select failed; now it is retried, with a request_id, and raised
    at once without one (never resent, as for UNAVAILABLE)."""
    caplog.set_level(logging.INFO, logger="banditd.client")
    server = await serving(start_server, sqlite_url, budget_refresh_s=3600)  # renews no lease
    budget = pb.Budget(tenant="acme", limit_usd=100.0, period=pb.BUDGET_PERIOD_DAY)
    await server.admin.SetBudget(pb.SetBudgetRequest(budget=budget))
    client = make_client(server.address, tenant="acme", retry=FAST_RETRY)
    await call(client, "select", router="chat", prompt="a")  # the replica takes its lease
    leases = Leases(server.app.db)

    assert await leases.reap(time.time() + 3600) == 1  # another replica's, an hour on
    decision = await call(client, "select", router="chat", prompt="b", request_id="r-1")
    assert decision.arm in ("cheap", "mid", "strong")
    assert retries(caplog) == 1
    assert "lease of this replica expired" in caplog.records[-1].getMessage()
    served = (2, 2)  # decisions logged, budget charges: the Selects served, no others
    assert (await _rows(server, decisions), await _rows(server, budget_charges)) == served

    assert await leases.reap(time.time() + 3600) == 1  # the lease the retry took
    with pytest.raises(bc.Aborted, match="lease of this replica expired"):
        await call(client, "select", router="chat", prompt="c")
    assert retries(caplog) == 1  # not resent
    assert (await _rows(server, decisions), await _rows(server, budget_charges)) == served
