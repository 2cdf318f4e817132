"""`banditd warm-start`'s command line: files it cannot read are one line on stderr."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from banditd.commands import cli
from banditd.context.encoders import HashingTextEncoder
from banditd.domain import FeedbackEvent
from banditd.store import Database
from banditd.store.events import EventLog
from tests.evaluation.test_replay import ARMS, synthetic, write_outcomes
from tests.helpers import router_config


def test_a_router_config_that_is_not_utf8_is_a_clear_error(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--router-config of a file that is not UTF-8 text was a traceback (UnicodeDecodeError)."""
    data = write_outcomes(tmp_path / "warm.jsonl", synthetic(3))
    config = tmp_path / "router.json"
    config.write_bytes(b"\xff\xfe{}")  # UTF-16, as some editors save JSON
    argv = ["warm-start", "--tenant", "acme", "--router", "chat", "--data", str(data)]
    argv += ["--router-config", str(config), "--database-url", sqlite_url, "--quiet"]
    assert cli.main(argv) == 1
    assert capsys.readouterr().err == (
        f"banditd: router_config: {config}: not UTF-8 text (a RouterConfig JSON file)\n"
    )


def _warm_start(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert cli.main([*argv, "--json", "--quiet"]) == 0
    summary: dict[str, Any] = json.loads(capsys.readouterr().out)
    return summary


def _log(url: str, router_id: int = 1) -> list[FeedbackEvent]:
    async def read() -> list[FeedbackEvent]:
        db = Database(url)
        try:
            return await EventLog(db).after(router_id, 0)
        finally:
            await db.close()

    return asyncio.run(read())


def test_after_new_encoder_weights_the_same_file_warm_starts_again_once(
    sqlite_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """New weights make the router learn again from its prior (the warm start's events, built by
    the old ones, no longer fold); a rerun found their ids taken and added nothing. It now adds
    the events built by the new weights, once; the first warm start's ids are as they were."""
    data = write_outcomes(tmp_path / "warm.jsonl", synthetic(4))
    config = tmp_path / "router.json"
    config.write_text(json_format.MessageToJson(router_config(arms=tuple(ARMS), embedding_dim=8)))
    argv = ["warm-start", "--tenant", "acme", "--router", "chat", "--data", str(data)]
    argv += ["--router-config", str(config), "--database-url", sqlite_url]
    assert _warm_start(argv, capsys)["added"] == 12

    monkeypatch.setattr(HashingTextEncoder, "fingerprint", "w2")  # as a new distillation's
    upgraded = _warm_start(argv, capsys)
    assert upgraded["added"] == 12 and upgraded["context_version"].startswith("hashing@w2:")
    assert _warm_start(argv, capsys)["added"] == 0
    monkeypatch.setattr(HashingTextEncoder, "fingerprint", "")  # back: the first one folds again
    assert _warm_start(argv, capsys)["added"] == 0

    log = _log(sqlite_url)
    assert [e.context_version.partition(":")[0] for e in log if e.context_version] == (
        ["hashing"] * 12 + ["hashing@w2"] * 12
    )
    namespace = uuid.UUID("6f1c3a52-4d3e-4f0e-9a43-0b7f3d1c2a10")  # the ids warm starts had
    first = {str(uuid.uuid5(namespace, f"1\x00q{i}\x00{arm}")) for i in range(4) for arm in ARMS}
    assert {e.decision_id for e in log[:12]} == first


def test_a_run_resumed_after_an_interruption_builds_the_x_of_an_unbroken_one(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kNN router's x reads the outcomes of the nearest earlier prompts. A warm start stopped
    midway and run again rebuilt the index from the log (the first part's events) and then
    folded the first part's events in again as it passed over them, so the rest's x counted
    each of those neighbours twice: not the x of a warm start run once, nor a server's."""
    records = synthetic(24, seed=3)
    data = write_outcomes(tmp_path / "warm.jsonl", records)
    part = write_outcomes(tmp_path / "part.jsonl", records[:12])  # what committed before a stop
    for name in ("broken", "whole"):
        config = tmp_path / f"{name}.json"
        router = router_config(name=name, arms=tuple(ARMS), embedding_dim=8, knn_k=6)
        config.write_text(json_format.MessageToJson(router))
    argv = ["warm-start", "--tenant", "acme", "--database-url", sqlite_url]
    broken = [*argv, "--router", "broken", "--router-config", str(tmp_path / "broken.json")]
    assert _warm_start([*broken, "--data", str(part)], capsys)["added"] == 36
    resumed = _warm_start([*broken, "--data", str(data)], capsys)
    assert (resumed["added"], resumed["already_present"]) == (36, 36)
    whole = [*argv, "--router", "whole", "--router-config", str(tmp_path / "whole.json")]
    assert _warm_start([*whole, "--data", str(data)], capsys)["added"] == 72

    ours, theirs = _log(sqlite_url, 1), _log(sqlite_url, 2)
    assert [(e.arm, e.reward) for e in ours] == [(e.arm, e.reward) for e in theirs]
    assert [e.x.tolist() for e in ours] == [e.x.tolist() for e in theirs]


@pytest.mark.parametrize("blank", [None, ""])
def test_records_whose_id_is_null_or_empty_are_named_by_their_line(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], blank: str | None
) -> None:
    """An event's decision id derives from its record's id: a null or empty id (a column left
    blank in an export) gave every such record the same ids, so only the first one's events
    were added and the others counted as already present on the first run."""
    records = synthetic(4, seed=5)
    for record in records:
        record["id"] = blank
    data = write_outcomes(tmp_path / "warm.jsonl", records)
    config = tmp_path / "router.json"
    config.write_text(json_format.MessageToJson(router_config(arms=tuple(ARMS), embedding_dim=8)))
    argv = ["warm-start", "--tenant", "acme", "--router", "chat", "--data", str(data)]
    argv += ["--router-config", str(config), "--database-url", sqlite_url]
    first = _warm_start(argv, capsys)
    assert (first["events"], first["added"], first["already_present"]) == (12, 12, 0)
    assert _warm_start(argv, capsys)["added"] == 0


@pytest.mark.parametrize("value", ["\ud83d", "a\x00b", "x" * 1025])
def test_a_metadata_value_no_select_could_send_skips_its_record(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    """A record's metadata value that a Select could not carry (a lone surrogate: no UTF-8; a
    NUL; over 1,024 characters) ended the warm start in a traceback as its vocabulary slot was
    written (SQLite: the surrogate; Postgres: each), with nothing added and every rerun the
    same. The record is now skipped, as a server refuses such a Select: skip_reasons names it."""
    records = synthetic(4, seed=1)
    for record in records:
        record["task"] = "math"
    records[2]["task"] = value
    data = write_outcomes(tmp_path / "warm.jsonl", records)
    config = tmp_path / "router.json"
    router = router_config(arms=tuple(ARMS), embedding_dim=8, metadata_keys=["task"])
    config.write_text(json_format.MessageToJson(router))
    argv = ["warm-start", "--tenant", "acme", "--router", "chat", "--data", str(data)]
    argv += ["--router-config", str(config), "--database-url", database_url]
    assert cli.main(["migrate", "--database-url", database_url]) == 0
    summary = _warm_start(argv, capsys)
    assert (summary["added"], summary["skipped"], summary["skip_reasons"]) == (
        9,
        1,
        {"metadata": 1},
    )
