"""POST /v1/select and POST /v1/feedback: Select and Feedback for callers without gRPC.

Bodies and answers are the proto messages in protobuf's JSON mapping (field names as in the
proto or in lowerCamelCase; answers in lowerCamelCase). Errors are banditd's, as HTTP status
codes (http_errors.HTTP_STATUS); the API key is the caller's ``Authorization: Bearer`` one.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from banditd.client import BanditdError
from banditd.gateway.chat import Gateway
from banditd.gateway.http_errors import (
    BodyTooLarge,
    bad_request,
    banditd_error,
    read_body,
    too_large,
)
from banditd.v1 import banditd_pb2 as pb

THUMBS = {pb.THUMB_UP: "up", pb.THUMB_DOWN: "down"}
PREFERENCES = {pb.PREFER_ARM: "arm", pb.PREFER_CHALLENGER: "challenger", pb.PREFER_TIE: "tie"}


async def select_json(gw: Gateway, request: Request) -> Response:
    msg = pb.SelectRequest()
    if (refused := await _parse(request, msg)) is not None:
        return refused
    try:
        decision = await gw.client.select(api_key=gw.key_of(request), **_args(msg))
    except BanditdError as exc:
        return banditd_error(exc)
    except TypeError as exc:  # a field the client does not send
        return bad_request(str(exc))
    return JSONResponse(json_format.MessageToDict(decision.raw))


async def feedback_json(gw: Gateway, request: Request) -> Response:
    msg = pb.FeedbackRequest()
    if (refused := await _parse(request, msg)) is not None:
        return refused
    if msg.WhichOneof("signal") == "thumb" and msg.thumb not in THUMBS:
        return bad_request("thumb must be THUMB_UP or THUMB_DOWN")
    try:
        result = await gw.client.feedback(api_key=gw.key_of(request), **_args(msg))
    except BanditdError as exc:
        return banditd_error(exc)
    except TypeError as exc:
        return bad_request(str(exc))
    if result.raw is None:  # a retry found it committed by its first attempt
        return JSONResponse({"alreadyRecorded": True})
    return JSONResponse(json_format.MessageToDict(result.raw))


async def _parse(request: Request, msg: Message) -> Response | None:
    try:
        json_format.Parse(await read_body(request), msg)
    except BodyTooLarge as exc:
        return too_large(exc)
    except json_format.ParseError as exc:
        return bad_request(f"not a valid {msg.DESCRIPTOR.name} in JSON: {exc}")
    return None


def _args(msg: Message) -> dict[str, Any]:
    """The set fields of a request as the client's keyword arguments (same names)."""
    args: dict[str, Any] = {}
    for fd, value in msg.ListFields():
        if isinstance(value, pb.Embedding):
            args[fd.name] = list(value.values)
        elif fd.name == "thumb":
            args[fd.name] = THUMBS[value]
        elif fd.name == "preference":  # the client takes it by name, as "thumb"
            args[fd.name] = PREFERENCES.get(value, value)
        elif fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            args[fd.name] = dict(value)
        elif fd.is_repeated:
            args[fd.name] = list(value)
        else:
            args[fd.name] = value
    return args
