"""banditd's refusals as HTTP statuses (banditd.gateway.http_errors), through the gateway."""

from __future__ import annotations

import httpx

from tests.gateway.stack import Launch


async def test_a_select_over_grpcs_message_limit_is_payload_too_large(launch: Launch) -> None:
    """gRPC refuses a message over BANDITD_MAX_MESSAGE_BYTES (4 MiB) as RESOURCE_EXHAUSTED: the
    body's size (413), not a rate limit or a budget (429, the code's usual status)."""
    stack = await launch()
    select = {"tenant": "acme", "router": "chat", "prompt": "x" * (5 * 1024 * 1024)}
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        answer = await http.post("/v1/select", json=select)
    assert answer.status_code == 413, answer.text[:300]
    assert answer.json()["error"]["code"] == "body_too_large"
