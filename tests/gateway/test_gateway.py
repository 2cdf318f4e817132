"""The OpenAI-compatible gateway (issue 22), end to end on loopback: a real banditd server, two
fake upstreams, the gateway under uvicorn, and the official openai client as the caller."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from banditd.commands import cli
from banditd.gateway import metrics as gateway_metrics
from banditd.gateway.usage import rough_tokens
from tests.gateway.fakes import COMPLETION_TOKENS, PROMPT_TOKENS
from tests.gateway.stack import ALPHA_PRICES, MODEL, PROMPT, Launch, new_key
from tests.helpers import require

openai = require("openai", "the official OpenAI client (a dev dependency) is the gateway's caller")


def _sample(name: str, labels: dict[str, str], **more: str) -> float:
    return gateway_metrics.REGISTRY.get_sample_value(name, {**labels, **more}) or 0.0


def cost(prices: tuple[float, float], input_tokens: int, output_tokens: int) -> float:
    return (input_tokens * prices[0] + output_tokens * prices[1]) / 1e6


async def test_a_call_is_routed_its_usage_reported_and_a_later_rating_learned(
    launch: Launch,
) -> None:
    stack = await launch()
    raw = await stack.openai().chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}]
    )
    completion = raw.parse()
    assert raw.headers["x-banditd-arm"] == "alpha"
    assert completion.choices[0].message.content == "from alpha with love"
    # The upstream got the arm's model name and the key from the arm's environment variable.
    assert stack.alpha.received[0]["model"] == "alpha-model-v1"
    assert stack.alpha.keys == ["Bearer sk-alpha"]
    assert stack.beta.received == []

    usage = await stack.reported("alpha")
    assert usage.usage_reports == 1
    assert usage.usage_cost_usd == pytest.approx(
        cost(ALPHA_PRICES, PROMPT_TOKENS, COMPLETION_TOKENS)
    )
    assert usage.usage_mean_latency_ms > 0
    assert usage.feedback_count == 0  # usage is not the rating

    async with httpx.AsyncClient(base_url=stack.base_url) as http:
        select = {"tenant": "acme", "router": "chat", "prompt": PROMPT}
        before = (await http.post("/v1/select", json=select)).json()
        rated = await http.post(
            "/v1/feedback",
            json={
                "tenant": "acme",
                "decision_id": raw.headers["x-banditd-decision-id"],
                "thumb": "THUMB_DOWN",
            },
        )
        assert rated.status_code == 200, rated.text
        assert rated.json()["costUsd"] == pytest.approx(usage.usage_cost_usd)
        after = (await http.post("/v1/select", json=select)).json()
        # A second rating of the same decision is refused: usage did not take its place.
        again = await http.post(
            "/v1/feedback",
            json={
                "tenant": "acme",
                "decisionId": raw.headers["x-banditd-decision-id"],
                "reward": 1.0,
            },
        )
        assert again.status_code == 409, again.text

    def quality(answer: dict[str, Any]) -> float:
        return float(next(r["qualityScore"] for r in answer["ranking"] if r["arm"] == "alpha"))

    assert quality(after) < quality(before)  # THUMB_DOWN moved alpha's posterior down
    rated_stats = await stack.arm_stats("alpha")
    assert rated_stats.feedback_count == 1
    assert rated_stats.mean_reward == 0.0
    # The rating took the usage's measured cost and latency (not the expected cost).
    assert rated_stats.spend_usd == pytest.approx(usage.usage_cost_usd)
    assert rated_stats.latency_reports == 1


@pytest.mark.parametrize("gzip", [False, True])
async def test_a_streamed_call_passes_through_and_is_counted(launch: Launch, gzip: bool) -> None:
    stack = await launch()
    stack.alpha.gzip = gzip  # the gateway asks for gzip (accept-encoding): it must decode it
    stream = await stack.openai().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], stream=True
    )
    assert stream.response.headers["x-banditd-arm"] == "alpha"
    pieces = [c.choices[0].delta.content async for c in stream if c.choices]
    assert "".join(pieces) == "from alpha with love"
    assert stack.alpha.received[0]["stream"] is True

    usage = await stack.reported("alpha")
    assert usage.usage_reports == 1
    # No usage in the stream: counted roughly, one token per 4 characters.
    expected = cost(ALPHA_PRICES, rough_tokens(len(PROMPT)), rough_tokens(len("".join(pieces))))
    assert usage.usage_cost_usd == pytest.approx(expected)
    assert usage.usage_mean_first_token_ms > 0
    assert usage.usage_mean_latency_ms >= usage.usage_mean_first_token_ms
    assert usage.usage_errors == 0


async def test_a_stream_with_usage_is_counted_exactly(launch: Launch) -> None:
    stack = await launch()
    stream = await stack.openai().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage.completion_tokens == COMPLETION_TOKENS  # passed through unchanged
    usage = await stack.reported("alpha")
    assert usage.usage_cost_usd == pytest.approx(
        cost(ALPHA_PRICES, PROMPT_TOKENS, COMPLETION_TOKENS)
    )


@pytest.mark.parametrize("stream", [False, True])
async def test_a_failing_upstream_falls_back_to_the_next_arm(launch: Launch, stream: bool) -> None:
    stack = await launch()
    stack.alpha.fail = 503
    labels = {"tenant": "acme", "router": "chat", "arm": "alpha"}
    fallbacks_before = _sample("banditd_gateway_fallbacks_total", labels)
    errors_before = _sample("banditd_gateway_upstream_errors_total", labels, reason="status_5xx")
    messages = [{"role": "user", "content": PROMPT}]
    if stream:
        answer = await stack.openai().chat.completions.create(
            model=MODEL, messages=messages, stream=True
        )
        headers = answer.response.headers
        text = "".join([c.choices[0].delta.content async for c in answer if c.choices])
    else:
        raw = await stack.openai().chat.completions.with_raw_response.create(
            model=MODEL, messages=messages
        )
        headers, text = raw.headers, raw.parse().choices[0].message.content
    assert headers["x-banditd-arm"] == "beta"
    assert text == "from beta with love"
    assert len(stack.alpha.received) == 1 and len(stack.beta.received) == 1

    # The failed arm was rated with error set; the arm that answered reported its usage.
    alpha = await stack.reported("alpha")
    assert alpha.feedback_count == 1
    assert alpha.mean_reward == 0.0
    assert alpha.recent_error_rate == 1.0
    beta = await stack.reported("beta")
    assert beta.usage_reports == 1
    assert beta.feedback_count == 0
    async with httpx.AsyncClient(base_url=stack.base_url) as http:
        metrics = (await http.get("/metrics")).text
        assert (await http.get("/healthz")).json() == {"status": "ok"}
    assert "banditd_gateway_fallbacks_total{" in metrics
    assert _sample("banditd_gateway_fallbacks_total", labels) == fallbacks_before + 1
    errors = _sample("banditd_gateway_upstream_errors_total", labels, reason="status_5xx")
    assert errors == errors_before + 1


async def test_no_fallback_once_streamed_bytes_reached_the_caller(launch: Launch) -> None:
    stack = await launch()
    stack.alpha.fail = "break"
    stream = await stack.openai().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], stream=True
    )
    pieces: list[str] = []
    with pytest.raises(openai.APIError, match="broke off"):  # the gateway's error event
        async for chunk in stream:
            pieces.extend(c.delta.content for c in chunk.choices if c.delta.content)
    assert pieces == ["from "]
    assert stack.beta.received == []
    usage = await stack.reported("alpha")
    assert usage.usage_reports == 1
    assert usage.usage_errors == 1


async def test_bad_requests_get_clear_http_errors(launch: Launch) -> None:
    stack = await launch()
    client = stack.openai()
    messages = [{"role": "user", "content": PROMPT}]
    with pytest.raises(openai.BadRequestError, match="banditd/<tenant>/<router>"):
        await client.chat.completions.create(model="gpt-4o", messages=messages)
    with pytest.raises(openai.NotFoundError, match="nope"):
        await client.chat.completions.create(model="banditd/acme/nope", messages=messages)
    with pytest.raises(openai.BadRequestError, match="x-banditd-cost-weight"):
        await client.chat.completions.create(
            model=MODEL, messages=messages, extra_headers={"x-banditd-cost-weight": "lots"}
        )
    # Select's own checks apply to what the headers carry.
    with pytest.raises(openai.BadRequestError, match="max_latency_ms"):
        await client.chat.completions.create(
            model=MODEL, messages=messages, extra_headers={"x-banditd-max-latency-ms": "-5"}
        )
    async with httpx.AsyncClient(base_url=stack.base_url) as http:
        bad_json = await http.post("/v1/select", content=b"{not json")
        assert bad_json.status_code == 400
        unknown_field = await http.post("/v1/select", json={"router": "chat", "colour": "red"})
        assert unknown_field.status_code == 400 and "colour" in unknown_field.text
        forged = await http.post(
            "/v1/feedback", json={"tenant": "acme", "decisionId": "forged", "reward": 1}
        )
        assert forged.status_code in (400, 403), forged.text
        assert forged.json()["error"]["type"] == "banditd_error"
        # Python's json reads NaN, which no JSON upstream (nor httpx) takes: 400, not a 500.
        body = f'{{"model": "{MODEL}", "messages": [{{"content": "hi"}}], "top_p": NaN}}'
        nan = await http.post("/v1/chat/completions", content=body)
        assert nan.status_code == 400 and nan.json()["error"]["code"] == "invalid_argument"
        # JSON nested past Python's recursion limit is not JSON it can read: 400, not a 500.
        deep = b'{"model": "x", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        for path in ("/v1/chat/completions", "/v1/select"):
            nested = await http.post(path, content=deep)
            assert nested.status_code == 400, (path, nested.status_code, nested.text[:200])
    assert stack.alpha.received == [] and stack.beta.received == []


async def test_a_lone_surrogate_in_the_body_is_a_bad_request(launch: Launch) -> None:
    """JSON's \\ud800 escape reads as a str no UTF-8 encodes: neither Select's prompt nor the
    upstream's request could be sent (a 500, a decision left unreported); 400 before banditd."""
    stack = await launch()
    in_prompt = {"model": MODEL, "messages": [{"role": "user", "content": "hi \ud800"}]}
    elsewhere = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}
    elsewhere["user"] = "\udfff"
    async with httpx.AsyncClient(base_url=stack.base_url) as http:
        for body in (in_prompt, elsewhere):
            answer = await http.post("/v1/chat/completions", content=json.dumps(body))
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"]["code"] == "invalid_argument"
            assert "surrogate" in answer.json()["error"]["message"]
    assert (await stack.stats()).decisions == 0
    assert stack.alpha.received == [] and stack.beta.received == []


