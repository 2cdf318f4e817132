"""banditd errors (gRPC status codes) as HTTP answers, in OpenAI's error shape:
``{"error": {"message", "type", "code"}}``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from banditd.errors import BanditdError

HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "FAILED_PRECONDITION": 412,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


def error_response(status: int, message: str, kind: str, code: str = "") -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "code": code or None}}, status_code=status
    )


def banditd_error(exc: BanditdError) -> JSONResponse:
    """banditd's refusal, with its gRPC code name as ``code``; a message over gRPC's size limit
    (BANDITD_MAX_MESSAGE_BYTES), which gRPC refuses as RESOURCE_EXHAUSTED, is the body's size
    (413), not a rate or a budget (429)."""
    if exc.code == "RESOURCE_EXHAUSTED" and "message larger than max" in exc.message:
        return error_response(413, exc.message, "invalid_request_error", "body_too_large")
    return error_response(
        HTTP_STATUS.get(exc.code, 500), exc.message, "banditd_error", exc.code.lower()
    )


def bad_request(message: str) -> JSONResponse:
    return error_response(400, message, "invalid_request_error", "invalid_argument")


def unauthenticated(message: str) -> JSONResponse:
    return error_response(401, message, "invalid_request_error", "unauthenticated")


MAX_BODY_BYTES = 16 * 1024 * 1024  # a request body larger than this is refused (413)


class BodyTooLarge(ValueError):
    pass


async def read_body(request: Request) -> bytes:
    """The request's body, read up to MAX_BODY_BYTES (BodyTooLarge past it)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BodyTooLarge(f"the body is over {MAX_BODY_BYTES} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BodyTooLarge(f"the body is over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(exc: BodyTooLarge) -> JSONResponse:
    return error_response(413, str(exc), "invalid_request_error", "body_too_large")
