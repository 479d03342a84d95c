"""Writes the sample city's illegal-construction files (deterministic: no randomness, positions as
offsets in metres from two grids' points, EPSG:4549, written in WGS84):

* ``structures.geojson`` — the register of known illegal structures (2 polygons);
* ``clues.csv`` — point clues: the cluster in 田林街道第1网格 (spots A, B, D) and a steady history
  of two spots a month in 龙华街道第1网格 (Oct 2025 – Sep 2026) plus three in October 2026;
* ``changes.geojson`` — remote-sensing change polygons: one on spot A, one on the known structure
  (spot C).

    python scenarios/illegal_building/sample/generate.py   # rewrites the files beside it
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from pyproj import Transformer

HERE = Path(__file__).parent
TO_WGS = Transformer.from_crs("EPSG:4549", "EPSG:4326", always_xy=True)
TIANLIN = (636591.3, 3451850.8)   # a point in 310104011001001 田林街道第1网格
LONGHUA = (639769.7, 3451921.3)   # a point in 310104016001001 龙华街道第1网格


def lonlat(base: tuple[float, float], dx: float, dy: float) -> tuple[float, float]:
    lon, lat = TO_WGS.transform(base[0] + dx, base[1] + dy)
    return round(lon, 7), round(lat, 7)


def square(base: tuple[float, float], dx: float, dy: float, w: float, h: float) -> list[list[list[float]]]:
    corners = [(dx - w / 2, dy - h / 2), (dx + w / 2, dy - h / 2), (dx + w / 2, dy + h / 2),
               (dx - w / 2, dy + h / 2), (dx - w / 2, dy - h / 2)]
    return [[list(lonlat(base, cx, cy)) for cx, cy in corners]]


def feature(props: dict, rings: list) -> dict:
    return {"type": "Feature", "properties": props, "geometry": {"type": "Polygon", "coordinates": rings}}


def main() -> None:
    clues = [
        # spot A: four clues within 30 m of each other (the change polygon below is the fourth)
        ("grid_patrol", TIANLIN, 0, 0, "围墙内新砌砖房", "GP-2026-1001", "2026-10-05T09:30:00+08:00"),
        ("hotline", TIANLIN, 12, 0, "12345投诉：邻居院内搭建", "12345-2026-88121", "2026-10-06T14:10:00+08:00"),
        ("property_app", TIANLIN, 0, 25, "物业APP上报：楼顶加层", "WY-2026-0311", "2026-10-08T10:00:00+08:00"),
        # spot B: 80 m east of A (too far to merge); a second clue 20 m from B joins it
        ("demolition_patrol", TIANLIN, 80, 0, "拆违巡查：沿街违章搭棚", "CW-2026-0077", "2026-10-07T11:00:00+08:00"),
        ("grid_patrol", TIANLIN, 100, 0, "沿街搭棚扩大", "GP-2026-1010", "2026-10-12T16:20:00+08:00"),
        # spot D: 150 m south; it will be found not illegal and go to the district's re-check
        ("hotline", TIANLIN, 0, -150, "12319投诉：小区内搭建车棚", "12319-2026-4410", "2026-10-09T08:45:00+08:00"),
    ]
    # a steady grid: two spots a month for a year, three in October 2026 (50 m apart: none merge)
    n = 0
    for m in range(12):
        year, month = (2025, 10 + m) if m < 3 else (2026, m - 2)
        for k in range(2):
            clues.append(("grid_patrol", LONGHUA, (n % 10) * 50 - 250, (n // 10) * 50 - 150, "巡查发现搭建",
                          f"GP-LH-{n + 1:03d}", f"{year}-{month:02d}-{10 + 5 * k:02d}T10:00:00+08:00"))
            n += 1
    for k in range(3):
        clues.append(("grid_patrol", LONGHUA, (n % 10) * 50 - 250, (n // 10) * 50 - 150, "巡查发现搭建",
                      f"GP-LH-{n + 1:03d}", f"2026-10-{10 + 5 * k:02d}T10:00:00+08:00"))
        n += 1
    with open(HERE / "clues.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["channel", "lon", "lat", "description", "external_id", "reported_at"])
        for channel, base, dx, dy, descr, ext, at in clues:
            w.writerow([channel, *lonlat(base, dx, dy), descr, ext, at])
    changes = [
        # on spot A, 5 m off its first clue: merges
        feature({"id": "RS-2026-10-017", "detected_at": "2026-10-10", "description": "无人机比对：新增建筑约300平方米"},
                square(TIANLIN, 5, 0, 20, 15)),
        # spot C: 200 m north, over the register's known structure WJ-REG-0001
        feature({"id": "RS-2026-10-018", "detected_at": "2026-10-10", "description": "卫星比对：屋顶扩建"},
                square(TIANLIN, 2, 200, 12, 12)),
    ]
    register = [
        feature({"code": "WJ-REG-0001", "status": "existing", "found_at": "2024-06-01"}, square(TIANLIN, 0, 200, 16, 16)),
        feature({"code": "WJ-REG-0002", "status": "existing", "found_at": "2023-03-15"}, square(TIANLIN, -200, 0, 10, 20)),
    ]
    for name, feats in (("changes.geojson", changes), ("structures.geojson", register)):
        (HERE / name).write_text(json.dumps({"type": "FeatureCollection", "features": feats}, ensure_ascii=False,
                                            indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
