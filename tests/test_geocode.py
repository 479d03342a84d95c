"""Geocoding cascade, reverse geocoding, batch and CLI (issue 4) on a real PostGIS.

The base is the sample city (徐汇区: 13 streets, 56 communities, 60 grids with their posts, 2,129
addresses, loaded with the real loader), plus two small districts written with SQL so that a road
exists in two districts (虹桥路 in 徐汇区 and 长宁区) and an old district name has a target
(闸北区 → 静安区, with 共和新路). Expected answers come from the loaded data, not from constants.
"""
from __future__ import annotations

import csv
import io
import json
import math

import cn2an
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cim.crs import transform_coords
from cim.gazetteer import geocode, geocode_csv, geocode_many, reverse
from cim.gazetteer.batch import ADDED_COLUMNS
from cim.gazetteer.geocode import MATCH_LEVELS
from cim.gazetteer.normalize import normalize
from cim.grid import lookup_points
from tests.conftest import PROJECT, run_cim, shared_path

SAMPLES = PROJECT / "data_samples"
SRID = 4549
_LAYERS = ("districts", "streets", "communities", "grids", "responsibility", "addresses")
_GAZETTEER_TABLES = ("districts", "streets", "communities", "grids", "addresses")

# Two extra districts, as squares (lon/lat WGS84) away from the sample's 徐汇区.
CHANGNING = ("310105", "长宁区", "310105001", "虹桥街道", (121.33, 31.20, 121.38, 31.22))
JINGAN = ("310106", "静安区", "310106018", "共和新路街道", (121.44, 31.26, 121.47, 31.28))
HONGQIAO_DOORS = range(2000, 2100)  # 虹桥路 in 长宁区: doors 2000–2099, odd north, even south
GONGHE_DOORS = range(3000, 3100, 2)  # 共和新路 in 静安区 (even side) and lane 3088, houses 1–6


def bump_versions(conn: sa.Connection, tables=_GAZETTEER_TABLES) -> None:
    """What every loader does after changing a layer: caches key on it."""
    conn.execute(sa.text("UPDATE layers SET version = version + 1, updated_at = now() "
                         "WHERE table_name = ANY(:t)"), {"t": list(tables)})


def _storage(lon: float, lat: float) -> tuple[float, float]:
    x, y, _ = transform_coords(lon, lat, None, "EPSG:4326", f"EPSG:{SRID}")
    return float(x), float(y)


def _square(bbox) -> str:
    (x0, y0), (x1, y1) = _storage(bbox[0], bbox[1]), _storage(bbox[2], bbox[3])
    return f"MULTIPOLYGON Z ((({x0} {y0} 0, {x1} {y0} 0, {x1} {y1} 0, {x0} {y1} 0, {x0} {y0} 0)))"


def _add_district(conn: sa.Connection, district, addresses: list[dict]) -> None:
    code, name, street_code, street_name, bbox = district
    geom = "ST_GeomFromText(:wkt, 4549)"
    community, grid = street_code + "001", street_code + "001001"
    p = {"d": code, "n": name, "s": street_code, "sn": street_name, "c": community, "g": grid, "wkt": _square(bbox)}
    conn.execute(sa.text(f"INSERT INTO districts (source_id, code, name, geom) VALUES (:d, :d, :n, {geom})"), p)
    conn.execute(sa.text(f"INSERT INTO streets (source_id, code, name, district_code, geom) "
                         f"VALUES (:s, :s, :sn, :d, {geom})"), p)
    conn.execute(sa.text(f"INSERT INTO communities (source_id, code, name, street_code, geom) "
                         f"VALUES (:c, :c, :sn || '一居委会', :s, {geom})"), p)
    conn.execute(sa.text(f"INSERT INTO grids (source_id, grid_code, name, community_code, street_code, district_code, "
                         f"geom) VALUES (:g, :g, :sn || '第1网格', :c, :s, :d, {geom})"), p)
    for a in addresses:
        conn.execute(sa.text(
            "INSERT INTO addresses (source_id, city, district, road, door_number, lane, building_no, room, door_int, "
            "standard_address, address_code, district_code, street_code, community_code, grid_code, geom) "
            "VALUES (:source_id, '上海市', :n, :road, :door, :lane, :building, :room, :door_int, :standard, "
            ":source_id, :d, :s, :c, :g, ST_SetSRID(ST_MakePoint(:x, :y, 0), 4549))"), {**p, **a})


def _extra_addresses(district, road: str, doors, lane: str | None = None) -> list[dict]:
    code, name, *_, bbox = district
    x0, y0 = _storage(bbox[0] + 0.005, (bbox[1] + bbox[3]) / 2)
    rows = []
    for n in doors:  # 4 m per number along x, odd 12 m north of the centre line, even 12 m south
        rows.append({"source_id": f"{code}-{road}-{n}", "road": road, "door": str(n), "lane": None,
                     "building": None, "room": None, "door_int": n, "standard": f"上海市{name}{road}{n}号",
                     "x": x0 + (n - doors[0]) * 4.0, "y": y0 + (12.0 if n % 2 else -12.0)})
    if lane:
        lx = x0 + (int(lane) - doors[0]) * 4.0
        for house in range(1, 7):
            for room in (None, "1201"):
                text = f"上海市{name}{road}{lane}弄{house}号" + (f"{room}室" if room else "")
                rows.append({"source_id": f"{code}-{road}-{lane}-{house}-{room}", "road": road, "door": None,
                             "lane": lane, "building": str(house), "room": room, "door_int": None,
                             "standard": text, "x": lx + house * 3.0, "y": y0 - 40.0 - house * 10.0})
    return rows


