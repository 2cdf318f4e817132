"""The store's parts over one database, built in one place: each caller takes the parts it
needs (``store.routers``, ``store.events``...); each part also stands alone over a Database."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from banditd.store.decisions import Decisions
from banditd.store.engine import Database
from banditd.store.events import EventLog
from banditd.store.learnt_state import LearntState
from banditd.store.reports import Reports
from banditd.store.routers import Routers


@dataclass(frozen=True)
class Store:
    db: Database
    routers: Routers
    decisions: Decisions
    events: EventLog
    learnt: LearntState
    reports: Reports

    @classmethod
    def over(cls, db: Database, clock: Callable[[], float] = time.time) -> Store:
        return cls(
            db,
            Routers(db, clock),
            Decisions(db),
            EventLog(db),
            LearntState(db, clock),
            Reports(db),
        )
