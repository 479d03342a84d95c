"""MQTT end to end with a real mosquitto: `cim iot listen` stores what is published (QoS 1),
keeps the latest value current, survives a broker restart (reconnect with back-off) and loses
nothing: every reading published is stored exactly once."""
from __future__ import annotations

import os
import queue
import subprocess
import threading

import orjson
import paho.mqtt.client as mqtt
import pytest

from tests.conftest import CIM, PROJECT, missing_tool
from tests.sensing_fixtures import MOSQUITTO, Mosquitto, iot_devices_base, scalar, wait_until

@pytest.fixture(autouse=True)
def _broker_installed() -> None:
    if MOSQUITTO is None:
        missing_tool("mosquitto is not installed (scripts/system-deps.sh)")


@pytest.fixture(scope="module")
def base(server_url) -> str:
    return iot_devices_base(server_url)


@pytest.fixture()
def broker(tmp_path):
    b = Mosquitto(tmp_path)
    b.start()
    yield b
    b.stop()


class ListenerProcess:
    def __init__(self, base: str, broker: Mosquitto, client_id: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "CIM_DATABASE_URL"}
        env["CIM_DATABASE_URL"] = base
        self.process = subprocess.Popen(
            [CIM, "iot", "listen", "--mqtt", broker.url, "--topic", "city/+/readings", "--client-id", client_id,
             "--max-backoff", "2", "--batch-max", "50"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=PROJECT)
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.log.append(line)
            self.lines.put(line)

    def wait_subscribed(self, timeout: float = 30) -> None:
        def subscribed() -> bool:
            try:
                while True:
                    if "listening on" in self.lines.get_nowait():
                        return True
            except queue.Empty:
                assert self.process.poll() is None, "".join(self.log)
                return False
        wait_until(subscribed, timeout, "the listener to subscribe")

    def stop(self) -> dict:
        self.process.terminate()
        out, _ = self.process.communicate(timeout=30)
        assert self.process.returncode == 0, "".join(self.log)
        return orjson.loads(out)


def publisher(broker: Mosquitto) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-publisher")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    return client


def publish(broker: Mosquitto, first_minute: int, messages: int, per_message: int = 10) -> None:
    """``messages`` QoS 1 messages, each a JSON array of readings of IOT-0041…, one minute apart."""
    client = publisher(broker)
    try:
        minute = first_minute
        for _ in range(messages):
            readings = []
            for _ in range(per_message):
                readings.append({"device_id": "IOT-0041", "quantity": "water_level", "value": 0.3 + minute / 10000,
                                 "time": f"2026-12-10T{minute // 60:02d}:{minute % 60:02d}:00Z"})
                minute += 1
            client.publish("city/xuhui/readings", orjson.dumps(readings), qos=1).wait_for_publish(timeout=10)
    finally:
        client.loop_stop()
        client.disconnect()


def stored(base: str) -> int:
    return scalar(base, "SELECT count(*) FROM iot_readings WHERE device_id = 'IOT-0041' "
                        "AND time >= '2026-12-10T00:00:00Z' AND time < '2026-12-11T00:00:00Z'")


def test_readings_published_are_stored_across_a_broker_restart(base, broker):
    listener = ListenerProcess(base, broker, "cim-test-restart")
    try:
        listener.wait_subscribed()
        publish(broker, 0, messages=5)
        wait_until(lambda: stored(base) == 50, 60, "50 readings stored")
        assert scalar(base, "SELECT time FROM iot_latest WHERE device_id = 'IOT-0041' "
                            "AND quantity = 'water_level'").isoformat().startswith("2026-12-10T00:49")

        broker.stop()
        broker.start()  # same port, same persistence file: the listener's session survives
        # published before the listener is back: the broker queues them for its session
        publish(broker, 50, messages=5)
        listener.wait_subscribed()  # reconnected (with back-off) and subscribed again
        wait_until(lambda: stored(base) == 100, 60, "100 readings stored")
    except AssertionError:
        print("".join(listener.log))  # shown by pytest with the failure
        raise
    finally:
        totals = listener.stop()
    assert stored(base) == 100
    assert totals["stored"] == 100 and totals["rejected"] == 0
    assert any("disconnected" in line for line in listener.log)


def test_messages_published_while_the_listener_is_down_arrive_when_it_is_back(base, broker):
    """The session is persistent (fixed client id): what the broker accepted while the listener was
    away is delivered when it reconnects, and acknowledged only once stored."""
    first = ListenerProcess(base, broker, "cim-test-session")
    first.wait_subscribed()
    first.stop()
    before = stored(base)
    publish(broker, 200, messages=3)  # nobody listening
    second = ListenerProcess(base, broker, "cim-test-session")
    try:
        wait_until(lambda: stored(base) == before + 30, 60, "the queued readings stored")
    finally:
        totals = second.stop()
    assert totals["stored"] == 30


def test_an_unreadable_message_is_counted_and_the_rest_stored(base, broker):
    listener = ListenerProcess(base, broker, "cim-test-bad")
    try:
        listener.wait_subscribed()
        client = publisher(broker)
        client.publish("city/x/readings", b"[{not json", qos=1).wait_for_publish(timeout=10)
        client.publish("city/x/readings", orjson.dumps([
            {"device_id": "IOT-0041", "quantity": "water_level", "value": 0.4, "time": "2026-12-10T20:00:00Z"},
            {"device_id": "NOPE", "quantity": "water_level", "value": 0.4, "time": "2026-12-10T20:00:00Z"}]),
            qos=1).wait_for_publish(timeout=10)
        client.loop_stop()
        client.disconnect()
        wait_until(lambda: scalar(base, "SELECT count(*) FROM iot_readings WHERE device_id = 'IOT-0041' "
                                        "AND time = '2026-12-10T20:00:00Z'") == 1, 60, "the good reading")
    finally:
        totals = listener.stop()
    assert totals["unreadable_messages"] == 1
    assert totals["rejected"] == 1 and totals["reasons"] == {"unknown_device": 1}


def test_nothing_is_acknowledged_that_was_not_stored(base, broker):
    """While the database refuses connections the listener keeps its messages unacknowledged; killed
    then (no chance to clean up), it has acknowledged none of them, so the broker hands them to the
    next listener of the session, which stores them all."""
    import signal

    import sqlalchemy as sa

    from cim.database import engine_for
    from tests.conftest import _with_database

    name = base.rsplit("/", 1)[1]
    admin = sa.create_engine(engine_for(_with_database(base, "postgres")).url, isolation_level="AUTOCOMMIT")
    first = ListenerProcess(base, broker, "cim-test-unstored")
    try:
        first.wait_subscribed()
        before = stored(base)
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d "
                                 "AND pid <> pg_backend_pid()"), {"d": name})
        publish(broker, 400, messages=3)
        try:
            wait_until(lambda: any("database unavailable" in line for line in first.log), 60,
                       "the listener to fail storing")
        except AssertionError:
            print("".join(first.log))
            raise
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=30)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()
        engine_for(base).dispose()  # this test's own pooled connections were terminated too
    assert stored(base) == before
    second = ListenerProcess(base, broker, "cim-test-unstored")
    try:
        wait_until(lambda: stored(base) == before + 30, 60, "the unacknowledged readings stored")
    finally:
        totals = second.stop()
    assert totals["stored"] == 30 and totals["duplicates"] == 0
