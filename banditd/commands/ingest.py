"""`banditd ingest`: bulk thumbs/rewards from a JSONL or CSV file into a running server.

Lines are sent in chunks over UploadFeedback (many events per message); after each chunk's reply
(which comes only once the chunk is committed) the number of lines done is written to a state
file with a hash of those lines (ingest_state), so an interrupted run resumes where it stopped,
and a new file under the old name is refused rather than skipped into. Each line's event is
named by an idempotency_key (the line's own column, else one made from the line's number and
content: ``line_key``), so a line sent again (the file run again, or a chunk resent after its
answer was lost) is a duplicate whatever the router's combine, never a second signal
(docs/how-it-works.md, resending). The next chunk is read while the server commits one, and sent
once that one is answered, so chunks commit in file order. A chunk also ends before its encoded
events would pass the server's message limit, and a line whose event alone passes it is refused
(too_large) rather than sent, so one huge line cannot block the file.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from banditd import progress
from banditd.commands import ingest_state
from banditd.config import MAX_MESSAGE_BYTES
from banditd.edge.tls import ClientSecurity
from banditd.errors import InvalidArgument
from banditd.v1 import banditd_pb2 as pb
from banditd.v1 import banditd_pb2_grpc as rpc

THUMBS = {"up": pb.THUMB_UP, "down": pb.THUMB_DOWN, "1": pb.THUMB_UP, "0": pb.THUMB_DOWN}
PREFERENCES = {"arm": pb.PREFER_ARM, "challenger": pb.PREFER_CHALLENGER, "tie": pb.PREFER_TIE}
ERRORS = {"true": True, "1": True, "false": False, "0": False}
# Lines an upload carries at most: its reply lists the first 1,000 refused events, and each
# refused line goes to the rejects file.
MAX_CHUNK = 1000
OPTIONAL_FLOATS = ("cost_usd", "latency_ms", "energy_wh")
OPTIONAL_INTS = ("input_tokens", "output_tokens")
_OPTIONAL: tuple[tuple[str, type[float] | type[int]], ...] = (
    *((n, float) for n in OPTIONAL_FLOATS),
    *((n, int) for n in OPTIONAL_INTS),
)


class BadLine(ValueError):
    pass


@dataclass
class IngestSummary:
    lines: int = 0
    skipped_lines: int = 0  # done by an earlier, interrupted run
    accepted: int = 0
    duplicate: int = 0
    expired: int = 0
    invalid: int = 0
    unparsable: int = 0
    too_large: int = 0  # an event over the message limit by itself
    rejects: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The counts, and the first 20 rejects (the --json object)."""
        counts = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "rejects"}
        return counts | {"first_rejects": self.rejects[:20]}


def parse_record(record: dict[str, Any], default_tenant: str | None) -> pb.FeedbackRequest:
    """One FeedbackRequest from a record of the file; BadLine says what is wrong."""
    try:
        return _request(record, default_tenant)
    except UnicodeEncodeError as exc:  # JSON's "\ud83d": half of a UTF-16 pair, no UTF-8
        half = exc.object[exc.start : exc.end]
        raise BadLine(f"text with a lone surrogate ({half!r}), not valid Unicode") from None


def _request(record: dict[str, Any], default_tenant: str | None) -> pb.FeedbackRequest:
    msg = pb.FeedbackRequest(
        tenant=str(record.get("tenant") or default_tenant or ""),
        decision_id=str(record.get("decision_id") or ""),
    )
    if not msg.tenant:
        raise BadLine("no tenant (add a tenant column or pass --tenant)")
    if not msg.decision_id:
        raise BadLine("no decision_id")
    thumb, reward = record.get("thumb"), record.get("reward")
    preference = record.get("preference")
    if preference not in (None, ""):  # pairwise (issue 21): arm, challenger or tie
        if str(preference).lower() not in PREFERENCES:
            raise BadLine(f"preference must be arm, challenger or tie, got {preference!r}")
        msg.preference = PREFERENCES[str(preference).lower()]
    if thumb not in (None, ""):
        if str(thumb).lower() not in THUMBS:
            raise BadLine(f"thumb must be up or down, got {thumb!r}")
        msg.thumb = THUMBS[str(thumb).lower()]
    elif reward not in (None, ""):
        try:
            msg.reward = _number(reward, float)
        except (TypeError, ValueError):
            raise BadLine(f"reward is not a number: {reward!r}") from None
    elif not msg.preference:
        raise BadLine("needs a thumb, a reward or a preference")
    for name, kind in _OPTIONAL:
        value = record.get(name)
        if value in (None, ""):
            continue
        try:
            setattr(msg, name, _number(value, kind))
        except (TypeError, ValueError):
            raise BadLine(f"{name} is not a valid {kind.__name__}: {value!r}") from None
    error = record.get("error")
    if error not in (None, ""):
        if isinstance(error, float) or str(error).lower() not in ERRORS:
            raise BadLine(f"error must be true or false, got {error!r}")
        msg.error = ERRORS[str(error).lower()]
    if record.get("idempotency_key") not in (None, ""):
        msg.idempotency_key = str(record["idempotency_key"])
    return msg


