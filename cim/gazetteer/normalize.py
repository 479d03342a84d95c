"""Text clean-up of a free-text address before parsing.

Each step fixes one way hotline text differs from the canonical form and
records what it changed in ``notes``, so an operator can see why a parsed
address no longer looks like what the caller said.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from dataclasses import dataclass, field
from functools import lru_cache

import opencc

from cim.gazetteer.dictionary import AddressDictionary, names_only

# What follows a place name when it is really the start of a road name:
# "南京" + "西路", "浦东" + "大道", "中山" + "南二路". Used to refuse such prefixes
# as a city, a province or a district short form.
ROAD_TAIL = re.compile(r"[东南西北中]?[一二三四五六七八九十\d]*(?:大道|公路|大街|马路|路|街(?!道)|巷|弄)")

# Markers after which a number is an address number, not part of a name.
_UNIT_MARKERS = "号楼|支弄|单元|号|弄|室|楼|层|栋|幢|座"
_CN_NUMBER = re.compile(rf"(第)?([零〇一二两三四五六七八九十百千]+|\d+)(?={_UNIT_MARKERS})")
_CN_DIGIT = {c: str(i) for i, c in enumerate("零一二三四五六七八九")} | {"〇": "0", "两": "2"}

# "58弄11-802": inside a lane, "house-room" is shorthand for 11号802室.
# "150-1号" (door 150-1) and "1105-1106室" (a room range) are left alone.
_LANE_HYPHEN = re.compile(r"(\d+弄)(\d+)-(\d+)室?(?![\d\-号A-Za-z])")

_OPEN, _CLOSE = "([{【〔「", ")]}】〕」"
_BRACKETED = re.compile(rf"[{re.escape(_OPEN)}]([^{re.escape(_OPEN + _CLOSE)}]*)[{re.escape(_CLOSE)}]")
_UNCLOSED = re.compile(rf"[{re.escape(_OPEN)}](.*)$")
_SECOND_ADDRESS = re.compile(r";|/(?=[^\x00-\x7f])")
# "总部:", "上海地址:", "地 址:" in front of the address.
_LABEL = re.compile(r"\s*([^\d:]{1,8}?)\s*:")

_POSTCODE = re.compile(r"(?<=[^\d\-])(?:邮编|邮政编码)?\d{6}$")

# Proximity words: where the caller is relative to the address, not part of it.
# Longest alternatives first so "斜对面" is not read as "对面".
_PROXIMITY = re.compile(r"斜对面|交叉口|交汇处|旁边|对面|附近|路口|门口|[东西南北]侧|旁")
# "A路与B路", "A路B路": two road names before 路口 make it a crossing.
_CROSSING = re.compile(r"(?:路|街|大道)[与和、及].|(?:路|街|大道).+(?:路|街|大道)$")


@dataclass
class Normalized:
    text: str
    remark: str | None = None
    notes: list[str] = field(default_factory=list)
    city: str | None = None  # our city when it was written ("上海", "沪") and stripped
    is_intersection: bool = False


@lru_cache(maxsize=1)
def _t2s() -> opencc.OpenCC:
    return opencc.OpenCC("t2s")


@lru_cache(maxsize=1)
def _traditional_chars() -> frozenset[str] | None:
    """Characters that t2s would change, alone or inside one of its phrases. Text with none of
    them is already simplified, and skipping the (pure Python, slow) converter for it is most of
    the speed of a batch. None when opencc's tables cannot be read: then always convert."""
    folder = Path(opencc.__file__).with_name("dictionary")
    found: set[str] = set()
    try:
        for name in ("TSCharacters.txt", "TSPhrases.txt"):
            for line in (folder / name).read_text(encoding="utf-8").splitlines():
                key, _, value = line.partition("\t")
                first = value.split(" ")[0]
                if len(key) == len(first):
                    found.update(k for k, v in zip(key, first) if k != v)
                elif key != first:
                    found.update(key)
    except OSError:
        return None
    return frozenset(found)


def normalize(text: str, dictionary: AddressDictionary | None = None) -> Normalized:
    """Clean ``text``; ``dictionary`` supplies the city forms, district names and
    renames (default: the CSV tables only, for Shanghai)."""
    d = dictionary or names_only()
    out = Normalized(text="")
    s = _width_and_script(text or "", out.notes)
    s, asides = _cut_asides(s)
    s = _clean_punctuation(s)
    s, near, out.is_intersection = _cut_proximity(s)
    s, postcode = _cut_postcode(s)
    s = _numerals(s, out.notes)
    s = _lane_hyphen(s, out.notes)
    s, out.city = _strip_city(s, d, out.notes)
    s = _rename_district(s, d, out.notes)
    remarks = [r for r in (*asides, near, postcode) if r]
    out.text, out.remark = s, "；".join(remarks) or None
    return out


def _width_and_script(s: str, notes: list[str]) -> str:
    t = unicodedata.normalize("NFKC", s)
    if t != s:
        notes.append("full-width characters made half-width")
    changing = _traditional_chars()
    u = t if changing is not None and changing.isdisjoint(t) else _t2s().convert(t)
    if u != t:
        notes.append("traditional characters made simplified")
    return u