def load_city(engine) -> None:
    """The sample city through the real loader, plus 长宁区 and 静安区 squares written with SQL."""
    from ingest.run import IngestOptions, ingest_files

    manifest = json.loads((SAMPLES / "manifest.json").read_text(encoding="utf-8"))
    for e in manifest:
        if e["layer"] not in _LAYERS:
            continue
        options = IngestOptions(crs=e["crs"], encoding=e["encoding"], layer_name=e["layer_name"], x=e["x"],
                                y=e["y"], z=e["z"], wkt=e["wkt"], address_column=e["address_column"],
                                mapping=e["map"] or {})
        ingest_files(e["layer"], [SAMPLES / e["path"]], options, engine)
    with engine.begin() as conn:
        _add_district(conn, CHANGNING, _extra_addresses(CHANGNING, "虹桥路", HONGQIAO_DOORS))
        _add_district(conn, JINGAN, _extra_addresses(JINGAN, "共和新路", GONGHE_DOORS, lane="3088"))
        bump_versions(conn)


@pytest.fixture(scope="module")
def city(engine):
    load_city(engine)
    return engine


@pytest.fixture(scope="module")
def sample_rows() -> list[dict]:
    with (SAMPLES / "xuhui" / "addresses_gcj02.csv").open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _query(row: dict) -> str:
    text = f"上海市徐汇区{row['road']}"
    if row["lane"]:
        text += f"{row['lane']}弄{row['building_no']}号"
        text += f"{row['unit']}单元" if row["unit"] else ""
        text += f"{row['room']}室" if row["room"] else ""
    else:
        text += f"{row['door_number']}号"
    return text


def _gc(city, text: str, crs: str = "EPSG:4326"):
    with city.connect() as conn:
        return geocode(conn, text, crs)


def _metres(a: tuple[float, float], b: tuple[float, float], crs: str = "EPSG:4326", crs_b: str | None = None) -> float:
    """Distance in metres between a (in crs) and b (in crs_b, default the same)."""
    (ax, ay), (bx, by) = (transform_coords(p[0], p[1], None, c, f"EPSG:{SRID}")[:2]
                          for p, c in ((a, crs), (b, crs_b or crs)))
    return math.hypot(float(ax) - float(bx), float(ay) - float(by))


def _covering(city, table: str, code_column: str, lon: float, lat: float) -> list[str]:
    with city.connect() as conn:
        return list(conn.execute(sa.text(
            f"SELECT {code_column} FROM {table} WHERE valid_to IS NULL AND "
            "ST_Covers(geom, ST_Transform(ST_SetSRID(ST_MakePoint(:x, :y), 4326), 4549))"),
            {"x": lon, "y": lat}).scalars())


# --- door, lane, building -------------------------------------------------------------------

def test_exact_doors_and_lane_buildings_land_on_the_address(city, sample_rows):
    """Every sample address, asked as written in the standard form, is its own gazetteer entry:
    level door, score 1, within 0.5 m of the delivered GCJ-02 point."""
    rows = sample_rows
    with city.connect() as conn:
        answers = geocode_many(conn, [_query(r) for r in rows], "gcj02")
    assert {a.match_level for a in answers} == {"door"}
    assert all(a.score == 1.0 and not a.ambiguous for a in answers)
    worst = max(_metres((a.x, a.y), (float(r["lon"]), float(r["lat"])), "gcj02") for a, r in zip(answers, rows))
    assert worst < 0.5
    lanes = [(a, r) for a, r in zip(answers, rows) if r["lane"]]
    assert len(lanes) > 500
    for a, r in lanes[:50]:
        assert a.entry is not None and (a.entry.lane, a.entry.building) == (r["lane"], r["building_no"])
        assert a.standard_address == a.entry.standard_address  # the room is an entry too


def test_room_not_in_gazetteer_keeps_the_building(city, sample_rows):
    r = next(r for r in sample_rows if r["lane"] and r["room"])
    answer = _gc(city, f"{r['road']}{r['lane']}弄{r['building_no']}号9999室")
    assert (answer.match_level, answer.score) == ("door", 1.0)
    assert answer.standard_address == f"上海市徐汇区{r['road']}{r['lane']}弄{r['building_no']}号9999室"
    same_building = _gc(city, _query(r))
    assert (answer.x, answer.y) == (same_building.x, same_building.y)


def test_every_answer_carries_the_grid_assignment(city, sample_rows):
    """A door answer's assignment equals the grid lookup at its point, responsibility included."""
    with city.connect() as conn:
        answers = geocode_many(conn, [_query(r) for r in sample_rows[::20]])
        looked_up = lookup_points(conn, [a.x for a in answers], [a.y for a in answers], "EPSG:4326")
    for a, expected in zip(answers, looked_up):
        assert a.assignment.to_dict() == expected.to_dict()
        assert a.assignment.grid is not None and a.assignment.responsibility
    full = answers[0].to_dict()["assignment"]
    assert {"district", "street", "community", "grid", "responsibility"} <= set(full)
    assert full["responsibility"][0]["persons"]


