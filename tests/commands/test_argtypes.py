"""The CLI's shared argparse types refuse what is out of bounds, saying what they expected."""

from __future__ import annotations

import argparse

import pytest

from banditd.commands.argtypes import int_at_least, ints_at_least, positive_float


def test_bounds_and_messages() -> None:
    assert int_at_least(2)("2") == 2
    assert ints_at_least(1)("32,128") == (32, 128)
    assert positive_float("0.5") == 0.5
    for parse, text, message in (
        (int_at_least(2), "1", "expected an integer >= 2, got '1'"),
        (int_at_least(0), "x", "expected an integer, got 'x'"),
        (ints_at_least(1), "32,0", "expected an integer >= 1, got '0'"),
        (positive_float, "0", "expected a positive number, got '0'"),
        (positive_float, "inf", "expected a positive number, got 'inf'"),
        (positive_float, "nan", "expected a positive number, got 'nan'"),
    ):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse(text)
