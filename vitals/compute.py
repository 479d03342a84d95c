"""Computing the vital signs into ``vital_values``: ``cim vitals compute [--at TIME]`` and
:func:`compute_vitals`, which the server's periodic job runner calls.

One run is one transaction at one time ``at``: the areas valid then (city, districts, streets, grids,
with their km²) are put in a temporary table once; each measure source (the parts, the pipelines, the
cases open then …) is scanned once for all the indicators that read it, summed per (district, street,
grid); then each computed indicator is **one statement** that measures every area of every level it is
computed at (``GROUPING SETS`` over those sums, plus the whole city) and writes the values with their
status (``vital_status``). Areas where a share has no denominator (a street without gas pipelines) get no
value rather than a made-up zero. The case-loop rates come from :func:`cases.evaluation.evaluate`, one
statement per level, shared by the five indicators that read them.

Idempotent: a run for a time already computed replaces that time's computed values (fed values are
never touched). Two runs at once queue on an advisory lock instead of interleaving their rows.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from cases.evaluation import Indicators, evaluate
from cim.errors import ParameterError
from vitals.catalogue import Indicator, ensure_catalogue, list_indicators
from vitals.measures import EVALUATION, KINDS, MEASURES, Measure

#: the area code of the city level (the base is one city)
CITY_CODE = "city"
#: the level → the column of the measured rows that names its area
LEVEL_COLUMN = {"district": "district_code", "street": "street_code", "grid": "grid_code"}
#: the window a windowed measure uses when the catalogue gives none
DEFAULT_WINDOW = "30 days"

_AREAS_SQL = """
CREATE TEMP TABLE vital_run_areas ON COMMIT DROP AS
WITH d AS (SELECT code, ST_Area(geom) / 1e6 AS km2 FROM districts
           WHERE valid_from <= :at AND (valid_to IS NULL OR valid_to > :at))
SELECT 'district'::text AS level, code, sum(km2) AS km2 FROM d GROUP BY code
UNION ALL
SELECT 'street', code, sum(ST_Area(geom) / 1e6) FROM streets
WHERE valid_from <= :at AND (valid_to IS NULL OR valid_to > :at) GROUP BY code
UNION ALL
SELECT 'grid', grid_code, sum(ST_Area(geom) / 1e6) FROM grids
WHERE valid_from <= :at AND (valid_to IS NULL OR valid_to > :at) GROUP BY grid_code
UNION ALL
SELECT 'city', :city, (SELECT sum(km2) FROM d)
"""


@dataclass
class ComputeReport:
    at: str
    indicators: int = 0
    values: int = 0
    seconds: float = 0.0
    #: the scans of the measure sources (each shared by the indicators that read it)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_indicator: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "indicators": self.indicators, "values": self.values,
                "seconds": round(self.seconds, 3), "sources": self.sources, "per_indicator": self.per_indicator}


def _uses_window(measure: Measure) -> bool:
    return ":window" in measure.source


def source_statement(table: str, source: str, measures: list[tuple[str, Measure]]) -> str:
    """One scan of a measure source for every indicator that reads it: the numerators and denominators of
    each, summed per (district, street, grid) into the temporary ``table`` (all of them are counts or sums,
    so the levels above add them up exactly). 15 indicators over the parts read the parts once."""
    columns = ", ".join(f"CAST({m.num} AS float8) AS n_{i}, CAST({m.den} AS float8) AS d_{i}" for i, m in measures)
    return (f"CREATE TEMP TABLE {table} ON COMMIT DROP AS SELECT s.district_code, s.street_code, s.grid_code, "
            f"{columns} FROM ({source}) s GROUP BY 1, 2, 3")


def measure_statement(table: str, column: str, kind: str, levels: tuple[str, ...]) -> str:
    """The one statement that writes an indicator for every area of ``levels`` at ``:at``, from the sums of
    its source in ``table`` (column ``n_<column>``, ``d_<column>``)."""
    grouped = [lv for lv in levels if lv in LEVEL_COLUMN]
    sets = [f"(s.{LEVEL_COLUMN[lv]})" for lv in grouped] + (["()"] if "city" in levels else [])
    level_case = " ".join(f"WHEN GROUPING(s.{LEVEL_COLUMN[lv]}) = 0 THEN '{lv}'" for lv in grouped)
    code_case = " ".join(f"WHEN GROUPING(s.{LEVEL_COLUMN[lv]}) = 0 THEN s.{LEVEL_COLUMN[lv]}" for lv in grouped)
    level_expr = f"CASE {level_case} ELSE 'city' END" if grouped else "'city'"
    code_expr = f"CASE {code_case} ELSE :city END" if grouped else ":city"
    return f"""
WITH k AS (
    SELECT {level_expr} AS level, {code_expr} AS area_code, sum(s.n_{column}) AS num, sum(s.d_{column}) AS den
    FROM {table} s
    GROUP BY GROUPING SETS ({', '.join(sets)})
)
INSERT INTO vital_values (indicator, level, area_code, at, value, status, source)
SELECT :code, a.level, a.code, :at, v.value, vital_status(v.value, :direction, :yellow, :red), 'computed'
FROM vital_run_areas a
LEFT JOIN k ON k.level = a.level AND k.area_code = a.code
CROSS JOIN LATERAL (SELECT CAST({KINDS[kind]} AS float8) AS value) v
WHERE a.level = ANY(CAST(:levels AS text[])) AND v.value IS NOT NULL
"""


def _evaluation_rows(conn: Connection, ind: Indicator, at: datetime, window: timedelta,
                     cache: dict[str, list[Indicators]]) -> list[tuple[str, str, float]]:
    """(level, area, value) of a case-loop rate from 综合评价 over the cases registered in the window;
    the city adds up the districts' counts (cases outside any district included)."""
    num_field, den_field = EVALUATION[ind.compute]
    out: list[tuple[str, str, float]] = []
    for level in ind.levels:
        unit = "district" if level == "city" else level
        if unit not in cache:
            cache[unit] = evaluate(conn, unit, at - window, at)
        rows = cache[unit]
        if level == "city":
            rows = [_city_total(rows)] if rows else []
        for r in rows:
            den = getattr(r, den_field)
            if r.key is None or not den:
                continue
            if ind.compute == "mean_hours_to_close":
                value = r.mean_hours_to_close
            else:
                value = 100.0 * getattr(r, num_field) / den
            if value is not None:
                out.append((level, r.key, float(value)))
    return out


