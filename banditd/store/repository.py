"""Queries and writes, in domain terms. Every write runs inside one transaction."""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from operator import attrgetter
from typing import Any

import numpy as np
from sqlalchemy import (
    Insert,
    Subquery,
    Table,
    and_,
    case,
    delete,
    false,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from banditd.domain import (
    MAX_SIGNALS_PER_DECISION,
    ArmSpec,
    Decision,
    FeedbackEvent,
    RankedArm,
    RouterSpec,
    ShadowSpec,
    combined_reward,
    spec_from_dict,
    spec_to_dict,
)
from banditd.domain.ceilings import HARD_MAX_CALL_USD
from banditd.errors import Aborted, AlreadyExists, NotFound
from banditd.store.engine import EVENTS_CHANNEL, Database, bad_data
from banditd.store.finite import bounded_event, checked
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
    server_secrets,
    shadow_picks,
)
from banditd.store.usage import with_usage

SNAPSHOTS_KEPT = 2


@dataclass(frozen=True)
class StoredRouter:
    router_id: int
    spec: RouterSpec


@dataclass(frozen=True)
class AppendedBatch:
    """What ``Repository.append_batch`` committed: the positions (in its input) added, the
    events as stored, in id order, and the router's newest event id before them (None when
    unknown: read the log instead); ``duplicates``: positions not added, with why when the
    store knows more than that the decision has feedback (a preference, a maximum of signals)."""

    positions: list[int]
    events: list[FeedbackEvent]
    follows: int | None
    duplicates: dict[int, AlreadyExists] = field(default_factory=dict)


@dataclass(frozen=True)
class ArmTotals:
    arm: str
    decisions: int
    feedback_count: int
    reward_sum: float
    spend_usd: float


