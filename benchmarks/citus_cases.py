"""The case loop and readings intake on one node vs a Citus coordinator + 2 workers (issue 15, item 5): the same
work against a base holding the sample city (``cim samples load``), given by its ``$CIM_HOME`` (a single-node
home or one made by ``cim db up --workers 2``). Timed: N cases each through its whole lifecycle (intake with
geocoding and machine dispatch, accept, handle, verify — one transaction each), the batch intake of N cases, and
batches of readings (every sample device, ten instants each) through ``sensing.intake.store_batch``.

    CIM_HOME=… .venv/bin/python benchmarks/citus_cases.py [--cases 100] [--batches 10]

Prints one JSON document; docs/benchmarks.md holds the numbers of a run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.scratch import machine  # noqa: E402
from cim.database import database_url, engine_for  # noqa: E402
from cim.distribution import is_citus  # noqa: E402

ADDRESSES = ("汾阳路150号附近", "宛平南路88号", "衡山路10号", "肇嘉浜路1000号", "漕溪北路398号")


def _ms(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {"p50_ms": round(statistics.median(samples) * 1000, 2),
            "p90_ms": round(samples[int(len(samples) * 0.9) - 1] * 1000, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args()
    from cases.batch import intake_batch
    from cases.intake import CaseReport, intake
    from cases.lifecycle import Action, act, verifiers
    from cases.model import get_case
    from sensing.intake import store_batch
    from sensing.parse import parse_batch

    engine = engine_for(database_url())
    run = uuid.uuid4().hex[:6]
    t0 = datetime.fromisoformat("2026-12-01T09:00:00+08:00")
    steps: dict[str, list[float]] = {s: [] for s in ("intake", "accept", "handle", "verify")}
    with engine.connect() as conn:
        out = {"machine": machine(conn), "citus": is_citus(conn)}
    started = time.perf_counter()
    for i in range(args.cases):
        report = CaseReport(channel="vehicle_patrol", class_code="道路破损", address_text=ADDRESSES[i % len(ADDRESSES)],
                            description="路面破损", external_id=f"bench-{run}-{i}")
        t = time.perf_counter()
        with engine.begin() as conn:
            case = intake(conn, report, now=t0).case
        steps["intake"].append(time.perf_counter() - t)
        if case.status != "dispatched":
            continue
        for hours, (action, note) in enumerate((("accept", None), ("handle", "已修补")), 1):
            t = time.perf_counter()
            with engine.begin() as conn:
                act(conn, case.id, Action(action, "班组", "department", note), now=t0 + timedelta(hours=hours))
            steps[action].append(time.perf_counter() - t)
        t = time.perf_counter()
        with engine.begin() as conn:
            who = verifiers(conn, get_case(conn, case.id))[0]
            act(conn, case.id, Action("verify", who, "supervisor", None, {"passed": True}), now=t0 + timedelta(hours=3))
        steps["verify"].append(time.perf_counter() - t)
    out["lifecycles"] = {"cases": args.cases, "wall_s": round(time.perf_counter() - started, 2),
                         **{s: _ms(v) for s, v in steps.items() if v}}
    reports = [CaseReport(channel="vehicle_patrol", class_code="道路破损", address_text=ADDRESSES[i % len(ADDRESSES)],
                          description="路面破损", external_id=f"bench-batch-{run}-{i}") for i in range(args.cases)]
    t = time.perf_counter()
    with engine.begin() as conn:
        intake_batch(conn, reports, now=t0)
    out["batch_intake"] = {"cases": args.cases, "s": round(time.perf_counter() - t, 3)}
    with engine.connect() as conn:
        devices = conn.execute(sa.text(
            "SELECT source_id, q->>'quantity', q->>'unit' FROM iot_devices, jsonb_array_elements(quantities) q "
            "WHERE valid_to IS NULL AND q->>'quantity' IS NOT NULL ORDER BY 1, 2")).all()
    times = []
    for b in range(args.batches):
        at = datetime(2027, 1, 1, 0, 0) + timedelta(minutes=10 * b + int(run, 16) % 100_000)
        rows = [{"device_id": d, "quantity": q, "unit": u, "time": (at + timedelta(seconds=s)).isoformat() + "+08:00",
                 "value": 0.1} for d, q, u in devices for s in range(10)]
        frame = parse_batch(json.dumps(rows).encode(), "json")
        t = time.perf_counter()
        with engine.begin() as conn:
            report = store_batch(conn, frame)
        times.append(time.perf_counter() - t)
    out["readings"] = {"batches": args.batches, "rows_per_batch": len(devices) * 10, "stored_last": report.stored,
                       "rejected_last": report.rejected, **_ms(times)}
    print(json.dumps(out, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
