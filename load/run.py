"""Run the locust load test against a local banditd and print requests/s and p50/p95/p99.

    python -m load.run [--database sqlite|postgres|both] [--duration 30] [--users 50] [--json]

For each database it starts `banditd serve` on 127.0.0.1 (SQLite in a temporary directory; a
throwaway Postgres started as the postgres user, or --postgres-url), creates the example router
demo/chat, runs load/locustfile.py headless for --duration seconds against that server only, and
reports each call type (Select text, Select embedding, Feedback thumb). Percentiles are exact
(from every response time, not locust's rounded buckets); requests/s is over the whole run,
ramp-up included. Everything it started is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from banditd.commands.bench import local
from banditd.commands.cli import example_router
from banditd.v1 import banditd_pb2 as pb
from banditd.v1 import banditd_pb2_grpc as rpc

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
CALLS = ("Select text", "Select embedding", "Feedback thumb")
STARTUP_SLACK_S = 90  # locust start, ramp-up and stop on top of --duration


@contextlib.contextmanager
def _database(kind: str, postgres_url: str | None) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="banditd-load-") as tmp:
            yield f"sqlite+aiosqlite:///{tmp}/banditd.db"
    elif postgres_url:
        yield postgres_url
    else:
        with local.throwaway_postgres() as url:
            yield url


def run_one(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """Start a server on `kind`, run locust against it, return its summary."""
    with (
        _database(kind, args.postgres_url) as url,
        local.servers(url, 1, signing_key=secrets.token_hex(32)) as (server,),
        tempfile.TemporaryDirectory(prefix="banditd-load-") as tmp,
    ):
        router = example_router()
        with grpc.insecure_channel(server.target) as channel:
            rpc.AdminStub(channel).PutRouter(pb.PutRouterRequest(router=router), timeout=30)
        results = Path(tmp) / "results.json"
        env = {
            **os.environ,
            "BANDITD_LOAD_TENANT": router.tenant,
            "BANDITD_LOAD_ROUTER": router.name,
            "BANDITD_LOAD_DIM": str(router.embedding_dim),
            "BANDITD_LOAD_RESULTS": str(results),
        }
        cmd = [
            *(sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"),
            *("--host", server.target, "-u", str(args.users), "-r", str(args.spawn_rate)),
            *("-t", f"{args.duration}s", "--stop-timeout", "2", "--only-summary"),
            *("--loglevel", "WARNING", "--exit-code-on-error", "0"),
        ]
        print(f"load: {kind}: {args.users} users for {args.duration} s", file=sys.stderr)
        done = subprocess.run(
            cmd,
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=args.duration + STARTUP_SLACK_S,
            check=False,
        )
        if done.returncode != 0 or not results.exists():
            raise RuntimeError(
                f"locust exited with {done.returncode}:\n{done.stderr.decode()[-3000:]}"
            )
        summary: dict[str, Any] = json.loads(results.read_text())
        summary["database"] = url.split(":")[0]
        summary["users"] = args.users
        return summary


def render_text(report: dict[str, Any]) -> str:
    lines = []
    for kind, summary in report.items():
        lines += [
            f"banditd load test on {kind}: {summary['users']} locust users, "
            f"{summary['seconds']:.1f} s",
            f"{'call':<18}{'requests':>10}{'failures':>10}{'req/s':>10}"
            f"{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}",
        ]
        for name in (*CALLS, "all"):
            c = summary["calls"].get(name)
            if c is None:
                lines.append(f"{name:<18}{0:>10}")
                continue
            cells = "".join(
                f"{'-' if c[p] is None else format(c[p], '.2f'):>10}" for p in ("p50", "p95", "p99")
            )
            lines.append(
                f"{name:<18}{c['requests']:>10}{c['failures']:>10}{c['rps']:>10.1f}{cells}"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load.run", description=__doc__)
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--postgres-url", help="use this (empty) Postgres, not a throwaway one")
    parser.add_argument("--duration", type=int, default=30, help="seconds of load (30)")
    parser.add_argument("--users", type=int, default=50, help="locust users (50)")
    parser.add_argument("--spawn-rate", type=float, default=25.0, help="users started a second")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args(argv)
    kinds = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    report = {kind: run_one(kind, args) for kind in kinds}
    print(json.dumps(report, indent=2) if args.json else render_text(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
