"""Alerts: opened, escalated (warning → alarm), acknowledged, cleared — the only writer of
``iot_alerts``. At most one alert per rule and device is active (not cleared); the partial unique
index ``uq_iot_alerts_active`` holds every writer to that. An alarm goes to the case loop through
:mod:`sensing.case_link`, and its clearing adds a note there."""
from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import sqlalchemy as sa

from cim.errors import ConflictError, NotFoundError, ParameterError
from sensing.case_link import AlarmForCase, note_alert_cleared, open_case_for_alarm

STATES = ("open", "acknowledged", "cleared", "active")
_LEVEL_CODE = {"warning": 1.0, "alarm": 2.0}

ALERT_COLUMNS = """a.id, a.rule_id, r.name AS rule_name, r.kind AS rule_kind, r.case_class, a.device_id, a.quantity,
    a.level, CASE WHEN a.cleared_at IS NOT NULL THEN 'cleared' WHEN a.acknowledged_at IS NOT NULL
    THEN 'acknowledged' ELSE 'open' END AS state, a.opened_at, a.escalated_at, a.acknowledged_at,
    a.acknowledged_by, a.cleared_at, a.cleared_reason, a.first_value, a.last_value, a.last_time, a.grid_code,
    a.case_id"""


class AlertWriter:
    """Applies the state changes that :mod:`sensing.evaluate` finds, counting them in ``report``."""

    def __init__(self, conn, report) -> None:  # noqa: ANN001 (SQLAlchemy connection, IntakeReport)
        self.conn = conn
        self.cur = conn.connection.dbapi_connection.cursor()
        self.report = report

    def active_levels(self, rule_ids: np.ndarray, device_ids: np.ndarray) -> np.ndarray:
        """Per row, the level code (0 none, 1 warning, 2 alarm) of the active alert of its rule and device."""
        self.cur.execute("""SELECT a.rule_id, a.device_id, a.level FROM iot_alerts a
            JOIN unnest(%s::int[], %s::text[]) AS x(rule_id, device_id) USING (rule_id, device_id)
            WHERE a.cleared_at IS NULL""", ([int(r) for r in rule_ids], list(device_ids)))
        active = {(r, d): _LEVEL_CODE[level] for r, d, level in self.cur.fetchall()}
        return np.array([active.get((int(r), d), 0.0) for r, d in zip(rule_ids, device_ids)], dtype=float)

    def open(self, rule_id: int, device_id: str, quantity: str | None, level: str, at: datetime,
             value: float | None, grid_code: str | None) -> int:
        self.cur.execute("""INSERT INTO iot_alerts (rule_id, device_id, quantity, level, opened_at, escalated_at,
                first_value, last_value, last_time, grid_code)
            VALUES (%s, %s, %s, %s, %s, NULL, %s, %s, %s, %s) RETURNING id""",
                         (rule_id, device_id, quantity, level, at, value, value, at, grid_code))
        alert_id = self.cur.fetchone()[0]
        self.report.alerts_opened += 1
        if level == "alarm":
            self._to_case(alert_id, at, value)
        return alert_id

    def escalate(self, rule_id: int, device_id: str, at: datetime, value: float | None) -> None:
        self.cur.execute("""UPDATE iot_alerts SET level = 'alarm', escalated_at = %s, last_value = %s, last_time = %s
            WHERE rule_id = %s AND device_id = %s AND cleared_at IS NULL AND level = 'warning' RETURNING id""",
                         (at, value, at, rule_id, device_id))
        row = self.cur.fetchone()
        if row:
            self.report.alerts_escalated += 1
            self._to_case(row[0], at, value)

    def clear(self, rule_id: int, device_id: str, at: datetime, reason: str) -> bool:
        self.cur.execute("""UPDATE iot_alerts SET cleared_at = %s, cleared_reason = %s
            WHERE rule_id = %s AND device_id = %s AND cleared_at IS NULL RETURNING id, case_id""",
                         (at, reason, rule_id, device_id))
        row = self.cur.fetchone()
        if row:
            self.report.alerts_cleared += 1
            note_alert_cleared(self.conn, row[0], row[1], at, reason)
        return row is not None

    def touch(self, rule_ids: list, device_ids: list, times: list, values: list) -> None:
        """The newest reading seen by each active alert, and how far each rule has been evaluated."""
        rule_ids = [int(r) for r in rule_ids]
        times = [t.to_pydatetime() if hasattr(t, "to_pydatetime") else t for t in times]
        self.cur.execute("""UPDATE iot_alerts a SET last_value = x.value, last_time = x.time
            FROM unnest(%s::int[], %s::text[], %s::timestamptz[], %s::float8[]) AS x(rule_id, device_id, time, value)
            WHERE a.rule_id = x.rule_id AND a.device_id = x.device_id AND a.cleared_at IS NULL
              AND (a.last_time IS NULL OR a.last_time < x.time)""", (rule_ids, device_ids, times, values))
        self.progress(rule_ids, device_ids, times)

    def progress(self, rule_ids: list, device_ids: list, times: list) -> None:
        self.cur.execute("""INSERT INTO iot_rule_progress (rule_id, device_id, evaluated_until)
            SELECT * FROM unnest(%s::int[], %s::text[], %s::timestamptz[])
            ON CONFLICT (rule_id, device_id) DO UPDATE SET evaluated_until =
                greatest(iot_rule_progress.evaluated_until, EXCLUDED.evaluated_until)""",
                         ([int(r) for r in rule_ids], list(device_ids), list(times)))

    def offline_episode(self, rule_id: int, device_id: str, level: str, last_seen: datetime, opened_at: datetime,
                        back_at: datetime, grid_code: str | None) -> None:
        """A gap in a device's readings: the active offline alert (opened by a sweep) clears when the
        device is back; without one, the episode is recorded opened and cleared."""
        if self.clear(rule_id, device_id, back_at, "readings again"):
            return
        alert_id = self.open(rule_id, device_id, None, level, opened_at, None, grid_code)
        self.cur.execute("UPDATE iot_alerts SET last_time = %s WHERE id = %s", (last_seen, alert_id))
        self.clear(rule_id, device_id, back_at, "readings again")

    def _to_case(self, alert_id: int, at: datetime, value: float | None) -> None:
        self.cur.execute("""SELECT a.rule_id, r.name, r.case_class, a.device_id, a.quantity, a.grid_code
            FROM iot_alerts a JOIN iot_rules r ON r.id = a.rule_id WHERE a.id = %s""", (alert_id,))
        rule_id, name, case_class, device_id, quantity, grid_code = self.cur.fetchone()
        case_id = open_case_for_alarm(self.conn, AlarmForCase(alert_id, rule_id, name, case_class, device_id,
                                                              quantity, grid_code, value, at))
        if case_id is not None:
            self.cur.execute("UPDATE iot_alerts SET case_id = %s WHERE id = %s", (case_id, alert_id))


