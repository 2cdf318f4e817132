"""What `banditd bench load` reads off a server on this machine over the measured window: its
CPU seconds (/proc), its own Select latency histogram (banditd_rpc_seconds on /metrics) and,
with --profile, a py-spy profile summarised by area and function."""

from __future__ import annotations

import collections
import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Watched:
    """A server process on this machine: its CPU, /metrics and profile are read during the run."""

    pid: int
    metrics: str | None


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _select_buckets(metrics_addr: str) -> dict[float, float]:
    """Cumulative banditd_rpc_seconds bucket counts of Select calls answered OK."""
    with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    out: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "banditd_rpc_seconds":
            continue
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name.endswith("_bucket")
                and labels.get("method") == "Select"
                and labels.get("code") == "OK"
            ):
                out[float(labels["le"])] = sample.value
    return out


def histogram_quantile(buckets: dict[float, float], q: float) -> float | None:
    """Prometheus-style quantile (linear within a bucket) of cumulative counts, in ms."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return round(lower * 1e3, 3)
            share = (rank - below) / (count - below) if count > below else 1.0
            return round((lower + (bound - lower) * share) * 1e3, 3)
        lower, below = bound, count
    return None


# Where a sample goes: the first rule that matches its stack (py-spy names files by their path
# from the import root: banditd/flows/select.py, sqlalchemy/..., asyncio/...).
AREAS: tuple[tuple[str, Callable[[str, str], bool]], ...] = (
    ("logging (structlog JSON lines)", lambda stack, leaf: "structlog/" in stack),
    (
        "database (SQLAlchemy, driver, its thread)",
        lambda stack, leaf: any(m in stack for m in ("sqlalchemy/", "aiosqlite/", "asyncpg/")),
    ),
    ("waiting in epoll", lambda stack, leaf: "selectors.py" in leaf),
    (
        "banditd code, NumPy included (decode, policy, sign, encode)",
        lambda stack, leaf: "banditd/" in stack.replace("(banditd/commands/cli.py", ""),
    ),
    (
        "gRPC core and asyncio (C under the event loop)",
        lambda stack, leaf: "asyncio/" in leaf or "grpc" in leaf,
    ),
    ("threads running C code (the gRPC poller)", lambda stack, leaf: "threading.py" in leaf),
)


def summarise_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Where the time went, from py-spy's raw (collapsed stack) output: the share of samples per
    area (AREAS), the functions most often on top of the stack (self) and the banditd functions
    most often anywhere on it (inclusive), as % of samples."""
    areas: collections.Counter[str] = collections.Counter()
    self_count: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        leaf = frames[-1].partition(" (")[2]
        total += count
        area = next((name for name, rule in AREAS if rule(stack, leaf)), "other")
        areas[area] += count
        self_count[_frame_name(frames[-1])] += count
        for frame in {f for f in frames if "banditd/" in f and "cli.py" not in f}:
            inclusive[_frame_name(frame)] += count

    def share(counter: collections.Counter[str], n: int) -> list[list[Any]]:
        return [[name, round(100.0 * k / total, 1)] for name, k in counter.most_common(n)]

    return {
        "samples": total,
        "areas_pct": share(areas, len(AREAS) + 1),
        "self_pct": share(self_count, top),
        "inclusive_pct": share(inclusive, top),
    }


def _frame_name(frame: str) -> str:
    """`function (path/to/module.py:line)` -> `module.py:function`."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return f"{file}:{name}" if file else name


@contextlib.contextmanager
def server_probe(
    server: Watched | None, window_start: float, duration: float, profile: Path | None
) -> Iterator[dict[str, Any]]:
    """Server CPU and histogram over the measured window (a server on this machine only); fills
    the dict after the block."""
    out: dict[str, Any] = {}
    if server is None:
        yield out
        return
    time.sleep(max(0.0, window_start - time.time()))
    cpu0 = _cpu_seconds(server.pid)
    buckets0 = _select_buckets(server.metrics) if server.metrics else {}
    spy = None
    if profile is not None:
        beside = Path(sys.executable).with_name("py-spy")  # in this virtualenv, else on PATH
        spy = subprocess.Popen(
            [
                str(beside) if beside.exists() else "py-spy",
                *("record", "--pid", str(server.pid), "--format", "raw"),
                *("--rate", "250", "--duration", str(max(1, int(duration)))),
                *("--output", str(profile), "--nonblocking"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    yield out
    out["server_cpu_cores"] = round((_cpu_seconds(server.pid) - cpu0) / duration, 2)
    if server.metrics:
        buckets1 = _select_buckets(server.metrics)
        delta = {le: buckets1[le] - buckets0.get(le, 0.0) for le in buckets1}
        out["server_histogram_ms"] = {
            "count": int(delta.get(float("inf"), 0.0)),
            "under_1ms_pct": (
                round(100 * delta[0.001] / delta[float("inf")], 2)
                if delta.get(float("inf"))
                else None
            ),
            **{f"p{int(q * 100)}": histogram_quantile(delta, q) for q in (0.5, 0.95, 0.99)},
        }
    if spy is not None:
        spy.wait(60)
        if spy.returncode == 0 and profile is not None and profile.exists():
            out["profile"] = {"file": str(profile), **summarise_profile(profile)}
        else:
            out["profile"] = {"error": f"py-spy exited with {spy.returncode} (is it installed?)"}
