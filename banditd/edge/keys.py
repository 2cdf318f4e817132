"""API keys: ``bdk_<key id>_<secret>``, scoped to one tenant (or ``*``, every tenant) and to
roles (select, feedback, admin). Only SHA-256 of the secret is stored: the secret is 256 random
bits, so a fast hash is as safe as a slow one and costs nothing per call. The secret is shown
once, when the key is created.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable

from banditd.domain import check_name
from banditd.errors import InvalidArgument, NotFound, Unauthenticated
from banditd.store.api_keys import KeyStore, StoredKey

ROLES = ("select", "feedback", "admin")
ALL_TENANTS = "*"
_PREFIX = "bdk"
MAX_KEY_CHARS = 256


def secret_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def split_key(key: str) -> tuple[str, str]:
    """(key id, secret) of a presented key; Unauthenticated when it cannot be one of ours."""
    parts = key.split("_", 2) if len(key) <= MAX_KEY_CHARS else []
    if len(parts) != 3 or parts[0] != _PREFIX or not parts[1] or not parts[2]:
        raise Unauthenticated("malformed API key (expected bdk_<id>_<secret>)")
    return parts[1], parts[2]


def matches(stored: StoredKey, secret: str) -> bool:
    return hmac.compare_digest(stored.secret_sha256, secret_hash(secret))


def check_roles(roles: Iterable[str]) -> frozenset[str]:
    wanted = frozenset(roles)
    unknown = sorted(wanted - set(ROLES))
    if unknown or not wanted:
        raise InvalidArgument("role", f"give one or more of {', '.join(ROLES)}")
    return wanted


async def create_key(
    store: KeyStore, tenant: str, roles: Iterable[str], name: str = ""
) -> tuple[str, StoredKey]:
    """A new key: (the full key to hand to the client, once; its stored record)."""
    if tenant != ALL_TENANTS:
        check_name("tenant", tenant)
    if len(name) > 128:
        raise InvalidArgument("name", "at most 128 characters")
    if not name.isprintable():  # a newline would fake a line of `banditd keys list`
        raise InvalidArgument(
            "name", "printable characters only (no newline, tab or other control character)"
        )
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    stored = StoredKey(
        key_id=key_id,
        tenant=tenant,
        roles=check_roles(roles),
        name=name,
        secret_sha256=secret_hash(secret),
        created_at=time.time(),
        revoked_at=None,
    )
    await store.add(stored)
    return f"{_PREFIX}_{key_id}_{secret}", stored


async def list_keys(store: KeyStore, tenant: str | None = None) -> list[StoredKey]:
    """Every tenant's keys (``tenant`` None), or one tenant's (``*``: the keys for all tenants)."""
    if tenant is not None and tenant != ALL_TENANTS:
        check_name("tenant", tenant)
    return await store.list(tenant)


async def revoke_key(store: KeyStore, key_id: str) -> tuple[StoredKey, bool]:
    """(The revoked key, whether this call revoked it: False when it already was.)"""
    if key_id.startswith(f"{_PREFIX}_"):  # a whole key was pasted: take its id
        key_id = split_key(key_id)[0]
    revoked = await store.revoke(key_id)
    if revoked is None:
        raise NotFound(f"no API key {key_id!r}")
    return revoked


def describe(key: StoredKey) -> dict[str, object]:
    """A key as `banditd keys list --json` shows it (never the secret or its hash)."""
    return {
        "key_id": key.key_id,
        "tenant": key.tenant,
        "roles": sorted(key.roles),
        "name": key.name,
        "created_at": key.created_at,
        "revoked": key.revoked_at is not None,
        "revoked_at": key.revoked_at,
    }
