"""Field by field between a protobuf message and a dataclass of the same field names.

The API's rule (RouterSpec's docstring): a field left at zero, or an optional field left unset,
means "the default", the dataclass's. A dataclass field with no default is always copied.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from google.protobuf.message import Message

_ALWAYS, _IF_SET, _IF_NONZERO = 0, 1, 2


_PLANS: dict[tuple[type[Any], Any], tuple[tuple[str, int], ...]] = {}


def _plan(cls: type[Any], msg: Message) -> tuple[tuple[str, int], ...]:
    """(field, how it is read) for each field of ``cls`` that ``msg`` has too."""
    key = (cls, msg.DESCRIPTOR)
    if (plan := _PLANS.get(key)) is not None:
        return plan
    fields = msg.DESCRIPTOR.fields_by_name
    plan = _PLANS[key] = tuple(
        (
            f.name,
            _ALWAYS
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            else _IF_SET
            if fields[f.name].has_presence
            else _IF_NONZERO,
        )
        for f in dataclasses.fields(cls)
        if f.name in fields
    )
    return plan


def decoded(cls: type[Any], msg: Message, **given: Any) -> dict[str, Any]:
    """The keyword arguments of ``cls`` that ``msg`` sets, then ``given`` (which wins; repeated
    and message fields go there, converted)."""
    out: dict[str, Any] = {}
    for name, how in _plan(cls, msg):
        if name in given:
            continue
        value = getattr(msg, name)
        if how == _ALWAYS or (msg.HasField(name) if how == _IF_SET else value):
            out[name] = value
    out.update(given)
    return out


def encoded(obj: Any) -> dict[str, Any]:
    """A flat dataclass's fields as keyword arguments of the message of the same field names."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
