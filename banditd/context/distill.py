"""`banditd distill-encoder`: build the minilm-static encoder's model ahead of time (offline)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from banditd.context.encoders import distill_static, static_dir
from banditd.errors import BanditdError


def run(args: argparse.Namespace) -> int:
    target: Path = args.out or static_dir()
    started = time.perf_counter()
    try:
        distill_static(target)
    except (BanditdError, OSError) as exc:
        print(f"banditd distill-encoder: {exc}", file=sys.stderr)
        return 1
    print(f"distilled into {target} in {time.perf_counter() - started:.1f} s")
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "distill-encoder",
        help="distil the minilm-static encoder from the packaged MiniLM weights (offline)",
    )
    p.add_argument(
        "--out", type=Path, help="folder (default: $BANDITD_STATIC_ENCODER_DIR or ~/.cache/...)"
    )
    p.set_defaults(func=run)
