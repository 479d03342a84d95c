"""The sample city's synthetic curtain-wall dossiers ("一楼一档"): one per building of the sample curtain-wall
layer (``data_samples/xuhui/curtain_walls.csv``), consistent with it and with the building (height, year,
use), the rest drawn from a seeded generator — so the file is the same on every run:

    cim scenarios curtain-wall feed --out data_samples/scenarios/curtain_wall_records.csv [--seed 77]

The real dossiers are private; they come in the same shape (see ``records.FIELDS``). Shares are chosen to
look like a Shanghai district: walls from the 1980s to the 2020s, safety glass required for new walls since
2003, most inspected within five years, a few overdue, a few with a breakage, a storm (real typhoon dates)
or a fire on record, some fields left blank as real dossiers leave them. One tower is the demo's risky one:
the tallest wall completed before 2000 gets ordinary glass, a major finding and a breakage over a street.
"""
from __future__ import annotations

import csv
import io
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyogrio

from scenarios.curtain_wall.records import FIELDS

SEED = 77
#: typhoons that hit Shanghai (烟花 2021, 梅花 2022, 贝碧嘉 2024): the storms a dossier records
STORMS = (date(2021, 7, 25), date(2022, 9, 14), date(2024, 9, 16))
#: the day the sample's dossiers were written
AS_OF = date(2026, 11, 24)


def _support(rng: np.random.Generator, core: str, year: int) -> str:
    if core == "点支式":
        return "point"
    if core == "全玻":
        return "cable" if rng.random() < 0.6 else "point"
    if year >= 2008 and core in ("隐框", "半隐框") and rng.random() < 0.4:
        return "unitised"
    return "frame"


def _glass(rng: np.random.Generator, core: str, year: int) -> str:
    if "夹胶" in core:
        return "laminated"
    if year < 2003 and rng.random() < 0.5:  # before safety glass was required
        return "ordinary"
    return "tempered"


def _day(rng: np.random.Generator, start: date, end: date) -> date:
    return start + timedelta(days=int(rng.integers(0, max(1, (end - start).days))))


def _below(rng: np.random.Generator, use: str) -> str:
    choices = {"商业": ("street", "entrance", "plaza", "podium"), "办公": ("street", "entrance", "podium", "enclosed")}
    pool = choices.get(use, ("street", "podium", "enclosed"))
    return pool[int(rng.integers(len(pool)))]


def generate(samples: Path, seed: int = SEED) -> str:
    """The CSV text of the dossiers for the sample city in ``samples`` (the ``data_samples`` folder)."""
    rng = np.random.default_rng(seed)
    with open(samples / "xuhui" / "curtain_walls.csv", encoding="utf-8", newline="") as fh:
        walls = list(csv.DictReader(fh))
    buildings = pyogrio.read_dataframe(samples / "xuhui" / "buildings.gpkg", read_geometry=False,
                                       columns=["BH", "GD", "JZYT", "JCSJ"]).set_index("BH")
    old = [w for w in walls if int(w["year_installed"]) < 2000]
    risky = max(old, key=lambda w: (float(buildings.at[w["building_source_id"], "GD"] or 0), w["building_source_id"]))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FIELDS)
    for w in walls:
        b = w["building_source_id"]
        year = int(w["year_installed"])
        height = float(buildings.at[b, "GD"]) if buildings.at[b, "GD"] == buildings.at[b, "GD"] else None
        support = _support(rng, w["support_type"], year)
        glass = _glass(rng, w["glass_type"], year)
        sealant = "weatherproof" if w["support_type"] == "明框" and support == "frame" else "structural_silicone"
        sealant_year = year + int(rng.integers(12, 20)) if rng.random() < 0.15 and year < 2008 else year
        inspected = date.fromisoformat(w["last_inspection_date"])
        if rng.random() < 0.25:  # an owner who let the five-year inspection slip (never before completion)
            earlier = inspected - timedelta(days=int(rng.integers(3 * 365, 7 * 365)))
            inspected = earlier if earlier > date(year + 1, 6, 30) else inspected
        findings = {"合格": "none", "需整改": "minor", "不合格": "major"}[w["inspection_result"]]
        # a wall completed after its layer's inspection date has had no inspection yet
        never = rng.random() < 0.06 or inspected <= date(year, 12, 31)
        built = date(year, 7, 1)
        sampled = None
        if sealant == "structural_silicone" and AS_OF.year - sealant_year >= 10 and rng.random() < 0.5:
            sampled = _day(rng, date(AS_OF.year - 4, 1, 1), AS_OF)
        breakages = int(rng.poisson(0.15))
        broke = _day(rng, max(built, date(AS_OF.year - 5, 1, 1)), AS_OF) if breakages else None
        storm = STORMS[int(rng.integers(len(STORMS)))] if rng.random() < 0.12 else None
        storm = storm if storm and storm > built else None
        fire = _day(rng, max(built, date(AS_OF.year - 6, 1, 1)), AS_OF) if rng.random() < 0.015 else None
        events = [d for d in (broke, storm, fire) if d]
        appraised = max(events) + timedelta(days=int(rng.integers(7, 25))) if events and rng.random() < 0.6 else None
        exposure = "exposed" if (height or 0) >= 150 or rng.random() < 0.15 else \
            "sheltered" if rng.random() < 0.2 else "normal"
        below = _below(rng, buildings.at[b, "JZYT"])
        life = 25 if rng.random() < 0.85 else 30
        if b == risky["building_source_id"]:
            glass, findings, breakages, below, exposure = "ordinary", "major", max(breakages, 1), "street", "exposed"
            never = False
            broke = broke or date(2025, 8, 3)
        row = {
            "building_id": b, "wall_area_m2": w["facade_area"], "support_type": support, "glass_type": glass,
            "sealant_type": sealant, "sealant_year": sealant_year,
            "height_m": "" if height is None or rng.random() < 0.3 else f"{height:.1f}",
            "completion_year": "" if rng.random() < 0.08 else year, "design_life_years": "" if rng.random() < 0.1 else life,
            "owner": w["owner"], "last_inspection_date": "" if never else inspected.isoformat(),
            "last_inspection_findings": "" if never else findings,
            "last_sealant_sampling_date": sampled.isoformat() if sampled else "",
            "breakage_count": "" if rng.random() < 0.05 else breakages,
            "last_breakage_date": broke.isoformat() if broke and breakages else "",
            "last_storm_date": storm.isoformat() if storm else "", "last_fire_date": fire.isoformat() if fire else "",
            "last_appraisal_date": appraised.isoformat() if appraised else "",
            "wind_exposure": "" if rng.random() < 0.05 else exposure, "use_below": "" if rng.random() < 0.08 else below,
        }
        writer.writerow([row[f] for f in FIELDS])
    return out.getvalue()


def write_feed(samples: Path, out: Path, seed: int = SEED) -> int:
    """Write the dossiers to ``out``; returns the number of rows."""
    text = generate(samples, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return text.count("\n") - 1
