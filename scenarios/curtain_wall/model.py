"""The scoring model as data: weights, bands and levels, the inspection schedule of 沪府令77号 and the
push classes, read from a TOML file (``model.toml`` in this package unless another is named) and
checked before use. The code fixes which factors exist (:data:`FACTORS`) and how each value is
computed; the file fixes how much each counts. A factor or key the code does not know, a category
without a level, unsorted bands or a weight below zero are refused with the file and line.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cim.errors import UserError

from scenarios.curtain_wall.records import FINDINGS, GLASS_TYPES, SUPPORT_TYPES, USES_BELOW, WIND_EXPOSURES

PACKAGED_MODEL = Path(__file__).with_name("model.toml")


@dataclass(frozen=True)
class FactorKind:
    """What the code knows of a factor: banded numbers or levelled categories, and its own parameters."""

    rule: str  # "bands" | "levels"
    categories: tuple[str, ...] = ()
    params: dict[str, type] = field(default_factory=dict)


#: every factor the scorer can compute (see scoring.py for how each value is read)
FACTORS: dict[str, FactorKind] = {
    "building_age": FactorKind("bands"),
    "support_type": FactorKind("levels", SUPPORT_TYPES),
    "glass_type": FactorKind("levels", GLASS_TYPES),
    "sealant_age": FactorKind("bands"),
    "height": FactorKind("bands"),
    "beyond_design_life": FactorKind("bands"),
    "inspection_overdue": FactorKind("bands"),
    "inspection_findings": FactorKind("levels", FINDINGS),
    "storm_exposure": FactorKind("levels", WIND_EXPOSURES),
    "sensor_alerts": FactorKind("bands", params={"window_days": int, "quantities": list}),
    "own_breakage": FactorKind("bands"),
    "breakage_nearby": FactorKind("bands", params={"radius_m": float, "window_days": int, "case_class": str}),
    "use_below": FactorKind("levels", USES_BELOW),
}
SCHEDULE_KEYS = ("first_inspection_years", "inspection_every_years", "cable_inspection_every_years",
                 "beyond_design_life_every_years", "sealant_first_sampling_years", "sealant_sampling_every_years",
                 "appraisal_within_days", "default_design_life_years")


class ModelFileError(UserError):
    """A scoring file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Factor:
    name: str
    weight: float
    bands: tuple[tuple[float, float], ...] = ()
    levels: dict[str, float] = field(default_factory=dict)
    missing: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)

    def level(self, values: np.ndarray) -> np.ndarray:
        """The level (0–1) of each value; values that are NaN/None get 0 here (the caller knows them missing)."""
        if self.levels:
            return np.array([self.levels.get(v, 0.0) if isinstance(v, str) else 0.0 for v in values], dtype=float)
        bounds = np.array([b for b, _ in self.bands], dtype=float)
        steps = np.array([lv for _, lv in self.bands], dtype=float)
        v = np.asarray(values, dtype=float)
        idx = np.searchsorted(bounds, np.nan_to_num(v, nan=-np.inf), side="right") - 1
        return np.where((idx >= 0) & ~np.isnan(v), steps[np.clip(idx, 0, None)], 0.0)


@dataclass(frozen=True)
class Schedule:
    first_inspection_years: int = 1
    inspection_every_years: int = 5
    cable_inspection_every_years: int = 3
    beyond_design_life_every_years: int = 1
    sealant_first_sampling_years: int = 10
    sealant_sampling_every_years: int = 3
    appraisal_within_days: int = 30
    default_design_life_years: int = 25


@dataclass(frozen=True)
class Model:
    version: str
    name: str
    high: float
    medium: float
    factors: tuple[Factor, ...]
    schedule: Schedule
    push_classes: tuple[str, ...]
    source: str

    @property
    def total_weight(self) -> float:
        return sum(f.weight for f in self.factors)

    def factor(self, name: str) -> Factor | None:
        return next((f for f in self.factors if f.name == name), None)

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "name": self.name, "source": self.source,
                "thresholds": {"high": self.high, "medium": self.medium},
                "factors": [{"factor": f.name, "weight": f.weight, "bands": [list(b) for b in f.bands] or None,
                             "levels": f.levels or None, "missing": f.missing, **f.params} for f in self.factors],
                "schedule": self.schedule.__dict__, "push_classes": list(self.push_classes)}


class _Lines:
    """Where a section or key sits in the file's text, for error messages (tomllib keeps no positions)."""

    def __init__(self, text: str, source: str) -> None:
        self.lines = text.splitlines()
        self.source = source

    def _header(self, section: str) -> int | None:
        pattern = re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(map(re.escape, section.split("."))) + r"\s*\]")
        return next((i for i, line in enumerate(self.lines) if pattern.match(line)), None)

    def line_of(self, section: str, key: str | None = None) -> int | None:
        start = self._header(section)
        if start is None:
            return None
        if key is None:
            return start + 1
        pattern = re.compile(r"^\s*" + re.escape(key) + r"\s*=")
        for i in range(start + 1, len(self.lines)):
            if self.lines[i].lstrip().startswith("["):
                break
            if pattern.match(self.lines[i]):
                return i + 1
        return start + 1

    def error(self, message: str, section: str, key: str | None = None) -> ModelFileError:
        line = self.line_of(section, key)
        return ModelFileError(f"{self.source}{f' line {line}' if line else ''}: {message}")


