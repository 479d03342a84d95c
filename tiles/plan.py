"""The tile tree of a 3D layer: a quadtree over the layer's extent, split until a tile holds at
most ``max_features`` features.

Every feature lives in exactly one tile, so refinement is ``ADD``: a child adds features to what
its parent shows, it never replaces them (``REPLACE`` would need a coarser stand-in for the
children's features, which LoD1 blocks do not have). An overfull tile keeps its most important
quarter — the biggest buildings, the largest pipes — and hands the rest to its four quadrants by
centroid, so from afar the landmarks show first.

Bounding regions are computed bottom-up from the features' own extents (geometry plus extrusion,
pipe radius or marker size), so they contain the tile's content and all its children even where
a feature reaches out of its centroid's quadrant. Geometric error is a fixed fraction of the
tile's cell diagonal: it halves at each level and is 0 at the leaves.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: geometric error = cell diagonal / this: children show when the camera is about 3–5 cell sizes
#: away at the default screen-space error of 16 px
ERROR_DIVISOR = 16.0
MAX_DEPTH = 18  # features piled on one point stop splitting here


@dataclass
class Features:
    """Per-feature arrays the planner needs (same order everywhere)."""

    fid: np.ndarray
    cx: np.ndarray  # centroid, storage CRS
    cy: np.ndarray
    region: np.ndarray  # (N, 6): west, south, east, north (radians), min height, max height (m)
    importance: np.ndarray

    def __len__(self) -> int:
        return len(self.fid)


@dataclass
class Tile:
    id: str  # quadtree path: "r", "r0", "r03" …
    depth: int
    cell: tuple[float, float, float, float]  # storage CRS square this tile covers
    fids: np.ndarray  # features drawn by this tile
    region: list[float]
    geometric_error: float
    children: list["Tile"] = field(default_factory=list)

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()


def union(regions: list[list[float]] | np.ndarray) -> list[float]:
    r = np.asarray(regions, float).reshape(-1, 6)
    return [float(r[:, 0].min()), float(r[:, 1].min()), float(r[:, 2].max()), float(r[:, 3].max()),
            float(r[:, 4].min()), float(r[:, 5].max())]


def build_tree(features: Features, max_features: int) -> Tile | None:
    """The quadtree of ``features``, or None when there are none."""
    if max_features < 1:
        raise ValueError("max_features must be at least 1")
    if not len(features):
        return None
    x0, x1 = float(features.cx.min()), float(features.cx.max())
    y0, y1 = float(features.cy.min()), float(features.cy.max())
    size = max(x1 - x0, y1 - y0, 1.0) * (1 + 1e-9)
    cell = (x0, y0, x0 + size, y0 + size)
    # most important first, fid breaking ties, so the same data always gives the same tree
    order = np.lexsort((features.fid, -features.importance))
    return _split(features, order, cell, "r", 0, max_features)


def _split(f: Features, idx: np.ndarray, cell: tuple[float, float, float, float], tile_id: str, depth: int,
           max_features: int) -> Tile:
    diagonal = math.hypot(cell[2] - cell[0], cell[3] - cell[1])
    if len(idx) <= max_features or depth >= MAX_DEPTH:
        return Tile(tile_id, depth, cell, f.fid[idx], union(f.region[idx]), 0.0)
    keep = max(1, max_features // 4)
    own, rest = idx[:keep], idx[keep:]
    mx, my = (cell[0] + cell[2]) / 2, (cell[1] + cell[3]) / 2
    east, north = f.cx[rest] >= mx, f.cy[rest] >= my
    quadrants = [
        (~east & ~north, (cell[0], cell[1], mx, my)),
        (east & ~north, (mx, cell[1], cell[2], my)),
        (~east & north, (cell[0], my, mx, cell[3])),
        (east & north, (mx, my, cell[2], cell[3])),
    ]
    children = [_split(f, rest[mask], sub, f"{tile_id}{q}", depth + 1, max_features)
                for q, (mask, sub) in enumerate(quadrants) if mask.any()]
    region = union([*f.region[own], *(c.region for c in children)])
    return Tile(tile_id, depth, cell, f.fid[own], region, diagonal / ERROR_DIVISOR, children)
