"""Keyword arguments -> protobuf requests, shared by Client and AsyncClient (pure functions, but
for the idempotency key each feedback event is given: a fresh uuid4, unless the caller names one).

The argument names are the proto fields' (banditd/v1/banditd.proto). A value of None is the same
as leaving the argument out. What protobuf cannot carry (a wrong type, a lone surrogate), and
bytes for a str (which it would take, as UTF-8), are refused here, naming the field; the server
validates everything else, so its errors (and messages) are the same for every caller.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Required, TypedDict

from google.protobuf.descriptor import FieldDescriptor

from banditd.errors import InvalidArgument
from banditd.v1 import banditd_pb2 as pb

MAX_CHUNK = 10_000  # events in one UploadFeedback message (the server refuses more)
DEFAULT_CHUNK = 1000  # events per UploadFeedback call (and commit), as `banditd ingest`
THUMBS = {"up": pb.THUMB_UP, "down": pb.THUMB_DOWN}
PREFERENCES = {"arm": pb.PREFER_ARM, "challenger": pb.PREFER_CHALLENGER, "tie": pb.PREFER_TIE}


class SelectArgs(TypedDict, total=False):
    """Select's arguments. ``tenant`` defaults to the client's; give ``prompt`` or
    ``embedding``; ``request_id`` makes a retry return the first decision (and only then is
    Select retried on UNAVAILABLE or ABORTED)."""

    tenant: str | None
    router: Required[str]
    prompt: str | None
    embedding: Sequence[float] | None  # (embedding_dim,) floats
    metadata: Mapping[str, str] | None
    cost_weight: float | None
    max_cost_usd: float | None
    latency_weight: float | None  # utility per second of expected latency
    energy_weight: float | None  # utility per Wh of expected energy
    max_latency_ms: float | None
    candidates: Sequence[str] | None
    request_id: str | None
    compare: bool | None  # also pick a challenger arm (Decision.challenger) for a preference
    input_tokens: int | None  # the request's, for expected costs (a prompt cut short, embedding)


class FeedbackArgs(TypedDict, total=False):
    """Feedback's arguments (and one event of upload_feedback). ``tenant`` defaults to the
    client's; give ``thumb`` or ``reward`` (in [0, 1]), or for a decision made with compare,
    ``preference``: "arm", "challenger" or "tie". ``idempotency_key`` names the event (default:
    a fresh uuid4, sent again by every retry): a resend with it is answered as the event
    recorded, never counted twice. Give your own to make a resend of yours safe too."""

    tenant: str | None
    decision_id: Required[str]
    thumb: Literal["up", "down"] | None
    reward: float | None
    cost_usd: float | None
    input_tokens: int | None
    output_tokens: int | None
    latency_ms: float | None
    error: bool | None
    energy_wh: float | None
    usage_only: bool | None  # a usage report, not a rating (gateway; docs/gateway.md)
    first_token_ms: float | None
    preference: Literal["arm", "challenger", "tie"] | None
    idempotency_key: str | None


class CallOptions(TypedDict, total=False):
    """What every call also takes: ``timeout``, its deadline in seconds, retries included (None:
    the client's), and ``api_key``, its own key instead of the client's (a gateway forwarding its
    caller's)."""

    timeout: float | None
    api_key: str | None


class SelectCall(SelectArgs, CallOptions, total=False):
    """select()'s keyword arguments."""


class FeedbackCall(FeedbackArgs, CallOptions, total=False):
    """feedback()'s keyword arguments."""


class UploadOptions(CallOptions, total=False):
    """upload_feedback()'s keyword arguments: ``tenant`` of events that name none (default: the
    client's), ``chunk_size`` events per call (DEFAULT_CHUNK, at most MAX_CHUNK); ``timeout``
    is per call."""

    tenant: str | None
    chunk_size: int | None


_KINDS = {
    FieldDescriptor.CPPTYPE_STRING: "a str",
    FieldDescriptor.CPPTYPE_DOUBLE: "a number",
    FieldDescriptor.CPPTYPE_INT64: "an int",
    FieldDescriptor.CPPTYPE_BOOL: "a bool",
}
_NAMED_KINDS = {  # what the proto's field type does not say
    "candidates": "a list of arm names",
    "metadata": "a mapping of str to str",
    "embedding": "floats",
    "thumb": "'up' or 'down'",
    "preference": "'arm', 'challenger' or 'tie'",
}


@dataclass(frozen=True)
class _Fields:
    """Sets ``msg``'s fields from the caller's values, as the client's errors where protobuf
    refuses one, naming the field (and in an upload the event): a value of the wrong type (a
    reward read from JSON as "0.5") TypeError; one no field can carry (a lone surrogate, an int
    past 64 bits) InvalidArgument, as the server answers a client that could send it."""

    msg: Any
    call: str  # "select()", "feedback()", or an upload's "events[3]"
    where: str = ""  # prefixes the field an InvalidArgument names: "events[3]."

    def set(self, name: str, value: Any) -> None:
        """The field ``name`` to ``value`` (None: left unset)."""
        if value is not None:
            with self.naming(name, value):
                _no_bytes((value,))
                setattr(self.msg, name, value)

    def copy(self, args: Mapping[str, Any], names: Sequence[str]) -> None:
        """The fields ``names`` to the values ``args`` gives (None or none: left unset)."""
        for name in names:
            self.set(name, args.get(name))

    @contextlib.contextmanager
    def naming(self, name: str, value: Any) -> Iterator[None]:
        try:
            yield
        except UnicodeEncodeError as exc:
            raise InvalidArgument(
                f"{self.where}{name}",
                f"is not valid Unicode: {exc.object[exc.start]!r} at {exc.start}",
            ) from None
        except ValueError as exc:
            raise InvalidArgument(f"{self.where}{name}", str(exc)) from None
        except TypeError:
            raise self.wrong_type(name, value) from None

    def wrong_type(self, name: str, value: Any) -> TypeError:
        """The caller's error for ``value``, of a type field ``name`` does not take."""
        field = self.msg.DESCRIPTOR.fields_by_name[name]
        kind = _NAMED_KINDS.get(name) or _KINDS.get(field.cpp_type, "of the proto's type")
        return TypeError(
            f"{self.call}: {name} must be {kind}, got {type(value).__name__} {value!r}"
        )


def _no_bytes(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """``values``, none of them bytes: protobuf takes bytes for a str field (as UTF-8), but no
    field the client sets is bytes, so bytes are the caller's mistake (a b"acme" read from a
    file, a header) and TypeError, as any other wrong type."""
    if any(isinstance(v, bytes | bytearray) for v in values):
        raise TypeError("bytes for a str")
    return values


def _check_names(args: Mapping[str, Any], kind: type[Any], what: str) -> None:
    unknown = sorted(set(args) - set(kind.__annotations__))
    if unknown:
        raise TypeError(f"{what} got unexpected arguments: {', '.join(unknown)}")


def _require(args: Mapping[str, Any], name: str, what: str) -> None:
    if args.get(name) is None:
        raise TypeError(f"{what} missing required argument: {name!r}")


def select_request(args: SelectArgs, default_tenant: str | None) -> pb.SelectRequest:
    _check_names(args, SelectArgs, "select()")
    _require(args, "router", "select()")
    prompt, embedding = args.get("prompt"), args.get("embedding")
    if prompt is not None and embedding is not None:
        raise InvalidArgument("context", "give prompt or embedding, not both")
    candidates = args.get("candidates")
    if isinstance(candidates, str):  # a sequence too: each character would be an arm's name
        raise TypeError(
            f"select(): candidates must be a list of arm names, not a str: {candidates!r}"
        )
    msg = pb.SelectRequest()
    fields = _Fields(msg, "select()")
    fields.set("tenant", args.get("tenant") or default_tenant or "")
    fields.copy(args, ("router", "request_id", "compare", "prompt", "cost_weight", "max_cost_usd"))
    fields.copy(args, ("latency_weight", "energy_weight", "max_latency_ms", "input_tokens"))
    with fields.naming("candidates", candidates):
        msg.candidates.extend(_no_bytes(tuple(candidates or ())))
    metadata = args.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):  # update() takes pairs too
        raise fields.wrong_type("metadata", metadata)
    with fields.naming("metadata", metadata):
        _no_bytes(tuple(item for pair in (metadata or {}).items() for item in pair))
        msg.metadata.update(metadata or {})
    if embedding is not None:
        with fields.naming("embedding", embedding):
            msg.embedding.values.extend(embedding)
    return msg


def feedback_request(
    args: FeedbackArgs, default_tenant: str | None, where: str = ""
) -> pb.FeedbackRequest:
    """``where`` prefixes the field a client-side refusal names (an event's index in an upload)."""
    call = where.rstrip(".") or "feedback()"
    _check_names(args, FeedbackArgs, call)
    _require(args, "decision_id", call)
    msg = pb.FeedbackRequest()
    fields = _Fields(msg, call, where)
    fields.set("tenant", args.get("tenant") or default_tenant or "")
    fields.copy(args, ("decision_id", "error", "usage_only"))
    # Built once per event: each retry of its call sends this message, key included.
    fields.set("idempotency_key", args.get("idempotency_key") or str(uuid.uuid4()))
    thumb, reward = args.get("thumb"), args.get("reward")
    if thumb is not None and reward is not None:
        raise InvalidArgument(f"{where}signal", "give thumb or reward, not both")
    if thumb is not None:
        if not isinstance(thumb, str):  # a list is not even hashable
            raise fields.wrong_type("thumb", thumb)
        if thumb not in THUMBS:
            raise InvalidArgument(f"{where}thumb", f"must be 'up' or 'down', got {thumb!r}")
        msg.thumb = THUMBS[thumb]
    preference = args.get("preference")
    if preference is not None:
        if not isinstance(preference, str):
            raise fields.wrong_type("preference", preference)
        if preference not in PREFERENCES:
            raise InvalidArgument(
                f"{where}preference",
                f"must be 'arm', 'challenger' or 'tie', got {preference!r}",
            )
        msg.preference = PREFERENCES[preference]
    fields.copy(args, ("reward", "cost_usd", "input_tokens", "output_tokens", "latency_ms"))
    fields.copy(args, ("energy_wh", "first_token_ms"))
    return msg


@dataclass(frozen=True)
class Chunk:
    """One UploadFeedback call: a FeedbackBatch per tenant, and each sent event's position in
    the caller's sequence (in the order sent, which is how the server's error indexes count)."""

    batches: tuple[pb.FeedbackBatch, ...]
    positions: tuple[int, ...]


def upload_chunks(
    events: Iterable[FeedbackArgs], default_tenant: str | None, chunk_size: int
) -> Iterator[Chunk]:
    """The events in calls of at most ``chunk_size``, read lazily (a generator of any length is
    held one chunk at a time)."""
    if not 1 <= chunk_size <= MAX_CHUNK:
        raise ValueError(f"chunk_size must be in 1..{MAX_CHUNK}, got {chunk_size}")
    pending: dict[str, list[tuple[int, pb.FeedbackRequest]]] = {}
    count = 0
    for position, event in enumerate(events):
        if not isinstance(event, Mapping):  # a str or list would be read as argument names
            kind = type(event).__name__
            raise TypeError(f"events[{position}] must be a dict of feedback arguments, got {kind}")
        msg = feedback_request(event, default_tenant, where=f"events[{position}].")
        pending.setdefault(msg.tenant, []).append((position, msg))
        count += 1
        if count == chunk_size:
            yield _chunk(pending)
            pending, count = {}, 0
    if count:
        yield _chunk(pending)


def _chunk(by_tenant: dict[str, list[tuple[int, pb.FeedbackRequest]]]) -> Chunk:
    return Chunk(
        batches=tuple(
            pb.FeedbackBatch(tenant=tenant, events=[m for _, m in items])
            for tenant, items in by_tenant.items()
        ),
        positions=tuple(p for items in by_tenant.values() for p, _ in items),
    )
