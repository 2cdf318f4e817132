"""Routers files: routers as YAML (or JSON), read and checked whole, written back, compared.

A file is one mapping with a ``routers`` list. A router's keys are the field names of the API's
RouterConfig (an arm's those of Arm, a shadow's those of ShadowPolicy), so the file, the proto and
docs/routers.md say the same thing; a key left out takes the API's default. Reading checks every
router before anything can be applied: the document's shape, unknown and repeated keys, each
value's type, then the server's own validation (banditd.domain, through codec). Every bad router
is reported, one line each, naming the file, the router and the field.

``dump`` writes routers in the same format, leaving out the keys at their default, so reading what
it wrote gives the same specs back: what `banditd routers get` prints, `apply` takes unchanged.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
from collections.abc import Callable, Hashable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar, cast

import yaml
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from banditd.commands.argtypes import UINT32_MAX
from banditd.domain import RouterSpec, check_name
from banditd.domain.bounds import fixed_bounds
from banditd.edge import codec
from banditd.errors import InvalidArgument
from banditd.v1 import banditd_pb2 as pb

EXAMPLE = "examples/routers.yaml"  # in the package; the repository's examples/ holds a copy
READ_ONLY = {"RouterConfig": ("version",)}
# Keys a file must give. A missing price would make an arm look free to a cost-aware router.
REQUIRED = {
    "RouterConfig": ("tenant", "name", "arms"),
    "Arm": ("name", "input_price_per_mtok", "output_price_per_mtok"),
    "ShadowPolicy": ("name",),
}
# Written by dump whatever their value.
ALWAYS_WRITTEN = {
    "RouterConfig": ("tenant", "name", "arms"),
    "Arm": ("name", "input_price_per_mtok", "output_price_per_mtok"),
    "ShadowPolicy": ("name", "policy"),
}
T = TypeVar("T")
M = TypeVar("M", bound=Message)
_FIXED_BOUNDS = fixed_bounds()  # a setting's bounds (BANDITD_MAX_PRICE_PER_MTOK): the server's


class RoutersFileError(ValueError):
    """A routers file that cannot be applied: one line per problem, each naming the file and,
    where it is one router's, the router and the field."""


class _FieldError(Exception):
    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)


# -- reading -------------------------------------------------------------------------------------


def read(path: Path) -> list[RouterSpec]:
    """The routers of a file (``-``: standard input), JSON when it ends in .json, else YAML."""
    source = "<stdin>" if str(path) == "-" else str(path)
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RoutersFileError(f"{source}: cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise RoutersFileError(f"{source}: not UTF-8 text") from None
    return parse(text, source, as_json=path.suffix.lower() == ".json")


def example() -> list[RouterSpec]:
    """The example routers shipped with the package (demo/chat)."""
    text = resources.files("banditd").joinpath(EXAMPLE).read_text(encoding="utf-8")
    return parse(text, EXAMPLE)


def parse(text: str, source: str, *, as_json: bool = False) -> list[RouterSpec]:
    """Every router of a file's text, each validated as the server would; RoutersFileError
    lists the problems of all bad routers (``source`` names the file in messages)."""
    document = _load_json(text, source) if as_json else _load_yaml(text, source)
    specs: list[RouterSpec] = []
    problems: list[str] = []
    first_index: dict[tuple[str, str], int] = {}
    for index, entry in enumerate(_entries(document, source)):
        label = _label(entry, index)
        try:
            spec = _router(entry)
        except _FieldError as exc:
            problems.append(f"{source}: {label}: {exc}")
            continue
        key = (spec.tenant, spec.name)
        if key in first_index:
            problems.append(
                f"{source}: {label}: listed twice (routers[{first_index[key]}] and "
                f"routers[{index}])"
            )
            continue
        first_index[key] = index
        specs.append(spec)
    if problems:
        raise RoutersFileError("\n".join(problems))
    return specs


class _StrictLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no type hints
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Hashable] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice", key_node.start_mark
                )
            if isinstance(key, Hashable):
                seen.add(key)
        return super().construct_mapping(node, deep)


