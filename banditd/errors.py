"""The banditd exception tree. Domain code raises these; only the gRPC edge maps them to codes.

BanditdError
 ├── InvalidArgument      INVALID_ARGUMENT     bad field in a request (names the field)
 ├── BadData              INVALID_ARGUMENT     the database refused a row as data: set aside
 ├── NotFound             NOT_FOUND            unknown tenant, router or arm
 ├── AlreadyExists        ALREADY_EXISTS       second feedback for one decision
 ├── PermissionDenied     PERMISSION_DENIED    forged token, token of another tenant
 ├── FailedPrecondition   FAILED_PRECONDITION  expired token, no eligible arm
 ├── Aborted              ABORTED              lost a race with a concurrent change: retry
 ├── Unauthenticated      UNAUTHENTICATED      no API key, or an unknown or revoked one
 ├── ResourceExhausted    RESOURCE_EXHAUSTED   rate limit, feedback cap, spent budget (says which)
 └── Unavailable          UNAVAILABLE          the database cannot be reached
"""

from __future__ import annotations


class BanditdError(Exception):
    """Base of every error banditd reports to a caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(BanditdError):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class BadData(BanditdError):
    """The database refused a row as data (a value out of range, invalid JSON, a constraint):
    the same row would fail again, so it is never retried, only set aside (dead letters)."""


class NotFound(BanditdError):
    pass


class AlreadyExists(BanditdError):
    pass


class PermissionDenied(BanditdError):
    pass


class FailedPrecondition(BanditdError):
    pass


class Aborted(BanditdError):
    pass


class ResourceExhausted(BanditdError):
    pass


class Unavailable(BanditdError):
    pass


class Unauthenticated(BanditdError):
    pass
