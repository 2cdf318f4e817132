"""From an OpenAI-style chat request to Select's arguments: the router (from ``model``, its
names percent-decoded, or the x-banditd-tenant / x-banditd-router headers), the prompt (the
messages' text, bounded: SELECT_PROMPT_CHARS, and the whole text's rough token count when it
is cut), the metadata (x-banditd-meta-* headers), cost and latency/energy weights and limits
(NUMBER_HEADERS), and the caller's API key."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from banditd.config import Settings
from banditd.gateway.usage import rough_tokens

MODEL_PREFIX = "banditd/"
META_PREFIX = "x-banditd-meta-"
NUMBER_HEADERS = {
    "x-banditd-cost-weight": "cost_weight",
    "x-banditd-max-cost-usd": "max_cost_usd",
    # Latency and energy (issue 21).
    "x-banditd-latency-weight": "latency_weight",
    "x-banditd-energy-weight": "energy_weight",
    "x-banditd-max-latency-ms": "max_latency_ms",
}
# Select is sent at most this much of the text (banditd's default BANDITD_MAX_PROMPT_CHARS): its
# first and last halves, which hold what an encoder's window reads (a transformer reads the
# start, a router's text_window_tokens the end). The upstream still gets the whole request, and
# Select the whole text's rough token count (input_tokens) for its expected costs.
SELECT_PROMPT_CHARS: int = Settings.model_fields["max_prompt_chars"].default


class BadRequest(ValueError):
    """A request the gateway cannot route: answered 400 with this message."""


@dataclass(frozen=True)
class Route:
    tenant: str
    router: str
    prompt: str  # what Select featurises (prompt_of, bounded by select_prompt)
    prompt_chars: int  # the whole text's length, which the upstream is sent and bills
    select_args: dict[str, Any]  # Select's other arguments (metadata, cost_weight, ...)


class NotBearer(ValueError):
    """An Authorization header that is no ``Bearer <key>``: answered 401, never served with the
    gateway's own key (that is for callers that send no Authorization)."""


def bearer(headers: Mapping[str, str]) -> str | None:
    """The caller's API key from ``Authorization: Bearer KEY``; None when it sends no
    Authorization; NotBearer when it sends another (Basic, a Bearer without a key)."""
    if "authorization" not in headers:
        return None
    scheme, _, key = headers["authorization"].partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise NotBearer("the Authorization header must be 'Bearer <API key>'")
    return key.strip()


def route_of(body: Mapping[str, Any], headers: Mapping[str, str]) -> Route:
    tenant, router = headers.get("x-banditd-tenant"), headers.get("x-banditd-router")
    if not (tenant and router):
        model = body.get("model")
        if not isinstance(model, str) or not model.startswith(MODEL_PREFIX):
            raise BadRequest(
                f"model must be 'banditd/<tenant>/<router>' (got {model!r}), or send the "
                "headers x-banditd-tenant and x-banditd-router"
            )
        tenant, _, router = model.removeprefix(MODEL_PREFIX).partition("/")
        if not tenant or not router or "/" in router:
            raise BadRequest(f"model must be 'banditd/<tenant>/<router>', got {model!r}")
        # A name with "/" comes as %2F; no name has a "%", so decoding never changes one.
        tenant, router = unquote(tenant), unquote(router)
    args: dict[str, Any] = {}
    metadata = {
        k.removeprefix(META_PREFIX): v for k, v in headers.items() if k.startswith(META_PREFIX)
    }
    if metadata:
        args["metadata"] = metadata
    for header, name in NUMBER_HEADERS.items():
        if (raw := headers.get(header)) is not None:
            try:
                value = float(raw)
            except ValueError:
                raise BadRequest(f"{header} must be a number, got {raw!r}") from None
            if not math.isfinite(value):
                raise BadRequest(f"{header} must be finite, got {raw!r}")
            args[name] = value
    text = prompt_of(body)
    prompt = select_prompt(text)
    if len(prompt) < len(text):  # Select's expected costs count the whole prompt's tokens
        args["input_tokens"] = rough_tokens(len(text))
    return Route(tenant, router, prompt, len(text), args)


def select_prompt(text: str) -> str:
    """The text Select is sent: all of it up to SELECT_PROMPT_CHARS, else its first and last
    halves (banditd refuses a longer prompt; the encoder would not read the middle anyway)."""
    if len(text) <= SELECT_PROMPT_CHARS:
        return text
    half = (SELECT_PROMPT_CHARS - 1) // 2
    return text[:half] + "\n" + text[-half:]


def prompt_of(body: Mapping[str, Any]) -> str:
    """The messages' text, one message per line (content strings and text parts); where they
    have none (an image-only prompt), the types of their parts (``[image_url]``) stand in for
    it, as banditd refuses an empty prompt."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    lines, kinds = [], []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{i}] must be an object")
        content = message.get("content")
        if isinstance(content, str):
            lines.append(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    continue
                if isinstance(part.get("text"), str):
                    lines.append(part["text"])
                elif isinstance(part.get("type"), str):
                    kinds.append(f"[{part['type']}]")
    text = "\n".join(lines)
    return text if text.strip() or not kinds else " ".join(kinds)
