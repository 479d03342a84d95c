"""3D Tiles: every glb passes the Khronos glTF validator and every layer's tileset the CesiumGS 3D Tiles
validator, every tileset is consistent (regions nest and contain their content, geometric error falls,
URIs resolve, metadata matches the features), the geometry is right for a courtyard building, the 590 m
Shanghai Tower and a pipe at -5 m, and concurrent requests plan each tileset once without racing."""
from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pytest
import shapely
import sqlalchemy as sa

from cim.crs import transform_geometries
from tests.conftest import PROJECT, SHARED_DATA, missing_tool, run_cim, shared_path
from tiles.gltf import read_glb
from tiles.models import MODELS
from tiles.tileset import DEFAULT_MAX_FEATURES
from tiles.metadata import decode_table

X0, Y0 = 642900.0, 3458000.0  # EPSG:4549, near the Bund
COURTYARD_AREA = 40 * 30 - 10 * 10
NODE_MODULES = PROJECT / "node_modules"
VALIDATE_JS = """
const fs = require('fs');
const validator = require(process.argv[2]);
(async () => {
  const out = {};
  for (const file of process.argv.slice(3)) {
    const report = await validator.validateBytes(new Uint8Array(fs.readFileSync(file)), {maxIssues: 100});
    out[file] = {errors: report.issues.numErrors, warnings: report.issues.numWarnings,
                 messages: report.issues.messages.filter(m => m.severity <= 1)};
  }
  console.log(JSON.stringify(out));
})().catch(e => { console.error(e); process.exit(2); });
"""


# --- data -----------------------------------------------------------------------------------

def _bump(conn, *tables: str) -> None:
    for t in tables:
        conn.execute(sa.text("UPDATE layers SET version = version + 1 WHERE table_name = :t"), {"t": t})


def _cbd_buildings() -> list[tuple[str, str | None, float, shapely.Geometry]]:
    """The Shanghai CBD Shapefile: EPSG:32651; its .cpg says Latin-1, but the DBF holds UTF-8 text
    whose characters are GBK bytes read as Latin-1 — so read as UTF-8 and undo that."""
    path = shared_path("shanghai", "buildings_cbdc", "buildings.shp")
    df = pyogrio.read_dataframe(path, encoding="utf-8")
    geoms = transform_geometries(df.geometry.values, 32651, 4549)
    names = [n.encode("latin-1").decode("gbk") if isinstance(n, str) else None for n in df["BDName"]]
    return [(f"cbd-{i}", n, float(h), g) for i, (n, h, g) in enumerate(zip(names, df["Height"], geoms))]


@pytest.fixture(scope="module")
def city(engine):
    """Buildings (courtyard, curtain-wall tower, the CBD Shapefile), pipelines and parts."""
    with engine.begin() as conn:
        for source_id, name, height, geom in _cbd_buildings():
            conn.execute(sa.text(
                "INSERT INTO buildings (source_id, name, height, base_elevation, geom) VALUES "
                "(:s, :n, :h, 0, ST_Force3D(ST_Multi(ST_GeomFromWKB(:g, 4549))))"),
                {"s": source_id, "n": name, "h": height, "g": shapely.to_wkb(geom)})
        conn.execute(sa.text(
            "INSERT INTO buildings (source_id, name, height, floors, geom) VALUES ('court', '天井楼', 20, 6, "
            "ST_GeomFromText(:w, 4549))"),
            {"w": f"MULTIPOLYGON Z ((({X0} {Y0} 0, {X0 + 40} {Y0} 0, {X0 + 40} {Y0 + 30} 0, {X0} {Y0 + 30} 0, "
                  f"{X0} {Y0} 0), ({X0 + 15} {Y0 + 10} 0, {X0 + 25} {Y0 + 10} 0, {X0 + 25} {Y0 + 20} 0, "
                  f"{X0 + 15} {Y0 + 20} 0, {X0 + 15} {Y0 + 10} 0)))"})
        conn.execute(sa.text(
            "INSERT INTO buildings (source_id, name, height, geom) VALUES ('glass', '玻璃塔', 50, "
            "ST_GeomFromText(:w, 4549))"),
            {"w": f"MULTIPOLYGON Z ((({X0 + 100} {Y0} 0, {X0 + 130} {Y0} 0, {X0 + 130} {Y0 + 30} 0, "
                  f"{X0 + 100} {Y0 + 30} 0, {X0 + 100} {Y0} 0)))"})
        conn.execute(sa.text("INSERT INTO addresses (source_id, standard_address, building_feature_id, geom) "
                             "SELECT 'a1', '上海市黄浦区中山东一路1号', feature_id, ST_Force3D(ST_Centroid(geom)) "
                             "FROM buildings WHERE source_id = 'court'"))
        conn.execute(sa.text("INSERT INTO curtain_walls (source_id, building_source_id, glass_type, support_type) "
                             "VALUES ('cw1', 'glass', 'Low-E 中空', '隐框')"))
        conn.execute(sa.text("INSERT INTO pipelines (source_id, kind, diameter_mm, material, geom) VALUES "
                             "('w1', '给水', 600, '球墨铸铁', ST_GeomFromText(:w, 4549))"),
                     {"w": f"LINESTRING Z ({X0} {Y0 - 20} -5, {X0 + 200} {Y0 - 20} -5, {X0 + 200} {Y0 + 100} -5)"})
        conn.execute(sa.text("INSERT INTO pipelines (source_id, kind, diameter_mm, geom) VALUES "
                             "('g1', '燃气', 50, ST_GeomFromText(:w, 4549))"),
                     {"w": f"LINESTRING Z ({X0} {Y0 - 30} -1.2, {X0 + 100} {Y0 - 30} -1.5)"})
        conn.execute(sa.text("INSERT INTO iot_devices (source_id, device_type, name, linked_feature, geom) VALUES "
                             "('d1', 'water_level', '外滩水位计', 'w1', ST_GeomFromText(:w, 4549))"),
                     {"w": f"POINT Z ({X0 + 50} {Y0 - 20} -2)"})
        for i, (cls, sub) in enumerate([("01", "0101"), ("01", "0110"), ("02", "0201")]):
            conn.execute(sa.text(
                "INSERT INTO parts (source_id, object_code, part_class, part_subclass, geom) "
                "VALUES (:s, :o, :c, :sc, ST_GeomFromText(:w, 4549))"),
                {"s": f"p{i}", "o": f"310101{sub}{i:06d}", "c": cls, "sc": sub, "w": f"POINT Z ({X0 + 10 * i} {Y0 - 10} 0)"})
        _bump(conn, "buildings", "curtain_walls", "pipelines", "parts", "addresses", "iot_devices")
    return engine


