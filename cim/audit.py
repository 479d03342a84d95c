"""The audit trail (migration 0006_jurisdiction): every write and every unmasked read of personal data,
with who, when, what and from where, in the append-only ``audit_log``.

Writes are recorded by the database itself (a statement trigger on each protected table), so no code
path can skip them; an unmasked read is recorded here by the code that hands personal data out
(:func:`record_unmasked_read`). The API role may only call ``cim_audit_read``: it cannot insert rows
of its own making, and nobody can change or delete one.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    key_id: int | None
    role: str | None
    scope: str | None
    action: str
    object: str
    detail: dict[str, Any]
    client: str | None
    request: str | None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "at": self.at.isoformat()}


def record_unmasked_read(engine: Engine, object_: str, detail: dict[str, Any]) -> None:
    """Record that personal data of ``object_`` (``cases``, ``persons``) was read unmasked, in a
    transaction of its own (the read's own transaction is never committed)."""
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT cim_audit_read(:object, CAST(:detail AS jsonb))"),
                     {"object": object_, "detail": json.dumps(detail, ensure_ascii=False)})


def list_audit(conn: Connection, *, since: datetime | None = None, until: datetime | None = None,
               actor: str | None = None, action: str | None = None, limit: int | None = 1000) -> list[AuditEntry]:
    """Audit rows, oldest first, narrowed by time ``[since, until)``, actor and action."""
    clauses, params = [], {}
    for name, op, value in (("since", "at >=", since), ("until", "at <", until), ("actor", "actor =", actor),
                            ("action", "action =", action)):
        if value is not None:
            clauses.append(f"{op} :{name}")
            params[name] = value
    sql = ("SELECT id, at, actor, key_id, role, scope, action, object, detail, client, request FROM audit_log"
           + (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY id"
           + (" LIMIT :limit" if limit is not None else ""))
    if limit is not None:
        params["limit"] = limit
    return [AuditEntry(**r) for r in conn.execute(sa.text(sql), params).mappings()]


def to_csv(entries: Iterable[AuditEntry]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "at", "actor", "key_id", "role", "scope", "action", "object", "detail", "client",
                     "request"])
    for e in entries:
        writer.writerow([e.id, e.at.isoformat(), e.actor, e.key_id, e.role, e.scope, e.action, e.object,
                         json.dumps(e.detail, ensure_ascii=False), e.client, e.request])
    return out.getvalue()
