"""Threshold rules: kept in ``iot_rules``, managed by ``cim iot rules`` and ``/iot/rules``.

A rule applies to the devices of a kind (``device_type``), or one device (``device_id``), or
those in one area (``area_level`` + ``area_code``) — any combination narrows — and to one
quantity. ``level`` rules compare the value with ``warning`` / ``alarm`` levels (``above`` or
``below``), ``rate`` rules the change per minute; a level counts once it has held for
``duration_s``, and an alert clears ``hysteresis`` back past the lower level. ``offline`` rules
fire when a device sent nothing (of ``quantity``, or of anything) for ``offline_minutes``.

:func:`check_rules` finds rules that are accepted but suspicious: ones that match no device,
have their levels the wrong way round, would fire on every reading (e.g. a water level
"above -0.5 m" over the stored readings, or any level at or past the quantity's physical bound in
``sensing/data/quantity_limits.csv``), or could never fire (a level beyond the physical range).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import sqlalchemy as sa

from cim.errors import ConflictError, NotFoundError, ParameterError
from sensing.case_link import check_case_class, note_alert_cleared
from sensing.limits import quantity_limits

KINDS = ("level", "rate", "offline")
DIRECTIONS = ("above", "below")
AREA_LEVELS = ("district", "street", "community", "grid")

#: does rule ``r`` apply to current device ``d``? (quantity is matched by the caller)
MATCH_DEVICE_SQL = """(r.device_type IS NULL OR r.device_type = d.device_type)
    AND (r.device_id IS NULL OR r.device_id = d.source_id)
    AND (r.area_level IS NULL OR r.area_code = CASE r.area_level WHEN 'district' THEN d.district_code
         WHEN 'street' THEN d.street_code WHEN 'community' THEN d.community_code ELSE d.grid_code END)"""


@dataclass
class RuleSpec:
    name: str
    kind: str = "level"
    quantity: str | None = None
    device_type: str | None = None
    device_id: str | None = None
    area_level: str | None = None
    area_code: str | None = None
    direction: str = "above"
    warning: float | None = None
    alarm: float | None = None
    hysteresis: float = 0.0
    duration_s: int = 0
    offline_minutes: int | None = None
    offline_level: str = "warning"
    case_class: str | None = None

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> "RuleSpec":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ParameterError(unknown[0], f"unknown rule field(s) {', '.join(unknown)}; "
                                             f"a rule has {', '.join(sorted(known))}")
        if not data.get("name"):
            raise ParameterError("name", "a rule needs a name")
        return cls(**data).validated()

    def validated(self) -> "RuleSpec":
        def need(ok: bool, parameter: str, message: str) -> None:
            if not ok:
                raise ParameterError(parameter, message)

        for name in ("name", "kind", "quantity", "device_type", "device_id", "area_level", "area_code", "direction",
                     "offline_level", "case_class"):
            value = getattr(self, name)
            need(value is None or isinstance(value, str), name, f"{name} must be text, got {value!r}")
            need(value is None or "\x00" not in value, name, f"{name} contains a NUL character")
        for name in ("duration_s", "offline_minutes"):
            value = getattr(self, name)
            need(value is None or (isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**31),
                 name, f"{name} must be a whole number, got {value!r}")
        for name in ("warning", "alarm", "hysteresis"):
            need(not isinstance(getattr(self, name), bool), name, f"{name} must be a number, not true/false")
        need(self.kind in KINDS, "kind", f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        need(self.direction in DIRECTIONS, "direction", f"direction must be above or below, got {self.direction!r}")
        need((self.area_level is None) == (self.area_code is None), "area_code",
             "area_level and area_code go together (e.g. street 310104003)")
        need(self.area_level is None or self.area_level in AREA_LEVELS, "area_level",
             f"area_level must be one of {', '.join(AREA_LEVELS)}, got {self.area_level!r}")
        for name in ("warning", "alarm", "hysteresis"):
            value = getattr(self, name)
            if value is not None:
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    raise ParameterError(name, f"{name} must be a number, got {value!r}") from None
                need(math.isfinite(value), name, f"{name} must be a finite number, got {value!r}")
                setattr(self, name, value)
        need(self.hysteresis >= 0, "hysteresis", "hysteresis must be 0 or more (it is a distance back)")
        need(isinstance(self.duration_s, int) and self.duration_s >= 0, "duration_s",
             "duration_s must be a whole number of seconds, 0 or more")
        if self.kind == "offline":
            need(isinstance(self.offline_minutes, int) and self.offline_minutes > 0, "offline_minutes",
                 "an offline rule needs offline_minutes > 0")
            need(self.offline_level in ("warning", "alarm"), "offline_level", "offline_level is warning or alarm")
        else:
            need(bool(self.quantity), "quantity", f"a {self.kind} rule needs a quantity")
            need(self.warning is not None or self.alarm is not None, "warning",
                 f"a {self.kind} rule needs a warning level, an alarm level or both")
        return self


def add_rule(conn: sa.Connection, spec: RuleSpec) -> dict[str, Any]:
    spec.validated()
    taken = conn.execute(sa.text("SELECT id FROM iot_rules WHERE name = :n AND removed_at IS NULL"),
                         {"n": spec.name}).scalar()
    if taken is not None:
        raise ConflictError(f"a rule named {spec.name!r} exists already (id {taken}); remove it first")
    if spec.case_class:
        spec.case_class = check_case_class(conn, spec.case_class)
    values = asdict(spec)
    columns = ", ".join(values)
    rule_id = conn.execute(sa.text(f"INSERT INTO iot_rules ({columns}) VALUES "
                                   f"({', '.join(':' + c for c in values)}) RETURNING id"), values).scalar_one()
    return get_rule(conn, rule_id)


RULE_COLUMNS = "id, " + ", ".join(f.name for f in fields(RuleSpec)) + ", created_at"


def get_rule(conn: sa.Connection, rule_id: int) -> dict[str, Any]:
    row = conn.execute(sa.text(f"SELECT {RULE_COLUMNS} FROM iot_rules WHERE id = :id AND removed_at IS NULL"),
                       {"id": rule_id}).mappings().first()
    if row is None:
        raise NotFoundError(f"no rule {rule_id}")
    return dict(row)


def list_rules(conn: sa.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(sa.text(
        f"SELECT {RULE_COLUMNS} FROM iot_rules WHERE removed_at IS NULL ORDER BY id")).mappings()]


def remove_rule(conn: sa.Connection, rule_id: int) -> int:
    """Remove a rule (its alerts stay, pointing at it); its active alerts clear. Returns how many cleared."""
    get_rule(conn, rule_id)
    conn.execute(sa.text("UPDATE iot_rules SET removed_at = now() WHERE id = :id"), {"id": rule_id})
    cleared = conn.execute(sa.text("UPDATE iot_alerts SET cleared_at = now(), cleared_reason = 'rule removed' "
                                   "WHERE rule_id = :id AND cleared_at IS NULL RETURNING id, case_id, cleared_at"),
                           {"id": rule_id}).all()
    for alert_id, case_id, cleared_at in cleared:
        note_alert_cleared(conn, alert_id, case_id, cleared_at, "rule removed")
    return len(cleared)


def check_rules(conn: sa.Connection) -> list[dict[str, Any]]:
    """Rules that are accepted but would not do what they seem to: one finding per problem."""
    findings: list[dict[str, Any]] = []
    for rule in list_rules(conn):
        def find(problem: str) -> None:
            findings.append({"rule_id": rule["id"], "name": rule["name"], "problem": problem})

        devices = conn.execute(sa.text(f"""SELECT d.source_id FROM iot_devices d, iot_rules r
            WHERE r.id = :id AND d.valid_to IS NULL AND {MATCH_DEVICE_SQL}
              AND (r.quantity IS NULL OR EXISTS (SELECT 1 FROM jsonb_array_elements(
                   CASE jsonb_typeof(d.quantities) WHEN 'array' THEN d.quantities ELSE '[]'::jsonb END) q
                   WHERE q->>'quantity' = r.quantity OR q #>> '{{}}' = r.quantity)
                   OR jsonb_typeof(d.quantities) = 'object' AND d.quantities ? r.quantity)"""),
                               {"id": rule["id"]}).scalars().all()
        if not devices:
            find("matches no current device (check device_type, device_id, area and quantity)")
            continue
        if rule["kind"] == "offline":
            continue
        sign = 1.0 if rule["direction"] == "above" else -1.0
        warning, alarm = rule["warning"], rule["alarm"]
        if warning is not None and alarm is not None and sign * warning > sign * alarm:
            find(f"warning level {warning} is past the alarm level {alarm} for a rule '{rule['direction']}': "
                 "the alarm would come first")
        lower = warning if warning is not None else alarm
        if rule["kind"] == "rate":
            if sign * lower <= 0:
                find(f"a rate {rule['direction']} {lower}/min fires on every steady reading")
            continue
        limit = quantity_limits().get(rule["quantity"])
        if limit is not None:
            bound, far = (limit.low, limit.high) if sign > 0 else (limit.high, limit.low)
            if sign * lower <= sign * bound:
                find(f"fires on every possible reading: {rule['quantity']} is never {'below' if sign > 0 else 'above'} "
                     f"{bound:g} {limit.unit} (its physical range, sensing/data/quantity_limits.csv), and the rule "
                     f"fires {rule['direction']} {lower:g}")
                continue
            if sign * lower > sign * far:
                find(f"never fires: {rule['quantity']} is never {rule['direction']} {far:g} {limit.unit} "
                     f"(its physical range), and the rule's lowest level is {lower:g}")
                continue
        passing, total = conn.execute(sa.text("""SELECT count(*) FILTER (WHERE :sign * value >= :sign * :level),
                count(*) FROM iot_readings WHERE device_id = ANY(:devices) AND quantity = :quantity"""),
                                      {"sign": sign, "level": lower, "devices": devices,
                                       "quantity": rule["quantity"]}).one()
        if total and passing == total:
            find(f"fires on every reading: all {total} stored {rule['quantity']} readings of its "
                 f"{len(devices)} device(s) are {rule['direction']} {lower}")
    return findings
