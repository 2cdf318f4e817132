"""The Admin flows: router configuration and statistics."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from banditd.domain import RouterSpec, check_name
from banditd.errors import Abandoned, InvalidArgument, NotFound
from banditd.flows import candidates as evaluation
from banditd.flows.decision_log import DecisionLog
from banditd.flows.ope import DEFAULT_BOOTSTRAP
from banditd.flows.ope_log import load_log
from banditd.flows.shadow import shadow_spec
from banditd.flows.stop import Stop
from banditd.state.breaker import ArmHealthView
from banditd.state.live_routers import Catalog
from banditd.store import Store
from banditd.store.reports import ArmTotals, ShadowTotals
from banditd.store.usage import UsageStore, UsageTotals

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RouterStats:
    tenant: str
    name: str
    arms: list[ArmTotals]
    applied_event_id: int
    log_event_id: int
    lag_events: int
    shadows: list[ShadowTotals] = field(default_factory=list)
    health: dict[str, ArmHealthView] = field(default_factory=dict)  # by arm name
    # Context features: the featurisation in use and the kNN index size (0 without kNN).
    context_version: str = ""
    knn_indexed: int = 0
    prior_level: float = 0.0  # prior_quality + the posterior's shared level
    # Latency and energy heads, by arm: (mean latency_ms, reports, mean energy_wh, reports).
    heads: dict[str, tuple[float, int, float, int]] = field(default_factory=dict)
    usage: dict[str, UsageTotals] = field(default_factory=dict)  # gateway usage reports, by arm


@dataclass(frozen=True)
class RouterVersion:
    version: int
    action: str
    created_at: float
    spec: RouterSpec


class Admin:
    def __init__(self, catalog: Catalog, decisions: DecisionLog, store: Store) -> None:
        self._catalog = catalog
        self._decisions = decisions
        self._store = store

    async def put_router(self, spec: RouterSpec) -> tuple[RouterSpec, bool]:
        return await self._catalog.put(spec)

    async def get_router(self, tenant: str, name: str) -> RouterSpec:
        check_stored_name("tenant", tenant)
        check_stored_name("name", name)
        return (await self._store.routers.get(tenant, name)).spec

    async def list_routers(self, tenant: str) -> list[RouterSpec]:
        if tenant:
            check_name("tenant", tenant)
        return [r.spec for r in await self._store.routers.list(tenant or None)]

    async def delete_router(self, tenant: str, name: str) -> bool:
        check_stored_name("tenant", tenant)
        check_stored_name("name", name)
        await self._decisions.flush()  # nothing pending may land after the router is gone
        return await self._catalog.delete(tenant, name)

    async def stats(self, tenant: str, name: str) -> RouterStats:
        check_name("tenant", tenant)
        check_name("name", name)
        state = await self._catalog.get(tenant, name)
        await self._decisions.flush()
        totals = {t.arm: t for t in await self._store.reports.arm_totals(state.router_id)}
        # Every configured arm is listed, used or not; arms since removed still show their history.
        names = [a.name for a in state.spec.arms] + sorted(
            set(totals) - {a.name for a in state.spec.arms}
        )
        arms = [totals.get(n, ArmTotals(n, 0, 0, 0.0, 0.0)) for n in names]
        applied = state.posterior.last_event_id
        head = await self._store.events.head(state.router_id)
        lag = await self._store.events.count_after(state.router_id, applied)
        shadows = await self._store.reports.shadow_totals(state.router_id)
        now = time.time()
        health = {n: state.health.view(n, now) for n in names}
        context = state.context
        return RouterStats(
            tenant,
            name,
            arms,
            applied,
            head,
            lag,
            shadows,
            health,
            context_version=context.version if context is not None else "",
            knn_indexed=context.knn.size if context is not None and context.knn else 0,
            prior_level=state.posterior.prior_level,
            heads={n: state.posterior.reported_means(n) for n in names},
            usage=await UsageStore(self._store.db).totals(state.router_id),
        )

    # -- off-policy evaluation, promotion and rollback ----------------------------------------

    async def evaluate(
        self,
        tenant: str,
        name: str,
        candidates: Sequence[RouterSpec],
        *,
        cost_weight: float | None = None,
        latency_weight: float | None = None,
        energy_weight: float | None = None,
        replicates: int = DEFAULT_BOOTSTRAP,
        limit: int = evaluation.DEFAULT_LIMIT,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Estimate candidates (none: the router's shadows) on the router's decision log."""
        check_name("tenant", tenant)
        check_name("name", name)
        stored = await self._store.routers.get(tenant, name)
        live = (await self._catalog.get(tenant, name)).context
        await self._decisions.flush()
        logged = await load_log(
            self._store,
            stored.router_id,
            limit,
            stored.context_since,
            "" if live is None else live.weights,  # the events its posterior folds
        )
        named = named_candidates(stored.spec, candidates)
        stop = Stop()

        def work() -> dict[str, Any]:
            try:
                return evaluation.report(
                    f"{tenant}/{name}",
                    stored.spec,
                    logged,
                    named,
                    cost_weight=cost_weight,
                    latency_weight=latency_weight,
                    energy_weight=energy_weight,
                    replicates=replicates,
                    seed=seed,
                    stop=stop,
                )
            except Abandoned as exc:
                log.info("evaluate_abandoned", tenant=tenant, router=name, **exc.reached)
                raise

        # CPU-bound: in a thread, so this replica's event loop keeps answering meanwhile. The
        # thread runs on when the call is cancelled (its deadline passed, the client cancelled)
        # unless told: the stop ends it at its next check.
        try:
            return await asyncio.to_thread(work)
        except asyncio.CancelledError:
            stop.set()
            raise

    async def promote(
        self, tenant: str, name: str, candidate: RouterSpec, expected_version: int | None = None
    ) -> tuple[RouterSpec, int]:
        """Make ``candidate`` the router's live configuration in one transaction (a new
        version); returns it and the version it replaced."""
        check_name("tenant", tenant)
        check_name("name", name)
        live = (await self._store.routers.get(tenant, name)).spec
        expected = expected_version or live.version
        spec = dataclasses.replace(candidate, tenant=tenant, name=name)
        promoted, _ = await self._catalog.put(spec, action="promote", expected_version=expected)
        return promoted, expected

    async def rollback(
        self, tenant: str, name: str, to_version: int = 0, expected_version: int | None = None
    ) -> tuple[RouterSpec, int]:
        """Make an earlier version's configuration live again (as a new version; 0: the version
        before the live one); returns it and the version restored."""
        check_name("tenant", tenant)
        check_name("name", name)
        stored = await self._store.routers.get(tenant, name)
        live = stored.spec.version
        target = to_version or live - 1
        if target < 1:
            raise NotFound(f"router {tenant}/{name} has no version before its live version {live}")
        if target == live:
            raise InvalidArgument("to_version", f"version {target} is the live version")
        kept = {v.version: v for v in await self.versions(tenant, name)}
        if target not in kept:
            have = f"{min(kept)}..{max(kept)}" if kept else "none"
            raise NotFound(
                f"router {tenant}/{name} has no stored version {target} (stored: {have})"
            )
        restored, _ = await self._catalog.put(
            dataclasses.replace(kept[target].spec, tenant=tenant, name=name),
            action="rollback",
            expected_version=expected_version or live,
        )
        return restored, target

    async def versions(self, tenant: str, name: str) -> list[RouterVersion]:
        check_stored_name("tenant", tenant)
        check_stored_name("name", name)
        router_id = await self._store.routers.id_of(tenant, name)
        return [RouterVersion(*row) for row in await self._store.routers.versions(router_id)]


def check_stored_name(field_name: str, value: str) -> str:
    """A name that looks up a stored router: today's names, and those an older check let in (a
    final newline: its ``$`` matched before one), so such a router can still be found and
    deleted. New routers' names pass check_name alone."""
    check_name(field_name, value.removesuffix("\n"))
    return value


def named_candidates(
    live: RouterSpec, candidates: Sequence[RouterSpec]
) -> list[tuple[str, RouterSpec]]:
    """Display names for candidates: their own name where it differs from the router's, else
    "candidate N"; with no candidates, the router's shadows."""
    if candidates:
        return [
            (c.name if c.name != live.name else f"candidate {i}", c)
            for i, c in enumerate(candidates, start=1)
        ]
    if not live.shadows:
        raise InvalidArgument(
            "candidates", "give at least one candidate (the router runs no shadow policies)"
        )
    return [(f"shadow {s.name}", shadow_spec(live, s)) for s in live.shadows]
