"""Address normalisation and parsing (no database).

The unit tests use a small dictionary with real Shanghai codes; the last
tests run the parser over 18,367 real free-text addresses from ../shared.
"""

import csv
import json
import re
import time
from pathlib import Path

import pytest

from cim.gazetteer.dictionary import AddressDictionary
from cim.gazetteer.normalize import normalize
from cim.gazetteer.parse import parse_address
from tests.conftest import shared_path


DISTRICTS = [
    ("310101", "黄浦区"), ("310104", "徐汇区"), ("310105", "长宁区"), ("310106", "静安区"),
    ("310107", "普陀区"), ("310109", "虹口区"), ("310110", "杨浦区"), ("310112", "闵行区"),
    ("310113", "宝山区"), ("310114", "嘉定区"), ("310115", "浦东新区"), ("310116", "金山区"),
    ("310117", "松江区"), ("310118", "青浦区"), ("310120", "奉贤区"), ("310151", "崇明区"),
]


@pytest.fixture(scope="module")
def d() -> AddressDictionary:
    return AddressDictionary.from_rows(
        districts=DISTRICTS,
        streets=[("310104011", "田林街道", "310104"), ("310106018", "共和新路街道", "310106"),
                 ("310105009", "虹桥街道", "310105"), ("310112107", "虹桥镇", "310112")],
        communities=[("310104011001", "田林十二村居委会", "310104011")],
        roads=[("汾阳路", "310104"), ("共和新路", "310106"), ("田林路", "310104"), ("漕溪北路", "310104"),
               ("中山南二路", "310104"), ("四川北路", "310109"), ("曹杨路", "310107"),
               ("虹桥路", "310104"), ("虹桥路", "310105")],
        compounds=[("田林十二村", "310104")],
    )


# --- normalize ---------------------------------------------------------------

@pytest.mark.parametrize("raw, text", [
    ("汾阳路１５０號", "汾阳路150号"),  # full-width digits, traditional 號
    ("閘北區共和新路", "静安区共和新路"),
    ("汾阳路七百七十七号", "汾阳路777号"),
    ("四川北路一〇一室", "四川北路101室"),
    ("曹杨路十五弄", "曹杨路15弄"),
    ("5号楼第三单元二十三楼", "5号楼3单元23楼"),
    ("汾阳路一百五十号", "汾阳路150号"),
    ("中山南二路", "中山南二路"),  # numerals in names stay
    ("四川北路三门路五角场", "四川北路三门路五角场"),
    ("汾阳路58弄11-802", "汾阳路58弄11号802室"),
    ("共和新路3088弄5-1201", "共和新路3088弄5号1201室"),
    ("汾阳路150-1号", "汾阳路150-1号"),
    ("汾阳路 150 号 ", "汾阳路150号"),
    ("北辛路3258#", "北辛路3258号"),
])
def test_normalize_text(raw, text):
    assert normalize(raw).text == text


def test_normalize_records_what_changed():
    n = normalize("上海市闸北区共和新路３０８８弄")
    assert n.text == "静安区共和新路3088弄"
    assert n.city == "上海市"
    assert any("闸北区" in note and "静安区" in note for note in n.notes)
    assert any("full-width" in note for note in n.notes)


@pytest.mark.parametrize("raw, text, remark", [
    ("汾阳路150号附近", "汾阳路150号", "附近"),
    ("汾阳路150号对面", "汾阳路150号", "对面"),
    ("汾阳路150号斜对面", "汾阳路150号", "斜对面"),
    ("汾阳路150号（音乐学院）", "汾阳路150号", "音乐学院"),
    ("汾阳路150号(近复兴中路)门口", "汾阳路150号", "近复兴中路；门口"),
    ("汾阳路口", "汾阳路", "路口"),
])
def test_normalize_remarks(raw, text, remark):
    n = normalize(raw)
    assert (n.text, n.remark) == (text, remark)


