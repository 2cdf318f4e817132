"""Wiring: build the app on a port (0 = any, for tests), warm it up, drain it (how a process
runs one until a stop: banditd.edge.lifecycle)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from banditd import metrics
from banditd.budget.ledger import Budgets
from banditd.config import Settings
from banditd.context import device
from banditd.context.registry import Encoders
from banditd.domain import ArmSpec, FeedbackEvent, RouterSpec
from banditd.domain.bounds import Bounds
from banditd.edge import ports
from banditd.edge.auth import EdgeGuard
from banditd.edge.authenticator import Authenticator
from banditd.edge.limits import TenantLimits
from banditd.edge.servicer import AdminServicer, RouterServicer
from banditd.edge.tls import server_credentials
from banditd.errors import Unavailable
from banditd.flows.admin import Admin
from banditd.flows.decision_log import DecisionLog
from banditd.flows.feedback import Learner
from banditd.flows.feedback_guard import FeedbackGuard
from banditd.flows.feedback_join import DecisionFinder
from banditd.flows.joiner import Joiner
from banditd.flows.select import Selector
from banditd.flows.tokens import TokenSigner
from banditd.flows.usage import UsageFlow
from banditd.policy import POLICIES, _kernels
from banditd.state.live_routers import Catalog
from banditd.state.posterior import Posterior
from banditd.state.prior import Prior
from banditd.store import Database, Store, migrate, sqlite_file
from banditd.store.api_keys import KeyStore, shared_secret
from banditd.store.budgets import BudgetRepository
from banditd.store.pending import PendingStore
from banditd.store.usage import UsageStore
from banditd.v1 import banditd_pb2, banditd_pb2_grpc

log = structlog.get_logger(__name__)
TAIL_COALESCE_S = 0.005
SERVICE_NAMES = (
    banditd_pb2.DESCRIPTOR.services_by_name["Router"].full_name,
    banditd_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
)


@dataclass
class App:
    settings: Settings
    db: Database
    catalog: Catalog
    decisions: DecisionLog
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    budgets: Budgets
    joiner: Joiner | None = None  # parked feedback meets its decision (banditd.flows.joiner)
    _tail_task: asyncio.Task[None] | None = None
    _budget_task: asyncio.Task[None] | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _stop_listening: Callable[[], Awaitable[None]] | None = None
    _stopping: bool = False
    # Plaintext listener for health only (probes that cannot speak TLS); see health_listen.
    health_server: grpc.aio.Server | None = None
    health_port: int = 0
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        """Serve; health turns SERVING only once routers are loaded and Select can answer."""
        if self.settings.metrics_listen:
            try:  # before gRPC starts: a clash then leaves no server running to tear down
                metrics.serve_metrics(self.settings.metrics_listen)
            except OSError as exc:
                await self.server.stop(0)
                await self.db.close()
                if exc.errno == errno.EADDRINUSE:  # taken since build_app checked it
                    raise ports.PortInUse(self.settings.metrics_listen, *ports.METRICS) from None
                raise
        # Budgets before the first call: a Select they did not cover would pass unchecked and
        # uncharged (routers missing from the catalog are loaded by the call that needs them).
        await self.budgets.load_all()
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()
        self.decisions.start()
        routers = await self.catalog.load_all()
        _warm_up()
        # Startup objects (modules, Numba, SQLAlchemy, the posteriors) live as long as the
        # process: frozen, a full garbage collection no longer scans them (about 180k objects,
        # a 0.1 s stall of every call in flight each time it ran).
        gc.collect()
        gc.freeze()
        self._stop_listening = await self.db.listen_for_events(
            self._wake.set, self.settings.notify_ping_s
        )
        self._tail_task = asyncio.create_task(self._tail(), name="tail-log")
        self._budget_task = asyncio.create_task(self._budget_rounds(), name="budgets")
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", port=self.port, routers=routers, database=self.db.engine.dialect.name)

    async def _tail(self) -> None:
        """Apply what other replicas write to the feedback log: when Postgres notifies a
        commit, and every tail_interval_s in any case."""
        while not self._stopping:  # stopped between rounds, never mid-write (see DecisionLog)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.tail_interval_s)
            if self._stopping:
                break
            await asyncio.sleep(TAIL_COALESCE_S)  # one round for a burst of commits
            self._wake.clear()
            await self._tail_once()

    async def _tail_once(self) -> None:
        """One round: the join of parked feedback, then the log (its events, default rewards,
        PCA loads), each guarded on its own: one failing does not skip the other (a failed
        join leaves its rows parked, and parked rows never get the default reward)."""
        if self.joiner is not None:  # first: a joined feedback beats the default reward
            await _guarded("join", self.joiner.run)
        await _guarded("log", self.catalog.tail)

    async def _budget_rounds(self) -> None:
        """Renew leases, reap expired ones, refresh spend and alerts (see budget.ledger)."""
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), self.settings.budget_refresh_s)
            if self._stopping:
                break
            try:
                await self.budgets.housekeeping()
            except Unavailable as exc:
                log.warning("budget_round_failed", error=str(exc))
            except Exception:  # keep going whatever one round hit
                log.exception("budget_round_error")

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking calls, finish in-flight ones, flush the decision log, snapshot."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.grace_seconds if grace is None else grace)
        if self.health_server is not None:
            await self.health_server.stop(0)
        self._stopping = True
        self._wake.set()
        self._stopped.set()
        if self._tail_task is not None:
            await self._tail_task
        if self._budget_task is not None:
            await self._budget_task
        if self._stop_listening is not None:
            await self._stop_listening()
        await self.catalog.reductions.settle()  # a PCA being fitted is stored first
        try:
            await self.decisions.close()
            try:
                await self.budgets.close()  # return this replica's leases
            except Unavailable as exc:  # they expire and return by themselves
                log.warning("budget_leases_not_returned", error=str(exc))
            try:
                await self.catalog.snapshot_all()
            except Unavailable as exc:  # the log has every event: a restart replays them
                log.warning("snapshot_skipped", error=str(exc))
        finally:
            self.catalog.encoders.close()
            await self.db.close()
        log.info("stopped", decisions_unlogged=self.decisions.pending + self.decisions.dropped)


async def _guarded(step: str, run: Callable[[], Awaitable[int]]) -> None:
    """Run one step of a tail round; a failure is logged, never raised (the next round retries)."""
    try:
        await run()
    except Unavailable as exc:
        log.warning("tail_failed", step=step, error=str(exc))
    except Exception:  # keep tailing whatever one round hit
        log.exception("tail_error", step=step)


def _warm_up() -> None:
    """Run every kernel once (Numba loads or compiles them) before health reports SERVING."""
    post = Posterior.empty(Prior(2), 1.0)
    idx = np.array([post.index("a"), post.index("b")], dtype=np.int64)
    x = np.ones(2)
    # Select's arrays come writable and read-only (RouterState.arm_rows, RouterSpec.arm_numbers):
    # Numba compiles each kind apart.
    rows = idx.copy()
    rows.flags.writeable = False
    numbers = RouterSpec("warm-up", "warm-up", (ArmSpec("a", 1, 1), ArmSpec("b", 1, 1))).arm_numbers
    for arm_idx in (idx, rows):
        for cls in POLICIES.values():
            cls(1.0).choose(post, arm_idx, x, np.zeros(2), 0.0, np.random.default_rng(0))
        for arm_numbers in (numbers, numbers.copy()):
            post.expected_costs(arm_idx, arm_numbers, 1.0, x)
    post.apply(FeedbackEvent(1, 0, "warm-up", "a", x, 1.0, 0.0, None, None, None, False, 0.0))
    _kernels.batch_linucb_scores(post.a_inv, post.theta, idx, x[None], 1.0)


def _choose_device(settings: Settings) -> None:
    """GPU or CPU for every router's FAISS index, once, before any router loads (raises
    FailedPrecondition for BANDITD_DEVICE=gpu without one); logged and exported."""
    chosen = device.configure(settings.device, settings.gpu_temp_memory_mb).kind
    for kind in ("gpu", "cpu"):
        metrics.FAISS_DEVICE.labels(device=kind).set(int(kind == chosen))


def _check_ports(settings: Settings) -> None:
    """Refuse ports another process serves, before any is bound (see banditd.edge.ports); a worker
    of `serve --workers` shares its gRPC ports with the others by design."""
    if not settings.reuse_port:
        ports.check_free(settings.listen, *ports.GRPC)
        ports.check_free(settings.health_listen, *ports.HEALTH)
    ports.check_free(settings.metrics_listen, *ports.METRICS)


def _add_port(server: grpc.aio.Server, listen: str, credentials: Any = None) -> int:
    """Bind HOST:PORT; the port bound (the chosen one for port 0)."""
    try:
        if credentials is None:
            port = int(server.add_insecure_port(listen))
        else:
            port = int(server.add_secure_port(listen, credentials))
    except RuntimeError:  # grpc's "Failed to bind": taken since _check_ports, or no such address
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    return port


async def build_app(settings: Settings) -> App:
    credentials = server_credentials(settings)  # refuses an unsafe listener before any I/O
    _check_ports(settings)
    _choose_device(settings)
    if (path := sqlite_file(settings.database_url)) is not None:
        # The default URL is relative to the working directory: say which file this is.
        log.info("sqlite_database", path=str(path), exists=path.exists())
    if settings.should_migrate:
        await migrate(settings.database_url, settings.migrations_dir)
    db = Database(settings.database_url)
    try:
        return await _wire(settings, db, credentials)
    except BaseException:  # a port that cannot be bound, or a stop while starting (cancelled)
        await db.close()
        raise


async def _wire(settings: Settings, db: Database, credentials: Any) -> App:
    """The app's parts over ``db``, its ports bound, nothing started."""
    store = Store.over(db)
    key = (
        settings.signing_key.get_secret_value().encode()
        if settings.signing_key
        else await shared_secret(db, "decision_signing_key")
    )
    signer = TokenSigner(key)
    catalog = Catalog(
        store,
        settings.snapshot_every,
        encoders=Encoders(settings.encoder_max_wait_ms / 1000.0, settings.encoder_max_batch),
        max_prompt_chars=settings.max_prompt_chars,
    )
    decisions = DecisionLog(
        store.decisions, settings.decision_flush_ms / 1000.0, settings.decision_log_max_pending
    )
    budgets = Budgets(
        BudgetRepository(db),
        lease_fraction=settings.budget_lease_fraction,
        lease_ttl_s=settings.budget_lease_ttl_s,
        slack=settings.budget_pace_slack,
    )
    selector = Selector(
        catalog,
        decisions,
        signer,
        max_prompt_chars=settings.max_prompt_chars,
        max_metadata_entries=settings.max_metadata_entries,
        max_candidates=settings.max_candidates,
        budgets=budgets,
    )
    server = grpc.aio.server(
        interceptors=[_edge_guard(settings, db)],
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", int(settings.reuse_port)),
        ],
    )
    guard = FeedbackGuard(
        settings.anomaly_window, settings.anomaly_min_history, settings.anomaly_threshold
    )
    bounds = Bounds(settings)
    pending = PendingStore(db)
    learner = Learner(
        catalog,
        signer,
        guard=guard,
        attempts=settings.feedback_attempts,
        bounds=bounds,
        decisions=DecisionFinder(pending, decisions),
        usage=UsageFlow(UsageStore(db)),
    )
    banditd_pb2_grpc.add_RouterServicer_to_server(
        RouterServicer(
            selector,
            learner,
            bounds,
        ),
        server,
    )
    banditd_pb2_grpc.add_AdminServicer_to_server(
        AdminServicer(Admin(catalog, decisions, store), budgets, bounds), server
    )
    health_servicer = health.aio.HealthServicer()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = _add_port(server, settings.listen, credentials)
    app = App(settings, db, catalog, decisions, server, health_servicer, port, budgets)
    app.joiner = Joiner(
        pending, learner, settings.feedback_join_wait_s, router_name=catalog.name_of
    )
    if settings.health_listen:
        app.health_server = grpc.aio.server(
            options=[("grpc.so_reuseport", int(settings.reuse_port))]
        )
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, app.health_server)
        app.health_port = _add_port(app.health_server, settings.health_listen)
    return app


def _edge_guard(settings: Settings, db: Database) -> EdgeGuard:
    """Authentication, tenancy, roles and rate limits for every call (see banditd.edge.auth)."""
    if not settings.auth_required and not settings.is_loopback:
        log.warning("auth_disabled", listen=settings.listen)
    authenticator = (
        Authenticator(KeyStore(db), settings.auth_cache_seconds) if settings.auth_required else None
    )
    limits = TenantLimits(
        settings.rate_limit_selects_per_s,
        settings.rate_limit_feedback_per_s,
        settings.rate_limit_burst_s,
    )
    return EdgeGuard(authenticator, limits)
