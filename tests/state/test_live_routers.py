"""A batch of feedback applied as committed (not read back) gives the posterior the log gives; a
router folds only the events whose x its encoder's weights built."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator

import numpy as np
import pytest
from sqlalchemy import func, select

from banditd.config import DEFAULT_MIGRATIONS_DIR
from banditd.context.encoders import HashingTextEncoder
from banditd.context.registry import Encoders
from banditd.domain import Decision, FeedbackEvent, RouterSpec
from banditd.edge import codec
from banditd.errors import FailedPrecondition
from banditd.state.fold import RouterState
from banditd.state.live_routers import Catalog
from banditd.state.posterior import Posterior
from banditd.store import Store
from banditd.store.engine import Database, migrate
from banditd.store.models import posterior_snapshots
from tests.helpers import ReadCountingLog, require, router_config

DIM = 4
VERSION = "hashing:3:w0:pca0/none:m0x64:k0"  # the test router's (logged with its decisions)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    await migrate(database_url, DEFAULT_MIGRATIONS_DIR)
    db = Database(database_url)
    yield dataclasses.replace(Store.over(db), events=ReadCountingLog(db))
    await db.close()


def _log(store: Store) -> ReadCountingLog:
    assert isinstance(store.events, ReadCountingLog)
    return store.events


def _events(
    router_id: int,
    decisions: list[str],
    rng: np.random.Generator,
    version: str | None = VERSION,
) -> list[FeedbackEvent]:
    arms = ["cheap", "mid", "strong", "retired"]
    events = []
    for k, decision in enumerate(decisions):
        x = rng.standard_normal(DIM).astype(np.float32).astype(np.float64)
        x[0] = 1.0
        events.append(
            FeedbackEvent(
                event_id=0,
                router_id=router_id,
                decision_id=decision,
                arm=arms[k % len(arms)],
                x=x,
                reward=float(rng.uniform()),
                cost_usd=float(rng.uniform(0, 0.01)),
                input_tokens=int(rng.integers(10, 900)) if k % 3 else None,
                output_tokens=int(rng.integers(10, 900)) if k % 2 else None,
                latency_ms=float(rng.uniform(50, 900)),
                error=k % 5 == 0,
                created_at=1_700_000_000.0 + k / 7,
                cost_reported=k % 4 != 0,
                context_version=version,
            )
        )
    return events


def _arrays(p: Posterior) -> list[bytes]:
    return [
        np.ascontiguousarray(v).tobytes()
        for v in (
            p.a,
            p.a_inv,
            p.b,
            p.theta,
            p.n_updates,
            p.output_tokens_sum,
            p.output_tokens_n,
            p.observed_cost_sum,
            p.observed_cost_n,
            np.array([p.input_tokens_sum, p.input_tokens_n, p.last_event_id]),
        )
    ]


async def _record(catalog: Catalog, state: RouterState, events: list[FeedbackEvent]) -> list[int]:
    async with catalog.locked(state.router_id) as locked:
        return (await catalog.record(locked, events, [])).positions


@pytest.mark.parametrize("combine", ["first", "mean"])
async def test_batches_applied_as_committed_match_the_log(store: Store, combine: str) -> None:
    log = _log(store)
    catalog = Catalog(store, snapshot_every=1_000_000)
    spec, _ = await catalog.put(
        codec.spec_from_proto(router_config(combine=combine, embedding_dim=DIM - 1))
    )
    state = await catalog.get(spec.tenant, spec.name)
    rng = np.random.default_rng(7)
    first = [str(uuid.uuid4()) for _ in range(40)]
    log.read = 0

    assert await _record(catalog, state, _events(state.router_id, first, rng)) == list(range(40))
    assert log.read == 0  # applied as committed
    # A decision twice in one batch: which row the database keeps is read back from the log.
    repeated = [str(uuid.uuid4()) for _ in range(5)]
    added = await _record(catalog, state, _events(state.router_id, [*repeated, repeated[0]], rng))
    assert added == ([0, 1, 2, 3, 4] if combine == "first" else [0, 1, 2, 3, 4, 5])
    reread = log.read
    assert reread == (5 if combine == "first" else 0)
    # Decisions with feedback already: skipped under "first", later signals under "mean".
    again = await _record(catalog, state, _events(state.router_id, first[:10], rng))
    assert again == ([] if combine == "first" else list(range(10)))
    assert log.read == reread

    restored = await Catalog(store, snapshot_every=1_000_000).get(spec.tenant, spec.name)
    assert restored.posterior.last_event_id == state.posterior.last_event_id > 0
    assert restored.posterior.arms == state.posterior.arms
    assert _arrays(restored.posterior) == _arrays(state.posterior)
    assert restored.health.to_json() == state.health.to_json()


async def test_a_batch_as_committed_is_the_batch_as_read_back(store: Store) -> None:
    catalog = Catalog(store, snapshot_every=1_000_000)
    spec, _ = await catalog.put(codec.spec_from_proto(router_config(embedding_dim=DIM - 1)))
    state = await catalog.get(spec.tenant, spec.name)
    events = _events(
        state.router_id, [str(uuid.uuid4()) for _ in range(12)], np.random.default_rng(3)
    )
    appended = await store.events.append(events)
    assert appended.positions == list(range(12))
    assert appended.follows == state.posterior.last_event_id
    read = await store.events.after(state.router_id, state.posterior.last_event_id)
    assert [_fields(e) for e in appended.events] == [_fields(e) for e in read]


def _fields(event: FeedbackEvent) -> list[object]:
    return [
        getattr(event, f.name).tobytes() if f.name == "x" else getattr(event, f.name)
        for f in dataclasses.fields(event)
    ]


async def _snapshots(store: Store) -> list[int]:
    """The last event id of every snapshot ever written (ids only grow; old rows are dropped)."""
    async with store.routers.db.transaction() as conn:
        written = (await conn.execute(select(func.max(posterior_snapshots.c.id)))).scalar()
    newest = await store.learnt.newest_snapshot_event_id(1)
    return [int(written or 0), int(newest or 0)]


async def test_replicas_share_snapshots_instead_of_each_writing_one(store: Store) -> None:
    # Two replicas apply the same 100 events, 5 at a time: snapshot_every 10 calls for one
    # snapshot per 10 events, not one per replica.
    writer, reader = Catalog(store, snapshot_every=10), Catalog(store, snapshot_every=10)
    spec, _ = await writer.put(codec.spec_from_proto(router_config(embedding_dim=DIM - 1)))
    state = await writer.get(spec.tenant, spec.name)
    follower = await reader.get(spec.tenant, spec.name)
    rng = np.random.default_rng(11)
    for _ in range(20):
        await _record(
            writer, state, _events(state.router_id, [str(uuid.uuid4()) for _ in range(5)], rng)
        )
        await reader.tail()
    assert follower.posterior.last_event_id == state.posterior.last_event_id == 100
    written, newest = await _snapshots(store)
    assert newest >= 90  # the log's head is never more than snapshot_every past a snapshot
    assert written <= 10  # one replica's worth (both replicas would have written 20)

    restored = await Catalog(store, snapshot_every=10).get(spec.tenant, spec.name)
    assert _arrays(restored.posterior) == _arrays(follower.posterior) == _arrays(state.posterior)


class Weights(Encoders):
    """The hashing encoder, naming its weights ``fingerprint`` as a new MiniLM package or a new
    distillation of the static model would."""

    def __init__(self, fingerprint: str) -> None:
        super().__init__()
        self.fingerprint = fingerprint

    async def get(self, spec: RouterSpec) -> tuple[HashingTextEncoder, None]:
        encoder = HashingTextEncoder(spec.embedding_dim)
        encoder.fingerprint = self.fingerprint
        return encoder, None


def _decision(state: RouterState, event: FeedbackEvent, version: str | None) -> Decision:
    spec = state.spec
    return Decision(
        decision_id=event.decision_id,
        router_id=state.router_id,
        tenant=spec.tenant,
        router=spec.name,
        request_id=None,
        arm=event.arm,
        ranking=(),
        propensity=1.0,
        explored=False,
        expected_cost_usd=0.001,
        token="t",
        expires_at=event.created_at + 60,
        created_at=event.created_at,
        policy=spec.policy,
        router_version=spec.version,
        seed=0,
        candidates=tuple(a.name for a in spec.arms),
        x=event.x,
        context_version=version,
    )


async def _decide_and_learn(store: Store, catalog: Catalog, n: int) -> RouterState:
    """A kNN router given n decisions and their feedback under the catalog's encoder weights:
    half the events carry their decision's context_version (as Feedback logs it), half none
    (logged by a replica of an older banditd: read through their decision)."""
    spec, _ = await catalog.put(
        codec.spec_from_proto(router_config(embedding_dim=DIM - 1, knn_k=2))
    )
    state = await catalog.get(spec.tenant, spec.name)
    assert state.context is not None
    version = state.context.version
    ids = [str(uuid.uuid4()) for _ in range(n)]
    rng = np.random.default_rng(5)
    # The router's x: [1, embedding (3), kNN (3 arms x 2)], from the event's own numbers.
    events = [
        dataclasses.replace(e, x=np.concatenate([e.x, np.zeros(spec.dim - DIM)]))
        for e in _events(state.router_id, ids, rng, version)
    ]
    await store.decisions.insert([_decision(state, e, version) for e in events])
    half = n // 2
    read = _log(store).read
    assert await _record(catalog, state, events[:half]) == list(range(half))
    assert _log(store).read == read  # applied as committed
    legacy = [dataclasses.replace(e, context_version=None) for e in events[half:]]
    assert await _record(catalog, state, legacy) == list(range(n - half))
    assert _log(store).read == read + n - half  # read back: the log says its decision's version
    return state


async def test_a_router_folds_only_what_its_encoder_weights_built(store: Store) -> None:
    require("faiss", "the kNN index needs the context extra")
    state = await _decide_and_learn(store, Catalog(store, 1_000_000, encoders=Weights("aaaa")), 8)
    spec = state.spec
    assert state.context is not None and state.context.version.startswith("hashing@aaaa:")
    assert int(state.posterior.n_updates.sum()) == 8 and state.context.knn is not None
    assert state.context.knn.size == 6  # the index holds the router's arms only (no "retired")

    upgraded = await Catalog(store, 1_000_000, encoders=Weights("bbbb")).get(spec.tenant, spec.name)
    prior = RouterState.fresh(spec, state.router_id, context=upgraded.context)
    assert upgraded.posterior.last_event_id == 8  # passed over, in order
    assert _arrays(upgraded.posterior)[:-1] == _arrays(prior.posterior)[:-1]
    assert upgraded.context is not None and upgraded.context.knn is not None
    assert upgraded.context.knn.size == 0

    same = await Catalog(store, 1_000_000, encoders=Weights("aaaa")).get(spec.tenant, spec.name)
    assert _arrays(same.posterior) == _arrays(state.posterior)
    assert same.context is not None and same.context.knn is not None
    assert same.context.knn.size == 6


async def test_a_snapshot_under_other_weights_is_not_used(store: Store) -> None:
    require("faiss", "the kNN index needs the context extra")
    catalog = Catalog(store, snapshot_every=4, encoders=Weights("aaaa"))
    state = await _decide_and_learn(store, catalog, 8)
    spec = state.spec
    assert await store.learnt.newest_snapshot_event_id(state.router_id) == 8
    log = _log(store)
    log.read = 0
    same = await Catalog(store, 4, encoders=Weights("aaaa")).get(spec.tenant, spec.name)
    assert log.read == 8  # the kNN index only: the posterior came from the snapshot
    assert _arrays(same.posterior) == _arrays(state.posterior)
    log.read = 0
    upgraded = await Catalog(store, 4, encoders=Weights("bbbb")).get(spec.tenant, spec.name)
    assert log.read == 16  # rebuilt from the log, which holds nothing built by its weights
    assert int(upgraded.posterior.n_updates.sum()) == 0


async def test_unchanged_weights_keep_every_legacy_event(store: Store) -> None:
    """A router whose weights did not change (the packaged MiniLM, the hashing encoder: no
    fingerprint) keeps what it learnt before events logged their featurisation: events without
    one, with a decision of the old version format or none at all, are all folded."""
    catalog = Catalog(store, snapshot_every=1_000_000)
    spec, _ = await catalog.put(codec.spec_from_proto(router_config(embedding_dim=DIM - 1)))
    state = await catalog.get(spec.tenant, spec.name)
    assert state.context is not None and state.context.version == VERSION
    events = _events(
        state.router_id, [str(uuid.uuid4()) for _ in range(10)], np.random.default_rng(2), None
    )
    await store.decisions.insert([_decision(state, e, VERSION) for e in events[:5]])
    await store.events.append(events)
    restored = await Catalog(store, snapshot_every=1_000_000).get(spec.tenant, spec.name)
    assert restored.posterior.last_event_id == 10
    assert int(restored.posterior.n_updates.sum()) == 10


class Unloadable(Encoders):
    """Encoders that cannot load router "broken"'s here (a replica without the context extra)."""

    async def get(self, spec: RouterSpec) -> tuple[HashingTextEncoder, None]:
        if spec.name == "broken":
            raise FailedPrecondition("the minilm encoders need the context extra")
        return HashingTextEncoder(spec.embedding_dim), None


