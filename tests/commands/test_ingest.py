"""`banditd ingest`: every line accounted for, by line number; re-runs and resumes are safe."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path

import grpc
import pytest

from banditd.commands import cli
from banditd.commands.ingest import BadLine, IngestSummary, ingest, parse_record
from banditd.v1 import banditd_pb2 as pb
from tests.helpers import Running, StartServer, router_config


async def test_ingest_jsonl_with_bad_lines_then_rerun(
    sqlite_url: str, start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(sqlite_url)
    tokens = await _decisions(server, 12, "p")
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
    assert json.loads(state.read_text())["lines"] == 9


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
        f"banditd: {state}: not a state file of banditd ingest (the lines done and their "
        "sha256, got '{}'); --restart ignores it\n"
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
    summary = await _ingest(data, server, tmp_path)
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
    tokens = await _decisions(server, 3, "s")
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


async def _decisions(server: Running, n: int, prefix: str) -> list[str]:
    await server.admin.PutRouter(pb.PutRouterRequest(router=router_config()))
    return [
        (
            await server.router.Select(
                pb.SelectRequest(tenant="acme", router="chat", prompt=f"{prefix}{i}")
            )
        ).decision_id
        for i in range(n)
    ]


async def _ingest(data: Path, server: Running, tmp_path: Path) -> IngestSummary:
    """``ingest`` of ``data`` to ``server`` for tenant acme, in chunks of 10, its state and
    rejects files in ``tmp_path``, resuming."""
    return await asyncio.to_thread(
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


def _thumbs(tokens: list[str]) -> str:
    return "".join(json.dumps({"decision_id": t, "thumb": "up"}) + "\n" for t in tokens)


async def test_a_file_replaced_under_the_same_name_is_refused_not_skipped_into(
    sqlite_url: str, start_server: StartServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The state file held a bare count: a new file under the old name (a daily export) had its
    first lines skipped, exit 0, their feedback lost. The state names what was sent (a hash of
    those lines): a file that no longer starts with them is refused, naming the state file and
    --restart; a file that grew (lines appended) resumes."""
    server = await start_server(sqlite_url)
    tokens = await _decisions(server, 5, "r")
    data, state = tmp_path / "export.jsonl", tmp_path / "export.jsonl.ingest-state"
    argv = ["ingest", str(data), "--target", server.address, "--tenant", "acme", "--quiet"]
    data.write_text(_thumbs(tokens[:2]))
    assert await asyncio.to_thread(cli.main, [*argv, "--json"]) == 0
    capsys.readouterr()

    data.write_text(_thumbs(tokens[2:4]))  # the next day's export
    assert await asyncio.to_thread(cli.main, argv) == 1
    err = capsys.readouterr().err
    assert f"{state}" in err and "--restart" in err and "2 lines" in err, err
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.feedback_count == 2
    assert await asyncio.to_thread(cli.main, [*argv, "--restart", "--json"]) == 0
    # stdout's last line: the server, in this process, logs there too (cli configured it)
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["accepted"] == 2

    data.write_text(_thumbs(tokens[2:5]))  # the same export, one line longer: resumed
    assert await asyncio.to_thread(cli.main, [*argv, "--json"]) == 0
    done = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (done["skipped_lines"], done["accepted"]) == (2, 1)
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.feedback_count == 5


