"""An arm's upstream (issue 22): where the gateway sends the arm's calls. Only the name of the
environment variable holding the API key is configured; the key itself is never stored."""

from __future__ import annotations

import re

from banditd.errors import InvalidArgument

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
MAX_UPSTREAM_URL = 2048
MAX_UPSTREAM_MODEL = 256


def check_upstream(base_url: str, model: str, key_env: str) -> None:
    """An arm's upstream: an http(s) URL, a model name, an environment variable's name."""
    if base_url and (
        len(base_url) > MAX_UPSTREAM_URL
        or not base_url.startswith(("http://", "https://"))
        or any(c.isspace() for c in base_url)
    ):
        raise InvalidArgument(
            "arms.upstream_base_url",
            f"must be an http:// or https:// URL of at most {MAX_UPSTREAM_URL} characters",
        )
    if len(model) > MAX_UPSTREAM_MODEL or any(c.isspace() or not c.isprintable() for c in model):
        raise InvalidArgument(
            "arms.upstream_model",
            f"must be at most {MAX_UPSTREAM_MODEL} printable characters without spaces",
        )
    if key_env and not _ENV_NAME.fullmatch(key_env):
        raise InvalidArgument(
            "arms.upstream_api_key_env",
            "must be an environment variable name (letters, digits, _), not a key",
        )
