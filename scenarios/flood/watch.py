"""``cim scenarios flood watch``: respond to water-level alarms as they fire.

Migration 0006_flood's trigger on ``iot_alerts`` notifies channel ``cim_flood_alarm`` when an alert
is opened as, or escalated to, an alarm — in the intake's transaction, so the notice arrives once the
readings that raised it are committed. The watcher LISTENs and, on each notice (and every
``sweep_every_s`` anyway, so a notice sent while it was down is not lost), responds to the pending
water-level alarms (:func:`scenarios.flood.response.respond_pending`). Sensing knows nothing of it.
"""
from __future__ import annotations

import select
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine

from scenarios.flood.response import respond_pending

CHANNEL = "cim_flood_alarm"


def watch(engine: Engine, stop: threading.Event, on_response: Callable[[dict[str, Any]], None],
          sweep_every_s: float = 30.0, since_hours: float = 24.0, k: int = 5,
          on_listening: Callable[[], None] | None = None) -> int:
    """Respond until ``stop`` is set; returns how many responses were made."""
    raw = engine.raw_connection()
    made = 0
    try:
        dbapi = raw.driver_connection
        dbapi.autocommit = True
        with dbapi.cursor() as cur:
            cur.execute(f"LISTEN {CHANNEL}")
        if on_listening:
            on_listening()
        while not stop.is_set():
            for response in respond_pending(engine, since_hours, k):
                on_response(response)
                made += 1
            ready, _, _ = select.select([dbapi], [], [], min(sweep_every_s, 1.0))
            waited = 0.0
            while not ready and not stop.is_set() and waited < sweep_every_s:
                waited += 1.0
                ready, _, _ = select.select([dbapi], [], [], 1.0)
            if ready:
                dbapi.poll()
                dbapi.notifies.clear()
    finally:
        raw.close()
    return made
