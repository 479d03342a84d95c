"""Loads into tables that are not feature layers: IoT readings (time series) and the
responsibility chain (grid → post → department → person)."""
from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cim.errors import UserError
from cim.readings import advance_latest, ensure_month_partitions
from ingest.columns import coerce, plan_columns
from ingest.read import open_source
from ingest.provenance import finish_run, load_transaction, operator_name, start_run
from ingest.report import FileReport, IngestReport, RejectsFiles, sha256_of
from ingest.specs import LayerSpec


def ingest_table(spec: LayerSpec, paths: list[Path], options, engine, progress=None) -> IngestReport:
    from cim.config import cim_home

    started = time.perf_counter()
    report = IngestReport(layer=spec.name, mode=options.mode, dry_run=options.dry_run)
    rejects = RejectsFiles(options.rejects_dir or (cim_home() / "rejects"))
    try:
        _load(spec, paths, options, report, rejects, engine, progress, started)
    except BaseException:
        rejects.discard()  # those of a --strict refusal were published first
        raise
    rejects.publish()
    return report


def _load(spec: LayerSpec, paths: list[Path], options, report: IngestReport, rejects: RejectsFiles, engine,
          progress, started: float) -> None:
    with load_transaction(engine, report) as cur:
        start_run(cur, report, operator_name(options.operator), {"map": options.mapping} if options.mapping else {})
        frames = []
        for path in paths:
            source = open_source(path, options.read_options())
            file_report = FileReport(path=str(path), sha256=sha256_of(path), format=source.format, crs=None,
                                     encoding=source.encoding)
            report.files.append(file_report)
            writer = rejects.writer(f"run-{report.run_id}-{path.stem}.rejects.csv")
            plan = None
            for batch in source.batches:
                plan = plan or plan_columns(spec, list(batch.attributes.columns), options.mapping, str(path))
                frame, reasons = coerce(batch.attributes, spec, plan)
                frame = frame.reset_index(drop=True)
                for column in spec.required:
                    for i in np.flatnonzero(frame[column].isna().to_numpy()):
                        reasons.setdefault(int(i), f"missing {column}")
                if spec.name == "iot-readings":
                    _check_devices(cur, frame, reasons)
                writer.write(batch.attributes, None, batch.rows, reasons)
                keep = np.array([i not in reasons for i in range(len(frame))], dtype=bool)
                frames.append(frame[keep].assign(row_no=batch.rows[keep]))
                file_report.read += len(frame)
                file_report.rejected += len(reasons)
                if progress:
                    progress(len(frame))
            file_report.rejects_file = writer.close()
            report.read += file_report.read
            report.rejected += file_report.rejected
        if options.strict and report.rejected:
            rejects.publish()  # they are why the load is refused
            raise UserError(f"--strict: {report.rejected} row(s) rejected, nothing loaded")
        data = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=spec.columns)
        if spec.name == "iot-readings":
            _merge_readings(cur, data, report, engine)
        else:
            _merge_responsibility(cur, data, report, options.mode)
        report.status = "dry-run" if options.dry_run else "succeeded"
        report.duration_s = round(time.perf_counter() - started, 3)
        finish_run(cur, report)


def _check_devices(cur, frame: pd.DataFrame, reasons: dict[int, str]) -> None:
    ids = sorted({d for d in frame["device_id"] if d is not None})
    cur.execute("SELECT source_id FROM iot_devices WHERE valid_to IS NULL AND source_id = ANY(%s)", (ids,))
    known = {r[0] for r in cur.fetchall()}
    for i, device in enumerate(frame["device_id"]):
        if device is not None and device not in known:
            reasons.setdefault(i, f"unknown device {device!r} (load iot-devices first)")


