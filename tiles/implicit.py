"""3D Tiles 1.1 implicit tiling: a quadtree over the layer's region, described by subtree files instead of a
tileset.json that lists every tile (which for 1.5 M buildings would be megabytes the client parses first).

The tree. Implicit tiles subdivide the root region evenly in longitude and latitude, and a client culls a tile
by that region, so a feature must lie wholly inside the region of the tile that draws it. Each feature goes to
the deepest tile whose region contains its whole extent (a "loose" placement: a feature straddling a dividing
line stays with the parent), and a tile with more than ``max_features`` also keeps its most important quarter
(the tallest buildings, the largest pipes) and hands the rest down, as the explicit tree does: refinement is
ADD, landmarks show from afar. Heights are the root's at every level (quadtree subdivision keeps them).

Subtree files (``subtrees/{level}/{x}/{y}.subtree``) hold, for ``subtree_levels`` levels each, which tiles
exist, which have content and which child subtrees exist, as bitstreams in Morton order; content is at
``content/{level}/{x}/{y}.glb``. x runs west → east, y south → north.
"""
from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tiles.plan import ERROR_DIVISOR, MAX_DEPTH, Features, union

SUBTREE_MAGIC = b"subt"
CONTENT_URI = "content/{level}/{x}/{y}.glb"
SUBTREE_URI = "subtrees/{level}/{x}/{y}.subtree"


@dataclass
class ImplicitTree:
    """Which features each available tile draws; (level, x, y) → fids (a tile without fids of its own only
    leads to tiles that have some)."""

    region: list[float]  # root: west, south, east, north (radians), min and max height (m)
    subtree_levels: int
    tiles: dict[tuple[int, int, int], np.ndarray] = field(default_factory=dict)

    @property
    def available_levels(self) -> int:
        return 1 + max(level for level, _, _ in self.tiles)

    def tile_region(self, level: int, x: int, y: int) -> list[float]:
        w, s, e, n, lo, hi = self.region
        dx, dy = (e - w) / (1 << level), (n - s) / (1 << level)
        return [w + x * dx, s + y * dy, w + (x + 1) * dx, s + (y + 1) * dy, lo, hi]

    def root_error(self) -> float:
        """Geometric error of the root: a fraction of its diagonal, halving with each level (implicit tiling's
        rule), like the explicit tree's."""
        w, s, e, n, _, _ = self.region
        radius = 6_371_000.0
        diagonal = math.hypot((e - w) * radius * math.cos((s + n) / 2), (n - s) * radius)
        return diagonal / ERROR_DIVISOR

    def contents(self) -> Iterator[tuple[int, int, int, np.ndarray]]:
        for (level, x, y), fids in sorted(self.tiles.items()):
            if len(fids):
                yield level, x, y, fids


def build_implicit(features: Features, max_features: int, subtree_levels: int = 4) -> ImplicitTree:
    """Place every feature in one tile (see the module's notes)."""
    if max_features < 1:
        raise ValueError("max_features must be at least 1")
    region = union(features.region)
    # a region of zero width (one point) cannot be subdivided: give it a centimetre
    for a, b in ((0, 2), (1, 3)):
        if region[b] - region[a] < 1e-9:
            region[a] -= 1e-9
            region[b] += 1e-9
    tree = ImplicitTree(region, subtree_levels)
    order = np.lexsort((features.fid, -features.importance))  # most important first; fid breaks ties
    _place(tree, features, order, 0, 0, 0, max_features)
    return tree


