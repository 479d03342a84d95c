"""``cim samples generate``: a synthetic city of Shanghai's size, written as ordinary files that the loaders take
(``cim samples load --directory OUT``), deterministic from a seed.

What the seed article describes, at scale 1 (``--scale shanghai``): 16 districts with their real codes and
approximate shapes (Voronoi cells of their real centres), ~218 street units, ~6,000 communities, ~20,000 unit
grids with a responsibility chain, ~10 M addresses (rooms of buildings), ~1.5 M LoD1 buildings of which ~13,000
have glass curtain walls, ~15 M city parts with valid 16-digit codes, ~85,000 km of pipelines in segments at
depth and ~100,000 IoT devices. A fraction (``--scale 0.01``) keeps every proportion.

Why files and not rows straight into the database: the point is to measure the loaders on what a city delivers.
Why district by district: nothing bigger than one district's rows is ever in memory (the largest, 浦东新区, is a
sixth of the city), and the disk is checked against an estimate before the first byte is written.
"""
from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from pyproj import Transformer
from shapely.geometry import MultiPoint, Polygon, box

from cim.errors import UserError
from cim.schema import CURTAIN_WALL_SUPPORT_TYPES as SUPPORT

STORAGE_CRS = "EPSG:4549"

#: (code, name, lon, lat of an approximate centre, street units): the 16 districts of Shanghai; the street
#: counts follow the official division (街道 + 镇), 218 in all.
DISTRICTS: tuple[tuple[str, str, float, float, int], ...] = (
    ("310101", "黄浦区", 121.490, 31.222, 8), ("310104", "徐汇区", 121.437, 31.179, 13),
    ("310105", "长宁区", 121.410, 31.215, 10), ("310106", "静安区", 121.452, 31.255, 14),
    ("310107", "普陀区", 121.397, 31.250, 10), ("310109", "虹口区", 121.491, 31.265, 8),
    ("310110", "杨浦区", 121.526, 31.270, 12), ("310112", "闵行区", 121.381, 31.113, 14),
    ("310113", "宝山区", 121.443, 31.398, 12), ("310114", "嘉定区", 121.250, 31.375, 12),
    ("310115", "浦东新区", 121.660, 31.150, 36), ("310116", "金山区", 121.245, 30.800, 11),
    ("310117", "松江区", 121.228, 31.032, 17), ("310118", "青浦区", 121.124, 31.150, 11),
    ("310120", "奉贤区", 121.474, 30.918, 12), ("310151", "崇明区", 121.568, 31.620, 18),
)
#: Shanghai's extent (lon/lat) that the district cells are clipped to.
CITY_BBOX = (120.86, 30.69, 121.98, 31.87)

#: Totals at scale 1, from the seed article and the city's statistics.
FULL = {"communities": 6_000, "grids": 20_000, "addresses": 10_000_000, "buildings": 1_500_000,
        "curtain_walls": 13_000, "parts": 15_000_000, "pipeline_km": 85_000, "iot_devices": 100_000}
#: Bytes a row takes on disk in each file, measured on generated files (for the estimate before writing).
BYTES_PER_ROW = {"addresses": 95, "buildings": 230, "curtain_walls": 120, "parts": 150, "pipelines": 175,
                 "iot_devices": 230, "grids": 900, "responsibility": 120}

ROAD_ROOTS = ("中山", "延安", "淮海", "南京", "北京", "西藏", "四川", "浦东", "世纪", "张杨", "龙华", "漕溪",
              "虹桥", "长宁", "天山", "武宁", "共和", "曹杨", "大渡河", "真北", "沪太", "共康", "场中", "江杨",
              "逸仙", "四平", "国权", "黄兴", "军工", "翔殷", "周家嘴", "控江", "宁国", "平凉", "长阳", "杨树浦",
              "沪闵", "莲花", "虹梅", "七莘", "都市", "银都", "江川", "剑川", "华宁", "吴中", "金都", "顾戴",
              "博园", "叶城", "城中", "墨玉", "曹安", "沪宜", "胜辛", "嘉松", "华浦", "外青松", "盈港", "公园",
              "新松江", "荣乐", "人民", "中山东", "谷阳", "沪松", "南桥", "解放", "环城", "百齐", "金海", "川沙",
              "华夏", "龙阳", "锦绣", "杨高", "东方", "浦建", "成山", "上南", "高科", "申江", "秀浦", "周祝")
