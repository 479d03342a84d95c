"""A tiny synthetic city, written with SQL, for the grid lookup, proximity and API tests.

Layout in the storage CRS (EPSG:4549, metres), origin (X0, Y0) near People's Square:

    district 310101 黄浦区          [X0, X0+3000] x [Y0, Y0+2000]
      street 310101001 南京东路街道  [X0, X0+1500] x [Y0, Y0+2000]
        community 310101001001 A    [X0, X0+1500] x [Y0, Y0+1000]  with three grids side by side:
          grid 31010100100101      [X0,      X0+500]   posts P-01 and P-02
          grid 31010100100102      [X0+500,  X0+1000]  post P-01   (shares the edge x = X0+500 with …01)
          grid 31010100100103      [X0+1000, X0+1500]  no post
        community 310101001002 B    [X0, X0+1500] x [Y0+1000, Y0+2000]  with no grid
      street 310101002 外滩街道      [X0+1500, X0+3000] x [Y0, Y0+2000]  with no community

The grids are inserted in reverse code order so "first row wins" and "smallest code wins" differ.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import sqlalchemy as sa

from cim.crs import transform_coords

SRID = 4549
DISTRICT = ("310101", "黄浦区")
STREETS = [("310101001", "南京东路街道", 0, 0, 1500, 2000), ("310101002", "外滩街道", 1500, 0, 3000, 2000)]
COMMUNITIES = [("310101001001", "社区A", "310101001", 0, 0, 1500, 1000),
               ("310101001002", "社区B", "310101001", 0, 1000, 1500, 2000)]
GRIDS = [("31010100100101", "网格一", 0, 0, 500, 1000), ("31010100100102", "网格二", 500, 0, 1000, 1000),
         ("31010100100103", "网格三", 1000, 0, 1500, 1000)]


@dataclass(frozen=True)
class City:
    x0: float
    y0: float

    def at(self, dx: float, dy: float) -> tuple[float, float]:
        """Storage coordinates of an offset from the origin."""
        return self.x0 + dx, self.y0 + dy

    def lonlat(self, dx: float, dy: float) -> tuple[float, float]:
        """WGS84 lon/lat of an offset from the origin."""
        lon, lat, _ = transform_coords(self.x0 + dx, self.y0 + dy, None, f"EPSG:{SRID}", "EPSG:4326")
        return float(lon), float(lat)


def origin() -> City:
    x, y, _ = transform_coords(121.47, 31.23, None, "EPSG:4326", f"EPSG:{SRID}")
    return City(round(float(x), -2), round(float(y), -2))


def _box(city: City, x0: float, y0: float, x1: float, y1: float) -> str:
    ax, ay = city.at(x0, y0)
    bx, by = city.at(x1, y1)
    return f"MULTIPOLYGON Z ((({ax} {ay} 0, {bx} {ay} 0, {bx} {by} 0, {ax} {by} 0, {ax} {ay} 0)))"


def build_hierarchy(conn: sa.Connection) -> City:
    """Districts, streets, communities, grids and the responsibility chain (see module doc)."""
    city = origin()
    geom = "ST_GeomFromText(:wkt, 4549)"
    code, name = DISTRICT
    conn.execute(sa.text(f"INSERT INTO districts (source_id, code, name, geom) VALUES (:c, :c, :n, {geom})"),
                 {"c": code, "n": name, "wkt": _box(city, 0, 0, 3000, 2000)})
    for code, name, *box in STREETS:
        conn.execute(sa.text(f"INSERT INTO streets (source_id, code, name, district_code, geom) "
                             f"VALUES (:c, :c, :n, '310101', {geom})"), {"c": code, "n": name, "wkt": _box(city, *box)})
    for code, name, street, *box in COMMUNITIES:
        conn.execute(sa.text(f"INSERT INTO communities (source_id, code, name, street_code, geom) "
                             f"VALUES (:c, :c, :n, :s, {geom})"),
                     {"c": code, "n": name, "s": street, "wkt": _box(city, *box)})
    for code, name, *box in reversed(GRIDS):
        conn.execute(sa.text(
            f"INSERT INTO grids (source_id, grid_code, name, community_code, street_code, district_code, geom) "
            f"VALUES (:c, :c, :n, '310101001001', '310101001', '310101', {geom})"),
            {"c": code, "n": name, "wkt": _box(city, *box)})
    conn.execute(sa.text(
        "INSERT INTO departments (code, name, handles) VALUES "
        "('CGJ', '城管执法局', ARRAY['01','0101']), ('LHJ', '绿化市容局', ARRAY['04'])"))
    conn.execute(sa.text(
        "INSERT INTO posts (code, name, department_id) VALUES "
        "('P-01', '网格监督员', (SELECT id FROM departments WHERE code = 'CGJ')), "
        "('P-02', '绿化养护岗', (SELECT id FROM departments WHERE code = 'LHJ'))"))
    conn.execute(sa.text(
        "INSERT INTO persons (name, contact) VALUES ('张三', '13800000001'), ('李四', '13800000002'), "
        "('王五', '13800000003')"))
    conn.execute(sa.text(
        "INSERT INTO post_persons (post_id, person_id) SELECT p.id, pe.id FROM posts p, persons pe "
        "WHERE (p.code, pe.name) IN (('P-01', '张三'), ('P-01', '李四'), ('P-02', '王五'))"))
    conn.execute(sa.text(
        "INSERT INTO grid_posts (grid_code, post_id) SELECT g, p.id FROM posts p, "
        "(VALUES ('31010100100101', 'P-01'), ('31010100100101', 'P-02'), ('31010100100102', 'P-01')) AS v(g, c) "
        "WHERE p.code = v.c"))
    return city


def build_features(conn: sa.Connection, city: City) -> None:
    """A few rows in every other layer (and some readings), all inside grid …01."""
    def point(dx: float, dy: float, z: float = 0.0) -> str:
        x, y = city.at(dx, dy)
        return f"POINT Z ({x} {y} {z})"

    g = "ST_GeomFromText(:wkt, 4549)"
    for i in range(3):
        conn.execute(sa.text(
            f"INSERT INTO parts (source_id, object_code, part_class, part_subclass, name, geom, grid_code) "
            f"VALUES (:s, :oc, '01', '0101', :n, {g}, '31010100100101')"),
            {"s": f"part-{i}", "oc": f"310101010100000{i}", "n": f"上水井盖{i}", "wkt": point(100 + 10 * i, 100)})
        conn.execute(sa.text(
            f"INSERT INTO addresses (source_id, road, door_number, standard_address, geom) "
            f"VALUES (:s, '南京东路', :d, :a, {g})"),
            {"s": f"addr-{i}", "d": f"{i + 1}号", "a": f"上海市黄浦区南京东路{i + 1}号", "wkt": point(120, 110 + 5 * i)})
    ax, ay = city.at(100, 150)
    bx, by = city.at(300, 150)
    conn.execute(sa.text(
        f"INSERT INTO pipelines (source_id, kind, diameter_mm, start_depth, end_depth, geom) "
        f"VALUES ('pipe-gas', '燃气', 200, 5, 5, {g})"), {"wkt": f"LINESTRING Z ({ax} {ay} -5, {bx} {by} -5)"})
    conn.execute(sa.text(
        f"INSERT INTO buildings (source_id, name, height, floors, geom) VALUES ('bldg-1', '测试大楼', 30, 10, {g})"),
        {"wkt": _box(city, 200, 200, 240, 240)})
    conn.execute(sa.text(
        f"INSERT INTO curtain_walls (source_id, building_source_id, glass_type, support_type, geom) "
        f"VALUES ('cw-1', 'bldg-1', '中空玻璃', '隐框', {g})"), {"wkt": _box(city, 200, 200, 240, 240)})
    quantities = [{"name": "water_level", "unit": "m", "alarm_high": 1.5, "alarm_low": 0.1}]
    conn.execute(sa.text(
        f"INSERT INTO iot_devices (source_id, device_type, name, quantities, geom) "
        f"VALUES ('dev-1', '水位计', '积水监测点', CAST(:q AS jsonb), {g})"),
        {"q": json.dumps(quantities), "wkt": point(150, 150)})
    conn.execute(sa.text(
        "INSERT INTO iot_readings (device_id, time, quantity, value) "
        "SELECT 'dev-1', now() - make_interval(hours => h), 'water_level', h / 10.0 "
        "FROM generate_series(1, 48) AS h"))
