"""Hot spots (热点): where new illegal building is frequent. Spots (a spot's first clue counts once,
merged clues do not) are counted per grid per month; each month is compared with the grid's own
baseline, the mean monthly count over the ``baseline_months`` before it (months without clues count
as 0). The significance is the Poisson upper tail P(X ≥ count | λ) with λ = (spots in the baseline
+ 0.5) / baseline months — the half spot keeps a grid without history from making every first
spot "infinitely" significant. A grid-month is hot when p < ``alpha`` and count ≥ ``min_count``.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cim.errors import ParameterError


@dataclass(frozen=True)
class GridMonth:
    grid_code: str
    street_code: str | None
    month: date
    count: int
    baseline: float  # mean spots per month over the baseline months
    p_value: float
    hot: bool

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "month": self.month.isoformat()[:7]}


def poisson_tail(k: int, lam: float) -> float:
    """P(X ≥ k) for X ~ Poisson(λ), computed as 1 − P(X ≤ k − 1) in log space for stability."""
    if k <= 0:
        return 1.0
    terms = [math.exp(-lam + i * math.log(lam) - math.lgamma(i + 1)) for i in range(k)]
    return max(0.0, 1.0 - sum(terms))


def _month(text: str, parameter: str) -> date:
    try:
        parts = text.split("-")
        if len(parts) != 2:
            raise ValueError
        return date(int(parts[0]), int(parts[1]), 1)
    except (ValueError, TypeError):
        raise ParameterError(parameter, f"{parameter}: {text!r} is not a month (YYYY-MM)") from None


def hotspots(conn: Connection, month_from: str, month_to: str, baseline_months: int = 12, alpha: float = 0.01,
             min_count: int = 3, only_hot: bool = False) -> list[GridMonth]:
    """Spots per grid per month in [month_from, month_to] with baseline and significance."""
    first, last = _month(month_from, "from"), _month(month_to, "to")
    if last < first:
        raise ParameterError("to", "to: the last month is before the first")
    if not 1 <= baseline_months <= 120:
        raise ParameterError("baseline_months", "baseline_months: between 1 and 120")
    if not 0 < alpha < 1:
        raise ParameterError("alpha", "alpha: between 0 and 1")
    # one statement: counts per grid-month over the window and its baseline, each month's baseline
    # summed by a window over the preceding months of the complete (grid × month) series
    rows = conn.execute(sa.text("""
        WITH months AS (
            SELECT generate_series(CAST(:first AS date) - make_interval(months => :b), CAST(:last AS date),
                                   interval '1 month')::date AS month),
        counts AS (
            SELECT grid_code, min(street_code) AS street_code, date_trunc('month', reported_at AT TIME ZONE 'Asia/Shanghai')::date AS month,
                   count(*) AS n
            FROM ib_clues WHERE merged_into IS NULL AND grid_code IS NOT NULL
              AND reported_at >= (CAST(:first AS date) - make_interval(months => :b)) AT TIME ZONE 'Asia/Shanghai'
              AND reported_at < (CAST(:last AS date) + interval '1 month') AT TIME ZONE 'Asia/Shanghai'
            GROUP BY 1, 3),
        grids AS (SELECT grid_code, min(street_code) AS street_code FROM counts GROUP BY 1),
        series AS (
            SELECT g.grid_code, g.street_code, m.month, coalesce(c.n, 0) AS n,
                   coalesce(sum(coalesce(c.n, 0)) OVER (PARTITION BY g.grid_code ORDER BY m.month
                       ROWS BETWEEN :b PRECEDING AND 1 PRECEDING), 0) AS before
            FROM grids g CROSS JOIN months m LEFT JOIN counts c ON c.grid_code = g.grid_code AND c.month = m.month)
        SELECT grid_code, street_code, month, n, before FROM series
        WHERE month >= :first AND n > 0 ORDER BY month, grid_code"""),
        {"first": first, "last": last, "b": baseline_months}).all()
    out = []
    for r in rows:
        lam = (float(r.before) + 0.5) / baseline_months
        p = poisson_tail(int(r.n), lam)
        hot = p < alpha and r.n >= min_count
        if hot or not only_hot:
            out.append(GridMonth(r.grid_code, r.street_code, r.month, int(r.n), float(r.before) / baseline_months,
                                 p, hot))
    return out


def latest_month(conn: Connection) -> str | None:
    """The month (YYYY-MM, city time) of the latest clue: what the viewer shows by default."""
    month = conn.execute(sa.text(
        "SELECT to_char(max(reported_at) AT TIME ZONE 'Asia/Shanghai', 'YYYY-MM') FROM ib_clues")).scalar()
    return month


def hotspot_grids(conn: Connection, month: str, baseline_months: int = 12, alpha: float = 0.01,
                  min_count: int = 3) -> list[dict[str, Any]]:
    """One month's grid-months (see :func:`hotspots`) with their grid's current outline (WGS84 GeoJSON),
    for a choropleth; a grid with no current outline has ``geometry`` None."""
    _month(month, "month")  # the parameter's own name in the error, not hotspots' "from"
    rows = hotspots(conn, month, month, baseline_months, alpha, min_count)
    outlines = dict(conn.execute(sa.text(
        "SELECT grid_code, ST_AsGeoJSON(ST_Transform(geom, 4326), 7) FROM grids "
        "WHERE grid_code = ANY(:g) AND valid_to IS NULL"), {"g": [r.grid_code for r in rows]}).all())
    return [{**r.to_dict(), "geometry": json.loads(outlines[r.grid_code]) if r.grid_code in outlines else None}
            for r in rows]