# --- reading tiles back -----------------------------------------------------------------------

_DTYPES = {5126: np.float32, 5123: np.uint16, 5125: np.uint32, 5121: np.uint8}
_WIDTH = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}


class Glb:
    def __init__(self, data: bytes) -> None:
        self.doc, self.blob = read_glb(data)

    def accessor(self, index: int) -> np.ndarray:
        acc = self.doc["accessors"][index]
        view = self.doc["bufferViews"][acc["bufferView"]]
        start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
        arr = np.frombuffer(self.blob, _DTYPES[acc["componentType"]], acc["count"] * _WIDTH[acc["type"]], start)
        return arr.reshape(acc["count"], -1) if _WIDTH[acc["type"]] > 1 else arr

    @property
    def rows(self) -> list[dict]:
        return decode_table(self.doc, self.blob)

    @property
    def translation(self) -> np.ndarray:
        tile = next(n for n in self.doc["nodes"] if n.get("name") == "tile")
        return np.array(tile.get("translation", [0, 0, 0]), float)

    def primitives(self):
        """(material name, positions, normals, triangles, feature ids) of per-vertex-feature meshes."""
        for node in self.doc["nodes"]:
            if "mesh" not in node or "extensions" in node:
                continue
            for prim in self.doc["meshes"][node["mesh"]]["primitives"]:
                a = prim["attributes"]
                yield (self.doc["materials"][prim["material"]]["name"],
                       self.accessor(a["POSITION"]).astype(float) + self.translation,
                       self.accessor(a["NORMAL"]).astype(float),
                       self.accessor(prim["indices"]).reshape(-1, 3).astype(np.int64),
                       self.accessor(a["_FEATURE_ID_0"]).astype(int))

    def instances(self):
        for node in self.doc["nodes"]:
            ext = node.get("extensions", {}).get("EXT_mesh_gpu_instancing")
            if ext:
                pos = self.accessor(self.doc["meshes"][node["mesh"]]["primitives"][0]["attributes"]["POSITION"])
                yield (node, self.accessor(ext["attributes"]["TRANSLATION"]).astype(float) + self.translation,
                       self.accessor(ext["attributes"]["_FEATURE_ID_0"]).astype(int), pos.astype(float))

    def all_points(self) -> np.ndarray:
        pts = [p for _, p, *_ in self.primitives()]
        pts += [(t[:, None, :] + local[None, :, :]).reshape(-1, 3) for _, t, _, local in self.instances()]
        return np.vstack(pts)


def to_lonlath(points_gltf: np.ndarray, transform: list[float]) -> np.ndarray:
    """glTF (y-up) positions → 3D Tiles z-up → root transform → ECEF → lon°, lat°, h."""
    from tiles.geodesy import ecef_to_lonlath

    zup = np.column_stack([points_gltf[:, 0], -points_gltf[:, 2], points_gltf[:, 1]])
    m = np.array(transform, float).reshape(4, 4).T
    ecef = (m @ np.column_stack([zup, np.ones(len(zup))]).T).T[:, :3]
    return ecef_to_lonlath(ecef)


def to_enu(points_gltf: np.ndarray) -> np.ndarray:
    return np.column_stack([points_gltf[:, 0], -points_gltf[:, 2], points_gltf[:, 1]])


