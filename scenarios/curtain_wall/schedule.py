"""The inspection schedule of 沪府令77号 (上海市建筑玻璃幕墙管理办法), vectorised over the dossiers.

Three obligations per building, each with its due date as of a day:

* **inspection** — the first one year after completion (a completion year counts as its 31 December,
  so a wall is never called late too early); then every 5 years after the last one; every 3 years for
  a cable-supported wall; every year once the wall is beyond its design life (completion + design
  life, the schedule's default when the dossier has none);
* **sealant sampling** — structural-silicone sealant only: 10 years after it was applied (its year,
  else the completion year), then 3 years after the last sampling;
* **appraisal** — within 30 days after a breakage, a storm or a fire later than the last appraisal.

The numbers come from the model file's ``[schedule]``. An inspection whose dates are unknown (no
completion year and no inspection on record) cannot be scheduled: it is listed as such, not as late.
Dates are numpy ``datetime64[D]`` throughout (13,000 walls in milliseconds); the rule of a due date
is put in words only for the rows shown.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from scenarios.curtain_wall.model import Schedule

OBLIGATIONS = ("inspection", "sealant_sampling", "appraisal")
EVENTS = ("breakage", "storm", "fire")
NAT = np.datetime64("NaT", "D")


def _days(column: pd.Series) -> np.ndarray:
    return column.to_numpy(dtype="datetime64[D]")


def year_end(years: np.ndarray) -> np.ndarray:
    """31 December of each year (NaN → NaT)."""
    years = np.asarray(years, dtype=float)
    out = np.full(len(years), NAT)
    ok = ~np.isnan(years)
    out[ok] = (years[ok].astype(np.int64) - 1969).astype("datetime64[Y]").astype("datetime64[D]") - 1
    return out


def add_years(days: np.ndarray, years: np.ndarray | int) -> np.ndarray:
    """Each day plus a whole number of years (29 February → 28 February); NaT stays NaT."""
    months = days.astype("datetime64[M]")
    day_of_month = days - months.astype("datetime64[D]")
    target = months + np.asarray(years, dtype=np.int64) * 12
    out = np.minimum(target.astype("datetime64[D]") + day_of_month, (target + 1).astype("datetime64[D]") - 1)
    out[np.isnat(days)] = NAT
    return out


def _late(today: np.datetime64, due: np.ndarray) -> np.ndarray:
    late = (today - due).astype("timedelta64[D]").astype(np.int64)
    return np.where(np.isnat(due) | (late < 0), 0, late)


def _iso(day: np.datetime64) -> str:
    return "?" if np.isnat(day) else str(day)


@dataclass
class Dues:
    """Each dossier's due dates (NaT: not due, or not known), why, and days late as of ``as_of``."""

    schedule: Schedule
    as_of: date
    inspection: np.ndarray
    first_inspection: np.ndarray  # bool: the first one (after completion) is what is due
    every: np.ndarray  # years between inspections for this wall
    beyond_life: np.ndarray
    cable: np.ndarray
    completion_year: np.ndarray
    last_inspection: np.ndarray
    sealant_sampling: np.ndarray
    first_sampling: np.ndarray
    applied: np.ndarray
    last_sampling: np.ndarray
    appraisal: np.ndarray
    event: np.ndarray
    event_kind: np.ndarray  # index into EVENTS

    def __post_init__(self) -> None:
        today = np.datetime64(self.as_of, "D")
        self.late = {name: _late(today, getattr(self, name)) for name in OBLIGATIONS}
        self.days_overdue = np.maximum.reduce([self.late[n] for n in OBLIGATIONS]) if len(self.inspection) \
            else np.zeros(0, dtype=np.int64)
        self.schedulable = ~np.isnat(self.inspection)

    def due(self, i: int, name: str) -> str:
        return _iso(getattr(self, name)[i])

    def rule(self, i: int, name: str) -> str:
        """The rule behind an obligation's due date, in words."""
        s = self.schedule
        if name == "inspection":
            if self.first_inspection[i]:
                year = self.completion_year[i]
                return (f"first inspection {s.first_inspection_years} year(s) after completion "
                        f"({'?' if np.isnan(year) else int(year)})")
            why = ", beyond design life" if self.beyond_life[i] else ", cable-supported" if self.cable[i] else ""
            return f"inspection every {self.every[i]} year(s) after the last ({_iso(self.last_inspection[i])}){why}"
        if name == "sealant_sampling":
            if self.first_sampling[i]:
                return (f"structural sealant sampled {s.sealant_first_sampling_years} years after it was applied "
                        f"(end of {str(self.applied[i])[:4]})")
            return (f"structural sealant sampled every {s.sealant_sampling_every_years} years after the last "
                    f"({_iso(self.last_sampling[i])})")
        return (f"appraisal within {s.appraisal_within_days} days after the {EVENTS[self.event_kind[i]]} of "
                f"{_iso(self.event[i])}")

    def worst(self, i: int) -> str | None:
        """The most overdue obligation of row ``i`` in words, or None when nothing is late."""
        if self.days_overdue[i] <= 0:
            return None
        name = max(OBLIGATIONS, key=lambda n: self.late[n][i])
        return f"{name} due {self.due(i, name)}: {self.rule(i, name)}"