def _number(value: Any, kind: type[float] | type[int]) -> float | int:
    """``value`` as ``kind``, the same from a CSV cell's text as from JSON, refusing (ValueError)
    a JSON bool (no number) and a fraction where an integer is due (12.7, not 12); a whole
    number written as a float ("12.0", "12.", "1e2", JSON 12.0) is that integer."""
    if isinstance(value, bool):
        raise ValueError(value)
    if kind is int and not isinstance(value, int):
        whole = float(value)
        if whole % 1:  # a fraction; NaN and infinities too (their remainder is NaN)
            raise ValueError(value)
        return int(whole)
    return kind(value)


def line_key(number: int, msg: pb.FeedbackRequest) -> str:
    """The idempotency_key of a line without one: the same for the same line of the same file
    on every run (its number and what it says), another for another line, even an equal one."""
    content = msg.SerializeToString(deterministic=True)
    return "ingest:" + hashlib.sha256(b"%d\0%b" % (number, content)).hexdigest()[:40]


def batch_bytes(msg: pb.FeedbackRequest) -> int:
    """The bytes ``msg`` adds to its tenant's FeedbackBatch (a tag, a length and the event), with
    the batch's tenant counted again for each event: a bound from above, under gRPC's limit."""
    return pb.FeedbackBatch(tenant=msg.tenant, events=[msg]).ByteSize()


def read_records(path: Path, digest: Any = None) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    """(line number, record or the reason it cannot be read) for each data line; a file that is
    not UTF-8 text (a gzipped one, say) raises InvalidArgument. ``digest`` (a hashlib hash) is
    fed the text read, up to the end of each record as it is yielded."""
    try:
        yield from _records(path, digest or hashlib.sha256())
    except UnicodeDecodeError:
        problem = f"{path}: not UTF-8 text (ingest reads JSONL or CSV, uncompressed)"
        raise InvalidArgument("", problem) from None


def _records(path: Path, digest: Any) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:  # a BOM (Excel) is no text
        lines = _hashed(handle, digest)
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(lines)
            for row in reader:
                yield reader.line_num, dict(row)
            return
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, BadLine(f"not JSON: {exc.msg}")
                continue
            yield number, record if isinstance(record, dict) else BadLine("not a JSON object")


def _hashed(lines: Iterable[str], digest: Any) -> Iterator[str]:
    """The lines, each fed to ``digest`` without its line ending; blank lines only once a line
    follows them, so the hash at a record does not depend on blank lines after it."""
    held: list[str] = []
    for line in lines:
        if line.strip():
            for text in (*held, line):
                digest.update(text.rstrip("\r\n").encode() + b"\n")
            held.clear()
        else:
            held.append(line)
        yield line


