"""Routers: their configuration (and arms), every version of it, and deleting a router with
everything logged for it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import structlog
from sqlalchemy import delete, func, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from banditd.domain import ArmSpec, RouterSpec, ShadowSpec, spec_from_dict, spec_to_dict
from banditd.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from banditd.store.engine import Database, write_first
from banditd.store.models import (
    arms,
    context_models,
    context_vocab,
    decision_usage,
    decisions,
    feedback_events,
    posterior_snapshots,
    router_versions,
    routers,
    shadow_picks,
)

log = structlog.get_logger(__name__)
DELETE_BATCH = 10_000  # rows of a deleted router's table per DELETE statement

# RouterSpec's fields stored as they are, in columns of the same names (the others: the
# router's key, its version, and the arms, shadows and metadata keys, stored in their own form).
_PLAIN = tuple(
    f.name
    for f in fields(RouterSpec)
    if f.name not in {"tenant", "name", "arms", "version", "shadows", "metadata_keys"}
)
_ARM_COLUMNS = tuple(f.name for f in fields(ArmSpec))  # arms' columns of the same names
# Everything of a router, deleted with it (the router's own row last).
_LOGGED = (
    shadow_picks,
    router_versions,
    posterior_snapshots,
    feedback_events,
    decision_usage,
    decisions,
    arms,
    context_vocab,
    context_models,
)


@dataclass(frozen=True)
class StoredRouter:
    """A router as stored: ``context_since``, the version since which it builds x as now (0:
    since it was created); the events decided before it are not its posterior's data."""

    router_id: int
    spec: RouterSpec
    context_since: int = 0
    # When the router was created: on SQLite one created after a delete may get the deleted
    # one's id, and its versions start again at 1, so only this tells the two apart.
    created_at: float = 0.0


def _spec(row: Any, router_arms: list[ArmSpec]) -> RouterSpec:
    return RouterSpec(
        tenant=row.tenant,
        name=row.name,
        arms=tuple(router_arms),
        version=row.version,
        shadows=tuple(ShadowSpec(**sh) for sh in row.shadows or ()),
        metadata_keys=tuple(row.metadata_keys or ()),
        **{name: getattr(row, name) for name in _PLAIN},
    )


def _values(spec: RouterSpec, now: float) -> dict[str, Any]:
    """The routers row of a spec, but for its key and version."""
    return {
        **{name: getattr(spec, name) for name in _PLAIN},
        "shadows": [asdict(sh) for sh in spec.shadows] or None,
        "metadata_keys": list(spec.metadata_keys),
        "updated_at": now,
    }


async def _load(
    conn: AsyncConnection, *where: Any, skip_unreadable: bool = False
) -> list[StoredRouter]:
    """The routers ``where`` selects. A row today's RouterSpec refuses (stored under an older,
    looser check: a name ending in a newline) raises InvalidArgument, or with
    ``skip_unreadable`` is logged and left out, so that it cannot stop the others loading."""
    rows = (await conn.execute(select(routers).where(*where).order_by(routers.c.id))).all()
    if not rows:
        return []
    arm_rows = (
        await conn.execute(
            select(arms)
            .where(arms.c.router_id.in_([r.id for r in rows]))
            .order_by(arms.c.router_id, arms.c.position)
        )
    ).all()
    by_router: dict[int, list[ArmSpec]] = {}
    for a in arm_rows:
        by_router.setdefault(a.router_id, []).append(
            ArmSpec(**{name: getattr(a, name) for name in _ARM_COLUMNS})
        )
    loaded = []
    for r in rows:
        try:
            spec = _spec(r, by_router.get(r.id, []))
        except InvalidArgument as exc:
            if not skip_unreadable:
                raise
            log.warning(
                "router_unreadable", router_id=r.id, tenant=r.tenant, name=r.name, why=str(exc)
            )
            continue
        loaded.append(StoredRouter(r.id, spec, r.context_since, r.created_at))
    return loaded


async def _not_found(conn: AsyncConnection, tenant: str, name: str) -> NotFound:
    known = await conn.scalar(select(func.count()).where(routers.c.tenant == tenant))
    if not known:
        return NotFound(f"unknown tenant {tenant!r}")
    return NotFound(f"tenant {tenant!r} has no router {name!r}")


