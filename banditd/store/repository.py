"""Queries and writes, in domain terms. Every write runs inside one transaction."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from sqlalchemy import Insert, Table, delete, false, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from banditd.domain import ArmSpec, Decision, FeedbackEvent, RankedArm, RouterSpec
from banditd.errors import Aborted, AlreadyExists, NotFound
from banditd.store.engine import EVENTS_CHANNEL, Database
from banditd.store.models import (
    arms,
    context_models,
    context_vocab,
    decisions,
    feedback_events,
    posterior_snapshots,
    routers,
    server_secrets,
)

SNAPSHOTS_KEPT = 2


@dataclass(frozen=True)
class StoredRouter:
    router_id: int
    spec: RouterSpec


@dataclass(frozen=True)
class ArmTotals:
    arm: str
    decisions: int
    feedback_count: int
    reward_sum: float
    spend_usd: float


class Repository:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- routers ---------------------------------------------------------------------------

    async def _load_routers(self, conn: AsyncConnection, *where: Any) -> list[StoredRouter]:
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
                ArmSpec(a.name, a.input_price_per_mtok, a.output_price_per_mtok, a.disabled)
            )
        return [
            StoredRouter(
                r.id,
                RouterSpec(
                    tenant=r.tenant,
                    name=r.name,
                    arms=tuple(by_router.get(r.id, [])),
                    policy=r.policy,
                    exploration=r.exploration,
                    default_cost_weight=r.default_cost_weight,
                    embedding_dim=r.embedding_dim,
                    feedback_ttl_seconds=r.feedback_ttl_seconds,
                    prior_output_tokens=r.prior_output_tokens,
                    version=r.version,
                    forgetting=r.forgetting,
                    prior_quality=r.prior_quality,
                    prior_weight=r.prior_weight,
                    explore_new_arm=r.explore_new_arm,
                    default_reward=r.default_reward,
                    reward_wait_seconds=r.reward_wait_seconds,
                    encoder=r.encoder,
                    metadata_keys=tuple(r.metadata_keys or ()),
                    metadata_slots=r.metadata_slots,
                    pca_dim=r.pca_dim,
                    pca_fit_samples=r.pca_fit_samples,
                    knn_k=r.knn_k,
                    text_window_tokens=r.text_window_tokens,
                ),
            )
            for r in rows
        ]

    async def get_router(self, tenant: str, name: str) -> StoredRouter:
        async with self.db.transaction() as conn:
            found = await self._load_routers(
                conn, routers.c.tenant == tenant, routers.c.name == name
            )
            if found:
                return found[0]
            known = await conn.scalar(select(func.count()).where(routers.c.tenant == tenant))
        if not known:
            raise NotFound(f"unknown tenant {tenant!r}")
        raise NotFound(f"tenant {tenant!r} has no router {name!r}")

    async def get_router_by_id(self, router_id: int) -> StoredRouter | None:
        async with self.db.transaction() as conn:
            found = await self._load_routers(conn, routers.c.id == router_id)
        return found[0] if found else None

    async def list_routers(self, tenant: str | None = None) -> list[StoredRouter]:
        where = [routers.c.tenant == tenant] if tenant else []
        async with self.db.transaction() as conn:
            return await self._load_routers(conn, *where)

    async def put_router(self, spec: RouterSpec) -> tuple[StoredRouter, bool]:
        """Create or replace a router's configuration; returns it with its new version."""
        now = time.time()
        values = {
            "policy": spec.policy,
            "exploration": spec.exploration,
            "default_cost_weight": spec.default_cost_weight,
            "embedding_dim": spec.embedding_dim,
            "feedback_ttl_seconds": spec.feedback_ttl_seconds,
            "prior_output_tokens": spec.prior_output_tokens,
            "forgetting": spec.forgetting,
            "prior_quality": spec.prior_quality,
            "prior_weight": spec.prior_weight,
            "explore_new_arm": spec.explore_new_arm,
            "default_reward": spec.default_reward,
            "reward_wait_seconds": spec.reward_wait_seconds,
            "encoder": spec.encoder,
            "metadata_keys": list(spec.metadata_keys),
            "metadata_slots": spec.metadata_slots,
            "pca_dim": spec.pca_dim,
            "pca_fit_samples": spec.pca_fit_samples,
            "knn_k": spec.knn_k,
            "text_window_tokens": spec.text_window_tokens,
            "updated_at": now,
        }
        try:
            return await self._put_router(spec, values, now)
        except IntegrityError as exc:
            raise Aborted(
                f"router {spec.tenant}/{spec.name} was changed concurrently; retry"
            ) from exc

    async def _put_router(
        self, spec: RouterSpec, values: dict[str, Any], now: float
    ) -> tuple[StoredRouter, bool]:
        async with self.db.transaction() as conn:
            row = (
                await conn.execute(
                    select(routers.c.id).where(
                        routers.c.tenant == spec.tenant, routers.c.name == spec.name
                    )
                )
            ).first()
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
                version, created = 1, True
            else:
                router_id, created = row.id, False
                # Incremented in the database, so concurrent writers get distinct versions.
                version = (
                    await conn.execute(
                        update(routers)
                        .where(routers.c.id == router_id)
                        .values(version=routers.c.version + 1, **values)
                        .returning(routers.c.version)
                    )
                ).scalar_one()
                await conn.execute(delete(arms).where(arms.c.router_id == router_id))
            await conn.execute(
                insert(arms),
                [
                    {
                        "router_id": router_id,
                        "name": a.name,
                        "position": i,
                        "input_price_per_mtok": a.input_price_per_mtok,
                        "output_price_per_mtok": a.output_price_per_mtok,
                        "disabled": a.disabled,
                    }
                    for i, a in enumerate(spec.arms)
                ],
            )
        return StoredRouter(router_id, replace(spec, version=version)), created

    async def delete_router(self, tenant: str, name: str) -> int | None:
        """Delete a router and everything logged for it; its id, or None if there was none."""
        async with self.db.transaction() as conn:
            router_id = await conn.scalar(
                select(routers.c.id).where(routers.c.tenant == tenant, routers.c.name == name)
            )
            if router_id is None:
                return None
            for table in (
                posterior_snapshots,
                feedback_events,
                decisions,
                arms,
                context_vocab,
                context_models,
            ):
                await conn.execute(delete(table).where(table.c.router_id == router_id))
            await conn.execute(delete(routers).where(routers.c.id == router_id))
        return int(router_id)

    # -- decisions ---------------------------------------------------------------------------

    async def insert_decisions(self, batch: Sequence[Decision]) -> list[Decision]:
        """Log a group of decisions in one transaction; returns those that could not be stored.

        A repeated request_id (another replica logged it first) is skipped. A row that breaks a
        constraint (its router was deleted meanwhile) must not block the rest: the group is then
        retried row by row and the offenders are returned, not retried forever.
        """
        try:
            async with self.db.transaction() as conn:
                await conn.execute(_insert_ignoring_duplicates(conn, decisions), _rows(batch))
            return []
        except IntegrityError:
            pass
        rejected = []
        for d in batch:
            try:
                async with self.db.transaction() as conn:
                    await conn.execute(_insert_ignoring_duplicates(conn, decisions), _rows([d]))
            except IntegrityError:
                rejected.append(d)
        return rejected

    async def find_decision(self, router_id: int, request_id: str) -> Decision | None:
        async with self.db.transaction() as conn:
            row = (
                await conn.execute(
                    select(decisions, routers.c.tenant, routers.c.name.label("router_name"))
                    .join(routers, routers.c.id == decisions.c.router_id)
                    .where(decisions.c.router_id == router_id, decisions.c.request_id == request_id)
                )
            ).first()
        return None if row is None else _decision_from_row(row)

    # -- feedback events ---------------------------------------------------------------------

    async def append_event(self, event: FeedbackEvent) -> int:
        """Commit one event; its id in the log. AlreadyExists if the decision has feedback."""
        try:
            async with self.db.transaction() as conn:
                await _begin_append(conn, event.router_id)
                return int(
                    (
                        await conn.execute(
                            insert(feedback_events)
                            .values(_event_row(event))
                            .returning(feedback_events.c.id)
                        )
                    ).scalar_one()
                )
        except IntegrityError as exc:
            raise AlreadyExists(
                f"decision {event.decision_id} already has feedback (one event per decision)"
            ) from exc

    async def append_events(self, events: Sequence[FeedbackEvent]) -> set[str]:
        """Commit a batch of one router's events in one transaction, skipping decisions that
        have feedback already; returns the decision ids added."""
        if not events:
            return set()
        async with self.db.transaction() as conn:
            await _begin_append(conn, events[0].router_id)
            result = await conn.execute(
                _insert_ignoring_duplicates(conn, feedback_events).returning(
                    feedback_events.c.decision_id
                ),
                [_event_row(e) for e in events],
            )
            return set(result.scalars().all())

    async def events_after(
        self, router_id: int, after_id: int, limit: int = 10_000
    ) -> list[FeedbackEvent]:
        async with self.db.transaction() as conn:
            rows = (
                await conn.execute(
                    select(feedback_events)
                    .where(
                        feedback_events.c.router_id == router_id, feedback_events.c.id > after_id
                    )
                    .order_by(feedback_events.c.id)
                    .limit(limit)
                )
            ).all()
        return [
            FeedbackEvent(
                event_id=r.id,
                router_id=r.router_id,
                decision_id=r.decision_id,
                arm=r.arm,
                x=np.frombuffer(r.x, dtype="<f8").copy(),
                reward=r.reward,
                cost_usd=r.cost_usd,
                input_tokens=r.input_tokens,
                output_tokens=r.output_tokens,
                latency_ms=r.latency_ms,
                error=r.error,
                created_at=r.created_at,
                offline=r.offline,
                cost_reported=r.cost_reported,
                defaulted=r.defaulted,
            )
            for r in rows
        ]

    async def decisions_awaiting_default(
        self, router_id: int, made_after: float, made_before: float, limit: int
    ) -> list[Decision]:
        """Decisions made in [made_after, made_before) that have no feedback event, oldest
        first (an index range on (router_id, created_at), not a scan of the whole log)."""
        query = (
            select(decisions, routers.c.tenant, routers.c.name.label("router_name"))
            .join(routers, routers.c.id == decisions.c.router_id)
            .outerjoin(feedback_events, feedback_events.c.decision_id == decisions.c.id)
            .where(
                decisions.c.router_id == router_id,
                decisions.c.created_at >= made_after,
                decisions.c.created_at < made_before,
                decisions.c.x.is_not(None),
                feedback_events.c.id.is_(None),
            )
            .order_by(decisions.c.created_at)
            .limit(limit)
        )
        async with self.db.transaction() as conn:
            return [_decision_from_row(r) for r in (await conn.execute(query)).all()]

    async def log_head(self, router_id: int) -> int:
        """Id of the router's newest event (0 for none)."""
        async with self.db.transaction() as conn:
            head = await conn.scalar(
                select(func.max(feedback_events.c.id)).where(
                    feedback_events.c.router_id == router_id
                )
            )
        return int(head or 0)

    async def count_events_after(self, router_id: int, after_id: int) -> int:
        async with self.db.transaction() as conn:
            return int(
                await conn.scalar(
                    select(func.count()).where(
                        feedback_events.c.router_id == router_id, feedback_events.c.id > after_id
                    )
                )
                or 0
            )

    # -- context: metadata vocabulary and fitted models ----------------------------------------

    async def load_vocabulary(self, router_id: int) -> dict[str, dict[str, int]]:
        async with self.db.transaction() as conn:
            rows = (
                await conn.execute(
                    select(context_vocab).where(context_vocab.c.router_id == router_id)
                )
            ).all()
        out: dict[str, dict[str, int]] = {}
        for r in rows:
            out.setdefault(r.key, {})[r.value] = r.slot
        return out

    async def assign_vocabulary_slot(
        self, router_id: int, key: str, value: str, limit: int
    ) -> int | None:
        """The stored slot of a metadata value, else the next free one below ``limit`` (stored
        now; replicas racing for a slot retry), else None."""
        for _ in range(8):
            try:
                async with self.db.transaction() as conn:
                    where = (context_vocab.c.router_id == router_id, context_vocab.c.key == key)
                    slot = await conn.scalar(
                        select(context_vocab.c.slot).where(*where, context_vocab.c.value == value)
                    )
                    if slot is not None:
                        return int(slot)
                    used = int(await conn.scalar(select(func.count()).where(*where)) or 0)
                    if used >= limit:
                        return None
                    await conn.execute(
                        insert(context_vocab).values(
                            router_id=router_id, key=key, value=value, slot=used
                        )
                    )
                    return used
            except IntegrityError:
                continue  # another replica took that slot or that value first: look again
        raise Aborted(f"metadata vocabulary of {key!r} is changing too fast; retry")

    async def load_context_model(self, router_id: int, fingerprint: str) -> bytes | None:
        async with self.db.transaction() as conn:
            data = await conn.scalar(
                select(context_models.c.data).where(
                    context_models.c.router_id == router_id,
                    context_models.c.fingerprint == fingerprint,
                )
            )
        return None if data is None else bytes(data)

    async def save_context_model(self, router_id: int, fingerprint: str, data: bytes) -> bytes:
        """Store a fitted model unless one is stored already; returns the stored one (the
        first writer's, whichever replica it was)."""
        try:
            async with self.db.transaction() as conn:
                await conn.execute(
                    insert(context_models).values(
                        router_id=router_id,
                        fingerprint=fingerprint,
                        data=data,
                        created_at=time.time(),
                    )
                )
            return data
        except IntegrityError:
            stored = await self.load_context_model(router_id, fingerprint)
            assert stored is not None
            return stored

    # -- snapshots ---------------------------------------------------------------------------

    async def latest_snapshot(self, router_id: int) -> bytes | None:
        async with self.db.transaction() as conn:
            data = await conn.scalar(
                select(posterior_snapshots.c.data)
                .where(posterior_snapshots.c.router_id == router_id)
                .order_by(posterior_snapshots.c.id.desc())
                .limit(1)
            )
        return None if data is None else bytes(data)

    async def write_snapshot(self, router_id: int, last_event_id: int, data: bytes) -> None:
        """Store a snapshot and drop all but the newest few of the router's snapshots."""
        async with self.db.transaction() as conn:
            await conn.execute(
                insert(posterior_snapshots).values(
                    router_id=router_id,
                    last_event_id=last_event_id,
                    data=data,
                    created_at=time.time(),
                )
            )
            kept = (
                (
                    await conn.execute(
                        select(posterior_snapshots.c.id)
                        .where(posterior_snapshots.c.router_id == router_id)
                        .order_by(posterior_snapshots.c.id.desc())
                        .limit(SNAPSHOTS_KEPT)
                    )
                )
                .scalars()
                .all()
            )
            await conn.execute(
                delete(posterior_snapshots).where(
                    posterior_snapshots.c.router_id == router_id,
                    posterior_snapshots.c.id.not_in(kept),
                )
            )

    # -- stats and secrets --------------------------------------------------------------------

    async def arm_totals(self, router_id: int) -> list[ArmTotals]:
        async with self.db.transaction() as conn:
            made: dict[str, int] = dict(
                (
                    await conn.execute(
                        select(decisions.c.arm, func.count())
                        .where(decisions.c.router_id == router_id)
                        .group_by(decisions.c.arm)
                    )
                ).all()
            )
            fed = {
                r.arm: r
                for r in (
                    await conn.execute(
                        select(
                            feedback_events.c.arm,
                            func.count().label("n"),
                            func.sum(feedback_events.c.reward).label("reward_sum"),
                            func.sum(feedback_events.c.cost_usd).label("spend"),
                        )
                        .where(
                            feedback_events.c.router_id == router_id,
                            feedback_events.c.offline == false(),
                            feedback_events.c.defaulted == false(),
                        )
                        .group_by(feedback_events.c.arm)
                    )
                ).all()
            }
        return [
            ArmTotals(
                arm=arm,
                decisions=int(made.get(arm, 0)),
                feedback_count=int(fed[arm].n) if arm in fed else 0,
                reward_sum=float(fed[arm].reward_sum) if arm in fed else 0.0,
                spend_usd=float(fed[arm].spend) if arm in fed else 0.0,
            )
            for arm in sorted(set(made) | set(fed))
        ]

    async def secret(self, name: str) -> bytes:
        """A random secret created once and shared by every process on this database."""
        async with self.db.transaction() as conn:
            # Whoever inserts first wins; everyone then reads the winner's value.
            await conn.execute(
                _insert_ignoring_duplicates(conn, server_secrets),
                {"name": name, "value": secrets.token_bytes(32)},
            )
            value: bytes = (
                await conn.execute(
                    select(server_secrets.c.value).where(server_secrets.c.name == name)
                )
            ).scalar_one()
        return bytes(value)


