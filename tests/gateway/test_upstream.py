"""An arm whose upstream cannot even be sent to (its configuration, not the request) fails like
an arm without an upstream: the next arm answers and the failed decision is rated."""

from __future__ import annotations

import httpx
import pytest

from banditd.v1 import banditd_pb2 as pb
from tests.gateway.stack import MODEL, PROMPT, Launch


async def _served_by(launch: Launch, monkeypatch: pytest.MonkeyPatch, url: str, key: str) -> str:
    stack = await launch()
    monkeypatch.setenv("FAKE_ALPHA_KEY", key)
    got = await stack.banditd.admin.GetRouter(
        pb.GetRouterRequest(tenant="acme", name="chat"), metadata=stack.admin_key
    )
    config = got.router
    config.arms[0].upstream_base_url = url or config.arms[0].upstream_base_url
    await stack.banditd.admin.PutRouter(
        pb.PutRouterRequest(router=config), metadata=stack.admin_key
    )
    async with httpx.AsyncClient(base_url=stack.base_url) as http:
        answer = await http.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]},
        )
    assert answer.status_code == 200, answer.text
    alpha = await stack.reported("alpha")
    assert (alpha.feedback_count, alpha.recent_error_rate) == (1, 1.0)
    assert stack.alpha.received == []
    return answer.headers["x-banditd-arm"]


async def test_an_upstream_url_httpx_cannot_send_to_falls_back(
    launch: Launch, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A zero-width space pasted into the host: banditd takes the URL, no IDNA encodes it.
    url = "http://alpha\u200b.example/v1"
    assert await _served_by(launch, monkeypatch, url, "sk-alpha") == "beta"


async def test_an_upstream_key_no_header_can_carry_falls_back(
    launch: Launch, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A key pasted with a typographic character: HTTP headers are ASCII.
    assert await _served_by(launch, monkeypatch, "", "sk-alpha\u2026") == "beta"


async def test_a_stream_answered_without_a_byte_falls_back(launch: Launch) -> None:
    """An empty 200 is no answer (a stream has at least its [DONE]); nothing reached the caller."""
    stack = await launch()
    stack.alpha.fail = "empty"
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": True}
    async with httpx.AsyncClient(base_url=stack.base_url) as http:
        answer = await http.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-banditd-arm"] == "beta"
    assert b'"content": "beta"' in answer.content
    alpha = await stack.reported("alpha")
    assert (alpha.feedback_count, alpha.recent_error_rate, alpha.usage_reports) == (1, 1.0, 0)
