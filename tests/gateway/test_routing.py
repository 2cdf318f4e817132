"""What the gateway sends Select from a chat request (banditd.gateway.routing), end to end: a
long prompt is routed on a bounded piece of its text and priced at its whole size (input_tokens),
an image-only prompt on a stand-in for its parts, and a tenant or router with "/" is named in
``model`` percent-encoded."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from banditd.gateway.routing import SELECT_PROMPT_CHARS, select_prompt
from banditd.gateway.usage import rough_tokens
from banditd.v1 import banditd_pb2 as pb
from tests.gateway.stack import ALPHA_PRICES, MODEL, PROMPT, Launch


def _chat(content: Any, model: str = MODEL) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}]}


async def test_a_prompt_over_banditds_limit_is_routed_and_forwarded_whole(launch: Launch) -> None:
    stack = await launch()
    stack.alpha.usage = False  # counted roughly: from the whole prompt, not the routed piece
    prompt = "word " * 60_000 + PROMPT  # 300,000 characters: over BANDITD_MAX_PROMPT_CHARS
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        answer = await http.post("/v1/chat/completions", json=_chat(prompt))
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-banditd-arm"] == "alpha"
    assert stack.alpha.received[0]["messages"][0]["content"] == prompt
    usage = await stack.reported("alpha")
    answered = len(answer.json()["choices"][0]["message"]["content"])
    expected = (rough_tokens(len(prompt)) * ALPHA_PRICES[0]) / 1e6
    expected += rough_tokens(answered) * ALPHA_PRICES[1] / 1e6
    assert usage.usage_cost_usd == pytest.approx(expected)


async def test_a_long_prompt_is_priced_whole_for_max_cost(launch: Launch) -> None:
    """Select gets a piece of a long prompt but its whole size (input_tokens), so expected
    costs, and x-banditd-max-cost-usd, count every token the upstream will bill."""
    stack = await launch()
    prompt = "word " * 60_000 + PROMPT  # 300,040 characters: Select gets 200,000 of them
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        costs = []
        for size in ({}, {"inputTokens": rough_tokens(len(prompt))}):
            select = {"tenant": "acme", "router": "chat", "prompt": select_prompt(prompt)}
            chosen = await http.post("/v1/select", json=select | size)
            assert chosen.status_code == 200, chosen.text
            ranking = chosen.json()["ranking"]
            costs.append(next(r["expectedCostUsd"] for r in ranking if r["arm"] == "alpha"))
        piece, whole = costs
        assert whole - piece == pytest.approx(
            (rough_tokens(len(prompt)) - len(select_prompt(prompt)) / 4) * ALPHA_PRICES[0] / 1e6
        )
        # Alpha (LinUCB's first pick) fits the piece's cost, not the whole prompt's.
        limit = {"x-banditd-max-cost-usd": str((piece + whole) / 2)}
        answer = await http.post("/v1/chat/completions", json=_chat(prompt), headers=limit)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-banditd-arm"] == "beta"
    assert stack.beta.received[0]["messages"][0]["content"] == prompt


def test_select_gets_the_first_and_last_pieces_of_a_long_prompt() -> None:
    head, tail = "h" * SELECT_PROMPT_CHARS, "t" * SELECT_PROMPT_CHARS
    sent = select_prompt(head + "m" * 10 + tail)
    assert len(sent) <= SELECT_PROMPT_CHARS
    assert sent.startswith("h" * (SELECT_PROMPT_CHARS // 2 - 1))
    assert sent.endswith("t" * (SELECT_PROMPT_CHARS // 2 - 1)) and "m" not in sent
    assert select_prompt(PROMPT) == PROMPT


async def test_a_body_over_grpcs_message_limit_is_routed_not_refused(launch: Launch) -> None:
    """5 MiB of prompt is more than one gRPC message carries (4 MiB): it was a 429."""
    stack = await launch()
    prompt = "x" * (5 * 1024 * 1024)
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        answer = await http.post("/v1/chat/completions", json=_chat(prompt))
    assert answer.status_code == 200, answer.text[:300]
    assert len(stack.alpha.received[0]["messages"][0]["content"]) == len(prompt)


async def test_an_image_only_prompt_is_routed(launch: Launch) -> None:
    stack = await launch()
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    async with httpx.AsyncClient(base_url=stack.base_url) as http:
        answer = await http.post("/v1/chat/completions", json=_chat([image]))
    assert answer.status_code == 200, answer.text
    assert stack.alpha.received[0]["messages"][0]["content"] == [image]
    assert (await stack.reported("alpha")).usage_reports == 1


async def test_a_tenant_with_a_slash_is_named_percent_encoded(launch: Launch) -> None:
    stack = await launch()
    got = await stack.banditd.admin.GetRouter(
        pb.GetRouterRequest(tenant="acme", name="chat"), metadata=stack.admin_key
    )
    config = got.router
    config.tenant, config.name = "acme/eu", "chat/v2"
    await stack.banditd.admin.PutRouter(
        pb.PutRouterRequest(router=config), metadata=stack.admin_key
    )
    async with httpx.AsyncClient(base_url=stack.base_url) as http:
        answer = await http.post(
            "/v1/chat/completions", json=_chat(PROMPT, model="banditd/acme%2Feu/chat%2Fv2")
        )
        assert answer.status_code == 200, answer.text
        rated = await http.post(
            "/v1/feedback",
            json={
                "tenant": "acme/eu",
                "decisionId": answer.headers["x-banditd-decision-id"],
                "reward": 1,
            },
        )
        assert rated.status_code == 200, rated.text
