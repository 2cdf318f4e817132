"""A usage report and its decision's rating, committed at the same moment: the report is
either folded into the rating's event or refused (ALREADY_EXISTS), never accepted beside an
event that lacks it. The check and the insert of UsageStore.add hold the router's append lock,
on SQLite too (where SELECT ... FOR UPDATE locks nothing)."""

from __future__ import annotations

import time

import numpy as np

from banditd.domain import FeedbackEvent
from banditd.errors import AlreadyExists
from banditd.store.events import EventLog
from banditd.store.routers import Routers
from banditd.store.usage import Usage, UsageStore
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import StartServer, meanwhile, router_config


async def test_a_usage_report_racing_the_rating_is_folded_in_or_refused(
    database_url: str, start_server: StartServer
) -> None:
    server = await start_server(database_url)
    db = server.app.db
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    router_id = (await Routers(db).get("acme", "chat")).router_id
    now = time.time()
    usage = Usage("d-1", router_id, "a", 0.0042, 120, 80, 900.0, 150.0, None, False, now)
    rating = FeedbackEvent(
        0, router_id, "d-1", "a", np.zeros(4), 1.0, 0.001, None, None, None, False, now,
        cost_reported=False,
    )  # fmt: skip
    log = EventLog(db)

    async def add() -> bool:
        try:
            await UsageStore(db).add(usage)
            return True
        except AlreadyExists:
            return False

    # Between the usage report's check and its insert: the rating is appended meanwhile.
    accepted, _ = await meanwhile(
        db, "INSERT INTO decision_usage", lambda: log.append([rating]), add()
    )
    (stored,) = await log.after(router_id, 0)
    if accepted:  # then the rating's event carries the report's cost and tokens
        assert (stored.cost_usd, stored.cost_reported, stored.input_tokens) == (0.0042, True, 120)