def ingest(
    path: Path,
    target: str,
    *,
    tenant: str | None,
    state_path: Path,
    rejects_path: Path,
    chunk: int,
    fresh: bool,
    security: ClientSecurity | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> IngestSummary:
    summary = IngestSummary()
    fresh = fresh or not state_path.exists()
    mark = ingest_state.Mark() if fresh else ingest_state.read(state_path)
    done, digest = mark.lines, hashlib.sha256()
    security = security or ClientSecurity()
    label, total = f"ingest {path.name}", progress.lines_in(path)
    if total is not None and path.suffix.lower() == ".csv":
        total -= 1  # the header
    with (
        security.channel(target) as channel,
        ingest_state.open_rejects(rejects_path, mark) as rejects,
    ):
        stub = rpc.RouterStub(channel)
        pending: list[tuple[int, pb.FeedbackRequest]] = []
        pending_bytes = 0  # batch_bytes of the events pending
        position, before = 0, (0, digest.hexdigest())  # the mark before the line read
        # The chunk sent and not answered yet: the next one is read meanwhile, and sent only
        # once this one's reply is in (so chunks commit in file order).
        in_flight: tuple[Any, list[tuple[int, pb.FeedbackRequest]], int, str] | None = None
        # (line, kind, reason) of lines refused here: written after the reply of the chunk before
        unreadable: list[tuple[int, str, str]] = []

        def save(lines: int, sha256: str) -> None:  # the rejects too, as of the same mark
            rejects.flush()
            where = str(rejects_path.resolve())
            ingest_state.write(state_path, ingest_state.Mark(lines, sha256, where, rejects.tell()))

        def reject_unreadable() -> None:
            for number, kind, message in unreadable:
                _reject(summary, rejects, number, kind, message)
            unreadable.clear()

        def send(lines: int, sha256: str) -> None:
            # One UploadFeedback message per tenant of the chunk; error indexes count events in
            # the order sent. The state's mark once it commits: ``lines`` and their ``sha256``.
            nonlocal in_flight, pending_bytes
            by_tenant: dict[str, list[tuple[int, pb.FeedbackRequest]]] = {}
            for item in pending:
                by_tenant.setdefault(item[1].tenant, []).append(item)
            sent = [item for items in by_tenant.values() for item in items]
            batches = [
                pb.FeedbackBatch(tenant=t, events=[m for _, m in items])
                for t, items in by_tenant.items()
            ]
            call = stub.UploadFeedback.future(iter(batches), metadata=security.metadata)
            in_flight = (call, sent, lines, sha256)
            pending.clear()
            pending_bytes = 0

        def flush(lines: int, sha256: str) -> None:  # send the chunk pending, in file order
            finish()
            reject_unreadable()
            send(lines, sha256)

        def finish() -> None:
            nonlocal in_flight
            if in_flight is None:
                return
            call, sent, done_position, sha256 = in_flight
            in_flight = None
            reply = call.result()
            for name in ("accepted", "duplicate", "expired", "invalid"):
                setattr(summary, name, getattr(summary, name) + getattr(reply, name))
            for error in reply.errors:
                _reject(summary, rejects, sent[error.index][0], error.kind, error.message)
            save(done_position, sha256)
            progress.update(label, done_position, total)

        try:
            for number, item in read_records(path, digest):
                position += 1
                summary.lines += 1
                if position <= done:
                    summary.skipped_lines += 1
                    if position == done:
                        ingest_state.check(path, state_path, mark, position, digest.hexdigest())
                    continue
                try:
                    if isinstance(item, BadLine):
                        raise item
                    msg = parse_record(item, tenant)
                except BadLine as exc:
                    summary.unparsable += 1
                    unreadable.append((number, "unparsable", str(exc)))
                else:
                    msg.idempotency_key = msg.idempotency_key or line_key(number, msg)
                    size = batch_bytes(msg)
                    if size > max_message_bytes:
                        summary.too_large += 1
                        why = f"{size} bytes encoded, over --max-message-bytes {max_message_bytes}"
                        unreadable.append((number, "too_large", why))
                    else:
                        if pending_bytes + size > max_message_bytes:
                            flush(*before)  # this line starts the next chunk
                        pending.append((number, msg))
                        pending_bytes += size
                if len(pending) == chunk:
                    flush(position, digest.hexdigest())
                before = (position, digest.hexdigest())
            if position < done:  # the file is shorter than the lines done
                ingest_state.check(path, state_path, mark, position, digest.hexdigest())
            finish()
            reject_unreadable()
            if pending:
                send(position, digest.hexdigest())
                finish()
        finally:
            if in_flight is not None:  # interrupted: the chunk sent may or may not commit
                in_flight[0].cancel()
        save(position, digest.hexdigest())
    return summary


def _reject(summary: IngestSummary, out: Any, line: int, kind: str, message: str) -> None:
    entry = {"line": line, "kind": kind, "message": message}
    summary.rejects.append(entry)
    out.write(json.dumps(entry) + "\n")