ROAD_SUFFIXES = ("路", "路", "路", "街", "大道", "公路")
GLASS = ("中空钢化玻璃", "Low-E中空玻璃", "夹层玻璃", "钢化玻璃", "普通平板玻璃")
USES = ("住宅", "住宅", "住宅", "商业", "办公", "公共服务", "工业", "教育")
#: device kind → the quantities it measures (the same shape as the sample city's devices)
DEVICE_KINDS = {
    "井盖传感器": [{"quantity": "tilt", "unit": "deg", "alarm_low": None, "alarm_high": 15.0}],
    "水位计": [{"quantity": "water_level", "unit": "m", "alarm_low": None, "alarm_high": 0.3}],
    "燃气探测器": [{"quantity": "gas_concentration", "unit": "%LEL", "alarm_low": None, "alarm_high": 20.0}],
    "烟感探测器": [{"quantity": "smoke", "unit": "dB/m", "alarm_low": None, "alarm_high": 0.2}],
    "倾角传感器": [{"quantity": "tilt", "unit": "deg", "alarm_low": None, "alarm_high": 2.0}],
}
PIPE_KINDS = {  # kind: (share of length, diameters, materials, depth range, owner)
    "给水": (0.22, (100, 200, 300, 500, 800, 1200), ("球墨铸铁", "PE", "钢"), (0.7, 2.0), "上海城投水务(集团)有限公司"),
    "污水": (0.16, (300, 500, 800, 1200, 1500), ("钢筋混凝土", "HDPE"), (2.0, 6.0), "区水务局"),
    "雨水": (0.18, (300, 600, 1000, 1500, 1800), ("钢筋混凝土", "混凝土"), (1.5, 4.0), "区水务局"),
    "燃气": (0.16, (100, 200, 300, 500), ("PE", "钢"), (0.8, 1.5), "上海燃气有限公司"),
    "电力": (0.14, (100, 150, 200), ("铜缆", "铝缆"), (0.7, 1.5), "国网上海市电力公司"),
    "通信": (0.14, (100, 110, 150), ("光缆", "铜缆", "PVC管"), (0.7, 1.2), "中国电信上海分公司"),
}
#: department kinds of each grid's chain: (code suffix, department name, the class codes it handles)
DISTRICT_DEPTS = (("SRLH", "区市容绿化局", "03;04"), ("JGW", "区建管委", "0201;0202;0203;0205"),
                  ("FGJ", "区房管局", "05"), ("SWJ", "区水务局", "0101;0102;0103"),
                  ("RQ", "上海燃气有限公司", "0106"), ("GD", "国网上海市电力公司", "0104;0111"),
                  ("CGZF", "区城管执法局", "03;0501"), ("GA", "区公安分局", "0601;0201;0205"))
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红娥建国志文斌浩宇晨欣怡佳琪子涵雨轩梓"


@dataclass(frozen=True)
class CityPlan:
    """How many of each thing a generated city holds (scale 1 = Shanghai)."""

    scale: float
    counts: dict[str, int]

    @classmethod
    def at(cls, scale: float) -> "CityPlan":
        if not (0 < scale <= 4):
            raise UserError(f"--scale: must be 'shanghai' or a fraction in (0, 4], got {scale}")
        counts = {k: max(1, round(v * scale)) for k, v in FULL.items()}
        counts["grids"] = max(counts["grids"], 3 * len(DISTRICTS))
        counts["communities"] = max(min(counts["communities"], counts["grids"]), 2 * len(DISTRICTS))
        counts["pipelines"] = max(1, round(counts["pipeline_km"] * 1000 / 120.0))  # segments of ~120 m
        return cls(scale, counts)

    def estimated_bytes(self) -> int:
        c = self.counts
        rows = {"addresses": c["addresses"], "buildings": c["buildings"], "curtain_walls": c["curtain_walls"],
                "parts": c["parts"], "pipelines": c["pipelines"], "iot_devices": c["iot_devices"],
                "grids": c["grids"] * 3, "responsibility": c["grids"] * 12}
        return int(sum(BYTES_PER_ROW[k] * n for k, n in rows.items()) * 1.1) + 5_000_000