async def test_a_preference_is_rated_through_the_json_feedback(launch: Launch) -> None:
    stack = await launch()
    async with httpx.AsyncClient(base_url=stack.base_url) as http:
        select = {"tenant": "acme", "router": "chat", "prompt": PROMPT, "compare": True}
        pair = (await http.post("/v1/select", json=select)).json()
        rated = await http.post(
            "/v1/feedback",
            json={"tenant": "acme", "decisionId": pair["decisionId"], "preference": "PREFER_TIE"},
        )
        assert rated.status_code == 200, rated.text
        assert rated.json()["reward"] == 0.5


async def test_the_callers_api_key_is_checked_by_banditd(launch: Launch) -> None:
    stack = await launch(auth="required", auth_cache_seconds=0)
    select = {"tenant": "acme", "router": "chat", "prompt": PROMPT}
    good = await new_key(stack.banditd, "acme", "select", "feedback")
    select_only = await new_key(stack.banditd, "acme", "select")
    async with httpx.AsyncClient(base_url=stack.base_url) as http:
        missing = await http.post("/v1/select", json=select)
        assert missing.status_code == 401, missing.text
        assert missing.json()["error"]["code"] == "unauthenticated"
        chosen = await http.post(
            "/v1/select", json=select, headers={"authorization": f"Bearer {good}"}
        )
        assert chosen.status_code == 200, chosen.text
        rated = await http.post(
            "/v1/feedback",
            json={"tenant": "acme", "decisionId": chosen.json()["decisionId"], "reward": 1},
            headers={"authorization": f"Bearer {select_only}"},
        )
        assert rated.status_code == 403, rated.text
    with pytest.raises(openai.AuthenticationError):
        await stack.openai(api_key="not-a-key").chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": PROMPT}]
        )
    raw = await stack.openai(api_key=good).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}]
    )
    assert raw.parse().choices[0].message.content == "from alpha with love"
    assert (await stack.reported("alpha")).usage_reports == 1  # reported with the caller's key


