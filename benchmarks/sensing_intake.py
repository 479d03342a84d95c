"""Reading intake against a plain COPY of the same rows (issue 13).

Generates readings for the sample city's devices (`cim iot simulate`'s generator: 154 device
quantities, one reading a minute, a rainstorm so that rules fire), then loads the same rows, each
variant into its own fresh copy of one template base (devices loaded, two rules: water-level
levels with hysteresis, and an offline rule):

* **plain COPY** — `COPY iot_readings FROM STDIN` of the CSV, monthly partitions made beforehand:
  the physical limit (no checks, no latest value, no rules);
* **store_batch** — :func:`sensing.intake.store_batch` in this process, batches of ``--batch``
  readings: parsing, row checks, COPY, duplicates, latest value, rules and alerts;
* **HTTP** — `POST /iot/readings` (CSV bodies of ``--batch`` readings) against `cim serve` (uvicorn,
  ``--workers``) on a loopback port, from 1 and from 2 client threads (each its own devices).

Needs a database server: CIM_DATABASE_URL, or the embedded cluster (`cim db up` with CIM_HOME set).
Prints a Markdown section (also written to benchmarks/work/sensing_intake.md).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pandas as pd
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cim.apikeys import create_key  # noqa: E402
from cim.bootstrap import initialise  # noqa: E402
from cim.database import database_url, engine_for  # noqa: E402
from cim.readings import ensure_month_partitions  # noqa: E402
from ingest.run import IngestOptions, ingest_files  # noqa: E402
from sensing.intake import store_batch  # noqa: E402
from sensing.rules import RuleSpec, add_rule  # noqa: E402
from sensing.simulate import Storm, simulate_readings  # noqa: E402

WORK = ROOT / "benchmarks" / "work"
CIM = str(Path(sys.executable).with_name("cim"))
TEMPLATE = "cim_bench_sensing_tpl"


def machine(conn: sa.Connection) -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "?")
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    pg = conn.execute(sa.text("SHOW server_version")).scalar()
    return f"{platform.machine()}, {os.cpu_count()} cores ({model}), {ram:.0f} GiB RAM, PostgreSQL {pg.split()[0]}"


def _admin(server: str) -> sa.Engine:
    return sa.create_engine(engine_for(server).url, isolation_level="AUTOCOMMIT")


def fresh_database(server: str, name: str, template: str | None = None) -> str:
    admin = _admin(server)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    admin.dispose()
    return urlunsplit(urlsplit(server)._replace(path="/" + name))


def build_template(server: str) -> str:
    url = fresh_database(server, TEMPLATE)
    initialise(engine_for(url))
    for entry in json.loads((ROOT / "data_samples" / "manifest.json").read_text(encoding="utf-8")):
        if entry["layer"] in ("districts", "streets", "communities", "grids", "iot-devices"):
            ingest_files(entry["layer"], [ROOT / "data_samples" / entry["path"]],
                         IngestOptions(crs=entry.get("crs"), encoding=entry.get("encoding"), z=entry.get("z"),
                                       layer_name=entry.get("layer_name"),
                                       mapping=entry.get("map") or {}), engine_for(url))
    with engine_for(url).begin() as conn:
        add_rule(conn, RuleSpec(name="积水", device_type="水位计", quantity="water_level", warning=1.2, alarm=1.5,
                                hysteresis=0.2, duration_s=120))
        add_rule(conn, RuleSpec(name="离线", kind="offline", offline_minutes=5))
    engine_for(url).dispose()
    return url


def csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame[["device_id", "time", "quantity", "value"]].to_csv(index=False).encode()


def plain_copy(url: str, frame: pd.DataFrame) -> float:
    body = frame[["device_id", "time", "quantity", "value"]].to_csv(index=False, header=False)
    months = {(t.year, t.month) for t in pd.to_datetime(frame["time"].iloc[[0, -1]], utc=True)}
    ensure_month_partitions(engine_for(url), months)
    raw = engine_for(url).raw_connection()
    try:
        cur = raw.cursor()
        started = time.perf_counter()
        cur.copy_expert("COPY iot_readings (device_id, time, quantity, value) FROM STDIN WITH (FORMAT csv)",
                        io.StringIO(body))
        raw.commit()
        return time.perf_counter() - started
    finally:
        raw.close()


def in_process(url: str, frame: pd.DataFrame, batch: int) -> tuple[float, dict]:
    from sensing.parse import parse_batch

    bodies = [csv_bytes(frame.iloc[i:i + batch]) for i in range(0, len(frame), batch)]
    totals = {"stored": 0, "opened": 0}
    started = time.perf_counter()
    for body in bodies:
        with engine_for(url).begin() as conn:
            report = store_batch(conn, parse_batch(body, "csv"))
        totals["stored"] += report.stored
        totals["opened"] += report.alerts_opened
    return time.perf_counter() - started, totals


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(url: str, workers: int):
    """`cim serve` on a free loopback port against ``url``: yields its base URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items()}
    env["CIM_DATABASE_URL"] = url
    WORK.mkdir(parents=True, exist_ok=True)
    log = (WORK / "sensing_serve.log").open("w")
    server = subprocess.Popen([CIM, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
                              env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"cim serve did not come up; see {WORK / 'sensing_serve.log'}")
            time.sleep(0.3)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def over_http(url: str, frame: pd.DataFrame, batch: int, clients: int, workers: int) -> tuple[float, dict]:
    with engine_for(url).begin() as conn:
        key = create_key(conn, "loader", "bench")[1]
    with running_server(url, workers) as api:
        # as gateways would: each client sends its own devices, in time order (two clients sending one
        # device's readings out of order would make late readings and offline gaps, not a faster intake)
        devices = sorted(frame["device_id"].unique())
        lanes = []
        for i in range(clients):
            mine = frame[frame["device_id"].isin(devices[i::clients])]
            lanes.append([csv_bytes(mine.iloc[j:j + batch]) for j in range(0, len(mine), batch)])
        totals = {"stored": 0, "opened": 0, "errors": 0}
        lock = threading.Lock()

        def drive(lane: list[bytes]) -> None:
            with httpx.Client(timeout=120) as client:
                for body in lane:
                    r = client.post(f"{api}/iot/readings", content=body,
                                    headers={"X-API-Key": key, "Content-Type": "text/csv"})
                    with lock:
                        if r.status_code != 200:
                            totals["errors"] += 1
                        else:
                            totals["stored"] += r.json()["stored"]
                            totals["opened"] += r.json()["alerts"]["opened"]

        threads = [threading.Thread(target=drive, args=(lane,)) for lane in lanes]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - started, totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=48.0, help="simulated hours at one reading a minute")
    parser.add_argument("--batch", type=int, default=10_000, help="readings per batch / request")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers of cim serve")
    args = parser.parse_args()
    server = os.environ.get("CIM_DATABASE_URL") or database_url()
    template = build_template(server)
    with engine_for(template).connect() as conn:
        frame = simulate_readings(conn, datetime(2026, 7, 1, tzinfo=timezone.utc), hours=args.hours, every_min=1,
                                  storm=Storm(peak_after_h=args.hours / 2, hours=3), seed=13)
        where = machine(conn)
    engine_for(template).dispose()
    n = len(frame)
    rows = []
    url = fresh_database(server, "cim_bench_sensing_copy", TEMPLATE)
    seconds = plain_copy(url, frame)
    engine_for(url).dispose()
    rows.append(("plain COPY (physical limit)", seconds, n, "-"))
    url = fresh_database(server, "cim_bench_sensing_inproc", TEMPLATE)
    seconds, totals = in_process(url, frame, args.batch)
    engine_for(url).dispose()
    rows.append((f"store_batch in process, {args.batch:,}/batch", seconds, totals["stored"], totals["opened"]))
    for clients in (1, 2):
        url = fresh_database(server, f"cim_bench_sensing_http{clients}", TEMPLATE)
        seconds, totals = over_http(url, frame, args.batch, clients, args.workers)
        engine_for(url).dispose()
        label = f"POST /iot/readings, {args.batch:,}/request, {clients} client(s), {args.workers} worker(s)"
        rows.append((label + (f", {totals['errors']} errors" if totals["errors"] else ""), seconds,
                     totals["stored"], totals["opened"]))
    copy_rate = n / rows[0][1]
    lines = [f"**Machine:** {where}. **Date:** {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. "
             f"{n:,} readings ({frame['device_id'].nunique()} devices, {args.hours:g} h at 1/min).", "",
             "| variant | s | stored | readings/s | ÷ plain COPY | alerts opened |", "|---|---:|---:|---:|---:|---:|"]
    for label, seconds, stored, opened in rows:
        lines.append(f"| {label} | {seconds:.2f} | {stored:,} | {stored / seconds:,.0f} | "
                     f"{(stored / seconds) / copy_rate:.2f}× | {opened} |")
    text = "\n".join(lines)
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "sensing_intake.md").write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