async def _begin_append(conn: AsyncConnection, router_id: int) -> None:
    """Start a transaction that appends a router's events.

    It serialises the router's event writers until commit (row lock; SQLite has one writer
    anyway): ids come from one sequence, so without it two replicas could commit ids 7 and 6 in
    that order and a replica tailing the log by id would skip 6. On Postgres it also queues a
    NOTIFY, delivered at commit, that wakes the other replicas' tail.
    """
    found = await conn.scalar(
        select(routers.c.id).where(routers.c.id == router_id).with_for_update()
    )
    if found is None:
        raise NotFound("the router of this decision has been deleted")
    if conn.dialect.name == "postgresql":
        await conn.execute(select(func.pg_notify(EVENTS_CHANNEL, str(router_id))))


def _insert_ignoring_duplicates(conn: AsyncConnection, table: Table) -> Insert:
    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    stmt: Insert = dialect.insert(table).on_conflict_do_nothing()
    return stmt


def _rows(batch: Sequence[Decision]) -> list[dict[str, Any]]:
    return [_decision_row(d) for d in batch]


def _decision_row(d: Decision) -> dict[str, Any]:
    return {
        "id": d.decision_id,
        "router_id": d.router_id,
        "request_id": d.request_id,
        "arm": d.arm,
        "propensity": d.propensity,
        "explored": d.explored,
        "expected_cost_usd": d.expected_cost_usd,
        "policy": d.policy,
        "router_version": d.router_version,
        "seed": d.seed,
        "candidates": list(d.candidates),
        "ranking": [[r.arm, r.score, r.quality_score, r.expected_cost_usd] for r in d.ranking],
        "request_metadata": dict(d.metadata),
        "token": d.token,
        "x": None if d.x is None else np.ascontiguousarray(d.x, dtype="<f8").tobytes(),
        "context_version": d.context_version,
        "expires_at": d.expires_at,
        "created_at": d.created_at,
    }


