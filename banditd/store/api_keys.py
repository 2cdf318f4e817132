"""Secrets: API key records (only the SHA-256 of each key is stored; see banditd.edge.auth)
and the server's shared secrets (the decision signing key)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update

from banditd.store.engine import Database, insert_ignoring_duplicates
from banditd.store.models import api_keys, server_secrets


@dataclass(frozen=True)
class StoredKey:
    key_id: str
    tenant: str
    roles: frozenset[str]
    name: str
    secret_sha256: bytes
    created_at: float
    revoked_at: float | None


def _key(row: Any) -> StoredKey:
    return StoredKey(
        key_id=row.id,
        tenant=row.tenant,
        roles=frozenset(r for r in row.roles.split(",") if r),
        name=row.name,
        secret_sha256=bytes(row.secret_sha256),
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


async def shared_secret(db: Database, name: str) -> bytes:
    """A random secret created once and shared by every process on this database."""
    async with db.transaction() as conn:
        # Whoever inserts first wins; everyone then reads the winner's value.
        await conn.execute(
            insert_ignoring_duplicates(conn, server_secrets),
            {"name": name, "value": secrets.token_bytes(32)},
        )
        value: bytes = (
            await conn.execute(select(server_secrets.c.value).where(server_secrets.c.name == name))
        ).scalar_one()
    return bytes(value)


class KeyStore:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self._clock = clock

    async def add(self, key: StoredKey) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(
                insert(api_keys).values(
                    id=key.key_id,
                    tenant=key.tenant,
                    roles=",".join(sorted(key.roles)),
                    name=key.name,
                    secret_sha256=key.secret_sha256,
                    created_at=key.created_at,
                    revoked_at=key.revoked_at,
                )
            )

    async def get(self, key_id: str) -> StoredKey | None:
        async with self.db.transaction() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        return None if row is None else _key(row)

    async def list(self, tenant: str | None = None) -> list[StoredKey]:
        """Every key, or one tenant's (None: every tenant's)."""
        query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if tenant is not None:
            query = query.where(api_keys.c.tenant == tenant)
        async with self.db.transaction() as conn:
            return [_key(row) for row in (await conn.execute(query)).all()]

    async def revoke(self, key_id: str) -> tuple[StoredKey, bool] | None:
        """Mark a key revoked (kept for the audit trail): (the key, whether this call revoked it;
        False: it already was, and keeps its first revocation's time); None when there is no
        such key."""
        async with self.db.transaction() as conn:
            marked = await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=self._clock())
            )
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        return None if row is None else (_key(row), marked.rowcount == 1)
