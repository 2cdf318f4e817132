"""The writer of a process's budget charges (banditd.budget.ledger.Budgets commits through it).

Select's charges are written in groups, in order, by a task of its own (``queue``): a caller
cancelled mid-write cannot strand the others' futures. The charges of decisions served while
the database was unreachable are kept (``defer``) and written by the next housekeeping round
that reaches it (``write_deferred``).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import structlog

from banditd import metrics
from banditd.errors import BanditdError, Unavailable
from banditd.store.budget_leases import Charge, Leases

log = structlog.get_logger(__name__)


class ChargeWriter:
    def __init__(self, leases: Leases) -> None:
        self._leases = leases
        self._pending: list[tuple[list[Charge], asyncio.Future[set[int] | Exception]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._deferred: list[Charge] = []

    def queue(self, charges: list[Charge]) -> asyncio.Future[set[int] | Exception]:
        """Charges for the writer, written in order; the future answers their group's write:
        the ids of the leases found closed, or the error."""
        future: asyncio.Future[set[int] | Exception] = asyncio.get_running_loop().create_future()
        self._pending.append((charges, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="budget-charges")
        return future

    @property
    def writing(self) -> bool:
        """Whether charges queued so far may still be unwritten."""
        return self._writer is not None and not self._writer.done()

    async def _write(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            result: set[int] | Exception
            try:
                result = await self._leases.add_charges(
                    [c for charges, _ in batch for c in charges]
                )
            except BanditdError as exc:
                result = exc
            except Exception:  # every waiter must get an answer
                log.exception("budget_charges_failed", charges=len(batch))
                result = Unavailable("budget charges could not be recorded")
            for _, f in batch:
                if not f.done():  # its caller may have been cancelled
                    f.set_result(result)

    def defer(self, charges: list[Charge], error: Unavailable) -> None:
        """Keep the charges of decisions served during an outage, to write later."""
        if not self._deferred:
            log.warning("budget_charges_deferred", error=error.message)
        self._deferred.extend(charges)
        metrics.BUDGET_DEFERRED.set(len(self._deferred))

    async def write_deferred(self) -> None:
        """Write the charges deferred by an outage. A decision's charges go straight into spend
        when one of its leases was closed meanwhile (it expired while this replica could not
        renew it), past the budget if need be: the decisions were served, so their cost counts."""
        if not self._deferred:
            return
        charges, self._deferred = self._deferred, []
        try:
            lost = await self._leases.add_charges(charges)
            refused = {c.decision_id for c in charges if c.lease_id in lost}
            late = [replace(c, lease_id=None) for c in charges if c.decision_id in refused]
            if late:
                await self._leases.add_charges(late)
        except BanditdError:
            self._deferred = charges + self._deferred
            raise
        finally:
            metrics.BUDGET_DEFERRED.set(len(self._deferred))
        log.info("budget_charges_written", charges=len(charges), past_closed_leases=len(late))

    async def close(self) -> None:
        """Wait for the queued charges, then write the deferred ones (logged if it fails)."""
        if self._writer is not None:
            await self._writer
        try:
            await self.write_deferred()
        except Unavailable as exc:
            log.warning("budget_charges_not_written", charges=len(self._deferred), error=str(exc))
