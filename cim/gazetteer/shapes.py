"""``parse_address`` for a load's millions of addresses, with the same results, at a fraction of the cost.

A delivery's addresses mostly share a few thousand *heads* — "上海市黄浦区中山路" — followed by numbers in one of
a few shapes: ``[N弄]N号[N室]`` (2 M rows of the synthetic Shanghai: 2,004 heads and shapes). The full parser
(normalise, then district, street, road and numbers, left to right) spends ~40 µs on each; here it runs once on
a *template* of each head and shape, with stand-in numbers, and every further address of that head and shape is
the template's result with its own numbers put back (a few µs).

Why that is the full parser's answer: the parser reads ASCII digits only as "a digit run here" — every pattern
takes ``\\d+`` or ``\\d*``, never a particular value or count, except a 6-digit postcode at the very end (these
shapes end in 号 or 室) — and copies the runs it keeps into components, notes and the normalised text as they
are. Two things could still tell one number from another, and both are excluded: a dictionary name holding a
digit (a road "华夏西1路" could match across the head into the numbers: where the text before a number — raw,
or normalised as the parser matches it — ends the way such a name begins, the address is always parsed in full), and anything this argument misses, which a second template with
other stand-ins (other lengths too) would expose: a head and shape is only used when the two templates' results
map onto each other by the stand-ins alone. Anything else — another shape, a head seen once — goes to the full
parser (tests/test_address_shapes.py compares both paths on real and generated addresses).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields

from cim.gazetteer.dictionary import AddressDictionary
from cim.gazetteer.parse import ParsedAddress, parse_address

# the head holds no digit of any script (\D); the numbers are ASCII, each in its own group
_SHAPE = re.compile(r"(\D+)(?:([0-9]+)弄)?([0-9]+)号(?:([0-9]+)室)?")
_MARKERS = ("弄", "号", "室")
# stand-ins for the (up to) three numbers: distinct, none inside another; the check's set differs in length too
_STAND_INS = ("90001", "90002", "90003")
_CHECK = ("7", "45", "6130")
_STAND_IN = re.compile("|".join(_STAND_INS))
_TEXT_FIELDS = tuple(f.name for f in fields(ParsedAddress) if f.name not in (
    "raw", "notes", "district_candidates", "foreign", "is_intersection"))


@dataclass
class _Template:
    parsed: ParsedAddress  # the result for the stand-ins
    # its text fields that hold a stand-in, each as a str.format pattern of the numbers ({0} the first…)
    formats: dict[str, str]
    notes: bool  # whether a note or a district candidate does


class ShapeParser:
    """``parse(text)`` is ``parse_address(text, dictionary)``; ``shapes`` bounds the heads kept in memory."""

    def __init__(self, dictionary: AddressDictionary, shapes: int = 100_000) -> None:
        self.dictionary = dictionary
        self.limit = shapes
        self._templates: dict[tuple[str, bool, bool], _Template | None] = {}
        self._seen: set[tuple[str, bool, bool]] = set()
        self._digit_prefixes = _digit_prefixes(dictionary)
        self.fast = self.full = 0  # how many addresses went each way (benchmarks/address_parse.py)

    def parse(self, text: str) -> ParsedAddress:
        m = _SHAPE.fullmatch(text)
        if m is None:
            self.full += 1
            return parse_address(text, self.dictionary)
        head, lane, door, room = m.groups()
        key = (head, lane is not None, room is not None)
        template = self._templates.get(key)
        if template is None:
            if key in self._templates or key not in self._seen:  # refused, or seen once: a template may not pay
                self._remember(key)
                self.full += 1
                return parse_address(text, self.dictionary)
            template = self._template(key)
            if template is None:
                self.full += 1
                return parse_address(text, self.dictionary)
        self.fast += 1
        return _filled(template, text, [n for n in (lane, door, room) if n is not None])

    def _remember(self, key: tuple[str, bool, bool]) -> None:
        if len(self._seen) >= self.limit:
            self._seen.clear()
        self._seen.add(key)

    def _template(self, key: tuple[str, bool, bool]) -> _Template | None:
        if len(self._templates) >= self.limit:
            self._templates.clear()
        head, has_lane, has_room = key
        stretches = [head, *(["弄"] if has_lane else []), *(["号"] if has_room else [])]
        template = None
        if not any(s.endswith(p) for s in stretches for p in self._digit_prefixes):
            parsed = parse_address(_text(head, has_lane, has_room, _STAND_INS), self.dictionary)
            if not self._runs_into_name(parsed.normalized):
                formats = {n: _format(getattr(parsed, n)) for n in _TEXT_FIELDS if _holds_stand_in(getattr(parsed, n))}
                notes = any(_STAND_IN.search(t) for t in (*parsed.notes, *parsed.district_candidates))
                candidate = _Template(parsed, formats, notes)
                check_text = _text(head, has_lane, has_room, _CHECK)
                if parse_address(check_text, self.dictionary) == _filled(candidate, check_text, list(_CHECK)):
                    template = candidate
        self._templates[key] = template
        return template


    def _runs_into_name(self, normalized: str) -> bool:
        """Whether a name with a digit could match across the text before a number of the normalised text (the
        parser's dictionaries are matched against it, after e.g. the 第 of "第5号" or a bracket went)."""
        return any(normalized[:m.start()].endswith(p) for m in _STAND_IN.finditer(normalized)
                   for p in self._digit_prefixes)


def _text(head: str, has_lane: bool, has_room: bool, numbers: tuple[str, ...]) -> str:
    lane, door, room = numbers
    if not has_lane:
        door, room = lane, door
    return f"{head}{lane + '弄' if has_lane else ''}{door}号{room + '室' if has_room else ''}"


def _holds_stand_in(value: object) -> bool:
    return isinstance(value, str) and _STAND_IN.search(value) is not None


def _format(value: str) -> str:
    """``value`` as a str.format pattern: braces doubled, the i-th stand-in written {i}."""
    escaped = value.replace("{", "{{").replace("}", "}}")
    return _STAND_IN.sub(lambda m: "{%d}" % _STAND_INS.index(m.group()), escaped)


def _filled(template: _Template, text: str, numbers: list[str]) -> ParsedAddress:
    """The template's result with the stand-ins replaced by ``numbers`` (in one pass: a number is never re-read)."""
    parsed = ParsedAddress.__new__(ParsedAddress)
    parsed.__dict__.update(template.parsed.__dict__)  # a shallow copy, as copy.copy makes it but faster
    parsed.raw = text
    for name, pattern in template.formats.items():
        setattr(parsed, name, pattern.format(*numbers))
    if template.notes:
        def put(m: re.Match) -> str:
            return numbers[_STAND_INS.index(m.group())]

        parsed.notes = [_STAND_IN.sub(put, t) for t in parsed.notes]
        parsed.district_candidates = [_STAND_IN.sub(put, t) for t in parsed.district_candidates]
    else:
        parsed.notes = list(parsed.notes)
        parsed.district_candidates = list(parsed.district_candidates)
    return parsed


def _digit_prefixes(d: AddressDictionary) -> frozenset[str]:
    """For every name the parser matches that holds a digit, the text before its first digit: a head (or a
    弄/号 stretch) ending so could run into the numbers as that name, and is always parsed in full."""
    names = [*d.districts, *d.streets, *d.communities, *d.roads, *d.compounds, *d.regions, *d.city_aliases,
             *d.renames, *(r.new_name for r in d.renames.values()), *d.district_aliases,
             *d.district_aliases.values()]
    out = set()
    for name in names:
        m = re.search(r"\d", name)
        if m:
            out.add(name[:m.start()])
    return frozenset(out)