def _number(value: Any, what: str, where: _Lines, section: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise where.error(f"{what} must be a number, not {value!r}", section, key)
    return float(value)


def _factor(name: str, table: Any, where: _Lines) -> Factor:
    section = f"factors.{name}"
    if name not in FACTORS:
        raise where.error(f"unknown factor {name!r}; the scorer knows: {', '.join(FACTORS)}", section)
    kind = FACTORS[name]
    if not isinstance(table, dict):
        raise where.error(f"factor {name} must be a table ([{section}])", section)
    allowed = {"weight", "missing", kind.rule, *kind.params}
    for key in table:
        if key not in allowed:
            raise where.error(f"factor {name}: unknown key {key!r}; allowed: {', '.join(sorted(allowed))}", section, key)
    if "weight" not in table:
        raise where.error(f"factor {name} has no weight", section)
    weight = _number(table["weight"], f"factor {name}: weight", where, section, "weight")
    if weight < 0:
        raise where.error(f"factor {name}: weight {weight} is below 0", section, "weight")
    missing = _number(table.get("missing", 0.0), f"factor {name}: missing", where, section, "missing")
    if kind.rule not in table:
        raise where.error(f"factor {name} needs {kind.rule} (it is a {'number' if kind.rule == 'bands' else 'category'})",
                          section)
    bands: tuple[tuple[float, float], ...] = ()
    levels: dict[str, float] = {}
    if kind.rule == "bands":
        raw = table["bands"]
        if not isinstance(raw, list) or not raw or not all(isinstance(b, list) and len(b) == 2 for b in raw):
            raise where.error(f"factor {name}: bands must be a list of [lower bound, level] pairs", section, "bands")
        bands = tuple((_number(b, f"factor {name}: band bound", where, section, "bands"),
                       _number(lv, f"factor {name}: band level", where, section, "bands")) for b, lv in raw)
        if any(a[0] >= b[0] for a, b in zip(bands, bands[1:])):
            raise where.error(f"factor {name}: band bounds must increase", section, "bands")
        if any(not 0.0 <= lv <= 1.0 for _, lv in bands):
            raise where.error(f"factor {name}: band levels must lie between 0 and 1", section, "bands")
    else:
        raw = table["levels"]
        if not isinstance(raw, dict):
            raise where.error(f"factor {name}: levels must be a table of category = level", section, "levels")
        for category, level in raw.items():
            if category not in kind.categories:
                raise where.error(f"factor {name}: unknown category {category!r}; categories: "
                                  f"{', '.join(kind.categories)}", section, "levels")
            levels[category] = _number(level, f"factor {name}: level of {category}", where, section, "levels")
            if not 0.0 <= levels[category] <= 1.0:
                raise where.error(f"factor {name}: level of {category} must lie between 0 and 1", section, "levels")
        absent = [c for c in kind.categories if c not in levels]
        if absent:
            raise where.error(f"factor {name}: no level for {', '.join(absent)}", section, "levels")
    params: dict[str, Any] = {}
    for key, typ in kind.params.items():
        if key not in table:
            raise where.error(f"factor {name} needs {key}", section)
        value = table[key]
        ok = isinstance(value, typ) or (typ is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok or (typ is int and isinstance(value, bool)):
            raise where.error(f"factor {name}: {key} must be {typ.__name__}, not {value!r}", section, key)
        params[key] = float(value) if typ is float else value
    return Factor(name, weight, bands, levels, missing, params)


def parse_model(text: str, source: str) -> Model:
    """A model from a TOML text; ``source`` names it in errors."""
    where = _Lines(text, source)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ModelFileError(f"{source}: not valid TOML: {exc}") from None
    for key in doc:
        if key not in ("model", "factors", "schedule", "push"):
            line = next((i + 1 for i, s in enumerate(where.lines) if re.match(rf"^\s*\[?\s*{re.escape(key)}\b", s)), None)
            raise ModelFileError(f"{source}{f' line {line}' if line else ''}: unknown section {key!r}; "
                                 "sections: model, factors, schedule, push")
    head = doc.get("model")
    if not isinstance(head, dict) or not str(head.get("version") or "").strip():
        raise ModelFileError(f"{source}: [model] needs a version")
    for key in head:
        if key not in ("version", "name", "high", "medium"):
            raise where.error(f"[model]: unknown key {key!r}; allowed: version, name, high, medium", "model", key)
    high = _number(head.get("high", 55.0), "[model] high", where, "model", "high")
    medium = _number(head.get("medium", 35.0), "[model] medium", where, "model", "medium")
    if medium > high:
        raise where.error("[model]: medium must not exceed high", "model", "medium")
    factors_doc = doc.get("factors")
    if not isinstance(factors_doc, dict) or not factors_doc:
        raise ModelFileError(f"{source}: no [factors.…] tables")
    factors = tuple(_factor(name, table, where) for name, table in factors_doc.items())
    if sum(f.weight for f in factors) <= 0:
        raise ModelFileError(f"{source}: the weights add up to 0")
    sched_doc = doc.get("schedule", {})
    for key, value in sched_doc.items():
        if key not in SCHEDULE_KEYS:
            raise where.error(f"[schedule]: unknown key {key!r}; allowed: {', '.join(SCHEDULE_KEYS)}", "schedule", key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise where.error(f"[schedule] {key} must be a whole number above 0, not {value!r}", "schedule", key)
    push_doc = doc.get("push", {})
    for key in push_doc:
        if key != "case_classes":
            raise where.error(f"[push]: unknown key {key!r}; allowed: case_classes", "push", key)
    classes = push_doc.get("case_classes", ["幕墙玻璃破损"])
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise where.error("[push] case_classes must be a list of case class names or codes", "push", "case_classes")
    return Model(str(head["version"]).strip(), str(head.get("name") or ""), high, medium, factors,
                 Schedule(**sched_doc), tuple(classes), source)


def load_model(path: Path | None = None) -> Model:
    """The packaged model, or the one in ``path``."""
    path = path or PACKAGED_MODEL
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such scoring file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: cannot be read as UTF-8 text ({exc})") from None
    return parse_model(text, str(path))
