"""API keys: created at random, shown once, stored only as a hash; roles reader < loader < admin.

Why a plain SHA-256 and not a slow password hash: these keys are 256 random bits from
``secrets``, not something a person chose, so there is no dictionary to try and brute force is
2**256 work whatever the hash costs. A fast, unsalted hash is then safe, and it lets a request's
key be found by an indexed equality lookup on ``key_hash`` instead of checking every key with a
deliberately slow function. A leaked table still does not reveal a usable key.
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cim.errors import UserError

ROLES = ("reader", "loader", "admin")  # each role can do everything the ones before it can
KEY_PREFIX = "cim_"  # makes a leaked key recognisable in logs and secret scanners


@dataclass(frozen=True)
class ApiKey:
    id: int
    name: str | None
    role: str
    created_at: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UserError(f"role: must be one of {', '.join(ROLES)}, got {role!r}")
    return role


def role_allows(role: str, needed: str) -> bool:
    """True when ``role`` is at least ``needed`` (reader < loader < admin)."""
    return ROLES.index(check_role(role)) >= ROLES.index(check_role(needed))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _row(r: sa.RowMapping) -> ApiKey:
    return ApiKey(id=r["id"], name=r["name"], role=r["role"], created_at=r["created_at"],
                  revoked_at=r["revoked_at"])


def create_key(conn: Connection, role: str, name: str | None = None) -> tuple[ApiKey, str]:
    """A new key for ``role``: returns its record and the key itself, which is never stored."""
    check_role(role)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = conn.execute(sa.text(
        "INSERT INTO api_keys (name, key_hash, role) VALUES (:name, :hash, :role) "
        "RETURNING id, name, role, created_at, revoked_at"),
        {"name": name, "hash": hash_key(key), "role": role}).mappings().one()
    return _row(row), key


def verify_key(conn: Connection, key: str) -> ApiKey | None:
    """The active key record for ``key``, or None when unknown or revoked."""
    if not key:
        return None
    row = conn.execute(sa.text(
        "SELECT id, name, role, created_at, revoked_at FROM api_keys "
        "WHERE key_hash = :hash AND revoked_at IS NULL"), {"hash": hash_key(key)}).mappings().first()
    return _row(row) if row else None


def list_keys(conn: Connection) -> list[ApiKey]:
    rows = conn.execute(sa.text(
        "SELECT id, name, role, created_at, revoked_at FROM api_keys ORDER BY id")).mappings()
    return [_row(r) for r in rows]


def revoke_key(conn: Connection, key_id: int) -> ApiKey:
    """Revoke a key by id (idempotent); unknown ids raise UserError."""
    row = conn.execute(sa.text(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = :id "
        "RETURNING id, name, role, created_at, revoked_at"), {"id": key_id}).mappings().first()
    if row is None:
        raise UserError(f"no API key with id {key_id}; see 'cim keys list'")
    return _row(row)
