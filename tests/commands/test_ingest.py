"""`banditd ingest`: every line accounted for, by line number; re-runs and resumes are safe."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path

import pytest

from banditd.commands import cli
from banditd.commands.ingest import ingest
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import StartServer, router_config


async def test_ingest_jsonl_with_bad_lines_then_rerun(
    sqlite_url: str, start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    tokens = [
        (
            await server.router.Select(
                pb.SelectRequest(tenant="acme", router="chat", prompt=f"p{i}")
            )
        ).decision_id
        for i in range(12)
    ]
    lines = [
        json.dumps({"decision_id": t, "thumb": ("up", "down")[i % 2]})
        for i, t in enumerate(tokens[:10])
    ]
    lines += [
        "{not json",  # line 11
        json.dumps({"thumb": "up"}),  # 12: no decision id
        json.dumps({"decision_id": tokens[10], "reward": 5}),  # 13: refused by the server
        json.dumps({"decision_id": tokens[0], "thumb": "up"}),  # 14: duplicate
        json.dumps({"decision_id": tokens[11], "reward": "0.25", "cost_usd": "0.001"}),  # 15
    ]
    data = tmp_path / "thumbs.jsonl"
    data.write_text("\n".join(lines) + "\n")
    state, rejects = tmp_path / "state", tmp_path / "rejects.jsonl"

    def run(fresh: bool = False, chunk: int = 4) -> dict[str, object]:
        return ingest(
            data,
            server.address,
            tenant="acme",
            state_path=state,
            rejects_path=rejects,
            chunk=chunk,
            fresh=fresh,
        ).as_dict()

    first = await asyncio.to_thread(run)
    assert {k: first[k] for k in ("lines", "accepted", "duplicate", "invalid", "unparsable")} == {
        "lines": 15,
        "accepted": 11,
        "duplicate": 1,
        "invalid": 1,
        "unparsable": 2,
    }
    rejected = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert sorted((r["line"], r["kind"]) for r in rejected) == [
        (11, "unparsable"),
        (12, "unparsable"),
        (13, "invalid"),
        (14, "duplicate"),
    ]
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.feedback_count == 11

    resumed = await asyncio.to_thread(run)  # the state file says everything is done
    assert resumed["skipped_lines"] == 15 and resumed["accepted"] == 0
    again = await asyncio.to_thread(run, True)  # from scratch: all duplicates, nothing applied
    assert again["accepted"] == 0 and again["duplicate"] == 12
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.feedback_count == 11


async def test_ingest_csv_resumes_after_the_last_committed_chunk(
    sqlite_url: str, start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    rows = ["tenant,decision_id,thumb,output_tokens"]
    for i in range(9):
        d = await server.router.Select(
            pb.SelectRequest(tenant="acme", router="chat", prompt=f"q{i}")
        )
        rows.append(f"acme,{d.decision_id},up,{100 + i}")
    data = tmp_path / "thumbs.csv"
    data.write_text("\n".join(rows) + "\n")
    state = tmp_path / "state"
    state.write_text("6")  # an earlier run committed two chunks of 3, then died
    summary = await asyncio.to_thread(
        lambda: ingest(
            data,
            server.address,
            tenant=None,
            state_path=state,
            rejects_path=tmp_path / "r.jsonl",
            chunk=3,
            fresh=False,
        )
    )
    assert (summary.skipped_lines, summary.accepted) == (6, 3)
    assert state.read_text() == "9"


async def test_a_file_it_cannot_read_is_a_clear_error(
    sqlite_url: str, start_server: StartServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A gzipped file (ingest reads plain text), or a state file that is not ingest's: one line
    on stderr and exit status 1, no traceback."""
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    d = await server.router.Select(pb.SelectRequest(tenant="acme", router="chat", prompt="p"))
    line = json.dumps({"decision_id": d.decision_id, "thumb": "up"}) + "\n"
    packed = tmp_path / "thumbs.jsonl.gz"
    packed.write_bytes(gzip.compress(line.encode()))
    argv = ["ingest", "--target", server.address, "--tenant", "acme", "--quiet"]
    assert await asyncio.to_thread(cli.main, [*argv, str(packed)]) == 1
    assert capsys.readouterr().err == (
        f"banditd: {packed}: not UTF-8 text (ingest reads JSONL or CSV, uncompressed)\n"
    )

    plain, state = tmp_path / "thumbs.jsonl", tmp_path / "state"
    plain.write_text(line)
    state.write_text("{}")  # another tool's file
    assert await asyncio.to_thread(cli.main, [*argv, str(plain), "--state", str(state)]) == 1
    assert capsys.readouterr().err == (
        f"banditd: {state}: not a state file of banditd ingest (a count of lines done, got "
        "'{}'); --restart ignores it\n"
    )
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.feedback_count == 0


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
async def test_a_file_that_starts_with_a_byte_order_mark_is_read(
    sqlite_url: str, start_server: StartServer, tmp_path: Path, suffix: str
) -> None:
    """Excel's "CSV UTF-8" (and Notepad) start a file with a UTF-8 byte order mark: it is not
    part of the first column's name (every line was "no decision_id") nor of the first line."""
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    ids = [
        (
            await server.router.Select(pb.SelectRequest(tenant="acme", router="chat", prompt=p))
        ).decision_id
        for p in ("a", "b")
    ]
    if suffix == ".csv":
        lines = ["decision_id,thumb", *(f"{d},up" for d in ids)]
    else:
        lines = [json.dumps({"decision_id": d, "thumb": "up"}) for d in ids]
    data = tmp_path / f"thumbs{suffix}"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
    summary = await asyncio.to_thread(
        lambda: ingest(
            data,
            server.address,
            tenant="acme",
            state_path=tmp_path / "state",
            rejects_path=tmp_path / "r.jsonl",
            chunk=10,
            fresh=False,
        )
    )
    assert (summary.accepted, summary.unparsable, summary.rejects) == (2, 0, [])


