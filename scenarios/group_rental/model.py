"""The suspicion model file (weights and rules, not code): parsed and checked line by line. The code
knows how each factor is computed (:data:`FACTORS`); the file says which ones count, by how much and
above which value. An unknown factor, directive or number is refused naming the file and line."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cim.errors import UserError


@dataclass(frozen=True)
class FactorSpec:
    needs: tuple[str, ...]  # the observation attributes it is computed from
    sql: str                # over the window's averages w, e, g, r, d
    unit: str
    meaning: str


#: attribute → its column in rental_observations and its average's name in the scoring query
ATTRIBUTES = {"water_m3": "w", "electricity_kwh": "e", "gas_m3": "g", "registered_population": "r",
              "deliveries": "d"}
FACTORS: dict[str, FactorSpec] = {
    "water_per_person": FactorSpec(("water_m3", "registered_population"), "w / greatest(r, 1)", "m³",
                                   "water a month per registered resident"),
    "electricity_per_person": FactorSpec(("electricity_kwh", "registered_population"), "e / greatest(r, 1)", "kWh",
                                         "electricity a month per registered resident"),
    "gas_per_person": FactorSpec(("gas_m3", "registered_population"), "g / greatest(r, 1)", "m³",
                                 "gas a month per registered resident"),
    "deliveries_per_person": FactorSpec(("deliveries", "registered_population"), "d / greatest(r, 1)", "orders",
                                        "deliveries and takeaway orders a month per registered resident"),
    "electricity_total": FactorSpec(("electricity_kwh",), "e", "kWh", "electricity a month"),
    "deliveries_total": FactorSpec(("deliveries",), "d", "orders", "deliveries and takeaway orders a month"),
}


@dataclass(frozen=True)
class Factor:
    name: str
    weight: float
    above: float
    line: int

    @property
    def spec(self) -> FactorSpec:
        return FACTORS[self.name]


@dataclass(frozen=True)
class Model:
    version: str
    threshold: float
    min_confidence: float
    factors: tuple[Factor, ...]
    text: str
    source: str

    @property
    def total_weight(self) -> float:
        return sum(f.weight for f in self.factors)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def _number(where: str, word: str, text: str, low: float, high: float | None = None) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{where}: {word} {text!r} is not a number") from None
    if value < low or (high is not None and value > high) or value != value:
        raise UserError(f"{where}: {word} {text} is outside [{low}, {high if high is not None else '∞'}]")
    return value


def parse_model(text: str, source: str) -> Model:
    version = threshold = min_confidence = None
    factors: list[Factor] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        where = f"{source}, line {n}"
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        head = words[0]
        if head == "version" and len(words) == 2:
            version = words[1]
        elif head == "threshold" and len(words) == 2:
            threshold = _number(where, "threshold", words[1], 0.0, 1.0)
        elif head == "min_confidence" and len(words) == 2:
            min_confidence = _number(where, "min_confidence", words[1], 0.0, 1.0)
        elif head == "factor":
            if len(words) != 6 or words[2] != "weight" or words[4] != "above":
                raise UserError(f"{where}: expected 'factor NAME weight W above X', got {raw.strip()!r}")
            name = words[1]
            if name not in FACTORS:
                raise UserError(f"{where}: unknown factor {name!r}; known factors: {', '.join(FACTORS)}")
            if any(f.name == name for f in factors):
                raise UserError(f"{where}: factor {name} is given twice")
            factors.append(Factor(name, _number(where, "weight", words[3], 0.0), _number(where, "above", words[5], 0.0),
                                  n))
        else:
            raise UserError(f"{where}: unknown line {raw.strip()!r}; expected version, threshold, min_confidence "
                            "or factor")
    for name, value in (("version", version), ("threshold", threshold)):
        if value is None:
            raise UserError(f"{source}: no '{name}' line")
    if not factors or sum(f.weight for f in factors) <= 0:
        raise UserError(f"{source}: no factor with a weight above 0")
    return Model(str(version), float(threshold), 0.0 if min_confidence is None else float(min_confidence),  # type: ignore[arg-type]
                 tuple(factors), text, source)


def load_model(path: Path | None = None) -> Model:
    """The model in ``path``, or the packaged default (``scenarios/group_rental/data/model.txt``)."""
    if path is None:
        text = resources.files("scenarios.group_rental.data").joinpath("model.txt").read_text(encoding="utf-8")
        return parse_model(text, "scenarios/group_rental/data/model.txt")
    from cases.textfile import read_text_file

    return parse_model(read_text_file(path), str(path))
