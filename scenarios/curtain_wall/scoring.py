"""Scoring, vectorised: each factor's value for every dossier at once (numpy over the frame of
:mod:`scenarios.curtain_wall.inputs`), its level by the model's bands or levels, its contribution in
points of the 0–100 score. A value that is unknown gives the factor's ``missing`` level and lowers the
confidence by the factor's share of the weights; it is listed among the reasons, never a crash.

The reasons of a building are every factor with its value, level, contribution and (where it helps)
a detail in words, largest contribution first, unknown ones last.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.engine import Connection

from scenarios.curtain_wall.inputs import read_inputs
from scenarios.curtain_wall.model import Model
from scenarios.curtain_wall.schedule import Dues, due_dates

RISK_CLASSES = ("high", "medium", "low")
#: the dossier's columns a ranked row shows
SHOWN = ("building", "name", "grid_code", "street_code", "district_code", "owner")


@dataclass(frozen=True)
class FactorValues:
    values: np.ndarray  # number or category per row (NaN / None when unknown)
    missing: np.ndarray  # bool per row
    detail: Callable[[int], str | None] | None = None  # words for row i, built only for the rows shown


def _years_since(as_of: date, years: pd.Series) -> np.ndarray:
    return (as_of.year - years).to_numpy(dtype=float)


def _category(frame: pd.DataFrame, column: str) -> FactorValues:
    values = frame[column].to_numpy(dtype=object)
    return FactorValues(values, frame[column].isna().to_numpy())


def _year(value: float) -> str:
    return "?" if np.isnan(value) else str(int(value))


def factor_values(frame: pd.DataFrame, dues: Dues, as_of: date) -> dict[str, FactorValues]:
    """Every factor's value for every row of the inputs (the code's half of the model)."""
    completion = frame["completion_year"]
    years = completion.to_numpy(dtype=float)
    from_building = frame["completion_from_building"].fillna(False).to_numpy(dtype=bool)
    sealant_year = frame["sealant_year"].to_numpy(dtype=float)
    sealant_from = frame["sealant_year"].fillna(completion)
    life = frame["design_life_years"].to_numpy(dtype=float)
    end_of_life = completion + frame["design_life_years"]
    height_from_building = frame["height_from_building"].fillna(False).to_numpy(dtype=bool)
    inspected = ~frame["last_inspection_date"].isna().to_numpy()
    sensed = frame["sensed"].to_numpy(dtype=bool)
    current = frame["building_current"].fillna(False).to_numpy(dtype=bool)
    last_breakage = frame["last_breakage_date"].to_numpy(dtype="datetime64[D]")
    return {
        "building_age": FactorValues(
            _years_since(as_of, completion), completion.isna().to_numpy(),
            lambda i: f"completed {_year(years[i])}" + (" (the building's year built)" if from_building[i] else "")),
        "support_type": _category(frame, "support_type"),
        "glass_type": _category(frame, "glass_type"),
        "sealant_age": FactorValues(
            _years_since(as_of, sealant_from), sealant_from.isna().to_numpy(),
            lambda i: "sealant year unknown: counted from completion" if np.isnan(sealant_year[i])
            else f"sealant of {_year(sealant_year[i])}"),
        "height": FactorValues(frame["height"].to_numpy(dtype=float), frame["height"].isna().to_numpy(),
                               lambda i: "the building's height" if height_from_building[i] else None),
        "beyond_design_life": FactorValues(
            _years_since(as_of, end_of_life), end_of_life.isna().to_numpy(),
            lambda i: f"design life {_year(life[i])} years, ends {_year(years[i] + life[i])}"),
        "inspection_overdue": FactorValues(dues.days_overdue.astype(float), ~dues.schedulable, dues.worst),
        "inspection_findings": FactorValues(frame["last_inspection_findings"].to_numpy(dtype=object),
                                            frame["last_inspection_findings"].isna().to_numpy(),
                                            lambda i: None if inspected[i] else "no inspection on record"),
        "storm_exposure": _category(frame, "wind_exposure"),
        "sensor_alerts": FactorValues(frame["sensor_alerts"].to_numpy(dtype=float), np.zeros(len(frame), bool),
                                      lambda i: None if sensed[i] else "no tilt/wind sensor on the building"),
        "own_breakage": FactorValues(frame["breakage_count"].to_numpy(dtype=float),
                                     frame["breakage_count"].isna().to_numpy(),
                                     lambda i: None if np.isnat(last_breakage[i]) else f"last {last_breakage[i]}"),
        "breakage_nearby": FactorValues(frame["breakage_nearby"].to_numpy(dtype=float), ~current,
                                        lambda i: None if current[i] else "the building is not in the current base"),
        "use_below": _category(frame, "use_below"),
    }


def _plain(value: Any) -> Any:
    """A JSON-friendly value: numbers as int when whole, NaN/None as None."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (np.floating, float)):
        return int(value) if float(value).is_integer() else round(float(value), 2)
    if isinstance(value, np.integer):
        return int(value)
    return value


