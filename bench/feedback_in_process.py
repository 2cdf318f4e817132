"""Bulk feedback's own Python: ``RouterServicer.UploadFeedback`` called in process, no transport.

    PYTHONPATH=. .venv/bin/python bench/feedback_in_process.py [--batches 5] [--rounds 3]
        [--postgres] [--profile]

A server as `serve` builds it (SQLite in a temporary folder, or with ``--postgres`` a throwaway
Postgres; log lines at info to /dev/null), `bench load`'s router (11 arms, 16-d embeddings), and
decisions logged with compact tokens as `banditd bench feedback` logs them. Each round sends
--batches UploadFeedback messages of 1,000 thumbs (as `bench feedback` sends them) through the
servicer and prints microseconds of wall time and of process CPU per event, with the load
average; ``--profile`` adds cProfile's top functions by own time. To compare two trees, run it
alternately with each on PYTHONPATH (same machine, same load).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterator

import in_process  # bench/in_process.py: bench/ is on sys.path when run as a script

from banditd.commands.bench import local
from banditd.commands.bench.decisions import DecisionMaker
from banditd.commands.bench.load import router_config
from banditd.config import Settings
from banditd.edge import codec
from banditd.edge.servicer import RouterServicer
from banditd.flows.tokens import TokenSigner
from banditd.v1 import banditd_pb2 as pb

BATCH = 1000  # events per UploadFeedback message, as `bench feedback` sends them
WARMUP_BATCHES = 2
DIM, ARMS = 16, 11


def _batch(tenant: str, tokens: list[str]) -> pb.FeedbackBatch:
    return pb.FeedbackBatch(
        tenant=tenant,
        events=[
            pb.FeedbackRequest(
                tenant=tenant,
                decision_id=t,
                thumb=pb.THUMB_UP if k % 3 else pb.THUMB_DOWN,
                output_tokens=200,
            )
            for k, t in enumerate(tokens)
        ],
    )


async def _upload(servicer: RouterServicer, batches: list[pb.FeedbackBatch]) -> int:
    async def messages() -> AsyncIterator[pb.FeedbackBatch]:
        for batch in batches:
            yield batch

    reply = await servicer.UploadFeedback(messages(), None)  # type: ignore[arg-type]
    return int(reply.accepted)


async def _run(url: str, batches: int, rounds: int, profile: bool) -> None:
    key = secrets.token_hex(32)
    settings = Settings(
        database_url=url,
        listen="127.0.0.1:0",
        metrics_listen="",
        signing_key=key,
        migrate_on_start=True,
    )
    async with in_process.serving(settings) as (app, servicer):
        config = router_config(DIM, ARMS)
        await app.catalog.put(codec.spec_from_proto(config))
        probe = await servicer.Select(
            pb.SelectRequest(
                tenant=config.tenant, router=config.name, embedding=pb.Embedding(values=[0.0] * DIM)
            ),
            None,  # type: ignore[arg-type]
        )
        router_id = TokenSigner(key.encode()).verify(probe.decision_id, config.tenant).router_id
        minter = DecisionMaker(url, key, config.tenant, config.name, router_id, DIM, ARMS)
        tokens = await minter.logged((WARMUP_BATCHES + batches * rounds) * BATCH)
        messages = [
            _batch(config.tenant, tokens[i : i + BATCH]) for i in range(0, len(tokens), BATCH)
        ]
        await _upload(servicer, messages[:WARMUP_BATCHES])
        for r in range(rounds):
            start = WARMUP_BATCHES + r * batches
            todo = messages[start : start + batches]

            async def upload(todo: list[pb.FeedbackBatch] = todo) -> str:
                return f" ({await _upload(servicer, todo)} accepted)"

            await in_process.timed_round(upload, batches * BATCH, "event", profile, 35)


@contextlib.contextmanager
def _database(postgres: bool) -> Iterator[str]:
    if postgres:
        with local.throwaway_postgres() as url:
            yield url
    else:
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite+aiosqlite:///{tmp}/bench.db"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=5, help="messages of 1,000 per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --batches, each printed")
    parser.add_argument("--postgres", action="store_true", help="a throwaway Postgres, not SQLite")
    parser.add_argument("--profile", action="store_true", help="cProfile, top 35 by own time")
    args = parser.parse_args()
    with in_process.logs_to_devnull(), _database(args.postgres) as url:
        asyncio.run(_run(url, args.batches, args.rounds, args.profile))


if __name__ == "__main__":
    main()