def test_assignment_after_an_area_reload_is_looked_up_again(city, sample_rows):
    """When grids were loaded after the addresses, stored codes may be stale: the lookup answers."""
    q = _query(sample_rows[0])
    before = _gc(city, q).assignment.to_dict()
    with city.begin() as conn:
        bump_versions(conn, ("grids",))
    after = _gc(city, q)
    assert after.assignment.to_dict() == before
    with city.begin() as conn:
        bump_versions(conn, ("addresses",))


def test_address_alias(city, sample_rows):
    r = next(r for r in sample_rows if not r["lane"])
    target = _gc(city, _query(r))
    with city.begin() as conn:
        conn.execute(sa.text("INSERT INTO address_aliases (address_feature_id, alias, kind) VALUES (:f, :a, 'alias')"),
                     {"f": target.entry.feature_id, "a": "徐汇测试大礼堂"})
    answer = _gc(city, "徐汇测试大礼堂")
    assert answer.match_level == "door" and answer.entry.feature_id == target.entry.feature_id
    assert (answer.x, answer.y) == (target.x, target.y)


# --- interpolation --------------------------------------------------------------------------

def _number_lines(city) -> dict[tuple[str, int], list[tuple[int, str, float, float]]]:
    """Per (road, parity): (number, kind, x, y) of the doors and lane centroids of 徐汇区."""
    lines: dict[tuple[str, int], dict[int, list]] = {}
    with city.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT road, door_int, substring(lane from '^[0-9]+')::int, ST_X(geom), ST_Y(geom) FROM addresses "
            "WHERE valid_to IS NULL AND district_code = '310104' AND road IS NOT NULL")).all()
    for road, door, lane, x, y in rows:
        n, kind = (door, "door") if lane is None else (lane, "lane")
        if n is None:
            continue
        lines.setdefault((road, n % 2), {}).setdefault(n, []).append((kind, x, y))
    out = {}
    for key, numbers in lines.items():
        out[key] = [(n, pts[0][0], sum(p[1] for p in pts) / len(pts), sum(p[2] for p in pts) / len(pts))
                    for n, pts in sorted(numbers.items()) if len({p[0] for p in pts}) == 1]
    return out


