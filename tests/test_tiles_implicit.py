"""3D Tiles 1.1 implicit tiling (``cim tiles export-3d --implicit``): the subtree files are read back here by a
decoder of the spec's own (not the writer's code), every tile they announce exists, every feature is drawn once
and inside the region its tile is given by subdivision, and the CesiumGS validator finds nothing."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from tests.conftest import run_cim
from tests.test_tiles_3d import Glb, _issues, city, to_lonlath, validate_glbs, validate_tileset  # noqa: F401


def _bits(doc: dict, binary: bytes, availability: dict, n: int) -> np.ndarray:
    if "constant" in availability:
        return np.full(n, bool(availability["constant"]))
    view = doc["bufferViews"][availability["bitstream"]]
    raw = np.frombuffer(binary[view["byteOffset"]:view["byteOffset"] + view["byteLength"]], np.uint8)
    return np.unpackbits(raw, bitorder="little")[:n].astype(bool)


def _deinterleave(m: int) -> tuple[int, int]:
    x = y = 0
    for bit in range(16):
        x |= ((m >> (2 * bit)) & 1) << bit
        y |= ((m >> (2 * bit + 1)) & 1) << bit
    return x, y


def read_subtrees(out: Path, root: dict) -> tuple[set, set]:
    """(available tiles, tiles with content) as (level, x, y), following child subtrees from the root."""
    implicit = root["implicitTiling"]
    levels = implicit["subtreeLevels"]
    available, content = set(), set()
    pending = [(0, 0, 0)]
    while pending:
        level, x, y = pending.pop()
        data = (out / implicit["subtrees"]["uri"].format(level=level, x=x, y=y)).read_bytes()
        magic, version, json_len, bin_len = struct.unpack("<4sIQQ", data[:24])
        assert (magic, version) == (b"subt", 1) and (24 + json_len) % 8 == 0
        doc = json.loads(data[24:24 + json_len])
        binary = data[24 + json_len:24 + json_len + bin_len]
        n = (4 ** levels - 1) // 3
        tiles = _bits(doc, binary, doc["tileAvailability"], n)
        has = _bits(doc, binary, doc["contentAvailability"][0], n)
        children = _bits(doc, binary, doc["childSubtreeAvailability"], 4 ** levels)
        assert int(tiles.sum()) == doc["tileAvailability"]["availableCount"]
        for rel in range(levels):
            offset = (4 ** rel - 1) // 3
            for m in range(4 ** rel):
                if tiles[offset + m]:
                    dx, dy = _deinterleave(m)
                    key = (level + rel, (x << rel) + dx, (y << rel) + dy)
                    available.add(key)
                    if has[offset + m]:
                        content.add(key)
                else:
                    assert not has[offset + m], "content in a tile that is not available"
        for m in np.flatnonzero(children):
            dx, dy = _deinterleave(int(m))
            pending.append((level + levels, (x << levels) + dx, (y << levels) + dy))
    return available, content


@pytest.fixture(scope="module")
def implicit_buildings(city, db_url, tmp_path_factory):
    out = tmp_path_factory.mktemp("implicit")
    # two processes build the content (the default on a 2-core machine, spelled out for any machine)
    run_cim("tiles", "export-3d", "buildings", str(out), "--implicit", "--max-features", "8",
            "--subtree-levels", "2", "--workers", "2", db_url=db_url)
    return out, json.loads((out / "tileset.json").read_text())


def test_the_tileset_is_one_root_with_templates(implicit_buildings):
    out, tileset = implicit_buildings
    root = tileset["root"]
    assert tileset["asset"]["version"] == "1.1" and "children" not in root
    assert root["implicitTiling"]["subdivisionScheme"] == "QUADTREE"
    assert root["implicitTiling"]["availableLevels"] >= 3, "115+ buildings at 8 a tile need several levels"
    assert root["refine"] == "ADD" and "{level}" in root["content"]["uri"]
    assert (out / "tileset.json").stat().st_size < 4096


def test_every_announced_tile_exists_and_every_feature_is_drawn_once_inside_its_tile(implicit_buildings, city):
    out, tileset = implicit_buildings
    root = tileset["root"]
    available, content = read_subtrees(out, root)
    assert content and content <= available
    for level, x, y in available - {(0, 0, 0)}:
        assert (level - 1, x // 2, y // 2) in available, "a tile's parent must be available"
    files = {p.relative_to(out).as_posix() for p in out.rglob("*.glb")}
    assert files == {root["content"]["uri"].format(level=lv, x=x, y=y) for lv, x, y in content}
    w, s, e, n, lo, hi = root["boundingVolume"]["region"]
    seen: list[str] = []
    for level, x, y in content:
        glb = Glb((out / root["content"]["uri"].format(level=level, x=x, y=y)).read_bytes())
        seen.extend(r["feature_id"] for r in glb.rows)
        # the region implicit tiling gives this tile: the root's, halved `level` times
        dx, dy = (e - w) / 2 ** level, (n - s) / 2 ** level
        tw, ts = w + x * dx, s + y * dy
        llh = to_lonlath(glb.all_points(), root["transform"])
        lon, lat = np.radians(llh[:, 0]), np.radians(llh[:, 1])
        slack = 1e-9  # float32 vertices
        assert lon.min() >= tw - slack and lon.max() <= tw + dx + slack, (level, x, y)
        assert lat.min() >= ts - slack and lat.max() <= ts + dy + slack, (level, x, y)
        assert llh[:, 2].min() >= lo - 0.01 and llh[:, 2].max() <= hi + 0.01
    with city.connect() as conn:
        ids = set(conn.execute(sa.text("SELECT feature_id::text FROM buildings WHERE valid_to IS NULL")).scalars())
    assert len(seen) == len(set(seen)) == len(ids) == tileset["metadata"]["properties"]["featureCount"]
    assert set(map(str, seen)) == ids


def test_the_validator_reads_subtrees_and_content_without_an_issue(implicit_buildings):
    out, _ = implicit_buildings
    report = validate_tileset(out / "tileset.json")
    assert report["numErrors"] == 0, _issues(report)
    assert report["numWarnings"] == 0, _issues(report)
    bad = {k: v for k, v in validate_glbs(sorted(out.rglob("*.glb"))).items() if v["errors"]}
    assert not bad, bad


def test_bad_subtree_levels_is_a_clear_error(city, db_url, tmp_path):
    proc = run_cim("tiles", "export-3d", "buildings", str(tmp_path), "--implicit", "--subtree-levels", "0",
                   db_url=db_url, check=False)
    assert proc.returncode == 1 and "--subtree-levels" in proc.stderr and "Traceback" not in proc.stderr


def test_two_processes_write_the_same_bytes_as_one(implicit_buildings, db_url, tmp_path):
    out, _ = implicit_buildings
    run_cim("tiles", "export-3d", "buildings", str(tmp_path), "--implicit", "--max-features", "8",
            "--subtree-levels", "2", "--workers", "1", db_url=db_url)
    def tileset(root: Path) -> dict[Path, bytes]:  # (the validator tests leave their reports beside it)
        return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.suffix in (".glb", ".subtree") or p.name == "tileset.json"}

    parallel, serial = tileset(out), tileset(tmp_path)
    assert len([p for p in serial if p.suffix == ".glb"]) > 8  # enough tiles for several batches of work
    assert parallel.keys() == serial.keys()
    assert [p for p in serial if parallel[p] != serial[p]] == []


def test_bad_worker_count_is_a_clear_error(city, db_url, tmp_path):
    proc = run_cim("tiles", "export-3d", "buildings", str(tmp_path), "--implicit", "--workers", "0",
                   db_url=db_url, check=False)
    assert proc.returncode == 1 and "--workers" in proc.stderr and "Traceback" not in proc.stderr
