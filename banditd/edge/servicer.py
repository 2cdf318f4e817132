"""gRPC servicers: decode -> call a flow -> encode. Errors become status codes here, only here."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import grpc
import structlog
from google.protobuf.message import Message

from banditd import errors, metrics
from banditd.budget.ledger import Budgets
from banditd.domain import check_finite, check_name
from banditd.domain.bounds import Bounds
from banditd.edge import codec
from banditd.flows.admin import Admin
from banditd.flows.candidates import DEFAULT_LIMIT
from banditd.flows.feedback import BatchOutcome, FeedbackInput, Learner
from banditd.flows.ope import DEFAULT_BOOTSTRAP
from banditd.flows.select import Selector
from banditd.v1 import banditd_pb2 as pb
from banditd.v1 import banditd_pb2_grpc as pb_grpc

log = structlog.get_logger(__name__)

S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[S, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]
# The methods leave their context to _edge, which aborts on it.
Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]


def _edge(method: Handler[S, Req, Resp]) -> Handler[S, Req, Resp]:
    """Map banditd errors to their status code; anything else is INTERNAL, logged, not leaked."""

    @functools.wraps(method)
    async def wrapper(self: S, request: Req, context: grpc.aio.ServicerContext[Req, Resp]) -> Resp:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            bounds: Bounds | None = getattr(self, "bounds", None)
            if bounds is not None and isinstance(request, Message):  # streams: per event
                bounds.check_message(request)
            return await method(self, request, context)
        except asyncio.CancelledError:  # the client cancelled, or its deadline passed
            code = grpc.StatusCode.CANCELLED
            raise
        except errors.BanditdError as exc:
            code = grpc.StatusCode[exc.code]
            await context.abort(code, exc.message)
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("internal_error", rpc=method.__name__)
            await context.abort(code, "internal error (logged on the server)")
        finally:
            metrics.child(metrics.RPC_SECONDS, method.__name__, code.name).observe(
                time.perf_counter() - started
            )
        raise AssertionError("context.abort returned")  # pragma: no cover

    return wrapper


class RouterServicer(pb_grpc.RouterServicer):
    def __init__(self, selector: Selector, learner: Learner, bounds: Bounds | None = None) -> None:
        self._selector = selector
        self._learner = learner
        self.bounds = bounds  # every number of a request, checked by _edge

    @_edge
    async def Select(self, request: pb.SelectRequest, context: Ctx) -> pb.SelectResponse:
        decision = await self._selector.select(codec.select_from_proto(request))
        return codec.decision_to_proto(decision)

    @_edge
    async def Feedback(self, request: pb.FeedbackRequest, context: Ctx) -> pb.FeedbackResponse:
        req = codec.feedback_from_proto(request)  # usage_only: a usage report (issue 22)
        result = await (self._learner.usage(req) if req.usage_only else self._learner.feedback(req))
        return codec.feedback_to_proto(result)

    @_edge
    async def StreamFeedback(
        self, request_iterator: AsyncIterator[pb.FeedbackRequest], context: Ctx
    ) -> pb.StreamFeedbackResponse:
        async def inputs() -> AsyncIterator[FeedbackInput]:
            async for request in request_iterator:
                yield codec.feedback_from_proto(request)

        return await self._upload(inputs())

    @_edge
    async def UploadFeedback(
        self, request_iterator: AsyncIterator[pb.FeedbackBatch], context: Ctx
    ) -> pb.StreamFeedbackResponse:
        async def inputs() -> AsyncIterator[FeedbackInput]:
            async for batch in request_iterator:
                if len(batch.events) > MAX_UPLOAD_BATCH:
                    raise errors.InvalidArgument(
                        "events", f"at most {MAX_UPLOAD_BATCH} per message, got {len(batch.events)}"
                    )
                for event in batch.events:
                    yield codec.feedback_from_proto(event, batch.tenant)

        return await self._upload(inputs())

    async def _upload(self, inputs: AsyncIterator[FeedbackInput]) -> pb.StreamFeedbackResponse:
        """Commit feedback in batches of STREAM_BATCH; the counts once the last one commits."""
        outcome = BatchOutcome()
        batch: list[FeedbackInput] = []
        seen = 0
        async for item in inputs:
            batch.append(item)
            if len(batch) == STREAM_BATCH:
                await self._learner.feedback_batch(batch, outcome, first_index=seen)
                seen += len(batch)
                batch = []
        await self._learner.feedback_batch(batch, outcome, first_index=seen)
        return codec.batch_outcome_to_proto(outcome)


STREAM_BATCH = 1000
MAX_UPLOAD_BATCH = 10_000


class AdminServicer(pb_grpc.AdminServicer):
    def __init__(self, admin: Admin, budgets: Budgets, bounds: Bounds | None = None) -> None:
        self._admin = admin
        self._budgets = budgets
        self.bounds = bounds  # every number of a request, checked by _edge

    @_edge
    async def PutRouter(self, request: pb.PutRouterRequest, context: Ctx) -> pb.PutRouterResponse:
        spec, created = await self._admin.put_router(codec.spec_from_proto(request.router))
        return pb.PutRouterResponse(router=codec.spec_to_proto(spec), created=created)

    @_edge
    async def GetRouter(self, request: pb.GetRouterRequest, context: Ctx) -> pb.GetRouterResponse:
        spec = await self._admin.get_router(request.tenant, request.name)
        return pb.GetRouterResponse(router=codec.spec_to_proto(spec))

    @_edge
    async def ListRouters(
        self, request: pb.ListRoutersRequest, context: Ctx
    ) -> pb.ListRoutersResponse:
        specs = await self._admin.list_routers(request.tenant)
        return pb.ListRoutersResponse(routers=[codec.spec_to_proto(s) for s in specs])

    @_edge
    async def DeleteRouter(
        self, request: pb.DeleteRouterRequest, context: Ctx
    ) -> pb.DeleteRouterResponse:
        return pb.DeleteRouterResponse(
            deleted=await self._admin.delete_router(request.tenant, request.name)
        )

    @_edge
    async def GetStats(self, request: pb.GetStatsRequest, context: Ctx) -> pb.GetStatsResponse:
        return codec.stats_to_proto(await self._admin.stats(request.tenant, request.name))

    # -- off-policy evaluation, promotion and rollback ----------------------------------------

    @_edge
    async def Evaluate(self, request: pb.EvaluateRequest, context: Ctx) -> pb.EvaluateResponse:
        t, n = request.tenant, request.name
        report = await self._admin.evaluate(
            t,
            n,
            [codec.candidate_from_proto(c, t, n) for c in request.candidates],
            cost_weight=request.cost_weight if request.HasField("cost_weight") else None,
            latency_weight=request.latency_weight if request.HasField("latency_weight") else None,
            energy_weight=request.energy_weight if request.HasField("energy_weight") else None,
            replicates=request.bootstrap_replicates or DEFAULT_BOOTSTRAP,
            limit=request.limit or DEFAULT_LIMIT,
            seed=request.seed,
        )
        return codec.evaluation_to_proto(report)

    @_edge
    async def PromoteRouter(
        self, request: pb.PromoteRouterRequest, context: Ctx
    ) -> pb.PromoteRouterResponse:
        t, n = request.tenant, request.name
        spec, previous = await self._admin.promote(
            t, n, codec.candidate_from_proto(request.candidate, t, n), request.expected_version
        )
        return pb.PromoteRouterResponse(router=codec.spec_to_proto(spec), previous_version=previous)

    @_edge
    async def RollbackRouter(
        self, request: pb.RollbackRouterRequest, context: Ctx
    ) -> pb.RollbackRouterResponse:
        spec, restored = await self._admin.rollback(
            request.tenant, request.name, request.to_version, request.expected_version
        )
        return pb.RollbackRouterResponse(
            router=codec.spec_to_proto(spec), restored_version=restored
        )

    @_edge
    async def ListRouterVersions(
        self, request: pb.ListRouterVersionsRequest, context: Ctx
    ) -> pb.ListRouterVersionsResponse:
        versions = await self._admin.versions(request.tenant, request.name)
        return pb.ListRouterVersionsResponse(versions=[codec.version_to_proto(v) for v in versions])

    # -- budgets (issue 6) ---------------------------------------------------------------------

    @_edge
    async def SetBudget(self, request: pb.SetBudgetRequest, context: Ctx) -> pb.SetBudgetResponse:
        spec, created = await self._budgets.put(codec.budget_from_proto(request.budget))
        return pb.SetBudgetResponse(budget=codec.budget_to_proto(spec), created=created)

    @_edge
    async def GetBudget(self, request: pb.GetBudgetRequest, context: Ctx) -> pb.GetBudgetResponse:
        _check_scope(request.tenant, request.router)
        return codec.budget_usage_to_proto(
            await self._budgets.usage(request.tenant, request.router)
        )

    @_edge
    async def ListBudgets(
        self, request: pb.ListBudgetsRequest, context: Ctx
    ) -> pb.ListBudgetsResponse:
        if request.tenant:
            check_name("tenant", request.tenant)
        found = await self._budgets.list_usage(request.tenant)
        return pb.ListBudgetsResponse(budgets=[codec.budget_usage_to_proto(u) for u in found])

    @_edge
    async def DeleteBudget(
        self, request: pb.DeleteBudgetRequest, context: Ctx
    ) -> pb.DeleteBudgetResponse:
        _check_scope(request.tenant, request.router)
        deleted = await self._budgets.delete(request.tenant, request.router)
        return pb.DeleteBudgetResponse(deleted=deleted)

    @_edge
    async def GetSpend(self, request: pb.GetSpendRequest, context: Ctx) -> pb.GetSpendResponse:
        _check_scope(request.tenant, request.router)
        check_finite("since_unix", request.since_unix)
        check_finite("until_unix", request.until_unix)
        until = request.until_unix or time.time()
        lines = await self._budgets.spend(
            request.tenant, request.router, request.since_unix, until, request.metadata_key
        )
        return codec.spend_to_proto(lines)


def _check_scope(tenant: str, router: str) -> None:
    """A budget's scope: a tenant, and a router of it or none (the tenant's budget)."""
    check_name("tenant", tenant)
    if router:
        check_name("router", router)
