"""Per-feature attributes of a 3D tile: the ``EXT_structural_metadata`` schema and property tables.

Each tile's glb carries the layer's whole schema (one class per layer) and one property table
whose row *i* belongs to the feature whose ``_FEATURE_ID_0`` is *i*; so a client that picks a
triangle (or an instance) reads its attributes without asking the server.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import numpy as np

#: what a missing number is written as (3D Tiles metadata has no null, only a declared noData)
NO_DATA_FLOAT = -9999.0
NO_DATA_INT = -1


@dataclass(frozen=True)
class Property:
    name: str
    type: str  # STRING | FLOAT64 | INT32 | BOOLEAN
    description: str

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"description": self.description}
        if self.type in ("STRING", "BOOLEAN"):
            out["type"] = self.type
        else:
            out["type"] = "SCALAR"
            out["componentType"] = self.type
        if self.type == "STRING":
            out["noData"] = ""
        elif self.type == "FLOAT64":
            out["noData"] = NO_DATA_FLOAT
        elif self.type == "INT32":
            out["noData"] = NO_DATA_INT
        else:
            out["required"] = True  # booleans have no noData: False stands for "no"
        return out


@dataclass(frozen=True)
class FeatureClass:
    schema_id: str  # e.g. cim_buildings
    name: str  # class id, e.g. building
    title: str
    properties: tuple[Property, ...]

    def schema(self) -> dict[str, Any]:
        return {
            "id": self.schema_id,
            "classes": {self.name: {
                "name": self.title,
                "properties": {p.name: p.schema() for p in self.properties},
            }},
        }


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def encode_column(prop: Property, values: list[Any]) -> list[tuple[str, bytes]]:
    """The binary arrays of one property (``values`` and, for strings, ``stringOffsets``); none for a
    column of empty strings, which the property table then omits: a property that is not required may
    be left out, and reads as its ``noData`` ("") for every feature. Written out, its values would be
    0 bytes, but a glTF buffer view may not be empty, and a padded one contradicts the offsets."""
    if prop.type == "STRING":
        encoded = [_text(v).encode("utf-8") for v in values]
        if not any(encoded):
            return []
        offsets = np.zeros(len(encoded) + 1, np.uint32)
        offsets[1:] = np.cumsum([len(b) for b in encoded])
        return [("values", b"".join(encoded)), ("stringOffsets", offsets.tobytes())]
    if prop.type == "FLOAT64":
        arr = np.array([NO_DATA_FLOAT if v is None else float(v) for v in values], np.float64)
        return [("values", arr.tobytes())]
    if prop.type == "INT32":
        arr = np.array([NO_DATA_INT if v is None else int(v) for v in values], np.int32)
        return [("values", arr.tobytes())]
    if prop.type == "BOOLEAN":
        bits = np.array([bool(v) for v in values], np.uint8)
        return [("values", np.packbits(bits, bitorder="little").tobytes() if len(bits) else b"")]
    raise ValueError(f"unknown metadata type {prop.type}")


def decode_table(gltf_json: dict[str, Any], blob: bytes) -> list[dict[str, Any]]:
    """Read the first property table back into one dict per feature (for checks and tools)."""
    ext = gltf_json["extensions"]["EXT_structural_metadata"]
    table = ext["propertyTables"][0]
    cls = ext["schema"]["classes"][table["class"]]["properties"]
    views = gltf_json["bufferViews"]

    def view(i: int) -> bytes:
        v = views[i]
        start = v.get("byteOffset", 0)
        return blob[start:start + v["byteLength"]]

    count = table["count"]
    # a property the table omits has its noData value for every feature
    rows: list[dict[str, Any]] = [{name: kind["noData"] for name, kind in cls.items()
                                   if name not in table["properties"] and "noData" in kind} for _ in range(count)]
    for name, spec in table["properties"].items():
        kind = cls[name]
        values = view(spec["values"])
        if kind["type"] == "STRING":
            offs = np.frombuffer(view(spec["stringOffsets"]), np.uint32)
            col: list[Any] = [values[offs[i]:offs[i + 1]].decode("utf-8") for i in range(count)]
        elif kind["type"] == "BOOLEAN":
            col = [bool(b) for b in np.unpackbits(np.frombuffer(values, np.uint8), bitorder="little")[:count]]
        else:
            dtype = {"FLOAT64": np.float64, "INT32": np.int32}[kind["componentType"]]
            col = np.frombuffer(values, dtype)[:count].tolist()
        for row, value in zip(rows, col):
            row[name] = value
    return rows