async def test_the_gateways_own_key_serves_only_callers_who_send_none(launch: Launch) -> None:
    stack = await launch(
        auth="required", auth_cache_seconds=0, gateway_key_roles=("select", "feedback")
    )
    select = {"tenant": "acme", "router": "chat", "prompt": PROMPT}
    chat = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}
    async with httpx.AsyncClient(base_url=stack.base_url) as http:
        keyless = await http.post("/v1/select", json=select)
        assert keyless.status_code == 200, keyless.text  # served with the gateway's key
        feedback = {"tenant": "acme", "decisionId": keyless.json()["decisionId"], "reward": 1}
        for scheme in ("Basic dXNlcjpwYXNzd29yZA==", "Token abc", "Bearer"):
            for path, body in (
                ("/v1/select", select),
                ("/v1/feedback", feedback),
                ("/v1/chat/completions", chat),
            ):
                refused = await http.post(path, json=body, headers={"authorization": scheme})
                assert refused.status_code == 401, (scheme, path, refused.text)
                assert refused.json()["error"] == {
                    "message": "the Authorization header must be 'Bearer <API key>'",
                    "type": "invalid_request_error",
                    "code": "unauthenticated",
                }
    assert (await stack.reported("alpha")).usage_reports == 0  # no upstream was called


async def test_a_timed_out_upstream_falls_back(launch: Launch) -> None:
    stack = await launch(upstream_timeout_s=0.3)
    stack.alpha.fail = "hang"
    raw = await stack.openai().chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}]
    )
    assert raw.headers["x-banditd-arm"] == "beta"
    alpha = await stack.reported("alpha")
    assert (alpha.feedback_count, alpha.recent_error_rate) == (1, 1.0)


def test_the_gateway_command_refuses_bad_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["gateway", "--listen", "no-port-here"]) == 2
    assert "gateway_listen" in capsys.readouterr().err
    assert cli.main(["gateway", "--upstream-timeout", "0"]) == 2