def list_alerts(conn: sa.Connection, state: str | None = None, device_id: str | None = None,
                level: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Alerts newest first; ``state``: open | acknowledged | cleared | active (open or acknowledged)."""
    if state is not None and state not in STATES:
        raise ParameterError("state", f"state must be one of {', '.join(STATES)}, got {state!r}")
    if level is not None and level not in _LEVEL_CODE:
        raise ParameterError("level", f"level must be warning or alarm, got {level!r}")
    if device_id is not None and "\x00" in device_id:
        raise ParameterError("device", "device contains a NUL character")
    where = {"open": "a.cleared_at IS NULL AND a.acknowledged_at IS NULL",
             "acknowledged": "a.cleared_at IS NULL AND a.acknowledged_at IS NOT NULL",
             "cleared": "a.cleared_at IS NOT NULL", "active": "a.cleared_at IS NULL", None: "true"}[state]
    rows = conn.execute(sa.text(f"""SELECT {ALERT_COLUMNS} FROM iot_alerts a JOIN iot_rules r ON r.id = a.rule_id
        WHERE {where} AND (CAST(:device AS text) IS NULL OR a.device_id = :device)
          AND (CAST(:level AS text) IS NULL OR a.level = :level)
        ORDER BY a.opened_at DESC, a.id DESC LIMIT :limit"""),
                        {"device": device_id, "level": level, "limit": limit}).mappings()
    return [dict(r) for r in rows]


def get_alert(conn: sa.Connection, alert_id: int) -> dict[str, Any]:
    row = conn.execute(sa.text(f"SELECT {ALERT_COLUMNS} FROM iot_alerts a JOIN iot_rules r ON r.id = a.rule_id "
                               "WHERE a.id = :id"), {"id": alert_id}).mappings().first()
    if row is None:
        raise NotFoundError(f"no alert {alert_id}")
    return dict(row)


def acknowledge(conn: sa.Connection, alert_id: int, by: str | None) -> dict[str, Any]:
    """Acknowledge an active alert (it stays active until it clears); acknowledging twice is a no-op."""
    alert = get_alert(conn, alert_id)
    if alert["state"] == "cleared":
        raise ConflictError(f"alert {alert_id} is already cleared ({alert['cleared_at'].isoformat()})")
    conn.execute(sa.text("UPDATE iot_alerts SET acknowledged_at = now(), acknowledged_by = :by "
                         "WHERE id = :id AND acknowledged_at IS NULL"), {"id": alert_id, "by": by})
    return get_alert(conn, alert_id)