async def test_a_state_file_of_an_older_banditd_resumes_with_a_warning(
    sqlite_url: str, start_server: StartServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bare count (what banditd wrote before the hash): it cannot tell the file, so it is
    trusted as before, and stderr says so."""
    server = await start_server(sqlite_url)
    tokens = await _decisions(server, 3, "o")
    data, state = tmp_path / "thumbs.jsonl", tmp_path / "state"
    data.write_text(_thumbs(tokens))
    state.write_text("2")
    summary = await asyncio.to_thread(
        lambda: ingest(
            data,
            server.address,
            tenant="acme",
            state_path=state,
            rejects_path=tmp_path / "r.jsonl",
            chunk=10,
            fresh=False,
        )
    )
    assert (summary.skipped_lines, summary.accepted) == (2, 1)
    err = capsys.readouterr().err
    assert f"{state}" in err and "cannot tell" in err and "--restart" in err, err


async def test_rejects_of_a_chunk_that_never_committed_are_not_written_twice(
    sqlite_url: str, start_server: StartServer, tmp_path: Path
) -> None:
    """A chunk's unparsable lines went to the rejects file before the chunk was sent; a run
    stopped before it committed left them there, and the rerun (from the last commit) wrote
    them again. The rejects file now matches the state file's mark."""
    # A bucket of 2 feedback events that never refills within the test: the second chunk is
    # refused as a whole (RESOURCE_EXHAUSTED), as a run cut off before it committed.
    server = await start_server(sqlite_url, rate_limit_feedback_per_s=0.01, rate_limit_burst_s=200)
    tokens = await _decisions(server, 4, "c")
    data, rejects = tmp_path / "thumbs.jsonl", tmp_path / "rejects.jsonl"
    data.write_text(_thumbs(tokens[:2]) + "{not json\n" + _thumbs(tokens[2:]))

    def run() -> IngestSummary:
        return ingest(
            data,
            server.address,
            tenant="acme",
            state_path=tmp_path / "state",
            rejects_path=rejects,
            chunk=2,
            fresh=False,
        )

    with pytest.raises(grpc.RpcError):
        await asyncio.to_thread(run)
    await server.stop()
    server = await start_server(sqlite_url)  # the same database, no rate limit
    summary = await asyncio.to_thread(run)
    assert (summary.skipped_lines, summary.accepted, summary.unparsable) == (2, 2, 1)
    rejected = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["line"], r["kind"]) for r in rejected] == [(3, "unparsable")]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
async def test_json_refuses_what_csv_refuses(
    sqlite_url: str, start_server: StartServer, tmp_path: Path, suffix: str
) -> None:
    """JSON read `"reward": true` as 1.0, `"input_tokens": 12.7` as 12 and `"error": "yes"` as
    false, where CSV refuses "true" and "12.7" (and read "yes" as false too): a bool where a
    number is due, a fraction where an integer is due, or an error that is neither true nor
    false is a refused line, by its number, in both. A whole number written as a float is that
    integer in both: CSV refused "12.0", "12." and "1e2", where JSON read 12.0 as 12."""
    server = await start_server(sqlite_url)
    tokens = await _decisions(server, 8, "t")
    rows: list[dict[str, object]] = [
        {"reward": True},  # line 1 (2 in CSV, after the header)
        {"reward": 0.5, "input_tokens": 12.7},
        {"thumb": "up", "error": "yes"},
        {"reward": 0.5, "cost_usd": False},
        {"reward": 0.5, "output_tokens": 12.0, "error": True},  # 12 (CSV: "12.0")
        {"thumb": "down", "error": "False", "input_tokens": "3"},
        {"reward": 0.5, "input_tokens": "12.", "output_tokens": "1e2"},  # 12 and 100
        {"reward": 0.5, "output_tokens": "twelve"},
    ]
    columns = ["decision_id", "thumb", "reward", "cost_usd", "input_tokens", "output_tokens"]
    columns.append("error")
    records = [{"decision_id": t, **r} for t, r in zip(tokens, rows, strict=True)]
    data = tmp_path / f"ratings{suffix}"
    if suffix == ".csv":  # True as an exporter writes it: true
        cells = [[str(r.get(c, "")).replace("True", "true") for c in columns] for r in records]
        data.write_text("\n".join(",".join(line) for line in [columns, *cells]) + "\n")
    else:
        data.write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = await _ingest(data, server, tmp_path)
    first = 2 if suffix == ".csv" else 1
    assert (summary.accepted, summary.unparsable) == (3, 5)
    refused = {r["line"] - first: r["message"] for r in summary.rejects}
    assert sorted(refused) == [0, 1, 2, 3, 7]
    assert refused[0].startswith("reward is not a number")
    assert refused[1].startswith("input_tokens is not a valid int")
    assert refused[2].startswith("error must be true or false")
    assert refused[3].startswith("cost_usd is not a valid float")
    assert refused[7].startswith("output_tokens is not a valid int")


