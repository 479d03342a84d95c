"""The Shanghai-size synthetic city (``cim samples generate``), checked at a small fraction: deterministic,
codes well formed and nested, every file loaded by the ordinary loaders without a reject, and a disk too small
refused before anything is written."""
from __future__ import annotations

import csv
import hashlib
import re
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import sqlalchemy as sa

from cim.errors import UserError
from ingest.samples import load_samples
from ingest.synthetic_city import DISTRICTS, CityPlan, generate_city, parse_scale
from tests.conftest import run_cim

SCALE = 0.0004  # 6,000 parts, 4,000 addresses, 600 buildings, 16 districts, 218 streets


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("shanghai")
    report = generate_city(out, SCALE, seed=7)
    return out, report.rows


def _rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _digest(directory: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(directory.glob("*.csv")):
        h.update(p.read_bytes())
    return h.hexdigest()


def test_counts_follow_the_plan(city):
    out, rows = city
    plan = CityPlan.at(SCALE).counts
    assert rows["districts"] == 16 and rows["streets"] == sum(d[4] for d in DISTRICTS) == 218
    for key in ("parts", "buildings", "addresses", "iot_devices", "curtain_walls"):
        assert rows[key] == plan[key], key
    for name, n in rows.items():
        assert len(_rows(out / f"{name}.csv")) == n, name


def test_codes_are_well_formed_and_nested(city):
    out, _ = city
    districts = {r["code"] for r in _rows(out / "districts.csv")}
    assert districts == {d[0] for d in DISTRICTS}
    streets = _rows(out / "streets.csv")
    assert all(re.fullmatch(r"\d{9}", s["code"]) and s["district_code"] == s["code"][:6] for s in streets)
    grids = _rows(out / "grids.csv")
    assert all(re.fullmatch(r"\d{15}", g["grid_code"]) and g["community_code"] == g["grid_code"][:12] for g in grids)
    parts = _rows(out / "parts.csv")
    codes = [p["object_code"] for p in parts]
    assert len(set(codes)) == len(codes)
    assert all(re.fullmatch(r"\d{16}", c) and c[:6] in districts for c in codes)
    assert all(p["object_code"][6:10] == p["subclass_code"] for p in parts)
    # every grid has a 网格监督员 (the grid worker who verifies cases)
    chain = _rows(out / "responsibility.csv")
    assert {r["grid_code"] for r in chain if r["post_name"] == "网格监督员"} == {g["grid_code"] for g in grids}


def test_the_same_seed_gives_the_same_city(city, tmp_path):
    out, _ = city
    again = generate_city(tmp_path / "again", SCALE, seed=7)
    assert _digest(again.directory) == _digest(out)
    other = generate_city(tmp_path / "other", SCALE, seed=8)
    assert _digest(other.directory) != _digest(out)


def test_the_loaders_take_every_file_without_a_reject(city, engine):
    out, rows = city
    reports = {r.layer: r for r in load_samples(out, engine)}
    for layer, name in (("parts", "parts"), ("buildings", "buildings"), ("addresses", "addresses"),
                        ("pipelines", "pipelines"), ("iot-devices", "iot_devices"), ("grids", "grids"),
                        ("curtain-walls", "curtain_walls")):
        report = reports[layer]
        assert report.rejected == 0, (layer, report.as_dict())
        assert report.inserted == rows[name], (layer, report.as_dict())
    with engine.connect() as conn:
        # parts land in the grid and district their code names (enrichment by the loaders, not the generator)
        wrong = conn.execute(sa.text(
            "SELECT count(*) FROM parts WHERE valid_to IS NULL AND (grid_code IS NULL OR left(object_code, 6) <> left(grid_code, 6))"
        )).scalar()
    assert wrong == 0


def test_a_disk_too_small_is_refused_before_writing(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage(10**9, 10**9 - 10**8, 10**8))
    with pytest.raises(UserError, match=r"needs about .* GB .* nothing was written"):
        generate_city(tmp_path / "big", 1.0)
    assert not list((tmp_path / "big").glob("*.csv"))


def test_scale_spellings_and_the_command(tmp_path):
    assert parse_scale("shanghai") == 1.0 and parse_scale("0.01") == 0.01
    with pytest.raises(UserError, match="--scale"):
        parse_scale("huge")
    bad = run_cim("samples", "generate", "--out", str(tmp_path / "x"), "--scale", "-1", check=False)
    assert bad.returncode == 1 and "--scale" in bad.stderr and "Traceback" not in bad.stderr
    ok = run_cim("samples", "generate", "--out", str(tmp_path / "y"), "--scale", "0.0002")
    assert '"parts": 3000' in ok.stdout
