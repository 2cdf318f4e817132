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
import cProfile
import gc
import os
import pstats
import sys
import tempfile
import time

import numpy as np

from banditd.commands.bench import load
from banditd.commands.bench import select as bench_select
from banditd.config import Settings
from banditd.edge import codec
from banditd.edge import server as edge_server
from banditd.edge.servicer import RouterServicer
from banditd.logs import configure_logging
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
        app = await edge_server.build_app(settings)
        # The one build_app registered (no public handle; before start's gc.freeze hides it).
        servicer = next(o for o in gc.get_objects() if isinstance(o, RouterServicer))
        await app.start()
        try:
            config, requests = _workload(text)
            await app.catalog.put(codec.spec_from_proto(config))
            for k in range(WARMUP):
                await servicer.Select(requests[k % len(requests)], None)
            for _ in range(rounds):
                load_avg = os.getloadavg()[0]
                profiler = cProfile.Profile() if profile else None
                wall, cpu = time.perf_counter(), time.process_time()
                if profiler is not None:
                    profiler.enable()
                for k in range(calls):
                    await servicer.Select(requests[k % len(requests)], None)
                if profiler is not None:
                    profiler.disable()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                print(
                    f"{calls} Selects: {wall / calls * 1e6:.1f} us wall, "
                    f"{cpu / calls * 1e6:.1f} us CPU per Select "
                    f"(load {load_avg:.2f}-{os.getloadavg()[0]:.2f})"
                )
                if profiler is not None:
                    pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        finally:
            await app.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --calls, each printed")
    parser.add_argument("--profile", action="store_true", help="cProfile, top 30 by own time")
    parser.add_argument("--text", action="store_true", help="bench select's minilm-static text")
    args = parser.parse_args()
    stdout = sys.stdout
    with open(os.devnull, "w") as null:
        sys.stdout = null  # the log lines (configure_logging binds sys.stdout now)
        configure_logging("info", cache=True)
        sys.stdout = stdout
        asyncio.run(_run(args.calls, args.rounds, args.profile, args.text))


if __name__ == "__main__":
    main()