def _load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise RoutersFileError(f"{source}: {where}not valid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise RoutersFileError(f"{source}: not valid YAML: {exc}") from None
    except ValueError as exc:  # an integer past Python's 4300 digits (PyYAML's int())
        raise RoutersFileError(f"{source}: not valid YAML: {exc}".partition(";")[0]) from None


def _load_json(text: str, source: str) -> Any:
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if twice := sorted({k for k in keys if keys.count(k) > 1}):
            raise RoutersFileError(f"{source}: key {twice[0]!r} given twice in one object")
        return dict(pairs)

    try:
        return json.loads(text, object_pairs_hook=unique)
    except RoutersFileError:
        raise  # a key given twice (unique)
    except json.JSONDecodeError as exc:
        raise RoutersFileError(
            f"{source}: line {exc.lineno}, column {exc.colno}: not valid JSON: {exc.msg}"
        ) from None
    except ValueError as exc:  # an integer past Python's 4300 digits
        raise RoutersFileError(f"{source}: not valid JSON: {exc}".partition(";")[0]) from None


def _entries(document: Any, source: str) -> list[Any]:
    shape = "a mapping with a routers list"
    if not isinstance(document, dict):
        raise RoutersFileError(f"{source}: expected {shape}, got {_kind(document)}")
    unknown = [k for k in document if k != "routers"]
    if unknown:
        raise RoutersFileError(f"{source}: unknown key {unknown[0]!r} (expected {shape})")
    if "routers" not in document:
        raise RoutersFileError(f"{source}: routers: required")
    entries = document["routers"]
    if not isinstance(entries, list):
        raise RoutersFileError(f"{source}: routers: must be a list, got {_kind(entries)}")
    return entries


def _label(entry: Any, index: int) -> str:
    """How messages name a router: tenant/name where both are valid, else its position."""
    if isinstance(entry, dict):
        tenant, name = entry.get("tenant"), entry.get("name")
        if isinstance(tenant, str) and isinstance(name, str):
            try:
                return f"router {check_name('tenant', tenant)}/{check_name('name', name)}"
            except InvalidArgument:
                pass
    return f"routers[{index}]"


def _router(entry: Any) -> RouterSpec:
    msg = pb.RouterConfig()
    _fill(msg, entry, "")
    # Arms and shadows one by one first, so an error names which one.
    for i, arm in enumerate(msg.arms):
        _validated(codec.arm_from_proto, arm, f"arms[{i}].")
    for i, shadow in enumerate(msg.shadows):
        _validated(codec.shadow_from_proto, shadow, f"shadows[{i}].")
    return _validated(codec.spec_from_proto, msg, "")


def _validated(build: Callable[[M], T], msg: M, prefix: str) -> T:
    """build(msg), then the bounds no setting moves; their InvalidArgument ("router.pca_dim"
    from the domain, "pca_dim" from the bounds) as a _FieldError at prefix + "pca_dim"."""
    try:
        built = build(msg)
        _FIXED_BOUNDS.check_message(msg)
        return built
    except InvalidArgument as exc:
        problem = exc.message.removeprefix(f"{exc.field}: ")
        raise _FieldError(prefix + exc.field.split(".", 1)[-1], problem) from None


def _fill(msg: Message, data: Any, path: str) -> None:
    """Set msg's fields from a file's mapping; path (e.g. "arms[1].") prefixes field names."""
    kind = msg.DESCRIPTOR.name
    if not isinstance(data, dict):
        raise _FieldError(path.rstrip("."), f"must be a mapping of {kind} keys, got {_kind(data)}")
    # protobuf's stubs give the upb descriptor type too; the public one is what this uses
    fields = {f.name: cast(FieldDescriptor, f) for f in msg.DESCRIPTOR.fields}
    for key, value in data.items():
        field = fields.get(key) if isinstance(key, str) else None
        if field is None:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _FieldError(f"{path}{key}", f"unknown key{hint}")
        if key in READ_ONLY.get(kind, ()):
            raise _FieldError(f"{path}{key}", "read-only (the server sets it)")
        _set(msg, field, value, f"{path}{key}")
    for key in REQUIRED.get(kind, ()):
        if key not in data:
            raise _FieldError(f"{path}{key}", "required")


def _set(msg: Message, field: FieldDescriptor, value: Any, where: str) -> None:
    if field.is_repeated:
        if not isinstance(value, list):
            raise _FieldError(where, f"must be a list, got {_kind(value)}")
        target = getattr(msg, field.name)
        for i, item in enumerate(value):
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                _fill(target.add(), item, f"{where}[{i}].")
            else:
                target.append(_scalar(field, item, f"{where}[{i}]"))
    elif value is None and field.has_presence:
        return  # null: unset, as if left out
    else:
        setattr(msg, field.name, _scalar(field, value, where))


def _scalar(field: FieldDescriptor, value: Any, where: str) -> str | bool | float | int:
    if field.type == FieldDescriptor.TYPE_STRING:
        if not isinstance(value, str):
            raise _FieldError(where, f"must be a string, got {_kind(value)}")
        return value
    if field.type == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            raise _FieldError(where, f"must be true or false, got {_kind(value)}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _FieldError(where, f"must be a number, got {_kind(value)}")
    if field.type == FieldDescriptor.TYPE_DOUBLE:
        if not abs(value) <= sys.float_info.max:  # inf, NaN or an integer past float range
            raise _FieldError(where, f"must be a finite number, got {_shown(value)}")
        return float(value)
    if field.type == FieldDescriptor.TYPE_UINT32:
        if isinstance(value, float) and not value.is_integer():
            raise _FieldError(where, f"must be a whole number, got {value}")
        if not 0 <= value <= UINT32_MAX:
            raise _FieldError(where, f"must be in 0..{UINT32_MAX}, got {_shown(value)}")
        return int(value)
    raise AssertionError(f"{where}: no file type for proto type {field.type}")  # a new field type


def _shown(value: int | float) -> str:
    try:
        return f"{value:g}"
    except OverflowError:  # an integer past float range (YAML and JSON read any length)
        return f"{'-' if value < 0 else ''}1e+{len(str(abs(value))) - 1} or so (past float range)"


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"a string ({value!r})"
    return f"a number ({value})" if isinstance(value, int | float) else type(value).__name__


# -- writing -------------------------------------------------------------------------------------


def document(spec: RouterSpec) -> dict[str, Any]:
    """A router as a file's entry: tenant, name, arms with their prices, and every other key
    whose value is not the one a file without it would get."""
    msg = codec.spec_to_proto(spec)
    # The default of embedding_dim depends on the encoder: compare with a router of this encoder.
    bare = pb.RouterConfig(tenant=spec.tenant, name=spec.name, arms=msg.arms, encoder=spec.encoder)
    baseline = codec.spec_to_proto(codec.spec_from_proto(bare))
    entry = _message_dict(msg, baseline)
    if spec.encoder != "hashing":
        entry["encoder"] = spec.encoder
    return {f.name: entry[f.name] for f in msg.DESCRIPTOR.fields if f.name in entry}


def _message_dict(msg: Message, baseline: Message | None = None) -> dict[str, Any]:
    """msg's keys that differ from baseline's (None: from an empty message), and those always
    written."""
    kind = msg.DESCRIPTOR.name
    always = ALWAYS_WRITTEN.get(kind, ())
    baseline = baseline or type(msg)()
    out: dict[str, Any] = {}
    for field in msg.DESCRIPTOR.fields:
        name = field.name
        if name in READ_ONLY.get(kind, ()):
            continue
        value = getattr(msg, name)
        if field.is_repeated:
            message = field.type == FieldDescriptor.TYPE_MESSAGE
            items = [_message_dict(item) if message else item for item in value]
            if items or name in always:
                out[name] = items
            continue
        if field.has_presence and not msg.HasField(name):
            continue
        unchanged = getattr(baseline, name) == value and (
            not field.has_presence or baseline.HasField(name)
        )
        if name in always or not unchanged:
            out[name] = value
    return out


class _Inline:
    """A mapping or list written on one line (an arm, a list of metadata keys)."""

    def __init__(self, value: dict[str, Any] | list[Any]) -> None:
        self.value = value


class _Dumper(yaml.SafeDumper):  # type: ignore[misc]  # PyYAML ships no type hints
    def increase_indent(self, flow: bool = False, indentless: bool = False) -> Any:
        return super().increase_indent(flow, False)  # list items indented under their key


def _represent_inline(dumper: Any, data: _Inline) -> Any:
    if isinstance(data.value, dict):
        return dumper.represent_mapping("tag:yaml.org,2002:map", data.value, flow_style=True)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data.value, flow_style=True)


_Dumper.add_representer(_Inline, _represent_inline)


def dump(specs: Sequence[RouterSpec], *, as_json: bool = False, comment: str = "") -> str:
    """A routers file holding specs (YAML, with ``comment`` lines on top; or JSON)."""
    entries = [document(s) for s in specs]
    if as_json:
        return json.dumps({"routers": entries}, indent=2) + "\n"
    head = "".join(f"# {line}\n" for line in comment.splitlines())
    return head + _yaml({"routers": [_styled(e) for e in entries]})


def _styled(entry: dict[str, Any]) -> dict[str, Any]:
    """A router's entry with each arm, shadow and list of names on one line."""
    styled: dict[str, Any] = {}
    for key, value in entry.items():
        if isinstance(value, list) and all(isinstance(v, dict) for v in value):
            styled[key] = [_Inline(v) for v in value]
        else:
            styled[key] = _Inline(value) if isinstance(value, list) else value
    return styled


def _yaml(data: Any) -> str:
    text: str = yaml.dump(
        data, Dumper=_Dumper, sort_keys=False, width=1_000_000, allow_unicode=True
    )
    return text


# -- comparing -----------------------------------------------------------------------------------


def same(live: RouterSpec, wanted: RouterSpec) -> bool:
    """Whether applying wanted over live would change nothing (the version aside)."""
    return dataclasses.replace(live, version=0) == dataclasses.replace(wanted, version=0)


def diff(live: RouterSpec | None, wanted: RouterSpec, source: str) -> list[str]:
    """A unified diff of the router's entry, live (None: absent) against the file's."""
    key = f"{wanted.tenant}/{wanted.name}"
    before = _yaml(_styled(document(live))).splitlines() if live is not None else []
    after = _yaml(_styled(document(wanted))).splitlines()
    origin = f"{key} (live, version {live.version})" if live is not None else f"{key} (absent)"
    return list(difflib.unified_diff(before, after, origin, f"{key} ({source})", n=50, lineterm=""))