def parse_scale(text: str) -> float:
    """``shanghai`` → 1.0; otherwise a positive number (a fraction of Shanghai)."""
    if text.strip().lower() in ("shanghai", "sh", "full"):
        return 1.0
    try:
        return float(text)
    except ValueError:
        raise UserError(f"--scale: must be 'shanghai' or a number, got {text!r}") from None


@dataclass
class Report:
    directory: Path
    rows: dict[str, int] = field(default_factory=dict)
    bytes_written: int = 0

    def as_dict(self) -> dict:
        return {"directory": str(self.directory), "rows": self.rows, "bytes": self.bytes_written}


class _Writers:
    """One CSV file per layer, opened once, rows appended district by district."""

    HEADERS = {
        "districts": ("code", "name", "wkt"),
        "streets": ("code", "name", "district_code", "wkt"),
        "communities": ("code", "name", "street_code", "wkt"),
        "grids": ("grid_code", "name", "community_code", "wkt"),
        "responsibility": ("grid_code", "post_code", "post_name", "department_code", "department_name",
                           "person_name", "person_contact", "handles"),
        "addresses": ("full_address", "x", "y"),
        "buildings": ("source_id", "name", "height", "floors", "use", "year_built", "wkt"),
        "curtain_walls": ("source_id", "building_source_id", "glass_type", "support_type", "facade_area",
                          "year_installed", "last_inspection_date", "inspection_result", "owner"),
        "parts": ("source_id", "object_code", "subclass_code", "name", "status", "owner_department", "x", "y", "z"),
        "pipelines": ("source_id", "kind", "diameter_mm", "material", "year_laid", "owner", "start_depth",
                      "end_depth", "wkt"),
        "iot_devices": ("source_id", "device_type", "name", "quantities", "x", "y", "z"),
    }

    def __init__(self, directory: Path, free_floor: int) -> None:
        self.directory = directory
        self.free_floor = free_floor
        self.files = {name: (directory / f"{name}.csv").open("w", encoding="utf-8", newline="")
                      for name in self.HEADERS}
        self.writers = {name: csv.writer(fh) for name, fh in self.files.items()}
        self.rows = dict.fromkeys(self.HEADERS, 0)
        for name, header in self.HEADERS.items():
            self.writers[name].writerow(header)

    def write(self, name: str, rows: Iterator[tuple] | list[tuple]) -> None:
        self.writers[name].writerows(rows)

    def count(self, name: str, n: int) -> None:
        self.rows[name] += n

    def check_disk(self) -> None:
        """Stop early, files closed, when the disk fills up despite the estimate (another writer)."""
        free = shutil.disk_usage(self.directory).free
        if free < self.free_floor:
            self.close()
            raise UserError(f"{self.directory}: the disk is nearly full ({free / 1e9:.1f} GB left); generation "
                            "stopped early, the files are incomplete")

    def close(self) -> int:
        total = 0
        for fh in self.files.values():
            if not fh.closed:
                fh.close()
        for name in self.HEADERS:
            total += (self.directory / f"{name}.csv").stat().st_size
        return total


def generate_city(directory: Path, scale: float = 1.0, seed: int = 1) -> Report:
    """Write the synthetic city into ``directory`` (created) with its ``manifest.json``."""
    plan = CityPlan.at(scale)
    directory.mkdir(parents=True, exist_ok=True)
    need = plan.estimated_bytes()
    free = shutil.disk_usage(directory).free
    if need > free * 0.9:
        raise UserError(f"{directory}: a city at scale {scale:g} needs about {need / 1e9:.1f} GB and the disk has "
                        f"{free / 1e9:.1f} GB free; nothing was written (choose a smaller --scale or another folder)")
    rng = np.random.default_rng(seed)
    to_metric = Transformer.from_crs("EPSG:4326", STORAGE_CRS, always_xy=True)
    writers = _Writers(directory, free_floor=max(200_000_000, int(free * 0.02)))
    try:
        districts = _district_cells(to_metric)
        weights = _weights(districts)
        quotas = {k: _split(plan.counts[k], weights) for k in
                  ("communities", "grids", "addresses", "buildings", "curtain_walls", "parts", "pipelines",
                   "iot_devices")}
        part_plan = _part_plan()
        for i, (code, name, _, _, n_streets) in enumerate(DISTRICTS):
            quota = {k: int(v[i]) for k, v in quotas.items()}
            _write_district(writers, rng, code, name, districts[i], n_streets, quota, part_plan)
            writers.check_disk()
        total = writers.close()
    except BaseException:
        writers.close()
        raise
    _write_manifest(directory)
    return Report(directory, dict(writers.rows), total)


