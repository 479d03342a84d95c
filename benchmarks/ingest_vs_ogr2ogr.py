"""Benchmark: `cim ingest parts` against GDAL's ogr2ogr loading the same GeoPackage into the same server.

Run by hand (not a test):  .venv/bin/python benchmarks/ingest_vs_ogr2ogr.py [--points 1000000] [--buildings 100000]

Needs `ogr2ogr` (Debian gdal-bin) and a database: CIM_DATABASE_URL, or the embedded cluster (`cim db up`).
Creates throwaway databases on that server, prints a Markdown table with features/s, ratios and peak memory
(the loader runs as a child process so its peak RSS is measured alone).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cim.bootstrap import initialise  # noqa: E402
from cim.database import database_url, engine_for  # noqa: E402

WORK = Path(__file__).resolve().parent / "work"
CIM = str(Path(sys.executable).with_name("cim"))
BBOX = (121.10, 30.90, 121.90, 31.45)  # central Shanghai, WGS84 ≈ CGCS2000


def new_database(server: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(engine_for(server).url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return urlunsplit(urlsplit(server)._replace(path="/" + name))


def make_points(n: int, path: Path) -> None:
    rng = np.random.default_rng(42)
    lon = rng.uniform(BBOX[0], BBOX[2], n)
    lat = rng.uniform(BBOX[1], BBOX[3], n)
    z = rng.uniform(0, 5, n).round(2)
    subclass = rng.choice(["0101", "0102", "0103", "0202", "0302", "0401"], n)
    frame = gpd.GeoDataFrame({
        "source_id": [f"P{i:07d}" for i in range(n)],
        "object_code": [f"310104{s}{i % 1_000_000:06d}" for i, s in enumerate(subclass)],
        "name": "井盖", "status": rng.choice(["完好", "破损"], n),
    }, geometry=shapely.points(lon, lat, z), crs="EPSG:4490")
    # object codes must be unique per subclass: make the sequence run over the whole file
    frame["object_code"] = [f"310104{s}{i:06d}" for s, i in
                            zip(subclass, pd.Series(subclass).groupby(subclass).cumcount())]
    frame.to_file(path, layer="parts", driver="GPKG")


def make_buildings(n: int, path: Path) -> None:
    rng = np.random.default_rng(7)
    side = 0.0002
    lon = rng.uniform(BBOX[0], BBOX[2], n)
    lat = rng.uniform(BBOX[1], BBOX[3], n)
    boxes = shapely.box(lon, lat, lon + side * rng.uniform(0.5, 2, n), lat + side * rng.uniform(0.5, 2, n))
    gpd.GeoDataFrame({"source_id": [f"B{i:07d}" for i in range(n)], "height": rng.uniform(3, 150, n).round(1),
                      "floors": rng.integers(1, 40, n)}, geometry=boxes, crs="EPSG:4490").to_file(
        path, layer="buildings", driver="GPKG")


def make_grids(url: str, n: int) -> None:
    """n unit grids tiling the benchmark area (+ one district), so enrichment has real work to do."""
    side = int(np.ceil(np.sqrt(n)))
    xs = np.linspace(BBOX[0], BBOX[2], side + 1)
    ys = np.linspace(BBOX[1], BBOX[3], side + 1)
    cells = [shapely.box(xs[i], ys[j], xs[i + 1], ys[j + 1]) for i in range(side) for j in range(side)][:n]
    path = WORK / "grids.gpkg"
    gpd.GeoDataFrame({"grid_code": [f"310104001001{i:05d}" for i in range(len(cells))]}, geometry=cells,
                     crs="EPSG:4490").to_file(path, driver="GPKG")
    gpd.GeoDataFrame({"code": ["310104"], "name": ["徐汇区"]}, geometry=[shapely.box(*BBOX)],
                     crs="EPSG:4490").to_file(WORK / "district.gpkg", driver="GPKG")
    env = {**os.environ, "CIM_DATABASE_URL": url}
    subprocess.run([CIM, "ingest", "districts", str(WORK / "district.gpkg")], env=env, check=True,
                   capture_output=True)
    subprocess.run([CIM, "ingest", "grids", str(path)], env=env, check=True, capture_output=True)


def timed(cmd: list[str], env: dict, stdout=subprocess.DEVNULL) -> tuple[float, float]:
    """Wall seconds and this child's own peak RSS in MB (os.wait4 reports it per process)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{cmd[0]} failed:\n{stderr[-3000:]}")
    return elapsed, usage.ru_maxrss / 1024


def ogr2ogr(url: str, path: Path, layer: str, srid: int) -> tuple[float, float]:
    parts = urlsplit(url)
    pg = (f"PG:host={parts.hostname} port={parts.port} dbname={parts.path.lstrip('/')} "
          f"user={parts.username} password={parts.password}")
    cmd = ["ogr2ogr", "-f", "PostgreSQL", pg, str(path), layer, "-nln", f"ogr_{layer}", "-t_srs", f"EPSG:{srid}",
           "-dim", "XYZ", "-lco", "SPATIAL_INDEX=GIST", "-overwrite", "--config", "PG_USE_COPY", "YES",
           "-gt", "100000"]
    return timed(cmd, os.environ.copy())


def cim_ingest(url: str, layer: str, path: Path) -> tuple[float, float, dict]:
    env = {**os.environ, "CIM_DATABASE_URL": url, "CIM_HOME": str(WORK / "cim-home")}
    out = WORK / f"report-{layer}.json"
    with open(out, "w") as f:
        elapsed, peak = timed([CIM, "ingest", layer, str(path), "--json"], env, stdout=f)
    return elapsed, peak, json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--buildings", type=int, default=100_000)
    parser.add_argument("--grids", type=int, default=10_000)
    args = parser.parse_args()
    if not shutil.which("ogr2ogr"):
        raise SystemExit("ogr2ogr not found: apt-get install gdal-bin")
    WORK.mkdir(exist_ok=True)
    server = database_url()
    points, buildings = WORK / f"points_{args.points}.gpkg", WORK / f"buildings_{args.buildings}.gpkg"
    if not points.exists():
        make_points(args.points, points)
    if not buildings.exists():
        make_buildings(args.buildings, buildings)
    rows = []
    for label, layer, path, n, grids in [("parts, plain", "parts", points, args.points, 0),
                                         (f"parts, + {args.grids:,} grids", "parts", points, args.points, args.grids),
                                         ("buildings", "buildings", buildings, args.buildings, 0)]:
        url = new_database(server)
        settings, _ = initialise(engine_for(url))
        if grids:
            make_grids(url, grids)
        ogr_s, ogr_mb = ogr2ogr(url, path, layer, settings.srid)
        cim_s, cim_mb, report = cim_ingest(url, layer, path)
        assert report["inserted"] == n, report
        rows.append((label, n, ogr_s, cim_s, ogr_mb, cim_mb))
        print(f"{label}: ogr2ogr {ogr_s:.1f} s, cim {cim_s:.1f} s", flush=True)
    print(f"\nMachine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
          f"date {time.strftime('%Y-%m-%d')}\n")
    print("| load | features | ogr2ogr s | ogr2ogr feat/s | cim s | cim feat/s | cim ÷ ogr2ogr | cim peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, n, ogr_s, cim_s, ogr_mb, cim_mb in rows:
        print(f"| {label} | {n:,} | {ogr_s:.1f} | {n / ogr_s:,.0f} | {cim_s:.1f} | {n / cim_s:,.0f} | "
              f"{ogr_s / cim_s:.2f}× | {cim_mb:,.0f} |")


if __name__ == "__main__":
    main()
