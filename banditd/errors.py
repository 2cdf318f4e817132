"""The banditd exception tree, shared by the server and the client (banditd.client).

Domain code raises these; the server's gRPC edge sends each as its class's status code, and the
client raises the class of the code it receives, with the server's message. The code of each
class is its ``code`` attribute (a ``grpc.StatusCode`` name; this module imports no grpc):

BanditdError              any other code (UNKNOWN, UNIMPLEMENTED, ...: ``code`` says which)
 ├── InvalidArgument      INVALID_ARGUMENT     bad field in a request (names the field)
 ├── BadData              INVALID_ARGUMENT     the database refused a row as data: set aside
 ├── NotFound             NOT_FOUND            unknown tenant, router or arm
 ├── AlreadyExists        ALREADY_EXISTS       second feedback for one decision
 │    └── Recorded                             a resend of a recorded feedback (its key):
 │                                             Feedback answers it as recorded (not raised)
 ├── PermissionDenied     PERMISSION_DENIED    forged token, token of another tenant
 ├── FailedPrecondition   FAILED_PRECONDITION  expired token, no eligible arm
 ├── Aborted              ABORTED              lost a race with a concurrent change: retry
 │    └── Abandoned                            work stopped as its caller gave up (a
 │                                             cancelled Evaluate): nobody is left to answer
 ├── Unauthenticated      UNAUTHENTICATED      no API key, or an unknown or revoked one
 ├── ResourceExhausted    RESOURCE_EXHAUSTED   rate limit, feedback cap, spent budget (says which)
 ├── Unavailable          UNAVAILABLE          the database, or (client) the server, unreachable
 ├── DeadlineExceeded     DEADLINE_EXCEEDED    (client) the call's deadline passed
 └── Internal             INTERNAL             (client) a server bug, logged on the server

The client adds one class of its own, banditd.client.ClientClosed (CANCELLED): a call after
close(), refused before anything is sent, or one in flight that close() cancelled.
"""

from __future__ import annotations

from typing import Any


class BanditdError(Exception):
    """Base of every error banditd reports to a caller. A subclass names its status code in its
    class line: ``class NotFound(BanditdError, code="NOT_FOUND")``."""

    code = "UNKNOWN"
    # Set by the client's upload_feedback on the error that stopped it: the UploadSummary
    # (banditd.client) of the calls committed before it; None on any other error. Any: this
    # module, shared with the server, imports nothing of the client.
    uploaded: Any = None

    def __init_subclass__(cls, code: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if code:
            cls.code = code

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(BanditdError, code="INVALID_ARGUMENT"):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field


class BadData(BanditdError, code="INVALID_ARGUMENT"):
    """The database refused a row as data (a value out of range, invalid JSON, a constraint):
    the same row would fail again, so it is never retried, only set aside (dead letters).
    A client receives it as InvalidArgument (one code, one class on that side)."""


class NotFound(BanditdError, code="NOT_FOUND"): ...


class AlreadyExists(BanditdError, code="ALREADY_EXISTS"): ...


class Recorded(AlreadyExists):
    """A feedback event whose idempotency key its decision has recorded: the recorded event's
    id (0: parked until its decision is visible), reward and cost, as Feedback answered it.
    Feedback answers a resend with these, and a stream counts it a duplicate; a client would
    receive it as AlreadyExists (one code, one class on that side)."""

    def __init__(
        self, message: str, event_id: int = 0, reward: float = 0.0, cost_usd: float = 0.0
    ) -> None:
        super().__init__(message)
        self.event_id, self.reward, self.cost_usd = event_id, reward, cost_usd


class PermissionDenied(BanditdError, code="PERMISSION_DENIED"): ...


class FailedPrecondition(BanditdError, code="FAILED_PRECONDITION"): ...


class Aborted(BanditdError, code="ABORTED"): ...


class Abandoned(Aborted):
    """CPU-bound work stopped at a check of its ``banditd.flows.stop.Stop``, set when the call
    that awaited it was cancelled. ``reached``: how far each stage got (``replay_done``,
    ``replay_total``, ...). A client would receive it as Aborted (one code, one class on that
    side)."""

    def __init__(self, message: str, reached: dict[str, int] | None = None) -> None:
        super().__init__(message)
        self.reached = reached or {}


class ResourceExhausted(BanditdError, code="RESOURCE_EXHAUSTED"): ...


class Unavailable(BanditdError, code="UNAVAILABLE"): ...


class Unauthenticated(BanditdError, code="UNAUTHENTICATED"): ...


class DeadlineExceeded(BanditdError, code="DEADLINE_EXCEEDED"): ...


class Internal(BanditdError, code="INTERNAL"): ...


# The class a client raises for each code: every class of the tree, BadData aside (the server's
# own kind of INVALID_ARGUMENT).
_BY_CODE: dict[str, type[BanditdError]] = {
    cls.code: cls for cls in BanditdError.__subclasses__() if cls is not BadData
}


def from_status(code: str, message: str) -> BanditdError:
    """The error a status code name and message stand for (the client's side of the edge)."""
    cls = _BY_CODE.get(code)
    if cls is None:
        error = BanditdError(message)
        error.code = code
        return error
    if cls is InvalidArgument:
        field, sep, problem = message.partition(": ")
        if sep and " " not in field:  # "field: problem", as InvalidArgument writes it
            return InvalidArgument(field, problem)
        return InvalidArgument("", message)
    return cls(message)