def _place(tree: ImplicitTree, f: Features, idx: np.ndarray, level: int, x: int, y: int, max_features: int) -> None:
    if len(idx) <= max_features or level + 1 >= MAX_DEPTH:
        tree.tiles[(level, x, y)] = f.fid[idx]
        return
    w, s, e, n, _, _ = tree.tile_region(level, x, y)
    mx, my = (w + e) / 2, (s + n) / 2
    r = f.region[idx]
    east, west = r[:, 0] >= mx, r[:, 2] <= mx
    north, south = r[:, 1] >= my, r[:, 3] <= my
    fits = (east | west) & (north | south)
    keep = np.zeros(len(idx), bool)
    keep[: max(1, max_features // 4)] = True  # idx is in importance order
    own = keep | ~fits
    tree.tiles[(level, x, y)] = f.fid[idx[own]]
    down = ~own
    for qx, qy, mask in ((0, 0, west & south), (1, 0, east & south), (0, 1, west & north), (1, 1, east & north)):
        sel = idx[down & mask]
        if len(sel):
            _place(tree, f, sel, level + 1, 2 * x + qx, 2 * y + qy, max_features)


def morton(x: int, y: int) -> int:
    """The quadtree Morton index: x's bits at even positions, y's at odd ones."""
    out = 0
    bit = 0
    while x or y:
        out |= (x & 1) << (2 * bit) | (y & 1) << (2 * bit + 1)
        x >>= 1
        y >>= 1
        bit += 1
    return out


def subtree_roots(tree: ImplicitTree) -> list[tuple[int, int, int]]:
    step = tree.subtree_levels
    return sorted(t for t in tree.tiles if t[0] % step == 0)


def subtree_members(tree: ImplicitTree) -> dict[tuple[int, int, int], list[tuple[int, int, int]]]:
    """For each subtree root, the tiles its file describes: its own levels' tiles and the roots of its child
    subtrees. Found in one pass (looking through every tile for each subtree was quadratic: minutes for a city)."""
    step = tree.subtree_levels
    out: dict[tuple[int, int, int], list[tuple[int, int, int]]] = {}
    for lv, tx, ty in tree.tiles:
        rel = lv % step
        out.setdefault((lv - rel, tx >> rel, ty >> rel), []).append((lv, tx, ty))
        if rel == 0 and lv > 0:  # also a child subtree of the subtree above
            out.setdefault((lv - step, tx >> step, ty >> step), []).append((lv, tx, ty))
    return out


def subtree_bytes(tree: ImplicitTree, level: int, x: int, y: int,
                  members: list[tuple[int, int, int]] | None = None) -> bytes:
    """The binary subtree file rooted at tile (level, x, y); ``members``: its tiles from
    :func:`subtree_members` (else every tile of the tree is looked at)."""
    levels = tree.subtree_levels
    n_tiles = ((1 << (2 * levels)) - 1) // 3
    tiles = np.zeros(n_tiles, bool)
    content = np.zeros(n_tiles, bool)
    children = np.zeros(1 << (2 * levels), bool)
    for lv, tx, ty in (tree.tiles if members is None else members):
        fids = tree.tiles[(lv, tx, ty)]
        rel = lv - level
        if rel < 0 or rel > levels or (tx >> rel, ty >> rel) != (x, y):
            continue
        local = morton(tx - (x << rel), ty - (y << rel))
        if rel == levels:
            children[local] = True
        else:
            i = ((1 << (2 * rel)) - 1) // 3 + local
            tiles[i] = True
            content[i] = len(fids) > 0
    views: list[bytes] = []
    doc: dict[str, Any] = {}

    def availability(bits: np.ndarray) -> dict[str, int]:
        count = int(bits.sum())
        if count == 0 or count == len(bits):
            return {"constant": int(count > 0), "availableCount": count}
        views.append(np.packbits(bits, bitorder="little").tobytes())
        return {"bitstream": len(views) - 1, "availableCount": count}

    doc["tileAvailability"] = availability(tiles)
    doc["contentAvailability"] = [availability(content)]
    doc["childSubtreeAvailability"] = availability(children)
    binary = b""
    if views:
        offsets = []
        for v in views:
            offsets.append(len(binary))
            binary += v + b"\0" * (-len(v) % 8)  # each buffer view starts on 8 bytes
        doc["buffers"] = [{"byteLength": len(binary)}]
        doc["bufferViews"] = [{"buffer": 0, "byteOffset": o, "byteLength": len(v)} for o, v in zip(offsets, views)]
    text = json.dumps(doc, separators=(",", ":")).encode()
    text += b" " * (-(24 + len(text)) % 8)
    return SUBTREE_MAGIC + struct.pack("<IQQ", 1, len(text), len(binary)) + text + binary


def tileset_json(tree: ImplicitTree, transform: list[float], asset: dict[str, Any],
                 extra: dict[str, Any]) -> dict[str, Any]:
    """The implicit tileset: one root with the template URIs; everything else is in the subtree files."""
    error = tree.root_error()
    root = {
        "boundingVolume": {"region": tree.region}, "geometricError": error, "refine": "ADD",
        "content": {"uri": CONTENT_URI},
        "implicitTiling": {"subdivisionScheme": "QUADTREE", "subtreeLevels": tree.subtree_levels,
                           "availableLevels": tree.available_levels, "subtrees": {"uri": SUBTREE_URI}},
        "transform": transform,
    }
    return {"asset": asset, **extra, "geometricError": 2 * error, "root": root}