def due_dates(frame: pd.DataFrame, schedule: Schedule, as_of: date) -> Dues:
    """The three obligations of every dossier row as of ``as_of``."""
    today = np.datetime64(as_of, "D")
    completion_year = frame["completion_year"].to_numpy(dtype=float)
    completion = year_end(completion_year)
    life = frame["design_life_years"].fillna(schedule.default_design_life_years).to_numpy(dtype=np.int64)
    end_of_life = add_years(completion, life)
    beyond = ~np.isnat(end_of_life) & (end_of_life <= today)
    cable = frame["support_type"].eq("cable").to_numpy()
    every = np.where(beyond, schedule.beyond_design_life_every_years,
                     np.where(cable, schedule.cable_inspection_every_years, schedule.inspection_every_years))
    last = _days(frame["last_inspection_date"])
    first = np.isnat(last) | (~np.isnat(completion) & (last <= completion))
    inspection = np.where(first, add_years(completion, schedule.first_inspection_years), add_years(last, every))

    structural = frame["sealant_type"].eq("structural_silicone").to_numpy()
    applied = year_end(frame["sealant_year"].to_numpy(dtype=float))
    applied = np.where(np.isnat(applied), completion, applied)
    sampled = _days(frame["last_sealant_sampling_date"])
    never = np.isnat(sampled) | (~np.isnat(applied) & (sampled <= applied))
    sealant = np.where(never, add_years(applied, schedule.sealant_first_sampling_years),
                       add_years(sampled, schedule.sealant_sampling_every_years))
    sealant[~structural] = NAT

    events = np.stack([_days(frame[f"last_{e}_date"]) for e in EVENTS], axis=1) if len(frame) \
        else np.zeros((0, 3), dtype="datetime64[D]")
    known = np.where(np.isnat(events), np.datetime64("1900-01-01", "D"), events)
    kind = known.argmax(axis=1) if len(frame) else np.zeros(0, dtype=np.int64)
    event = known[np.arange(len(frame)), kind] if len(frame) else np.zeros(0, dtype="datetime64[D]")
    event = np.where(event == np.datetime64("1900-01-01", "D"), NAT, event)
    appraised = _days(frame["last_appraisal_date"])
    open_event = ~np.isnat(event) & (np.isnat(appraised) | (appraised < event))
    appraisal = np.where(open_event, event + np.timedelta64(schedule.appraisal_within_days, "D"), NAT)
    return Dues(schedule, as_of, inspection, first, every, beyond, cable, completion_year, last, sealant, never,
                applied, sampled, appraisal, event, kind)


def overdue_list(frame: pd.DataFrame, dues: Dues, as_of: date) -> dict[str, Any]:
    """The late obligations, most overdue first, and the dossiers whose inspection cannot be scheduled."""
    shown = {c: frame[c].to_numpy(dtype=object) for c in ("building", "name", "grid_code", "street_code", "owner")}
    late = [(int(-dues.late[name][i]), shown["building"][i], name, int(i))
            for name in OBLIGATIONS for i in np.flatnonzero(dues.late[name] > 0)]
    late.sort()
    items = [{"building": building, "name": shown["name"][i], "grid_code": shown["grid_code"][i],
              "street_code": shown["street_code"][i], "owner": shown["owner"][i], "obligation": name,
              "due": dues.due(i, name), "days_overdue": -minus, "rule": dues.rule(i, name)}
             for minus, building, name, i in late]
    unscheduled = sorted(frame.loc[~dues.schedulable, "building"].tolist())
    return {"as_of": as_of.isoformat(), "count": len(items), "overdue": items, "unschedulable": unscheduled,
            "unschedulable_reason": "no completion year (dossier or building) and no inspection on record"}
