"""One call to an arm's OpenAI-compatible upstream (httpx), and how it can fail.

A failure raised here happened before any byte went to the caller, so the gateway may still
try another arm. The upstream's key is read from the environment variable the arm names, at
call time, and is never logged.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import httpx

from banditd.client import RankedArm

# Upstream answers that are the arm's fault (overloaded, down, misconfigured: key or model),
# not the request's: the next arm is tried.
FALLBACK_STATUSES = frozenset({401, 403, 404, 408, 429})
MAX_ERROR_BODY = 64 * 1024  # of an error passed on to the caller: the rest is not read
SSE = "text/event-stream"  # what a stream's 200 must be
OWN_SETTINGS = "BANDITD_"  # the gateway's settings (BANDITD_API_KEY): no arm's key


class UpstreamFailed(Exception):
    """An attempt failed before anything reached the caller; ``reason`` is a metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Upstream:
    arm: str
    base_url: str
    model: str
    api_key_env: str
    input_price_per_mtok: float
    output_price_per_mtok: float

    @classmethod
    def of(cls, ranked: RankedArm) -> Upstream:
        return cls(
            ranked.arm,
            ranked.upstream_base_url,
            ranked.upstream_model or ranked.arm,
            ranked.upstream_api_key_env,
            ranked.input_price_per_mtok,
            ranked.output_price_per_mtok,
        )

    def cost_usd(self, input_tokens: int, output_tokens: int) -> float:
        return (
            input_tokens * self.input_price_per_mtok + output_tokens * self.output_price_per_mtok
        ) / 1e6

    def _headers(self, key_envs: frozenset[str]) -> dict[str, str]:
        """The upstream's Authorization from the variable the arm names: one of ``key_envs``
        where given (a tenant's admin names the variable, and the URL it is sent to)."""
        if not self.base_url:
            raise UpstreamFailed("no_upstream", f"arm {self.arm!r} has no upstream_base_url")
        if not self.api_key_env:
            return {}
        if key_envs and self.api_key_env not in key_envs:
            raise UpstreamFailed(
                "missing_key",
                f"arm {self.arm!r}: upstream_api_key_env {self.api_key_env} is not one of "
                "BANDITD_GATEWAY_UPSTREAM_KEY_ENVS, never sent to an upstream",
            )
        if self.api_key_env.upper().startswith(OWN_SETTINGS):
            # A tenant's router names the variable: never hand it the gateway's banditd key.
            raise UpstreamFailed(
                "missing_key",
                f"arm {self.arm!r}: upstream_api_key_env {self.api_key_env} is one of banditd's "
                f"own settings ({OWN_SETTINGS}*), never sent to an upstream",
            )
        key = os.environ.get(self.api_key_env)
        if not key:
            raise UpstreamFailed(
                "missing_key",
                f"arm {self.arm!r}: environment variable {self.api_key_env} is not set "
                "on the gateway",
            )
        if not (key.isascii() and key.isprintable()):  # a header carries neither
            raise UpstreamFailed(
                "missing_key",
                f"arm {self.arm!r}: environment variable {self.api_key_env} holds a key that "
                "is not printable ASCII",
            )
        return {"authorization": f"Bearer {key}"}

    async def open(
        self,
        http: httpx.AsyncClient,
        body: dict[str, Any],
        timeout_s: float,
        key_envs: frozenset[str] = frozenset(),
    ) -> httpx.Response:
        """Send the chat completion with ``model`` replaced; the open response (its body not
        read yet) when the upstream accepted it. A 4xx that is the request's fault (400, 413,
        422, ...) is returned too: the caller gets it unchanged."""
        headers = self._headers(key_envs)
        try:
            request = http.build_request(
                "POST",
                self.base_url.rstrip("/") + "/chat/completions",
                json={**body, "model": self.model},
                headers=headers,
                timeout=httpx.Timeout(timeout_s),  # each step: connect, write, pool, each read
            )
            response = await http.send(request, stream=True)
        except httpx.InvalidURL as exc:  # banditd checks the scheme, not every host's IDNA
            raise UpstreamFailed(
                "no_upstream", f"arm {self.arm!r}: upstream_base_url is not a usable URL"
            ) from exc
        except httpx.TimeoutException as exc:
            raise UpstreamFailed("timeout", f"arm {self.arm!r}: upstream timed out") from exc
        except httpx.HTTPError as exc:
            raise UpstreamFailed(
                "connect", f"arm {self.arm!r}: upstream unreachable ({type(exc).__name__})"
            ) from exc
        status = response.status_code
        if status >= 500 or status in FALLBACK_STATUSES:
            await response.aclose()
            reason = "status_5xx" if status >= 500 else f"status_{status}"
            raise UpstreamFailed(reason, f"arm {self.arm!r}: upstream answered HTTP {status}")
        return response


async def first_chunk(response: httpx.Response, arm: str) -> tuple[bytes, Any]:
    """The response's first non-empty chunk and the iterator of the rest, decoded (httpx asks
    for gzip, and the caller gets no content-encoding); a failure before it, a stream that
    ends without a byte (no answer: a stream has at least its [DONE]), or an answer that is no
    SSE stream (``bad_stream``: the caller's client could not read it, as ``bad_json``) is an
    UpstreamFailed (nothing has reached the caller yet)."""
    media_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != SSE:
        await response.aclose()
        raise UpstreamFailed(
            "bad_stream",
            f"arm {arm!r}: upstream answered a stream with content-type {media_type or 'none'}, "
            f"not {SSE}",
        )
    chunks = response.aiter_bytes()
    try:
        async for chunk in chunks:
            if chunk:
                return chunk, chunks
    except httpx.TimeoutException as exc:
        await response.aclose()
        raise UpstreamFailed("timeout", f"arm {arm!r}: upstream timed out") from exc
    except httpx.HTTPError as exc:
        await response.aclose()
        raise UpstreamFailed("stream_broken", f"arm {arm!r}: upstream broke off") from exc
    await response.aclose()
    raise UpstreamFailed("stream_broken", f"arm {arm!r}: upstream sent an empty stream")


async def read_answer(response: httpx.Response, arm: str, max_bytes: int) -> bytes:
    """A whole (not streamed) answer, closed after. A 2xx must be a JSON object: one the caller
    could not read is the arm's failure (``bad_json``), like a 5xx, and so is one over
    ``max_bytes`` (``too_large``: not read past it). An error, which is the request's fault and
    passed on, is read up to MAX_ERROR_BODY bytes."""
    status = response.status_code
    limit = MAX_ERROR_BODY if status >= 400 else max_bytes
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > limit and status < 400:
                raise UpstreamFailed(
                    "too_large", f"arm {arm!r}: upstream's answer is over {max_bytes} bytes"
                )
            if size > limit:
                break
    except httpx.TimeoutException as exc:
        raise UpstreamFailed("timeout", f"arm {arm!r}: upstream timed out") from exc
    except httpx.HTTPError as exc:
        raise UpstreamFailed("stream_broken", f"arm {arm!r}: upstream broke off") from exc
    finally:
        await response.aclose()
    content = b"".join(chunks)[:limit]
    if 200 <= status < 300 and not _json_object(content):
        raise UpstreamFailed(
            "bad_json", f"arm {arm!r}: upstream answered HTTP {status} with no JSON object"
        )
    return content


def _json_object(content: bytes) -> bool:
    try:
        return isinstance(json.loads(content), dict)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return False