def _on_segment(p, a, b) -> tuple[float, float]:
    """(t along a→b, distance from the line) of point p."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    t = ((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / (dx * dx + dy * dy)
    return t, abs((p[0] - a[0]) * dy - (p[1] - a[1]) * dx) / math.hypot(dx, dy)


def test_removed_door_is_interpolated_between_its_neighbours(city):
    """Close a door (as a reload would), ask for it: it is placed between the nearest known numbers
    of its side, at the proportional position, and near where it really was."""
    lines = _number_lines(city)
    cases = []
    for (road, parity), seq in sorted(lines.items()):
        for lo, mid, hi in zip(seq, seq[1:], seq[2:]):
            if {lo[1], mid[1], hi[1]} == {"door"}:
                cases.append((road, lo, mid, hi))
                break
        if len(cases) == 6:
            break
    assert len(cases) == 6
    with city.begin() as conn:
        for road, _, mid, _ in cases:
            conn.execute(sa.text("UPDATE addresses SET valid_to = now() WHERE valid_to IS NULL AND road = :r "
                                 "AND door_number = :d"), {"r": road, "d": str(mid[0])})
        bump_versions(conn, ("addresses",))
    try:
        with city.connect() as conn:
            answers = geocode_many(conn, [f"徐汇区{road}{mid[0]}号" for road, _, mid, _ in cases], f"EPSG:{SRID}")
        for (road, lo, mid, hi), a in zip(cases, answers):
            assert a.match_level == "interpolated", (road, mid, a.reason)
            t, off = _on_segment((a.x, a.y), lo[2:], hi[2:])
            assert off < 0.01 and t == pytest.approx((mid[0] - lo[0]) / (hi[0] - lo[0]), abs=1e-6)
            assert math.hypot(a.x - mid[2], a.y - mid[3]) < 25.0  # the synthetic roads bend gently
            assert 0.6 <= a.score < 1.0 and f"between {lo[0]} and {hi[0]}" in a.reason
    finally:
        with city.begin() as conn:
            for road, _, mid, _ in cases:
                conn.execute(sa.text("UPDATE addresses SET valid_to = NULL WHERE road = :r AND door_number = :d "
                                     "AND valid_to IS NOT NULL"), {"r": road, "d": str(mid[0])})
            bump_versions(conn, ("addresses",))
    assert _gc(city, f"徐汇区{cases[0][0]}{cases[0][2][0]}号").match_level == "door"  # the cache refreshed


def test_odd_and_even_numbers_land_on_their_own_side(city):
    lines = _number_lines(city)
    road = next(r for (r, parity) in sorted(lines) if parity == 0 and len(lines[(r, 0)]) > 6
                and len(lines.get((r, 1), [])) > 6)
    evens, odds = lines[(road, 0)], lines[(road, 1)]
    known = {n for n, *_ in evens + odds}
    lo = max(evens[0][0], odds[0][0])
    hi = min(evens[-1][0], odds[-1][0])
    n_even = next(n for n in range(lo + (lo % 2), hi, 2) if n not in known and n + 1 not in known)
    with city.connect() as conn:
        even, odd = geocode_many(conn, [f"徐汇区{road}{n_even}号", f"徐汇区{road}{n_even + 1}号"], f"EPSG:{SRID}")
    assert even.match_level == odd.match_level == "interpolated"
    assert "even side" in even.reason and "odd side" in odd.reason

    def segment(seq, n):
        i = next(i for i, s in enumerate(seq) if s[0] > n)
        return seq[i - 1][2:], seq[i][2:]

    assert _on_segment((even.x, even.y), *segment(evens, n_even))[1] < 0.01
    assert _on_segment((odd.x, odd.y), *segment(odds, n_even + 1))[1] < 0.01
    # the two sides of the road are apart, so consecutive numbers are too
    assert math.hypot(even.x - odd.x, even.y - odd.y) > 3.0


def test_number_beyond_the_known_ones_goes_to_the_nearest_end(city):
    last = max(HONGQIAO_DOORS)
    near = _gc(city, f"长宁区虹桥路{last + 6}号", f"EPSG:{SRID}")
    at_last = _gc(city, f"长宁区虹桥路{last}号", f"EPSG:{SRID}")
    assert near.match_level == "interpolated" and near.score == 0.65 and str(last) in near.reason
    assert (near.x, near.y) == (at_last.x, at_last.y)
    far = _gc(city, f"长宁区虹桥路{last + 1000}号", f"EPSG:{SRID}")
    assert far.match_level == "road" and far.score < 0.6 and (far.x, far.y) == (at_last.x, at_last.y)


# --- road, community, street, district -------------------------------------------------------

def test_road_level_is_an_address_point_of_the_road(city):
    a = _gc(city, "徐汇区田林路", f"EPSG:{SRID}")
    assert (a.match_level, a.score) == ("road", 0.6)
    with city.connect() as conn:
        nearest = conn.execute(sa.text(
            "SELECT min(ST_Distance(geom, ST_SetSRID(ST_MakePoint(:x, :y), 4549))) FROM addresses "
            "WHERE valid_to IS NULL AND road = '田林路'"), {"x": a.x, "y": a.y}).scalar()
    assert nearest < 0.01
    assert a.assignment.grid is not None


def test_crossing_of_two_roads(city):
    a = _gc(city, "漕溪北路与中山南二路交叉口")
    assert a.match_level == "road" and "crossing" in a.reason
    assert a.assignment.district.code == "310104"


@pytest.mark.parametrize("level, table, column", [("community", "communities", "code"),
                                                  ("street", "streets", "code")])
def test_area_fallback_is_inside_the_area(city, level, table, column):
    with city.connect() as conn:
        code, name = conn.execute(sa.text(f"SELECT {column}, name FROM {table} WHERE valid_to IS NULL "
                                          "AND code LIKE '310104%' ORDER BY code LIMIT 1")).one()
    a = _gc(city, f"徐汇区{name}")
    assert a.match_level == level and a.score == {"community": 0.5, "street": 0.4}[level]
    assert _covering(city, table, column, a.x, a.y) == [code]
    assert getattr(a.assignment, level).code == code
    assert a.assignment.district.code == "310104"


def test_unknown_road_falls_back_to_the_district(city):
    a = _gc(city, "上海徐汇区太原路150号")  # 太原路 is not in the sample
    assert (a.match_level, a.score) == ("district", 0.3)
    assert _covering(city, "districts", "code", a.x, a.y) == ["310104"]
    assert any("太原路 is not in the gazetteer" in n for n in a.notes)
    assert a.assignment.district.code == "310104" and a.assignment.grid is None


def test_community_with_one_grid_names_it_and_its_people(city):
    with city.connect() as conn:
        code, name = conn.execute(sa.text(
            "SELECT c.code, c.name FROM communities c JOIN grids g ON g.community_code = c.code "
            "WHERE c.code LIKE '310104%' GROUP BY c.code, c.name HAVING count(*) = 1 ORDER BY c.code LIMIT 1")).one()
    a = _gc(city, f"徐汇区{name}")
    assert a.match_level == "community"
    assert a.assignment.grid.code.startswith(code) and a.assignment.responsibility


# --- districts: never crossed, ambiguity, history, other provinces ------------------------------

def test_named_district_is_never_crossed(city):
    # 虹桥路 100号 exists only in 徐汇区's numbering, 2050号 only in 长宁区's
    cn = _gc(city, "上海市长宁区虹桥路100号")
    assert cn.assignment.district.code == "310105" and cn.match_level in ("interpolated", "road")
    assert _covering(city, "districts", "code", cn.x, cn.y) == ["310105"]
    xh = _gc(city, "上海市徐汇区虹桥路2050号")
    assert xh.assignment.district.code == "310104"
    assert _covering(city, "districts", "code", xh.x, xh.y) == ["310104"]
    # a district we do not hold is not replaced by one we do
    other = _gc(city, "上海市黄浦区田林路574号")
    assert other.match_level == "none" and "黄浦区" in other.reason


def test_road_in_two_districts_is_ambiguous_with_candidates(city):
    a = _gc(city, "虹桥路100号")
    assert a.ambiguous and len(a.candidates) == 2
    assert {c.district_code for c in a.candidates} == {"310104", "310105"}
    assert all(c.x is not None and c.standard_address for c in a.candidates)
    assert a.score == pytest.approx(a.candidates[0].score / 2, abs=1e-3)
    assert "长宁区" in a.reason and "徐汇区" in a.reason
    # the door exists in one of them only: that settles it
    b = _gc(city, "虹桥路2050号")
    assert not b.ambiguous and b.match_level == "door" and b.assignment.district.code == "310105"


def test_historical_district_name(city):
    a = _gc(city, "上海市闸北区共和新路3088弄5号1201室")
    assert (a.match_level, a.score) == ("door", 1.0)
    assert a.standard_address == "上海市静安区共和新路3088弄5号1201室"
    assert a.assignment.district.code == "310106"
    assert any("闸北区" in n for n in a.notes)


def test_address_in_another_province_is_not_placed(city):
    a = _gc(city, "浙江舟山普陀区东港路1号")
    assert a.match_level == "none" and a.x is None and a.score == 0
    assert "浙江" in a.reason and "上海" in a.reason


@pytest.mark.parametrize("clean, messy", [
    ("徐汇区田林路574号", "徐汇区田林路５７４號"),
    ("徐汇区田林路574号", "徐匯區田林路五百七十四號"),
    ("徐汇区田林路574号", "上海 徐汇 田林路 574号 附近"),
    ("上海市静安区共和新路3088弄5号1201室", "上海市閘北區共和新路三〇八八弄五号一二〇一室"),
    ("上海市静安区共和新路3088弄5号1201室", "上海市闸北区共和新路3088弄5-1201"),
])
def test_spelling_variants_give_the_same_answer(city, clean, messy):
    a, b = _gc(city, clean), _gc(city, messy)
    assert (b.match_level, b.score, b.x, b.y, b.standard_address) == (a.match_level, a.score, a.x, a.y,
                                                                      a.standard_address)
    assert a.match_level == "door"


_WIDE = {ord(c): ord(c) + 0xFEE0 for c in "0123456789"}


@st.composite
def _spelling(draw, row: dict) -> str:
    """One way a caller might write the sample address ``row``."""
    number = lambda n: cn2an.an2cn(n, "low") if draw(st.booleans()) else n  # noqa: E731
    city = draw(st.sampled_from(["", "上海", "上海市", "沪", "中国上海市"]))
    district = draw(st.sampled_from(["徐汇区", "徐汇", "徐匯區", "徐汇区 "]))
    if row["lane"]:
        if row["room"] and not row["unit"] and draw(st.booleans()):
            numbers = f"{row['lane']}弄{row['building_no']}-{row['room']}"  # 58弄11-802
        else:
            numbers = (f"{number(row['lane'])}弄{number(row['building_no'])}号"
                       + (f"{number(row['unit'])}单元" if row["unit"] else "")
                       + (f"{row['room']}室" if row["room"] else ""))
    else:
        numbers = f"{number(row['door_number'])}" + draw(st.sampled_from(["号", "號"]))
    if draw(st.booleans()):
        numbers = numbers.translate(_WIDE)
    tail = draw(st.sampled_from(["", "附近", "对面", "（近地铁站）", " 旁边"]))
    space = draw(st.sampled_from(["", " ", "　"]))
    return f"{city}{district}{space}{row['road']}{space}{numbers}{tail}"


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_every_spelling_of_an_entry_resolves_to_it(city, sample_rows, data):
    row = sample_rows[data.draw(st.integers(0, len(sample_rows) - 1))]
    text = data.draw(_spelling(row))
    clean, messy = _gc(city, _query(row)), _gc(city, text)
    assert messy.match_level == "door" and messy.score == 1.0, (text, messy.reason)
    assert messy.entry.feature_id == clean.entry.feature_id, text


_FRAGMENTS = ["上海", "沪", "徐汇区", "徐匯區", "闸北区", "田林路", "虹桥路", "1", "58", "150", "１５０", "七百七十七",
              "一〇一", "第三", "号", "號", "弄", "支弄", "室", "楼", "層", "单元", "栋", "-", "－", "~", "#", "、", ",",
              "，", " ", "　", "(", ")", "（", "）", "【", "】", "附近", "对面", "旁", "路口", "交叉口", "与", "A", "B1",
              "200001", "地址:", ";", "/", "华亭大楼", "小区", "大厦", "甲"]


@settings(max_examples=2000, deadline=None, derandomize=True, database=None)
@given(st.one_of(st.lists(st.sampled_from(_FRAGMENTS), max_size=12).map("".join), st.text(max_size=30)))
def test_normalisation_is_idempotent(text):
    once = normalize(text).text
    assert normalize(once).text == once


def test_empty_and_bad_queries(city):
    from cim.errors import UserError

    for bad in ("", "   ", "路" * 600):
        with pytest.raises(UserError):
            _gc(city, bad)
    with city.connect() as conn:
        answers = geocode_many(conn, ["", None, "路" * 600, "徐汇区"])
    assert [a.match_level for a in answers] == ["none", "none", "none", "district"]
    assert answers[0].reason == "empty address"


# --- output CRSs -----------------------------------------------------------------------------

def test_output_crs(city, sample_rows):
    r = next(r for r in sample_rows if not r["lane"])
    q = _query(r)
    gcj = _gc(city, q, "gcj02")
    assert _metres((gcj.x, gcj.y), (float(r["lon"]), float(r["lat"])), "gcj02") < 0.5
    wgs = _gc(city, q)
    assert _metres((wgs.x, wgs.y), (gcj.x, gcj.y)) > 100  # same numbers read as WGS84: GCJ-02's offset
    assert _metres((wgs.x, wgs.y), (gcj.x, gcj.y), "EPSG:4326", "gcj02") < 0.5
    bd = _gc(city, q, "bd09")
    assert _metres((bd.x, bd.y), (wgs.x, wgs.y), "bd09", "EPSG:4326") < 0.5
    cgcs = _gc(city, q, "EPSG:4490")
    assert _metres((cgcs.x, cgcs.y), (wgs.x, wgs.y), "EPSG:4490", "EPSG:4326") < 0.5
    storage = _gc(city, q, f"EPSG:{SRID}").to_dict()
    assert "x" in storage and "lon" not in storage
    with city.connect() as conn:
        x, y = conn.execute(sa.text("SELECT ST_X(geom), ST_Y(geom) FROM addresses WHERE feature_id = :f"),
                            {"f": wgs.entry.feature_id}).one()
    assert math.hypot(storage["x"] - x, storage["y"] - y) < 0.01


# --- reverse ---------------------------------------------------------------------------------

def test_reverse_within_radius(city, sample_rows):
    r = next(r for r in sample_rows if r["lane"])
    lon, lat = float(r["lon"]), float(r["lat"])
    with city.connect() as conn:
        answer = reverse(conn, lon + 0.00003, lat, "gcj02", 100)  # ~3 m east
    assert answer.address is not None and 1 < answer.address.distance_m < 5
    assert answer.address.building_address == f"上海市徐汇区{r['road']}{r['lane']}弄{r['building_no']}号"
    assert _metres((answer.address.x, answer.address.y), (lon, lat), "gcj02") < 0.5
    d = answer.to_dict()
    assert d["found"] and d["query"]["crs"] == "gcj02" and d["assignment"]["grid"]["code"]


def test_reverse_outside_radius_finds_nothing_but_still_assigns(city):
    with city.connect() as conn:
        x, y = conn.execute(sa.text(
            "SELECT ST_X(p), ST_Y(p) FROM (SELECT ST_PointOnSurface(geom) AS p FROM districts "
            "WHERE code = '310105') s")).one()
        nearest = conn.execute(sa.text("SELECT min(ST_Distance(geom, ST_SetSRID(ST_MakePoint(:x, :y), 4549))) "
                                       "FROM addresses WHERE valid_to IS NULL"), {"x": x, "y": y}).scalar()
        near = reverse(conn, x, y, f"EPSG:{SRID}", nearest - 1)
        far = reverse(conn, x, y, f"EPSG:{SRID}", min(nearest + 1, 2000))
    assert near.address is None and near.assignment.district.code == "310105"
    assert far.address is not None and far.address.distance_m == pytest.approx(nearest, abs=0.01)


def test_reverse_at_a_grid_boundary_takes_the_smaller_code(city):
    """A vertex shared by neighbouring grids is covered by all of them: the smallest code answers,
    as it does for the grid lookup and the loaders' enrichment."""
    with city.connect() as conn:
        x, y = conn.execute(sa.text(
            "SELECT ST_X(p), ST_Y(p) FROM grids g1 JOIN grids g2 ON g1.grid_code < g2.grid_code "
            "AND ST_Touches(g1.geom, g2.geom) "
            "CROSS JOIN LATERAL (SELECT (ST_DumpPoints(ST_Intersection(g1.geom, g2.geom))).geom AS p) s "
            "WHERE g1.valid_to IS NULL AND g2.valid_to IS NULL ORDER BY g1.grid_code, g2.grid_code LIMIT 1")).one()
        covering = sorted(conn.execute(sa.text(
            "SELECT grid_code FROM grids WHERE valid_to IS NULL AND "
            "ST_Covers(geom, ST_SetSRID(ST_MakePoint(:x, :y), 4549))"), {"x": x, "y": y}).scalars())
        answer = reverse(conn, x, y, f"EPSG:{SRID}", 500)
    assert len(covering) >= 2
    assert answer.assignment.grid.code == covering[0]


