"""The exception tree's codes: what the server sends is what the client raises."""

from __future__ import annotations

import pytest

from banditd import errors


@pytest.mark.parametrize(
    "cls",
    [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)],
)
def test_every_error_class_survives_the_wire(cls: type[errors.BanditdError]) -> None:
    """The server sends an error as its class's code; the client raises that class again."""
    sent = cls("router", "must be set") if cls is errors.InvalidArgument else cls("it failed")
    received = errors.from_status(sent.code, sent.message)
    # BadData, Recorded and Abandoned are the server's own kinds of their codes; a client sees
    # the code's.
    expected = {
        errors.BadData: errors.InvalidArgument,
        errors.Recorded: errors.AlreadyExists,
        errors.Abandoned: errors.Aborted,
    }.get(cls, cls)
    assert (type(received), received.code, received.message) == (expected, sent.code, sent.message)
    if cls is errors.InvalidArgument:
        assert isinstance(received, errors.InvalidArgument) and received.field == "router"


def test_a_code_outside_the_tree_is_the_base_class_with_that_code() -> None:
    received = errors.from_status("UNIMPLEMENTED", "no such method")
    assert (type(received), received.code, received.message) == (
        errors.BanditdError,
        "UNIMPLEMENTED",
        "no such method",
    )
