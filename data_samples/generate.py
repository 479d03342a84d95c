#!/usr/bin/env python3
"""Deterministic generator for the synthetic sample city: 徐汇区 (310104), Shanghai.

    python data_samples/generate.py                 # writes data_samples/{xuhui/,manifest.json}
    python data_samples/generate.py --out /tmp/x    # writes /tmp/x/{xuhui/,manifest.json}

Everything is synthetic: the district outline is a hand-drawn approximation placed at the real
location, the street/town names and 9-digit codes are the real ones, all other geometry,
names, people and phone numbers are invented from a seeded ``numpy.random.default_rng``.

The script is standalone on purpose (numpy, shapely>=2.1, pyproj, pyogrio, geopandas only; it
must not import the platform packages), so that the sample data can be regenerated without the
platform installed (the part-class names are read from the platform's catalogue file,
cim/data/part_classes.csv, not imported).  Output is byte-identical between runs: coordinates are snapped to a fixed
grid (1 mm in EPSG:4549, 1e-7 degree in WGS84/GCJ-02), numbers are formatted explicitly, files
are written in a fixed order, and GDAL's time stamps are pinned (``OGR_CURRENT_DATE`` for
GeoPackage, ``DBF_DATE_LAST_UPDATE`` for shapefiles).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pyogrio
import pyproj
import shapely
import shapely.ops
from shapely.geometry import LineString, MultiPoint, Point, Polygon

SEED = 310104
PROJ_CRS = "EPSG:4549"  # CGCS2000 / 3-degree Gauss-Kruger CM 120E
DISTRICT_CODE = "310104"
DISTRICT_NAME = "徐汇区"
FIXED_DATE = "2026-11-24"
GRID = 0.001  # metres: coordinate precision in EPSG:4549
DEG_DECIMALS = 7  # coordinate precision in WGS84 / GCJ-02

N_BUILDINGS = 1500
N_CURTAIN_WALLS = 150
N_ADDRESSES = 2000
N_ADDRESSES_FULL = 50
N_GRIDS = 60
N_PARTS_NOCODE = 300
PIPELINE_TARGET_M = 30000.0

_TO_PROJ = pyproj.Transformer.from_crs("EPSG:4326", PROJ_CRS, always_xy=True)
_TO_GEO = pyproj.Transformer.from_crs(PROJ_CRS, "EPSG:4326", always_xy=True)


def to_proj(geom):
    return shapely.transform(geom, lambda c: np.column_stack(_TO_PROJ.transform(c[:, 0], c[:, 1])))


def to_geo(geom):
    return shapely.transform(geom, lambda c: np.column_stack(_TO_GEO.transform(c[:, 0], c[:, 1])))


# --------------------------------------------------------------------------------------------
# GCJ-02 ("Mars coordinates").  This is a copy of the standard, publicly documented WGS84 ->
# GCJ-02 formula (Krasovsky ellipsoid constants, offsets in metres converted to degrees).  The
# platform has its own implementation; a copy is kept here so the generator stays standalone.
# --------------------------------------------------------------------------------------------
_GCJ_A = 6378245.0
_GCJ_EE = 0.00669342162296594323


def _gcj_dlat(x, y):
    ret = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * np.sqrt(np.abs(x))
    ret += (20.0 * np.sin(6.0 * x * np.pi) + 20.0 * np.sin(2.0 * x * np.pi)) * 2.0 / 3.0
    ret += (20.0 * np.sin(y * np.pi) + 40.0 * np.sin(y / 3.0 * np.pi)) * 2.0 / 3.0
    ret += (160.0 * np.sin(y / 12.0 * np.pi) + 320.0 * np.sin(y * np.pi / 30.0)) * 2.0 / 3.0
    return ret


def _gcj_dlon(x, y):
    ret = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * np.sqrt(np.abs(x))
    ret += (20.0 * np.sin(6.0 * x * np.pi) + 20.0 * np.sin(2.0 * x * np.pi)) * 2.0 / 3.0
    ret += (20.0 * np.sin(x * np.pi) + 40.0 * np.sin(x / 3.0 * np.pi)) * 2.0 / 3.0
    ret += (150.0 * np.sin(x / 12.0 * np.pi) + 300.0 * np.sin(x / 30.0 * np.pi)) * 2.0 / 3.0
    return ret


def wgs84_to_gcj02(lon, lat):
    lon = np.asarray(lon, dtype=float)
    lat = np.asarray(lat, dtype=float)
    dlat = _gcj_dlat(lon - 105.0, lat - 35.0)
    dlon = _gcj_dlon(lon - 105.0, lat - 35.0)
    radlat = lat / 180.0 * np.pi
    magic = np.sin(radlat)
    magic = 1.0 - _GCJ_EE * magic * magic
    sqrtmagic = np.sqrt(magic)
    dlat = (dlat * 180.0) / ((_GCJ_A * (1.0 - _GCJ_EE)) / (magic * sqrtmagic) * np.pi)
    dlon = (dlon * 180.0) / (_GCJ_A / sqrtmagic * np.cos(radlat) * np.pi)
    return lon + dlon, lat + dlat


def gcj02_to_wgs84(lon, lat, iterations=6):
    """Iterative inverse of :func:`wgs84_to_gcj02` (sub-millimetre after a few iterations)."""
    lon = np.asarray(lon, dtype=float)
    lat = np.asarray(lat, dtype=float)
    wl, wb = lon.copy(), lat.copy()
    for _ in range(iterations):
        gl, gb = wgs84_to_gcj02(wl, wb)
        wl, wb = wl - (gl - lon), wb - (gb - lat)
    return wl, wb


# --------------------------------------------------------------------------------------------
# Static knowledge: outline, streets, roads, vocabularies.
# --------------------------------------------------------------------------------------------
# Hand-drawn, simplified approximation of the 徐汇区 outline (lon, lat), clockwise from the north tip.
DISTRICT_OUTLINE = [
    (121.437, 31.224), (121.452, 31.222), (121.458, 31.214), (121.462, 31.205), (121.468, 31.196),
    (121.474, 31.186), (121.472, 31.172), (121.466, 31.160), (121.462, 31.148), (121.458, 31.136),
    (121.452, 31.124), (121.440, 31.121), (121.425, 31.123), (121.412, 31.126), (121.403, 31.133),
    (121.401, 31.146), (121.403, 31.160), (121.408, 31.172), (121.416, 31.182), (121.422, 31.192),
    (121.426, 31.203), (121.430, 31.214),
]

# (code, name, approximate centre lon, lat)  -- real names and codes, approximate positions.
STREETS = [
    ("310104003", "天平路街道", 121.4435, 31.2065),
    ("310104004", "湖南路街道", 121.4430, 31.2170),
    ("310104007", "斜土路街道", 121.4610, 31.1985),
    ("310104008", "枫林路街道", 121.4520, 31.1950),
    ("310104010", "长桥街道", 121.4470, 31.1435),
    ("310104011", "田林街道", 121.4260, 31.1745),
    ("310104012", "虹梅路街道", 121.4080, 31.1680),
    ("310104013", "康健新村街道", 121.4200, 31.1570),
    ("310104014", "徐家汇街道", 121.4330, 31.1950),
    ("310104015", "凌云路街道", 121.4300, 31.1450),
    ("310104016", "龙华街道", 121.4600, 31.1720),
    ("310104017", "漕河泾街道", 121.4420, 31.1680),
    ("310104103", "华泾镇", 121.4420, 31.1280),
]

# Roots for 居委会 names, per street (plausible local names, not an official list).
COMMUNITY_ROOTS = {
    "310104003": ["永嘉", "建襄", "宛南", "高安", "天平", "武康"],
    "310104004": ["五原", "湖南", "东湖", "安福", "乌鲁木齐", "复兴西"],
    "310104007": ["斜土", "大木桥", "嘉善", "小木桥", "日晖", "瞿溪"],
    "310104008": ["枫林", "医学院", "东安三村", "平江", "双峰", "零陵"],
    "310104010": ["长桥一村", "长桥三村", "罗秀", "华滨", "百色", "龙川"],
    "310104011": ["田林十二村", "田林三村", "田林十四村", "钦州", "柳州", "田东"],
    "310104012": ["虹梅", "古美", "桂林西", "虹漕", "钦江", "石龙"],
    "310104013": ["康健", "寿祥", "桂林苑", "茶花", "丁香", "长虹"],
    "310104014": ["汇站", "徐镇", "南丹", "乐山", "虹桥", "漕溪"],
    "310104015": ["凌云", "梅陇", "华理", "东兰", "罗城", "双峰北"],
    "310104016": ["龙华", "龙山", "云锦", "丰谷", "天钥", "南塘"],
    "310104017": ["漕河泾", "漕宝", "华府", "宜山", "冠生园", "船厂"],
    "310104103": ["华泾", "北杨", "华发", "华建", "馨宁", "东湾"],
}

# (name, [(lon, lat), ...], half width in metres).  Real 徐汇 road names, simplified geometry.
ROADS = [
    ("淮海中路", [(121.4280, 31.2185), (121.4470, 31.2175), (121.4620, 31.2170)], 12.0),
    ("华山路", [(121.4280, 31.2260), (121.4330, 31.2120), (121.4370, 31.1990)], 12.0),
    ("建国西路", [(121.4360, 31.2085), (121.4520, 31.2090), (121.4660, 31.2095)], 10.0),
    ("衡山路", [(121.4540, 31.2130), (121.4470, 31.2070), (121.4375, 31.1995)], 12.0),
    ("天平路", [(121.4405, 31.2190), (121.4400, 31.2080), (121.4395, 31.1990)], 10.0),
    ("武康路", [(121.4355, 31.2160), (121.4385, 31.2105), (121.4430, 31.2050)], 8.0),
    ("岳阳路", [(121.4535, 31.2150), (121.4525, 31.2060), (121.4515, 31.1990)], 10.0),
    ("肇嘉浜路", [(121.4370, 31.1980), (121.4520, 31.2010), (121.4700, 31.2040)], 25.0),
    ("零陵路", [(121.4380, 31.1905), (121.4480, 31.1915), (121.4600, 31.1925)], 10.0),
    ("斜土路", [(121.4420, 31.1955), (121.4560, 31.1965), (121.4720, 31.1980)], 12.0),
    ("宛平南路", [(121.4470, 31.2050), (121.4475, 31.1850), (121.4485, 31.1640)], 12.0),
    ("漕溪北路", [(121.4365, 31.2030), (121.4370, 31.1930), (121.4375, 31.1840)], 20.0),
    ("漕溪路", [(121.4375, 31.1840), (121.4385, 31.1720), (121.4400, 31.1590)], 16.0),
    ("中山南二路", [(121.4250, 31.1860), (121.4480, 31.1865), (121.4720, 31.1875)], 25.0),
    ("龙华中路", [(121.4480, 31.1795), (121.4600, 31.1780), (121.4720, 31.1770)], 12.0),
    ("虹桥路", [(121.4370, 31.1970), (121.4280, 31.1955), (121.4150, 31.1940)], 20.0),
    ("宜山路", [(121.4380, 31.1810), (121.4220, 31.1770), (121.4020, 31.1730)], 16.0),
    ("田林路", [(121.4400, 31.1700), (121.4220, 31.1705), (121.4020, 31.1710)], 12.0),
    ("钦州路", [(121.4265, 31.1850), (121.4260, 31.1700), (121.4255, 31.1520)], 10.0),
    ("桂林路", [(121.4180, 31.1800), (121.4175, 31.1650), (121.4170, 31.1450)], 12.0),
    ("虹漕路", [(121.4100, 31.1780), (121.4095, 31.1650), (121.4090, 31.1500)], 12.0),
    ("漕宝路", [(121.4450, 31.1630), (121.4250, 31.1625), (121.4000, 31.1620)], 20.0),
    ("古美路", [(121.4060, 31.1620), (121.4055, 31.1480), (121.4050, 31.1330)], 10.0),
    ("凯旋路", [(121.4290, 31.2080), (121.4310, 31.1960), (121.4320, 31.1850)], 12.0),
    ("龙吴路", [(121.4660, 31.1800), (121.4610, 31.1550), (121.4540, 31.1280)], 16.0),
    ("华泾路", [(121.4200, 31.1280), (121.4380, 31.1290), (121.4560, 31.1300)], 10.0),
    ("罗秀路", [(121.4150, 31.1400), (121.4400, 31.1405), (121.4620, 31.1410)], 10.0),
    ("百色路", [(121.4300, 31.1500), (121.4450, 31.1505), (121.4640, 31.1510)], 10.0),
    ("老沪闵路", [(121.4400, 31.1600), (121.4300, 31.1420), (121.4200, 31.1240)], 12.0),
    ("东安路", [(121.4560, 31.2050), (121.4555, 31.1930), (121.4550, 31.1800)], 10.0),
]
# 汾阳路, the road of issue 11's worked example (a road crack near 汾阳路150号), from 淮海中路 to 岳阳路.
# It is drawn with a generator of its own after the others, so adding it changed no other feature.
FENYANG = ("汾阳路", [(121.4490, 31.2176), (121.4528, 31.2110)], 8.0)
HISTORIC_ROADS = {"衡山路", "武康路", "岳阳路", "天平路", "建国西路", "淮海中路"}
CITY_CENTRE = (121.475, 31.232)  # 人民广场: door numbers start at the road end nearer to it
XUJIAHUI = (121.4370, 31.1975)
CAOHEJING = (121.4050, 31.1700)

SURNAMES = list("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤")
GIVEN = list("伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红建国文斌辉波宁燕飞鹏俊峰亮晨浩宇晓雯倩婷欣怡嘉琪佳颖思远志海蓉琳瑜珺雪松")

COMPOUND_ROOTS = ["梅陇", "长桥", "华亭", "宛平", "云锦", "汇翠", "馨都", "华园", "东安", "漕溪", "龙华", "田林",
                  "康乐", "桂林", "高安", "嘉善", "枫林", "南丹", "罗秀", "百色", "华泾", "虹梅", "乐山", "徐汇",
                  "日晖", "斜土", "凌云", "钦州", "古美", "双峰", "天钥", "中山", "建国", "永嘉", "美罗", "汇金"]
COMPOUND_SUFFIX = ["新村", "小区", "花园", "公寓", "苑", "大楼", "坊", "一村", "二村", "三村"]
COMPANY_ROOTS = ["汇金", "港汇", "美罗", "东方", "光启", "华鑫", "徐家汇", "漕河泾", "龙华", "滨江", "星扬",
                 "西岸", "云锦", "宏汇", "天钥", "腾飞", "光大", "太平洋", "华亭", "建汇", "百联"]

# Part subclasses the sample city has (code, count in parts.geojson, placement rule). Their names
# come from the one part-class catalogue, cim/data/part_classes.csv, which seeds every base.
PART_CATALOGUE = Path(__file__).resolve().parents[1] / "cim" / "data" / "part_classes.csv"
PART_SUBCLASS_PLAN = [
    ("0101", 300, "pipe:给水"),
    ("0102", 350, "pipe:污水"),
    ("0103", 450, "pipe:雨水"),
    ("0104", 250, "pipe:电力"),
    ("0105", 250, "pipe:通信"),
    ("0106", 150, "pipe:燃气"),
    ("0110", 200, "curb"),
    ("0111", 80, "off"),
    ("0201", 120, "junction"),
    ("0202", 800, "run:32"),
    ("0203", 60, "curb"),
    ("0205", 200, "curb"),
    ("0301", 30, "off"),
    ("0302", 300, "curb"),
    ("0303", 250, "curb"),
    ("0402", 785, "run:7"),
    ("0405", 80, "off"),
    ("0406", 15, "off"),
    ("0407", 100, "curb"),
    ("0501", 60, "curb"),
    ("0502", 20, "off"),
    ("0601", 150, "curb"),
]


def part_subclasses() -> list[tuple[str, str, int, str]]:
    """(code, name, count, placement rule) of each planned subclass, named by the catalogue."""
    with open(PART_CATALOGUE, encoding="utf-8", newline="") as fh:
        names = {r["code"]: r["name"] for r in csv.DictReader(fh)}
    missing = [code for code, _, _ in PART_SUBCLASS_PLAN if code not in names or code[:2] not in names]
    if missing:
        raise SystemExit(f"{PART_CATALOGUE}: no part class {', '.join(missing)} (the sample city may use only "
                         "classes of the catalogue)")
    return [(code, names[code], n, rule) for code, n, rule in PART_SUBCLASS_PLAN]


PART_SUBCLASSES = part_subclasses()
PART_OWNER = {
    "0101": "上海城投水务(集团)有限公司", "0102": "区水务局", "0103": "区水务局",
    "0104": "国网上海市区供电公司", "0105": "中国电信上海分公司", "0106": "上海燃气有限公司",
    "0110": "区消防救援支队", "0111": "国网上海市区供电公司", "0201": "区公安分局交警支队",
    "0202": "区建管委", "0203": "区交通委", "0205": "区公安分局交警支队", "0301": "区市容绿化局",
    "0302": "区市容绿化局", "0303": "区市容绿化局", "0402": "区市容绿化局", "0405": "区市容绿化局",
    "0406": "区文旅局", "0407": "区市容绿化局", "0501": "街道办事处", "0502": "区民防办",
    "0601": "区公安分局",
}
PART_MAINTAINER = {
    "01": ["上海徐汇市政工程养护有限公司", "上海城投管网维护有限公司"],
    "02": ["上海徐汇市政工程养护有限公司", "徐汇区路灯管理所", "上海交通设施维护有限公司"],
    "03": ["徐汇区环卫作业公司", "上海汇洁环境服务有限公司"],
    "04": ["徐汇区绿化管理所", "上海汇绿园林养护有限公司"],
    "05": ["徐汇区房屋维修中心", "上海徐房物业有限公司"],
    "06": ["上海安防系统维护有限公司", "徐汇区技防办"],
}

PIPE_KINDS = {
    # kind: (target metres, lateral offset from road centreline, diameters, materials, depth range, owner list)
    "给水": (5800.0, 6.0, [100, 150, 200, 300, 400, 500, 600, 800, 1000, 1200], ["球墨铸铁", "PE", "钢"], (0.7, 2.0),
            ["上海城投水务(集团)有限公司"]),
    "污水": (4300.0, -3.0, [300, 400, 500, 600, 800, 1000, 1200, 1500], ["钢筋混凝土", "HDPE", "混凝土"], (2.0, 6.0),
            ["区水务局", "上海城投污水处理有限公司"]),
    "雨水": (4700.0, 3.0, [300, 400, 600, 800, 1000, 1200, 1500, 1800], ["钢筋混凝土", "混凝土", "HDPE"], (1.5, 4.0),
            ["区水务局"]),
    "排水": (1500.0, 0.0, [300, 400, 600, 800, 1000], ["混凝土", "钢筋混凝土"], (1.2, 3.5), ["区水务局"]),
    "燃气": (4400.0, -6.0, [100, 150, 200, 300, 400, 500], ["PE", "钢"], (0.8, 1.5), ["上海燃气有限公司"]),
    "电力": (4000.0, 9.0, [100, 150, 175, 200], ["铜缆", "铝缆"], (0.7, 1.5), ["国网上海市区供电公司"]),
    "通信": (3500.0, -9.0, [100, 110, 150], ["光缆", "铜缆", "PVC管"], (0.7, 1.2),
            ["中国电信上海分公司", "中国移动上海公司", "中国联通上海分公司"]),
    "热力": (1000.0, 12.0, [150, 200, 250, 300, 400], ["钢", "预制保温钢管"], (1.0, 2.0), ["漕河泾开发区能源服务公司"]),
    "工业": (800.0, -12.0, [100, 150, 200, 300], ["钢", "不锈钢"], (0.8, 1.8), ["上海华谊工业管线有限公司"]),
}


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------
def snap(geom, grid=GRID):
    return shapely.set_precision(geom, grid)


def largest(geom):
    if geom.geom_type in ("Polygon", "LineString"):
        return geom
    parts = sorted(geom.geoms, key=lambda g: (-(g.area if g.area else g.length), g.wkb))
    return parts[0]


def fmt(v, nd):
    return f"{v:.{nd}f}"


def deg(v):
    return round(float(v), DEG_DECIMALS)


def write_csv(path, header, rows):
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        for r in rows:
            w.writerow(r)


def geojson_coords(geom):
    if geom.geom_type == "Point":
        return [deg(geom.x), deg(geom.y)]
    if geom.geom_type == "LineString":
        return [[deg(x), deg(y)] for x, y in geom.coords]
    if geom.geom_type == "Polygon":
        return [[[deg(x), deg(y)] for x, y in ring.coords] for ring in [geom.exterior, *geom.interiors]]
    raise ValueError(geom.geom_type)


def write_geojson(path, name, records, geoms_wgs84):
    """RFC 7946 FeatureCollection (no crs member), one feature per line."""
    lines = []
    for props, geom in zip(records, geoms_wgs84):
        if geom.geom_type == "Polygon":
            geom = shapely.orient_polygons(geom, exterior_cw=False)
        feat = {"type": "Feature", "properties": props,
                "geometry": {"type": geom.geom_type, "coordinates": geojson_coords(geom)}}
        lines.append(json.dumps(feat, ensure_ascii=False, separators=(",", ":")))
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write('{"type":"FeatureCollection","name":"%s","features":[\n' % name)
        fh.write(",\n".join(lines))
        fh.write("\n]}\n")


def write_ogr(path, columns, geoms, layer, driver, encoding=None, geometry_type=None):
    import geopandas as gpd  # local import: only needed for writing

    df = gpd.GeoDataFrame(columns, geometry=list(geoms), crs=PROJ_CRS)
    kwargs = {}
    if driver == "ESRI Shapefile":
        kwargs["layer_options"] = {"DBF_DATE_LAST_UPDATE": FIXED_DATE, "SPATIAL_INDEX": "NO"}
        kwargs["encoding"] = encoding
    pyogrio.write_dataframe(df, path, layer=layer, driver=driver, geometry_type=geometry_type, **kwargs)


def person_name(rng, used):
    while True:
        n = SURNAMES[rng.integers(len(SURNAMES))] + "".join(
            GIVEN[i] for i in rng.integers(len(GIVEN), size=int(rng.integers(1, 3))))
        if n not in used:
            used.add(n)
            return n


def phone(rng):
    if rng.random() < 0.3:
        return "021-6" + "".join(str(d) for d in rng.integers(0, 10, size=7))
    return "13" + str(rng.integers(0, 10)) + "".join(str(d) for d in rng.integers(0, 10, size=8))


def company(rng, kind):
    return "上海" + COMPANY_ROOTS[rng.integers(len(COMPANY_ROOTS))] + kind


# --------------------------------------------------------------------------------------------
# Administrative hierarchy
# --------------------------------------------------------------------------------------------
def make_district(rng):
    poly = to_proj(Polygon(DISTRICT_OUTLINE))
    # densify and jitter the outline so that it is not a clean polygon of 22 vertices
    dense = shapely.segmentize(poly.exterior, 180.0)
    pts = np.asarray(dense.coords)[:-1]
    noise = rng.normal(0.0, 18.0, size=pts.shape)
    noise = (noise + np.roll(noise, 1, axis=0) + np.roll(noise, -1, axis=0)) / 3.0  # smooth
    pts = pts + noise
    poly = Polygon(np.vstack([pts, pts[:1]]))
    poly = largest(shapely.make_valid(poly))
    return snap(poly)


def voronoi_partition(container, seeds):
    """Voronoi cells of seeds (N, 2) clipped to container; multi-part leftovers merged into neighbours."""
    vor = shapely.voronoi_polygons(MultiPoint(seeds), extend_to=container.buffer(2000), ordered=True)
    cells = [container.intersection(c) for c in vor.geoms]
    orphans = []
    for i, c in enumerate(cells):
        if c.geom_type != "Polygon":
            polys = [g for g in getattr(c, "geoms", [c]) if g.geom_type == "Polygon"]
            polys.sort(key=lambda g: -g.area)
            cells[i] = polys[0]
            orphans.extend(polys[1:])
    for o in orphans:
        shared = [o.buffer(0.05).intersection(c.boundary).length for c in cells]
        j = int(np.argmax(shared))
        cells[j] = largest(shapely.union(cells[j], o, grid_size=GRID))
    return cells


def sample_in(poly, rng, n):
    minx, miny, maxx, maxy = poly.bounds
    out = []
    while sum(len(o) for o in out) < n:
        xy = rng.uniform([minx, miny], [maxx, maxy], size=(n * 3, 2))
        out.append(xy[shapely.contains_xy(poly, xy[:, 0], xy[:, 1])])
    return np.vstack(out)[:n]


def kmeans_seeds(poly, rng, k):
    pts = sample_in(poly, rng, 1500)
    centres = pts[rng.choice(len(pts), size=k, replace=False)]
    for _ in range(20):
        d = ((pts[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
        lab = d.argmin(1)
        centres = np.array([pts[lab == j].mean(0) if (lab == j).any() else centres[j] for j in range(k)])
    return centres


def split_in_two(poly):
    rect = poly.minimum_rotated_rectangle
    c = np.asarray(rect.exterior.coords)[:4]
    e1, e2 = c[1] - c[0], c[2] - c[1]
    axis = e1 if np.hypot(*e1) >= np.hypot(*e2) else e2
    axis = axis / np.hypot(*axis)
    cx, cy = poly.centroid.x, poly.centroid.y
    for ang in (0.0, 0.35, -0.35, 0.7, -0.7):
        a = np.array([axis[0] * math.cos(ang) - axis[1] * math.sin(ang),
                      axis[0] * math.sin(ang) + axis[1] * math.cos(ang)])
        n = np.array([-a[1], a[0]])
        big = 20000.0
        half1 = Polygon([(cx + n[0] * big, cy + n[1] * big), (cx - n[0] * big, cy - n[1] * big),
                         (cx - n[0] * big + a[0] * big, cy - n[1] * big + a[1] * big),
                         (cx + n[0] * big + a[0] * big, cy + n[1] * big + a[1] * big)])
        p1 = poly.intersection(half1)
        p2 = poly.difference(half1)
        if p1.geom_type == "Polygon" and p2.geom_type == "Polygon":
            return [p1, p2]
    return [poly]


def make_admin(rng, district):
    seeds = to_proj(MultiPoint([(s[2], s[3]) for s in STREETS]))
    seeds = np.array([(p.x, p.y) for p in seeds.geoms])
    street_cells = voronoi_partition(district, seeds)

    ks = rng.integers(4, 6, size=len(STREETS))
    while ks.sum() > 56:
        fives = np.flatnonzero(ks == 5)
        ks[fives[rng.integers(len(fives))]] = 4
    communities = []  # dicts: code, name, street_code, geom
    for (scode, sname, _, _), cell, k in zip(STREETS, street_cells, ks):
        cseeds = kmeans_seeds(cell, rng, int(k))
        ccells = voronoi_partition(cell, cseeds)
        # sequence north -> south, then west -> east
        order = sorted(range(len(ccells)), key=lambda i: (-round(ccells[i].centroid.y, -1), ccells[i].centroid.x))
        roots = COMMUNITY_ROOTS[scode]
        for seq, i in enumerate(order, start=1):
            communities.append({"code": f"{scode}{seq:03d}", "name": f"{roots[seq - 1]}居委会",
                                "street_code": scode, "geom": ccells[i]})
    n_split = N_GRIDS - len(communities)
    by_area = sorted(range(len(communities)), key=lambda i: -communities[i]["geom"].area)
    to_split = set(by_area[:n_split])
    grids = []
    street_names = {s[0]: s[1] for s in STREETS}
    per_street = {}
    for i, com in enumerate(communities):
        pieces = split_in_two(com["geom"]) if i in to_split else [com["geom"]]
        pieces.sort(key=lambda g: (-round(g.centroid.y, -1), g.centroid.x))
        for seq, g in enumerate(pieces, start=1):
            n = per_street[com["street_code"]] = per_street.get(com["street_code"], 0) + 1
            grids.append({"grid_code": f"{com['code']}{seq:03d}", "name": f"{street_names[com['street_code']]}第{n}网格",
                          "community_code": com["code"], "geom": g})

    # Node all boundaries together and rebuild every level from the same faces, so that the
    # levels nest exactly and neighbours share identical vertices.
    lines = [district.exterior] + [c.exterior for c in street_cells] + [c["geom"].exterior for c in communities] \
        + [g["geom"].exterior for g in grids]
    noded = shapely.union_all(lines, grid_size=GRID)
    faces = list(shapely.get_parts(shapely.polygonize(shapely.get_parts(noded))))
    tree = shapely.STRtree([g["geom"] for g in grids])
    owner = []
    for f in faces:
        rp = f.representative_point()
        hit = tree.query(rp, predicate="intersects")
        if len(hit) == 0:
            hit = [tree.nearest(rp)]
        owner.append(int(min(hit)))
    owner = np.array(owner)
    faces = np.array(faces, dtype=object)
    com_index = {c["code"]: i for i, c in enumerate(communities)}
    for gi, g in enumerate(grids):
        g["geom"] = largest(shapely.union_all(faces[owner == gi], grid_size=GRID))
    grid_com = np.array([com_index[g["community_code"]] for g in grids])
    for ci, c in enumerate(communities):
        gids = np.flatnonzero(grid_com == ci)
        c["geom"] = largest(shapely.union_all(faces[np.isin(owner, gids)], grid_size=GRID))
    streets = []
    for si, (scode, sname, _, _) in enumerate(STREETS):
        gids = [gi for gi, g in enumerate(grids) if g["grid_code"].startswith(scode)]
        geom = largest(shapely.union_all(faces[np.isin(owner, gids)], grid_size=GRID))
        streets.append({"code": scode, "name": sname, "district_code": DISTRICT_CODE, "geom": geom})
    district = largest(shapely.union_all(faces, grid_size=GRID))
    return district, streets, communities, grids


# --------------------------------------------------------------------------------------------
# Roads
# --------------------------------------------------------------------------------------------
def make_roads(rng, district):
    centre = to_proj(Point(CITY_CENTRE))
    roads = []
    for i, (name, pts, hw) in enumerate(ROADS, start=1):
        line = to_proj(LineString(pts))
        c = np.asarray(line.coords)
        bent = [c[0]]
        for a, b in zip(c[:-1], c[1:]):
            d = b - a
            n = np.array([-d[1], d[0]]) / np.hypot(*d)
            bent.append((a + b) / 2.0 + n * rng.normal(0.0, 25.0))
            bent.append(b)
        line = LineString(bent)
        line = largest(line.intersection(district.buffer(-5.0)))
        if line.geom_type != "LineString":
            raise RuntimeError(f"road {name} does not cross the district")
        if Point(line.coords[-1]).distance(centre) < Point(line.coords[0]).distance(centre):
            line = line.reverse()
        roads.append({"name": name, "road_code": f"R{DISTRICT_CODE}{i:03d}", "half_width": hw, "geom": snap(line)})
    return roads


def make_fenyang(seed, district, admin, district_inner):
    """汾阳路 and its doors (1, 2, 5, 6, 9, 10 … up to 160; odd on the left): the road and address rows."""
    rng = np.random.default_rng(seed + 1)
    name, pts, hw = FENYANG
    line = largest(to_proj(LineString(pts)).intersection(district.buffer(-5.0)))
    centre = to_proj(Point(CITY_CENTRE))
    if Point(line.coords[-1]).distance(centre) < Point(line.coords[0]).distance(centre):
        line = line.reverse()
    line = snap(line)
    road = {"name": name, "road_code": f"R{DISTRICT_CODE}{len(ROADS) + 1:03d}", "half_width": hw, "geom": line}
    rows = []
    for n in range(1, 161):
        if n % 4 not in (1, 2):
            continue
        p, t, nv = road_frame(line, 15.0 + (n - 1) / 159 * (line.length - 30.0))
        xy = np.round(p + nv * (1.0 if n % 2 else -1.0) * (hw + float(rng.uniform(6.0, 14.0))), 3)
        loc = admin.locate(xy) if district_inner.contains(Point(xy)) else None
        if loc is None:
            continue
        rows.append(dict(xy=xy, road=name, door_number=str(n), lane="", building_no="", unit="", floor="", room="",
                         compound="", street=loc[0]["name"], community=loc[1]["name"]))
    if not any(r["door_number"] == "150" for r in rows):
        raise RuntimeError("汾阳路150号 fell on a community boundary: move FENYANG")
    return road, rows


def road_frame(line, s):
    """Point and unit tangent / left normal at distance s along line."""
    L = line.length
    p = line.interpolate(s)
    a = line.interpolate(max(s - 2.0, 0.0))
    b = line.interpolate(min(s + 2.0, L))
    t = np.array([b.x - a.x, b.y - a.y])
    t = t / (np.hypot(*t) or 1.0)
    return np.array([p.x, p.y]), t, np.array([-t[1], t[0]])


# --------------------------------------------------------------------------------------------
# Addresses
# --------------------------------------------------------------------------------------------
class AdminIndex:
    def __init__(self, streets, communities):
        self.communities = communities
        self.street_by_code = {s["code"]: s for s in streets}
        self.tree = shapely.STRtree([c["geom"] for c in communities])
        self.boundaries = shapely.union_all([c["geom"].boundary for c in communities])
        shapely.prepare(self.boundaries)

    def locate(self, xy, margin=3.0):
        """(street, community) whose polygons contain xy, or None if outside / too close to a boundary."""
        p = Point(xy)
        if shapely.dwithin(self.boundaries, p, margin):
            return None
        hit = self.tree.query(p, predicate="within")
        if len(hit) != 1:
            return None
        com = self.communities[int(hit[0])]
        return self.street_by_code[com["street_code"]], com


def make_addresses(rng, roads, admin, district_inner):
    rows = []
    used_compounds = set()
    for road in roads:
        line, hw = road["geom"], road["half_width"]
        L = line.length
        for side, parity in ((1.0, 1), (-1.0, 0)):
            s = float(rng.uniform(10.0, 80.0))
            last = -1
            while s < L - 15.0:
                num = 2 * int(s // 8.0) + (1 if parity else 2)
                if num <= last:
                    num = last + 2
                last = num
                p, t, n = road_frame(line, s)
                if rng.random() < 0.16:  # a lane (弄) with several numbered buildings
                    while True:
                        comp = COMPOUND_ROOTS[rng.integers(len(COMPOUND_ROOTS))] + \
                            COMPOUND_SUFFIX[rng.integers(len(COMPOUND_SUFFIX))]
                        if comp not in used_compounds or len(used_compounds) > 300:
                            used_compounds.add(comp)
                            break
                    nb = int(rng.integers(2, 6))
                    bno = 0
                    for j in range(nb):
                        bno += int(rng.integers(1, 3))
                        depth = hw + 30.0 + 22.0 * j
                        along = (12.0 if j % 2 else -12.0) + rng.normal(0.0, 2.0)
                        xy = p + t * along + n * side * depth
                        floors = int(rng.choice([5, 6, 6, 6, 7, 12, 18]))
                        unit = str(int(rng.integers(1, 4))) if rng.random() < 0.25 else ""
                        for _ in range(int(rng.integers(1, 3))):
                            fl = int(rng.integers(1, floors + 1))
                            room = f"{fl}{int(rng.integers(1, 5)):02d}"
                            rows.append(dict(xy=xy, road=road["name"], door_number="", lane=str(num),
                                             building_no=str(bno), unit=unit, floor=str(fl), room=room,
                                             compound=comp))
                else:
                    xy = p + n * side * (hw + float(rng.uniform(6.0, 14.0)))
                    fl = room = ""
                    if rng.random() < 0.15:
                        f = int(rng.integers(2, 25))
                        fl, room = str(f), f"{f}{int(rng.integers(1, 12)):02d}"
                    rows.append(dict(xy=xy, road=road["name"], door_number=str(num), lane="", building_no="",
                                     unit="", floor=fl, room=room, compound=""))
                s += float(rng.uniform(70.0, 150.0))
    # keep points that lie clearly inside one community
    kept = []
    for r in rows:
        if not district_inner.contains(Point(r["xy"])):
            continue
        loc = admin.locate(r["xy"])
        if loc is None:
            continue
        r["street"], r["community"] = loc[0]["name"], loc[1]["name"]
        r["xy"] = np.round(r["xy"], 3)
        kept.append(r)
    need = N_ADDRESSES + N_ADDRESSES_FULL
    if len(kept) < need:
        raise RuntimeError(f"only {len(kept)} address candidates, need {need}")
    idx = np.sort(rng.choice(len(kept), size=need, replace=False))
    chosen = [kept[i] for i in idx]
    full_idx = set(rng.choice(need, size=N_ADDRESSES_FULL, replace=False).tolist())
    main = [r for i, r in enumerate(chosen) if i not in full_idx]
    full = [r for i, r in enumerate(chosen) if i in full_idx]
    return main, full


def full_address(r):
    s = f"上海市{DISTRICT_NAME}{r['road']}"
    if r["lane"]:
        s += f"{r['lane']}弄{r['building_no']}号"
    else:
        s += f"{r['door_number']}号"
    if r["room"]:
        s += f"{r['room']}室"
    return s


_FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


# --------------------------------------------------------------------------------------------
# Buildings
# --------------------------------------------------------------------------------------------
def local_poly(shell, cx, cy, t, n, holes=()):
    """Polygon from local (u along road, v away from road) coordinates centred on (cx, cy)."""
    def tr(pts):
        pts = np.asarray(pts, dtype=float)
        return np.column_stack([cx + pts[:, 0] * t[0] + pts[:, 1] * n[0], cy + pts[:, 0] * t[1] + pts[:, 1] * n[1]])
    return Polygon(tr(shell), [tr(h) for h in holes])


def rect_pts(a, b):
    return [(-a / 2, -b / 2), (a / 2, -b / 2), (a / 2, b / 2), (-a / 2, b / 2)]


class Occupancy:
    """Greedy non-overlap check with a coarse spatial hash."""

    def __init__(self, cell=120.0):
        self.cell = cell
        self.buckets = {}
        self.geoms = []

    def _cells(self, bounds, pad):
        x0, y0, x1, y1 = bounds
        c = self.cell
        for i in range(int((x0 - pad) // c), int((x1 + pad) // c) + 1):
            for j in range(int((y0 - pad) // c), int((y1 + pad) // c) + 1):
                yield (i, j)

    def free(self, geom, gap):
        seen = set()
        for key in self._cells(geom.bounds, gap):
            for k in self.buckets.get(key, ()):
                if k not in seen:
                    seen.add(k)
                    if shapely.dwithin(self.geoms[k], geom, gap):
                        return False
        return True

    def add(self, geom):
        k = len(self.geoms)
        self.geoms.append(geom)
        for key in self._cells(geom.bounds, 0.0):
            self.buckets.setdefault(key, []).append(k)


def pick_use(rng, xy, xjh, chj, north_y):
    d_xjh = math.hypot(xy[0] - xjh[0], xy[1] - xjh[1])
    d_chj = math.hypot(xy[0] - chj[0], xy[1] - chj[1])
    p = {"住宅": 0.55, "办公": 0.12, "商业": 0.12, "教育": 0.05, "工业": 0.06, "医疗": 0.03, "文化": 0.03,
         "公共服务": 0.04}
    if d_xjh < 1500:
        p["办公"] += 0.15
        p["商业"] += 0.10
        p["工业"] = 0.0
    if d_chj < 2000:
        p["办公"] += 0.12
        p["工业"] += 0.10
    if xy[1] < north_y - 8500:  # the south (华泾)
        p["工业"] += 0.08
    keys = list(p)
    w = np.array([p[k] for k in keys])
    return keys[int(rng.choice(len(keys), p=w / w.sum()))]


def make_buildings(rng, roads, district):
    inner = district.buffer(-8.0)
    shapely.prepare(inner)
    corridor = shapely.union_all([r["geom"].buffer(r["half_width"] + 4.0, cap_style="flat") for r in roads])
    shapely.prepare(corridor)
    occ = Occupancy()
    lengths = np.array([r["geom"].length for r in roads])
    xjh = to_proj(Point(XUJIAHUI))
    chj = to_proj(Point(CAOHEJING))
    xjh, chj = (xjh.x, xjh.y), (chj.x, chj.y)
    north_y = district.bounds[3]
    historic = [r for r in roads if r["name"] in HISTORIC_ROADS]
    towers_road = [r for r in roads if r["name"] in ("漕溪北路", "肇嘉浜路", "虹桥路", "中山南二路")]
    out = []

    def try_place(road, use, shape, dims, offset, floors, year, structure, protected, name):
        line, hw = road["geom"], road["half_width"]
        s = float(rng.uniform(30.0, line.length - 30.0))
        side = 1.0 if rng.random() < 0.5 else -1.0
        p, t, n = road_frame(line, s)
        a, b = dims
        n = n * side
        centre = p + n * (hw + offset + b / 2.0)
        if shape == "rect":
            geom = local_poly(rect_pts(a, b), *centre, t, n)
        elif shape == "L":
            ta, tb = a * float(rng.uniform(0.3, 0.45)), b * float(rng.uniform(0.35, 0.5))
            pts = [(0, 0), (a, 0), (a, tb), (ta, tb), (ta, b), (0, b)]
            if rng.random() < 0.5:
                pts = [(a - x, y) for x, y in pts][::-1]
            geom = local_poly([(x - a / 2, y - b / 2) for x, y in pts], *centre, t, n)
        else:  # courtyard
            h = a * float(rng.uniform(0.35, 0.5))
            geom = local_poly(rect_pts(a, b), *centre, t, n, holes=[rect_pts(h, h * b / a)])
        geom = snap(shapely.set_precision(geom, 0.01))
        if not geom.is_valid or not inner.contains(geom) or corridor.intersects(geom) or not occ.free(geom, 4.0):
            return False
        occ.add(geom)
        out.append(dict(geom=geom, use=use, floors=floors, year=year, structure=structure, protected=protected,
                        name=name, road=road["name"]))
        return True

    # 1. a handful of towers > 150 m around 徐家汇 and the main roads
    towers = 0
    while towers < 5:
        road = towers_road[int(rng.integers(len(towers_road)))]
        fl = int(rng.integers(46, 56))
        use = "办公" if towers != 3 else "商业"
        name = COMPANY_ROOTS[int(rng.integers(len(COMPANY_ROOTS)))] + ("中心" if towers % 2 else "国际大厦")
        if try_place(road, use, "rect", (float(rng.uniform(38, 50)), float(rng.uniform(36, 46))),
                     float(rng.uniform(8, 20)), fl, int(rng.integers(2005, 2021)), "钢结构", 0, name):
            towers += 1
    # 2. six courtyard buildings
    court = 0
    while court < 6:
        road = roads[int(rng.choice(len(roads), p=lengths / lengths.sum()))]
        use = ["教育", "办公", "商业", "公共服务", "文化", "教育"][court]
        a = float(rng.uniform(55, 75))
        if try_place(road, use, "court", (a, a * float(rng.uniform(0.8, 1.0))), float(rng.uniform(20, 80)),
                     int(rng.integers(3, 7)), int(rng.integers(1955, 2015)), "钢混", 0,
                     COMPOUND_ROOTS[int(rng.integers(len(COMPOUND_ROOTS)))] + {"教育": "中学", "办公": "科技园",
                     "商业": "商业广场", "公共服务": "社区服务中心", "文化": "文化中心"}[use]):
            court += 1
    # 3. historic villas and lane houses near 衡山路 / 武康路
    hist = 0
    while hist < 28:
        road = historic[int(rng.integers(len(historic)))]
        fl = int(rng.integers(2, 5))
        prot = 1 if rng.random() < 0.75 else 0
        name = (road["name"] + f"{int(rng.integers(1, 900))}号" + ["花园住宅", "老洋房", "公寓", "里弄住宅"][int(rng.integers(4))]) \
            if rng.random() < 0.7 else ""
        if try_place(road, "住宅", "rect" if rng.random() < 0.7 else "L",
                     (float(rng.uniform(12, 22)), float(rng.uniform(10, 16))), float(rng.uniform(6, 60)), fl,
                     int(rng.integers(1920, 1949)), "砖混", prot, name):
            hist += 1
    # 4. everything else
    tries = 0
    while len(out) < N_BUILDINGS:
        tries += 1
        if tries > 200000:
            raise RuntimeError("could not place buildings")
        road = roads[int(rng.choice(len(roads), p=lengths / lengths.sum()))]
        s_probe = road["geom"].interpolate(float(rng.uniform(0, road["geom"].length)))
        use = pick_use(rng, (s_probe.x, s_probe.y), xjh, chj, north_y)
        offset = float(rng.uniform(2, 15)) if rng.random() < 0.55 else float(rng.uniform(40, 220))
        shape = "L" if rng.random() < 0.12 else "rect"
        name = ""
        if use == "住宅":
            if rng.random() < 0.6:
                fl = int(rng.choice([5, 6, 6, 6, 7]))
                dims = (float(rng.uniform(36, 62)), float(rng.uniform(10, 13)))
                year = int(rng.integers(1955, 1998))
            else:
                fl = int(rng.integers(11, 34))
                dims = (float(rng.uniform(20, 34)), float(rng.uniform(14, 20)))
                year = int(rng.integers(1993, 2023))
            structure = "砖混" if fl <= 7 and year < 1990 else "钢混"
            if rng.random() < 0.55:
                name = COMPOUND_ROOTS[int(rng.integers(len(COMPOUND_ROOTS)))] + \
                    COMPOUND_SUFFIX[int(rng.integers(len(COMPOUND_SUFFIX)))] + f"{int(rng.integers(1, 40))}号楼"
        elif use == "办公":
            fl = int(rng.integers(8, 40)) if rng.random() < 0.8 else int(rng.integers(4, 8))
            dims = (float(rng.uniform(28, 60)), float(rng.uniform(20, 36)))
            year = int(rng.integers(1988, 2025))
            structure = "钢结构" if fl > 25 and rng.random() < 0.5 else "钢混"
            if rng.random() < 0.8:
                name = COMPANY_ROOTS[int(rng.integers(len(COMPANY_ROOTS)))] + \
                    ["大厦", "中心", "广场", "科技楼", "商务楼"][int(rng.integers(5))]
        elif use == "商业":
            fl = int(rng.integers(2, 9)) if rng.random() < 0.7 else int(rng.integers(9, 30))
            dims = (float(rng.uniform(30, 70)), float(rng.uniform(20, 45)))
            year = int(rng.integers(1985, 2025))
            structure = "钢混" if rng.random() < 0.8 else "钢结构"
            if rng.random() < 0.7:
                name = COMPANY_ROOTS[int(rng.integers(len(COMPANY_ROOTS)))] + ["商厦", "广场", "购物中心", "百货"][int(rng.integers(4))]
        elif use == "教育":
            fl = int(rng.integers(3, 7))
            dims = (float(rng.uniform(40, 75)), float(rng.uniform(15, 24)))
            year = int(rng.integers(1952, 2020))
            structure = "钢混"
            shape = "L" if rng.random() < 0.4 else "rect"
            if rng.random() < 0.8:
                name = COMPOUND_ROOTS[int(rng.integers(len(COMPOUND_ROOTS)))] + ["小学", "中学", "幼儿园", "实验学校"][int(rng.integers(4))]
        elif use == "工业":
            fl = int(rng.integers(1, 5))
            dims = (float(rng.uniform(40, 90)), float(rng.uniform(25, 50)))
            year = int(rng.integers(1958, 2008))
            structure = "钢结构" if rng.random() < 0.5 else "钢混"
            if rng.random() < 0.4:
                name = COMPANY_ROOTS[int(rng.integers(len(COMPANY_ROOTS)))] + "厂房"
        else:  # 医疗 / 文化 / 公共服务
            fl = int(rng.integers(2, 16))
            dims = (float(rng.uniform(30, 60)), float(rng.uniform(18, 30)))
            year = int(rng.integers(1960, 2024))
            structure = "钢混"
            if rng.random() < 0.7:
                name = COMPOUND_ROOTS[int(rng.integers(len(COMPOUND_ROOTS)))] + \
                    {"医疗": "社区卫生服务中心", "文化": "文化活动中心", "公共服务": "市民服务中心"}[use]
        try_place(road, use, shape, dims, offset, fl, year, structure, 0, name)

    # attributes: floor height 3.02-3.58 m, ~10 % without height, base elevation 4.0-4.5 m
    n = len(out)
    no_height = set(rng.choice(np.arange(5, n), size=n // 10, replace=False).tolist())  # towers keep heights
    for i, b in enumerate(out):
        fh = float(rng.uniform(3.30, 3.58)) if b["floors"] >= 44 else float(rng.uniform(3.02, 3.58))
        b["height"] = None if i in no_height else round(min(max(b["floors"] * fh, 3.0), 200.0), 1)
        b["base_elev"] = round(float(rng.uniform(4.0, 4.5)), 2) if rng.random() > 0.01 else round(float(rng.uniform(3.2, 6.0)), 2)
    # stable order: north -> south in 100 m bands, then west -> east
    order = sorted(range(n), key=lambda i: (-int(out[i]["geom"].centroid.y // 100), out[i]["geom"].centroid.x))
    out = [out[i] for i in order]
    for i, b in enumerate(out, start=1):
        b["source_id"] = f"BLD-{i:05d}"
    return out


# --------------------------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------------------------
def make_pipelines(rng, roads, district):
    inner = district.buffer(-2.0)
    segs = []
    order = list(range(len(roads)))
    for kind, (target, offset, diams, materials, (dmin, dmax), owners) in PIPE_KINDS.items():
        laid = 0.0
        cand = [int(i) for i in rng.permutation(order)]
        while laid < target - 1.0:
            road = roads[cand.pop(0)]
            line = road["geom"]
            L = line.length
            run = min(float(rng.uniform(900, 2600)), target - laid, L - 60.0)
            if run < 150.0:
                if not cand:
                    break
                continue
            a = float(rng.uniform(30.0, L - 30.0 - run))
            sub = shapely.ops.substring(line, a, a + run)
            if offset:
                sub = sub.offset_curve(offset)
            sub = largest(sub.intersection(inner))
            if sub.geom_type != "LineString" or sub.length < 100:
                continue
            run = sub.length
            # cut into 50-300 m segments
            cuts = [0.0]
            while run - cuts[-1] > 300.0:
                cuts.append(cuts[-1] + float(rng.uniform(50.0, 300.0)))
            if run - cuts[-1] < 50.0 and len(cuts) > 1:
                cuts[-1] = (cuts[-2] + run) / 2.0
            cuts.append(run)
            gravity = kind in ("污水", "雨水", "排水")
            diam = int(rng.choice(diams[: max(2, len(diams) - 2)] if rng.random() < 0.7 else diams))
            material = materials[int(rng.integers(len(materials)))]
            owner = owners[int(rng.integers(len(owners)))]
            year = int(rng.integers(1965 if gravity else 1980, 2026))
            pressure = ""
            if kind == "燃气":
                pressure = ["低压", "中压", "次高压"][int(rng.choice(3, p=[0.35, 0.5, 0.15]))]
                if pressure == "次高压":
                    material, diam = "钢", int(rng.choice([300, 400, 500]))
            depth = float(rng.uniform(dmin, dmin + (dmax - dmin) * 0.6))
            for c0, c1 in zip(cuts[:-1], cuts[1:]):
                g = snap(shapely.ops.substring(sub, c0, c1))
                d0 = depth
                if gravity:
                    d1 = min(dmax, d0 + (c1 - c0) * float(rng.uniform(0.001, 0.004)))
                else:
                    d1 = min(dmax, max(dmin, d0 + float(rng.normal(0.0, 0.1))))
                depth = d1
                segs.append(dict(geom=g, kind=kind, diam=diam, material=material, pressure=pressure, year=year,
                                 owner=owner, d0=round(d0, 2), d1=round(d1, 2), road=road["name"]))
            laid += run
    missing = set(rng.choice(len(segs), size=round(len(segs) * 0.05), replace=False).tolist())
    for i, s in enumerate(segs, start=1):
        s["source_id"] = f"PL-{i:05d}"
        if i - 1 in missing:
            s["d0"] = s["d1"] = None
    return segs


# --------------------------------------------------------------------------------------------
# City parts
# --------------------------------------------------------------------------------------------
def junctions(roads):
    pts = []
    for i in range(len(roads)):
        for j in range(i + 1, len(roads)):
            x = roads[i]["geom"].intersection(roads[j]["geom"])
            for p in shapely.get_parts(x):
                if p.geom_type == "Point":
                    pts.append((p.x, p.y, max(roads[i]["half_width"], roads[j]["half_width"]), i))
    return pts


def make_parts(rng, roads, pipes, buildings, district, counts, start_index=1):
    inner = district.buffer(-3.0)
    shapely.prepare(inner)
    btree = shapely.STRtree([b["geom"] for b in buildings])
    lengths = np.array([r["geom"].length for r in roads])
    pipes_by_kind = {}
    for p in pipes:
        pipes_by_kind.setdefault(p["kind"], []).append(p)
    jn = junctions(roads)
    parts = []

    def ok(xy, off_road=False):
        pt = Point(xy)
        if not inner.contains(pt):
            return False
        if off_road and len(btree.query(pt, predicate="intersects")):
            return False
        return True

    def curb_point(road, s=None, extra=(0.5, 3.5), side=None):
        line = road["geom"]
        if s is None:
            s = float(rng.uniform(5.0, line.length - 5.0))
        p, t, n = road_frame(line, s)
        side = side if side is not None else (1.0 if rng.random() < 0.5 else -1.0)
        return p + n * side * (road["half_width"] + float(rng.uniform(*extra)))

    for code, name, _, rule in PART_SUBCLASSES:
        want = counts[code]
        pts = []
        guard = 0
        while len(pts) < want:
            guard += 1
            if guard > want * 200:
                raise RuntimeError(f"could not place parts {code}")
            road = roads[int(rng.choice(len(roads), p=lengths / lengths.sum()))]
            if rule.startswith("pipe:") and rng.random() < 0.65 and pipes_by_kind.get(rule[5:]):
                pl = pipes_by_kind[rule[5:]]
                seg = pl[int(rng.integers(len(pl)))]
                q = seg["geom"].interpolate(float(rng.uniform(0, seg["geom"].length)))
                xy, rname = np.array([q.x, q.y]), seg["road"]
            elif rule.startswith("pipe:"):
                off = PIPE_KINDS[rule[5:]][1]
                p, t, n = road_frame(road["geom"], float(rng.uniform(5.0, road["geom"].length - 5.0)))
                xy, rname = p + n * (off + float(rng.normal(0, 0.3))), road["name"]
            elif rule == "junction":
                x, y, hw, ri = jn[len(pts) // 4 % len(jn)]
                k = len(pts) % 4
                ang = math.pi / 4 + k * math.pi / 2 + float(rng.normal(0, 0.05))
                r = hw * 1.41 + float(rng.uniform(1, 3))
                xy, rname = np.array([x + r * math.cos(ang), y + r * math.sin(ang)]), roads[ri]["name"]
            elif rule.startswith("run:"):
                spacing = float(rule[4:])
                line = road["geom"]
                s0 = float(rng.uniform(5.0, line.length - 5.0))
                side = 1.0 if rng.random() < 0.5 else -1.0
                k = int(rng.integers(5, 25))
                for m in range(k):
                    s = s0 + m * spacing
                    if s > line.length - 5.0 or len(pts) >= want:
                        break
                    xy = curb_point(road, s=s, extra=(1.5, 2.0), side=side)
                    if ok(xy):
                        pts.append((xy, road["name"]))
                continue
            elif rule == "curb":
                xy, rname = curb_point(road), road["name"]
            else:  # off-road
                xy, rname = curb_point(road, extra=(6.0, 60.0)), road["name"]
                if rng.random() < 0.1:
                    xy = sample_in(district, rng, 1)[0]
            if ok(xy, off_road=(rule == "off")):
                pts.append((xy, rname))
        for xy, rname in pts:
            parts.append(dict(xy=np.round(xy, 3), subclass=code, sname=name, road=rname))

    statuses = ["完好", "破损", "丢失", "占用"]
    for i, p in enumerate(parts):
        code = p["subclass"]
        u = rng.random()
        if u < 0.88:
            st = "完好"
        elif u < 0.95:
            st = "破损"
        elif code[:2] == "01" and code not in ("0110", "0111"):
            st = "丢失"
        else:
            st = "占用" if u < 0.98 else "破损"
        assert st in statuses
        p["status"] = st
        p["owner"] = PART_OWNER[code]
        mlist = PART_MAINTAINER[code[:2]]
        p["maintainer"] = mlist[int(rng.integers(len(mlist)))]
        p["z"] = {"0601": 6.0, "0201": 6.5, "0205": 4.5}.get(code, 0.0)
        if code == "0203":
            p["name"] = f"{p['road']}站"
        elif code == "0301":
            p["name"] = f"{p['road']}公共厕所"
        else:
            p["name"] = p["sname"]
        p["source_id"] = f"PART-{start_index + i:05d}"
    return parts


# --------------------------------------------------------------------------------------------
# IoT
# --------------------------------------------------------------------------------------------
def make_iot(rng, parts, buildings, curtain_ids, roads):
    devices = []
    by_sub = {}
    for p in parts:
        by_sub.setdefault(p["subclass"], []).append(p)
    b_by_id = {b["source_id"]: b for b in buildings}
    cw = sorted(curtain_ids)
    rtree = shapely.STRtree([r["geom"] for r in roads])

    def near_road(xy):
        return roads[int(rtree.nearest(Point(xy)))]["name"]

    def pick(subs):
        pool = [p for s in subs for p in by_sub[s]]
        return pool[int(rng.integers(len(pool)))]

    used = set()

    def pick_unused(subs):
        while True:
            p = pick(subs)
            if p["source_id"] not in used:
                used.add(p["source_id"])
                return p

    q = lambda name, unit, lo, hi: {"quantity": name, "unit": unit, "alarm_low": lo, "alarm_high": hi}
    for _ in range(30):
        p = pick_unused(["0101", "0102", "0103", "0104", "0105"])
        qs = [q("tilt", "deg", None, 15.0)]
        if p["subclass"] in ("0102", "0103"):
            qs.append(q("water_level", "m", None, 1.2))
        devices.append(dict(device_type="井盖传感器", xy=p["xy"], linked=p["source_id"], z=0.0, quantities=qs))
    for k in range(20):
        if k < 12:
            p = pick_unused(["0103"])
            devices.append(dict(device_type="水位计", xy=p["xy"], linked=p["source_id"], z=-1.5,
                                quantities=[q("water_level", "m", None, 1.5)]))
        else:
            p = pick(["0201"])  # underpass / junction ponding gauge, not linked
            xy = p["xy"] + rng.normal(0, 4.0, size=2)
            devices.append(dict(device_type="水位计", xy=np.round(xy, 3), linked="", z=0.0,
                                quantities=[q("water_level", "m", None, 0.15)]))
    for k in range(20):
        if k < 15:
            p = pick_unused(["0106"])
            xy, linked = p["xy"], p["source_id"]
        else:
            p = pick(["0106"])
            xy, linked = np.round(p["xy"] + rng.normal(0, 15.0, size=2), 3), ""
        qs = [q("ch4", "%LEL", None, 20.0)]
        if rng.random() < 0.4:
            qs.append(q("temperature", "°C", -10.0, 60.0))
        devices.append(dict(device_type="燃气探测器", xy=xy, linked=linked, z=-0.5, quantities=qs))
    chosen = [cw[i] for i in rng.choice(len(cw), size=30, replace=False)]
    for k, bid in enumerate(chosen):
        b = b_by_id[bid]
        rp = b["geom"].representative_point()
        fl = b["floors"]
        if k < 20:
            floor = int(rng.integers(1, fl + 1))
            devices.append(dict(device_type="烟感探测器", xy=np.round([rp.x, rp.y], 3), linked=bid,
                                z=round((floor - 1) * 3.3 + 2.8, 1),
                                quantities=[q("smoke", "%obs/m", None, 4.0), q("temperature", "°C", None, 57.0)]))
        else:
            ext = b["geom"].exterior
            e = ext.interpolate(float(rng.uniform(0, ext.length)))
            h = b["height"] if b["height"] else fl * 3.3
            devices.append(dict(device_type="倾角传感器", xy=np.round([e.x, e.y], 3), linked=bid,
                                z=round(h * float(rng.uniform(0.5, 0.9)), 1),
                                quantities=[q("tilt_x", "deg", -0.5, 0.5), q("tilt_y", "deg", -0.5, 0.5)]))
    count = {}
    for i, d in enumerate(devices, start=1):
        d["source_id"] = f"IOT-{i:04d}"
        road = near_road(d["xy"])
        count[(road, d["device_type"])] = count.get((road, d["device_type"]), 0) + 1
        d["name"] = f"{road}{d['device_type']}{count[(road, d['device_type'])]:02d}"
    return devices


def make_readings(rng, devices):
    steps = 144
    hours = np.arange(steps) / 6.0
    rain = np.clip(np.sin((hours - 13.5) / 3.5 * np.pi), 0, None) * ((hours >= 13.5) & (hours <= 17.0))
    outdoor_t = 11.0 + 4.0 * np.sin((hours - 9.0) / 24.0 * 2 * np.pi)
    rows = []
    # deliberate events (alarm crossings)
    tilt_alarm_dev = next(d for d in devices if d["device_type"] == "井盖传感器")["source_id"]
    flood_devs = [d["source_id"] for d in devices if d["device_type"] == "水位计"][10:12]
    gas_dev = [d["source_id"] for d in devices if d["device_type"] == "燃气探测器"][3]
    smoke_dev = [d["source_id"] for d in devices if d["device_type"] == "烟感探测器"][5]
    wall_dev = [d["source_id"] for d in devices if d["device_type"] == "倾角传感器"][2]
    gap_dev = [d["source_id"] for d in devices if d["device_type"] == "井盖传感器"][7]
    for d in devices:
        did = d["source_id"]
        series = {}
        for qd in d["quantities"]:
            qn = qd["quantity"]
            if qn == "tilt":
                v = float(rng.uniform(0.2, 1.5)) + rng.normal(0, 0.08, steps)
                if did == tilt_alarm_dev:
                    v[20:26] = 28.0 + rng.normal(0, 1.5, 6)  # cover displaced 03:20-04:10
                nd = 2
            elif qn == "water_level":
                hi = qd["alarm_high"]
                base = float(rng.uniform(0.0, 0.02)) if hi < 1 else float(rng.uniform(0.2, 0.6))
                amp = float(rng.uniform(0.3, 0.7)) * (0.85 * hi - base)
                if did in flood_devs:
                    amp = (hi - base) * float(rng.uniform(1.1, 1.2))
                v = np.clip(base + amp * rain + rng.normal(0, 0.005 if hi < 1 else 0.02, steps), 0, None)
                nd = 3
            elif qn == "ch4":
                v = np.clip(float(rng.uniform(0.0, 1.0)) + rng.normal(0, 0.3, steps), 0, None)
                if did == gas_dev:
                    v[60:64] = [12.0, 23.5, 26.8, 18.2]  # 10:00-10:30 leak
                nd = 2
            elif qn == "temperature" and d["device_type"] == "烟感探测器":
                v = float(rng.uniform(19, 23)) + 1.5 * np.sin((hours - 8) / 24 * 2 * np.pi) + rng.normal(0, 0.2, steps)
                nd = 1
            elif qn == "temperature":
                v = outdoor_t + float(rng.normal(0, 1.0)) + rng.normal(0, 0.3, steps)
                nd = 1
            elif qn == "smoke":
                v = np.clip(float(rng.uniform(0.0, 0.3)) + rng.normal(0, 0.05, steps), 0, None)
                if did == smoke_dev:
                    v[73:75] = [5.2, 4.4]  # 12:10-12:20
                nd = 2
            else:  # tilt_x / tilt_y of curtain wall panels
                v = float(rng.normal(0, 0.05)) + rng.normal(0, 0.01, steps)
                if did == wall_dev and qn == "tilt_x":
                    v = v + 0.58 * np.exp(-(((hours - 16.0) / 0.6) ** 2))  # wind load peak around 16:00
                nd = 3
            series[qn] = (v, nd)
        for k in range(steps):
            if did == gap_dev and 36 <= k < 42:  # one hour missing 06:00-06:50
                continue
            hh, mm = divmod(k * 10, 60)
            ts = f"2026-11-24T{hh:02d}:{mm:02d}:00+08:00"
            for qd in d["quantities"]:
                v, nd = series[qd["quantity"]]
                val = fmt(float(v[k]), nd)
                if val.startswith("-") and float(val) == 0.0:
                    val = val[1:]
                rows.append((did, ts, qd["quantity"], val))
    return rows


# --------------------------------------------------------------------------------------------
# Responsibility chain
# --------------------------------------------------------------------------------------------
DISTRICT_DEPTS = {
    "SRLH": ("区市容绿化局", "03;04"),
    "JGW": ("区建管委", "0201;0202;0203;0205"),
    "FGJ": ("区房管局", "05"),
    "SWJ": ("区水务局", "0101;0102;0103"),
    "RQ": ("上海燃气有限公司", "0106"),
    "GD": ("国网上海市区供电公司", "0104;0111"),
    "DX": ("中国电信上海分公司", "0105"),
    "CGZF": ("区城管执法局", "03;0501"),
    "XF": ("区消防救援支队", "0110"),
    "GA": ("区公安分局", "0601;0201;0205"),
}


def make_responsibility(rng, streets, grids):
    used_names = set()
    people = []

    def new_person():
        p = (person_name(rng, used_names), phone(rng))
        people.append(p)
        return p

    rows = []
    post_no = [0]

    def post(name, dept_code, dept_name, handles, grid_codes, persons):
        post_no[0] += 1
        pcode = f"GW{DISTRICT_CODE}{post_no[0]:04d}"
        for g in grid_codes:
            for per in persons:
                rows.append((g, pcode, name, dept_code, dept_name, per[0], per[1], handles))

    grids_by_street = {}
    for g in grids:
        grids_by_street.setdefault(g["grid_code"][:9], []).append(g["grid_code"])
    zones = [streets[i:i + 4] for i in range(0, len(streets), 4)]
    for s in streets:
        scode, sname = s["code"], s["name"]
        gcodes = grids_by_street[scode]
        wg = (f"{scode}-WGZX", f"{sname}网格化管理中心", "01;02;03;04;05;06")
        bsc = (f"{scode}-BSC", f"{sname}办事处", "05;06")
        prev_sup = None
        for g in gcodes:
            # 网格监督员: one post per grid, 1-2 persons; some supervisors also serve the next grid
            sup = [new_person()] if (prev_sup is None or rng.random() < 0.6) else [prev_sup]
            if rng.random() < 0.3:
                sup.append(new_person())
            prev_sup = sup[0]
            post("网格监督员", *wg, [g], sup)
            # 网格长: one post per grid, held by the 居委会 head (the same person for both grids of a split community)
        by_com = {}
        for g in gcodes:
            by_com.setdefault(g[:12], []).append(g)
        for com, gl in by_com.items():
            head = new_person()
            for g in gl:
                post("网格长", *bsc, [g], [head])
        post("城管队员", f"{DISTRICT_CODE}-CGZF", DISTRICT_DEPTS["CGZF"][0], DISTRICT_DEPTS["CGZF"][1], gcodes,
             [new_person() for _ in range(int(rng.integers(2, 4)))])
        post("市容巡查员", f"{DISTRICT_CODE}-SRLH", DISTRICT_DEPTS["SRLH"][0], DISTRICT_DEPTS["SRLH"][1], gcodes,
             [new_person()])
        post("房管办管理员", f"{DISTRICT_CODE}-FGJ", DISTRICT_DEPTS["FGJ"][0], DISTRICT_DEPTS["FGJ"][1], gcodes,
             [new_person()])
    zone_posts = [("道路养护员", "JGW"), ("排水巡查员", "SWJ"), ("燃气巡线员", "RQ"), ("电力巡检员", "GD"),
                  ("通信线务员", "DX"), ("消防监督员", "XF"), ("治安巡逻员", "GA")]
    for z in zones:
        gcodes = [g for s in z for g in grids_by_street[s["code"]]]
        for pname, dk in zone_posts:
            post(pname, f"{DISTRICT_CODE}-{dk}", DISTRICT_DEPTS[dk][0], DISTRICT_DEPTS[dk][1], gcodes,
                 [new_person() for _ in range(int(rng.integers(1, 3)))])
    rows.sort(key=lambda r: (r[0], r[1], r[5]))
    return rows


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def generate(root: Path, seed: int = SEED):
    rng = np.random.default_rng(seed)
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": f"{FIXED_DATE}T00:00:00.000Z"})
    out = root / "xuhui"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    district0 = make_district(rng)
    district, streets, communities, grids = make_admin(rng, district0)
    admin = AdminIndex(streets, communities)
    roads = make_roads(rng, district)
    district_inner = district.buffer(-3.0)
    fenyang_road, fenyang_doors = make_fenyang(seed, district, admin, district_inner)

    # 1. district
    write_geojson(out / "district.geojson", "district", [{"code": DISTRICT_CODE, "name": DISTRICT_NAME}],
                  [to_geo(district)])
    # 2. streets (GBK shapefile)
    write_ogr(out / "streets.shp", {"code": [s["code"] for s in streets], "name": [s["name"] for s in streets],
                                    "dist_code": [s["district_code"] for s in streets]},
              [s["geom"] for s in streets], "streets", "ESRI Shapefile", encoding="GBK", geometry_type="Polygon")
    # 3/4. communities + grids
    write_ogr(out / "admin.gpkg", {"code": [c["code"] for c in communities], "name": [c["name"] for c in communities],
                                   "street_code": [c["street_code"] for c in communities]},
              [c["geom"] for c in communities], "communities", "GPKG", geometry_type="Polygon")
    write_ogr(out / "admin.gpkg", {"grid_code": [g["grid_code"] for g in grids], "name": [g["name"] for g in grids],
                                   "community_code": [g["community_code"] for g in grids]},
              [g["geom"] for g in grids], "grids", "GPKG", geometry_type="Polygon")
    # 6. roads
    write_geojson(out / "roads.geojson", "roads",
                  [{"name": r["name"], "road_code": r["road_code"]} for r in roads + [fenyang_road]],
                  [to_geo(r["geom"]) for r in roads + [fenyang_road]])
    # 5. responsibility chain
    write_csv(out / "responsibility.csv",
              ["grid_code", "post_code", "post_name", "department_code", "department_name", "person_name",
               "person_contact", "handles"], make_responsibility(rng, streets, grids))
    # 7. addresses
    main, full = make_addresses(rng, roads, admin, district_inner)
    main = main + fenyang_doors
    xy = np.array([r["xy"] for r in main])
    lon, lat = _TO_GEO.transform(xy[:, 0], xy[:, 1])
    glon, glat = wgs84_to_gcj02(lon, lat)
    cols = ["source_id", "district", "street", "community", "road", "door_number", "lane", "building_no", "unit",
            "floor", "room", "compound"]
    write_csv(out / "addresses_gcj02.csv", cols + ["lon", "lat"],
              [[f"ADDR-{i:06d}", DISTRICT_NAME] + [r[c] for c in cols[2:]] + [fmt(glon[i - 1], 7), fmt(glat[i - 1], 7)]
               for i, r in enumerate(main, start=1)])
    full_rows = []
    for i, r in enumerate(full):
        a = full_address(r)
        if i % 17 == 3:
            a = a.replace("上海市", "", 1)  # trap: no city prefix
        elif i % 23 == 5:
            a = a.translate(_FULLWIDTH)  # trap: full-width digits
        full_rows.append([a, fmt(r["xy"][0], 3), fmt(r["xy"][1], 3)])
    write_csv(out / "addresses_full.csv", ["full_address", "x", "y"], full_rows)

    # 8. buildings
    buildings = make_buildings(rng, roads, district)
    write_ogr(out / "buildings.gpkg", {
        "BH": [b["source_id"] for b in buildings],
        "JZMC": [b["name"] for b in buildings],
        "GD": [np.nan if b["height"] is None else b["height"] for b in buildings],
        "CS": [b["floors"] for b in buildings],
        "DMGC": [b["base_elev"] for b in buildings],
        "JZYT": [b["use"] for b in buildings],
        "JCSJ": [b["year"] for b in buildings],
        "JG": [b["structure"] for b in buildings],
        "BHJZ": [b["protected"] for b in buildings],
    }, [b["geom"] for b in buildings], "buildings", "GPKG", geometry_type="Polygon")

    # 9. curtain walls: the tallest office / commercial buildings
    cand = [b for b in buildings if b["use"] in ("办公", "商业")]
    cand.sort(key=lambda b: (-b["floors"], b["source_id"]))
    cw_b = sorted(cand[:N_CURTAIN_WALLS], key=lambda b: b["source_id"])
    cw_rows = []
    for i, b in enumerate(cw_b, start=1):
        h = b["height"] if b["height"] else b["floors"] * 3.3
        area = b["geom"].exterior.length * h * float(rng.uniform(0.35, 0.85))
        yi = min(2025, b["year"] + (0 if rng.random() < 0.7 else int(rng.integers(5, 20))))
        day = int(rng.integers(0, 1035))
        insp = np.datetime64("2024-01-01") + np.timedelta64(day, "D")
        res = ["合格", "需整改", "不合格"][int(rng.choice(3, p=[0.8, 0.15, 0.05]))]
        owner = company(rng, ["置业有限公司", "物业管理有限公司", "实业有限公司", "资产管理有限公司"][int(rng.integers(4))])
        cw_rows.append([f"CW-{i:04d}", b["source_id"],
                        ["中空钢化玻璃", "夹胶玻璃", "Low-E中空玻璃", "单片钢化玻璃"][int(rng.choice(4, p=[0.35, 0.2, 0.35, 0.1]))],
                        ["点支式", "隐框", "半隐框", "明框", "全玻"][int(rng.choice(5, p=[0.1, 0.35, 0.25, 0.2, 0.1]))],
                        fmt(area, 1), str(yi), str(insp), res, owner])
    write_csv(out / "curtain_walls.csv", ["source_id", "building_source_id", "glass_type", "support_type",
                                          "facade_area", "year_installed", "last_inspection_date",
                                          "inspection_result", "owner"], cw_rows)

    # 11. pipelines (before parts: manhole covers sit on them)
    pipes = make_pipelines(rng, roads, district)
    write_ogr(out / "pipelines.shp", {
        "source_id": [p["source_id"] for p in pipes], "kind": [p["kind"] for p in pipes],
        "diam_mm": [p["diam"] for p in pipes], "material": [p["material"] for p in pipes],
        "pressure": [p["pressure"] for p in pipes], "year_laid": [p["year"] for p in pipes],
        "owner": [p["owner"] for p in pipes],
        "depth_s": [np.nan if p["d0"] is None else p["d0"] for p in pipes],
        "depth_e": [np.nan if p["d1"] is None else p["d1"] for p in pipes],
    }, [p["geom"] for p in pipes], "pipelines", "ESRI Shapefile", encoding="UTF-8", geometry_type="LineString")

    # 10. parts
    counts = {c: n for c, _, n, _ in PART_SUBCLASSES}
    parts = make_parts(rng, roads, pipes, buildings, district, counts)
    seq = {}
    for p in parts:
        seq[p["subclass"]] = seq.get(p["subclass"], 0) + 1
        p["object_code"] = f"{DISTRICT_CODE}{p['subclass']}{seq[p['subclass']]:06d}"
    pxy = np.array([p["xy"] for p in parts])
    plon, plat = _TO_GEO.transform(pxy[:, 0], pxy[:, 1])
    write_geojson(out / "parts.geojson", "parts",
                  [{"source_id": p["source_id"], "object_code": p["object_code"], "subclass_code": p["subclass"],
                    "name": p["name"], "status": p["status"], "owner_department": p["owner"],
                    "maintainer": p["maintainer"], "z": p["z"]} for p in parts],
                  [Point(a, b) for a, b in zip(plon, plat)])
    total = sum(counts.values())
    nc_counts = {c: int(n * N_PARTS_NOCODE // total) for c, n in counts.items()}
    short = N_PARTS_NOCODE - sum(nc_counts.values())
    for c in sorted(counts, key=lambda c: -counts[c])[:short]:
        nc_counts[c] += 1
    nocode = make_parts(rng, roads, pipes, buildings, district, nc_counts, start_index=len(parts) + 1)
    write_csv(out / "parts_nocode.csv", ["source_id", "subclass_code", "name", "status", "owner_department",
                                         "maintainer", "x", "y", "z"],
              [[p["source_id"], p["subclass"], p["name"], p["status"], p["owner"], p["maintainer"],
                fmt(p["xy"][0], 3), fmt(p["xy"][1], 3), fmt(p["z"], 1)] for p in nocode])

    # 12/13. IoT
    devices = make_iot(rng, parts, buildings, [r[1] for r in cw_rows], roads)
    dxy = np.array([d["xy"] for d in devices])
    dlon, dlat = _TO_GEO.transform(dxy[:, 0], dxy[:, 1])
    write_geojson(out / "iot_devices.geojson", "iot_devices",
                  [{"source_id": d["source_id"], "device_type": d["device_type"], "name": d["name"],
                    "quantities": json.dumps(d["quantities"], ensure_ascii=False, separators=(",", ":")),
                    "linked_feature": d["linked"], "z": d["z"]} for d in devices],
                  [Point(a, b) for a, b in zip(dlon, dlat)])
    write_csv(out / "iot_readings.csv", ["device_id", "time", "quantity", "value"], make_readings(rng, devices))

    write_manifest(root)
    return dict(streets=len(streets), communities=len(communities), grids=len(grids), roads=len(roads) + 1,
                addresses=len(main), addresses_full=len(full), buildings=len(buildings), curtain_walls=len(cw_rows),
                parts=len(parts), parts_nocode=len(nocode), pipelines=len(pipes),
                pipeline_km=round(sum(p["geom"].length for p in pipes) / 1000, 2), iot_devices=len(devices))


def entry(layer, path, *, layer_name=None, crs=None, encoding=None, x=None, y=None, z=None, wkt=None,
          address_column=None, map=None):
    return {"layer": layer, "path": path, "layer_name": layer_name, "crs": crs, "encoding": encoding, "x": x, "y": y,
            "z": z, "wkt": wkt, "address_column": address_column, "map": map or {}}


def identity(*cols):
    return {c: c for c in cols}


MANIFEST = [
    entry("districts", "xuhui/district.geojson", crs="EPSG:4326", map=identity("code", "name")),
    entry("streets", "xuhui/streets.shp", crs="EPSG:4549", encoding="GBK",
          map={"code": "code", "name": "name", "district_code": "dist_code"}),
    entry("communities", "xuhui/admin.gpkg", layer_name="communities", crs="EPSG:4549",
          map=identity("code", "name", "street_code")),
    entry("grids", "xuhui/admin.gpkg", layer_name="grids", crs="EPSG:4549",
          map=identity("grid_code", "name", "community_code")),
    entry("responsibility", "xuhui/responsibility.csv",
          map=identity("grid_code", "post_code", "post_name", "department_code", "department_name", "person_name",
                       "person_contact", "handles")),
    entry("addresses", "xuhui/addresses_gcj02.csv", crs="gcj02", x="lon", y="lat",
          map=identity("source_id", "district", "street", "community", "road", "door_number", "lane",
                       "building_no", "unit", "floor", "room", "compound")),
    entry("addresses", "xuhui/addresses_full.csv", crs="EPSG:4549", x="x", y="y", address_column="full_address"),
    entry("buildings", "xuhui/buildings.gpkg", layer_name="buildings", crs="EPSG:4549",
          map={"source_id": "BH", "name": "JZMC", "height": "GD", "floors": "CS", "base_elevation": "DMGC",
               "use": "JZYT", "year_built": "JCSJ", "structure": "JG", "is_protected": "BHJZ"}),
    entry("curtain-walls", "xuhui/curtain_walls.csv",
          map=identity("source_id", "building_source_id", "glass_type", "support_type", "facade_area",
                       "year_installed", "last_inspection_date", "inspection_result", "owner")),
    entry("parts", "xuhui/parts.geojson", crs="EPSG:4326", z="z",
          map=identity("source_id", "object_code", "subclass_code", "name", "status", "owner_department",
                       "maintainer", "z")),
    entry("parts", "xuhui/parts_nocode.csv", crs="EPSG:4549", x="x", y="y", z="z",
          map=identity("source_id", "subclass_code", "name", "status", "owner_department", "maintainer", "z")),
    entry("pipelines", "xuhui/pipelines.shp", crs="EPSG:4549",
          map={"source_id": "source_id", "kind": "kind", "diameter_mm": "diam_mm", "material": "material",
               "pressure_class": "pressure", "year_laid": "year_laid", "owner": "owner", "start_depth": "depth_s",
               "end_depth": "depth_e"}),
    entry("iot-devices", "xuhui/iot_devices.geojson", crs="EPSG:4326", z="z",
          map=identity("source_id", "device_type", "name", "quantities", "linked_feature", "z")),
    entry("iot-readings", "xuhui/iot_readings.csv", map=identity("device_id", "time", "quantity", "value")),
]


def write_manifest(root: Path):
    with open(root / "manifest.json", "w", encoding="utf-8", newline="\n") as fh:
        json.dump(MANIFEST, fh, ensure_ascii=False, indent=2)
        fh.write("\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                    help="root directory: writes OUT/xuhui/* and OUT/manifest.json "
                         "(default: the data_samples directory)")
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    stats = generate(args.out, args.seed)
    print(json.dumps(stats, ensure_ascii=False))


if __name__ == "__main__":
    sys.exit(main())
