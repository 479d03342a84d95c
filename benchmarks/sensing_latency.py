"""From a reading crossing a threshold to its case existing (issue 13: p99 ≤ 1 s), over HTTP and MQTT.

A fresh copy of a template base (sample areas, grids, responsibility and IoT devices; one rule: water
level warning 1.2 / alarm 1.5 m with 0.2 m hysteresis on every 水位计, case class 道路积水). Each trial
sends one water-level reading of 2.0 m (an alarm at once) for the next of the 20 water-level devices and
clocks, on the benchmark's side, the moment it is sent until a separate connection polling every 5 ms
sees the new `iot` case; then a 0.1 m reading clears the alert so the device can alarm again. Variants:

* **HTTP** — `POST /iot/readings` (one JSON reading) against `cim serve --workers 2`;
* **MQTT** — a QoS 1 message on `city/bench/readings` to a local mosquitto, stored by `cim iot listen`
  (which stores a message once no other follows within 20 ms);

each idle, and under load: meanwhile another thread sends the other devices' readings as fast as it can
(HTTP: 10,000-reading CSV batches, each sent when the one before is answered; MQTT: 1,000-reading messages at
10,000 readings/s — an unpaced flood would only queue up at the broker in front of the alarm).

Needs a database server (CIM_DATABASE_URL, or the embedded cluster with CIM_HOME) and mosquitto.
Prints a Markdown section (also benchmarks/work/sensing_latency.md).
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import numpy as np
import orjson
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.scratch import machine  # noqa: E402
from benchmarks.sensing_intake import (CIM, WORK, csv_bytes, free_port, fresh_database,  # noqa: E402
                                       running_server)
from cim.apikeys import create_key  # noqa: E402
from cim.bootstrap import initialise  # noqa: E402
from cim.database import database_url, engine_for  # noqa: E402
from ingest.run import IngestOptions, ingest_files  # noqa: E402
from sensing.rules import RuleSpec, add_rule  # noqa: E402
from sensing.simulate import simulate_readings  # noqa: E402

TEMPLATE = "cim_bench_latency_tpl"
T0 = datetime(2026, 8, 1, tzinfo=timezone.utc)
#: readings/s the MQTT load sends (1,000-reading messages)
MQTT_LOAD_RATE = 10_000


def build_template(server: str) -> str:
    url = fresh_database(server, TEMPLATE)
    initialise(engine_for(url))
    for entry in json.loads((ROOT / "data_samples" / "manifest.json").read_text(encoding="utf-8")):
        if entry["layer"] in ("districts", "streets", "communities", "grids", "responsibility", "iot-devices"):
            ingest_files(entry["layer"], [ROOT / "data_samples" / entry["path"]],
                         IngestOptions(crs=entry.get("crs"), encoding=entry.get("encoding"), z=entry.get("z"),
                                       x=entry.get("x"), y=entry.get("y"), wkt=entry.get("wkt"),
                                       layer_name=entry.get("layer_name"), mapping=entry.get("map") or {}),
                         engine_for(url))
    with engine_for(url).begin() as conn:
        add_rule(conn, RuleSpec(name="积水", device_type="水位计", quantity="water_level", warning=1.2, alarm=1.5,
                                hysteresis=0.2, case_class="道路积水"))
    engine_for(url).dispose()
    return url


def cases_seen(url: str) -> tuple:
    """A function giving the number of iot cases, on a connection of its own, and that connection."""
    conn = engine_for(url).connect()
    return lambda: conn.execute(sa.text("SELECT count(*) FROM cases WHERE channel = 'iot'")).scalar(), conn


def trials(url: str, send, n: int, water: list[str]) -> list[float]:  # noqa: ANN001
    """Seconds from sending each alarm reading to its case existing."""
    count, conn = cases_seen(url)
    seen = count()
    latencies = []
    for i in range(n):
        device = water[i % len(water)]
        at = T0 + timedelta(minutes=2 * i)
        started = time.perf_counter()
        send([{"device_id": device, "quantity": "water_level", "value": 2.0, "time": at.isoformat()}])
        deadline = started + 60
        while count() <= seen:
            if time.perf_counter() > deadline:
                raise SystemExit(f"no case 60 s after trial {i}")
            time.sleep(0.005)
        latencies.append(time.perf_counter() - started)
        seen += 1
        send([{"device_id": device, "quantity": "water_level", "value": 0.1,
               "time": (at + timedelta(minutes=1)).isoformat()}])
    conn.close()
    return latencies


@contextmanager
def background(load, stop: threading.Event):  # noqa: ANN001
    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=120)


def load_frames(url: str, water: list[str]):  # noqa: ANN201
    """Day after day of the other devices' readings at one a minute, from a month after the trials' times."""
    for day in range(365):
        with engine_for(url).connect() as conn:
            frame = simulate_readings(conn, T0 + timedelta(days=31 + day), hours=24, every_min=1, seed=day)
        yield frame[~frame["device_id"].isin(water)].reset_index(drop=True)


def http_variant(url: str, n: int, water: list[str], loaded: bool) -> tuple[list[float], int]:
    with engine_for(url).begin() as conn:
        key = create_key(conn, "loader", "bench")[1]
    headers = {"X-API-Key": key}
    sent = [0]
    with running_server(url, 2) as api, httpx.Client(timeout=60) as client:
        def send(readings: list[dict]) -> None:
            r = client.post(f"{api}/iot/readings", content=orjson.dumps(readings),
                            headers={**headers, "Content-Type": "application/json"})
            r.raise_for_status()

        stop = threading.Event()

        def load() -> None:
            with httpx.Client(timeout=120) as other:
                for frame in load_frames(url, water):
                    for j in range(0, len(frame), 10_000):
                        if stop.is_set():
                            return
                        other.post(f"{api}/iot/readings", content=csv_bytes(frame.iloc[j:j + 10_000]),
                                   headers={**headers, "Content-Type": "text/csv"}).raise_for_status()
                        sent[0] += min(10_000, len(frame) - j)

        if loaded:
            with background(load, stop):
                time.sleep(3)  # the load under way
                return trials(url, send, n, water), sent[0]
        return trials(url, send, n, water), 0


class Mosquitto:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        config = directory / "mosquitto.conf"
        # mosquitto drops QoS 1 messages past max_queued_messages (default 1000) per session, and sends a
        # session at most max_inflight_messages (default 20) unacknowledged: the listener acknowledges a
        # batch once stored, so under load both must be larger than a batch
        config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\nuser {getpass.getuser()}\n"
                          "max_queued_messages 0\nmax_inflight_messages 1000\n", encoding="utf-8")
        broker = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.process = subprocess.Popen([broker, "-c", str(config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=15)


def mqtt_variant(url: str, n: int, water: list[str], loaded: bool) -> tuple[list[float], int]:
    import paho.mqtt.client as mqtt

    work = Path(tempfile.mkdtemp(prefix="cim-latency-"))
    broker = Mosquitto(work)
    env = {**os.environ, "CIM_DATABASE_URL": url}
    listener = subprocess.Popen([CIM, "iot", "listen", "--mqtt", f"mqtt://127.0.0.1:{broker.port}", "--topic",
                                 "city/+/readings", "--client-id", "cim-bench"], env=env, cwd=ROOT,
                                stdout=(WORK / "sensing_listen.out").open("w"),
                                stderr=(WORK / "sensing_listen.log").open("w"))
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    sent = [0]
    try:
        deadline = time.monotonic() + 60
        while "listening on" not in (WORK / "sensing_listen.log").read_text():
            if time.monotonic() > deadline or listener.poll() is not None:
                raise SystemExit(f"cim iot listen did not come up; see {WORK / 'sensing_listen.log'}")
            time.sleep(0.2)

        def send(readings: list[dict]) -> None:
            client.publish("city/bench/readings", orjson.dumps(readings), qos=1).wait_for_publish(timeout=30)

        stop = threading.Event()

        def load() -> None:  # a gateway of its own
            gateway = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-load")
            gateway.connect("127.0.0.1", broker.port)
            gateway.loop_start()
            # paced at RATE readings/s: a broker queues whatever a listener cannot keep up with, so an
            # unpaced flood only measures how long the queue in front of the alarm has grown
            next_at = time.monotonic()
            try:
                for frame in load_frames(url, water):
                    for j in range(0, len(frame), 1000):
                        if stop.is_set():
                            return
                        next_at += 1000 / MQTT_LOAD_RATE
                        time.sleep(max(0.0, next_at - time.monotonic()))
                        gateway.publish("city/load/readings", csv_bytes(frame.iloc[j:j + 1000]),
                                        qos=1).wait_for_publish(30)
                        sent[0] += min(1000, len(frame) - j)
            finally:
                gateway.loop_stop()
                gateway.disconnect()

        if loaded:
            with background(load, stop):
                time.sleep(3)
                return trials(url, send, n, water), sent[0]
        return trials(url, send, n, water), 0
    finally:
        client.loop_stop()
        client.disconnect()
        listener.terminate()
        listener.wait(timeout=30)
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--paths", nargs="+", default=["http", "mqtt"], choices=["http", "mqtt"])
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    server = os.environ.get("CIM_DATABASE_URL") or database_url()
    template = build_template(server)
    with engine_for(template).connect() as conn:
        water = list(conn.execute(sa.text("SELECT source_id FROM iot_devices WHERE device_type = '水位计' "
                                          "AND valid_to IS NULL ORDER BY source_id")).scalars())
        where = machine(conn)
    engine_for(template).dispose()
    rows = []
    variants = {"http": ("HTTP `POST /iot/readings`", http_variant), "mqtt": ("MQTT → `cim iot listen`", mqtt_variant)}
    for path, variant in (variants[name] for name in args.paths):
        for loaded in (False, True):
            url = fresh_database(server, "cim_bench_latency", TEMPLATE)
            latencies, sent = variant(url, args.trials, water, loaded)
            engine_for(url).dispose()
            ms = np.array(latencies) * 1000
            rows.append((path, f"other devices' readings sent meanwhile: {sent:,}" if loaded else "idle",
                         len(ms), *np.percentile(ms, [50, 90, 99]), ms.max()))
            print(rows[-1], flush=True)
    lines = [f"**Machine:** {where}. **Date:** {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.", "",
             "| path | load | trials | p50 ms | p90 ms | p99 ms | max ms | p99 ≤ 1 s |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for path, load, n, p50, p90, p99, top in rows:
        lines.append(f"| {path} | {load} | {n} | {p50:.0f} | {p90:.0f} | {p99:.0f} | {top:.0f} | "
                     f"{'met' if p99 <= 1000 else '**not met**'} |")
    text = "\n".join(lines)
    (WORK / "sensing_latency.md").write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
