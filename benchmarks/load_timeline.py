"""Benchmark helper: where a load's CPU goes over time — the loader process (by thread) and each of the
server's backends (by the statement it runs) — sampled every ``--interval`` seconds while a command runs.

Run by hand (not a test), around any load on the embedded cluster under ``CIM_HOME``:
  .venv/bin/python benchmarks/load_timeline.py --out /tmp/timeline.jsonl -- \\
      .venv/bin/python benchmarks/parts_scale.py --rows 1000000

Each sample reads /proc (utime + stime of the postmaster's children and of every process whose command line
holds ``ingest parts``) and ``pg_stat_activity`` (each backend's statement), and writes one JSON line. The summary
printed at the end: the server's CPU by kind of statement, and how the two cores were used over the load —
seconds with both busy, one idle, and the loader or the server alone on the critical path.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cim.database import database_url  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int | str, task: str | None = None) -> tuple[int, float, str] | None:
    path = f"/proc/{pid}/stat" if task is None else f"/proc/{pid}/task/{task}/stat"
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK, name  # ppid, utime + stime, comm


def kind(query: str | None, state: str | None) -> str:
    """A statement's kind, for the summary."""
    if not query:
        return "idle"
    if state not in ("active", "fastpath function call"):  # between statements: counted with the last one
        return "idle after " + kind(query, "active")
    q = " ".join(query.split())
    if q.startswith("COPY"):
        return " ".join(q.split()[:2])  # COPY and its table
    m = re.match(r"CREATE (UNIQUE )?INDEX \S+ ON \S+ USING (\w+) \(([^)]*)\)", q)
    if m:
        return f"CREATE {'UNIQUE ' if m[1] else ''}INDEX {m[2]} ({m[3]})"
    m = re.match(r'CREATE (UNIQUE )?INDEX "?\S+"? ON "?\S+"? (\([^)]*\))', q)
    if m:
        return f"CREATE {'UNIQUE ' if m[1] else ''}INDEX {m[2]}"
    if "FOREIGN KEY" in q:
        return "ADD FOREIGN KEY " + q.split("FOREIGN KEY", 1)[1].split(")")[0] + ")"
    if "PRIMARY KEY USING INDEX" in q:
        return "ADD PRIMARY KEY USING INDEX"
    if "ATTACH PARTITION" in q:
        return "ATTACH PARTITION"
    if q.startswith("ANALYZE") or "ANALYZE" in q[:30]:
        return "ANALYZE"
    if q.startswith("autovacuum"):
        return "autovacuum"
    return q[:60]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    url = os.environ.get("CIM_DATABASE_URL") or database_url()
    conn = psycopg2.connect(url)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SELECT pg_backend_pid()")
    me = cur.fetchone()[0]
    postmaster = _stat(me)[0]
    last: dict[tuple[str, int], float] = {}
    for pid in os.listdir("/proc"):  # processes already there count from now
        stat = _stat(pid) if pid.isdigit() else None
        if stat is not None and stat[0] == postmaster:
            last[("s", int(pid))] = stat[1]
    child = subprocess.Popen(command)
    started = time.perf_counter()
    with open(args.out, "w") as out:
        while True:
            done = child.poll() is not None
            cur.execute("SELECT pid, state, left(query, 300), backend_type FROM pg_stat_activity")
            activity = {pid: (state, query, btype) for pid, state, query, btype in cur.fetchall()}
            sample: dict = {"t": round(time.perf_counter() - started, 2), "server": {}, "loader": {}}
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                stat = _stat(pid)
                if stat is None:
                    continue
                ppid, cpu, name = stat
                pid = int(pid)
                if ppid == postmaster and pid != me:
                    state, query, btype = activity.get(pid, (None, None, name))
                    delta = cpu - last.get(("s", pid), cpu if ("s", pid) in last else 0.0)
                    last[("s", pid)] = cpu
                    if delta > 0:
                        label = kind(query, state) if btype == "client backend" else (btype or name)
                        sample["server"][str(pid)] = [round(delta, 2), label]
                else:
                    try:
                        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    except OSError:
                        continue
                    if b"\0ingest\0parts\0" not in cmdline:
                        continue
                    for task in os.listdir(f"/proc/{pid}/task"):
                        t = _stat(pid, task)
                        if t is None:
                            continue
                        delta = t[1] - last.get(("l", int(task)), 0.0)
                        last[("l", int(task))] = t[1]
                        if delta > 0:
                            sample["loader"][f"{t[2]}"] = round(sample["loader"].get(t[2], 0) + delta, 2)
            out.write(json.dumps(sample) + "\n")
            if done:
                break
            time.sleep(args.interval)
    summarise(args.out, args.interval)
    sys.exit(child.returncode)


def summarise(path: Path, interval: float) -> None:
    samples = [json.loads(line) for line in path.read_text().splitlines()]
    by_kind: collections.Counter = collections.Counter()
    loader_threads: collections.Counter = collections.Counter()
    usage = collections.Counter()
    first = next((i for i, s in enumerate(samples) if s["loader"]), 0)  # from the parts load's start
    samples = samples[first:]
    prev_t = samples[0]["t"] - interval if samples else 0.0
    for s in samples:
        dt = s["t"] - prev_t
        prev_t = s["t"]
        server = sum(v[0] for v in s["server"].values())
        loader = sum(s["loader"].values())
        for delta, label in s["server"].values():
            by_kind[label] += delta
        for name, delta in s["loader"].items():
            loader_threads[name] += delta
        if not s["loader"] and not server:
            continue
        busy = min(2.0, (server + loader) / dt) if dt > 0 else 0
        usage["wall"] += dt
        usage["core-s idle"] += max(0.0, 2 * dt - server - loader)
        usage["loader"] += loader
        usage["server"] += server
        if busy < 1.2:
            usage["s with < 1.2 cores busy"] += dt
            usage["... loader alone (server < 0.2)" if server < 0.2 * dt else
                  "... server alone (loader < 0.2)" if loader < 0.2 * dt else "... both"] += dt
    print("\nserver CPU by statement kind (s):")
    for label, cpu in by_kind.most_common():
        if cpu >= 0.05:
            print(f"  {cpu:8.2f}  {label}")
    print("loader CPU by thread (s):")
    for name, cpu in loader_threads.most_common():
        print(f"  {cpu:8.2f}  {name}")
    print("cores:", ", ".join(f"{k} {v:.1f}" for k, v in usage.items()))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--summary":
        summarise(Path(sys.argv[2]), 0.5)
    else:
        main()