# -- administrative units --------------------------------------------------------------------------------------

def _district_cells(to_metric: Transformer) -> list[Polygon]:
    x, y = to_metric.transform([d[2] for d in DISTRICTS], [d[3] for d in DISTRICTS])
    minx, miny = to_metric.transform(CITY_BBOX[0], CITY_BBOX[1])
    maxx, maxy = to_metric.transform(CITY_BBOX[2], CITY_BBOX[3])
    return _voronoi(box(minx, miny, maxx, maxy), np.column_stack([x, y]))


def _voronoi(container: Polygon, seeds: np.ndarray) -> list[Polygon]:
    """Voronoi cells of ``seeds`` clipped to ``container``, in the seeds' order; neighbours share their edges."""
    if len(seeds) == 1:
        return [container]
    cells = shapely.voronoi_polygons(MultiPoint(seeds), extend_to=container, ordered=True)
    out = []
    for cell in shapely.get_parts(cells):
        piece = shapely.intersection(container, cell, grid_size=0.01)
        if piece.geom_type != "Polygon":  # a cut across a notch of the container: keep the largest part
            parts = [g for g in shapely.get_parts(piece) if g.geom_type == "Polygon"]
            piece = max(parts, key=lambda g: g.area) if parts else cell.intersection(container.envelope)
        out.append(piece)
    return out


def _weights(cells: list[Polygon]) -> np.ndarray:
    """Share of the city's things per district: by street units (a proxy for population), not by area, so the
    small central districts stay as dense as they are."""
    streets = np.array([d[4] for d in DISTRICTS], dtype=float)
    return streets / streets.sum()


def _split(total: int, weights: np.ndarray) -> np.ndarray:
    raw = weights * total
    out = np.floor(raw).astype(np.int64)
    out[np.argsort(raw - out)[::-1][: total - out.sum()]] += 1
    return np.maximum(out, 1) if total >= len(weights) else out


def _points_in(poly: Polygon, rng: np.random.Generator, n: int) -> np.ndarray:
    minx, miny, maxx, maxy = poly.bounds
    share = max(poly.area / ((maxx - minx) * (maxy - miny)), 0.05)
    out, have = [], 0
    while have < n:
        xy = rng.uniform((minx, miny), (maxx, maxy), size=(int((n - have) / share * 1.2) + 8, 2))
        xy = xy[shapely.contains_xy(poly, xy[:, 0], xy[:, 1])]
        out.append(xy)
        have += len(xy)
    return np.vstack(out)[:n]


def _person(rng: np.random.Generator) -> tuple[str, str]:
    name = SURNAMES[rng.integers(len(SURNAMES))] + "".join(GIVEN[j] for j in rng.integers(len(GIVEN),
                                                                                          size=rng.integers(1, 3)))
    return name, f"13{rng.integers(0, 10)}{rng.integers(10_000_000, 100_000_000)}"


def _write_district(w: _Writers, rng: np.random.Generator, code: str, name: str, cell: Polygon, n_streets: int,
                    quota: dict[str, int], part_plan: list[tuple[str, str, float, str]]) -> None:
    w.write("districts", [(code, name, cell.wkt)])
    w.count("districts", 1)
    street_cells = _voronoi(cell, _points_in(cell, rng, n_streets))
    n_com = _split(max(quota["communities"], n_streets), np.full(n_streets, 1 / n_streets))
    grids: list[tuple[str, Polygon]] = []
    for s, scell in enumerate(street_cells, start=1):
        scode = f"{code}{s:03d}"
        sname = f"{name[:-1]}{_ordinal(s)}{'街道' if s <= n_streets // 2 else '镇'}"
        w.write("streets", [(scode, sname, code, scell.wkt)])
        com_cells = _voronoi(scell, _points_in(scell, rng, int(n_com[s - 1])))
        for c, ccell in enumerate(com_cells, start=1):
            ccode = f"{scode}{c:03d}"
            w.write("communities", [(ccode, f"{sname[:-2]}第{c}居委会", scode, ccell.wkt)])
            grids.append((ccode, ccell))
    w.count("streets", n_streets)
    w.count("communities", len(grids))
    # unit grids: each community split into as many grids as its share of the quota
    per_com = _split(max(quota["grids"], len(grids)), np.full(len(grids), 1 / len(grids)))
    grid_rows, grid_geoms = [], []
    for (ccode, ccell), k in zip(grids, per_com):
        for g, gcell in enumerate(_voronoi(ccell, _points_in(ccell, rng, int(k))), start=1):
            gcode = f"{ccode}{g:03d}"
            grid_rows.append((gcode, f"{ccode}第{g}网格", ccode, gcell.wkt))
            grid_geoms.append(gcell)
    w.write("grids", grid_rows)
    w.count("grids", len(grid_rows))
    w.count("responsibility", _write_responsibility(w, rng, code, [r[0] for r in grid_rows]))
    geoms = np.array(grid_geoms, dtype=object)
    grid_codes = np.array([r[0] for r in grid_rows])
    roads = _road_names(rng, code, len(grid_rows))
    _write_buildings_and_addresses(w, rng, code, name, geoms, grid_codes, roads, quota)
    _write_parts(w, rng, code, cell, quota["parts"], part_plan)
    _write_pipelines(w, rng, code, cell, quota["pipelines"])
    _write_devices(w, rng, code, cell, quota["iot_devices"])