async def test_a_router_this_replica_cannot_load_does_not_stop_the_others(store: Store) -> None:
    """The tail brings every other router up to date when one of them cannot be restored."""
    writer = Catalog(store, snapshot_every=1_000_000)
    for name in ("broken", "fine"):  # in id order: the broken one first
        await writer.put(codec.spec_from_proto(router_config(name=name, embedding_dim=DIM - 1)))
    replica = Catalog(store, snapshot_every=1_000_000, encoders=Unloadable())
    await replica.tail()
    fine = await writer.get("acme", "fine")
    assert fine.router_id in replica._by_id
    with pytest.raises(FailedPrecondition):
        await replica.get("acme", "broken")  # the call that needs it is told why


async def test_a_router_this_replica_cannot_load_is_refused_not_stored(store: Store) -> None:
    """PutRouter of a router whose encoder cannot load here stores nothing (no router half made
    that every replica then trips on)."""
    replica = Catalog(store, snapshot_every=1_000_000, encoders=Unloadable())
    with pytest.raises(FailedPrecondition):
        await replica.put(codec.spec_from_proto(router_config(name="broken")))
    assert await store.routers.list() == []


async def test_shutdown_snapshots_skip_a_router_another_replica_deleted(store: Store) -> None:
    # Replica A has unsnapshotted events on two routers; replica B deletes the first before A
    # stops. A's shutdown snapshot of the deleted one cannot be stored (its router row is gone):
    # it is skipped, and the other router's snapshot is still written.
    a, b = Catalog(store, snapshot_every=1000), Catalog(store, snapshot_every=1000)
    rng = np.random.default_rng(3)
    states = []
    for name in ("gone", "kept"):
        spec, _ = await a.put(
            codec.spec_from_proto(router_config(name=name, embedding_dim=DIM - 1))
        )
        state = await a.get(spec.tenant, spec.name)
        await _record(
            a, state, _events(state.router_id, [str(uuid.uuid4()) for _ in range(3)], rng)
        )
        states.append(state)
    await b.load_all()
    assert await b.delete(states[0].spec.tenant, "gone")
    await a.snapshot_all()
    kept = states[1]
    assert (
        await store.learnt.newest_snapshot_event_id(kept.router_id)
        == kept.posterior.last_event_id
        > 0
    )
    assert await store.learnt.newest_snapshot_event_id(states[0].router_id) is None
