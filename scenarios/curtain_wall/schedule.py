"""The inspection schedule of 沪府令77号 (上海市建筑玻璃幕墙管理办法), vectorised over the dossiers.

Three obligations per building, each with its due date as of a day:

* **inspection** — the first one year after completion (a completion year counts as its 31 December,
  so a wall is never called late too early); then every 5 years after the last one; every 3 years for
  a cable-supported wall; every year once the wall is beyond its design life (completion + design
  life, the schedule's default when the dossier has none);
* **sealant sampling** — structural-silicone sealant only: 10 years after it was applied (its year,
  else the completion year), then 3 years after the last sampling;
* **appraisal** — within 30 days after a breakage, a storm or a fire later than the last appraisal.

The numbers come from the model file's ``[schedule]``. An obligation whose dates are unknown (no
completion year and no inspection on record) cannot be scheduled: it is listed as such, not as late.
"""
from __future__ import annotations

from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from scenarios.curtain_wall.model import Schedule

OBLIGATIONS = ("inspection", "sealant_sampling", "appraisal")


def _year_end(years: pd.Series) -> pd.Series:
    out = pd.Series(pd.NaT, index=years.index, dtype="datetime64[ns]")
    ok = years.notna()
    out[ok] = pd.to_datetime(years[ok].astype(int).astype(str) + "-12-31")
    return out


def _plus_years(when: pd.Series, years: pd.Series | int) -> pd.Series:
    """``when`` + a whole number of years per row (29 February → 28 February)."""
    years = pd.Series(years, index=when.index) if np.isscalar(years) else years
    out = pd.Series(pd.NaT, index=when.index, dtype="datetime64[ns]")
    for n in pd.unique(years.dropna()):
        rows = (years == n) & when.notna()
        out[rows] = when[rows] + pd.DateOffset(years=int(n))
    return out


def due_dates(frame: pd.DataFrame, schedule: Schedule, as_of: date) -> pd.DataFrame:
    """Per dossier row: each obligation's due date (NaT: not due or cannot be scheduled), its rule in words,
    days overdue as of ``as_of`` (0 when not late) and whether the inspection can be scheduled at all."""
    today = pd.Timestamp(as_of)
    completion = _year_end(frame["completion_year"])
    life = frame["design_life_years"].fillna(schedule.default_design_life_years)
    end_of_life = _plus_years(completion, life)
    beyond = end_of_life.notna() & (end_of_life <= today)
    cable = frame["support_type"].eq("cable")
    every = pd.Series(np.where(beyond, schedule.beyond_design_life_every_years,
                               np.where(cable, schedule.cable_inspection_every_years, schedule.inspection_every_years)),
                      index=frame.index)
    last = frame["last_inspection_date"]
    first_due = _plus_years(completion, schedule.first_inspection_years)
    first = last.isna() | (completion.notna() & (last <= completion))
    inspection = first_due.where(first, _plus_years(last, every))
    why_first = "first inspection " + str(schedule.first_inspection_years) + " year(s) after completion ("
    rule_inspection = np.where(
        first, why_first + frame["completion_year"].map(lambda y: "?" if pd.isna(y) else str(int(y))) + ")",
        "inspection every " + every.astype(str) + " year(s) after the last (" +
        last.dt.strftime("%Y-%m-%d").fillna("?") + ")" +
        np.where(beyond, ", beyond design life", np.where(cable, ", cable-supported", "")))

    structural = frame["sealant_type"].eq("structural_silicone")
    applied = _year_end(frame["sealant_year"]).fillna(completion)
    sampled = frame["last_sealant_sampling_date"]
    never = sampled.isna() | (applied.notna() & (sampled <= applied))
    sealant = _plus_years(applied, schedule.sealant_first_sampling_years).where(
        never, _plus_years(sampled, schedule.sealant_sampling_every_years)).where(structural)
    rule_sealant = np.where(never, f"structural sealant sampled {schedule.sealant_first_sampling_years} years after "
                                   "it was applied", f"structural sealant sampled every "
                                   f"{schedule.sealant_sampling_every_years} years")

    events = frame[["last_breakage_date", "last_storm_date", "last_fire_date"]]
    event = events.max(axis=1)
    # which of the three was the latest (an unknown date counts as long ago)
    latest = events.fillna(pd.Timestamp("1900-01-01")).to_numpy().argmax(axis=1) if len(frame) else []
    kind = pd.Series(np.array(["breakage", "storm", "fire"])[latest], index=frame.index, dtype=object)
    unappraised = event.notna() & (frame["last_appraisal_date"].isna() | (frame["last_appraisal_date"] < event))
    appraisal = (event + pd.Timedelta(days=schedule.appraisal_within_days)).where(unappraised)
    rule_appraisal = ("appraisal within " + str(schedule.appraisal_within_days) + " days after the " +
                      kind + " of " +
                      event.dt.strftime("%Y-%m-%d").fillna(""))

    out = pd.DataFrame({"building": frame["building"], "inspection_due": inspection, "inspection_rule": rule_inspection,
                        "sealant_sampling_due": sealant, "sealant_sampling_rule": rule_sealant,
                        "appraisal_due": appraisal, "appraisal_rule": rule_appraisal,
                        "schedulable": inspection.notna()}, index=frame.index)
    for name in OBLIGATIONS:
        late = (today - out[f"{name}_due"]).dt.days
        out[f"{name}_days_overdue"] = late.where(late > 0, 0).fillna(0).astype(int)
    out["days_overdue"] = out[[f"{n}_days_overdue" for n in OBLIGATIONS]].max(axis=1)
    return out


def overdue_list(frame: pd.DataFrame, dues: pd.DataFrame, as_of: date) -> dict[str, Any]:
    """The late obligations, most overdue first, and the dossiers whose inspection cannot be scheduled."""
    items = []
    for name in OBLIGATIONS:
        late = dues[dues[f"{name}_days_overdue"] > 0]
        for i, row in late.iterrows():
            items.append({"building": row["building"], "name": frame.at[i, "name"], "grid_code": frame.at[i, "grid_code"],
                          "street_code": frame.at[i, "street_code"], "owner": frame.at[i, "owner"],
                          "obligation": name, "due": row[f"{name}_due"].date().isoformat(),
                          "days_overdue": int(row[f"{name}_days_overdue"]), "rule": str(row[f"{name}_rule"])})
    items.sort(key=lambda r: (-r["days_overdue"], r["building"], r["obligation"]))
    unscheduled = sorted(dues.loc[~dues["schedulable"], "building"].tolist())
    return {"as_of": as_of.isoformat(), "count": len(items), "overdue": items, "unschedulable": unscheduled,
            "unschedulable_reason": "no completion year (dossier or building) and no inspection on record"}