def validate_glbs(paths: list[Path]) -> dict:
    node = shutil.which("node")
    validator = NODE_MODULES / "gltf-validator"
    if node is None or not validator.is_dir():
        missing_tool("node or node_modules/gltf-validator missing: run 'npm ci' at the repository root")
    script = paths[0].parent / "validate_gltf.js"
    script.write_text(VALIDATE_JS)
    proc = subprocess.run([node, str(script), str(validator), *map(str, paths)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


#: the CesiumGS 3D Tiles validator, built from ../shared/vendor by scripts/build-tiles-validator.sh
TILES_VALIDATOR_VERSION = "0.6.1"
TILES_VALIDATOR = PROJECT / ".cache" / f"3d-tiles-validator-{TILES_VALIDATOR_VERSION}"
TILES_VALIDATOR_SOURCE = SHARED_DATA.parent / "vendor" / f"3d-tiles-validator-{TILES_VALIDATOR_VERSION}.tar.gz"


def tiles_validator() -> Path:
    """The validator's entry point, built now if ``make setup`` has not built it yet; skips (saying why)
    when its source archive is absent (a user's clone)."""
    main = TILES_VALIDATOR / "build" / "main.js"
    if not (TILES_VALIDATOR / ".built").exists():
        if not TILES_VALIDATOR_SOURCE.exists():
            missing_tool(f"{TILES_VALIDATOR_SOURCE} not present (../shared/vendor is only in CI and developer "
                        "workspaces): the 3D Tiles validator cannot be built")
        if shutil.which("npm") is None:
            missing_tool("npm missing: the 3D Tiles validator cannot be built")
        proc = subprocess.run([str(PROJECT / "scripts" / "build-tiles-validator.sh")], capture_output=True,
                              text=True, timeout=1800, check=False)
        assert proc.returncode == 0, f"building the 3D Tiles validator failed:\n{proc.stdout}\n{proc.stderr}"
    return main


def validate_tileset(tileset_file: Path) -> dict:
    """The 3D Tiles validator's report on a tileset and all its content (glb included)."""
    main = tiles_validator()
    report_file = tileset_file.parent / "validation-report.json"
    proc = subprocess.run([shutil.which("node") or "node", str(main), "--tilesetFile", str(tileset_file),
                           "--reportFile", str(report_file)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert report_file.exists(), f"the 3D Tiles validator wrote no report:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(report_file.read_text())


def _issues(report: dict) -> list[str]:
    """Every issue of a report, nested content issues included, as one line each."""
    out = []
    for issue in report.get("issues", []):
        out.append(f"{issue.get('severity')} {issue.get('type')} {issue.get('path')}: {issue.get('message')}")
        out.extend(_issues({"issues": issue.get("causes", [])}))
    return out


def check_tileset(tileset: dict, content: callable) -> dict[str, Glb]:
    """Check a tileset's structure and every content; returns the glbs by URI."""
    assert tileset["asset"]["version"] == "1.1"
    root = tileset["root"]
    assert tileset["geometricError"] >= root["geometricError"] >= 0
    transform = root["transform"]
    glbs: dict[str, Glb] = {}
    total = 0

    def visit(tile: dict, parent: dict | None) -> None:
        nonlocal total
        region = tile["boundingVolume"]["region"]
        w, s, e, n, lo, hi = region
        assert w < e and s < n and lo <= hi
        if parent is not None:
            pw, ps, pe, pn, plo, phi = parent["boundingVolume"]["region"]
            assert pw <= w and ps <= s and e <= pe and n <= pn and plo <= lo and hi <= phi, "child outside parent"
            assert tile["geometricError"] < parent["geometricError"], "geometric error must fall with depth"
        if not tile.get("children"):
            assert tile["geometricError"] == 0
        else:
            assert tile.get("refine", "ADD") == "ADD"
        if "content" in tile:
            uri = tile["content"]["uri"]
            glb = Glb(content(uri))
            glbs[uri] = glb
            meta = glb.doc["extensions"]["EXT_structural_metadata"]
            table = meta["propertyTables"][0]
            cls = meta["schema"]["classes"][table["class"]]
            # a property may be left out only where every feature has no value (an all-empty string column)
            assert set(table["properties"]) <= set(cls["properties"])
            assert all(cls["properties"][p]["type"] == "STRING" for p in set(cls["properties"]) - set(table["properties"]))
            rows = glb.rows
            assert len(rows) == table["count"] > 0
            used: set[int] = set()
            for _, _, _, _, fids in glb.primitives():
                used |= set(fids.tolist())
            for node, _, fids, _ in glb.instances():
                assert node["extensions"]["EXT_instance_features"]["featureIds"][0]["featureCount"] == len(rows)
                used |= set(fids.tolist())
            for mesh in glb.doc["meshes"]:
                for prim in mesh["primitives"]:
                    for fid in prim.get("extensions", {}).get("EXT_mesh_features", {}).get("featureIds", []):
                        assert fid["featureCount"] == len(rows) and fid["propertyTable"] == 0
            assert used == set(range(len(rows))), "every feature drawn, every drawn feature in the table"
            assert len({r["feature_id"] for r in rows}) == len(rows)
            total += len(rows)
            llh = to_lonlath(glb.all_points(), transform)
            lon, lat = np.radians(llh[:, 0]), np.radians(llh[:, 1])
            assert lon.min() >= w and lon.max() <= e and lat.min() >= s and lat.max() <= n, "content outside region"
            assert llh[:, 2].min() >= lo and llh[:, 2].max() <= hi, "content outside region heights"
        for child in tile.get("children", []):
            visit(child, tile)

    visit(root, None)
    assert total == tileset["metadata"]["properties"]["featureCount"]
    return glbs


def export(layer: str, out: Path, db_url: str, *args: str) -> tuple[dict, dict[str, Glb]]:
    run_cim("tiles", "export-3d", layer, str(out), *args, db_url=db_url)
    tileset = json.loads((out / "tileset.json").read_text())
    glbs = check_tileset(tileset, lambda uri: (out / uri).read_bytes())
    report = validate_glbs(sorted(out.rglob("*.glb")))
    bad = {k: v for k, v in report.items() if v["errors"]}
    assert not bad, bad
    spec = validate_tileset(out / "tileset.json")  # the tileset, and each glb against the 3D Tiles extensions
    assert spec["numErrors"] == 0, _issues(spec)
    assert spec["numWarnings"] == 0, _issues(spec)
    return tileset, glbs


def feature(glbs: dict[str, Glb], name: str):
    for glb in glbs.values():
        for i, row in enumerate(glb.rows):
            if row["name"] == name:
                return glb, i, row
    raise AssertionError(f"{name} not in any tile")


def feature_mesh(glb: Glb, index: int):
    """All triangles of one feature: (material, vertices (T, 3, 3), normals (T, 3, 3))."""
    out = []
    for material, pos, nrm, tri, fids in glb.primitives():
        mine = tri[fids[tri[:, 0]] == index]
        if len(mine):
            out.append((material, pos[mine], nrm[mine]))
    return out


def signed_volume(tris: np.ndarray) -> float:
    a, b, c = tris[:, 0], tris[:, 1], tris[:, 2]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6)


# --- tests ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def buildings(city, db_url, tmp_path_factory):
    out = tmp_path_factory.mktemp("buildings3d")
    return export("buildings", out, db_url, "--max-features", "20")


def test_buildings_tileset_splits_into_a_valid_quadtree(buildings, city):
    tileset, glbs = buildings
    with city.connect() as conn:
        n = conn.execute(sa.text("SELECT count(*) FROM buildings WHERE valid_to IS NULL")).scalar()
    assert tileset["metadata"]["properties"]["featureCount"] == n
    assert len(glbs) > 4 and tileset["root"].get("children"), "more features than --max-features must split"
    assert all(len(g.rows) <= 20 for g in glbs.values())
    # the root frame is east-north-up at the centre: its up column is the ellipsoid normal there
    m = np.array(tileset["root"]["transform"]).reshape(4, 4).T
    origin = m[:3, 3]
    assert 6.35e6 < np.linalg.norm(origin) < 6.4e6
    assert np.dot(m[:3, 2], origin / np.linalg.norm(origin)) > 0.99


def test_solids_are_closed_with_outward_normals(buildings):
    _, glbs = buildings
    for glb in glbs.values():
        for index, row in enumerate(glb.rows):
            parts = feature_mesh(glb, index)
            tris = np.vstack([t for _, t, _ in parts])
            normals = np.vstack([n for _, _, n in parts])
            face = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
            visible = np.linalg.norm(face, axis=1) > 2e-3  # float32 cannot orient slivers under 10 cm²
            agree = np.einsum("ij,ij->i", face, normals.sum(axis=1))[visible]
            assert (agree > 0).all(), f"{row['name']}: a triangle faces against its normals"
            assert signed_volume(tris) > 0, f"{row['name']}: solid is inside out"


@pytest.mark.parametrize("layer", sorted(MODELS))
def test_every_3d_layer_passes_the_3d_tiles_validator(layer, city, db_url, tmp_path):
    """Every layer that ``cim tiles export-3d`` supports, split over several tiles: the CesiumGS
    validator checks the tileset against the 3D Tiles 1.1 schema and each glb's metadata against it."""
    tileset, glbs = export(layer, tmp_path / layer, db_url, "--max-features", "2")  # asserts 0 errors, 0 warnings
    assert glbs and tileset["metadata"]["properties"]["featureCount"] == sum(len(g.rows) for g in glbs.values())


def test_courtyard_building_keeps_its_hole(buildings):
    _, glbs = buildings
    glb, index, row = feature(glbs, "天井楼")
    assert row["height"] == 20 and row["floors"] == 6
    assert row["address"] == "上海市黄浦区中山东一路1号"
    tris = np.vstack([t for _, t, _ in feature_mesh(glb, index)])
    normals = np.vstack([n for _, _, n in feature_mesh(glb, index)])
    volume = signed_volume(tris)
    assert volume == pytest.approx(COURTYARD_AREA * 20, rel=0.01)  # the hole is not filled
    enu = to_enu(tris.reshape(-1, 3)).reshape(-1, 3, 3)
    n_enu = to_enu(normals.reshape(-1, 3)).reshape(-1, 3, 3)
    walls = np.abs(n_enu[:, 0, 2]) < 0.1
    # the inner walls: around the courtyard's centre, facing it
    centre = enu[walls].reshape(-1, 3).mean(axis=0)  # the outer walls are symmetric about it too
    mid = enu[walls].mean(axis=1)
    to_centre = centre[:2] - mid[:, :2]
    dist = np.linalg.norm(to_centre, axis=1)
    inner = dist < 8  # courtyard walls are 5 m from its centre, outer walls 15–20 m
    assert inner.sum() == 8  # 4 walls × 2 triangles
    facing = np.einsum("ij,ij->i", n_enu[walls][inner][:, 0, :2], to_centre[inner])
    assert (facing > 0).all()
    # no roof triangle covers the courtyard's centre
    roofs = enu[n_enu[:, 0, 2] > 0.9]
    def side(p, q):  # z of (q - p) × (centre - p): > 0 when the centre is left of p→q
        return (q[0] - p[0]) * (centre[1] - p[1]) - (q[1] - p[1]) * (centre[0] - p[0])

    for a, b, c in roofs:
        assert not (side(a, b) > 0 and side(b, c) > 0 and side(c, a) > 0), "a roof triangle covers the courtyard"


def test_590_m_tower_from_the_shapefile(buildings):
    tileset, glbs = buildings
    glb, index, row = feature(glbs, "上海中心大厦")
    assert row["height"] == 590 and row["base_elevation"] == 0
    pts = np.vstack([t.reshape(-1, 3) for _, t, _ in feature_mesh(glb, index)])
    llh = to_lonlath(pts, tileset["root"]["transform"])
    assert llh[:, 2].max() == pytest.approx(590, abs=0.05)
    assert llh[:, 2].min() == pytest.approx(0, abs=0.05)
    assert llh[:, 0].mean() == pytest.approx(121.5011, abs=0.001) and llh[:, 1].mean() == pytest.approx(31.2357, abs=0.001)
    assert tileset["root"]["boundingVolume"]["region"][5] >= 590


def test_curtain_wall_buildings_are_glass(buildings, city, db_url, tmp_path):
    _, glbs = buildings
    glb, index, row = feature(glbs, "玻璃塔")
    assert row["has_curtain_wall"] is True
    assert {m for m, _, _ in feature_mesh(glb, index)} == {"curtain_wall_glass"}
    glass = next(m for m in glb.doc["materials"] if m["name"] == "curtain_wall_glass")
    r, g, b, a = glass["pbrMetallicRoughness"]["baseColorFactor"]
    assert b > r and b > g and a < 1 and glass["alphaMode"] == "BLEND"
    glb, index, row = feature(glbs, "天井楼")
    assert row["has_curtain_wall"] is False
    assert {m for m, _, _ in feature_mesh(glb, index)} == {"building"}
    # the curtain-walls layer draws the wall on its building's footprint, with the building's height
    _, walls = export("curtain-walls", tmp_path / "cw", db_url)
    (only,) = [r for g in walls.values() for r in g.rows]
    assert only["name"] == "玻璃塔" and only["support_type"] == "隐框" and only["height"] == 50


def test_pipeline_below_ground(city, db_url, tmp_path):
    tileset, glbs = export("pipelines", tmp_path / "p", db_url)
    radius = 0.3
    assert tileset["root"]["boundingVolume"]["region"][4] <= -5 - radius
    glb, index, row = feature(glbs, "给水管线 w1")
    assert row["kind"] == "给水" and row["diameter_mm"] == 600 and row["depth"] == 5
    (material, tris, _), = feature_mesh(glb, index)
    llh = to_lonlath(tris.reshape(-1, 3), tileset["root"]["transform"])
    assert llh[:, 2].min() == pytest.approx(-5 - radius, abs=0.02)
    assert llh[:, 2].max() == pytest.approx(-5 + radius, abs=0.02)
    colour = next(m for m in glb.doc["materials"] if m["name"] == material)["pbrMetallicRoughness"]["baseColorFactor"]
    assert colour[2] > colour[0]  # water supply is blue
    gas = feature(glbs, "燃气管线 g1")[2]
    assert gas["kind"] == "燃气" and gas["diameter_mm"] == 50


def test_parts_are_instanced_markers_with_classes(city, db_url, tmp_path):
    _, glbs = export("parts", tmp_path / "parts", db_url)
    (glb,) = glbs.values()
    rows = glb.rows
    assert sorted(r["subclass_name"] for r in rows) == sorted(["上水井盖", "消防栓", _subclass(city, "0201")])
    assert {r["class_name"] for r in rows} == {"公用设施", "道路交通"}
    instances = list(glb.instances())
    assert sum(len(t) for _, t, _, _ in instances) == 3
    assert "EXT_mesh_gpu_instancing" in glb.doc["extensionsRequired"]


def _subclass(engine, code: str) -> str:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT name FROM part_classes WHERE code = :c"), {"c": code}).scalar_one()


# --- concurrent requests ---------------------------------------------------------------------

def in_threads(calls: list[Callable[[], Any]]) -> list[Any]:
    """Each call in a thread of its own, all released at once; their results in order (the first
    exception any of them raised is raised here)."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int, call: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            results[i] = call()
        except BaseException as exc:  # noqa: BLE001 — handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def _boxes(n: int) -> list[str]:
    """n different bboxes around the Bund (each a selection, so a plan, of its own)."""
    return [f"{121.48 + i * 0.002},31.22,{121.52 + i * 0.002},31.25" for i in range(n)]


def _counting_plans(monkeypatch) -> collections.Counter:
    """Counts the real plan builds of a TileService by key (layer, version, selection, max features)."""
    from tiles import service as service_module

    builds: collections.Counter = collections.Counter()
    real = service_module.plan_layer

    def plan_layer(conn, layer, srid, storey, city_bbox, selection, max_features, version):
        builds[(layer.name, version, selection.key, max_features)] += 1
        return real(conn, layer, srid, storey, city_bbox, selection, max_features, version)

    monkeypatch.setattr(service_module, "plan_layer", plan_layer)
    return builds


def test_concurrent_plans_of_one_key_build_once(city, monkeypatch):
    from tiles.cache import TileCache
    from cim.selection import Selection, parse_bbox
    from tiles.service import TileService

    builds = _counting_plans(monkeypatch)
    svc = TileService(city, TileCache(None), plan_cache_size=64)
    layers = {name: svc.layer(name) for name in ("buildings", "pipelines")}
    keys = [(name, Selection(parse_bbox(box))) for name in layers for box in _boxes(6)]
    asked = [key for key in keys for _ in range(4)]  # every key by four requests at once
    plans = in_threads([lambda n=name, s=sel: svc.plan(layers[n], s) for name, sel in asked])
    assert len(builds) == len(keys) and set(builds.values()) == {1}, builds
    for (name, selection), plan in zip(asked, plans):
        assert plan.layer.name == name and plan.selection == selection
        assert plan is plans[asked.index((name, selection))], "requests of one key share its one plan"
    assert len(svc.plans) == len(keys) and svc.plans.building == 0


def test_concurrent_plans_of_many_keys_stay_bounded(city, monkeypatch):
    """Many bboxes at once, then many versions at once while each new version drops the older ones'
    plans: no request sees another's dict change under it, every one gets the plan it asked for, and
    no more plans (or build locks) are kept than the cache holds."""
    from tiles.cache import TileCache
    from cim.selection import Selection, parse_bbox
    from tiles.service import TileService

    builds = _counting_plans(monkeypatch)
    svc = TileService(city, TileCache(None), plan_cache_size=4)
    layers = {name: svc.layer(name) for name in ("buildings", "pipelines", "parts")}
    for keys in ([(name, "v1", Selection(parse_bbox(box))) for name in layers for box in _boxes(8)],
                 [(name, version, Selection(parse_bbox(box)))
                  for name in layers for version in ("v2", "v3", "v4") for box in _boxes(3)]):
        asked = keys * 2
        plans = in_threads([lambda n=name, v=version, s=sel: svc.plan(layers[n], s, version=v)
                            for name, version, sel in asked])
        for (name, version, selection), plan in zip(asked, plans):
            assert (plan.layer.name, plan.version, plan.selection) == (name, version, selection)
        assert {(n, v, s.key, DEFAULT_MAX_FEATURES) for n, v, s in keys} <= set(builds)
        assert len(svc.plans) <= 4 and svc.plans.building == 0


def test_built_once_is_an_lru_that_retries_a_failed_build():
    from tiles.builds import BuiltOnce

    built: list[str] = []

    def build(key: str) -> Callable[[], str]:
        def run() -> str:
            built.append(key)
            if key == "bad":
                raise ValueError("no plan")
            return key.upper()
        return run

    cache: BuiltOnce[str, str] = BuiltOnce(2)
    assert [cache.get(k, build(k)) for k in ("a", "b", "a", "c")] == ["A", "B", "A", "C"]
    assert len(cache) == 2 and built == ["a", "b", "c"]  # "b" was the least recently used
    assert cache.get("b", build("b")) == "B" and built[-1] == "b"
    for _ in range(2):
        with pytest.raises(ValueError):
            cache.get("bad", build("bad"))
    assert built.count("bad") == 2 and cache.building == 0, "a failed build is tried again and leaves no lock"
    versions: BuiltOnce[str, str] = BuiltOnce(10)  # a new version's value drops the older versions' ones
    for key in ("v1", "w1", "v2"):
        versions.get(key, build(key), supersedes=lambda k, new=key: k[0] == new[0])
    assert len(versions) == 2 and versions.get("w1", build("w1")) == "W1" and built.count("w1") == 1
    versions.get("v1", build("v1"))
    assert built.count("v1") == 2
    with pytest.raises(ValueError):
        BuiltOnce(0)


def test_concurrent_tile_writes_of_a_new_version_prune_the_old_ones_once(tmp_path):
    """Many threads write the first tiles of a new version at once: each prunes or skips without
    tripping over another's removal, and the disk keeps the new version and the one before."""
    from tiles.cache import TileCache

    cache = TileCache(tmp_path, max_bytes=64 * 1024)
    for version in ("1", "2", "3"):
        cache.put(("mvt", "grids", version, "all", "0/0/0.pbf"), b"old")
    in_threads([lambda i=i: cache.put(("mvt", "grids", "4", "all", f"12/{i}/{i}.pbf"), b"x" * 1000)
                for i in range(32)])
    assert sorted(p.name for p in (tmp_path / "mvt" / "grids").iterdir()) == ["3", "4"]
    assert all(cache.get(("mvt", "grids", "4", "all", f"12/{i}/{i}.pbf")) == b"x" * 1000 for i in range(32))


# --- over HTTP --------------------------------------------------------------------------------

def api_client(engine, home: Path):
    """A TestClient of the whole app whose tile cache lives under ``home``."""
    from fastapi.testclient import TestClient

    from api.app import create_app

    old = os.environ.get("CIM_HOME")
    os.environ["CIM_HOME"] = str(home)
    try:
        app = create_app(engine)
    finally:
        if old is None:
            os.environ.pop("CIM_HOME")
        else:
            os.environ["CIM_HOME"] = old
    return TestClient(app)


@pytest.fixture(scope="module")
def client(city, tmp_path_factory):
    with api_client(city, tmp_path_factory.mktemp("cim-home")) as c:
        yield c


def _get_tileset(client, layer: str, **params):
    r = client.get(f"/3dtiles/{layer}/tileset.json", params=params)
    assert r.status_code == 200, r.text
    return r


def test_api_tileset_resolves_and_follows_edits(client, city):
    r = _get_tileset(client, "pipelines")
    etag, doc = r.headers["etag"], r.json()
    base = "/3dtiles/pipelines/"
    glbs = check_tileset(doc, lambda uri: client.get(base + uri).content)
    assert client.get("/3dtiles/pipelines/tileset.json", headers={"If-None-Match": etag}).status_code == 304
    uri = doc["root"]["content"]["uri"]
    first = client.get(base + uri)
    assert first.headers["content-type"] == "model/gltf-binary" and first.headers["etag"] == etag
    # an edit of the base (a load closes the row, adds the new one and bumps the version)
    with city.begin() as conn:
        conn.execute(sa.text(
            "WITH old AS (UPDATE pipelines SET valid_to = now() WHERE source_id = 'w1' AND valid_to IS NULL "
            "RETURNING *) INSERT INTO pipelines (feature_id, source_id, kind, diameter_mm, material, geom) "
            "SELECT feature_id, source_id, kind, 1200, material, geom FROM old"))
        _bump(conn, "pipelines")
    r2 = _get_tileset(client, "pipelines")
    assert r2.headers["etag"] != etag
    new = check_tileset(r2.json(), lambda u: client.get(base + u).content)
    row = next(r for g in new.values() for r in g.rows if r["source_id"] == "w1")
    assert row["diameter_mm"] == 1200
    assert client.get(base + r2.json()["root"]["content"]["uri"]).content != first.content
    # the old version's content was cached: a client midway through loading still gets it
    assert client.get(base + uri).content == first.content
    gone = client.get(f"{base}{etag.strip(chr(34))}/r0123.glb")  # an old version's tile not cached: reload
    assert gone.status_code == 409 and gone.headers["content-type"] == "application/problem+json"
    assert len(glbs) == 1


def test_api_errors_are_problems(client):
    for path, status in [("/3dtiles/grids/tileset.json", 404), ("/3dtiles/nope/tileset.json", 404),
                         ("/3dtiles/buildings/tileset.json?bbox=1,2,3", 400),
                         ("/3dtiles/buildings/tileset.json?max-features=0", 400),
                         ("/3dtiles/buildings/999/r.glb", 409)]:  # a stale version: reload the tileset
        r = client.get(path)
        assert r.status_code == status, (path, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    assert client.get("/3dtiles/buildings/tileset.json?bbox=1,2,3").json()["parameter"] == "bbox"


def test_api_filter_and_bbox_select_features(client, city):
    with city.connect() as conn:
        tall = conn.execute(sa.text("SELECT count(*) FROM buildings WHERE valid_to IS NULL AND height > 100")).scalar()
    r = _get_tileset(client, "buildings", filter="height > 100")
    doc = r.json()
    assert doc["metadata"]["properties"]["featureCount"] == tall >= 2
    glbs = check_tileset(doc, lambda uri: client.get("/3dtiles/buildings/" + uri).content)
    assert all(row["height"] > 100 for g in glbs.values() for row in g.rows)
    assert "filter=" in doc["root"]["content"]["uri"]
    bad = client.get("/3dtiles/buildings/tileset.json", params={"filter": "nosuchcolumn = 1"})
    assert bad.status_code == 400 and bad.json()["parameter"] == "filter"
    lon, lat = 121.5011, 31.2357  # the Shanghai Tower
    boxed = _get_tileset(client, "buildings", bbox=f"{lon - 0.0004},{lat - 0.0004},{lon + 0.0004},{lat + 0.0004}").json()
    names = [r["name"] for g in check_tileset(boxed, lambda u: client.get("/3dtiles/buildings/" + u).content).values()
             for r in g.rows]
    assert "上海中心大厦" in names and "天井楼" not in names


# --- after an ingest run ------------------------------------------------------------------------

#: three small blocks near the Bund, (source id, name, lon, lat, height m)
LOADED = [("L-1", "北楼", 121.4990, 31.2400, 24.0), ("L-2", "中楼", 121.4996, 31.2400, 30.0),
          ("L-3", "南楼", 121.5002, 31.2400, 60.0)]
LOADED_SIDE = 0.0002  # degrees, about 20 m


def write_buildings(path: Path, heights: dict[str, float]) -> Path:
    """A GeoJSON delivery of the LOADED blocks (WGS84), with the given heights by source id."""
    features = [{"type": "Feature", "properties": {"source_id": s, "name": n, "height": heights.get(s, h)},
                 "geometry": {"type": "Polygon", "coordinates": [[
                     [lon, lat], [lon + LOADED_SIDE, lat], [lon + LOADED_SIDE, lat + LOADED_SIDE],
                     [lon, lat + LOADED_SIDE], [lon, lat]]]}}
                for s, n, lon, lat, h in LOADED]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}, ensure_ascii=False),
                    encoding="utf-8")
    return path


def ingest_buildings(path: Path, db_url: str) -> dict:
    """The real loader (``cim ingest buildings``, upsert by source id); returns its run report."""
    return json.loads(run_cim("ingest", "buildings", str(path), "--json", db_url=db_url).stdout)


@pytest.fixture(scope="module")
def loaded_url(server_url) -> str:
    """A base of its own: only what the loader put there, so every number below is the loader's."""
    from cim.bootstrap import initialise
    from cim.database import engine_for
    from tests.conftest import create_database

    url = create_database(server_url)
    initialise(engine_for(url))
    return url


def _top_of(glbs: dict[str, Glb], source_id: str, transform: list[float]) -> tuple[dict, float]:
    """A building's metadata row and the greatest height of its vertices (m)."""
    for glb in glbs.values():
        for i, row in enumerate(glb.rows):
            if row["source_id"] == source_id:
                pts = np.vstack([t.reshape(-1, 3) for _, t, _ in feature_mesh(glb, i)])
                return row, float(to_lonlath(pts, transform)[:, 2].max())
    raise AssertionError(f"{source_id} not in any tile")


def test_an_ingest_run_that_changes_a_height_shows_in_the_next_tileset(loaded_url, tmp_path):
    from cim.database import engine_for

    first = ingest_buildings(write_buildings(tmp_path / "v1.geojson", {}), loaded_url)
    assert first["inserted"] == len(LOADED)
    with api_client(engine_for(loaded_url), tmp_path / "home") as c:
        base = "/3dtiles/buildings/"
        r1 = _get_tileset(c, "buildings")
        doc1 = r1.json()
        glbs1 = check_tileset(doc1, lambda uri: c.get(base + uri).content)
        heights1 = {sid: _top_of(glbs1, sid, doc1["root"]["transform"]) for sid, *_ in LOADED}
        for sid, *_, height in LOADED:
            row, top = heights1[sid]
            assert row["height"] == height and top == pytest.approx(height, abs=0.05)
        assert c.get(base + "tileset.json", headers={"If-None-Match": r1.headers["etag"]}).status_code == 304

        # the surveyor re-delivers the file with the middle block raised to be the tallest
        second = ingest_buildings(write_buildings(tmp_path / "v2.geojson", {"L-2": 75.0}), loaded_url)
        assert (second["updated"], second["unchanged"], second["inserted"]) == (1, 2, 0)

        r2 = c.get(base + "tileset.json", headers={"If-None-Match": r1.headers["etag"]})
        assert r2.status_code == 200, "the old ETag must not match after the load"
        doc2 = r2.json()
        assert r2.headers["etag"] != r1.headers["etag"]
        assert doc2["asset"]["tilesetVersion"] != doc1["asset"]["tilesetVersion"]
        glbs2 = check_tileset(doc2, lambda uri: c.get(base + uri).content)
        assert set(glbs2).isdisjoint(glbs1), "content URIs carry the new version"
        row, top = _top_of(glbs2, "L-2", doc2["root"]["transform"])
        assert row["height"] == 75.0 and top == pytest.approx(75.0, abs=0.05)
        assert row["feature_id"] == heights1["L-2"][0]["feature_id"], "the same feature, a new version of it"
        for sid in ("L-1", "L-3"):
            assert _top_of(glbs2, sid, doc2["root"]["transform"])[1] == pytest.approx(heights1[sid][1], abs=0.05)
        # the bounding volume grew with the building
        assert doc1["root"]["boundingVolume"]["region"][5] < 75.0 <= doc2["root"]["boundingVolume"]["region"][5]
        for uri in glbs2:  # the rebuilt tiles are as valid as the first ones
            path = tmp_path / "v2" / uri.split("?")[0]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(c.get(base + uri).content)
        (tmp_path / "v2" / "tileset.json").write_bytes(r2.content)
    report = validate_glbs(sorted((tmp_path / "v2").rglob("*.glb")))
    assert not {k: v for k, v in report.items() if v["errors"]}
    spec = validate_tileset(tmp_path / "v2" / "tileset.json")  # the tileset as the API serves it
    assert (spec["numErrors"], spec["numWarnings"]) == (0, 0), _issues(spec)


def test_a_building_finds_its_address_and_wall_on_indexes(city, engine):
    """Each building of a tile looks up its address and whether it has a curtain wall. Written as one OR'ed
    condition per lookup no index could serve them, and with a city's addresses loaded every building
    scanned the whole addresses table (0.6 s a building with 1 M addresses): the plan must use indexes."""
    from cim.schema import tables_for
    from tiles.models import _buildings

    query = _buildings(tables_for(4549), 3.0)
    b = query.table
    sql = sa.select(b.c.fid, query.columns["address"], query.columns["has_curtain_wall"]).where(
        b.c.valid_to.is_(None))
    compiled = str(sql.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # the test city is small: ask whether it *can*
        plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + compiled))
    assert "Seq Scan on addresses" not in plan and "ix_addresses_geom" in plan, plan
    assert "ix_curtain_walls_geom" in plan, plan
