"""The Admin flows: router configuration and statistics."""

from __future__ import annotations

from dataclasses import dataclass

from banditd.catalog import Catalog
from banditd.decision_log import DecisionLog
from banditd.domain import RouterSpec, check_name
from banditd.store import Repository
from banditd.store.repository import ArmTotals


@dataclass(frozen=True)
class RouterStats:
    tenant: str
    name: str
    arms: list[ArmTotals]
    applied_event_id: int
    log_event_id: int
    lag_events: int
    # Context features: the featurisation in use and the kNN index size (0 without kNN).
    context_version: str = ""
    knn_indexed: int = 0


class Admin:
    def __init__(self, catalog: Catalog, decisions: DecisionLog, repo: Repository) -> None:
        self._catalog = catalog
        self._decisions = decisions
        self._repo = repo

    async def put_router(self, spec: RouterSpec) -> tuple[RouterSpec, bool]:
        return await self._catalog.put(spec)

    async def get_router(self, tenant: str, name: str) -> RouterSpec:
        check_name("tenant", tenant)
        check_name("name", name)
        return (await self._repo.get_router(tenant, name)).spec

    async def list_routers(self, tenant: str) -> list[RouterSpec]:
        if tenant:
            check_name("tenant", tenant)
        return [r.spec for r in await self._repo.list_routers(tenant or None)]

    async def delete_router(self, tenant: str, name: str) -> bool:
        check_name("tenant", tenant)
        check_name("name", name)
        await self._decisions.flush()  # nothing pending may land after the router is gone
        return await self._catalog.delete(tenant, name)

    async def stats(self, tenant: str, name: str) -> RouterStats:
        check_name("tenant", tenant)
        check_name("name", name)
        state = await self._catalog.get(tenant, name)
        await self._decisions.flush()
        totals = {t.arm: t for t in await self._repo.arm_totals(state.router_id)}
        # Every configured arm is listed, used or not; arms since removed still show their history.
        names = [a.name for a in state.spec.arms] + sorted(
            set(totals) - {a.name for a in state.spec.arms}
        )
        arms = [totals.get(n, ArmTotals(n, 0, 0, 0.0, 0.0)) for n in names]
        applied = state.posterior.last_event_id
        head = await self._repo.log_head(state.router_id)
        lag = await self._repo.count_events_after(state.router_id, applied)
        context = state.context
        return RouterStats(
            tenant,
            name,
            arms,
            applied,
            head,
            lag,
            context_version=context.version if context is not None else "",
            knn_indexed=context.knn.size if context is not None and context.knn else 0,
        )