def _city_total(rows: list[Indicators]) -> Indicators:
    counts = {k: sum(getattr(r, k) for r in rows) for k in
              ("registered", "closed", "closed_on_time", "reworked", "extended", "overdue")}
    hours = sum((r.mean_hours_to_close or 0) * r.closed for r in rows)
    return Indicators(unit="city", key=CITY_CODE, name=None, **counts, closure_rate=None, on_time_rate=None,
                      rework_rate=None, extension_rate=None,
                      mean_hours_to_close=hours / counts["closed"] if counts["closed"] else None,
                      p90_hours_to_close=None)


def _window(ind: Indicator) -> str:
    return ind.window or DEFAULT_WINDOW


def _window_delta(text: str) -> timedelta:
    number, unit = text.split()
    return timedelta(**{unit: int(number)})


def compute(conn: Connection, at: datetime, codes: list[str] | None = None) -> ComputeReport:
    """Compute the platform's indicators (or those of ``codes``) at ``at`` inside the caller's transaction."""
    if at.tzinfo is None:
        raise ParameterError("at", "at: the time needs a time zone")
    at = at.astimezone(timezone.utc)
    ensure_catalogue(conn)
    catalogue = [i for i in list_indicators(conn) if not i.fed]
    if codes:
        known = {i.code for i in catalogue}
        unknown = [c for c in codes if c not in known]
        if unknown:
            raise ParameterError("indicator", f"indicator: {', '.join(unknown)} not computed indicator(s) of the "
                                              "catalogue (cim vitals catalogue list)")
        catalogue = [i for i in catalogue if i.code in codes]
    report = ComputeReport(at=at.isoformat())
    started = time.perf_counter()
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(4549013, 1)"))
    conn.execute(sa.text("DROP TABLE IF EXISTS vital_run_areas"))
    conn.execute(sa.text(_AREAS_SQL), {"at": at, "city": CITY_CODE})
    conn.execute(sa.text("ANALYZE vital_run_areas"))
    conn.execute(sa.text("DELETE FROM vital_values WHERE at = :at AND source = 'computed' "
                         "AND indicator = ANY(CAST(:codes AS text[]))"),
                 {"at": at, "codes": [i.code for i in catalogue]})
    evaluations: dict[str, list[Indicators]] = {}
    # the measured indicators, by the source they read (and the window it is read over): one scan each
    sources: dict[tuple[str, str | None], list[Indicator]] = {}
    for ind in catalogue:
        if ind.compute in MEASURES:
            measure = MEASURES[ind.compute]
            sources.setdefault((measure.source, _window(ind) if _uses_window(measure) else None), []).append(ind)
    tables: dict[str, tuple[str, int]] = {}
    for n, ((source, window), readers) in enumerate(sources.items()):
        t0 = time.perf_counter()
        table = f"vital_run_source_{n}"
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        conn.execute(sa.text(source_statement(table, source, [(i, MEASURES[r.compute]) for i, r in enumerate(readers)])),
                     {"at": at, "window": window or DEFAULT_WINDOW})
        for i, r in enumerate(readers):
            tables[r.code] = (table, i)
        report.sources[f"{readers[0].compute}{' …' if len(readers) > 1 else ''}"] = {
            "indicators": len(readers), "seconds": round(time.perf_counter() - t0, 3)}
    for ind in catalogue:
        t0 = time.perf_counter()
        params = {"at": at, "city": CITY_CODE, "code": ind.code, "direction": ind.direction, "yellow": ind.yellow,
                  "red": ind.red, "levels": list(ind.levels)}
        if ind.compute in EVALUATION:
            rows = _evaluation_rows(conn, ind, at, _window_delta(_window(ind)), evaluations)
            written = conn.execute(sa.text(
                "INSERT INTO vital_values (indicator, level, area_code, at, value, status, source) "
                "SELECT :code, x.level, x.area_code, :at, x.value, vital_status(x.value, :direction, :yellow, :red), "
                "'computed' FROM unnest(CAST(:lv AS text[]), CAST(:ac AS text[]), CAST(:val AS float8[])) "
                "AS x(level, area_code, value) JOIN vital_run_areas a ON a.level = x.level AND a.code = x.area_code"),
                {**params, "lv": [r[0] for r in rows], "ac": [r[1] for r in rows], "val": [r[2] for r in rows]}).rowcount
        else:
            table, column = tables[ind.code]
            written = conn.execute(sa.text(measure_statement(table, str(column), MEASURES[ind.compute].kind,
                                                             ind.levels)), params).rowcount
        report.indicators += 1
        report.values += written
        report.per_indicator[ind.code] = {"values": written, "seconds": round(time.perf_counter() - t0, 3)}
    report.seconds = time.perf_counter() - started
    return report


def compute_vitals(engine: Engine, now: datetime) -> ComputeReport:
    """Compute every platform indicator at ``now`` in one transaction: the periodic job's entry point."""
    with engine.begin() as conn:
        return compute(conn, now)
