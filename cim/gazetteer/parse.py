"""Parse a normalised address into GB/T 23705-style components.

Left to right, one slot at a time: other province (stop) -> district ->
street/town -> community -> road -> numbers (door, lane, building, unit,
floor, room) and compound. Dictionary names win; generic suffix patterns
('…路', '…镇', '…大厦') are the fallback and say so in ``notes``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

from cim.gazetteer.dictionary import AddressDictionary, Trie
from cim.gazetteer.normalize import ROAD_TAIL, normalize

_HAN = r"\u4e00-\u9fff"
# After a province/city short form, something administrative must follow for
# it to be read as a place ("舟山普陀区", "武汉武昌区"); "中山公园" is not one.
_ADMIN_NEXT = re.compile(rf"[{_HAN}]{{0,4}}?(?:省|市|区|县|州|盟|旗)")
_STREET_SUFFIX = re.compile(r"街道|镇|乡")
_GENERIC_STREET = re.compile(rf"[{_HAN}]{{1,6}}?(?:街道|镇|乡)")
_GENERIC_COMMUNITY = re.compile(rf"[{_HAN}]{{1,8}}?(?:居民委员会|村民委员会|居委会|村委会|社区)")
_GENERIC_ROAD = re.compile(rf"[{_HAN}]+?(?:大道|公路|大街|路|街(?!道)|巷)")
# Non-administrative zone written before the road: "金桥出口加工区敬业路".
_AREA = re.compile(
    rf"[{_HAN}]*(?:开发区|园区|工业区|加工区|保税区|实验区|产业园|科技园|工业园|机场|新城|(?<=[{_HAN}]{{2}})[区园])"
    rf"(?=[{_HAN}]{{2}})"
)
# Greedy over Chinese so "复旦科技园大厦" stays whole; a Latin prefix ("SOHO") may lead.
_GENERIC_COMPOUND = re.compile(
    rf"[A-Za-z]*[{_HAN}]{{1,12}}(?:小区|花园|新村|公寓|大厦|大楼|商厦|广场|中心|商务楼|写字楼|软件园|产业园|创意园|科技园|苑)"
)
_OTHER_UNIT = re.compile(r"新区|[区县市]")
# A district the dictionary does not hold (a base loaded for part of the city): "黄浦区" at the
# district slot. Recognised so that nothing is inferred past it; zones and estates that also end
# in 区 are not districts.
_GENERIC_DISTRICT = re.compile(rf"[{_HAN}]{{2,3}}?(?:新区|区|县)")
_NOT_DISTRICT = re.compile(
    r"(?:小|园|社|校|厂|景|街|片|城|营|矿|港|开发|工业|加工|保税|实验|试验|示范|功能|商务|自贸|风景|度假|物流|经济|高新)区$")
_ONE_CHAR_ROAD = re.compile(rf"[{_HAN}](?:大道|公路|路|街(?!道)|巷)")
_CONNECTOR = re.compile(r"[与和、及交]")

# Number tokens after the road, tried in this order at each position
# (building before door so "5号楼" is not read as door 5).
_NUMBER_TOKENS = [
    ("sub_lane", re.compile(r"(\d+)支弄")),
    ("lane", re.compile(r"(\d+)弄")),
    ("building", re.compile(r"([A-Za-z]?\d+[A-Za-z]?|[A-Za-z]{1,3})(号楼|栋|幢|座|号馆)")),
    ("door", re.compile(r"(\d+(?:-\d+)?[甲乙丙丁]?|[甲乙丙丁]\d+)号")),
    ("unit", re.compile(r"(\d+)单元")),
    ("floor", re.compile(r"((?:[Bb]|-)?\d+(?:-\d+)?)(?:层|楼|[Ff](?![A-Za-z]))")),
    ("room", re.compile(r"([A-Za-z]?\d+[A-Za-z]?(?:-[A-Za-z]?\d+[A-Za-z]?)?)室")),
    ("bare", re.compile(r"([A-Za-z]?\d+[A-Za-z]?(?:-[A-Za-z\d]+)?)(?![\dA-Za-z])")),
]


@dataclass
class ParsedAddress:
    raw: str
    normalized: str = ""
    province: str | None = None
    city: str | None = None
    district: str | None = None
    district_code: str | None = None
    street: str | None = None
    street_code: str | None = None
    community: str | None = None
    community_code: str | None = None
    area: str | None = None  # development zone / park named before the road
    road: str | None = None
    second_road: str | None = None  # the other road of an intersection
    door_number: str | None = None  # "150", "150-1", "150甲"
    lane: str | None = None  # 弄
    sub_lane: str | None = None  # 支弄
    building: str | None = None  # number/letter only; marker in building_kind
    building_kind: str | None = None  # 号楼/栋/幢/座, or 号 for a house inside a lane
    unit: str | None = None
    floor: str | None = None
    room: str | None = None
    compound: str | None = None
    remark: str | None = None
    unparsed: str | None = None  # text left over between components
    notes: list[str] = field(default_factory=list)
    district_candidates: list[str] = field(default_factory=list)
    foreign: bool = False
    is_intersection: bool = False

    def standard_address(self) -> str:
        """GB/T 23705 order: city district road door lane sub-lane building unit room.

        Floor is only written when there is no room (the room number carries it).
        Street/community are administrative areas, not part of the address line.
        The compound is written (after the road) only when there is no door or
        lane, because then it is what locates the address. A foreign address is
        returned as given.
        """
        if self.foreign:
            return self.normalized
        if self.is_intersection and self.second_road:
            return "".join(p or "" for p in (self.city, self.district, self.road)) + f"与{self.second_road}交叉口"
        return address_line(self.city, self.district, self.road, self.compound, self.door_number, self.lane,
                            self.sub_lane, self.building, self.building_kind, self.unit, self.floor, self.room)

    def components(self) -> dict[str, str]:
        """The address components that were found, in parse order."""
        skip = {"raw", "normalized", "notes", "district_candidates", "foreign", "is_intersection"}
        return {f.name: v for f in fields(self) if f.name not in skip and (v := getattr(self, f.name))}


def address_line(city: str | None, district: str | None, road: str | None, compound: str | None,
                 door_number: str | None, lane: str | None, sub_lane: str | None, building: str | None,
                 building_kind: str | None, unit: str | None, floor: str | None, room: str | None) -> str:
    """The standard address of these components (see ``ParsedAddress.standard_address``; a load calls it for
    millions of rows without making a ParsedAddress for each)."""
    parts = [city, district, road]
    if not (door_number or lane):
        parts.append(compound)
    parts += [
        _unit(door_number, "号"),
        _unit(lane, "弄"),
        _unit(sub_lane, "支弄"),
        _unit(building, building_kind or "号楼"),
        _unit(unit, "单元"),
        _unit(floor, "层") if not room else None,
        _unit(room, "室"),
    ]
    return "".join(p for p in parts if p)


def _unit(value: str | None, marker: str) -> str | None:
    return f"{value}{marker}" if value else None


def parse_address(text: str, dictionary: AddressDictionary) -> ParsedAddress:
    d = dictionary
    n = normalize(text, d)
    a = ParsedAddress(raw=text, normalized=n.text, remark=n.remark, notes=list(n.notes),
                      is_intersection=n.is_intersection)
    s = n.text
    if n.city:
        a.province, a.city = d.province_name, n.city
    # A stated home city settles it: "上海市南京西路" is not Nanjing.
    elif _foreign(s, d, a):
        return a
    pos = _admin(s, 0, d, a)
    pos = _road(s, pos, d, a)
    _numbers(s, pos, d, a)
    _infer_district(a, d)
    if a.district_code and not a.city:
        a.province, a.city = d.province_name, d.city_name
    return a


def _foreign(s: str, d: AddressDictionary, a: ParsedAddress) -> bool:
    for form in d.region_trie.prefixes(s):
        region, rest = d.regions[form], s[len(form):]
        if ROAD_TAIL.match(rest):  # "延安西路", "浙江中路": a Shanghai road
            continue
        following = d.region_trie.prefixes(rest)
        if not (region.explicit or following or (len(form) > 1 and _ADMIN_NEXT.match(rest))):
            continue
        city = region.city or next(
            (d.regions[f].city for f in following if d.regions[f].province == region.province), None
        )
        province = region.province
        if not region.explicit and rest[:1] in ("区", "县"):
            province = city = None  # "朝阳区": a district named like a city, province unknown
        a.foreign, a.province, a.city = True, province, city
        a.notes.append(f"address in {province or form}{city or ''}, not {d.city_name}")
        return True
    return False


def _admin(s: str, pos: int, d: AddressDictionary, a: ParsedAddress) -> int:
    # District and street names can start at the same place ("金山" vs
    # "金山工业区", "川沙" old county vs 川沙新镇): take the longer, preferring
    # the street on a tie since it implies its district anyway.
    district = _valid_prefix(s, pos, d.district_trie, d.short_forms)
    if district in d.district_aliases and not a.city:
        district = None  # "黄埔区" is our 黄浦区 misspelt only when 上海 was written
    street = _valid_prefix(s, pos, d.street_trie, d.short_forms, is_town=True)
    if district and len(district) > len(street or ""):
        a.district_code = d.districts[district]
        a.district = d.district_name(a.district_code)
        if district in d.renames or district in d.district_aliases:
            a.notes.append(f"district {district} read as {a.district}")
        pos += len(district)
        if s.startswith("区", pos):  # "浦东区": short form plus a bare 区
            pos += 1
        street = _valid_prefix(s, pos, d.street_trie, d.short_forms, is_town=True)
    elif not street and (m := _GENERIC_DISTRICT.match(s, pos)) and not _NOT_DISTRICT.search(m.group()) \
            and not ROAD_TAIL.match(s, m.end()):
        name = m.group()
        # "经静安区": a stray character before a district we know
        known = next((name[k:] for k in range(1, len(name) - 1) if name[k:] in d.districts), None)
        if known:
            a.district_code = d.districts[known]
            a.district = d.district_name(a.district_code)
            a.notes.append(f"district {a.district} read from {name}")
        else:
            a.district = name
            a.notes.append(f"district {a.district} not in dictionary")
        pos = m.end()
        street = _valid_prefix(s, pos, d.street_trie, d.short_forms, is_town=True)
    if street:
        _set_street(a, street, d.streets[street], d)
        pos += len(street)
        if m := _STREET_SUFFIX.match(s, pos):  # short form written with its suffix: "川沙" + "镇"
            pos = m.end()
    elif (m := _GENERIC_STREET.match(s, pos)) and not ROAD_TAIL.match(s, m.end()):
        a.street = m.group()
        a.notes.append(f"street {a.street} not in dictionary")
        pos = m.end()
    if names := d.community_trie.prefixes(s, pos):
        a.community = names[0]
        entries = d.communities[names[0]]
        if len(entries) == 1:
            a.community_code = entries[0][0]
        pos += len(names[0])
    elif m := _GENERIC_COMMUNITY.match(s, pos):
        a.community = m.group()
        pos = m.end()
    return pos


def _valid_prefix(s: str, pos: int, trie: Trie, short_forms: set[str], is_town: bool = False) -> str | None:
    """Longest name at pos that is really this place. A name must not run on
    into a road ("宝山" of 宝山路); a short form not even with one more
    character ("陆家嘴" of 陆家嘴环路); a town short form not into another
    unit ("龙华" of 龙华新区, "长兴" of 长兴县)."""
    for name in trie.prefixes(s, pos):
        end = pos + len(name)
        if ROAD_TAIL.match(s, end):
            continue
        if name in short_forms and (_ONE_CHAR_ROAD.match(s, end) or (is_town and _OTHER_UNIT.match(s, end))):
            continue
        return name
    return None


def _set_street(a: ParsedAddress, name: str, entries: list[tuple[str, str]], d: AddressDictionary) -> None:
    if a.district_code:
        entries = [e for e in entries if e[1] == a.district_code] or entries
    a.street = name
    if len(entries) == 1:
        a.street_code = entries[0][0]


def _road(s: str, pos: int, d: AddressDictionary, a: ParsedAddress) -> int:
    found = _find_road(s, pos, d)
    if not found:
        return pos
    start, name, known = found
    if start > pos:
        a.area = s[pos:start]
    a.road = name
    if not known:
        a.notes.append(f"road {name} not in dictionary")
    pos = start + len(name)
    if a.is_intersection:
        m = _CONNECTOR.match(s, pos)
        nxt = _find_road(s, m.end() if m else pos, d, anchored=True)
        if nxt:
            a.second_road = nxt[1]
            pos = nxt[0] + len(nxt[1])
    return pos


def _find_road(s: str, pos: int, d: AddressDictionary, anchored: bool = False) -> tuple[int, str, bool] | None:
    """(start, name, in dictionary). The road may follow an unnamed zone, but
    never lies beyond a number: digits mean we are already past it."""
    hit = d.road_trie.search(s, pos)
    if hit and (hit[0] == pos or not anchored) and not re.search(r"\d", s[pos:hit[0]]):
        return hit[0], hit[1], True
    m = _GENERIC_ROAD.match(s, pos)
    if not m or re.search(r"\d", m.group()):
        return None
    name, start = m.group(), pos
    if not anchored and (z := _AREA.match(name)):
        name, start = name[z.end():], pos + z.end()
    return start, name, False


def _numbers(s: str, pos: int, d: AddressDictionary, a: ParsedAddress) -> None:
    runs: list[str] = []  # text left between recognised components
    gap, after_numbers = pos, False
    while pos < len(s):
        kind, m = _number_token(s, pos)
        if m:
            _assign(a, kind, m, after_numbers)
            after_numbers, end = True, m.end()
        elif not a.compound and (name := _compound(s, pos, d)):
            a.compound, end = name, pos + len(name)
        else:
            pos += 1
            continue
        if gap < pos:
            runs.append(s[gap:pos])
        pos = gap = end
    if gap < len(s):
        runs.append(s[gap:])
    if runs and a.road and not a.compound and re.fullmatch(rf"[{_HAN}A-Za-z]{{2,}}", runs[0]):
        # A name right after the road/door with no known suffix ("创邑金沙谷")
        # is in practice the building complex.
        a.compound = runs.pop(0)
        a.notes.append(f"compound {a.compound} guessed from position")
    if runs:
        a.unparsed = "；".join(runs)


def _number_token(s: str, pos: int) -> tuple[str, re.Match | None]:
    for kind, rx in _NUMBER_TOKENS:
        if m := rx.match(s, pos):
            return kind, m
    return "", None


def _assign(a: ParsedAddress, kind: str, m: re.Match, after_numbers: bool) -> None:
    value = m.group(1)
    if kind == "building" or (kind == "door" and (a.lane or a.door_number)):
        # Inside a lane (or after the door) "5号" is the house, i.e. the building.
        if not a.building:
            a.building, a.building_kind = value, m.group(2) if kind == "building" else "号"
        return
    if kind == "bare":
        # A bare number right after the road is the door ("宜山路1698");
        # later, it is the room ("1号1906", "603A").
        if not after_numbers and a.road and not a.door_number:
            a.door_number = value
            a.notes.append(f"door {value} written without 号")
        elif not a.room:
            a.room = value
        return
    field_name = "door_number" if kind == "door" else kind
    if not getattr(a, field_name):
        setattr(a, field_name, value)


def _compound(s: str, pos: int, d: AddressDictionary) -> str | None:
    if names := d.compound_trie.prefixes(s, pos):
        return names[0]
    m = _GENERIC_COMPOUND.match(s, pos)
    return m.group() if m else None


def _infer_district(a: ParsedAddress, d: AddressDictionary) -> None:
    """Fill the district from what the other components allow, if unique."""
    if a.district and not a.district_code:
        return  # a district was written that we do not hold: nothing else may stand in for it
    sources: list[tuple[str, set[str]]] = []
    if a.street in d.streets:
        sources.append((f"street {a.street}", {dc for _, dc in d.streets[a.street]}))
    if a.road in d.roads:
        sources.append((f"road {a.road}", set(d.roads[a.road])))
    if a.second_road in d.roads:
        sources.append((f"road {a.second_road}", set(d.roads[a.second_road])))
    if a.compound in d.compounds:
        sources.append((f"compound {a.compound}", set(d.compounds[a.compound])))
    if a.district_code:
        for what, codes in sources:
            if a.district_code not in codes:
                a.notes.append(f"{what} not recorded in {a.district}")
        return
    if not sources:
        return
    candidates = set.intersection(*(codes for _, codes in sources)) or set.union(*(c for _, c in sources))
    if len(candidates) == 1:
        a.district_code = candidates.pop()
        a.district = d.district_name(a.district_code)
        a.notes.append(f"district {a.district} inferred from {', '.join(w for w, _ in sources)}")
        if a.street in d.streets:
            _set_street(a, a.street, d.streets[a.street], d)
    else:
        a.district_candidates = sorted(candidates)