@dataclass(frozen=True)
class ShadowTotals:
    shadow: str
    decisions: int
    agreements: int
    feedback_count: int
    weight_sum: float
    weight_sq_sum: float
    weighted_reward_sum: float
    weighted_cost_sum: float


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
                ArmSpec(
                    a.name,
                    a.input_price_per_mtok,
                    a.output_price_per_mtok,
                    a.disabled,
                    a.prior_latency_ms,
                    a.input_energy_wh_per_mtok,
                    a.output_energy_wh_per_mtok,
                    a.upstream_base_url,
                    a.upstream_model,
                    a.upstream_api_key_env,
                )
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
                    combine=r.combine,
                    thumb_up_reward=r.thumb_up_reward,
                    thumb_down_reward=r.thumb_down_reward,
                    shadows=tuple(ShadowSpec(**sh) for sh in r.shadows or ()),
                    feedback_cap_per_key=r.feedback_cap_per_key,
                    feedback_cap_window_seconds=r.feedback_cap_window_seconds,
                    breaker_error_rate=r.breaker_error_rate,
                    breaker_min_events=r.breaker_min_events,
                    breaker_cooldown_seconds=r.breaker_cooldown_seconds,
                    encoder=r.encoder,
                    metadata_keys=tuple(r.metadata_keys or ()),
                    metadata_slots=r.metadata_slots,
                    pca_dim=r.pca_dim,
                    pca_fit_samples=r.pca_fit_samples,
                    knn_k=r.knn_k,
                    text_window_tokens=r.text_window_tokens,
                    default_latency_weight=r.default_latency_weight,
                    default_energy_weight=r.default_energy_weight,
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

    async def put_router(
        self, spec: RouterSpec, *, action: str = "put", expected_version: int | None = None
    ) -> tuple[StoredRouter, bool]:
        """Create or replace a router's configuration; returns it with its new version.

        Every version is kept in router_versions (``action`` says how it came). With
        ``expected_version``, the change applies only over that version (else Aborted)."""
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
            "combine": spec.combine,
            "thumb_up_reward": spec.thumb_up_reward,
            "thumb_down_reward": spec.thumb_down_reward,
            "shadows": [asdict(sh) for sh in spec.shadows] or None,
            "feedback_cap_per_key": spec.feedback_cap_per_key,
            "feedback_cap_window_seconds": spec.feedback_cap_window_seconds,
            "breaker_error_rate": spec.breaker_error_rate,
            "breaker_min_events": spec.breaker_min_events,
            "breaker_cooldown_seconds": spec.breaker_cooldown_seconds,
            "encoder": spec.encoder,
            "metadata_keys": list(spec.metadata_keys),
            "metadata_slots": spec.metadata_slots,
            "pca_dim": spec.pca_dim,
            "pca_fit_samples": spec.pca_fit_samples,
            "knn_k": spec.knn_k,
            "text_window_tokens": spec.text_window_tokens,
            "default_latency_weight": spec.default_latency_weight,
            "default_energy_weight": spec.default_energy_weight,
            "updated_at": now,
        }
        try:
            return await self._put_router(spec, values, now, action, expected_version)
        except IntegrityError as exc:
            raise Aborted(
                f"router {spec.tenant}/{spec.name} was changed concurrently; retry"
            ) from exc

    async def _put_router(
        self,
        spec: RouterSpec,
        values: dict[str, Any],
        now: float,
        action: str,
        expected_version: int | None,
    ) -> tuple[StoredRouter, bool]:
        async with self.db.transaction() as conn:
            row = (
                await conn.execute(
                    select(routers.c.id).where(
                        routers.c.tenant == spec.tenant, routers.c.name == spec.name
                    )
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
                version, created = 1, True
            else:
                router_id, created = row.id, False
                guard = [] if expected_version is None else [routers.c.version == expected_version]
                # Incremented in the database, so concurrent writers get distinct versions.
                found = (
                    await conn.execute(
                        update(routers)
                        .where(routers.c.id == router_id, *guard)
                        .values(version=routers.c.version + 1, **values)
                        .returning(routers.c.version)
                    )
                ).scalar_one_or_none()
                if found is None:
                    raise Aborted(
                        f"router {spec.tenant}/{spec.name} is no longer at version "
                        f"{expected_version}; read it again and retry"
                    )
                version = int(found)
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
                        "prior_latency_ms": a.prior_latency_ms,
                        "input_energy_wh_per_mtok": a.input_energy_wh_per_mtok,
                        "output_energy_wh_per_mtok": a.output_energy_wh_per_mtok,
                        "upstream_base_url": a.upstream_base_url,
                        "upstream_model": a.upstream_model,
                        "upstream_api_key_env": a.upstream_api_key_env,
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
        return StoredRouter(router_id, stored), created

    async def router_versions(self, router_id: int) -> list[tuple[int, str, float, RouterSpec]]:
        """The router's stored configurations, oldest first: (version, action, time, spec)."""
        async with self.db.transaction() as conn:
            rows = (
                await conn.execute(
                    select(router_versions)
                    .where(router_versions.c.router_id == router_id)
                    .order_by(router_versions.c.version)
                )
            ).all()
        return [(r.version, r.action, r.created_at, spec_from_dict(r.config)) for r in rows]

    async def delete_router(self, tenant: str, name: str) -> int | None:
        """Delete a router and everything logged for it; its id, or None if there was none."""
        async with self.db.transaction() as conn:
            router_id = await conn.scalar(
                select(routers.c.id).where(routers.c.tenant == tenant, routers.c.name == name)
            )
            if router_id is None:
                return None
            for table in (
                shadow_picks,
                router_versions,
                posterior_snapshots,
                feedback_events,
                decision_usage,
                decisions,
                arms,
                context_vocab,
                context_models,
            ):
                await conn.execute(delete(table).where(table.c.router_id == router_id))
            await conn.execute(delete(routers).where(routers.c.id == router_id))
        return int(router_id)

    # -- decisions ---------------------------------------------------------------------------

    async def insert_decisions(self, batch: Sequence[Decision]) -> None:
        """Log a group of decisions in one transaction (a repeated request_id, logged first by
        another replica, is skipped). BadData when a row is refused (a constraint: its router
        was deleted meanwhile; a value): the caller splits the group (store.dead_letters)."""
        try:
            async with self.db.transaction() as conn:
                await _insert_decisions(conn, batch)
        except IntegrityError as exc:
            raise bad_data(exc) from exc

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

    async def append_event(self, event: FeedbackEvent, combine: str = "first") -> FeedbackEvent:
        """Commit one event; the event as stored (its id, its decision's usage folded in).
        AlreadyExists if the decision has feedback and the router keeps the first signal (or
        the decision has its maximum of signals)."""
        try:
            async with self.db.transaction() as conn:
                await _begin_append(conn, event.router_id)
                if combine != "first":
                    event = await _as_next_signal(conn, event, combine)
                (event,) = await with_usage(conn, [event])
                event_id = int(
                    (
                        await conn.execute(
                            insert(feedback_events)
                            .values(checked(_event_row(event)))
                            .returning(feedback_events.c.id)
                        )
                    ).scalar_one()
                )
                return _with_id(event, event_id)
        except IntegrityError as exc:
            raise AlreadyExists(
                f"decision {event.decision_id} already has feedback (one event per decision)"
            ) from exc

    async def append_events(
        self, events: Sequence[FeedbackEvent], combine: str = "first"
    ) -> list[int]:
        """Commit a batch of one router's events in one transaction; returns the positions (in
        ``events``) added. Under ``combine="first"`` decisions with feedback already are
        skipped; otherwise each event becomes its decision's next signal, up to the maximum."""
        return (await self.append_batch(events, combine)).positions

    async def append_batch(
        self, events: Sequence[FeedbackEvent], combine: str = "first"
    ) -> AppendedBatch:
        """``append_events``, also returning the events as stored (with their ids, in id order)
        and the router's newest event id before them, so a caller that has applied the log up
        to that id can apply the batch without reading it back."""
        if not events:
            return AppendedBatch([], [], None)
        router_id = events[0].router_id
        async with self.db.transaction() as conn:
            await _begin_append(conn, router_id)
            # Read under the append lock: no event of the router commits between it and ours.
            head = int(
                await conn.scalar(
                    select(func.max(feedback_events.c.id)).where(
                        feedback_events.c.router_id == router_id
                    )
                )
                or 0
            )
            if combine == "first":
                events = await with_usage(conn, events)
                ids = {
                    decision_id: int(event_id)
                    for event_id, decision_id in await _insert_new_events(conn, events)
                }
                positions: list[int] = []
                stored: list[FeedbackEvent] = []
                for i, e in enumerate(events):
                    event_id = ids.pop(e.decision_id, None)
                    if event_id is not None:  # a repeat in the batch is not added
                        positions.append(i)
                        stored.append(_with_id(e, event_id))
                # Which of a decision's repeats the database kept is its choice: read them back.
                repeated = len({e.decision_id for e in events}) != len(events)
                return AppendedBatch(positions, _by_id(stored), None if repeated else head)
            positions = []
            signals: list[FeedbackEvent] = []
            rows: list[dict[str, Any]] = []
            duplicates: dict[int, AlreadyExists] = {}
            for i, e in enumerate(events):
                try:
                    signal = await _as_next_signal(conn, e, combine, rows)
                except AlreadyExists as exc:
                    duplicates[i] = exc
                    continue
                (signal,) = await with_usage(conn, [signal])
                rows.append(checked(_event_row(signal)))
                signals.append(signal)
                positions.append(i)
            if not rows:
                return AppendedBatch([], [], head, duplicates)
            result = await conn.execute(
                insert(feedback_events).returning(
                    feedback_events.c.id, sort_by_parameter_order=True
                ),
                rows,
            )
            ids_in_order = [int(event_id) for event_id in result.scalars().all()]
            stored = [_with_id(e, i) for e, i in zip(signals, ids_in_order, strict=True)]
            return AppendedBatch(positions, _by_id(stored), head, duplicates)

    async def events_after(
        self, router_id: int, after_id: int, limit: int = 10_000
    ) -> list[FeedbackEvent]:
        async with self.db.transaction() as conn:
            rows = (
                await conn.execute(
                    select(*_EVENT_COLUMNS)
                    .where(
                        feedback_events.c.router_id == router_id, feedback_events.c.id > after_id
                    )
                    .order_by(feedback_events.c.id)
                    .limit(limit)
                )
            ).all()
        # By position (FeedbackEvent's field order): several times faster than by name.
        return [
            FeedbackEvent(
                r[0],
                r[1],
                r[2],
                r[3],
                np.frombuffer(r[4], dtype="<f8").copy(),
                *r[5:],
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
                decisions.c.challenger.is_(None),  # a compared decision waits for a preference
                decisions.c.expected_cost_usd.between(0, HARD_MAX_CALL_USD),  # not poisoned
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

    async def latest_snapshot(self, router_id: int) -> tuple[bytes, str | None] | None:
        """The newest snapshot's posterior bytes and breaker state (JSON; None before 0009)."""
        async with self.db.transaction() as conn:
            row = (
                await conn.execute(
                    select(posterior_snapshots.c.data, posterior_snapshots.c.health)
                    .where(posterior_snapshots.c.router_id == router_id)
                    .order_by(posterior_snapshots.c.id.desc())
                    .limit(1)
                )
            ).first()
        return None if row is None else (bytes(row.data), row.health)

    async def write_snapshot(
        self, router_id: int, last_event_id: int, data: bytes, health: str | None = None
    ) -> None:
        """Store a snapshot and drop all but the newest few of the router's snapshots."""
        async with self.db.transaction() as conn:
            await conn.execute(
                insert(posterior_snapshots).values(
                    router_id=router_id,
                    last_event_id=last_event_id,
                    data=data,
                    created_at=time.time(),
                    health=health,
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
            settled = settled_feedback(router_id)
            fed = {
                r.arm: r
                for r in (
                    await conn.execute(
                        select(
                            settled.c.arm,
                            func.count().label("n"),
                            func.sum(settled.c.reward).label("reward_sum"),
                            func.sum(settled.c.cost_usd).label("spend"),
                        )
                        .where(settled.c.defaulted == false())
                        .group_by(settled.c.arm)
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

    # -- off-policy evaluation and shadows (0008) ---------------------------------------------

    async def decisions_with_feedback(
        self, router_id: int, limit: int
    ) -> list[tuple[Decision, float, float]]:
        """The newest ``limit`` decisions that carry a context and got feedback, oldest first,
        each with its reward and cost."""
        settled = settled_feedback(router_id)
        query = (
            select(
                decisions,
                routers.c.tenant,
                routers.c.name.label("router_name"),
                settled.c.reward.label("feedback_reward"),
                settled.c.cost_usd.label("feedback_cost_usd"),
            )
            .join(routers, routers.c.id == decisions.c.router_id)
            .join(settled, settled.c.decision_id == decisions.c.id)
            .where(decisions.c.router_id == router_id, decisions.c.x.is_not(None))
            .order_by(decisions.c.created_at.desc())
            .limit(limit)
        )
        async with self.db.transaction() as conn:
            rows = (await conn.execute(query)).all()
        return [
            (_decision_from_row(r), float(r.feedback_reward), float(r.feedback_cost_usd))
            for r in reversed(rows)
        ]

    async def shadow_totals(self, router_id: int) -> list[ShadowTotals]:
        """Per shadow: decisions, agreements with the live arm, and importance-weighted sums
        over the decisions with feedback (weight = shadow's probability of the live arm /
        the live propensity)."""
        weight = shadow_picks.c.live_arm_probability / func.nullif(decisions.c.propensity, 0)
        settled = settled_feedback(router_id)
        fed = settled.c.decision_id.is_not(None)
        query = (
            select(
                shadow_picks.c.shadow,
                func.count().label("n"),
                func.sum(case((shadow_picks.c.arm == decisions.c.arm, 1), else_=0)).label("agree"),
                func.sum(case((fed, 1), else_=0)).label("fed"),
                func.sum(case((fed, weight), else_=0.0)).label("w"),
                func.sum(case((fed, weight * weight), else_=0.0)).label("w2"),
                func.sum(case((fed, weight * settled.c.reward), else_=0.0)).label("wr"),
                func.sum(case((fed, weight * settled.c.cost_usd), else_=0.0)).label("wc"),
            )
            .join(decisions, decisions.c.id == shadow_picks.c.decision_id)
            .outerjoin(
                settled,
                and_(settled.c.decision_id == decisions.c.id, settled.c.defaulted == false()),
            )
            .where(shadow_picks.c.router_id == router_id)
            .group_by(shadow_picks.c.shadow)
            .order_by(shadow_picks.c.shadow)
        )
        async with self.db.transaction() as conn:
            rows = (await conn.execute(query)).all()
        return [
            ShadowTotals(
                shadow=r.shadow,
                decisions=int(r.n),
                agreements=int(r.agree or 0),
                feedback_count=int(r.fed or 0),
                weight_sum=float(r.w or 0.0),
                weight_sq_sum=float(r.w2 or 0.0),
                weighted_reward_sum=float(r.wr or 0.0),
                weighted_cost_sum=float(r.wc or 0.0),
            )
            for r in rows
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


def settled_feedback(router_id: int) -> Subquery:
    """Per decision of the router with online feedback: its arm, its effective reward (that of
    its latest signal), its settled cost (the sum over its signals) and whether that latest
    signal is a default reward. One row per decision, whatever the router's combine rule.
    Events past the ceilings (logged before issue 17; the posterior skips them) are left out."""
    fe = feedback_events
    latest = (
        select(
            fe.c.decision_id,
            func.max(fe.c.signal).label("signal"),
            func.sum(fe.c.cost_usd).label("cost_usd"),
        )
        .where(fe.c.router_id == router_id, fe.c.offline == false(), bounded_event())
        .group_by(fe.c.decision_id)
        .subquery()
    )
    return (
        select(
            fe.c.decision_id,
            fe.c.arm,
            func.coalesce(fe.c.effective_reward, fe.c.reward).label("reward"),
            latest.c.cost_usd,
            fe.c.defaulted,
        )
        .join(
            latest, and_(latest.c.decision_id == fe.c.decision_id, latest.c.signal == fe.c.signal)
        )
        .subquery()
    )


async def _begin_append(conn: AsyncConnection, router_id: int) -> None:
    """Start a transaction that appends a router's events.

    It serialises the router's event writers until commit (row lock; SQLite has one writer
    anyway): ids come from one sequence, so without it two replicas could commit ids 7 and 6 in
    that order and a replica tailing the log by id would skip 6. On Postgres it also queues a
    NOTIFY, delivered at commit, that wakes the other replicas' tail.
    """
    if conn.dialect.name == "sqlite":  # the SELECTs below would run before pysqlite's BEGIN
        touched = await conn.execute(  # a write first: the write lock, and the latest snapshot
            update(routers).where(routers.c.id == router_id).values(version=routers.c.version)
        )
        found = router_id if touched.rowcount else None
    else:
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


async def _insert_decisions(conn: AsyncConnection, batch: Sequence[Decision]) -> None:
    """Decisions and their shadow picks (a repeated request_id's decision is skipped)."""
    await conn.execute(_insert_ignoring_duplicates(conn, decisions), _rows(batch))
    picks = [
        {
            "decision_id": d.decision_id,
            "shadow": p.shadow,
            "router_id": d.router_id,
            "arm": p.arm,
            "live_arm_probability": p.live_arm_probability,
        }
        for d in batch
        for p in d.shadows
    ]
    picks = [checked(p) for p in picks]
    if picks:
        await conn.execute(_insert_ignoring_duplicates(conn, shadow_picks), picks)


def _rows(batch: Sequence[Decision]) -> list[dict[str, Any]]:
    return [checked(_decision_row(d)) for d in batch]


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
        "ranking": [
            [r.arm, r.score, r.quality_score, r.expected_cost_usd]
            + (
                [r.expected_latency_ms, r.expected_energy_wh]
                if r.expected_latency_ms or r.expected_energy_wh
                else []
            )
            for r in d.ranking
        ],
        "request_metadata": dict(d.metadata),
        "token": d.token,
        "x": None if d.x is None else np.ascontiguousarray(d.x, dtype="<f8").tobytes(),
        "context_version": d.context_version,
        "challenger": d.challenger,
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
        ranking=tuple(RankedArm(str(r[0]), *(float(v) for v in r[1:6])) for r in row.ranking),
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
        challenger=row.challenger,
    )


# The columns of feedback_events that hold FeedbackEvent's fields, in the fields' order.
_EVENT_COLUMNS = tuple(
    feedback_events.c["id" if f.name == "event_id" else f.name] for f in fields(FeedbackEvent)
)


@functools.cache
def _unnest_insert(columns: tuple[str, ...], dialect: Dialect) -> str:
    """Postgres: insert a batch of events given as one array per column, expanded by unnest
    (far less work on both sides than a VALUES row of parameters per event)."""
    arrays = ", ".join(
        f"${n}::{feedback_events.c[name].type.compile(dialect=dialect)}[]"
        for n, name in enumerate(columns, start=1)
    )
    return (
        f"INSERT INTO {feedback_events.name} ({', '.join(columns)}) "
        f"SELECT * FROM unnest({arrays}) ON CONFLICT DO NOTHING RETURNING id, decision_id"
    )


async def _insert_new_events(
    conn: AsyncConnection, events: Sequence[FeedbackEvent]
) -> Sequence[Any]:
    """Insert the events of decisions without feedback (the others are skipped); (id,
    decision_id) of each row inserted."""
    rows = [checked(_event_row(e)) for e in events]
    if conn.dialect.name == "postgresql":
        columns = tuple(rows[0])
        arrays = tuple([row[name] for row in rows] for name in columns)
        return (await conn.exec_driver_sql(_unnest_insert(columns, conn.dialect), arrays)).all()
    stmt = _insert_ignoring_duplicates(conn, feedback_events).returning(
        feedback_events.c.id, feedback_events.c.decision_id
    )
    return (await conn.execute(stmt, rows)).all()


# FeedbackEvent's fields after event_id, read in one call (see _with_id).
_AFTER_ID = attrgetter(*(f.name for f in fields(FeedbackEvent)[1:]))


def _with_id(e: FeedbackEvent, event_id: int) -> FeedbackEvent:
    """``replace(e, event_id=event_id)`` at half the cost (once per event of a batch)."""
    return FeedbackEvent(event_id, *_AFTER_ID(e))


def _by_id(events: list[FeedbackEvent]) -> list[FeedbackEvent]:
    return sorted(events, key=lambda e: e.event_id)


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
        "signal": e.signal,
        "effective_reward": e.effective_reward,
        "reward_delta": e.reward_delta,
        "energy_wh": e.energy_wh,
        "challenger": e.challenger,
        "challenger_reward": e.challenger_reward,
    }


async def _as_next_signal(
    conn: AsyncConnection,
    event: FeedbackEvent,
    combine: str,
    pending: Sequence[dict[str, Any]] = (),
) -> FeedbackEvent:
    """The event as its decision's next signal under ``combine`` ("last" or "mean"), with the
    change it makes to the effective reward and the settled cost; unchanged if it is the first.

    Real signals replace a default reward: the default counts only while nothing else came.
    ``pending``: rows of this transaction not inserted yet. Caller holds the append lock.
    """
    stored = (
        await conn.execute(
            select(
                feedback_events.c.reward,
                feedback_events.c.defaulted,
                feedback_events.c.cost_usd,
                feedback_events.c.effective_reward,
            )
            .where(feedback_events.c.decision_id == event.decision_id)
            .order_by(feedback_events.c.signal)
        )
    ).all()
    earlier = [(r.reward, r.defaulted, r.cost_usd, r.effective_reward) for r in stored] + [
        (p["reward"], p["defaulted"], p["cost_usd"], p["effective_reward"])
        for p in pending
        if p["decision_id"] == event.decision_id
    ]
    if not earlier:
        return replace(event, signal=0, effective_reward=event.reward, reward_delta=None)
    if event.challenger is not None:  # a compared decision takes one preference, whatever combine
        raise AlreadyExists(f"decision {event.decision_id} already has its preference")
    if len(earlier) >= MAX_SIGNALS_PER_DECISION:
        raise AlreadyExists(
            f"decision {event.decision_id} has {MAX_SIGNALS_PER_DECISION} signals, the maximum"
        )
    real = [reward for reward, defaulted, _, _ in earlier if not defaulted]
    previous = earlier[-1][3] if earlier[-1][3] is not None else earlier[-1][0]
    effective = combined_reward(combine, [*real, event.reward])
    settled = sum(cost for _, _, cost, _ in earlier)
    return replace(
        event,
        signal=len(earlier),
        effective_reward=effective,
        reward_delta=effective - previous,
        cost_usd=event.cost_usd - settled if event.cost_reported else 0.0,
    )
