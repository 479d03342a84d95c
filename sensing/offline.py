"""Offline rules against the clock: a device whose newest reading is older than a rule's
``offline_minutes`` gets an offline alert, opened at the moment the silence passed the limit.

Readings ending a silence clear it (in :mod:`sensing.evaluate`, as they arrive). Devices that have
never sent a reading are not reported offline: there is no moment their silence began.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sensing.alerts import AlertWriter
from sensing.evaluate import lock_devices
from sensing.intake import IntakeReport
from sensing.rules import MATCH_DEVICE_SQL


def sweep_offline(conn: sa.Connection, now: datetime) -> IntakeReport:
    """Open the offline alerts due at ``now``; returns the counts (``alerts_opened``)."""
    report = IntakeReport()
    writer = AlertWriter(conn, report)
    cur = writer.cur
    cur.execute(f"""
        SELECT r.id, d.source_id, r.offline_level, r.offline_minutes, d.grid_code, max(l.time) AS last_seen
        FROM iot_rules r
        JOIN iot_devices d ON d.valid_to IS NULL AND {MATCH_DEVICE_SQL}
        JOIN iot_latest l ON l.device_id = d.source_id AND (r.quantity IS NULL OR l.quantity = r.quantity)
        WHERE r.kind = 'offline' AND r.removed_at IS NULL
          AND NOT EXISTS (SELECT 1 FROM iot_alerts a WHERE a.rule_id = r.id AND a.device_id = d.source_id
                          AND a.cleared_at IS NULL)
        GROUP BY r.id, d.source_id, r.offline_level, r.offline_minutes, d.grid_code
        HAVING max(l.time) + make_interval(mins => r.offline_minutes) < %s""", (now,))
    due = cur.fetchall()
    lock_devices(cur, "SELECT unnest(%s::text[]) AS device_id", ([d[1] for d in due],))
    for rule_id, device_id, level, minutes, grid_code, last_seen in due:
        # readings may have arrived, or another sweep opened it, while this one waited for the lock
        cur.execute("""SELECT (SELECT max(time) FROM iot_latest WHERE device_id = %s
                                 AND (quantity = (SELECT quantity FROM iot_rules WHERE id = %s)
                                      OR (SELECT quantity FROM iot_rules WHERE id = %s) IS NULL)) > %s
                            OR EXISTS (SELECT 1 FROM iot_alerts WHERE rule_id = %s AND device_id = %s
                                       AND cleared_at IS NULL)""",
                    (device_id, rule_id, rule_id, last_seen, rule_id, device_id))
        if cur.fetchone()[0]:
            continue
        opened_at = last_seen + timedelta(minutes=minutes)
        alert_id = writer.open(rule_id, device_id, None, level, opened_at, None, grid_code)
        cur.execute("UPDATE iot_alerts SET last_time = %s WHERE id = %s", (last_seen, alert_id))
    return report


def check_offline(engine: Engine, now: datetime | None = None) -> int:
    """The "no data for N minutes" rules against the clock, in a transaction of its own: for the
    server's periodic runner (and the MQTT listener). Returns how many offline alerts it opened.

    Idempotent: a device that already has an active offline alert of a rule gets no second one, so
    calling it again — at the same ``now`` or later, from two server workers at once — opens
    nothing more (the per-device lock and the re-check after it settle a race between two callers).
    """
    if now is None:
        now = datetime.now(timezone.utc)
    elif now.tzinfo is None:
        raise ValueError("check_offline needs an aware time (UTC or with an offset)")
    with engine.begin() as conn:
        return sweep_offline(conn, now).alerts_opened
