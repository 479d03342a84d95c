"""A first load writes a batch's rows in space-filling-curve order (ingest.geometry.spatial_order), so the rows
of one map tile or items page share heap pages instead of each sitting on its own (issue 15, queries at scale).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import shapely
import sqlalchemy as sa

from ingest.geometry import spatial_order
from ingest.run import IngestOptions, ingest_files


def test_spatial_order_is_a_permutation_with_neighbours_together():
    rng = np.random.default_rng(7)
    xs, ys = rng.uniform(0, 30_000, 20_000), rng.uniform(0, 30_000, 20_000)
    geoms = np.array(list(shapely.points(xs, ys)) + [None], dtype=object)
    order = spatial_order(geoms)
    assert sorted(order.tolist()) == list(range(len(geoms))) and order[-1] == len(geoms) - 1  # missing last
    # the points of a 1 km square (an aligned cell of the curve) lie close together in the new order,
    # not scattered over all of it (in the input order they span ~20,000 positions)
    inside = (xs > 10_000) & (xs < 11_000) & (ys > 10_000) & (ys < 11_000)
    positions = np.flatnonzero(inside[order[:-1]])
    assert len(positions) > 10 and positions.max() - positions.min() < 20 * len(positions)


def test_a_first_load_puts_neighbours_next_to_each_other_on_the_heap(engine, tmp_path: Path):
    # a delivery alternating between two places 5 km apart, as an export sorted by object code would be
    features = []
    for i in range(200):
        lon = 121.40 if i % 2 == 0 else 121.45
        features.append({"type": "Feature", "properties": {"source_id": f"P{i}", "subclass_code": "0101",
                                                           "name": "井盖", "z": 1.0},
                         "geometry": {"type": "Point", "coordinates": [lon + 0.00001 * i, 31.21]}})
    district = {"type": "Polygon", "coordinates": [[[121.39, 31.20], [121.47, 31.20], [121.47, 31.22],
                                                    [121.39, 31.22], [121.39, 31.20]]]}
    (tmp_path / "districts.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"code": "310104", "name": "徐汇区"}, "geometry": district}]}),
        encoding="utf-8")
    ingest_files("districts", [tmp_path / "districts.geojson"], IngestOptions(crs="EPSG:4326"), engine)
    path = tmp_path / "parts.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}), encoding="utf-8")
    report = ingest_files("parts", [path], IngestOptions(crs="EPSG:4326"), engine)
    assert report.inserted == len(features), report
    with engine.connect() as conn:
        on_heap = conn.execute(sa.text("SELECT source_id FROM parts ORDER BY tableoid::regclass::text, ctid")).scalars().all()
    assert sorted(on_heap) == sorted(f["properties"]["source_id"] for f in features)
    place = [int(s[1:]) % 2 for s in on_heap]
    assert sum(a != b for a, b in zip(place, place[1:])) == 1  # one place after the other (199 changes before)
