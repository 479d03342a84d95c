"""Links completed by the layer that arrives second (ingest.layers.complete_address_links /
complete_building_links), on a real PostGIS: addresses loaded before buildings get their building when the buildings
arrive, and buildings loaded before addresses their address when the addresses arrive — the same answer as if the
other layer had been there first, with no new version of the linked rows and closed versions left as they were.

Two bases: the two districts of tests/test_address_links.py (addresses first, then buildings, then more addresses),
and the sample city through `cim samples load` (which loads its addresses before its buildings).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from cim.database import engine_for
from cim.bootstrap import initialise
from tests.conftest import create_database
from tests.sample_city import sample_city_base
from tests.test_address_links import ADDRESSES, BOUNDARY, BUILDINGS, CHANGNING, XUHUI, _box, _links, _load, _write, rows

LATER = ("a-cross-east", "a-changning")  # addresses that arrive after the buildings
FIRST = {key: value for key, value in ADDRESSES.items() if key not in LATER}


def _addresses(folder: Path, name: str, keys, suffix: str = "") -> Path:
    numbered = list(ADDRESSES)
    return _write(folder / name, [
        ({"source_id": key, "full_address": f"上海市徐汇区中山路{numbered.index(key) + 1}号{suffix}"},
         {"type": "Point", "coordinates": list(ADDRESSES[key][0])}) for key in keys])


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("address-links-later")


@pytest.fixture(scope="module")
def base(engine, folder):
    _load(engine, "districts", _write(folder / "districts.geojson", [
        ({"code": XUHUI, "name": "徐汇区"}, _box(121.40, 31.20, BOUNDARY, 31.22)),
        ({"code": CHANGNING, "name": "长宁区"}, _box(BOUNDARY, 31.20, 121.44, 31.22))]))
    _load(engine, "addresses", _addresses(folder, "addresses-1.geojson", FIRST))
    # a second delivery changes every address: the first versions are closed, history the link must leave alone
    report = _load(engine, "addresses", _addresses(folder, "addresses-2.geojson", FIRST, suffix="1室"))
    assert report.updated == len(FIRST)
    assert rows(engine, "SELECT count(*) FROM addresses WHERE building_feature_id IS NOT NULL")[0][0] == 0
    return engine


def _versions(engine) -> list:
    return rows(engine, "SELECT fid, feature_id, valid_from, valid_to, ingest_run_id, content_hash FROM addresses "
                        "ORDER BY fid")


def test_buildings_arriving_after_their_addresses_give_them_their_building(base, folder):
    before = _versions(base)
    report = _load(base, "buildings", _write(folder / "buildings.geojson", [
        ({"source_id": key, "height": 12.0}, outline) for key, outline in BUILDINGS.items()]))
    assert report.inserted == len(BUILDINGS)
    assert f"{sum(1 for _p, b in FIRST.values() if b)} feature(s) of the linked layer" in report.message
    # the same building as an address loaded after the buildings gets (test_address_links: the unpruned join)
    assert _links(base) == {key: building for key, (_point, building) in FIRST.items()}
    # no new version, nothing else of any row changed; the closed versions keep no building
    assert _versions(base) == before
    assert rows(base, "SELECT count(*) FROM addresses WHERE valid_to IS NOT NULL AND building_feature_id IS NOT NULL"
                )[0][0] == 0
    assert rows(base, "SELECT count(*) FROM addresses WHERE valid_to IS NOT NULL")[0][0] == len(FIRST)


def _building_addresses(engine) -> dict[str, str | None]:
    return dict(rows(engine, "SELECT b.source_id, a.source_id FROM buildings b LEFT JOIN addresses a "
                             "ON a.feature_id = b.address_feature_id AND a.valid_to IS NULL WHERE b.valid_to IS NULL"))


def test_addresses_arriving_after_their_buildings_give_them_their_address(base, folder):
    # the buildings' merge linked the addresses that were there; B-CHANGNING covered none
    assert _building_addresses(base) == {"B-XUHUI": "a-xuhui", "B-CROSS": "a-cross-west", "Z-XUHUI": "a-over",
                                         "A-OVER": "a-over", "B-CHANGNING": None, "B-OUT": "a-out"}
    buildings_before = rows(base, "SELECT fid, feature_id, valid_from, valid_to FROM buildings ORDER BY fid")
    report = _load(base, "addresses", _addresses(folder, "addresses-3.geojson", LATER))
    assert report.inserted == len(LATER)
    assert "1 feature(s) of the linked layer" in report.message, report.message
    # B-CHANGNING now has its address (in 长宁's partition); B-CROSS keeps the one it had (lower door number anyway)
    assert _building_addresses(base)["B-CHANGNING"] == "a-changning"
    assert _building_addresses(base)["B-CROSS"] == "a-cross-west"
    assert rows(base, "SELECT fid, feature_id, valid_from, valid_to FROM buildings ORDER BY fid") == buildings_before
    assert _links(base) == {key: building for key, (_point, building) in ADDRESSES.items()}


@pytest.fixture(scope="module")
def buildings_first(server_url, folder):
    """The Shanghai order on a base of its own: districts, then buildings, then the addresses' first load (staged
    district by district, ingest.staged)."""
    engine = engine_for(create_database(server_url))
    initialise(engine)
    _load(engine, "districts", _write(folder / "districts-b.geojson", [
        ({"code": XUHUI, "name": "徐汇区"}, _box(121.40, 31.20, BOUNDARY, 31.22)),
        ({"code": CHANGNING, "name": "长宁区"}, _box(BOUNDARY, 31.20, 121.44, 31.22))]))
    _load(engine, "buildings", _write(folder / "buildings-b.geojson", [
        ({"source_id": key, "height": 12.0}, outline) for key, outline in BUILDINGS.items()]))
    return engine


def test_a_staged_first_load_of_addresses_gives_the_buildings_before_them_their_address(buildings_first, folder):
    before = rows(buildings_first, "SELECT fid, feature_id, valid_from, valid_to FROM buildings ORDER BY fid")
    report = _load(buildings_first, "addresses", _addresses(folder, "addresses-b.geojson", ADDRESSES))
    assert report.message.startswith("first load:"), report.message  # the staged path
    # what a building loaded after the addresses gets (ingest.layers.BUILDING_MERGE): of the current addresses it
    # covers, the lowest door number, then the standard address
    expected = dict(rows(buildings_first, """SELECT b.source_id, (
            SELECT a.source_id FROM addresses a WHERE a.valid_to IS NULL AND ST_Covers(b.geom, a.geom)
            ORDER BY a.door_int NULLS LAST, a.standard_address LIMIT 1)
        FROM buildings b WHERE b.valid_to IS NULL"""))
    linked = sum(1 for a in expected.values() if a is not None)
    assert linked >= 4 and f"{linked} feature(s) of the linked layer" in report.message, (expected, report.message)
    assert _building_addresses(buildings_first) == expected
    assert rows(buildings_first, "SELECT fid, feature_id, valid_from, valid_to FROM buildings ORDER BY fid") == before
    assert _links(buildings_first) == {key: building for key, (_point, building) in ADDRESSES.items()}


@pytest.fixture(scope="module")
def samples(server_url):
    return engine_for(sample_city_base(server_url))


def test_the_sample_city_links_addresses_to_the_buildings_loaded_after_them(samples):
    # what an address loaded after the buildings would get: the smallest source id among the current buildings
    # covering it (ingest.layers.ADDRESS_LINK_UNPRUNED)
    wrong = rows(samples, """SELECT a.source_id, a.building_feature_id, (
            SELECT b.feature_id FROM buildings b WHERE b.valid_to IS NULL AND ST_Covers(b.geom, a.geom)
            ORDER BY b.source_id LIMIT 1) AS expected
        FROM addresses a WHERE a.valid_to IS NULL""")
    linked = [r for r in wrong if r.expected is not None]
    assert len(linked) > 100  # the premise: many sample addresses stand on a building
    assert [r for r in wrong if r.building_feature_id != r.expected] == []
    # one version per address, all current: linking made no history
    assert rows(samples, "SELECT count(*) = count(DISTINCT feature_id), bool_and(valid_to IS NULL) FROM addresses"
                )[0] == (True, True)