def _ordinal(n: int) -> str:
    digits = "零一二三四五六七八九"
    if n < 10:
        return digits[n]
    return ("" if n < 20 else digits[n // 10]) + "十" + (digits[n % 10] if n % 10 else "")


def _write_responsibility(w: _Writers, rng: np.random.Generator, district: str, grid_codes: list[str]) -> int:
    """Each grid's chain: its 网格监督员 (the grid worker who verifies), its 网格长, and the district
    departments by kind, one post each per street, 1–2 persons."""
    rows: list[tuple] = []
    by_street: dict[str, list[str]] = {}
    for g in grid_codes:
        by_street.setdefault(g[:9], []).append(g)
    post_no = 0
    for street, codes in by_street.items():
        for g in codes:
            post_no += 1
            sup = _person(rng)
            rows.append((g, f"GW{district}{post_no:05d}", "网格监督员", f"{street}-WGZX", "街道网格化管理中心",
                         *sup, "01;02;03;04;05;06"))
            post_no += 1
            head = _person(rng)
            rows.append((g, f"GW{district}{post_no:05d}", "网格长", f"{street}-BSC", "街道办事处", *head, "05;06"))
        for suffix, dept, handles in DISTRICT_DEPTS:
            post_no += 1
            persons = [_person(rng) for _ in range(int(rng.integers(1, 3)))]
            rows.extend((g, f"GW{district}{post_no:05d}", f"{dept}责任人", f"{district}-{suffix}", dept, *p, handles)
                        for g in codes for p in persons)
    w.write("responsibility", rows)
    return len(rows)


def _road_names(rng: np.random.Generator, district: str, n_grids: int) -> np.ndarray:
    """About one road name per two grids, unique within the district."""
    n = max(4, n_grids // 2)
    names: list[str] = []
    seen: set[str] = set()
    i = 0
    while len(names) < n:
        root = ROAD_ROOTS[i % len(ROAD_ROOTS)]
        extra = "" if i < len(ROAD_ROOTS) else ("东西南北中一二三四五六七八九"[(i // len(ROAD_ROOTS)) % 14]
                                                 + ("" if i < 15 * len(ROAD_ROOTS) else str(i // (15 * len(ROAD_ROOTS)))))
        candidate = root + extra + ROAD_SUFFIXES[int(rng.integers(len(ROAD_SUFFIXES)))]
        i += 1
        if candidate not in seen:
            seen.add(candidate)
            names.append(candidate)
    return np.array(names)


CHUNK = 200_000


def _write_buildings_and_addresses(w: _Writers, rng: np.random.Generator, district: str, district_name: str,
                                   grids: np.ndarray, grid_codes: np.ndarray, roads: np.ndarray,
                                   quota: dict[str, int]) -> None:
    """Buildings as rotated rectangles in the grids, their rooms as addresses (``…路N弄M号R室``) at the
    building; a few have glass curtain walls (the tallest commercial/office ones first)."""
    n_b = quota["buildings"]
    n_cw = min(quota["curtain_walls"], n_b)
    per_grid = _split(n_b, np.full(len(grids), 1 / len(grids)))
    rooms = _split(quota["addresses"], np.full(n_b, 1 / n_b)) if n_b else np.zeros(0, dtype=np.int64)
    cw_every = max(1, n_b // max(n_cw, 1))
    seq = 0
    cw_seq = 0
    grid_index = np.repeat(np.arange(len(grids)), per_grid)
    for start in range(0, n_b, CHUNK):
        idx = grid_index[start:start + CHUNK]
        n = len(idx)
        centres = np.empty((n, 2))
        for gi in np.unique(idx):
            sel = np.flatnonzero(idx == gi)
            centres[sel] = _points_in(grids[gi], rng, len(sel))
        floors = np.clip(rng.lognormal(1.8, 0.6, n).astype(int), 1, 120)
        height = np.round(floors * rng.uniform(2.9, 3.4, n), 1)
        half_w = rng.uniform(5, 20, n)
        half_d = rng.uniform(5, 14, n)
        angle = rng.uniform(0, math.pi, n)
        year = rng.integers(1930, 2026, n)
        use = np.array(USES)[rng.integers(len(USES), size=n)]
        cos, sin = np.cos(angle), np.sin(angle)
        corners = []
        for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1), (-1, -1)):
            corners.append((centres[:, 0] + sx * half_w * cos - sy * half_d * sin,
                            centres[:, 1] + sx * half_w * sin + sy * half_d * cos))
        rows = []
        cw_rows = []
        addr_rows = []
        road = roads[(idx // 2) % len(roads)]
        for j in range(n):
            seq += 1
            sid = f"B{district}{seq:07d}"
            ring = ", ".join(f"{corners[k][0][j]:.2f} {corners[k][1][j]:.2f}" for k in range(5))
            rows.append((sid, "", height[j], floors[j], use[j], year[j], f"POLYGON (({ring}))"))
            if seq % cw_every == 0 and cw_seq < n_cw:
                cw_seq += 1
                inst = max(int(year[j]), 1985)
                last = f"{min(2026, inst + int(rng.integers(1, 30)))}-{int(rng.integers(1, 13)):02d}-15"
                cw_rows.append((f"CW{district}{cw_seq:05d}", sid, GLASS[int(rng.integers(len(GLASS)))],
                                SUPPORT[int(rng.integers(len(SUPPORT)))], round(float(rng.uniform(300, 20000)), 1),
                                inst, last, ("合格", "合格", "需整改")[int(rng.integers(3))], f"{district_name}业主单位"))
            lane = 1 + (seq // 20) % 999
            door = 1 + seq % 20
            for r in range(int(rooms[seq - 1])):
                room = f"{1 + r // 4}{1 + r % 4:02d}"
                addr_rows.append((f"上海市{district_name}{road[j]}{lane}弄{door}号{room}室",
                                  f"{centres[j, 0]:.2f}", f"{centres[j, 1]:.2f}"))
        w.write("buildings", rows)
        w.count("buildings", len(rows))
        w.write("curtain_walls", cw_rows)
        w.count("curtain_walls", len(cw_rows))
        w.write("addresses", addr_rows)
        w.count("addresses", len(addr_rows))
        w.check_disk()


def _part_plan() -> list[tuple[str, str, float, str]]:
    """(subclass code, name, share, status) for every subclass of the part catalogue, manholes and lamps first."""
    path = Path(__file__).resolve().parents[1] / "cim" / "data" / "part_classes.csv"
    with path.open(encoding="utf-8", newline="") as fh:
        subclasses = [(r["code"], r["name"]) for r in csv.DictReader(fh) if len(r["code"]) == 4]
    heavy = {"0101": 8, "0102": 8, "0103": 8, "0201": 6, "0104": 4, "0301": 3}
    weights = np.array([heavy.get(c, 1) for c, _ in subclasses], dtype=float)
    weights /= weights.sum()
    return [(c, n, float(s), "") for (c, n), s in zip(subclasses, weights)]


def _write_parts(w: _Writers, rng: np.random.Generator, district: str, cell: Polygon, n: int,
                 plan: list[tuple[str, str, float, str]]) -> None:
    """Parts with 16-digit codes: district code + subclass (class and subclass) + a 6-digit sequence."""
    counts = _split(n, np.array([p[2] for p in plan]))
    if counts.max(initial=0) > 999_999:
        raise UserError(f"--scale: {district} would need more than 999,999 parts of one subclass (the 6-digit "
                        "sequence of a part code); use a smaller scale")
    sub = np.repeat(np.arange(len(plan)), counts)
    seqs = np.concatenate([np.arange(1, c + 1) for c in counts]) if n else np.zeros(0, dtype=int)
    status = np.array(["完好", "完好", "完好", "完好", "破损", "丢失"])
    done = 0
    for start in range(0, n, CHUNK):
        k = min(CHUNK, n - start)
        xy = _points_in(cell, rng, k)
        st = status[rng.integers(len(status), size=k)]
        rows = []
        for j in range(k):
            code, name, _, _ = plan[sub[start + j]]
            s = int(seqs[start + j])
            rows.append((f"P{district}{code}{s:06d}", f"{district}{code}{s:06d}", code, name, st[j], "",
                         f"{xy[j, 0]:.2f}", f"{xy[j, 1]:.2f}", "0.0"))
        w.write("parts", rows)
        done += k
        w.check_disk()
    w.count("parts", done)


def _write_pipelines(w: _Writers, rng: np.random.Generator, district: str, cell: Polygon, n: int) -> None:
    """Straight segments of 60–180 m, mostly east–west or north–south like the street network, at depth."""
    kinds = list(PIPE_KINDS)
    shares = np.array([PIPE_KINDS[k][0] for k in kinds])
    for start in range(0, n, CHUNK):
        k = min(CHUNK, n - start)
        a = _points_in(cell, rng, k)
        length = rng.uniform(60, 180, k)
        axis = rng.integers(0, 2, k)
        b = a + np.column_stack([np.where(axis == 0, length, 0), np.where(axis == 1, length, 0)])
        kind = rng.choice(len(kinds), size=k, p=shares / shares.sum())
        year = rng.integers(1950, 2026, k)
        rows = []
        for j in range(k):
            name = kinds[kind[j]]
            _, diameters, materials, (d0, d1), owner = PIPE_KINDS[name]
            depth = round(float(d0 + (d1 - d0) * rng.random()), 2)
            rows.append((f"L{district}{start + j + 1:07d}", name, diameters[j % len(diameters)],
                         materials[j % len(materials)], year[j], owner, depth, round(depth + 0.05 * (j % 5), 2),
                         f"LINESTRING ({a[j, 0]:.2f} {a[j, 1]:.2f}, {b[j, 0]:.2f} {b[j, 1]:.2f})"))
        w.write("pipelines", rows)
        w.count("pipelines", k)
        w.check_disk()


def _write_devices(w: _Writers, rng: np.random.Generator, district: str, cell: Polygon, n: int) -> None:
    kinds = list(DEVICE_KINDS)
    xy = _points_in(cell, rng, n)
    kind = rng.integers(len(kinds), size=n)
    rows = [(f"D{district}{j + 1:06d}", kinds[kind[j]], f"{kinds[kind[j]]}{district}-{j + 1}",
             json.dumps(DEVICE_KINDS[kinds[kind[j]]], ensure_ascii=False, separators=(",", ":")),
             f"{xy[j, 0]:.2f}", f"{xy[j, 1]:.2f}", "0.0") for j in range(n)]
    w.write("iot_devices", rows)
    w.count("iot_devices", n)


def _write_manifest(directory: Path) -> None:
    def entry(layer: str, name: str, **options: object) -> dict:
        header = _Writers.HEADERS[name]
        geometry = {"wkt", "x", "y", "z"}
        mapping = {c: c for c in header if c not in geometry and c not in ("full_address",)}
        return {"layer": layer, "path": f"{name}.csv", "crs": STORAGE_CRS, "encoding": "utf-8",
                "map": mapping, **options}

    manifest = [
        entry("districts", "districts", wkt="wkt"), entry("streets", "streets", wkt="wkt"),
        entry("communities", "communities", wkt="wkt"), entry("grids", "grids", wkt="wkt"),
        {**entry("responsibility", "responsibility"), "crs": None},
        {**entry("addresses", "addresses", x="x", y="y"), "map": {}, "address_column": "full_address"},
        entry("buildings", "buildings", wkt="wkt"),
        {**entry("curtain-walls", "curtain_walls"), "crs": None},
        entry("parts", "parts", x="x", y="y", z="z"), entry("pipelines", "pipelines", wkt="wkt"),
        entry("iot-devices", "iot_devices", x="x", y="y", z="z"),
    ]
    (directory / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8")
