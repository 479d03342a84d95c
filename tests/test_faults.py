"""Issue 16 (items 5, 8, 9 and "Done when"): faults under a load and hostile input never cost data, never
show a traceback, and never stall readers.

The loader is paused at an exact phase with the test-only hook ``CIM_FAULT_PAUSE_AT`` (see
``ingest.faults``): the real ``cim ingest`` prints a marker and waits on stdin with its transaction
open, and the test then kills it, stops the database, or reads the base — no sleeps as synchronisation.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.pool import NullPool

from cim.apikeys import create_key
from cim.bootstrap import initialise
from cim.config import override_settings
from cim.database import LockedOut, engine_for, reader_engine, sqlalchemy_url
from cim.errors import UnavailableError
from ingest.faults import PHASES
from ingest.read import ReadError
from ingest.run import IngestOptions, ingest_files
from tests.conftest import CIM, PROJECT, create_database, run_cim

SAMPLES = PROJECT / "data_samples"
LON, LAT = 121.437, 31.190  # inside the sample district (徐汇)


def _engine(url: str) -> sa.Engine:
    """A connection per use: the server behind ``url`` may be stopped and started by the test."""
    return sa.create_engine(sqlalchemy_url(url), poolclass=NullPool)


def scalar(url: str, sql: str, **params):
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()
    finally:
        engine.dispose()


def snapshot(url: str, table: str = "parts") -> dict:
    """Everything a load could change: the rows with their versions, the layer's version, the runs."""
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            return {
                "rows": conn.execute(sa.text(
                    f"SELECT fid, feature_id, source_id, content_hash, valid_from, valid_to, ingest_run_id, "
                    f"ST_AsEWKB(geom) FROM {table} ORDER BY fid")).all(),
                "layer_version": conn.execute(sa.text(
                    "SELECT version FROM layers WHERE table_name = :t"), {"t": table}).scalar_one(),
                "runs": conn.execute(sa.text("SELECT count(*), max(id) FROM ingest_runs")).one(),
                "indexes": sorted(conn.execute(sa.text(
                    "SELECT indexdef FROM pg_indexes WHERE tablename = :t"), {"t": table}).scalars()),
            }
    finally:
        engine.dispose()


_CODES: dict[str, str] = {}


def object_code(source_id: str) -> str:
    """One valid, distinct 16-digit code per source id, the same in every delivery of this session."""
    return _CODES.setdefault(source_id, f"3101040101{900000 + len(_CODES):06d}")