def _cut_asides(s: str) -> tuple[str, list[str]]:
    """Bracketed text, a leading "地址:"-style label and anything after ';' or
    after a '/' that precedes text (a second address) are not the address."""
    s, *tail = _SECOND_ADDRESS.split(s, maxsplit=1)
    asides: list[str] = []
    while m := _BRACKETED.search(s):
        asides.append(m.group(1))
        s = s[: m.start()] + s[m.end():]
    if m := _UNCLOSED.search(s):
        if m.start() == 0:  # a stray bracket in front of the address, not an aside
            s = s[1:]
        else:
            asides.append(m.group(1))
            s = s[: m.start()]
    if m := _LABEL.match(s):
        asides.insert(0, m.group(1))
        s = s[m.end():]
    asides += tail
    return s, [a for a in map(_clean_punctuation, asides) if a]


_HASH_DOOR = re.compile(r"(?<=\d)#")  # "3258#" is written for 3258号
# A list of floors/rooms/doors ("17、18楼", "804,806室", "116号、128号"): keep the first.
_NUMBER_LIST = re.compile(r"(\d+)(?:[、,.]\d+)+(?=[楼层室号])")
_DOOR_LIST = re.compile(r"(\d+号)(?:[、,]\d+号)+")
_DASHES = re.compile(r"(?<=[\dA-Za-z])\s*[~—–_]\s*(?=[\dA-Za-z])")
# Keep '-' only between digits/letters (door 150-1, room 2701-2702).
_LONE_HYPHEN = re.compile(r"(?<![\dA-Za-z])-|-(?![\dA-Za-z])")
_PUNCTUATION = re.compile(r"[^\w\-]|_")


def _clean_punctuation(s: str) -> str:
    s = _HASH_DOOR.sub("号", s)
    s = _NUMBER_LIST.sub(r"\1", s)
    s = _DOOR_LIST.sub(r"\1", s)
    s = _DASHES.sub("-", s)
    s = _LONE_HYPHEN.sub("", s)
    return _PUNCTUATION.sub("", s)


def _cut_postcode(s: str) -> tuple[str, str | None]:
    # A six-digit number closing the text after a name is a postcode, not a room.
    m = _POSTCODE.search(s)
    return (s[: m.start()], m.group()) if m else (s, None)


def _cut_proximity(s: str) -> tuple[str, str | None, bool]:
    # Words opening the text ("附近 汾阳路150号") go to the remark; the address follows them.
    lead = ""
    while m := _PROXIMITY.match(s):
        lead, s = lead + m.group(), s[m.end():]
    crossing = any(w in lead for w in ("交叉口", "交汇处"))
    m = _PROXIMITY.search(s)
    if not m or m.start() == 0:
        return s, lead or None, crossing
    word, before = m.group(), s[: m.start()]
    if word == "路口":
        before += "路"  # the 路 of "汾阳路口" belongs to the road name
    crossing = crossing or word in ("交叉口", "交汇处") or (word == "路口" and bool(_CROSSING.search(before)))
    return before, lead + s[m.start():], crossing


def _numerals(s: str, notes: list[str]) -> str:
    def convert(m: re.Match) -> str:
        run = m.group(2)
        if run.isdigit():  # only the 第 of "第5层" goes
            return run
        if any(c in "十百千" for c in run):
            import cn2an  # here, not at the top: its import costs 0.3 s of CPU and few addresses need it

            try:
                value = str(cn2an.cn2an(run, "normal"))
            except Exception:  # cn2an raises ValueError, KeyError, … on malformed runs ("七百七十七七百")
                notes.append(f"could not read numeral {run}")
                return m.group()
        else:
            # Digit-by-digit forms (一〇一 -> 101) are read digit by digit; cn2an's
            # "normal" mode also accepts them but its strict mode refuses 〇.
            value = "".join(_CN_DIGIT[c] for c in run)
        notes.append(f"numeral {m.group()} -> {value}")
        return value

    return _CN_NUMBER.sub(convert, s)


def _lane_hyphen(s: str, notes: list[str]) -> str:
    t = _LANE_HYPHEN.sub(r"\1\2号\3室", s)
    if t != s:
        notes.append("lane shorthand house-room expanded to 号/室")
    return t


def _strip_city(s: str, d: AddressDictionary, notes: list[str]) -> tuple[str, str | None]:
    if s.startswith("中国"):
        s = s[2:]
    city = None
    while alias := _city_prefix(s, d):  # loop: "上海市上海市青浦区" happens
        notes.append(f"city {alias} stripped ({d.city_name})")
        s, city = s[len(alias):], d.city_name
    return s, city


def _city_prefix(s: str, d: AddressDictionary) -> str | None:
    for alias in d.city_alias_trie.prefixes(s):
        rest = s[len(alias):]
        if ROAD_TAIL.match(rest):  # "上海路", "沪松公路"
            continue
        # A one-character form (沪) opens many road names (沪太路, 沪闵路):
        # only take it when a district follows.
        if len(alias) == 1 and not (d.district_trie.prefixes(rest) or re.match(r"[^\d路街]{1,3}[区县]", rest)):
            continue
        return alias
    return None


def _rename_district(s: str, d: AddressDictionary, notes: list[str]) -> str:
    # Only at the district slot (text start): elsewhere an old name may belong to
    # another city (保定 had a 南市区 too).
    for old, r in d.renames.items():
        if old == r.old_name and s.startswith(old):
            notes.append(f"old district {old} -> {r.new_name} ({r.since_year})")
            return r.new_name + s[len(old):]
    return s
