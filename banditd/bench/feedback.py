"""placeholder"""

from __future__ import annotations
import argparse


def add_parser(bench_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pass