def test_reverse_bad_input(city):
    from cim.errors import UserError

    with city.connect() as conn:
        for radius in (0, -1, 2001, math.nan):
            with pytest.raises(UserError, match="radius"):
                reverse(conn, 121.43, 31.18, radius_m=radius)
        with pytest.raises(UserError, match="lon"):
            reverse(conn, math.inf, 31.18)


# --- batch -----------------------------------------------------------------------------------

class _Lines:
    """A file-like CSV source that records how far it has been read."""

    def __init__(self, header: str, row, n: int) -> None:
        self.header, self.row, self.n, self.read = header, row, n, 0

    def __iter__(self):
        yield self.header + "\n"
        for i in range(self.n):
            self.read += 1
            yield self.row(i) + "\n"


class _Sink(io.StringIO):
    def __init__(self, source: _Lines) -> None:
        super().__init__()
        self.source, self.lines, self.ahead = source, 0, 0

    def write(self, text: str) -> int:
        self.lines += text.count("\n")
        self.ahead = max(self.ahead, self.source.read - (self.lines - 1))
        return len(text)  # nothing kept: a stream, not a buffer


def test_batch_of_100000_rows_streams(city, sample_rows):
    """100,000 rows go through while never more than one chunk is read ahead of what is written."""
    queries = [_query(r) for r in sample_rows[:40]]
    source = _Lines("id,address", lambda i: f"{i},{queries[i % len(queries)]}", 100_000)
    sink = _Sink(source)
    with city.connect() as conn:
        summary = geocode_csv(source, sink, "address", conn, chunk_rows=5_000)
    assert summary.rows == 100_000 and sink.lines == 100_001
    assert summary.levels["door"] == 100_000
    assert sink.ahead <= 5_000