class Routers:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self._clock = clock

    async def get(self, tenant: str, name: str) -> StoredRouter:
        """The router; FailedPrecondition for a row today's RouterSpec refuses (delete it)."""
        async with self.db.transaction() as conn:
            try:
                found = await _load(conn, routers.c.tenant == tenant, routers.c.name == name)
            except InvalidArgument as exc:
                raise FailedPrecondition(
                    f"router {tenant!r}/{name!r} is stored in a form this version refuses "
                    f"({exc}); delete it and create it again"
                ) from exc
            if found:
                return found[0]
            raise await _not_found(conn, tenant, name)

    async def id_of(self, tenant: str, name: str) -> int:
        """The router's id, without reading its configuration."""
        async with self.db.transaction() as conn:
            named = (routers.c.tenant == tenant, routers.c.name == name)
            router_id = await conn.scalar(select(routers.c.id).where(*named))
            if router_id is None:
                raise await _not_found(conn, tenant, name)
        return int(router_id)

    async def by_id(self, router_id: int) -> StoredRouter | None:
        async with self.db.transaction() as conn:
            found = await _load(conn, routers.c.id == router_id)
        return found[0] if found else None

    async def put(
        self, spec: RouterSpec, *, action: str = "put", expected_version: int | None = None
    ) -> tuple[StoredRouter, bool]:
        """Create or replace a router's configuration; returns it with its new version.

        Every version is kept in router_versions (``action`` says how it came). With
        ``expected_version``, the change applies only over that version (else Aborted)."""
        try:
            return await self._put(spec, self._clock(), action, expected_version)
        except IntegrityError as exc:
            raise Aborted(
                f"router {spec.tenant}/{spec.name} was changed concurrently; retry"
            ) from exc

    async def _put(
        self, spec: RouterSpec, now: float, action: str, expected_version: int | None
    ) -> tuple[StoredRouter, bool]:
        values = _values(spec, now)
        named = (routers.c.tenant == spec.tenant, routers.c.name == spec.name)
        async with self.db.transaction() as conn:
            await write_first(conn, routers.c.version, *named)  # SQLite's FOR UPDATE
            row = (
                await conn.execute(
                    select(routers.c.id, routers.c.created_at)
                    .where(*named)
                    .with_for_update()  # writers in turn: each compares x with the one before
                )
            ).first()
            if row is None and expected_version is not None:
                raise NotFound(f"tenant {spec.tenant!r} has no router {spec.name!r}")
            if row is None:
                router_id = (
                    await conn.execute(
                        insert(routers)
                        .values(
                            tenant=spec.tenant, name=spec.name, version=1, created_at=now, **values
                        )
                        .returning(routers.c.id)
                    )
                ).scalar_one()
                version, created, context_since, created_at = 1, True, 0, now
            else:
                router_id, created, created_at = row.id, False, row.created_at
                live = (await _load(conn, routers.c.id == router_id))[0].spec
                guard = [] if expected_version is None else [routers.c.version == expected_version]
                # Incremented in the database, so concurrent writers get distinct versions. A
                # change of how x is built starts the router's context at the new version.
                since = routers.c.version + 1 if live.changes_x(spec) else routers.c.context_since
                found = (
                    await conn.execute(
                        update(routers)
                        .where(routers.c.id == router_id, *guard)
                        .values(version=routers.c.version + 1, context_since=since, **values)
                        .returning(routers.c.version, routers.c.context_since)
                    )
                ).first()
                if found is None:
                    raise Aborted(
                        f"router {spec.tenant}/{spec.name} is no longer at version "
                        f"{expected_version}; read it again and retry"
                    )
                version, context_since = int(found[0]), int(found[1])
                await conn.execute(delete(arms).where(arms.c.router_id == router_id))
            await conn.execute(
                insert(arms),
                [
                    {
                        "router_id": router_id,
                        "position": i,
                        **{name: getattr(a, name) for name in _ARM_COLUMNS},
                    }
                    for i, a in enumerate(spec.arms)
                ],
            )
            stored = replace(spec, version=version)
            await conn.execute(
                insert(router_versions).values(
                    router_id=router_id,
                    version=version,
                    action=action,
                    config=spec_to_dict(stored),
                    created_at=now,
                )
            )
        return StoredRouter(router_id, stored, context_since, created_at), created

    async def versions(self, router_id: int) -> list[tuple[int, str, float, RouterSpec]]:
        """The router's stored configurations, oldest first: (version, action, time, spec). A
        version today's RouterSpec refuses is logged and left out, so the others still list."""
        async with self.db.transaction() as conn:
            rows = (
                await conn.execute(
                    select(router_versions)
                    .where(router_versions.c.router_id == router_id)
                    .order_by(router_versions.c.version)
                )
            ).all()
        readable = []
        for r in rows:
            try:
                readable.append((r.version, r.action, r.created_at, spec_from_dict(r.config)))
            except (InvalidArgument, TypeError) as exc:  # today's checks refuse it: left out
                log.warning(
                    "router_version_unreadable",
                    router_id=router_id,
                    version=r.version,
                    why=str(exc),
                )
        return readable

    async def delete(self, tenant: str, name: str, *, batch: int = DELETE_BATCH) -> int | None:
        """Delete a router and everything logged for it, in one transaction; its id, or None if
        there was none. Rows go ``batch`` at a time, so that no one statement of a router with
        millions of events runs into the statement timeout."""
        async with self.db.transaction() as conn:
            router_id = await conn.scalar(
                select(routers.c.id).where(routers.c.tenant == tenant, routers.c.name == name)
            )
            if router_id is None:
                return None
            for table in _LOGGED:
                key = list(table.primary_key.columns)
                some = select(*key).where(table.c.router_id == router_id).limit(batch)
                keyed = key[0] if len(key) == 1 else tuple_(*key)
                while (await conn.execute(delete(table).where(keyed.in_(some)))).rowcount == batch:
                    pass
            await conn.execute(delete(routers).where(routers.c.id == router_id))
        return int(router_id)

    async def list(self, tenant: str | None = None) -> list[StoredRouter]:
        where = [routers.c.tenant == tenant] if tenant else []
        async with self.db.transaction() as conn:
            return await _load(conn, *where, skip_unreadable=True)