def test_normalize_intersection():
    n = normalize("漕溪北路与中山南二路交叉口")
    assert (n.text, n.remark, n.is_intersection) == ("漕溪北路与中山南二路", "交叉口", True)
    assert not normalize("汾阳路口").is_intersection


@pytest.mark.parametrize("raw, text", [
    ("上海市徐汇区汾阳路", "徐汇区汾阳路"),
    ("上海徐汇区汾阳路", "徐汇区汾阳路"),
    ("沪徐汇区汾阳路", "徐汇区汾阳路"),
    ("中国上海市徐汇区", "徐汇区"),
    ("上海市沪松公路", "沪松公路"),  # 沪 of a road name is not the city
    ("沪太路1号", "沪太路1号"),
])
def test_normalize_city_forms(raw, text):
    assert normalize(raw).text == text


def test_old_name_only_at_district_slot():
    # 南市区 is an old Shanghai district but Baoding had one too.
    assert normalize("保定市南市区").text == "保定市南市区"
    assert normalize("南市区").text == "黄浦区"


# --- parse -------------------------------------------------------------------

def test_parse_examples(d):
    a = parse_address("上海徐汇区汾阳路150号", d)
    assert (a.city, a.district, a.district_code, a.road, a.door_number) == ("上海市", "徐汇区", "310104", "汾阳路", "150")
    assert a.standard_address() == "上海市徐汇区汾阳路150号"

    a = parse_address("汾阳路１５０號", d)
    assert (a.road, a.door_number, a.district_code) == ("汾阳路", "150", "310104")
    assert any("inferred" in n for n in a.notes)

    a = parse_address("徐汇区汾阳路一百五十号附近", d)
    assert (a.district_code, a.door_number, a.remark) == ("310104", "150", "附近")
    assert a.standard_address() == "上海市徐汇区汾阳路150号"

    a = parse_address("上海市闸北区共和新路3088弄5号1201室", d)
    assert (a.district, a.district_code, a.road, a.lane, a.building, a.room) == (
        "静安区", "310106", "共和新路", "3088", "5", "1201")
    assert a.door_number is None
    assert any("闸北区" in n for n in a.notes)
    assert a.standard_address() == "上海市静安区共和新路3088弄5号1201室"


def test_parse_numbers(d):
    a = parse_address("徐汇区汾阳路150号5号楼3单元12层1201室", d)
    assert (a.door_number, a.building, a.building_kind, a.unit, a.floor, a.room) == ("150", "5", "号楼", "3", "12", "1201")
    assert a.standard_address() == "上海市徐汇区汾阳路150号5号楼3单元1201室"

    a = parse_address("曹杨路1040号中友大厦1号楼15楼", d)
    assert (a.door_number, a.compound, a.building, a.floor) == ("1040", "中友大厦", "1", "15")

    assert parse_address("汾阳路150-1号", d).door_number == "150-1"
    assert parse_address("汾阳路150甲号", d).door_number == "150甲"
    a = parse_address("曹杨路58弄3支弄7号", d)
    assert (a.lane, a.sub_lane, a.building) == ("58", "3", "7")
    a = parse_address("汾阳路58弄11-802", d)
    assert (a.lane, a.building, a.room) == ("58", "11", "802")
    assert a.standard_address() == "上海市徐汇区汾阳路58弄11号802室"
    a = parse_address("汾阳路150号A座2栋", d)
    assert (a.building, a.building_kind) == ("A", "座")
    assert parse_address("四川北路一〇一室", d).room == "101"
    assert parse_address("曹杨路十五弄", d).lane == "15"
    assert parse_address("汾阳路150号第三单元", d).unit == "3"
    a = parse_address("汾阳路150号1906", d)  # bare number after the door is the room
    assert a.room == "1906"


