"""API key records: only the SHA-256 of each secret is stored (see banditd.edge.auth)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update

from banditd.store.engine import Database
from banditd.store.models import api_keys


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


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

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
        query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if tenant:
            query = query.where(api_keys.c.tenant == tenant)
        async with self.db.transaction() as conn:
            return [_key(row) for row in (await conn.execute(query)).all()]

    async def revoke(self, key_id: str) -> StoredKey | None:
        """Mark a key revoked (kept for the audit trail); None when there is no such key."""
        async with self.db.transaction() as conn:
            await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        return None if row is None else _key(row)