@dataclass
class Ranking:
    """Scores of every dossier as of a day, ranked; reasons are built for the rows asked for."""

    model: Model
    as_of: date
    frame: pd.DataFrame
    dues: Dues
    factors: dict[str, FactorValues]
    levels: np.ndarray  # rows × factors
    points: np.ndarray  # rows × factors
    score: np.ndarray
    confidence: np.ndarray
    order: np.ndarray  # row indices, highest risk first

    def risk_class(self, i: int) -> str:
        s = self.score[i]
        return "high" if s >= self.model.high else "medium" if s >= self.model.medium else "low"

    def reasons(self, i: int) -> list[dict[str, Any]]:
        total = self.model.total_weight
        out = []
        for k, factor in enumerate(self.model.factors):
            fv = self.factors[factor.name]
            missing = bool(fv.missing[i])
            detail = fv.detail(i) if fv.detail is not None else None
            if missing:
                detail = f"unknown: lowers the confidence by {100 * factor.weight / total:.1f} %"
            out.append({"factor": factor.name, "value": None if missing else _plain(fv.values[i]),
                        "level": round(float(self.levels[i, k]), 3), "contribution": round(float(self.points[i, k]), 2),
                        "missing": missing, "detail": detail})
        out.sort(key=lambda r: (r["missing"], -r["contribution"], r["factor"]))
        return out

    def __post_init__(self) -> None:
        # plain arrays of what a row shows: pandas' per-cell access costs far more than the scoring itself
        self._shown = {c: self.frame[c].to_numpy(dtype=object) for c in SHOWN}

    def row(self, i: int, rank: int, with_reasons: bool = True) -> dict[str, Any]:
        item = {"rank": rank, **{c: self._shown[c][i] for c in SHOWN},
                "score": round(float(self.score[i]), 2), "confidence": round(float(self.confidence[i]), 3),
                "risk_class": self.risk_class(i), "days_overdue": int(self.dues.days_overdue[i]),
                "model_version": self.model.version}
        if with_reasons:
            item["reasons"] = self.reasons(i)
        return item

    def classes(self) -> np.ndarray:
        return np.where(self.score >= self.model.high, "high", np.where(self.score >= self.model.medium, "medium", "low"))

    def rows(self, limit: int | None = None, offset: int = 0, risk_class: str | None = None,
             with_reasons: bool = True) -> list[dict[str, Any]]:
        ranks = np.empty(len(self.order), dtype=np.int64)
        ranks[self.order] = np.arange(1, len(self.order) + 1)
        picked = self.order if risk_class is None else self.order[self.classes()[self.order] == risk_class]
        end = None if limit is None else offset + limit
        return [self.row(int(i), int(ranks[i]), with_reasons) for i in picked[offset:end]]

    def counts(self) -> dict[str, int]:
        classes = self.classes()
        return {c: int((classes == c).sum()) for c in RISK_CLASSES}


def score_frame(frame: pd.DataFrame, model: Model, as_of: date) -> Ranking:
    """Score the inputs (no database): the model's bands/levels over the factors' values."""
    dues = due_dates(frame, model.schedule, as_of)
    values = factor_values(frame, dues, as_of)
    n, total = len(frame), model.total_weight
    levels = np.zeros((n, len(model.factors)))
    points = np.zeros((n, len(model.factors)))
    lost = np.zeros(n)
    for k, factor in enumerate(model.factors):
        fv = values[factor.name]
        level = np.where(fv.missing, factor.missing, factor.level(fv.values))
        levels[:, k] = level
        points[:, k] = 100.0 * factor.weight * level / total
        lost += np.where(fv.missing, factor.weight, 0.0)
    score = points.sum(axis=1)
    confidence = 1.0 - lost / total
    # highest score first; at equal scores the better-known building first, then by id for a stable order
    order = np.lexsort((frame["building"].to_numpy(dtype=object).astype(str), -confidence, -np.round(score, 6))) \
        if n else np.array([], dtype=int)
    return Ranking(model, as_of, frame, dues, values, levels, points, score, confidence, order)


def rank_buildings(conn: Connection, model: Model, as_of: date, buildings: list[str] | None = None) -> Ranking:
    """Score every dossier (or only ``buildings``) as of the end of ``as_of``."""
    return score_frame(read_inputs(conn, model, as_of, buildings), model, as_of)
