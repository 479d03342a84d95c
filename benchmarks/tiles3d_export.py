"""Where the time of ``cim tiles export-3d LAYER OUT --implicit`` goes, on a base that is already loaded (read only).

    python benchmarks/tiles3d_export.py --home /tmp/h15 --out /tmp/tiles3d-out/run --districts 310101 \
        --workers 2 [--pythonpath /tmp/old-checkout] [--validate]

Runs the real command once and reports: wall time, the CPU seconds of the exporter's processes (the command and
its workers, from wait4) and of the database backends serving it (their /proc CPU counters, found by the
``application_name`` the run sets), the 1-minute load average while it ran (the machine is shared), peak RSS,
files and bytes, and with ``--validate`` the CesiumGS 3d-tiles-validator over the whole output.
``--pythonpath`` runs another checkout's code with this environment (a before/after on the same subset).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.shanghai import CIM, VALIDATOR, LoadAverage, _issues, cim_env, database_url, dir_size  # noqa: E402
from cim.database import engine_for  # noqa: E402

APP_NAME = "cim-tiles3d-benchmark"
_TICK = os.sysconf("SC_CLK_TCK")


class BackendCpu:
    """CPU seconds of the database backends whose application_name is :data:`APP_NAME`, sampled while the
    export runs (a backend's last fraction of a second before it exits is missed)."""

    def __init__(self, url: str, every: float = 0.25) -> None:
        self.engine = engine_for(url)
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _run(self, every: float) -> None:
        with self.engine.connect() as conn:
            while not self._stop.is_set():
                pids = conn.execute(sa.text("SELECT pid FROM pg_stat_activity WHERE application_name = :a"),
                                    {"a": APP_NAME}).scalars().all()
                conn.commit()
                for pid in pids:
                    try:
                        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    except OSError:
                        continue
                    self.seen[pid] = (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime
                self._stop.wait(every)

    def __enter__(self) -> "BackendCpu":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def seconds(self) -> float:
        return round(sum(self.seen.values()), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, required=True, help="CIM_HOME of the loaded base (read only)")
    parser.add_argument("--out", type=Path, required=True, help="output directory (replaced)")
    parser.add_argument("--layer", default="buildings")
    parser.add_argument("--districts", default="", help="comma-separated district codes: their box only")
    parser.add_argument("--bbox", default="", help="minlon,minlat,maxlon,maxlat instead of --districts")
    parser.add_argument("--workers", type=int, default=None, help="--workers of the command (default: its own)")
    parser.add_argument("--pythonpath", default="", help="run another checkout's code (before/after)")
    parser.add_argument("--validate", action="store_true", help="run the CesiumGS validator over the output")
    args = parser.parse_args()

    url = database_url(args.home)
    bbox = args.bbox
    if args.districts:
        with engine_for(url).connect() as conn:
            box = conn.execute(sa.text("""SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM (SELECT
                ST_Transform(ST_SetSRID(ST_Extent(geom)::geometry, ST_SRID(min(geom))), 4326) AS e FROM districts
                WHERE valid_to IS NULL AND code = ANY(:d)) q"""), {"d": args.districts.split(",")}).one()
        bbox = ",".join(f"{v:.6f}" for v in box)
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [CIM, "tiles", "export-3d", args.layer, str(args.out), "--implicit",
           *(["--bbox", bbox] if bbox else []), *(["--workers", str(args.workers)] if args.workers else [])]
    env = {**cim_env(args.home), "PGAPPNAME": APP_NAME}
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    with LoadAverage(2.0) as load, BackendCpu(url) as backends:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=args.out.parent)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(cmd)} failed")
    files, size = dir_size(args.out)
    tileset = args.out / "tileset.json"
    out = {"cmd": " ".join(cmd[1:]), "pythonpath": args.pythonpath, "seconds": round(seconds, 1),
           "exporter_cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "database_cpu_s": backends.seconds,
           "backends": len(backends.seen), "peak_rss_mb": round(usage.ru_maxrss / 1024),
           "load": load.summary(), "files": files, "bytes": size,
           "glb": sum(1 for _ in args.out.rglob("*.glb")), "subtrees": sum(1 for _ in args.out.rglob("*.subtree")),
           "tileset_json_bytes": tileset.stat().st_size,
           "features": json.loads(tileset.read_text())["metadata"]["properties"].get("featureCount")}
    out["features_per_s"] = round(out["features"] / seconds)
    if args.validate:
        report_file = args.out.parent / f"{args.out.name}-validation.json"
        started = time.perf_counter()
        subprocess.run(["node", str(VALIDATOR), "--tilesetFile", str(tileset), "--reportFile", str(report_file)],
                       capture_output=True, text=True, check=False)
        report = json.loads(report_file.read_text()) if report_file.exists() else {}
        out["validator"] = {"errors": report.get("numErrors"), "warnings": report.get("numWarnings"),
                            "infos": report.get("numInfos"), "seconds": round(time.perf_counter() - started, 1),
                            "issues": _issues(report, 5)}
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main()