def test_parse_intersection(d):
    a = parse_address("漕溪北路与中山南二路交叉口", d)
    assert a.is_intersection and (a.road, a.second_road) == ("漕溪北路", "中山南二路")
    assert a.district_code == "310104"
    assert a.standard_address() == "上海市徐汇区漕溪北路与中山南二路交叉口"


def test_parse_names_with_numerals_stay(d):
    a = parse_address("中山南二路", d)
    assert a.road == "中山南二路" and a.district_code == "310104"
    assert parse_address("四川北路", d).district_code == "310109"


def test_district_short_form_and_road_guard(d):
    a = parse_address("徐汇汾阳路150号", d)
    assert (a.district, a.road) == ("徐汇区", "汾阳路")
    # "浦东" of 浦东大道 and "宝山" of 宝山路 are road names, not districts
    assert parse_address("浦东大道1200号", d).road == "浦东大道"
    assert parse_address("宝山路1号", d).district_code is None
    assert parse_address("浦东区民生路600号", d).district_code == "310115"


def test_street_community_compound(d):
    a = parse_address("徐汇区田林街道田林十二村居委会田林路1号", d)
    assert (a.street, a.street_code, a.community, a.community_code, a.road) == (
        "田林街道", "310104011", "田林十二村居委会", "310104011001", "田林路")
    a = parse_address("田林街道田林路1号", d)
    assert a.district_code == "310104"  # from the street
    a = parse_address("普陀区长风街道", d)
    assert a.street == "长风街道" and any("not in dictionary" in n for n in a.notes)


def test_ambiguous_district_lists_candidates(d):
    a = parse_address("虹桥路333号", d)
    assert a.district_code is None and a.district_candidates == ["310104", "310105"]
    # the street settles it when both are given
    assert parse_address("虹桥街道虹桥路1号", d).district_code == "310105"


def test_generic_road_and_area(d):
    a = parse_address("浦东新区外高桥保税区富特北路318号B座3楼", d)
    assert (a.district_code, a.area, a.road, a.door_number, a.building, a.floor) == (
        "310115", "外高桥保税区", "富特北路", "318", "B", "3")
    assert any("not in dictionary" in n for n in a.notes)


@pytest.mark.parametrize("raw, province, city", [
    ("浙江省舟山市普陀区东港街道", "浙江省", "舟山市"),
    ("浙江舟山普陀区沈家门", "浙江省", "舟山市"),
    ("舟山普陀区沈家门", "浙江省", "舟山市"),
    ("舟山市普陀区", "浙江省", "舟山市"),
    ("江苏省苏州市工业园区星汉街5号", "江苏省", "苏州市"),
    ("北京市朝阳区建国路1号", "北京市", None),
])
def test_foreign(d, raw, province, city):
    a = parse_address(raw, d)
    assert a.foreign and (a.province, a.city) == (province, city)
    assert a.district_code is None


@pytest.mark.parametrize("raw", ["南京西路1717号", "延安西路129号", "浙江中路1号", "中山公园", "上海市中山西路1001号"])
def test_shanghai_roads_named_after_places_are_not_foreign(d, raw):
    assert not parse_address(raw, d).foreign


def test_components(d):
    c = parse_address("上海徐汇区汾阳路150号附近", d).components()
    assert c == {"province": "上海市", "city": "上海市", "district": "徐汇区", "district_code": "310104",
                 "road": "汾阳路", "door_number": "150", "remark": "附近"}


def test_new_city_is_data_only():
    # Hangzhou: only rows change; 西湖区 resolves and 上海 becomes foreign.
    hz = AddressDictionary.from_rows(districts=[("330106", "西湖区")], roads=[("文三路", "330106")],
                                     city_name="杭州市", province_name="浙江省")
    a = parse_address("浙江省杭州市西湖区文三路1号", hz)
    assert (a.city, a.district_code, a.road, a.door_number) == ("杭州市", "330106", "文三路", "1")
    assert parse_address("上海市徐汇区汾阳路150号", hz).foreign