def parts_csv(path: Path, ids: list[str], status: str = "完好", bad_row: bool = False) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["source_id", "object_code", "subclass_code", "status", "x", "y"])
        for i, source_id in enumerate(ids):
            w.writerow([source_id, object_code(source_id), "0101", status,
                        LON + 0.0001 * (i % 50), LAT + 0.0001 * (i // 50)])
        if bad_row:
            w.writerow(["BAD-1", "3101040101999999", "0101", status, "inf", LAT])
    return path


def base(url: str, tmp_path: Path) -> None:
    """Districts, grids, the sample IoT devices and 60 parts of our own."""
    run_cim("init", db_url=url)
    options = {"crs": "EPSG:4326"}
    ingest_files("districts", [SAMPLES / "xuhui" / "district.geojson"], IngestOptions(**options), engine_for(url))
    ingest_files("grids", [SAMPLES / "xuhui" / "admin.gpkg"], IngestOptions(layer_name="grids"), engine_for(url))
    ingest_files("iot-devices", [SAMPLES / "xuhui" / "iot_devices.geojson"], IngestOptions(), engine_for(url))
    path = parts_csv(tmp_path / "base.csv", [f"FLT-{i}" for i in range(60)])
    ingest_files("parts", [path], IngestOptions(x="x", y="y", **options), engine_for(url))


@pytest.fixture(scope="module")
def city(server_url, tmp_path_factory) -> str:
    url = create_database(server_url)
    base(url, tmp_path_factory.mktemp("faults-base"))
    return url


class PausedLoad:
    """A real ``cim ingest`` subprocess stopped by the hook at ``phase``, its transaction open."""

    def __init__(self, url: str, phase: str, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "CIM_DATABASE_URL"}
        env.update(CIM_DATABASE_URL=url, CIM_FAULT_PAUSE_AT=phase)
        self.proc = subprocess.Popen([CIM, "ingest", *args], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=PROJECT)
        seen = []
        for line in self.proc.stderr:  # blocks until the marker, or ends when the loader exits without it
            if line.strip() == f"CIM_FAULT_PAUSED {phase}":
                break
            seen.append(line)
        else:
            self.proc.wait()
            raise AssertionError(f"the loader never reached {phase}: {''.join(seen)}")
        self.phase = phase

    def resume(self) -> tuple[int, str, str]:
        """Let it go on; its exit code, stdout and the rest of its stderr (line breaks the console made
        to fit its width joined again)."""
        out, err = self.proc.communicate("\n", timeout=300)
        return self.proc.returncode, out, " ".join(err.split())

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate()


def loader_backend(url: str, table: str = "parts") -> int:
    """The backend of the load in progress: the one holding its table's load lock."""
    pid = scalar(url, "SELECT l.pid FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = :t "
                      "AND l.mode = 'ShareRowExclusiveLock' AND l.granted", t=table)
    assert pid, "no load holds its lock: the transaction is not open"
    return pid


def wait_until_gone(url: str, pid: int) -> None:
    """The server notices a killed client when it next reads from it; wait for that (bounded)."""
    deadline = time.monotonic() + 60
    while scalar(url, "SELECT count(*) FROM pg_stat_activity WHERE pid = :p", p=pid):
        assert time.monotonic() < deadline, f"backend {pid} of the killed loader is still there"
        time.sleep(0.05)


def published_rejects(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.rejects.csv"))


# --- fault injection: kill -9 at every phase ----------------------------------------------------------

@pytest.mark.parametrize("phase", PHASES)
def test_a_loader_killed_at_any_phase_leaves_the_base_exactly_as_it_was(city, tmp_path, phase):
    """SIGKILL of a real ``cim ingest`` at reading, COPY, index build, merge and commit: same rows, same
    versions, same layer version, no run, indexes intact, no rejects file of the load that never
    happened (only its ``.partial``); while paused, the base reads as before; the next load runs."""
    before = snapshot(city)
    changed = [f"FLT-{i}" for i in range(0, 60, 2)]  # half the parts change, and new ones arrive
    delivery = parts_csv(tmp_path / "delivery.csv", changed + [f"NEW-{phase}-{i}" for i in range(40)],
                         status="破损", bad_row=True)
    rejects = tmp_path / "rejects"
    args = ("parts", str(delivery), "--x", "x", "--y", "y", "--crs", "EPSG:4326", "--rejects-dir", str(rejects))
    load = PausedLoad(city, phase, *args)
    pid = loader_backend(city)
    assert snapshot(city) == before  # readers see the last committed version, unblocked
    load.kill()
    wait_until_gone(city, pid)
    assert snapshot(city) == before
    assert published_rejects(rejects) == []  # a .partial may stay: it is marked as not committed
    # the next load runs, commits and publishes its rejects
    report = json.loads(run_cim("ingest", *args, "--json", db_url=city).stdout)
    assert (report["inserted"], report["updated"], report["rejected"]) == (40, 30, 1)
    assert [Path(p).name for p in (f["rejects_file"] for f in report["files"])] == \
        [p.name for p in published_rejects(rejects)]
    after = snapshot(city)
    assert after["layer_version"] == before["layer_version"] + 1 and after["indexes"] == before["indexes"]
    # put the changed parts back for the next phase
    run_cim("ingest", "parts", str(parts_csv(tmp_path / "back.csv", changed)), "--x", "x", "--y", "y",
            "--crs", "EPSG:4326", "--rejects-dir", str(rejects), db_url=city)


def test_a_killed_backend_is_one_clear_error_and_nothing_is_loaded(city, tmp_path):
    """The load's connection terminated mid-load (pg_terminate_backend): one error line naming the cause,
    exit 1, no traceback, no rejects file, the base as it was."""
    before = snapshot(city)
    delivery = parts_csv(tmp_path / "d.csv", [f"TERM-{i}" for i in range(20)], bad_row=True)
    rejects = tmp_path / "rejects"
    load = PausedLoad(city, "copy", "parts", str(delivery), "--x", "x", "--y", "y", "--crs", "EPSG:4326",
                      "--rejects-dir", str(rejects))
    pid = loader_backend(city)
    assert scalar(city, "SELECT pg_terminate_backend(:p)", p=pid)
    wait_until_gone(city, pid)
    code, _, err = load.resume()
    assert code == 1, err
    assert "Traceback" not in err and "connection already closed" not in err
    assert "load of parts stopped: the connection to the database was lost" in err, err
    assert "nothing of this load was committed" in err
    assert snapshot(city) == before
    assert not rejects.exists() or list(rejects.iterdir()) == []  # removed, not even a .partial


def test_a_database_that_cannot_be_reached_is_one_clear_error(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    delivery = parts_csv(tmp_path / "d.csv", ["UNREACHABLE-1"])
    proc = run_cim("ingest", "parts", str(delivery), "--x", "x", "--y", "y", "--crs", "EPSG:4326",
                   db_url=f"postgresql://cim:secret@127.0.0.1:{port}/cim", check=False)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert "load of parts stopped: the database could not be reached" in err and "cim db up" in err


# --- the database stopped mid-load; `cim db up` right after `cim db down` ------------------------------

@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory):
    """A cluster of this module's own, which the tests stop and start (never the session's)."""
    from cim.cluster import Cluster

    home = tmp_path_factory.mktemp("faults-cluster")
    cluster = Cluster(home)
    url = cluster.up()
    base(url, tmp_path_factory.mktemp("faults-own-base"))
    yield cluster
    cluster.down()
    shutil.rmtree(home, ignore_errors=True)


def test_the_database_stopped_mid_load_is_one_clear_error_and_nothing_is_lost(own_cluster, tmp_path):
    url = own_cluster.url()
    before = snapshot(url)
    delivery = parts_csv(tmp_path / "d.csv", [f"FLT-{i}" for i in range(30)] + [f"DOWN-{i}" for i in range(30)],
                         status="破损", bad_row=True)
    rejects = tmp_path / "rejects"
    args = ("parts", str(delivery), "--x", "x", "--y", "y", "--crs", "EPSG:4326", "--rejects-dir", str(rejects))
    load = PausedLoad(url, "merge", *args)
    loader_backend(url)
    own_cluster.down()  # fast shutdown: the load's session is terminated and its transaction rolled back
    code, _, err = load.resume()
    assert code == 1, err
    assert "Traceback" not in err and "connection already closed" not in err, err
    assert "load of parts stopped" in err and "connection to the database was lost" in err, err
    assert not rejects.exists() or list(rejects.iterdir()) == []
    own_cluster.up()  # right after the stop (the loader's closed connection is still in TIME_WAIT)
    assert own_cluster.url() == url
    assert snapshot(url) == before
    report = json.loads(run_cim("ingest", *args, "--json", db_url=url).stdout)
    assert (report["inserted"], report["updated"], report["rejected"]) == (30, 30, 1)


def test_db_up_right_after_db_down(own_cluster):
    """`cim db up` right after `cim db down` with clients connected: the port's TIME_WAIT sockets do not
    stop it; and when another program really listens on the recorded port, it moves to a free one."""
    url = own_cluster.url()
    clients = [_engine(url).connect() for _ in range(3)]
    assert all(c.execute(sa.text("SELECT 1")).scalar() == 1 for c in clients)
    own_cluster.down()
    for c in clients:
        c.invalidate()
    own_cluster.up()
    assert own_cluster.url() == url and scalar(url, "SELECT 1") == 1
    own_cluster.down()
    port = json.loads(own_cluster.statefile.read_text())["port"]
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the stopped server's TIME_WAIT
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        moved = own_cluster.up()
    finally:
        squatter.close()
    assert moved != url and json.loads(own_cluster.statefile.read_text())["port"] != port
    assert scalar(moved, "SELECT count(*) FROM parts WHERE valid_to IS NULL") >= 60


def _first_load_wal(server: str, tmp_path: Path, n: int = 40_000) -> tuple[int, int]:
    """Bytes of WAL a staged first load of ``n`` parts writes (a fresh base holding the sample district), and
    the bytes of its partition's heap."""
    url = create_database(server)
    initialise(engine_for(url))
    ingest_files("districts", [SAMPLES / "xuhui" / "district.geojson"], IngestOptions(crs="EPSG:4326"),
                 engine_for(url))
    path = tmp_path / f"wal-{uuid.uuid4().hex[:6]}.csv"
    pd.DataFrame({"source_id": [f"WAL-{i}" for i in range(n)],
                  "object_code": [f"3101040101{i:06d}" for i in range(n)],
                  "x": LON + np.linspace(0, 0.01, n), "y": LAT + np.linspace(0, 0.01, n)}).to_csv(path, index=False)
    start = scalar(url, "SELECT pg_current_wal_lsn()::text")
    report = ingest_files("parts", [path], IngestOptions(x="x", y="y", crs="EPSG:4326"), engine_for(url))
    assert report.inserted == n
    assert scalar(url, "SELECT count(*) FROM parts_310104") == n  # staged into the district's partition
    return (int(scalar(url, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), :s)", s=start)),
            int(scalar(url, "SELECT pg_relation_size('parts_310104')")))


def test_the_clusters_wal_level_follows_the_setting_and_an_older_cluster_takes_it(own_cluster, tmp_path):
    """CIM_DB_WAL_LEVEL is written before each start: a cluster made before the setting (no line:
    PostgreSQL's replica) takes it at its next start and keeps its rows; with minimal a staged first load
    writes far less WAL: none for its rows (its tables are created in the COPY's transaction; at commit a file
    over wal_skip_threshold, 2 MB, is synced instead, a smaller one — here the B-trees — logged whole)."""
    url = own_cluster.url()
    assert scalar(url, "SHOW wal_level") == "minimal"  # the default
    before = snapshot(url)
    own_cluster.down()
    conf = own_cluster.datadir / "postgresql.auto.conf"
    conf.write_text("".join(line for line in conf.read_text().splitlines(keepends=True)
                            if not line.startswith(("wal_level", "max_wal_senders"))))
    with override_settings(db_wal_level="replica"):
        url = own_cluster.up()
    assert scalar(url, "SHOW wal_level") == "replica" and snapshot(url) == before
    replica, heap = _first_load_wal(url, tmp_path)
    own_cluster.down()
    url = own_cluster.up()
    assert scalar(url, "SHOW wal_level") == "minimal" and scalar(url, "SHOW max_wal_senders") == "0"
    assert snapshot(url) == before
    minimal, _ = _first_load_wal(url, tmp_path)
    # measured (40,000 parts): replica 15.9 MB, minimal 8.7 MB (most of it the small indexes, logged whole), heap
    # 9.6 MB — the rows' WAL under replica is ~3/4 of their heap (no page overhead or free space in a record).
    # Before 0013_nearby_2d replica also logged the N-D GiST insert by insert (25.7 vs 10.8 MB)
    assert replica - minimal > heap / 2 and minimal < replica * 0.75, (minimal, replica, heap)


# --- readers during a load --------------------------------------------------------------------------

def test_readers_of_a_layer_being_loaded_answer_from_the_last_version(city, tmp_path, monkeypatch):
    """A 60,000-device load into the 100-device layer (large enough that the loader used to drop the
    indexes, locking readers out) paused in its merge: items of that layer answer at once, from the
    previous version, and a grid lookup answers; after the commit the new devices are there."""
    from api.app import create_app

    n = 60_000
    path = tmp_path / "devices.csv"
    pd.DataFrame({"source_id": [f"DEV-{i}" for i in range(n)], "device_type": "井盖传感器",
                  "x": LON + np.linspace(0, 0.01, n), "y": LAT + np.linspace(0, 0.01, n)}).to_csv(path, index=False)
    before = snapshot(city, "iot_devices")
    client = TestClient(create_app(engine_for(city)))
    load = PausedLoad(city, "merge", "iot-devices", str(path), "--x", "x", "--y", "y", "--crs", "EPSG:4326")
    try:
        loader_backend(city, "iot_devices")
        assert scalar(city, "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                            "WHERE c.relname = 'iot_devices' AND l.mode = 'AccessExclusiveLock'") == 0
        items = client.get("/collections/iot-devices/items", params={"limit": 1000})
        assert items.status_code == 200, items.text
        ids = {f["properties"]["source_id"] for f in items.json()["features"]}
        assert len(ids) == 100 and not any(i.startswith("DEV-") for i in ids)
        lookup = client.get("/grid/lookup", params={"lon": LON, "lat": LAT})
        assert lookup.status_code == 200, lookup.text
        assert snapshot(city, "iot_devices") == before
    finally:
        code, _, err = load.resume()
    assert code == 0, err
    assert scalar(city, "SELECT count(*) FROM iot_devices WHERE valid_to IS NULL") == 100 + n
    assert snapshot(city, "iot_devices")["indexes"] == before["indexes"]


def test_readers_of_a_layer_getting_its_first_load_are_not_locked_out(server_url, tmp_path):
    """A first load (straight into the empty table) of 60,000 parts, paused after its first COPY: no lock
    keeps readers out — items answer at once with the layer as it was (empty)."""
    from api.app import create_app

    url = create_database(server_url)
    run_cim("init", db_url=url)
    n = 60_000
    path = tmp_path / "parts.csv"
    pd.DataFrame({"source_id": [f"P-{i}" for i in range(n)], "object_code": [f"3101040101{i:06d}" for i in range(n)],
                  "subclass_code": "0101", "x": LON + np.linspace(0, 0.01, n), "y": LAT}).to_csv(path, index=False)
    client = TestClient(create_app(engine_for(url)))
    load = PausedLoad(url, "copy", "parts", str(path), "--x", "x", "--y", "y", "--crs", "EPSG:4326")
    try:
        loader_backend(url)
        assert scalar(url, "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                           "WHERE c.relname = 'parts' AND l.mode = 'AccessExclusiveLock'") == 0
        items = client.get("/collections/parts/items")
        assert items.status_code == 200 and items.json()["features"] == [], items.text
    finally:
        code, _, err = load.resume()
    assert code == 0, err
    assert scalar(url, "SELECT count(*) FROM parts") == n


def test_readers_of_readings_are_not_locked_out_by_a_load_into_a_new_month(city, tmp_path):
    """A readings load that opens a new month's partition, paused before its commit: the API's reads of
    readings answer (the partition was made in a short transaction of its own, not in the load's)."""
    path = tmp_path / "readings.csv"
    pd.DataFrame({"device_id": "IOT-0001", "quantity": "tilt", "value": np.arange(10.0),
                  "time": pd.date_range("2031-03-01", periods=10, freq="h", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")}
                 ).to_csv(path, index=False)
    readers = reader_engine(engine_for(city))
    with readers.connect() as conn:
        before = conn.execute(sa.text("SELECT count(*) FROM iot_readings WHERE device_id = 'IOT-0001'")).scalar()
    load = PausedLoad(city, "commit", "iot-readings", str(path))
    try:
        assert scalar(city, "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                            "WHERE c.relname LIKE 'iot_readings%' AND l.mode = 'AccessExclusiveLock'") == 0
        with readers.connect() as conn:  # would raise LockedOut if the load held the table
            assert conn.execute(sa.text(
                "SELECT count(*) FROM iot_readings WHERE device_id = 'IOT-0001'")).scalar() == before
    finally:
        code, _, err = load.resume()
    assert code == 0, err
    assert scalar(city, "SELECT count(*) FROM iot_readings WHERE device_id = 'IOT-0001'") == before + 10


def test_a_reader_locked_out_is_told_to_retry_instead_of_holding_a_connection(city, monkeypatch):
    """Whatever else locks a table (a first load, a migration, an operator), an API read waits at most
    the reader lock timeout and then fails as 'unavailable' (503), handing its connection back."""
    import cim.database

    monkeypatch.setenv("CIM_DB_READER_LOCK_TIMEOUT_MS", "300")  # a pool of its own, quicker to time out
    holder = _engine(city).connect()
    try:
        holder.execute(sa.text("LOCK TABLE parts IN ACCESS EXCLUSIVE MODE"))
        readers = reader_engine(engine_for(city))
        for _ in range(readers.pool.size() + 1):  # more than the pool holds: none is kept by a blocked read
            with pytest.raises(LockedOut) as caught, readers.connect() as conn:
                conn.execute(sa.text("SELECT count(*) FROM parts"))
            assert isinstance(caught.value, UnavailableError) and caught.value.status == 503
        with readers.connect() as conn:  # other tables answer meanwhile
            assert conn.execute(sa.text("SELECT count(*) FROM grids")).scalar() > 0
    finally:
        holder.rollback()
        holder.close()
    with reader_engine(engine_for(city)).connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM parts")).scalar() > 0


# --- bad input: one clear line or a rejects row, never a traceback ---------------------------------

def test_non_finite_coordinates_are_rejected_rows_naming_the_field(city, tmp_path):
    path = tmp_path / "inf.csv"
    path.write_text("source_id,object_code,subclass_code,x,y,z\n"
                    f"INF-ok,3101040101888001,0101,{LON},{LAT},0\n"
                    f"INF-x,3101040101888002,0101,inf,{LAT},0\n"
                    f"INF-y,3101040101888003,0101,{LON},-Infinity,0\n"
                    f"INF-big,3101040101888004,0101,1e999,{LAT},0\n"
                    f"INF-z,3101040101888005,0101,{LON},{LAT},inf\n"
                    f"INF-nan,3101040101888006,0101,NaN,{LAT},0\n", encoding="utf-8")
    report = ingest_files("parts", [path], IngestOptions(x="x", y="y", z="z", crs="EPSG:4326",
                                                         rejects_dir=tmp_path), engine_for(city))
    assert (report.inserted, report.rejected) == (1, 5)
    with open(report.files[0].rejects_file, encoding="utf-8") as fh:
        reasons = {int(r["row"]): r["reason"] for r in csv.DictReader(fh)}
    assert "field 'x': 'inf' is not a finite number" in reasons[2]
    assert "field 'y': '-Infinity' is not a finite number" in reasons[3]
    assert "field 'x': '1e999'" in reasons[4] and "field 'z': 'inf'" in reasons[5]
    assert "field 'x': 'NaN' is not a number" in reasons[6]
    wkt = tmp_path / "inf_wkt.csv"
    wkt.write_text("source_id,object_code,subclass_code,wkt\n"
                   "INFW-1,3101040101888011,0101,POINT (inf 31.19)\n"
                   "INFW-2,3101040101888012,0101,POINT Z (121.44 31.19 nan)\n", encoding="utf-8")
    report = ingest_files("parts", [wkt], IngestOptions(wkt="wkt", crs="EPSG:4326", rejects_dir=tmp_path),
                          engine_for(city))
    with open(report.files[0].rejects_file, encoding="utf-8") as fh:
        reasons = [r["reason"] for r in csv.DictReader(fh)]
    assert reasons == ["geometry has a non-finite coordinate (inf or NaN)"] * 2


def test_non_finite_polygon_upload_is_a_rejected_row_not_a_500(city, tmp_path):
    """The API's upload goes through the same loader: a polygon with an inf vertex (GEOS's make_valid used to
    raise on it) is one rejected row in a 200 answer."""
    from api.app import create_app

    with engine_for(city).begin() as conn:
        key = create_key(conn, "loader", "faults test")[1]
    body = ("source_id,height,wkt\nB-ok,20,\"POLYGON ((121.44 31.19, 121.441 31.19, 121.441 31.191, 121.44 31.19))\"\n"
            "B-inf,20,\"POLYGON ((121.44 31.19, inf 31.19, 121.441 31.191, 121.44 31.19))\"\n")
    r = TestClient(create_app(engine_for(city))).post(
        "/ingest/buildings", headers={"X-API-Key": key}, files=[("files", ("b.csv", body.encode()))],
        data={"wkt": "wkt", "crs": "EPSG:4326"})
    assert r.status_code == 200, r.text
    rejects = Path(r.json()["files"][0]["rejects_file"]).read_text(encoding="utf-8")
    assert (r.json()["inserted"], r.json()["rejected"]) == (1, 1), rejects
    assert "non-finite coordinate" in rejects
    # and one inf in a CSV of parts, as found
    body = f"source_id,object_code,subclass_code,x,y\nAPI-inf,3101040101888021,0101,inf,{LAT}\n"
    r = TestClient(create_app(engine_for(city))).post(
        "/ingest/parts", headers={"X-API-Key": key}, files=[("files", ("p.csv", body.encode()))],
        data={"x": "x", "y": "y", "crs": "EPSG:4326"})
    assert r.status_code == 200 and r.json()["rejected"] == 1, r.text


GBK_MAPPING = {"subclass_code": "subclass_c", "object_code": "obj_code"}
GBK_MAP = [arg for field, column in GBK_MAPPING.items() for arg in ("--map", f"{field}={column}")]


def _gbk_shapefile(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    frame = gpd.GeoDataFrame({"source_id": ["GBK-1", "GBK-2"], "obj_code": ["3101040101777001", "3101040101777002"],
                              "subclass_c": ["0101", "0101"], "name": ["徐汇区田林路井盖", "上海中心大厦旁井盖"]},
                             geometry=gpd.points_from_xy([LON, LON + 0.001], [LAT, LAT]), crs="EPSG:4326")
    frame.to_file(directory / "gbk.shp", encoding="GBK")
    (directory / "gbk.cpg").unlink()  # as surveyors deliver them: GBK text, nothing saying so
    return directory / "gbk.shp"


def test_gbk_shapefile_without_cpg_is_read_as_gbk(city, tmp_path):
    shp = _gbk_shapefile(tmp_path / "plain")
    proc = run_cim("ingest", "parts", str(shp), *GBK_MAP, "--json", db_url=city)
    report = json.loads(proc.stdout)
    assert (report["inserted"], report["rejected"]) == (2, 0), report
    assert any("GBK" in note for note in report["files"][0]["notes"])
    assert report["files"][0]["encoding"] == "GBK"
    assert scalar(city, "SELECT name FROM parts WHERE source_id = 'GBK-2' AND valid_to IS NULL") == "上海中心大厦旁井盖"
    # zipped the same way
    archive = tmp_path / "gbk.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for part in shp.parent.iterdir():
            z.write(part, part.name)
    report = ingest_files("parts", [archive], IngestOptions(mapping=GBK_MAPPING), engine_for(city))
    assert report.files[0].encoding == "GBK" and report.unchanged == 2


def test_undecodable_shapefile_text_is_one_clear_error(city, tmp_path):
    shp = _gbk_shapefile(tmp_path / "broken")
    dbf = shp.with_suffix(".dbf")
    raw = bytearray(dbf.read_bytes())
    at = raw.index("田".encode("gbk"))
    raw[at:at + 2] = b"\xff\xfe"  # neither UTF-8 nor GBK
    dbf.write_bytes(bytes(raw))
    with pytest.raises(ReadError) as caught:
        ingest_files("parts", [shp], IngestOptions(mapping=GBK_MAPPING), engine_for(city))
    assert str(shp) in str(caught.value) and "--encoding gbk" in str(caught.value)
    proc = run_cim("ingest", "parts", str(shp), *GBK_MAP, db_url=city, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "--encoding" in proc.stderr


def test_rejects_of_a_load_that_failed_are_removed(city, tmp_path):
    """A load refused as a whole after some rows were rejected leaves no rejects file behind; one refused
    under --strict keeps its rejects (they are the reason) and a dry run keeps them too."""
    good_then_foreign = tmp_path / "mixed.csv"
    # row 2 is rejected; the last row lies in Beijing, so the extent check refuses the whole batch
    parts_csv(good_then_foreign, ["REJ-1"], bad_row=True)
    with open(good_then_foreign, "a", encoding="utf-8") as f:
        f.writelines(f"REJ-far-{i},31010401019990{i:02d},0101,完好,116.4,39.9\n" for i in range(10))
    with pytest.raises(Exception):
        ingest_files("parts", [good_then_foreign], IngestOptions(x="x", y="y", crs="EPSG:4326", batch_rows=1,
                                                                 rejects_dir=tmp_path / "a"), engine_for(city))
    assert not (tmp_path / "a").exists() or list((tmp_path / "a").iterdir()) == []
    strict = parts_csv(tmp_path / "strict.csv", ["REJ-2"], bad_row=True)
    with pytest.raises(Exception) as caught:
        ingest_files("parts", [strict], IngestOptions(x="x", y="y", crs="EPSG:4326", strict=True,
                                                      rejects_dir=tmp_path / "b"), engine_for(city))
    kept = published_rejects(tmp_path / "b")
    assert len(kept) == 1 and str(kept[0]) in str(caught.value)
    dry = ingest_files("parts", [strict], IngestOptions(x="x", y="y", crs="EPSG:4326", dry_run=True,
                                                        rejects_dir=tmp_path / "c"), engine_for(city))
    assert [str(p) for p in published_rejects(tmp_path / "c")] == [dry.files[0].rejects_file]


# --- the database's disk fills up during a load (issue 15, "Bad input") ------------------------------

@pytest.fixture
def tiny_temp_space(city):
    """The load's temporary tables (its staging) on a 2 MB filesystem of their own, so that a real load
    fills it: a tmpfs mounted for the test, made a tablespace of the server and the database's
    ``temp_tablespaces``. Needs root and the right to mount (a CI machine has both)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    # not under pytest's tmp_path: its folders are private to root, and the server runs as its own user
    mount = Path(tempfile.mkdtemp(prefix="cim-tiny-disk-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        mount.rmdir()
        pytest.skip(f"this machine does not let tests mount a filesystem: {done.stderr.strip()}")
    engine = sa.create_engine(sqlalchemy_url(city), poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        dbname = conn.execute(sa.text("SELECT current_database()")).scalar_one()
    try:
        with engine.connect() as conn:
            owner = os.stat(conn.execute(sa.text("SHOW data_directory")).scalar_one())
            os.chown(mount, owner.st_uid, owner.st_gid)
            conn.execute(sa.text(f"CREATE TABLESPACE tiny_temp LOCATION '{mount}'"))
            conn.execute(sa.text(f'ALTER DATABASE "{dbname}" SET temp_tablespaces = tiny_temp'))
        yield mount
    finally:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(f'ALTER DATABASE "{dbname}" RESET temp_tablespaces'))
                conn.execute(sa.text("DROP TABLESPACE IF EXISTS tiny_temp"))
            engine.dispose()
        finally:
            subprocess.run(["umount", str(mount)], check=False)
            mount.rmdir()


def test_a_load_that_runs_out_of_disk_fails_cleanly_and_leaves_the_previous_state(city, tiny_temp_space, tmp_path):
    """A delivery of 30,000 parts onto a base that has parts (a merge: staged first) while the database's disk
    fills: one error line saying the disk is full and that nothing was committed, exit 1, no traceback, no
    rejects, the base exactly as it was; once space is back, the same delivery loads."""
    before = snapshot(city)
    delivery = parts_csv(tmp_path / "big.csv", [f"DISK-{i}" for i in range(30_000)])
    rejects = tmp_path / "rejects"
    args = ("ingest", "parts", str(delivery), "--x", "x", "--y", "y", "--crs", "EPSG:4326",
            "--rejects-dir", str(rejects))
    proc = run_cim(*args, db_url=city, check=False)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 1, proc.stdout + err
    assert "Traceback" not in err, err
    assert "load of parts stopped: the database ran out of disk space" in err, err
    assert "nothing of this load was committed" in err and "free space" in err, err
    assert snapshot(city) == before
    assert not rejects.exists() or published_rejects(rejects) == []
    # space back (the staging goes to the default tablespace again): the same delivery loads
    with _engine(city).connect() as conn:
        dbname = conn.execute(sa.text("SELECT current_database()")).scalar_one()
        conn.execute(sa.text(f'ALTER DATABASE "{dbname}" RESET temp_tablespaces'))
        conn.commit()
    report = json.loads(run_cim(*args, "--json", db_url=city).stdout)
    assert (report["inserted"], report["rejected"]) == (30_000, 0)
