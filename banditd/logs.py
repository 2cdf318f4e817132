"""structlog set-up: one JSON object per line on stdout, constant event names, key=value fields.

Each line leaves in one write, newline included: the processes of ``serve --workers N`` share
one stdout, and with unbuffered output (PYTHONUNBUFFERED, as the image sets) a line written as
text then newline, which ``print`` does, lets another process's line in between and breaks
both for a log shipper."""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(
    level: str = "info", *, cache: bool = False, stream: TextIO | None = None
) -> None:
    """``cache``: each module's logger binds its configuration on first use, for the process's
    lifetime (a server: about 5 us less per call, emitted or filtered). Off where the
    configuration may change later in the process (tests capture logs by reconfiguring).
    ``stream``: where the lines go; None: whatever sys.stdout is when a line is written."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _standard_numbers,
            _render,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(
            _Stdout() if stream is None else stream  # type: ignore[arg-type]
        ),
        cache_logger_on_first_use=cache,
    )


class _Stdout:
    """Whatever sys.stdout is when a line is written (a test's capture, a redirect): what
    structlog's WriteLogger writes each line to, in one ``write`` of the line and its newline."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


def _standard(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # "nan", "inf": log lines stay standard JSON
    if isinstance(value, dict):
        return {k: _standard(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_standard(v) for v in value]
    return value


def _standard_numbers(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Non-finite floats as strings, so the renderer can refuse NaN (allow_nan=False). An event
    of plain values only (the usual case: one per Select) is passed on as it is, not copied."""
    for value in event_dict.values():
        kind = type(value)
        if kind is float:
            if not math.isfinite(value):
                break
        elif kind not in _PLAIN and not (kind is dict and not value):
            break
    else:
        return event_dict
    return {key: _standard(value) for key, value in event_dict.items()}


_PLAIN = frozenset({str, int, bool, type(None)})


def _unencodable(value: Any) -> Any:
    """What JSON has no type for: its ``__structlog__()``, else its repr (as structlog's
    JSONRenderer)."""
    try:
        return value.__structlog__()
    except AttributeError:
        return repr(value)


# Built once: json.dumps with allow_nan=False builds an encoder per line.
_ENCODER = json.JSONEncoder(allow_nan=False, default=_unencodable)


def _render(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> str:
    """The line: structlog's JSONRenderer over json.dumps(allow_nan=False), the same text."""
    return _ENCODER.encode(event_dict)