def test_batch_csv_errors(city):
    from cim.errors import UserError

    with city.connect() as conn:
        for text, match in [("", "no header"), ("a,b\n1,2\n", "column: 'address'"),
                            ("address\n\"unclosed\n", "line"), ("id,address\n1,徐汇区,extra\n", "line 2")]:
            with pytest.raises(UserError, match=match):
                geocode_csv(io.StringIO(text), io.StringIO(), "address", conn)
        with pytest.raises(UserError, match="at most 2"):
            geocode_csv(io.StringIO("address\n徐汇区\n徐汇区\n徐汇区\n"), io.StringIO(), "address", conn, max_rows=2)


# --- CLI -------------------------------------------------------------------------------------

def test_cli_single(city, db_url):
    out = run_cim("geocode", "上海市闸北区共和新路3088弄5号1201室", "--json", db_url=db_url)
    answer = json.loads(out.stdout)
    assert answer["match_level"] == "door" and answer["assignment"]["district"]["code"] == "310106"
    pretty = run_cim("geocode", "徐汇区田林路574号", db_url=db_url).stdout
    expected = _gc(city, "徐汇区田林路574号")
    assert expected.standard_address in pretty and expected.assignment.grid.code in pretty
    assert expected.assignment.responsibility[0].persons[0].name in pretty
    bad = run_cim("geocode", "  ", db_url=db_url, check=False)
    assert bad.returncode == 1 and "ADDRESS" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_batch_keeps_input_columns(city, db_url, sample_rows, tmp_path):
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    rows = [{"case_id": f"C{i}", "note": "来电, 需回访", "地址": _query(r)} for i, r in enumerate(sample_rows[:30])]
    rows += [{"case_id": "X1", "note": "", "地址": "浙江舟山普陀区东港路1号"}, {"case_id": "X2", "note": "", "地址": ""}]
    with src.open("w", newline="", encoding="gbk") as fh:
        w = csv.DictWriter(fh, fieldnames=["case_id", "note", "地址"])
        w.writeheader()
        w.writerows(rows)
    proc = run_cim("geocode", "--in", str(src), "--column", "地址", "--out", str(out), "--encoding", "gbk",
                   db_url=db_url)
    assert "32 rows geocoded" in proc.stderr
    with out.open(encoding="utf-8") as fh:
        got = list(csv.DictReader(fh))
        fh.seek(0)
        header = next(csv.reader(fh))
    assert header == ["case_id", "note", "地址", *ADDED_COLUMNS]
    assert [{k: g[k] for k in ("case_id", "note", "地址")} for g in got] == rows
    for g, r in zip(got, sample_rows[:30]):
        assert g["match_level"] == "door" and float(g["score"]) == 1.0 and g["grid_code"]
        gcj = transform_coords(float(g["lon"]), float(g["lat"]), None, "EPSG:4326", "gcj02")
        assert _metres((float(gcj[0]), float(gcj[1])), (float(r["lon"]), float(r["lat"])), "gcj02") < 0.5
    assert [g["match_level"] for g in got[-2:]] == ["none", "none"] and got[-1]["lon"] == ""
    wrong = run_cim("geocode", "--in", str(src), "--column", "地址", "--out", str(out), db_url=db_url, check=False)
    assert wrong.returncode == 1 and "encoding" in wrong.stderr and "Traceback" not in wrong.stderr
    missing = run_cim("geocode", "--in", str(src), "--column", "addr", "--out", str(out), "--encoding", "gbk",
                      db_url=db_url, check=False)
    assert missing.returncode == 1 and "column" in missing.stderr