# --- real addresses ------------------------------------------------------------

@pytest.fixture(scope="module")
def real_rows() -> list[str]:
    with shared_path("addresses", "cpca_addr.csv").open(encoding="utf-8") as fh:
        return [r["原始地址"] for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def real_parsed(real_rows):
    """16 districts plus the 229 real streets/towns of the base."""
    streets = []
    subdistricts = shared_path("shanghai", "subdistricts_wgs84.geojson")
    for f in json.loads(subdistricts.read_text(encoding="utf-8"))["features"]:
        p = f["properties"]
        streets.append((p["region_id"][:9], p["source_name"], p["region_group"]))
    dictionary = AddressDictionary.from_rows(districts=DISTRICTS, streets=streets)
    start = time.perf_counter()
    parsed = [parse_address(r, dictionary) for r in real_rows]  # must not raise
    elapsed = time.perf_counter() - start
    print(f"\nparsed {len(parsed)} rows in {elapsed:.2f}s: {len(parsed) / elapsed:,.0f} rows/s")
    return list(zip(real_rows, parsed))


# A row names its district when one of these is in the text.
_NAMED_DISTRICT = re.compile("|".join(n for _, n in DISTRICTS) + "|闸北区|卢湾区|南汇区|崇明县|浦东")


def _other_place_first() -> re.Pattern:
    """Rows opening (after 中国) with another province or city written in full."""
    data = Path(__file__).resolve().parents[1] / "cim" / "data"
    names = []
    for table in ("provinces.csv", "cities.csv"):
        with (data / table).open(encoding="utf-8") as fh:
            names += [r["name"] for r in csv.DictReader(fh) if r["name"] != "上海市"]
    return re.compile(r"^(?:中国)?(?:%s)" % "|".join(sorted(names, key=len, reverse=True)))


_OTHER_PLACE_FIRST = _other_place_first()


def test_real_addresses_district_rate(real_parsed):
    shanghai = [(r, a) for r, a in real_parsed if "上海" in r]
    with_code = [a for _, a in shanghai if a.district_code]
    named = [(r, a) for r, a in shanghai if _NAMED_DISTRICT.search(r) and not _OTHER_PLACE_FIRST.match(r)]
    named_ok = [a for _, a in named if a.district_code]
    foreign = [a for _, a in shanghai if a.foreign]
    print(f"\nrows with 上海: {len(shanghai)}; district_code: {len(with_code)} ({len(with_code) / len(shanghai):.1%}); "
          f"foreign: {len(foreign)}; naming a district: {len(named)}, resolved {len(named_ok) / len(named):.1%}")
    assert len(shanghai) > 2000
    # Where the text names the district (full, short 浦东, or old name) it must be found.
    assert len(named_ok) / len(named) >= 0.95
    # Without a road table ~15 % of rows state no district at all ("上海市延安中路841号"),
    # so the rate over every 上海 row is bounded by the dictionary, not the parser.
    assert len(with_code) / len(shanghai) >= 0.80


def test_real_addresses_other_provinces_get_no_shanghai_district(real_parsed):
    other = [(r, a) for r, a in real_parsed if _OTHER_PLACE_FIRST.match(r)]
    assert len(other) > 1000
    wrong = [r for r, a in other if a.district_code]
    assert not wrong, wrong[:10]
    zhoushan = [a for r, a in real_parsed if re.search("浙江|舟山", r) and "普陀" in r]
    assert all(a.district_code is None for a in zhoushan)


def test_real_addresses_full_width_digits_normalise(real_parsed):
    wide = [(r, a) for r, a in real_parsed if re.search("[０-９]", r)]
    assert wide
    for _, a in wide:
        assert not re.search("[０-９]", a.normalized)
    a = next(a for r, a in wide if "真北路９８８号" in r)
    assert (a.road, a.door_number, a.building) == ("真北路", "988", "10")
