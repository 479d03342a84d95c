"""What every intake reads and seldom changes — the class catalogue, the department kinds and the
working calendar, the geocoder's layer versions and the grids' responsibility chains — kept by a long-running
process (the API server) instead of read again for every group of reports (5 of a group's ~17 statements; then
the layer versions and the chains, two of the ~10 round trips left, the chains ~30 % of the database's CPU of a
group and ~2 ms of its Python: docs/benchmarks.md, issue 11).

Kept for ``max_age_s`` — the API passes ``CIM_LAYER_CACHE_S``, the bound it already sets on how late
it learns of a load through the layer registry — so a catalogue, department kinds or calendar loaded
with ``cim cases classes|calendar load``, and addresses, areas or responsibility loaded with ``cim ingest``,
reach a running server's intake within that time. A class code or
name the kept catalogue does not know is looked up in the database at once (:func:`classes_of`), so
a class added meanwhile is never refused for being new.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.engine import Connection

from cim.errors import UserError
from cim.gazetteer.store import LayerVersions, layer_versions
from cim.grid import ChainMemo
from cim.kept import Kept

from cases.calendar import WorkingCalendar, load_calendar
from cases.catalogue import CaseClass, class_index, classes_for, department_kinds


@dataclass(frozen=True)
class IntakeConstants:
    classes: dict[str, CaseClass]  # code, or a name no other 小类 has → the 小类
    kinds: dict[str, re.Pattern[str]]
    calendar: WorkingCalendar
    #: the geocoder's layer versions when these were read: its gazetteer of these versions is taken without
    #: asking the base again (a load reaches the intake within the same bound as a catalogue)
    layer_versions: LayerVersions | None = None
    #: the responsibility chains of the grids met since these were read, each read once: forgotten with them
    chains: ChainMemo = field(default_factory=ChainMemo)


def read_constants(conn: Connection) -> IntakeConstants:
    return IntakeConstants(class_index(conn), department_kinds(conn), load_calendar(conn), layer_versions(conn))


def classes_of(conn: Connection, keys: Sequence[str], constants: IntakeConstants | None,
               parameter: str = "class") -> dict[str, CaseClass | UserError]:
    """:func:`cases.catalogue.classes_for`, answered from ``constants`` where they know the key; the
    rest (a class added since they were read, or a key that is an error) from the database."""
    known = constants.classes if constants is not None else {}
    out: dict[str, CaseClass | UserError] = {}
    missing = []
    for key in keys:
        found = known.get((key or "").strip())
        if found is None:
            missing.append(key)
        else:
            out[key] = found
    if missing:
        out.update(classes_for(conn, missing, parameter))
    return out


class ConstantsCache:
    """The :class:`IntakeConstants` of one database, read again once they are ``max_age_s`` old
    (:class:`cim.kept.Kept`)."""

    def __init__(self, max_age_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._kept: Kept[IntakeConstants] = Kept(max_age_s, clock)

    @property
    def max_age_s(self) -> float:
        return self._kept.max_age_s

    @property
    def reads(self) -> int:
        """How many times they were read (for tests)."""
        return self._kept.reads

    def get(self, conn: Connection) -> IntakeConstants:
        return self._kept.get(lambda: read_constants(conn))