def test_cli_reverse(city, db_url, sample_rows):
    r = next(r for r in sample_rows if not r["lane"])
    out = run_cim("reverse", "--lon", r["lon"], "--lat", r["lat"], "--crs", "gcj02", "--json", db_url=db_url)
    answer = json.loads(out.stdout)
    assert answer["found"] and answer["address"]["standard_address"] == f"上海市徐汇区{r['road']}{r['door_number']}号"
    bad = run_cim("reverse", "--lon", r["lon"], "--lat", r["lat"], "--radius", "5000", db_url=db_url, check=False)
    assert bad.returncode == 1 and "radius" in bad.stderr


# --- real addresses --------------------------------------------------------------------------

def test_real_addresses_never_fail_and_never_leave_their_district(city):
    path = shared_path("addresses", "cpca_addr.csv")
    with path.open(encoding="utf-8") as fh:
        texts = [r["原始地址"] for r in csv.DictReader(fh)]
    with city.connect() as conn:
        answers = []
        for start in range(0, len(texts), 5_000):
            answers += geocode_many(conn, texts[start:start + 5_000])
    assert len(answers) == len(texts)
    assert {a.match_level for a in answers} <= set(MATCH_LEVELS)
    for a in answers:
        if a.match_level != "none":
            assert a.assignment.district is not None
            if a.parsed.district_code:
                assert a.assignment.district.code == a.parsed.district_code, a.query
    # rows of other provinces (written first) are never placed
    other = [a for a in answers if a.query.startswith(("北京", "浙江", "江苏", "广东", "深圳", "广州"))]
    assert other and all(a.match_level == "none" for a in other)


