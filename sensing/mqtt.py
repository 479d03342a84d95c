"""``cim iot listen``: readings from an MQTT broker, stored in batches, acknowledged once stored.

The subscription is QoS 1 on a persistent session (fixed client id, clean session off), with
manual acknowledgement: a message is acknowledged only after the transaction holding its readings
has committed. If the broker goes away, the client reconnects with exponential back-off (paho's
``reconnect_delay_set``) and the broker redelivers whatever was not acknowledged; if the database
fails, the messages are not acknowledged and the batch is retried. A redelivered message that had
in fact been stored is counted as duplicates, never stored twice. A message that can never be
stored (not JSON/NDJSON/CSV) is logged with its reason and acknowledged, or it would come back
forever.

Each message carries one reading (a JSON object) or many (JSON array, NDJSON, CSV), in the same
formats as ``POST /iot/readings``.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlsplit

import pandas as pd
import paho.mqtt.client as mqtt
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cim.errors import ParameterError, UnavailableError, UserError
from sensing.intake import IntakeReport, store_batch
from sensing.offline import sweep_offline
from sensing.parse import format_of, parse_batch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Broker:
    host: str
    port: int

    @classmethod
    def from_url(cls, url: str) -> "Broker":
        parts = urlsplit(url)
        if parts.scheme != "mqtt" or not parts.hostname:
            raise ParameterError("mqtt", f"the broker is given as mqtt://host:port, got {url!r}")
        try:
            port = parts.port or 1883
        except ValueError:
            raise ParameterError("mqtt", f"{url!r} has no valid port") from None
        return cls(parts.hostname, port)


@dataclass
class _Message:
    mid: int
    generation: int
    topic: str
    payload: bytes


class Listener:
    """Subscribes to ``topics`` on ``broker`` and stores what arrives until :meth:`stop`."""

    def __init__(self, engine: Engine, broker: Broker, topics: list[str], client_id: str = "cim-iot-listener",
                 batch_max: int = 1000, batch_wait_s: float = 0.02, max_backoff_s: int = 30,
                 offline_every_s: float = 60.0, on_subscribed: "Callable[[], None] | None" = None) -> None:
        self.engine, self.broker, self.topics = engine, broker, topics
        self.batch_max, self.batch_wait_s, self.offline_every_s = batch_max, batch_wait_s, offline_every_s
        self.report = IntakeReport()
        self.messages_stored = 0
        self.messages_unreadable = 0
        self.subscribed = threading.Event()
        self._on_subscribed = on_subscribed
        self._stop = threading.Event()
        self._inbox: queue.Queue[_Message] = queue.Queue()
        self._generation = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                                  protocol=mqtt.MQTTv311, manual_ack=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=max_backoff_s)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    # --- paho's network thread ---------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            log.warning("broker %s:%s refused the connection: %s", self.broker.host, self.broker.port, reason_code)
            return
        self._generation += 1
        log.info("connected to %s:%s (session present: %s)", self.broker.host, self.broker.port,
                 flags.session_present)
        client.subscribe([(topic, 1) for topic in self.topics])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # noqa: ANN001
        self.subscribed.set()
        if self._on_subscribed:
            self._on_subscribed()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        self.subscribed.clear()
        log.warning("disconnected from %s:%s (%s); reconnecting with back-off", self.broker.host,
                    self.broker.port, reason_code)

    def _on_message(self, client, userdata, message) -> None:  # noqa: ANN001
        self._inbox.put(_Message(message.mid, self._generation, message.topic, message.payload))

    # --- the storing thread --------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def run(self) -> IntakeReport:
        """Connect, then store batches until :meth:`stop`; returns the totals."""
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=30)
        self.client.loop_start()
        next_sweep = time.monotonic() + self.offline_every_s
        pending: list[_Message] = []
        try:
            while not self._stop.is_set():
                pending.extend(self._collect(self.batch_max - len(pending)))
                if pending and self._store(pending):
                    pending = []
                if time.monotonic() >= next_sweep:
                    self._sweep()
                    next_sweep = time.monotonic() + self.offline_every_s
        finally:
            self.client.disconnect()
            self.client.loop_stop()
        return self.report

    def _collect(self, room: int) -> list[_Message]:
        """Up to ``room`` messages: waits for the first, then takes what is queued and what follows within
        ``batch_wait_s`` of the one before (waiting ten times that at most). A lone alarm is stored at once
        (latency); under load messages queue up while the batch before is stored, so batches grow by
        themselves (throughput)."""
        batch: list[_Message] = []
        try:
            batch.append(self._inbox.get(timeout=0.5))
        except queue.Empty:
            return batch
        deadline = time.monotonic() + 10 * self.batch_wait_s  # a steady trickle still makes a batch soon
        while len(batch) < room:
            left = min(self.batch_wait_s, deadline - time.monotonic())
            try:  # past the deadline: only what is queued already
                batch.append(self._inbox.get(timeout=left) if left > 0 else self._inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def _store(self, messages: list[_Message]) -> bool:
        frames = []
        for message in messages:
            try:
                frames.append(parse_batch(message.payload, format_of(None, message.payload),
                                          where=f"message on {message.topic}"))
            except UserError as exc:
                self.messages_unreadable += 1
                log.warning("rejected: %s", exc)
        frame = pd.concat(frames, ignore_index=True) if frames else None
        try:
            if frame is not None and len(frame):
                with self.engine.begin() as conn:
                    batch_report = store_batch(conn, frame)
                self.report.merge(batch_report)
                for reject in batch_report.rejects[:20]:
                    log.warning("rejected reading %s: %s", reject.get("device_id"), reject["reason"])
        except (sa.exc.OperationalError, UnavailableError) as exc:
            # not stored, so not acknowledged: kept and retried; the broker keeps them meanwhile
            log.error("database unavailable, %d message(s) kept for retry: %s", len(messages), exc)
            self._stop.wait(2.0)
            return False
        current = self._generation
        for message in messages:
            # an acknowledgement belongs to the connection that delivered the message; after a reconnect
            # the broker redelivers it, and the stored copy makes the redelivery a counted duplicate
            if message.generation == current:
                self.client.ack(message.mid, 1)
        self.messages_stored += len(messages)
        return True

    def _sweep(self) -> None:
        try:
            with self.engine.begin() as conn:
                self.report.merge(sweep_offline(conn, datetime.now(timezone.utc)))
        except (sa.exc.OperationalError, UnavailableError) as exc:
            log.error("offline sweep skipped, database unavailable: %s", exc)
