"""The load's fast address parser (cim.gazetteer.shapes.ShapeParser) gives exactly the full parser's result
(cim.gazetteer.parse.parse_address): on the real addresses of ../shared/data (and on them with other numbers, so
that their heads go the fast way), on the synthetic city's generated rows, and on texts made to trip it — with a
dictionary whose roads hold digits, with and without the roads a first load would know. No database."""
from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

from cim.gazetteer.dictionary import AddressDictionary
from cim.gazetteer.parse import parse_address
from cim.gazetteer.shapes import _SHAPE, ShapeParser
from ingest.synthetic_city import DISTRICTS, generate_city
from tests.conftest import shared_path

STREETS = [("310104003", "天平路街道", "310104"), ("310104014", "徐家汇街道", "310104"),
           ("310115005", "陆家嘴街道", "310115"), ("310115125", "川沙新镇", "310115")]


def _dictionary(roads: list[tuple[str, str]] = ()) -> AddressDictionary:
    return AddressDictionary.from_rows(districts=[(code, name) for code, name, *_ in DISTRICTS], streets=STREETS,
                                       communities=[("310104003001", "天平第1居委会", "310104003")], roads=roads,
                                       city_name="上海市")


def _renumbered(texts: list[str], rng: random.Random, times: int = 3) -> list[str]:
    """Each text of the fast path's shape again with other numbers: short, long, leading zeros, six digits."""
    out = []
    for text in texts:
        m = _SHAPE.fullmatch(text)
        if m is None:
            continue
        head, lane, door, room = m.groups()
        for _ in range(times):
            def number() -> str:
                return rng.choice(["0", "07", "123456", str(rng.randint(1, 9999))])
            out.append(f"{head}{number() + '弄' if lane else ''}{number()}号{number() + '室' if room else ''}")
    return out


def _same(texts: list[str], dictionary: AddressDictionary) -> ShapeParser:
    fast = ShapeParser(dictionary)
    wrong = [t for t in texts if fast.parse(t) != parse_address(t, dictionary)]
    assert wrong == [], wrong[:5]
    assert fast.fast + fast.full == len(texts)
    return fast


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("city")
    generate_city(folder, scale=0.001, seed=5)
    with (folder / "addresses.csv").open(encoding="utf-8") as f:
        return [row["full_address"] for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def real() -> list[str]:
    with shared_path("addresses", "cpca_addr.csv").open(encoding="utf-8") as f:
        return [row["原始地址"] for row in csv.DictReader(f) if row["原始地址"]]


def _known_roads(texts: list[str]) -> list[tuple[str, str]]:
    """The roads a later load's dictionary holds (dictionary_from_base: the parsed roads of loaded addresses)."""
    d = _dictionary()
    return sorted({(p.road, p.district_code) for p in (parse_address(t, d) for t in texts) if p.road and p.district_code})


def test_generated_rows_parse_the_same_and_mostly_the_fast_way(generated):
    for dictionary in (_dictionary(), _dictionary(_known_roads(generated))):
        fast = _same(generated, dictionary)
        assert fast.fast > 0.8 * len(generated), (fast.fast, fast.full)  # the premise: heads repeat


def test_real_addresses_parse_the_same(real):
    rng = random.Random(7)
    texts = real + _renumbered(real, rng)
    for dictionary in (_dictionary(), _dictionary(_known_roads(real))):
        fast = _same(texts, dictionary)
        assert fast.fast > 1000, (fast.fast, fast.full)  # real heads, renumbered, went the fast way


def test_texts_made_to_trip_it_parse_the_same():
    heads = ["上海市徐汇区中山路", "徐汇区华夏西", "上海市浦东新区华夏西", "上海市徐汇区中山路第", "沪徐汇区天平路街道中山", "上海市南京西",
             "北京市海淀区北西环西路", "上海市徐汇区(近地铁站", "上海市徐汇区中山路旁", "上海市徐汇区天平路街道天平第1居委会建国西路",
             "上海市徐汇区漕溪北路与中山南二路交叉口", "上海市黄埔区中山东一路", "上海市徐汇区①路", "上海市徐汇区中山路邮编", "臺灣路",
             "上海市浦东新区陆家嘴环路", "上海市徐汇区虹桥路-", "上海市徐汇区中山路#", "川沙镇华夏东路", "上海市闸北区共和新路"]
    texts = [f"{head}{lane}{door}号{room}" for head in heads for lane in ("", "12弄", "0弄") for door in ("1", "58", "123456")
             for room in ("", "101室", "2室")]
    # a dictionary road with a digit: "华夏西1路" may run from a head into its numbers, and 1号路 starts with one
    for dictionary in (_dictionary(), _dictionary([("华夏西1路", "310115"), ("中山路1", "310104")]),
                       _dictionary([("1号路", "310104")])):
        _same(texts * 2, dictionary)  # twice: the second time each head and shape has its template
