"""Name -> code dictionary the address parser matches against.

All place knowledge is data: administrative rows come from the base (or a
test), province/city names and historical renames from the CSV tables in
``cim/data``. Supporting another city means loading its rows, not editing code.

Matching is longest-first through a small character trie: it scales to the
tens of thousands of road and compound names of a real city, where a regex
alternation would be tried name by name at every position.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from importlib import resources
from typing import Iterable, NamedTuple

from cim.config import settings

# Suffixes dropped to get the short form people actually write ("徐汇", "浦东").
_DISTRICT_SUFFIX = re.compile(r"(?:新区|区|县)$")
_STREET_SUFFIX = re.compile(r"(?:街道|新镇|镇|乡)$")
# A short form that itself ends like a road ("长寿路" from 长寿路街道) would shadow
# the road of the same name, so it is not registered.
_ROAD_LIKE_END = re.compile(r"[路街道巷弄]$")


class Rename(NamedTuple):
    old_name: str
    new_name: str
    new_code: str
    since_year: int


class Region(NamedTuple):
    """Another province (or a city in one): an address naming it is not ours."""

    province: str
    city: str | None
    explicit: bool  # written with its 省/市/自治区 suffix, hence unambiguous


class Trie:
    """Character trie answering "which names start at text[pos]?", longest first."""

    _END = ""

    def __init__(self, words: Iterable[str] = ()) -> None:
        self._root: dict = {}
        for word in words:
            node = self._root
            for ch in word:
                node = node.setdefault(ch, {})
            node[self._END] = word

    def prefixes(self, text: str, pos: int = 0) -> list[str]:
        """All names that text[pos:] starts with, longest first."""
        found, node = [], self._root
        for ch in text[pos:]:
            node = node.get(ch)
            if node is None:
                break
            if self._END in node:
                found.append(node[self._END])
        return found[::-1]

    def search(self, text: str, start: int = 0) -> tuple[int, str] | None:
        """First position >= start where a name begins, with the longest name there."""
        for pos in range(start, len(text)):
            names = self.prefixes(text, pos)
            if names:
                return pos, names[0]
        return None


def _read_csv(name: str) -> list[dict[str, str]]:
    with resources.files("cim").joinpath("data", name).open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _short(name: str, suffix: re.Pattern) -> str | None:
    short = suffix.sub("", name)
    # One-character short forms ("唐" from 唐镇) match far too much.
    return short if short != name and len(short) >= 2 else None


@dataclass
class AddressDictionary:
    # name (official, short and historical forms) -> district code
    districts: dict[str, str] = field(default_factory=dict)
    # name (official and short) -> [(street code, district code)]
    streets: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    # name -> [(community code, street code)]
    communities: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    # road name -> district codes it runs through
    roads: dict[str, list[str]] = field(default_factory=dict)
    # compound (小区/大厦…) name -> district codes
    compounds: dict[str, list[str]] = field(default_factory=dict)
    city_name: str = field(default_factory=lambda: settings().city_name)
    province_name: str = field(default_factory=lambda: settings().city_name)
    # district code -> official name
    district_names: dict[str, str] = field(default_factory=dict)
    # historical district name (full and short) -> rename record
    renames: dict[str, Rename] = field(default_factory=dict)
    # other spellings people use -> official district name (黄埔区 -> 黄浦区)
    district_aliases: dict[str, str] = field(default_factory=dict)
    # forms of other provinces / cities -> Region
    regions: dict[str, Region] = field(default_factory=dict)
    # forms of our own city written in front of addresses: 上海市, 上海, 沪
    city_aliases: tuple[str, ...] = ()
    # district/street keys that are derived short forms ("徐汇", "陆家嘴")
    short_forms: set[str] = field(default_factory=set)

    @classmethod
    def from_rows(
        cls,
        districts: Iterable[tuple[str, str]] = (),
        streets: Iterable[tuple[str, str, str]] = (),
        communities: Iterable[tuple[str, str, str]] = (),
        roads: Iterable[tuple[str, str]] = (),
        compounds: Iterable[tuple[str, str]] = (),
        *,
        city_name: str | None = None,
        province_name: str | None = None,
    ) -> "AddressDictionary":
        """Build from base rows: districts (code, name), streets (code, name,
        district_code), communities (code, name, street_code), roads and
        compounds (name, district_code)."""
        city_name = city_name or settings().city_name  # a new base's default city (CIM_CITY_NAME)
        d = cls(city_name=city_name, province_name=province_name or city_name)
        d._load_regions()
        for code, name in districts:
            d.district_names[code] = name
            d.districts[name] = code
            if (short := _short(name, _DISTRICT_SUFFIX)) and short not in d.districts:
                d.districts[short] = code
                d.short_forms.add(short)
        for code, name, district_code in streets:
            d.streets.setdefault(name, []).append((code, district_code))
            short = _short(name, _STREET_SUFFIX)
            # A short form is dropped when it would shadow a road ("长寿路" of
            # 长寿路街道) or another city ("中山" of 中山街道 vs 中山市).
            if short and not _ROAD_LIKE_END.search(short) and short not in d.regions:
                d.streets.setdefault(short, []).append((code, district_code))
                d.short_forms.add(short)
        for code, name, street_code in communities:
            d.communities.setdefault(name, []).append((code, street_code))
        for table, rows in ((d.roads, roads), (d.compounds, compounds)):
            for name, district_code in rows:
                codes = table.setdefault(name, [])
                if district_code not in codes:  # one row per road segment is common
                    codes.append(district_code)
        d._load_renames()
        d._load_aliases()
        return d

    def _load_renames(self) -> None:
        known = set(self.district_names)
        for row in _read_csv("admin_renames.csv"):
            rename = Rename(row["old_name"], row["new_name"], row["new_code"], int(row["since_year"]))
            # Only renames into this city's districts (all of them if none loaded yet).
            if known and rename.new_code not in known:
                continue
            self.renames[rename.old_name] = rename
            short = _short(rename.old_name, _DISTRICT_SUFFIX)
            if short and short not in self.districts:
                self.renames[short] = rename
                self.districts[short] = rename.new_code
                self.short_forms.add(short)
            self.districts.setdefault(rename.old_name, rename.new_code)

    def _load_aliases(self) -> None:
        codes = {name: code for code, name in self.district_names.items()}
        for row in _read_csv("district_aliases.csv"):
            if row["name"] in codes and row["alias"] not in self.districts:
                self.district_aliases[row["alias"]] = row["name"]
                self.districts[row["alias"]] = codes[row["name"]]

    def _load_regions(self) -> None:
        home = {self.city_name, self.province_name}
        aliases: list[str] = []
        for row in _read_csv("provinces.csv"):
            forms = [(row["name"], True), (row["short"], False), (row["abbr"], False)]
            if row["name"] in home:
                aliases += [f for f, _ in forms]
                continue
            for form, explicit in forms:
                self.regions[form] = Region(row["name"], None, explicit)
        for row in _read_csv("cities.csv"):
            if row["name"] in home:
                aliases += [row["name"], row["short"]]
                continue
            for form, explicit in ((row["name"], True), (row["short"], False)):
                # A province short form ("吉林") wins over a same-named city.
                self.regions.setdefault(form, Region(row["province"], row["name"], explicit))
        self.city_aliases = tuple(sorted(set(aliases), key=len, reverse=True))

    # --- matching ---------------------------------------------------------

    @cached_property
    def district_trie(self) -> Trie:
        return Trie(self.districts)

    @cached_property
    def street_trie(self) -> Trie:
        return Trie(self.streets)

    @cached_property
    def community_trie(self) -> Trie:
        return Trie(self.communities)

    @cached_property
    def road_trie(self) -> Trie:
        return Trie(self.roads)

    @cached_property
    def compound_trie(self) -> Trie:
        return Trie(self.compounds)

    @cached_property
    def region_trie(self) -> Trie:
        return Trie(self.regions)

    @cached_property
    def city_alias_trie(self) -> Trie:
        return Trie(self.city_aliases)

    def district_name(self, code: str | None) -> str | None:
        if code is None:
            return None
        if code in self.district_names:
            return self.district_names[code]
        # A rename target not loaded as a district row still has a name.
        return next((r.new_name for r in self.renames.values() if r.new_code == code), None)


def names_only(city_name: str | None = None) -> AddressDictionary:
    """A dictionary with no base rows: only the CSV tables (city forms,
    provinces, renames). Used when text is normalised without a base; the
    city is the deployment's default city (CIM_CITY_NAME) unless named."""
    return _names_only(city_name or settings().city_name)


@lru_cache(maxsize=None)
def _names_only(city_name: str) -> AddressDictionary:
    return AddressDictionary.from_rows(city_name=city_name)
