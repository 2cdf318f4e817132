"""What both clients refuse before sending anything, against a real server on port 0."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from banditd import client as bc
from banditd.v1 import banditd_pb2 as pb
from tests.client.test_client import Client, call, make_client, serving
from tests.helpers import Running, StartServer

__all__ = ["make_client"]  # test_client's fixture: sync and async clients


async def test_upload_feedback_refuses_an_unknown_option(
    sqlite_url: str, start_server: StartServer, make_client: Callable[..., Client]
) -> None:
    """As select and feedback do: a misspelt chunk_size is not silently left out."""
    server = await serving(start_server, sqlite_url)
    client = make_client(server.address, tenant="acme")
    decision = await call(client, "select", router="chat", prompt="hi")
    events = [{"decision_id": decision.decision_id, "thumb": "up"}]
    with pytest.raises(TypeError, match="unexpected arguments: chunksize"):
        await call(client, "upload_feedback", events, chunksize=10)
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.feedback_count == 0  # refused before sending anything


@pytest.mark.parametrize("bad_key", ["key\n", "k\u00e9y"], ids=["newline", "non-ascii"])
async def test_an_api_key_grpc_cannot_send_is_invalid_argument(
    sqlite_url: str, start_server: StartServer, make_client: Callable[..., Client], bad_key: str
) -> None:
    """A key read from a file with its newline, or a gateway caller's non-ASCII header: the async
    client raised a raw grpc error (not a BanditdError), the sync one Internal."""
    server = await serving(start_server, sqlite_url)
    client = make_client(server.address, tenant="acme")
    with pytest.raises(bc.InvalidArgument, match="api_key") as raised:
        await call(client, "select", router="chat", prompt="hi", api_key=bad_key)
    assert bad_key not in raised.value.message  # a key is never echoed
    keyed = make_client(server.address, tenant="acme", api_key=bad_key)
    with pytest.raises(bc.InvalidArgument, match="api_key"):
        await call(keyed, "select", router="chat", prompt="hi")


async def test_a_tls_key_without_its_certificate_is_refused(
    sqlite_url: str, start_server: StartServer, make_client: Callable[..., Client], tmp_path: Path
) -> None:
    """It was left out: the client spoke plaintext, its API key in the clear."""
    key = tmp_path / "client_key.pem"
    trustme.CA().issue_cert("c").private_key_pem.write_to_path(str(key))
    server = await serving(start_server, sqlite_url)
    with pytest.raises(bc.TLSConfigError, match="a key its certificate"):
        client = make_client(server.address, tenant="acme", api_key="k", tls_key=key)
        await call(client, "select", router="chat", prompt="hi")


@pytest.mark.parametrize("seconds", [math.nan, math.inf], ids=["nan", "inf"])
async def test_a_timeout_that_is_not_finite_is_refused(
    sqlite_url: str,
    start_server: StartServer,
    make_client: Callable[..., Client],
    seconds: float,
) -> None:
    """NaN, or infinity meant as "no deadline" (that is None), made every call fail at once
    with DeadlineExceeded, the server never asked."""
    server = await serving(start_server, sqlite_url)
    with pytest.raises(ValueError, match="timeout must be"):
        make_client(server.address, tenant="acme", timeout=seconds)
    client = make_client(server.address, tenant="acme", timeout=None)
    with pytest.raises(ValueError, match="timeout must be"):
        await call(client, "select", router="chat", prompt="hi", timeout=seconds)
    assert (await call(client, "select", router="chat", prompt="hi")).arm


@pytest.mark.parametrize("seconds", [0, -1.0], ids=["zero", "negative"])
async def test_a_call_timeout_that_is_not_positive_is_refused(
    sqlite_url: str,
    start_server: StartServer,
    make_client: Callable[..., Client],
    seconds: float,
) -> None:
    """As the constructor refuses it: the call ran with a deadline already passed, and either
    failed with DeadlineExceeded (the server may still have decided) or went through, by chance."""
    server = await serving(start_server, sqlite_url)
    client = make_client(server.address, tenant="acme")
    assert (await call(client, "select", router="chat", prompt="warm")).arm
    for _ in range(5):
        with pytest.raises(ValueError, match="timeout must be positive"):
            await call(client, "select", router="chat", prompt="hi", timeout=seconds)
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.decisions == 1  # only the first: nothing sent


async def _nothing_recorded(server: Running) -> None:
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert (stats.decisions, stats.feedback_count) == (1, 0)  # the one made to rate: refused


async def test_a_required_argument_left_out_is_a_type_error_naming_it(
    sqlite_url: str, start_server: StartServer, make_client: Callable[..., Client]
) -> None:
    """It was a KeyError ('router'), and in an upload it did not say which event."""
    server = await serving(start_server, sqlite_url)
    client = make_client(server.address, tenant="acme")
    decision = await call(client, "select", router="chat", prompt="hi")
    with pytest.raises(TypeError, match=r"^select\(\) missing required argument: 'router'$"):
        await call(client, "select", prompt="hi")
    with pytest.raises(TypeError, match=r"^feedback\(\) missing required argument: 'decision_id'"):
        await call(client, "feedback", decision_id=None, thumb="up")  # None: left out
    events = [{"decision_id": decision.decision_id, "thumb": "up"}, {"thumb": "up"}]
    with pytest.raises(TypeError, match=r"^events\[1\] missing required argument: 'decision_id'"):
        await call(client, "upload_feedback", events)
    await _nothing_recorded(server)


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        ({"reward": "0.5"}, TypeError, "events[1]: reward must be a number, got str '0.5'"),
        ({"output_tokens": 1.5}, TypeError, "events[1]: output_tokens must be an int, got float"),
        ({"tenant": 7}, TypeError, "events[1]: tenant must be a str, got int 7"),
        ({"decision_id": 5}, TypeError, "events[1]: decision_id must be a str, got int 5"),
        ({"error": "false"}, TypeError, "events[1]: error must be a bool, got str 'false'"),
        ({"input_tokens": 2**70}, bc.InvalidArgument, "events[1].input_tokens: Value out of"),
        ({"tenant": "ac\ud800"}, bc.InvalidArgument, "events[1].tenant: is not valid Unicode"),
        ({"tenant": b"acme"}, TypeError, "events[1]: tenant must be a str, got bytes b'acme'"),
        (
            {"reward": None, "thumb": ["up"]},
            TypeError,
            "events[1]: thumb must be 'up' or 'down', got list ['up']",
        ),
        (
            {"reward": None, "preference": {"arm"}},
            TypeError,
            "events[1]: preference must be 'arm', 'challenger' or 'tie', got set {'arm'}",
        ),
    ],
    ids=[
        "str-reward",
        "float-tokens",
        "int-tenant",
        "int-id",
        "str-error",
        "huge-tokens",
        "surrogate",
        "bytes-tenant",
        "list-thumb",
        "set-preference",
    ],
)
async def test_an_upload_event_of_a_bad_value_names_the_event_and_field(
    sqlite_url: str,
    start_server: StartServer,
    make_client: Callable[..., Client],
    bad: dict[str, object],
    error: type[Exception],
    message: str,
) -> None:
    """Such a value (a reward read from JSON as "0.5") raised protobuf's own error, which named
    neither the event nor the field; an error flag of "false" was sent as true; a thumb or
    preference that is not hashable (a list) raised a raw "unhashable type" naming neither."""
    server = await serving(start_server, sqlite_url)
    client = make_client(server.address, tenant="acme")
    decision = await call(client, "select", router="chat", prompt="hi")
    events = [
        {"decision_id": decision.decision_id, "thumb": "up"},
        {"decision_id": decision.decision_id, "reward": 1.0, **bad},
    ]
    with pytest.raises(error) as raised:
        await call(client, "upload_feedback", events)
    assert str(raised.value).startswith(message)
    await _nothing_recorded(server)


@pytest.mark.parametrize("event", ["up", ["decision_id", "thumb"], 7], ids=["str", "list", "int"])
async def test_an_upload_event_that_is_not_a_dict_is_a_type_error_naming_it(
    sqlite_url: str, start_server: StartServer, make_client: Callable[..., Client], event: object
) -> None:
    """A str or list was read as argument names ("events[1] got unexpected arguments: p, u"),
    an int raised "'int' object is not iterable"."""
    server = await serving(start_server, sqlite_url)
    client = make_client(server.address, tenant="acme")
    decision = await call(client, "select", router="chat", prompt="hi")
    events = [{"decision_id": decision.decision_id, "thumb": "up"}, event]
    kind = type(event).__name__
    with pytest.raises(TypeError) as raised:
        await call(client, "upload_feedback", events)
    assert str(raised.value) == f"events[1] must be a dict of feedback arguments, got {kind}"
    await _nothing_recorded(server)


@pytest.mark.parametrize(
    "metadata", ["ab", ["ab"], [("app", "notes")]], ids=["str", "list", "pairs"]
)
async def test_metadata_that_is_not_a_mapping_is_a_type_error(
    sqlite_url: str, start_server: StartServer, make_client: Callable[..., Client], metadata: object
) -> None:
    """ "ab" was InvalidArgument (dict.update's "not enough values to unpack"), ["ab"] was sent
    as {"a": "b"}: the caller's type error, named as the others are."""
    server = await serving(start_server, sqlite_url)
    client = make_client(server.address, tenant="acme")
    with pytest.raises(TypeError) as raised:
        await call(client, "select", router="chat", prompt="hi", metadata=metadata)
    assert not isinstance(raised.value, bc.BanditdError)
    got = f"{type(metadata).__name__} {metadata!r}"
    assert str(raised.value) == f"select(): metadata must be a mapping of str to str, got {got}"
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.decisions == 0


async def test_candidates_given_as_one_str_are_refused(
    sqlite_url: str, start_server: StartServer, make_client: Callable[..., Client]
) -> None:
    """A str is a sequence of characters: the server was asked for arm 'c' ("router 'chat' has
    no arm 'c'")."""
    server = await serving(start_server, sqlite_url)
    client = make_client(server.address, tenant="acme")
    with pytest.raises(TypeError, match=r"candidates must be a list of arm names, not a str"):
        await call(client, "select", router="chat", prompt="hi", candidates="cheap")
    decision = await call(client, "select", router="chat", prompt="hi", candidates=["cheap"])
    assert decision.arm == "cheap"


@pytest.mark.parametrize(
    ("argument", "field"),
    [
        ({"prompt": "hi \ud83d"}, "prompt"),
        ({"prompt": "hi", "metadata": {"app": "\udc00"}}, "metadata"),
        ({"prompt": "hi", "candidates": ["cheap", "mid\ud800"]}, "candidates"),
    ],
    ids=["prompt", "metadata", "candidates"],
)
async def test_a_lone_surrogate_is_invalid_argument(
    sqlite_url: str,
    start_server: StartServer,
    make_client: Callable[..., Client],
    argument: dict[str, object],
    field: str,
) -> None:
    """Text cut in the middle of a UTF-16 pair: protobuf's UnicodeEncodeError escaped the client,
    where docs/api.md promises INVALID_ARGUMENT (what the server answers other clients)."""
    server = await serving(start_server, sqlite_url)
    client = make_client(server.address, tenant="acme")
    with pytest.raises(bc.InvalidArgument, match="is not valid Unicode") as raised:
        await call(client, "select", router="chat", **argument)
    assert raised.value.field == field
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.decisions == 0


async def test_chunk_size_none_is_left_out(
    sqlite_url: str, start_server: StartServer, make_client: Callable[..., Client]
) -> None:
    """As every argument set to None (docs/client.md): it raised TypeError comparing None."""
    server = await serving(start_server, sqlite_url)
    client = make_client(server.address, tenant="acme")
    decision = await call(client, "select", router="chat", prompt="hi")
    events = [{"decision_id": decision.decision_id, "thumb": "up"}]
    summary = await call(client, "upload_feedback", events, chunk_size=None)
    assert (summary.accepted, summary.invalid) == (1, 0)


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ({"tenant": b"acme"}, "tenant must be a str, got bytes b'acme'"),
        ({"router": b"chat"}, "router must be a str, got bytes b'chat'"),
        ({"prompt": b"hi"}, "prompt must be a str, got bytes b'hi'"),
        ({"request_id": b"r-1"}, "request_id must be a str, got bytes b'r-1'"),
        ({"candidates": [b"cheap"]}, "candidates must be a list of arm names, got list [b'che"),
        ({"metadata": {b"app": "x"}}, "metadata must be a mapping of str to str, got dict {b'"),
        ({"metadata": {"app": b"x"}}, "metadata must be a mapping of str to str, got dict {'a"),
    ],
    ids=["tenant", "router", "prompt", "request_id", "candidates", "metadata-key", "metadata"],
)
async def test_bytes_for_a_str_argument_are_a_type_error(
    sqlite_url: str,
    start_server: StartServer,
    make_client: Callable[..., Client],
    argument: dict[str, object],
    message: str,
) -> None:
    """protobuf takes bytes for a str field (as UTF-8), so b"chat" was sent as "chat" and
    b"\\xff" refused as if the text were bad: a caller's mistake the other wrong types are
    refused as (a TypeError naming the argument), sending nothing."""
    server = await serving(start_server, sqlite_url)
    client = make_client(server.address, tenant="acme")
    args = {"router": "chat", "prompt": "hi", **argument}
    with pytest.raises(TypeError) as raised:
        await call(client, "select", **args)
    assert str(raised.value).startswith(f"select(): {message}")
    decision = await call(client, "select", router="chat", prompt="hi")
    for name in ("decision_id", "idempotency_key", "tenant"):
        feedback = {"decision_id": decision.decision_id, "thumb": "up", name: b"x"}
        with pytest.raises(TypeError, match=rf"^feedback\(\): {name} must be a str, got bytes"):
            await call(client, "feedback", **feedback)
    with pytest.raises(TypeError, match=r"^api_key must be a str, got bytes$"):
        await call(client, "select", router="chat", prompt="hi", api_key=b"key")
    with pytest.raises(TypeError, match=r"^api_key must be a str, got bytes$"):
        make_client(server.address, tenant="acme", api_key=b"key")
    await _nothing_recorded(server)
