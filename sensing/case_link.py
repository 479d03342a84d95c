"""The one seam between alerts and the case loop: an alarm opens a case, a clearing adds a note.

Every alarm (an alert opened at level alarm, or escalated to it) is handed to
:func:`open_case_for_alarm` and every clearing of such an alert to :func:`note_alert_cleared`;
nothing else in :mod:`sensing` knows that cases exist. The case loop is the ``cases`` package;
where it is not installed (this build predates it) no case is opened, the alert's ``case_id``
stays NULL and the alert itself is the record — nothing pretends a case exists.
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from datetime import datetime

CASE_CHANNEL = "iot"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlarmForCase:
    """What the case loop needs of an alarm: where (device, its grid), what (rule, its class), when."""
    alert_id: int
    rule_id: int
    rule_name: str
    case_class: str | None
    device_id: str
    quantity: str | None
    grid_code: str | None
    value: float | None
    time: datetime


def _warn_unwired() -> None:
    # the case loop landed after this seam was written: say so in the log rather than failing intake
    log.warning("package 'cases' is installed but sensing.case_link does not open cases through it yet")


def case_loop_available() -> bool:
    return importlib.util.find_spec("cases") is not None


def open_case_for_alarm(conn, alarm: AlarmForCase) -> int | None:  # noqa: ANN001 (a SQLAlchemy connection)
    """Open the case of ``alarm`` in its device's grid (channel ``iot``) and record its id on the
    alert; returns the case id, or None when this build has no case loop."""
    if not case_loop_available():
        return None
    _warn_unwired()
    return None


def note_alert_cleared(conn, alert_id: int, case_id: int | None, cleared_at: datetime) -> None:  # noqa: ANN001
    """Add a note to the alarm's case that the alert cleared (nothing when it opened none)."""
    if case_id is None or not case_loop_available():
        return
    _warn_unwired()
