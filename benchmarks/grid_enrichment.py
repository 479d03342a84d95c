"""Benchmark: the loader's grid enrichment (cim.gridindex.GridIndex.assign: the tree's boxes, then the prepared
polygons' intersects) against the STRtree's own per-point ``covered_by`` it replaced, on the synthetic
Shanghai's own polygons (16 districts, ~218 streets, ~6,000 communities, ~20,000 grids) and its first N parts.
Process CPU of each, alternating, and whether both give every part the same codes.

Run by hand (not a test):
  .venv/bin/python benchmarks/grid_enrichment.py [--rows 300000] [--repeats 3] [--city /work/scale-data/city]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import shapely

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cim.gridindex import LEVELS, GridIndex, _Level, smallest_polygons  # noqa: E402

FILES = {"districts": "code", "streets": "code", "communities": "code", "grids": "grid_code"}


def covered_by(index: GridIndex, points: np.ndarray) -> dict[str, np.ndarray]:
    """The way before: the tree's per-point predicate, the smallest code on a shared edge."""
    out = {}
    for column, level in index._levels.items():
        result = np.full(len(points), None, dtype=object)
        point_idx, poly_idx = level.tree.query(points, predicate="covered_by")
        index = smallest_polygons(point_idx, poly_idx, len(points))
        result[index >= 0] = level.codes[index[index >= 0]]
        out[column] = result
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--city", type=Path, default=Path("/work/scale-data/city"))
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    levels = {}
    for column, table, _code in LEVELS:
        frame = pd.read_csv(args.city / f"{table}.csv", dtype=str).sort_values(FILES[table])
        geoms = shapely.from_wkt(frame["wkt"].to_numpy())
        shapely.prepare(geoms)
        levels[column] = _Level(codes=frame[FILES[table]].to_numpy(dtype=object), tree=shapely.STRtree(geoms),
                                geoms=geoms)
    index = GridIndex(levels)
    parts = pd.read_csv(args.city / "parts.csv", nrows=args.rows, usecols=["x", "y", "z"])
    points = shapely.points(parts["x"].to_numpy(), parts["y"].to_numpy(), parts["z"].to_numpy())
    for _ in range(args.repeats):
        times, answers = [], []
        for way in (covered_by, GridIndex.assign):
            started = time.process_time()
            answers.append(way(index, points))
            times.append(time.process_time() - started)
        same = all(np.array_equal(answers[0][c], answers[1][c]) for c in answers[0])
        print(f"{len(points):,} parts x {len(levels)} levels: covered_by {times[0]:.3f} s "
              f"({times[0] / len(points) * 1e6:.1f} µs a part), GridIndex.assign {times[1]:.3f} s "
              f"({times[1] / len(points) * 1e6:.1f} µs a part); same codes: {same}", flush=True)


if __name__ == "__main__":
    main()