def test_never_answers_in_another_district_than_named_even_with_stale_codes(city):
    """An address stored as 长宁区 but lying inside 静安区's polygon, and a district layer loaded after the
    addresses (so stored codes are not trusted): the answer falls back to 长宁区 itself rather than a
    point in 静安区."""
    x, y = _storage((JINGAN[4][0] + JINGAN[4][2]) / 2, (JINGAN[4][1] + JINGAN[4][3]) / 2)
    with city.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO addresses (source_id, city, district, road, door_number, door_int, standard_address, "
            "district_code, geom) VALUES ('STALE-1', '上海市', '长宁区', '错位路', '1', 1, '上海市长宁区错位路1号', "
            "'310105', ST_SetSRID(ST_MakePoint(:x, :y, 0), 4549))"), {"x": x, "y": y})
        bump_versions(conn)
        conn.execute(sa.text("UPDATE layers SET version = version + 1, updated_at = now() + interval '1 second' "
                             "WHERE table_name = 'districts'"))
    r = _gc(city, "上海市长宁区错位路1号")
    assert r.assignment.district.code == "310105"
    assert r.match_level == "district" and "outside" in (r.reason or "")
    assert _covering(city, "districts", "code", r.x, r.y) == ["310105"]
    with city.begin() as conn:  # the addresses are current again for any later test
        conn.execute(sa.text("UPDATE layers SET version = version + 1, updated_at = now() + interval '2 seconds' "
                             "WHERE table_name = 'addresses'"))


def test_one_rebuild_per_load_however_many_requests_ask(city, monkeypatch):
    """After a load every request finds the gazetteer stale at once: they wait for one rebuild
    (under the database's build lock) instead of each reading the whole base again."""
    import threading

    from cim.config import settings
    from cim.gazetteer import store

    builds: list[tuple] = []
    build = store.Gazetteer.__init__

    def counted_build(self, conn, versions):
        builds.append(versions)
        build(self, conn, versions)

    monkeypatch.setattr(store.Gazetteer, "__init__", counted_build)
    with city.begin() as conn:
        bump_versions(conn)
    threads = settings().db_pool_size  # one connection each, all held before any asks
    start = threading.Barrier(threads, timeout=120)
    answers: list = [None] * threads
    errors: list[BaseException] = []

    def ask(i: int) -> None:
        try:
            with city.connect() as conn:
                start.wait()
                answers[i] = store.gazetteer_for(conn)
                assert geocode_many(conn, ["上海市徐汇区虹桥路1号"])[0].match_level != "none"
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    workers = [threading.Thread(target=ask, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors, errors
    assert len(builds) == 1, f"{len(builds)} rebuilds for one load"
    assert all(answer is answers[0] for answer in answers)
    with city.connect() as conn:  # and the next request uses it as it is
        assert store.gazetteer_for(conn) is answers[0]
    assert len(builds) == 1


def test_kept_layer_versions_take_the_gazetteer_of_exactly_those_versions(city):
    """A caller's kept layer versions (the API's case intake, for CIM_LAYER_CACHE_S) take the gazetteer built for
    exactly them without a statement; versions that are not its are checked against the base, never taken as
    they are."""
    from cim.gazetteer import store

    sent: list[str] = []
    listener = lambda conn, cursor, statement, *args: sent.append(statement)  # noqa: E731
    with city.connect() as conn:
        current = store.gazetteer_for(conn)
        sa.event.listen(city, "before_cursor_execute", listener)
        try:
            assert store.gazetteer_for(conn, current.versions) is current and sent == []
            older = tuple((table, version - 1, at) for table, version, at in current.versions)
            assert store.gazetteer_for(conn, older) is current
            assert any("FROM layers" in statement for statement in sent)
        finally:
            sa.event.remove(city, "before_cursor_execute", listener)