def _decision_from_row(row: Any) -> Decision:
    return Decision(
        decision_id=row.id,
        router_id=row.router_id,
        tenant=row.tenant,
        router=row.router_name,
        request_id=row.request_id,
        arm=row.arm,
        ranking=tuple(
            RankedArm(str(a), float(s), float(q), float(c)) for a, s, q, c in row.ranking
        ),
        propensity=row.propensity,
        explored=row.explored,
        expected_cost_usd=row.expected_cost_usd,
        token=row.token,
        expires_at=row.expires_at,
        created_at=row.created_at,
        policy=row.policy,
        router_version=row.router_version,
        seed=row.seed,
        candidates=tuple(row.candidates),
        metadata=dict(row.request_metadata),
        x=None if row.x is None else np.frombuffer(row.x, dtype="<f8").copy(),
        context_version=row.context_version,
    )


def _event_row(e: FeedbackEvent) -> dict[str, Any]:
    return {
        "router_id": e.router_id,
        "decision_id": e.decision_id,
        "arm": e.arm,
        "x": np.ascontiguousarray(e.x, dtype="<f8").tobytes(),
        "reward": e.reward,
        "cost_usd": e.cost_usd,
        "input_tokens": e.input_tokens,
        "output_tokens": e.output_tokens,
        "latency_ms": e.latency_ms,
        "error": e.error,
        "created_at": e.created_at,
        "offline": e.offline,
        "cost_reported": e.cost_reported,
        "defaulted": e.defaulted,
    }
