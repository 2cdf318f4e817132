"""The banditd Python client: Select, Feedback and bulk feedback over gRPC.

    from banditd.client import Client

    with Client("127.0.0.1:50051", tenant="acme") as client:
        decision = client.select(router="chat", prompt="Summarise this contract")
        client.feedback(decision_id=decision.decision_id, thumb="up", cost_usd=0.0012)

``AsyncClient`` is the same for asyncio (``await client.select(...)``). Failures raise the
banditd exception tree (banditd.errors, re-exported here), one class per gRPC status code,
and ClientClosed for a call after close() (or one in flight that close() cancelled).
This package imports neither the server nor its dependencies (numba, SQLAlchemy). See
docs/client.md.
"""

from banditd.client._async import AsyncClient
from banditd.client._errors import ClientClosed
from banditd.client._requests import FeedbackArgs, SelectArgs
from banditd.client._results import (
    Decision,
    FeedbackResult,
    RankedArm,
    UploadError,
    UploadSummary,
)
from banditd.client._retry import NO_RETRY, RetryPolicy
from banditd.client._sync import Client
from banditd.edge.tls import TLSConfigError
from banditd.errors import (
    Aborted,
    AlreadyExists,
    BanditdError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "NO_RETRY",
    "Aborted",
    "AlreadyExists",
    "AsyncClient",
    "BanditdError",
    "Client",
    "ClientClosed",
    "DeadlineExceeded",
    "Decision",
    "FailedPrecondition",
    "FeedbackArgs",
    "FeedbackResult",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "RankedArm",
    "ResourceExhausted",
    "RetryPolicy",
    "SelectArgs",
    "TLSConfigError",
    "Unauthenticated",
    "Unavailable",
    "UploadError",
    "UploadSummary",
]
