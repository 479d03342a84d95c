"""A vector tile's statement reads the partitions of the districts its search box touches only (EXPLAIN), on the
layout of tests/test_district_pruning.py (two districts side by side, parts on both and outside)."""
from __future__ import annotations

import morecantile

from cim.selection import Selection
from tests.test_district_pruning import SRID, city, layers  # noqa: F401 (fixtures: this module's own base)

TMS = morecantile.tms.get("WebMercatorQuad")


def _plan(engine, layer, t: morecantile.Tile) -> str:
    """EXPLAIN of the tile statement as mvt.tile sends it (its parameters, its districts)."""
    from tiles import mvt

    sent: list[tuple[str, dict]] = []
    with engine.connect() as conn:
        execute = conn.exec_driver_sql

        def record(sql, params=None, *args, **kwargs):
            sent.append((sql, params))
            return execute(sql, params, *args, **kwargs)

        conn.exec_driver_sql = record  # type: ignore[method-assign]
        data = mvt.tile(conn, layer, SRID, t.z, t.x, t.y, Selection(), mvt.map_properties(layer))
        conn.exec_driver_sql = execute  # type: ignore[method-assign]
        assert data and len(sent) == 1
        sql, params = sent[0]
        statement = sql.split("; ", 1)[1]  # after the parallel-worker setting
        return "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + statement, params))


def test_a_tile_inside_a_district_reads_its_partition_only(engine, city, layers):  # noqa: F811
    lon, lat = city.lonlat(1500, 1000)  # inside 310101: a z16 tile (~600 m) stays ~900 m from its edges
    plan = _plan(engine, layers["parts"], TMS.tile(lon, lat, 16))
    assert "parts_310101" in plan and "parts_310104" not in plan and "default" not in plan.lower(), plan
    lon, lat = city.lonlat(3000, 1000)  # on the boundary: both districts, and no other partition
    plan = _plan(engine, layers["parts"], TMS.tile(lon, lat, 16))
    assert "parts_310101" in plan and "parts_310104" in plan and "default" not in plan.lower(), plan
