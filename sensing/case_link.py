"""The one seam between alerts and the case loop (:mod:`cases`): an alarm opens a case, a clearing
adds a note to it. Nothing else in :mod:`sensing` knows that cases exist.

* Every alarm — an alert opened at level alarm, or escalated to it — whose rule names a case class
  (``case_class``, code or name, e.g. ``道路积水``) becomes a report on channel ``iot`` at the device's
  point, through :func:`cases.intake.intake`: located in the device's grid, registered and
  dispatched by machine like any sensor report. The case's id is kept on the alert (``case_id``);
  the alert's id is the report's external id, so asking twice gives the same case.
* Clearing an alert that opened a case adds a ``comment`` to the case's log (the case stays with
  its department: the water going down is not the work being verified).
* A rule without a case class raises alerts only.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from cases.catalogue import class_by_code
from cases.intake import CaseReport, intake
from cases.lifecycle import Action, act

CASE_CHANNEL = "iot"
ACTOR = "sensing"


@dataclass(frozen=True)
class AlarmForCase:
    """What the case loop needs of an alarm: where (device), what (rule, its class), when, how much."""
    alert_id: int
    rule_id: int
    rule_name: str
    case_class: str | None
    device_id: str
    quantity: str | None
    grid_code: str | None
    value: float | None
    time: datetime


def check_case_class(conn: sa.Connection, case_class: str) -> str:
    """The class's code (a rule may name it by code or name); a ParameterError naming ``case_class``
    when the catalogue has no such class."""
    return class_by_code(conn, case_class, "case_class").code


def open_case_for_alarm(conn: sa.Connection, alarm: AlarmForCase) -> int | None:
    """Open (or find) the case of ``alarm``; returns its id, or None when the rule names no class."""
    if not alarm.case_class:
        return None
    point = conn.execute(sa.text("""SELECT ST_X(geom), ST_Y(geom), ST_Z(geom), ST_SRID(geom), name, device_type
        FROM iot_devices WHERE source_id = :d AND valid_to IS NULL"""), {"d": alarm.device_id}).one()
    x, y, z, srid, name, device_type = point
    what = f"{alarm.quantity} {alarm.value:g}" if alarm.value is not None else "no readings"
    report = CaseReport(
        channel=CASE_CHANNEL, class_code=alarm.case_class, external_id=f"iot-alert-{alarm.alert_id}",
        description=f"{alarm.rule_name}: {device_type} {name or ''} ({alarm.device_id}) {what} "
                    f"at {alarm.time.isoformat()}",
        x=x, y=y, z=z, crs=f"EPSG:{srid}", urgency="emergency", reported_at=alarm.time,
        attributes={"alert_id": alarm.alert_id, "rule_id": alarm.rule_id, "device_id": alarm.device_id,
                    "quantity": alarm.quantity, "value": alarm.value})
    return intake(conn, report).case.id


def note_alert_cleared(conn: sa.Connection, alert_id: int, case_id: int | None, cleared_at: datetime,
                       reason: str) -> None:
    """Add a note to the alarm's case that its alert cleared (nothing when it opened none)."""
    if case_id is None:
        return
    act(conn, case_id, Action("comment", ACTOR, "system", f"alert {alert_id} cleared at "
                                                         f"{cleared_at.isoformat()}: {reason}"))
