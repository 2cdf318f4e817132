"""What the gateway reports of a call's usage when the provider gives no ``usage`` block."""

from __future__ import annotations

import httpx
import pytest

from banditd.gateway import metrics
from banditd.gateway.usage import rough_tokens
from tests.gateway.fakes import TOOL_ARGUMENTS, TOOL_NAME
from tests.gateway.stack import ALPHA_PRICES, MODEL, PROMPT, Launch


async def test_a_json_answer_without_usage_is_counted_from_its_content(launch: Launch) -> None:
    stack = await launch()
    stack.alpha.usage = False
    async with httpx.AsyncClient(base_url=stack.base_url) as http:
        answer = await http.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]},
        )
    assert answer.status_code == 200, answer.text
    assert "usage" not in answer.json()
    content = answer.json()["choices"][0]["message"]["content"]
    assert content == "from alpha with love"
    usage = await stack.reported("alpha")
    assert usage.usage_reports == 1
    # As a stream without usage: one token per 4 characters of the prompt and of the answer.
    input_tokens, output_tokens = rough_tokens(len(PROMPT)), rough_tokens(len(content))
    expected = (input_tokens * ALPHA_PRICES[0] + output_tokens * ALPHA_PRICES[1]) / 1e6
    assert usage.usage_cost_usd == pytest.approx(expected)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_tool_call_answer_without_usage_is_counted_from_its_call(
    launch: Launch, stream: bool
) -> None:
    """A tool call has no content: its tokens are the function's name and arguments."""
    stack = await launch()
    stack.alpha.usage, stack.alpha.tool_call = False, True
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": stream}
    async with httpx.AsyncClient(base_url=stack.base_url) as http:
        answer = await http.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    assert TOOL_NAME in answer.text  # passed through unchanged
    usage = await stack.reported("alpha")
    assert usage.usage_reports == 1
    output_tokens = rough_tokens(len(TOOL_NAME) + len("".join(TOOL_ARGUMENTS)))
    input_tokens = rough_tokens(len(PROMPT))
    expected = (input_tokens * ALPHA_PRICES[0] + output_tokens * ALPHA_PRICES[1]) / 1e6
    assert usage.usage_cost_usd == pytest.approx(expected)


async def test_an_answer_that_is_the_requests_fault_reports_no_cost_nor_latency(
    launch: Launch,
) -> None:
    """A 400 is passed on as it is: nothing was served, so nothing is billed and its time (a
    quick refusal) must not teach the arm's latency model, nor the latency histogram."""
    stack = await launch()
    stack.alpha.fail = 400
    labels = {"tenant": "acme", "router": "chat", "arm": "alpha"}
    observed = metrics.REGISTRY.get_sample_value("banditd_gateway_upstream_seconds_count", labels)
    async with httpx.AsyncClient(base_url=stack.base_url) as http:
        answer = await http.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]},
        )
    assert answer.status_code == 400 and answer.json() == {"error": {"message": "down"}}
    assert answer.headers["x-banditd-arm"] == "alpha"
    usage = await stack.reported("alpha")
    assert (usage.usage_reports, usage.usage_errors) == (1, 0)
    assert usage.usage_cost_usd == 0
    assert usage.usage_mean_latency_ms == 0  # none reported
    after = metrics.REGISTRY.get_sample_value("banditd_gateway_upstream_seconds_count", labels)
    assert (after or 0) == (observed or 0)