def _merge_readings(cur, data: pd.DataFrame, report: IngestReport, engine) -> None:
    if data.empty:
        return
    ensure_month_partitions(engine, {(t.year, t.month) for t in pd.to_datetime(data["time"], utc=True)})
    dupes = data.duplicated(subset=["device_id", "quantity", "time"], keep=False)
    if dupes.any():
        raise UserError(f"{int(dupes.sum())} readings repeat the same device, quantity and time "
                        f"(first at row {int(data.loc[dupes, 'row_no'].iloc[0])})")
    # a reading carries its device's district (migration 0009; on Citus, the shard it goes to)
    cur.execute("SELECT source_id, coalesce(district_code, '') FROM iot_devices WHERE valid_to IS NULL "
                "AND source_id = ANY(%s)", (sorted(set(data["device_id"])),))
    districts = dict(cur.fetchall())
    data = data.assign(district_code=data["device_id"].map(districts).fillna(""))
    cur.execute("CREATE TEMP TABLE _readings (device_id text, time timestamptz, quantity text, value float8, "
                "district_code text) ON COMMIT DROP")
    buffer = io.StringIO()
    data[["device_id", "time", "quantity", "value", "district_code"]].to_csv(buffer, index=False, header=False)
    buffer.seek(0)
    cur.copy_expert("COPY _readings FROM STDIN WITH (FORMAT csv, FORCE_NOT_NULL (district_code))", buffer)
    # the staging table through a materialised CTE: Citus joins no local table directly with a distributed one
    cur.execute("""WITH s AS MATERIALIZED (SELECT * FROM _readings)
        UPDATE iot_readings r SET value = s.value, ingest_run_id = %s FROM s
        WHERE r.device_id = s.device_id AND r.quantity = s.quantity AND r.time = s.time
          AND r.district_code = s.district_code AND r.value IS DISTINCT FROM s.value""", (report.run_id,))
    report.updated = cur.rowcount
    cur.execute("""INSERT INTO iot_readings (device_id, time, quantity, value, ingest_run_id, district_code)
        SELECT device_id, time, quantity, value, %s, district_code FROM _readings ON CONFLICT DO NOTHING""",
                (report.run_id,))
    report.inserted = cur.rowcount
    report.unchanged = len(data) - report.inserted - report.updated
    advance_latest(cur, "_readings")


def _merge_responsibility(cur, data: pd.DataFrame, report: IngestReport, mode: str) -> None:
    changes = 0
    departments = data.drop_duplicates("department_code")
    for row in departments.itertuples(index=False):
        handles = sorted({h.strip() for hs in data.loc[data.department_code == row.department_code, "handles"]
                          if hs for h in str(hs).replace(",", ";").split(";") if h.strip()})
        cur.execute("""INSERT INTO departments (code, name, handles) VALUES (%s, %s, %s)
            ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name, handles = EXCLUDED.handles
            WHERE (departments.name, departments.handles) IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.handles)""",
                    (row.department_code, row.department_name, handles))
        changes += cur.rowcount
    for row in data.drop_duplicates("post_code").itertuples(index=False):
        cur.execute("""INSERT INTO posts (code, name, department_id)
            SELECT %s, %s, id FROM departments WHERE code = %s
            ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name, department_id = EXCLUDED.department_id
            WHERE (posts.name, posts.department_id) IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.department_id)""",
                    (row.post_code, row.post_name, row.department_code))
        changes += cur.rowcount
    links_before = _link_count(cur)
    # set-based, three statements whatever the number of rows: on a Citus cluster these are reference
    # tables, and each statement is a round trip to every node (row by row: 33 s for the sample's 1,116)
    cur.execute("""INSERT INTO grid_posts (grid_code, post_id)
        SELECT f.grid_code, p.id FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS f(grid_code, post_code, n)
        JOIN posts p ON p.code = f.post_code ORDER BY f.n ON CONFLICT DO NOTHING""",
                (data.grid_code.tolist(), data.post_code.tolist()))
    people = [(row.post_code, row.person_name, row.person_contact) for row in data.itertuples(index=False)
              if row.person_name]
    if people:
        post_codes, names, contacts = (list(column) for column in zip(*people))
        cur.execute("""INSERT INTO persons (name, contact)
            SELECT f.name, f.contact FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS f(name, contact, n)
            ORDER BY f.n ON CONFLICT (name, contact) DO NOTHING""", (names, contacts))
        changes += cur.rowcount
        cur.execute("""INSERT INTO post_persons (post_id, person_id)
            SELECT DISTINCT p.id, r.id FROM unnest(%s::text[], %s::text[], %s::text[]) AS f(post_code, name, contact)
            JOIN posts p ON p.code = f.post_code
            JOIN persons r ON r.name = f.name AND r.contact IS NOT DISTINCT FROM f.contact
            ON CONFLICT DO NOTHING""", (post_codes, names, contacts))
    if mode == "replace":
        cur.execute("""DELETE FROM grid_posts gp WHERE NOT EXISTS (SELECT 1 FROM unnest(%s::text[], %s::text[])
            AS f(grid_code, post_code) JOIN posts p ON p.code = f.post_code
            WHERE f.grid_code = gp.grid_code AND p.id = gp.post_id)""",
                    (data.grid_code.tolist(), data.post_code.tolist()))
        report.closed = cur.rowcount
    changes += _link_count(cur) - links_before + report.closed
    report.inserted = changes
    report.unchanged = len(data) if changes == 0 else 0


def _link_count(cur) -> int:
    cur.execute("SELECT (SELECT count(*) FROM grid_posts) + (SELECT count(*) FROM post_persons)")
    return cur.fetchone()[0]
