"""An arm whose upstream cannot even be sent to (its configuration, not the request) fails like
an arm without an upstream, and so does one whose answer the caller could not take (no JSON
object, no event stream, too large): the next arm answers and the failed decision is rated."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx
import pytest

from banditd.gateway.upstream import MAX_ERROR_BODY
from banditd.v1 import banditd_pb2 as pb
from tests.gateway.stack import MODEL, PROMPT, Launch


async def _served_by(
    launch: Launch,
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    key: str,
    env: str = "FAKE_ALPHA_KEY",
    settings: Mapping[str, Any] | None = None,
) -> str:
    stack = await launch(gateway_settings=settings)
    monkeypatch.setenv(env, key)
    got = await stack.banditd.admin.GetRouter(
        pb.GetRouterRequest(tenant="acme", name="chat"), metadata=stack.admin_key
    )
    config = got.router
    config.arms[0].upstream_base_url = url or config.arms[0].upstream_base_url
    config.arms[0].upstream_api_key_env = env
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


async def test_banditds_own_settings_are_never_sent_as_an_upstream_key(
    launch: Launch, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tenant's admin could name the gateway's own banditd key (BANDITD_API_KEY, maybe one for
    # every tenant) as an arm's key, with its own URL as the upstream: the gateway sent it there.
    got = await _served_by(launch, monkeypatch, "", "bdk_gateway_secret", env="BANDITD_API_KEY")
    assert got == "beta"


async def test_with_a_list_of_upstream_keys_no_other_variable_is_sent(
    launch: Launch, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Any variable of the gateway's environment (another tenant's provider key, a cloud
    # secret) could be named by a tenant's admin, with the admin's own URL as the upstream.
    # BANDITD_GATEWAY_UPSTREAM_KEY_ENVS names the ones arms may use; the others are not sent.
    allowed = {"gateway_upstream_key_envs": "FAKE_ALPHA_KEY, OTHER_KEY"}
    got = await _served_by(launch, monkeypatch, "", "cloud-secret", "CLOUD_SECRET", allowed)
    assert got == "beta"
    stack = await launch(gateway_settings=allowed)  # a listed one still is
    request = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}
    async with httpx.AsyncClient(base_url=stack.base_url) as http:
        answer = await http.post("/v1/chat/completions", json=request)
    assert answer.headers["x-banditd-arm"] == "alpha", answer.text  # the cheap arm, first
    assert stack.alpha.keys == ["Bearer sk-alpha"]


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


@pytest.mark.parametrize("body", [b"<html>upstream proxy error</html>", b"", b'"a string"'])
async def test_a_200_that_is_no_json_answer_is_the_arms_failure(
    launch: Launch, body: bytes
) -> None:
    """An answer the caller could not read is the arm's failure, as a 5xx: the next arm
    answers, the failed decision is rated with error set; when every arm does it, a 502."""
    stack = await launch()
    stack.alpha.fail, stack.alpha.body = 200, body
    request = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}
    async with httpx.AsyncClient(base_url=stack.base_url) as http:
        answer = await http.post("/v1/chat/completions", json=request)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-banditd-arm"] == "beta"
        stack.beta.fail, stack.beta.body = 200, body
        failed = await http.post("/v1/chat/completions", json=request)
    assert failed.status_code == 502, failed.text
    error = failed.json()["error"]
    assert (error["type"], error["code"]) == ("upstream_error", "bad_gateway")
    assert "no JSON object" in error["message"]
    alpha, beta = await stack.reported("alpha"), await stack.reported("beta")
    assert (alpha.feedback_count, alpha.recent_error_rate, alpha.usage_reports) == (2, 1.0, 0)
    assert (beta.feedback_count, beta.recent_error_rate, beta.usage_reports) == (1, 1.0, 1)


async def test_a_passed_on_error_body_is_cut_at_max_error_body(launch: Launch) -> None:
    """A 400 is the request's fault and goes to the caller, its body read up to MAX_ERROR_BODY
    bytes (an upstream that echoes a 16 MiB request in its error is not buffered whole)."""
    stack = await launch()
    stack.alpha.fail, stack.alpha.body = 400, b'{"error": "' + b"x" * (1 << 20) + b'"}'
    request = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}
    async with httpx.AsyncClient(base_url=stack.base_url) as http:
        answer = await http.post("/v1/chat/completions", json=request)
    assert answer.status_code == 400
    assert answer.headers["x-banditd-arm"] == "alpha"
    assert answer.content == stack.alpha.body[:MAX_ERROR_BODY]
    alpha = await stack.reported("alpha")
    assert (alpha.usage_reports, alpha.usage_errors, alpha.feedback_count) == (1, 0, 0)


async def test_a_stream_answered_without_an_event_stream_is_the_arms_failure(
    launch: Launch,
) -> None:
    """A 200 to a ``stream`` request whose content-type is not text/event-stream (a JSON
    answer, a proxy's page) is no stream the caller could read: the arm's failure, as a 2xx
    that is no JSON object is for a call without ``stream``; a 502 when every arm does it."""
    stack = await launch()
    stack.alpha.fail, stack.alpha.body = 200, b'{"id": "c-1", "choices": []}'
    request = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": True}
    async with httpx.AsyncClient(base_url=stack.base_url) as http:
        answer = await http.post("/v1/chat/completions", json=request)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-banditd-arm"] == "beta"
        assert answer.headers["content-type"].startswith("text/event-stream")
        assert b'"content": "beta"' in answer.content
        stack.beta.fail, stack.beta.body = 200, stack.alpha.body
        failed = await http.post("/v1/chat/completions", json=request)
    assert failed.status_code == 502, failed.text
    assert "not text/event-stream" in failed.json()["error"]["message"]
    alpha, beta = await stack.reported("alpha"), await stack.reported("beta")
    assert (alpha.feedback_count, alpha.recent_error_rate, alpha.usage_reports) == (2, 1.0, 0)
    assert (beta.feedback_count, beta.recent_error_rate, beta.usage_reports) == (1, 1.0, 1)


async def test_an_answer_over_max_answer_bytes_is_the_arms_failure(launch: Launch) -> None:
    """An answer without ``stream`` is read up to BANDITD_GATEWAY_MAX_ANSWER_BYTES: a longer
    one is not buffered whole but the arm's failure, as a 5xx; a 502 when every arm does it."""
    stack = await launch(gateway_settings={"gateway_max_answer_bytes": 1000})
    big = json.dumps({"id": "c-1", "choices": [], "padding": "x" * 2000}).encode()
    stack.alpha.fail, stack.alpha.body = 200, big
    request = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}
    async with httpx.AsyncClient(base_url=stack.base_url) as http:
        answer = await http.post("/v1/chat/completions", json=request)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-banditd-arm"] == "beta"  # its answer is under 1000 bytes
        assert answer.json()["choices"][0]["message"]["content"] == "from beta with love"
        stack.beta.fail, stack.beta.body = 200, big
        failed = await http.post("/v1/chat/completions", json=request)
    assert failed.status_code == 502, failed.text
    assert "answer is over 1000 bytes" in failed.json()["error"]["message"]
    alpha, beta = await stack.reported("alpha"), await stack.reported("beta")
    assert (alpha.feedback_count, alpha.recent_error_rate, alpha.usage_reports) == (2, 1.0, 0)
    assert (beta.feedback_count, beta.recent_error_rate, beta.usage_reports) == (1, 1.0, 1)