@pytest.mark.parametrize(
    ("value", "tokens"),
    [
        *[("12", 12), ("12.0", 12), ("12.", 12), ("1e2", 100), (12.0, 12)],
        *[("12.7", None), ("nan", None), ("inf", None), ("twelve", None), (True, None)],
        (12.7, None),
    ],
)
def test_token_counts_are_whole_numbers_however_written(value: object, tokens: int | None) -> None:
    """A CSV cell (text) or a JSON value: the integer it writes, else a refused line."""
    record = {"tenant": "acme", "decision_id": "d", "reward": 0.5, "input_tokens": value}
    if tokens is None:
        with pytest.raises(BadLine, match="input_tokens is not a valid int"):
            parse_record(record, None)
    else:
        assert parse_record(record, None).input_tokens == tokens


async def test_a_line_over_the_message_limit_is_refused_not_the_whole_file(
    sqlite_url: str, start_server: StartServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One line whose event alone is over the server's message limit (4 MiB; here a comment
    exported into the decision_id column) made its whole chunk RESOURCE_EXHAUSTED: exit 1, and
    every rerun stopped at the same chunk. It is refused on its own (too_large, by its number)
    and the rest sent; a rerun sends nothing more."""
    server = await start_server(sqlite_url)
    tokens = await _decisions(server, 2, "m")
    data, rejects = tmp_path / "thumbs.jsonl", tmp_path / "rejects.jsonl"
    huge = {"decision_id": "x" * (4 * 1024 * 1024 + 1), "thumb": "up"}
    data.write_text(_thumbs(tokens[:1]) + json.dumps(huge) + "\n" + _thumbs(tokens[1:]))
    argv = ["ingest", str(data), "--target", server.address, "--tenant", "acme", "--json"]
    argv += ["--quiet", "--rejects", str(rejects)]
    assert await asyncio.to_thread(cli.main, argv) == 0
    report = _report(capsys)
    assert (report["accepted"], report["too_large"]) == (2, 1)
    [rejected] = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert (rejected["line"], rejected["kind"]) == (2, "too_large")
    assert await asyncio.to_thread(cli.main, argv) == 0
    again = _report(capsys)
    assert (again["skipped_lines"], again["accepted"], again["too_large"]) == (3, 0, 0)
    assert len(rejects.read_text().splitlines()) == 1
    stats = await server.admin.GetStats(pb.GetStatsRequest(tenant="acme", name="chat"))
    assert stats.feedback_count == 2


async def test_a_chunk_is_split_before_it_passes_the_message_limit(
    sqlite_url: str, start_server: StartServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A chunk of 1,000 lines was one message per tenant whatever its size: lines each well
    under a smaller server limit (BANDITD_MAX_MESSAGE_BYTES) made a chunk over it, refused
    whole. A chunk ends before it would pass --max-message-bytes, so every line is sent."""
    server = await start_server(sqlite_url, max_message_bytes=2048)
    tokens = await _decisions(server, 30, "b")  # about 150 bytes an event: 4.5 KB in all
    data = tmp_path / "thumbs.jsonl"
    data.write_text(_thumbs(tokens))
    argv = ["ingest", str(data), "--target", server.address, "--tenant", "acme", "--json"]
    argv += ["--quiet", "--max-message-bytes", "2048"]
    assert await asyncio.to_thread(cli.main, argv) == 0
    report = _report(capsys)
    assert (report["accepted"], report["too_large"], report["first_rejects"]) == (30, 0, [])


def _report(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    """The --json object of the run, among the server's log lines on the same stdout."""
    [line] = [o for o in capsys.readouterr().out.splitlines() if o.startswith('{"lines": ')]
    report: dict[str, object] = json.loads(line)
    return report
