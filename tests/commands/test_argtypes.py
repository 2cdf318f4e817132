"""The CLI's shared argparse types refuse what is out of bounds, saying what they expected."""

from __future__ import annotations

import argparse

import pytest

from banditd.commands.argtypes import float_between, int_at_least, ints_at_least, positive_float


def test_bounds_and_messages() -> None:
    assert int_at_least(2)("2") == 2
    assert int_at_least(0, 10)("10") == 10
    assert ints_at_least(1)("32,128") == (32, 128)
    assert positive_float("0.5") == 0.5
    assert float_between(0.0, 1.0)("1") == 1.0
    assert float_between(0.0)("0") == 0.0
    for parse, text, message in (
        (int_at_least(2), "1", "expected an integer >= 2, got '1'"),
        (int_at_least(0), "x", "expected an integer, got 'x'"),
        (int_at_least(0, 10), "11", r"expected an integer in \[0, 10\], got '11'"),
        (int_at_least(0, 10), "-5", r"expected an integer in \[0, 10\], got '-5'"),
        (ints_at_least(1), "32,0", "expected an integer >= 1, got '0'"),
        (positive_float, "0", "expected a number > 0, got '0'"),
        (positive_float, "inf", "expected a number > 0, got 'inf'"),
        (positive_float, "nan", "expected a number > 0, got 'nan'"),
        (positive_float, "x", "expected a number, got 'x'"),
        (float_between(0.0), "-1", "expected a number >= 0, got '-1'"),
        (float_between(0.0, 1.0), "1.5", r"expected a number in \[0, 1\], got '1.5'"),
        (float_between(0.0, 1.0, strict=True), "1", r"expected a number in \(0, 1\), got '1'"),
    ):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse(text)
