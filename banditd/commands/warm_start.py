"""`banditd warm-start`: a router's offline events from an outcome file, into its feedback log.

The events are ``banditd.evaluation.warm_start.warm_events``'s, the ones `banditd replay
--warm-start` applies in process, with x built by the router's own context pipeline: its encoder,
its PCA (the stored one, else one fitted on the warm-start prompts and stored first, as a live
router stores the PCA it fits), its metadata vocabulary (values assigned in the database in record
order before any event is written, as a server meeting them would) and its kNN index (rebuilt
from the router's log). The run only appends to the log, in batches, each committed before the
next; a server running meanwhile applies them in id order with its own traffic (its tail, at
least every tail interval), so no acknowledged event is lost or reordered, and a rerun adds
only what is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from banditd.commands.argtypes import int_at_least
from banditd.config import Settings
from banditd.context.encoders import get_encoder
from banditd.context.metadata import MemoryVocabularyStore, own_slots
from banditd.context.pipeline import ContextPipeline, pca_fingerprint
from banditd.domain import FeedbackEvent, RouterSpec
from banditd.edge import codec
from banditd.errors import Aborted, InvalidArgument, NotFound
from banditd.evaluation.warm_start import (
    WarmStartReport,
    encode_in_chunks,
    read_outcomes,
    record_metadata,
    usable_records,
    warm_events,
    warm_start_weights,
)
from banditd.progress import add_quiet_flag, update
from banditd.state.live_routers import index_log
from banditd.state.reductions import Reductions
from banditd.store import Database, Store, migrate
from banditd.store.routers import StoredRouter
from banditd.v1 import banditd_pb2 as pb

WARM_START_BATCH = 2000  # events a transaction


def read_router_config(path: Path, tenant: str, name: str) -> RouterSpec:
    """A RouterConfig JSON file (as `banditd example-router` prints) for tenant/name."""
    try:
        msg = json_format.Parse(path.read_text(encoding="utf-8"), pb.RouterConfig())
    except json_format.ParseError as exc:
        raise InvalidArgument("router_config", f"{path}: not a RouterConfig ({exc})") from exc
    except UnicodeDecodeError:
        problem = f"{path}: not UTF-8 text (a RouterConfig JSON file)"
        raise InvalidArgument("router_config", problem) from None
    msg.tenant, msg.name = tenant, name
    return codec.spec_from_proto(msg)


async def _router(store: Store, args: argparse.Namespace) -> tuple[StoredRouter, bool]:
    """The router to warm-start, and whether it was created here (from --router-config)."""
    try:
        return await store.routers.get(args.tenant, args.router), False
    except NotFound:
        if args.router_config is None:
            raise
    spec = read_router_config(args.router_config, args.tenant, args.router)
    return (await store.routers.put(spec))[0], True


def metadata_fields(spec: RouterSpec, metadata_from: Sequence[str] | None) -> tuple[str, ...]:
    """The record fields sent as request metadata: by default those named like the router's
    metadata keys; a field the router does not declare would be ignored, so it is an error."""
    if metadata_from is None:
        return spec.metadata_keys
    undeclared = [f for f in metadata_from if f not in spec.metadata_keys]
    if undeclared:
        raise InvalidArgument(
            "metadata_from",
            f"router {spec.name!r} declares metadata keys {list(spec.metadata_keys)}, "
            f"not {undeclared}",
        )
    return tuple(metadata_from)


async def _assign_vocabulary(
    store: Store, stored: StoredRouter, records: Sequence[dict[str, Any]], fields: Sequence[str]
) -> None:
    """Give each declared metadata value of the records a slot in the router's stored
    vocabulary, in record order (a server meeting the values in that order assigns the same)."""
    spec = stored.spec
    if not spec.metadata_keys:
        return
    limit, seen = own_slots(spec.metadata_slots), set()
    for record in records:
        for key, value in record_metadata(record, fields).items():
            if key in spec.metadata_keys and value and (key, value) not in seen:
                seen.add((key, value))
                await store.learnt.assign_slot(stored.router_id, key, value, limit)


async def _pipeline(store: Store, stored: StoredRouter, max_prompt_chars: int) -> ContextPipeline:
    """The router's context pipeline as a server restores it (banditd.state.live_routers), with its
    stored vocabulary held in memory."""
    spec, router_id = stored.spec, stored.router_id
    encoder = await asyncio.to_thread(get_encoder, spec.encoder, spec.embedding_dim)
    known = await store.learnt.vocabulary(router_id)
    vocabulary = MemoryVocabularyStore()
    vocabulary.slots = {key: dict(values) for key, values in known.items()}
    pipeline = ContextPipeline(
        spec,
        encoder,
        vocabulary,
        known_vocabulary=known,
        max_prompt_chars=max_prompt_chars,
        context_since=stored.context_since,  # the kNN index holds only the events decided since
    )
    await Reductions(store.learnt).load(router_id, pipeline)  # the stored PCA, as a server's
    # Only the kNN index, not the whole fold (banditd.state.fold): it is all that x of the new
    # events reads; the server folds the posterior and arm health from the log.
    await index_log(store.events, router_id, pipeline)
    return pipeline


async def _save_reduction(store: Store, stored: StoredRouter, pipeline: ContextPipeline) -> None:
    """Store the PCA fitted on the warm-start prompts before any event built with it."""
    if pipeline.reduction is None or not pipeline.unsaved_reduction:
        return
    pipeline.unsaved_reduction = False
    ours = pipeline.reduction.to_bytes()
    fingerprint = pca_fingerprint(stored.spec, pipeline.encoder)
    if await store.learnt.save_context_model(stored.router_id, fingerprint, ours) != ours:
        raise Aborted(
            f"router {stored.spec.name!r} stored a PCA of its own while the warm start fitted "
            "one: nothing was written; run the warm start again (it will use the stored PCA)"
        )


async def warm_start(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Run `banditd warm-start`; its summary (the --json object)."""
    started = time.perf_counter()
    if settings.should_migrate:
        await migrate(settings.database_url, settings.migrations_dir)
    records = list(read_outcomes(Path(args.data)))
    db = Database(settings.database_url)
    try:
        store = Store.over(db)
        stored, created = await _router(store, args)
        spec, router_id = stored.spec, stored.router_id
        fields = metadata_fields(spec, args.metadata_from)
        usable = usable_records(records, WarmStartReport(), settings.max_prompt_chars, fields)
        await _assign_vocabulary(store, stored, usable, fields)
        pipeline = await _pipeline(store, stored, settings.max_prompt_chars)
        report = WarmStartReport()
        encode = encode_in_chunks(
            pipeline, lambda done, total: update("warm-start prompts encoded", done, total)
        )
        head = await store.events.head(router_id)
        first = await store.events.first_offline_context(router_id, stored.context_since)
        # A run stopped midway left its first records' events in the log, and in the kNN
        # index rebuilt from it: the rerun must not fold them in a second time.
        present = await store.events.offline_decisions(router_id) if pipeline.knn else set()
        added, done, batch = 0, 0, list[FeedbackEvent]()
        for events in warm_events(
            pipeline,
            router_id,
            records,
            report,
            metadata_from=fields,
            encode=encode,
            first_event_id=head,
            context_since=stored.context_since,
            key_weights=warm_start_weights(first, pipeline.weights),
            present=present,
        ):
            await _save_reduction(store, stored, pipeline)
            batch.extend(events)
            done += 1
            if len(batch) >= args.batch:
                added += len((await store.events.append(batch)).positions)
                batch.clear()
                update("warm-start records", done, len(usable))
        added += len((await store.events.append(batch)).positions)
        update("warm-start records", done, len(usable))
        log_head = await store.events.head(router_id)
    finally:
        await db.close()
    return {
        "router": f"{args.tenant}/{args.router}",
        "created": created,
        "records": report.records,
        "events": report.events,
        "added": added,
        "already_present": report.events - added,
        "skipped": report.skipped_records,
        "skipped_entries": report.skipped_entries,
        "skip_reasons": report.skip_reasons,
        "events_per_arm": report.events_per_arm,
        "arms_without_data": sorted({a.name for a in spec.arms} - set(report.events_per_arm)),
        "unknown_models": sorted(report.unknown_models),
        "metadata_from": list(fields),
        "context_version": pipeline.version,
        "pca_fitted_on": report.pca_fitted_on,
        "log_head": log_head,
        "wall_s": round(time.perf_counter() - started, 2),
    }


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "warm-start",
        help="fit a router's statistics from offline outcome data (JSONL, optionally .gz)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--tenant", required=True)
    p.add_argument("--router", required=True)
    p.add_argument(
        "--data", required=True, help="outcome file, the format of data/ (see data/README.md)"
    )
    p.add_argument("--database-url", help="SQLAlchemy async URL (env BANDITD_DATABASE_URL)")
    p.add_argument(
        "--metadata-from",
        type=lambda text: [f.strip() for f in text.split(",") if f.strip()],
        metavar="FIELD[,FIELD]",
        help="record fields sent as request metadata, as `banditd replay --metadata-from` "
        "(default: the fields named like the router's metadata keys, e.g. task)",
    )
    p.add_argument(
        "--router-config",
        type=Path,
        metavar="FILE",
        help="create the router from this RouterConfig JSON (as `banditd example-router` "
        "prints) when it does not exist",
    )
    p.add_argument(
        "--batch",
        type=int_at_least(1),
        default=WARM_START_BATCH,
        help="events committed a transaction (%(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_quiet_flag(p)
