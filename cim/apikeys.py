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
from cim.jurisdiction import Scope
from cim.users import User, user_from_row

ROLES = ("reader", "loader", "admin")  # each role can do everything the ones before it can
KEY_PREFIX = "cim_"  # makes a leaked key recognisable in logs and secret scanners


@dataclass(frozen=True)
class ApiKey:
    id: int
    name: str | None
    role: str
    created_at: datetime | None
    revoked_at: datetime | None
    user: User | None = None  # keys made before users existed (or without --user) are city-wide
    token_scope: Scope | None = None  # a bearer JWT's caller (cim.tokens): no key row, no user row

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def scope(self) -> Scope:
        """The jurisdiction requests with this key run in: its user's, or the whole city for a key
        without a user (as every key was before users existed); such a key sees personal data when
        it may handle cases (loader or higher), as before."""
        if self.token_scope is not None:
            return self.token_scope
        if self.user is not None:
            return self.user.scope(self.id)
        return Scope("city", role=self.role, user=self.name or f"api key {self.id}", key_id=self.id,
                     personal_data=role_allows(self.role, "loader"))


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UserError(f"role: must be one of {', '.join(ROLES)}, got {role!r}")
    return role


def role_allows(role: str, needed: str) -> bool:
    """True when ``role`` is at least ``needed`` (reader < loader < admin)."""
    return ROLES.index(check_role(role)) >= ROLES.index(check_role(needed))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _row(r: sa.RowMapping, user: User | None = None) -> ApiKey:
    return ApiKey(id=r["id"], name=r["name"], role=r["role"], created_at=r["created_at"],
                  revoked_at=r["revoked_at"], user=user)


def create_key(conn: Connection, role: str | None = None, name: str | None = None,
               user: User | None = None) -> tuple[ApiKey, str]:
    """A new key for ``role``, or for ``user`` (with the key role of the user's role): returns its record
    and the key itself, which is never stored."""
    if user is not None:
        if user.disabled_at is not None:
            raise UserError(f"--user: user {user.name!r} is disabled")
        if role is not None and role != user.key_role:
            raise UserError(f"--role: user {user.name!r} ({user.role}) acts with role {user.key_role}, not {role}")
        role = user.key_role
    if role is None:
        raise UserError("--role or --user: a key needs a role or a user")
    check_role(role)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = conn.execute(sa.text(
        "INSERT INTO api_keys (name, key_hash, role, user_id) VALUES (:name, :hash, :role, :user) "
        "RETURNING id, name, role, created_at, revoked_at"),
        {"name": name or (user.name if user else None), "hash": hash_key(key), "role": role,
         "user": user.id if user else None}).mappings().one()
    return _row(row, user), key


_WITH_USER = ("SELECT k.id, k.name, k.role, k.created_at, k.revoked_at, k.user_id, u.name AS user_name, "
              "u.role AS user_role, u.city, u.district_code, u.street_code, u.grid_codes, u.department_code, "
              "u.created_at AS user_created_at, u.disabled_at FROM api_keys k LEFT JOIN users u ON u.id = k.user_id")


def _with_user(row: sa.RowMapping) -> ApiKey:
    user = None
    if row["user_id"] is not None:
        user = user_from_row({"id": row["user_id"], "name": row["user_name"], "role": row["user_role"],
                              "city": row["city"], "district_code": row["district_code"],
                              "street_code": row["street_code"], "grid_codes": row["grid_codes"],
                              "department_code": row["department_code"], "created_at": row["user_created_at"],
                              "disabled_at": row["disabled_at"]})
    return _row(row, user)


def verify_key(conn: Connection, key: str) -> ApiKey | None:
    """The active key record for ``key`` with its user, or None when unknown, revoked or its user disabled."""
    if not key:
        return None
    row = conn.execute(sa.text(_WITH_USER + " WHERE k.key_hash = :hash AND k.revoked_at IS NULL"),
                       {"hash": hash_key(key)}).mappings().first()
    if row is None or (row["user_id"] is not None and row["disabled_at"] is not None):
        return None
    return _with_user(row)


def list_keys(conn: Connection) -> list[ApiKey]:
    return [_with_user(r) for r in conn.execute(sa.text(_WITH_USER + " ORDER BY k.id")).mappings()]


def revoke_key(conn: Connection, key_id: int) -> ApiKey:
    """Revoke a key by id (idempotent); unknown ids raise UserError."""
    row = conn.execute(sa.text(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = :id "
        "RETURNING id, name, role, created_at, revoked_at"), {"id": key_id}).mappings().first()
    if row is None:
        raise UserError(f"no API key with id {key_id}; see 'cim keys list'")
    return _row(row)
