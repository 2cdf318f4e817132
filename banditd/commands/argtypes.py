"""argparse types the commands share: numbers with a bound, refused with a clear message."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from banditd.config import Settings
from banditd.domain.bounds import Bounds
from banditd.errors import InvalidArgument

UINT32_MAX = 2**32 - 1  # the largest value of a proto uint32 field


def int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An integer >= minimum (and <= maximum when given)."""
    wanted = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected an integer {wanted}, got {text!r}")
        return value

    return parse


def float_between(
    low: float, high: float = math.inf, *, strict: bool = False
) -> Callable[[str], float]:
    """A finite number in [low, high], or in (low, high) when strict."""
    if high == math.inf:
        wanted = f"a number {'>' if strict else '>='} {low:g}"
    else:
        wanted = f"a number in {'(' if strict else '['}{low:g}, {high:g}{')' if strict else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        inside = low < value < high if strict else low <= value <= high
        if not (math.isfinite(value) and inside):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    return parse


def rpc_number(key: str) -> Callable[[str], float]:
    """A number the RPC field ``key`` ("Message.field" in banditd.domain.bounds.TABLE) takes, in
    the bound a server with this environment's settings (BANDITD_MAX_*) would check."""

    def parse(text: str) -> float:
        try:
            settings = Settings()  # type: ignore[call-arg]  # its fields: the environment's
            bounds = Bounds(settings)
        except ValueError as exc:  # pydantic's ValidationError: argparse would hide its text
            raise argparse.ArgumentTypeError(f"invalid settings: {exc}") from None
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        try:
            return bounds.check(key, value)  # the RPC's own check
        except InvalidArgument:
            raise argparse.ArgumentTypeError(
                f"expected a number in {bounds.table[key].describe()}, got {text!r}"
            ) from None

    return parse


positive_float = float_between(0.0, strict=True)


def ints_at_least(minimum: int) -> Callable[[str], tuple[int, ...]]:
    """A comma-separated list of integers >= minimum."""
    one = int_at_least(minimum)

    def parse(text: str) -> tuple[int, ...]:
        return tuple(one(part) for part in text.split(","))

    return parse
