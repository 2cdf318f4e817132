"""Select's own Python: ``RouterServicer.Select`` called in process, without the gRPC transport.

    PYTHONPATH=. .venv/bin/python bench/select_in_process.py [--calls 3000] [--rounds 3] [--profile]
        [--text]

A server as `serve` builds it (SQLite in a temporary folder, the decision log flushing as it
does when serving, log lines at info to /dev/null), `bench load`'s router (11 arms with spread
prices, 16-d embeddings), no feedback. ``--text``: `bench select`'s text router and prompts
instead (the ``minilm-static`` encoder, no PCA: x has 257 values; prompts of 20-60 words).
Prints microseconds of wall time and of process CPU per Select for each of --rounds rounds,
with the load average; ``--profile`` adds cProfile's top functions by own time. To compare two
trees, run it alternately with each on PYTHONPATH (same machine, same load).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile

import in_process  # bench/in_process.py: bench/ is on sys.path when run as a script
import numpy as np

from banditd.commands.bench import load
from banditd.commands.bench import select as bench_select
from banditd.config import Settings
from banditd.edge import codec
from banditd.v1 import banditd_pb2 as pb

WARMUP = 300


def _workload(text: bool) -> tuple[pb.RouterConfig, list[pb.SelectRequest]]:
    """The router and its requests: `bench load`'s 16-d embeddings, or `bench select`'s text."""
    if text:
        rng = np.random.default_rng(bench_select.SEED)
        bench_select._embedding_requests(16, rng)  # the same draws as `bench select` makes first
        return bench_select._routers(16, 11)[1], bench_select._text_requests(rng)
    config = load.router_config(16, 11)
    vectors = np.random.default_rng(0).standard_normal((256, 16)) / 4.0
    return config, [
        pb.SelectRequest(tenant=config.tenant, router=config.name, embedding=pb.Embedding(values=v))
        for v in vectors.tolist()
    ]


async def _run(calls: int, rounds: int, profile: bool, text: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            database_url=f"sqlite+aiosqlite:///{tmp}/bench.db",
            listen="127.0.0.1:0",
            metrics_listen="",
        )
        async with in_process.serving(settings) as (app, servicer):
            config, requests = _workload(text)
            await app.catalog.put(codec.spec_from_proto(config))
            for k in range(WARMUP):
                await servicer.Select(requests[k % len(requests)], None)

            async def selects() -> str:
                for k in range(calls):
                    await servicer.Select(requests[k % len(requests)], None)
                return ""

            for _ in range(rounds):
                await in_process.timed_round(selects, calls, "Select", profile, 30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --calls, each printed")
    parser.add_argument("--profile", action="store_true", help="cProfile, top 30 by own time")
    parser.add_argument("--text", action="store_true", help="bench select's minilm-static text")
    args = parser.parse_args()
    with in_process.logs_to_devnull():
        asyncio.run(_run(args.calls, args.rounds, args.profile, args.text))


if __name__ == "__main__":
    main()
