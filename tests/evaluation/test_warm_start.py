"""Warm start from an outcome file: the router knows the best arm per kind of prompt at once."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from banditd.commands.replay import router_config as replay_router
from banditd.edge import codec
from banditd.errors import FailedPrecondition, NotFound
from banditd.evaluation import replay
from banditd.evaluation.replay.options import Server
from banditd.store import Database
from banditd.store.events import EventLog
from banditd.v1 import banditd_pb2 as pb
from tests.evaluation.test_replay import ARMS, synthetic
from tests.evaluation.test_replay import write_outcomes as write_records
from tests.helpers import REPO, StartServer, require, router_config, wait_until

TOPICS = {
    "math": ("integral derivative equation algebra", "strong"),
    "poem": ("poem rhyme verse sonnet", "cheap"),
}


def write_outcomes(path: Path, n: int) -> None:
    """Full-information records: the best arm depends on the topic of the prompt."""
    with gzip.open(path, "wt") as out:
        for i in range(n):
            topic = ("math", "poem")[i % 2]
            words, best = TOPICS[topic]
            models = {
                arm: {"quality": 0.95 if arm == best else 0.1, "cost_usd": 0.001}
                for arm in ("cheap", "mid", "strong")
            }
            models["not-in-router"] = {"quality": 1.0, "cost_usd": 0.0}
            record = {
                "id": f"r{i}",
                "topic": topic,
                "prompt": f"{words} question {i}",
                "models": models,
            }
            out.write(json.dumps(record) + "\n")
        out.write(json.dumps({"id": "broken", "prompt": "", "models": {}}) + "\n")


def warm_start(url: str, data: Path, *flags: str) -> dict[str, Any]:
    args = [
        "--data",
        str(data),
        "--database-url",
        url,
        *(flags or ("--tenant", "acme", "--router", "chat")),
    ]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "banditd.commands.cli", "warm-start", *args, "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    except subprocess.CalledProcessError as exc:
        exc.add_note(f"stderr: {exc.stderr}")  # what went wrong, in the test's report
        raise
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def test_warm_start_then_serve(
    database_url: str, start_server: StartServer, tmp_path: Path
) -> None:
    data = tmp_path / "outcomes.jsonl.gz"
    write_outcomes(data, 200)
    server = await start_server(database_url)
    await server.admin.PutRouter(
        pb.PutRouterRequest(router=router_config(embedding_dim=32, exploration=0.1))
    )
    await server.stop()

    first = warm_start(database_url, data)
    assert first["records"] == 201 and first["added"] == 600 and first["skipped"] == 1
    assert first["skipped_entries"] == 0
    assert first["unknown_models"] == ["not-in-router"]
    again = warm_start(database_url, data)
    assert again["added"] == 0 and again["already_present"] == 600

    served = await start_server(database_url)
    for topic, (words, best) in TOPICS.items():
        d = await served.router.Select(
            pb.SelectRequest(tenant="acme", router="chat", prompt=f"{words} new {topic}")
        )
        assert d.arm == best
    stats = await served.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.feedback_count == 0  # offline events shape the posterior but are not feedback
    assert stats.applied_event_id >= 600
    offline = await EventLog(served.app.db).after(1, 0)  # no decision rows: their own version
    assert {e.context_version for e in offline} == {first["context_version"]}


async def test_warm_start_again_after_a_change_of_the_context(
    database_url: str, start_server: StartServer, tmp_path: Path
) -> None:
    """A change of the router's context makes it learn again from its prior; the warm start
    can then be run again (its events are new under the new context), and only once."""
    data = tmp_path / "outcomes.jsonl.gz"
    write_outcomes(data, 200)
    server = await start_server(database_url)
    await server.admin.PutRouter(
        pb.PutRouterRequest(router=router_config(embedding_dim=32, exploration=0.1))
    )
    assert warm_start(database_url, data)["added"] == 600
    await server.admin.PutRouter(  # a change of x: the warm start's events no longer fold
        pb.PutRouterRequest(router=router_config(embedding_dim=16, exploration=0.1))
    )
    await server.stop()

    after = warm_start(database_url, data)
    assert after["added"] == 600 and after["already_present"] == 0
    assert warm_start(database_url, data)["added"] == 0

    served = await start_server(database_url)
    for topic, (words, best) in TOPICS.items():
        d = await served.router.Select(
            pb.SelectRequest(tenant="acme", router="chat", prompt=f"{words} new {topic}")
        )
        assert d.arm == best


async def test_after_a_change_of_the_context_the_neighbours_are_the_new_contexts(
    database_url: str, start_server: StartServer, tmp_path: Path
) -> None:
    """A kNN router's x reads the outcomes of its nearest past prompts. After a change of the
    context, a warm start's x reads only the events decided since, as a server's does: the same
    x as a router created with the new context and warm-started on the same file."""
    data = tmp_path / "outcomes.jsonl.gz"
    write_outcomes(data, 40)
    before = router_config(embedding_dim=32, knn_k=5)
    after = router_config(embedding_dim=32, knn_k=5, text_window_tokens=3)  # same size of x
    server = await start_server(database_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=before))
    await server.stop()  # the warm starts run offline, as the one above
    assert warm_start(database_url, data)["added"] == 120
    server = await start_server(database_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=after))
    fresh = router_config(name="fresh", embedding_dim=32, knn_k=5, text_window_tokens=3)
    await server.admin.PutRouter(pb.PutRouterRequest(router=fresh))
    await server.stop()
    assert warm_start(database_url, data)["added"] == 120
    assert warm_start(database_url, data, "--tenant", "acme", "--router", "fresh")["added"] == 120

    db = Database(database_url)
    try:
        log = EventLog(db)
        changed, new = (await log.after(1, 0))[120:], await log.after(2, 0)
    finally:
        await db.close()
    assert [e.decision_id for e in changed] != [e.decision_id for e in new]
    for ours, theirs in zip(changed, new, strict=True):
        assert (ours.arm, ours.reward) == (theirs.arm, theirs.reward)
        assert ours.x.tolist() == theirs.x.tolist()


async def test_warm_start_on_a_live_server_keeps_its_traffic(
    database_url: str, start_server: StartServer, tmp_path: Path
) -> None:
    """Warm-start a router while it serves: every acknowledged feedback stays, the server
    applies the warm start without a restart, and the run reports its progress."""
    data = tmp_path / "outcomes.jsonl.gz"
    write_outcomes(data, 200)
    server = await start_server(database_url, tail_interval_s=0.2)
    config = router_config(embedding_dim=32, exploration=0.1, metadata_keys=["topic"])
    await server.admin.PutRouter(pb.PutRouterRequest(router=config))
    acknowledged, stop = 0, asyncio.Event()

    async def traffic() -> None:
        nonlocal acknowledged
        while not stop.is_set():
            d = await server.router.Select(
                pb.SelectRequest(
                    tenant="acme", router="chat", prompt="live one", metadata={"topic": "live"}
                )
            )
            await server.router.Feedback(
                pb.FeedbackRequest(tenant="acme", decision_id=d.decision_id, reward=0.5)
            )
            acknowledged += 1

    live = asyncio.create_task(traffic())
    args = ["--tenant", "acme", "--router", "chat", "--data", str(data), "--batch", "50"]
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "banditd.commands.cli", "warm-start", *args, "--json"),
        "--database-url",
        database_url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    stop.set()
    await live
    assert proc.returncode == 0, err.decode()
    assert json.loads(out)["added"] == 600
    assert err == b""  # stderr is a pipe: no progress bar (tests/test_progress.py draws one)
    assert acknowledged > 0

    await wait_until(server.caught_up, "the tail to apply the warm start (no restart)")
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.feedback_count == acknowledged
    for topic, (words, best) in TOPICS.items():
        d = await server.router.Select(
            pb.SelectRequest(
                tenant="acme", router="chat", prompt=f"{words} new", metadata={"topic": topic}
            )
        )
        assert d.arm == best


def test_unknown_router_is_a_clear_error(sqlite_url: str, tmp_path: Path) -> None:
    data = tmp_path / "o.jsonl"
    data.write_text("")
    with pytest.raises(subprocess.CalledProcessError) as err:
        warm_start(sqlite_url, data)
    assert "unknown tenant 'acme'" in err.value.stderr


@pytest.mark.parametrize("damage", ["truncated", "not-text"])
def test_an_unreadable_outcome_file_is_a_clear_error(
    sqlite_url: str, tmp_path: Path, damage: str
) -> None:
    """A download cut short, or a gzipped file without .gz: one line naming the file, from
    warm-start and from replay's --warm-start (which read it the same way), no traceback."""
    whole = tmp_path / "whole.jsonl.gz"
    write_outcomes(whole, 2000)
    packed = whole.read_bytes()
    data = tmp_path / ("cut.jsonl.gz" if damage == "truncated" else "packed.jsonl")
    data.write_bytes(packed[: len(packed) // 2] if damage == "truncated" else packed)
    with pytest.raises(subprocess.CalledProcessError) as err:
        warm_start(sqlite_url, data)
    assert err.value.returncode == 1
    assert err.value.stderr.startswith(f"banditd: data: {data}: unreadable after line ")
    assert len(err.value.stderr.splitlines()) == 1
    replay_argv = ["replay", "--data", str(whole), "--warm-start", str(data), "--limit", "10"]
    replayed = subprocess.run(
        [sys.executable, "-m", "banditd.commands.cli", *replay_argv, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (replayed.returncode, replayed.stdout) == (1, "")
    assert replayed.stderr.startswith(f"banditd replay: data: {data}: unreadable after line ")


# -- the server's warm start against the in-process replay's -------------------------------------

DEV_DATA = REPO / "data" / "routerbench-dev.jsonl.gz"
WARM, ONLINE = 60, 60  # records of the dev file: warm start on the first, then replay the next


def dev_split(tmp_path: Path) -> tuple[Path, Path]:
    with gzip.open(DEV_DATA, "rt") as lines:
        rows = [line for _, line in zip(range(WARM + ONLINE), lines, strict=False)]
    warm, online = tmp_path / "warm.jsonl", tmp_path / "online.jsonl"
    warm.write_text("".join(rows[:WARM]))
    online.write_text("".join(rows[WARM:]))
    return warm, online


CONTEXTS: dict[str, dict[str, Any]] = {
    "hashing+task": {"embedding_dim": 32, "metadata_from": ("task",)},
    "hashing+pca+task": {"embedding_dim": 64, "pca_dim": 8, "metadata_from": ("task",)},
    "hashing+knn": {"embedding_dim": 32, "knn_k": 5},
    "minilm-static+pca+task": {
        "encoder": "minilm-static",
        "pca_dim": 16,
        "metadata_from": ("task",),
    },
}


@pytest.mark.parametrize("context", CONTEXTS)
async def test_warm_started_server_replays_like_in_process(
    sqlite_url: str, start_server: StartServer, tmp_path: Path, context: str
) -> None:
    if "pca" in context or "knn" in context:
        require("faiss", "PCA and kNN need the context extra")
    if "minilm" in context:
        require("model2vec", "minilm-static needs the context extra")
    warm, online = dev_split(tmp_path)
    summary = await _replays_alike(sqlite_url, start_server, tmp_path, warm, online, context)
    assert summary["records"] == WARM and summary["skipped"] == 0


async def test_a_repeated_id_is_skipped_by_the_server_and_in_process_alike(
    sqlite_url: str, start_server: StartServer, tmp_path: Path
) -> None:
    """Two records with one id got the same decision ids: the log kept the first one's events
    (the second's counted as already present) while the in-process replay folded both, so the
    two disagreed. The second is now skipped on both paths, and a rerun skips it again."""
    warm, online = dev_split(tmp_path)
    rows = [json.loads(line) for line in warm.read_text().splitlines()]
    rows[7]["id"] = rows[3]["id"]  # another prompt, other outcomes, the same id
    warm.write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = await _replays_alike(sqlite_url, start_server, tmp_path, warm, online, "hashing+task")
    assert (summary["skipped"], summary["skip_reasons"]) == (1, {"duplicate id": 1})
    assert summary["already_present"] == 0
    flags = ("--tenant", "replay", "--router", "replay-0")
    again = warm_start(sqlite_url, warm, *flags)
    assert (again["added"], again["already_present"]) == (0, summary["events"])
    assert again["skip_reasons"] == {"duplicate id": 1}


async def _replays_alike(
    sqlite_url: str,
    start_server: StartServer,
    tmp_path: Path,
    warm: Path,
    online: Path,
    context: str,
) -> dict[str, Any]:
    """Warm-start a server's router from ``warm`` and replay ``online`` through it: the report
    is the in-process replay's (with the same warm start). The warm start's summary."""
    local = replay.Options(data=online, warm_start=warm, **CONTEXTS[context])
    expected = await asyncio.to_thread(replay.replay, local)
    cold = await asyncio.to_thread(replay.replay, dataclasses.replace(local, warm_start=None))
    assert expected["runs"] != cold["runs"]  # the warm start changes the picks

    server = await start_server(sqlite_url)
    config = tmp_path / "router.json"  # what `banditd replay --print-router` prints
    config.write_text(json_format.MessageToJson(replay_router(local)))
    spec = codec.spec_from_proto(replay_router(local))
    summary = warm_start(
        sqlite_url,
        warm,
        "--tenant",
        "replay",
        "--router",
        "replay-0",
        "--router-config",
        str(config),
    )
    usable = WARM - summary["skipped"]
    assert summary["added"] == usable * len(spec.arms) == expected["warm_start"]["events"]
    assert summary["skipped"] == expected["warm_start"]["skipped_records"]
    assert summary["metadata_from"] == list(spec.metadata_keys)
    assert summary["pca_fitted_on"] == (usable if spec.pca_dim else 0)

    remote = dataclasses.replace(
        local, warm_start=None, server=Server(server.address, keep_routers=True)
    )
    got = await asyncio.to_thread(replay.replay, remote)

    for key in (*replay.SUMMARY_KEYS, "picks", "runs", "regret_over_time"):
        assert got[key] == expected[key], key
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="replay", name="replay-0"))
    assert stats.decisions == ONLINE and stats.feedback_count == ONLINE
    assert stats.context_version == summary["context_version"]  # the warm start's PCA, if any
    assert "pending" not in stats.context_version
    assert {a.arm: a.decisions for a in stats.arms if a.decisions} == {
        arm: round(share * ONLINE) for arm, share in expected["picks"].items() if share
    }
    return summary


async def test_keep_routers_needs_the_replays_router(
    sqlite_url: str, start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(sqlite_url)
    _, online = dev_split(tmp_path)
    opts = replay.Options(data=online, server=Server(server.address, keep_routers=True))
    with pytest.raises(NotFound, match="no router replay/replay-0 on the server; create and warm"):
        await asyncio.to_thread(replay.replay, opts)

    config = replay_router(dataclasses.replace(opts, embedding_dim=8, metadata_from=("task",)))
    await server.admin.PutRouter(pb.PutRouterRequest(router=config))
    with pytest.raises(FailedPrecondition, match=r"options in embedding_dim, metadata_keys$"):
        await asyncio.to_thread(replay.replay, opts)
    # The policy and the prior too: the report would describe a router other than the one run.
    other = dataclasses.replace(opts, exploration=0.1, prior_quality=0.5)
    await server.admin.PutRouter(pb.PutRouterRequest(router=replay_router(other)))
    with pytest.raises(FailedPrecondition, match=r"options in alpha, prior_quality$"):
        await asyncio.to_thread(replay.replay, opts)


def test_metadata_fields_the_router_does_not_declare_are_refused(
    sqlite_url: str, tmp_path: Path
) -> None:
    warm, _ = dev_split(tmp_path)
    config = tmp_path / "router.json"
    config.write_text(json_format.MessageToJson(replay_router(replay.Options(data=warm))))
    flags = ("--tenant", "replay", "--router", "replay-0", "--router-config", str(config))

    with pytest.raises(subprocess.CalledProcessError) as err:
        warm_start(sqlite_url, warm, *flags, "--metadata-from", "task")
    assert "declares metadata keys [], not ['task']" in err.value.stderr


def test_skipped_records_count_records_and_a_boolean_is_no_quality(tmp_path: Path) -> None:
    """A record with one bad arm entry still warm-starts its other arms: only a record that
    gives no event is skipped; its bad entries are counted apart. A JSON boolean is not a
    quality (replay's loader refuses it too)."""
    records = synthetic(5, seed=1)
    records[1]["models"]["strong"]["quality"] = 1.5
    records[2]["models"]["strong"]["quality"] = True
    records[3]["models"] = {arm: {"quality": None} for arm in ARMS}
    records[4]["prompt"] = ""
    history = write_records(tmp_path / "history.jsonl", records)
    data = write_records(tmp_path / "data.jsonl", synthetic(10, seed=2))
    opts = replay.Options(data=data, warm_start=history)

    report = replay.Replay(opts).warm_report
    assert report is not None
    assert (report.records, report.events, report.skipped_records) == (5, 3 + 2 + 2, 2)
    assert report.skipped_entries == 1 + 1 + 3
    assert report.skip_reasons == {"quality missing or outside [0, 1]": 1, "prompt": 1}
    summary = replay.replay(opts)["warm_start"]
    assert (summary["skipped_records"], summary["skipped_entries"]) == (2, 5)


def test_a_cost_past_the_ceiling_is_a_skipped_entry_not_the_end_of_the_run(
    sqlite_url: str, tmp_path: Path
) -> None:
    """An entry whose cost_usd is past the ceiling of one call (HARD_MAX_CALL_USD) gives no
    event, as in process (the posterior would pass it over): the log refused it, and with it
    the whole batch, so `banditd warm-start` stopped there and every rerun stopped again."""
    records = synthetic(5, seed=1)
    records[2]["models"]["strong"]["cost_usd"] = 2e9
    data = write_records(tmp_path / "history.jsonl", records)
    config = tmp_path / "router.json"
    config.write_text(json_format.MessageToJson(replay_router(replay.Options(data=data))))
    flags = ("--tenant", "replay", "--router", "replay-0", "--router-config", str(config))

    summary = warm_start(sqlite_url, data, *flags)
    assert (summary["events"], summary["added"], summary["skipped_entries"]) == (14, 14, 1)
    assert summary["events_per_arm"]["strong"] == 4
    stream = write_records(tmp_path / "data.jsonl", synthetic(10, seed=2))
    report = replay.Replay(replay.Options(data=stream, warm_start=data)).warm_report
    assert report is not None and (report.events, report.skipped_entries) == (14, 1)


def test_a_record_without_an_outcome_of_the_routers_arms_is_skipped(tmp_path: Path) -> None:
    """``skipped`` counts the records that gave no event: one whose models are all unknown to
    the router (or that has none) gave none and was counted nowhere."""
    records = synthetic(4, seed=1)
    records[1]["models"] = {"not-in-router": {"quality": 0.5, "cost_usd": 0.001}}
    records[2]["models"] = {}
    history = write_records(tmp_path / "history.jsonl", records)
    data = write_records(tmp_path / "data.jsonl", synthetic(10, seed=2))
    report = replay.Replay(replay.Options(data=data, warm_start=history)).warm_report
    assert report is not None
    assert (report.records, report.events, report.skipped_records) == (4, 6, 2)
    assert report.skip_reasons == {"no outcome for the router's arms": 2}