@pytest.mark.parametrize("chunk", ["0", "-5", "5000"])
def test_a_chunk_out_of_range_is_refused_not_changed(
    tmp_path: Path, chunk: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--chunk outside 1..1000 (an upload answers at most 1,000 refusals, and every refused
    line must reach the rejects file) is an error, where it was silently made 1 or 1000."""
    data = tmp_path / "thumbs.jsonl"
    data.write_text("")
    with pytest.raises(SystemExit) as refused:
        cli.main(["ingest", str(data), "--tenant", "acme", "--quiet", "--chunk", chunk])
    assert refused.value.code == 2
    assert f"argument --chunk: expected an integer in [1, 1000], got '{chunk}'" in (
        capsys.readouterr().err
    )


async def test_a_file_ingested_again_under_mean_counts_each_line_once(
    sqlite_url: str, start_server: StartServer, tmp_path: Path
) -> None:
    # Under combine "mean" a resent rating is the decision's next signal; ingest names each
    # line's event (its own idempotency_key column, else one made from the line), so running
    # the file again, or resuming past a chunk whose answer was lost, changes nothing.
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config(combine="mean")))
    tokens = [
        (
            await server.router.Select(
                pb.SelectRequest(tenant="acme", router="chat", prompt=f"m{i}")
            )
        ).decision_id
        for i in range(3)
    ]
    lines = [
        {"decision_id": tokens[0], "reward": 1.0},
        {"decision_id": tokens[0], "reward": 0.0},  # a second signal, on purpose: kept
        {"decision_id": tokens[1], "reward": 0.5, "idempotency_key": "rating-7"},
        {"decision_id": tokens[2], "thumb": "up"},
    ]
    data = tmp_path / "ratings.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))

    def run() -> dict[str, object]:
        return ingest(
            data,
            server.address,
            tenant="acme",
            state_path=tmp_path / "state",
            rejects_path=tmp_path / "rejects.jsonl",
            chunk=2,
            fresh=True,
        ).as_dict()

    first = await asyncio.to_thread(run)
    again = await asyncio.to_thread(run)
    assert (first["accepted"], first["duplicate"]) == (4, 0)
    assert (again["accepted"], again["duplicate"]) == (0, 4)
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.feedback_count == 3  # decisions with feedback
    assert stats.mean_reward == pytest.approx((0.5 + 0.5 + 1.0) / 3)  # token 0: mean of 1 and 0


async def test_a_line_with_a_lone_surrogate_is_refused_not_the_end_of_the_run(
    sqlite_url: str, start_server: StartServer, tmp_path: Path
) -> None:
    """JSON may escape half of a UTF-16 pair ("\\ud83d", an emoji cut short by an exporter):
    no text gRPC can send. The run ended in a traceback (UnicodeEncodeError) at that line, and
    every rerun again; the line is now refused as unparsable, by its number, and the rest sent."""
    server = await start_server(sqlite_url)
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    tokens = [
        (
            await server.router.Select(
                pb.SelectRequest(tenant="acme", router="chat", prompt=f"s{i}")
            )
        ).decision_id
        for i in range(3)
    ]
    data = tmp_path / "ratings.jsonl"
    lines = [
        {"decision_id": tokens[0], "thumb": "up"},
        {"decision_id": tokens[1], "thumb": "up", "idempotency_key": "rating \ud83d"},
        {"decision_id": tokens[2], "thumb": "down"},
    ]
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))  # "\\ud83d" in JSON
    rejects = tmp_path / "rejects.jsonl"
    summary = await asyncio.to_thread(
        lambda: ingest(
            data,
            server.address,
            tenant="acme",
            state_path=tmp_path / "state",
            rejects_path=rejects,
            chunk=10,
            fresh=False,
        )
    )
    assert (summary.accepted, summary.unparsable) == (2, 1)
    [rejected] = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert (rejected["line"], rejected["kind"]) == (2, "unparsable")
    assert "\\ud83d" in rejected["message"]
