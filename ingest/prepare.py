"""Layer rules applied to a coerced batch in the storage CRS: codes, heights, depths, Z, and the
derived columns each table needs. Each function returns rejects by batch position, never raises
for a bad row."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import shapely

from ingest import geometry as geo
from ingest.seen import FirstRows

if TYPE_CHECKING:
    from ingest.addresses import AddressParser

#: default burial depth (m) per pipeline kind when a delivery gives none (typical Shanghai practice)
DEFAULT_DEPTH_M = {"给水": 1.2, "排水": 2.5, "雨水": 2.0, "污水": 3.0, "燃气": 1.2, "电力": 1.0,
                   "通信": 0.8, "热力": 1.5, "工业": 1.5}
MAX_BUILDING_HEIGHT_M = 700.0
MAX_DEPTH_M = 100.0

PIPE_KIND_SYNONYMS = {"上水": "给水", "供水": "给水", "自来水": "给水", "煤气": "燃气", "天然气": "燃气",
                      "电信": "通信", "通讯": "通信", "供电": "电力", "路灯": "电力", "雨污合流": "排水",
                      "合流": "排水", "供热": "热力", "工业管道": "工业"}


@dataclass
class Context:
    """What the rules need from the base, read once per run."""

    srid: int
    floor_height_m: float
    part_classes: set[str]  # 2- and 4-digit codes
    next_sequence: dict[str, int] = field(default_factory=dict)  # 10-digit code prefix -> last used sequence
    object_code_rows: FirstRows = field(default_factory=FirstRows)  # code -> source row that took it in this run
    base_empty: bool = False  # the layer's table held no row when the load began (a first load)
    cur: Any = None  # the load's cursor, inside its transaction (rules that look at the base use it)
    address_parser: AddressParser | None = None


@dataclass
class Prepared:
    frame: pd.DataFrame
    geometry: np.ndarray | None
    rejects: dict[int, str]
    notes: dict[int, str]


def with_placeholders(geoms: np.ndarray, valid: np.ndarray, kind: str = "polygon") -> np.ndarray:
    """Rejected rows carry a placeholder (a ``kind``: point, line or polygon) so vectorised rules run
    over the whole batch."""
    out = geoms.copy()
    placeholder = (shapely.Point(0, 0) if kind == "point" else shapely.LineString([(0, 0), (1, 0)])
                   if kind == "line" else shapely.MultiPolygon([shapely.box(0, 0, 1, 1)]))
    out[~valid] = placeholder
    out[pd.isna(out)] = placeholder
    return out


def _reject_where(rejects: dict[int, str], mask: np.ndarray, reason) -> None:
    for i in np.flatnonzero(mask):
        rejects.setdefault(int(i), reason(int(i)) if callable(reason) else reason)


def _float(frame: pd.DataFrame, column: str) -> np.ndarray:
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)


def prepare_buildings(frame: pd.DataFrame, geoms: np.ndarray, ctx: Context) -> Prepared:
    rejects: dict[int, str] = {}
    height = _float(frame, "height")
    floors = _float(frame, "floors")
    from_floors = np.isnan(height) & ~np.isnan(floors)
    height = np.where(from_floors, floors * ctx.floor_height_m, height)
    _reject_where(rejects, np.isnan(height), "no height and no floors")
    _reject_where(rejects, height <= 0, lambda i: f"height {height[i]:g} m ≤ 0")
    _reject_where(rejects, height > MAX_BUILDING_HEIGHT_M, lambda i: f"height {height[i]:g} m > 700 m")
    _reject_where(rejects, floors < 0, lambda i: f"negative floors {floors[i]:g}")
    base = _float(frame, "base_elevation")
    source_z = np.array([_min_z(g) for g in geoms])
    base = np.where(np.isnan(base), np.where(np.isnan(source_z), 0.0, source_z), base)
    frame = frame.assign(height=height, base_elevation=base,
                         is_protected=frame["is_protected"].map(lambda v: bool(v) if v is not None else False))
    notes = {int(i): f"height = floors × {ctx.floor_height_m:g} m" for i in np.flatnonzero(from_floors)}
    return Prepared(frame, geo.with_constant_z(geoms, base), rejects, notes)


def _min_z(geom) -> float:
    if geom is None or not shapely.has_z(geom):
        return np.nan
    return float(np.nanmin(shapely.get_coordinates(geom, include_z=True)[:, 2]))


def prepare_points(frame: pd.DataFrame, geoms: np.ndarray, ctx: Context) -> Prepared:
    z = _float(frame, "z") if "z" in frame else None
    return Prepared(frame.drop(columns=["z"], errors="ignore"), geo.keep_or_set_z(geoms, z), {}, {})


def prepare_parts(frame: pd.DataFrame, geoms: np.ndarray, ctx: Context, district_codes: np.ndarray,
                  existing_codes: dict[str, str]) -> Prepared:
    prepared = prepare_points(frame, geoms, ctx)
    frame, rejects = prepared.frame.copy(), prepared.rejects
    codes = frame["object_code"].astype(object).copy()
    missing = codes.isna()
    if missing.any() and existing_codes:
        codes[missing] = frame.loc[missing, "source_id"].map(existing_codes)
    codes = codes.to_numpy(dtype=object).copy()
    subclass = frame["subclass_code"].to_numpy(dtype=object)
    # the tests of codes and classes in Arrow, a column at a time (pandas' string methods on these columns, and
    # the Python strings they made, were ~1.5 µs a part); the same regular expressions, anchored as fullmatch
    code_text = pa.array(codes, type=pa.string(), from_pandas=True)
    subclass_text = pa.array(subclass, type=pa.string(), from_pandas=True)
    given = code_text.is_valid().to_numpy(zero_copy_only=False)
    well = pc.fill_null(pc.match_substring_regex(code_text, r"^[0-9]{16}$"), False)
    well_formed = well.to_numpy(zero_copy_only=False)
    _reject_where(rejects, given & ~well_formed, lambda i: f"malformed object code {codes[i]!r} (16 digits: 6 "
                                                           "adcode + 2 class + 2 subclass + 6 sequence)")
    from_code = pc.if_else(well, pc.utf8_slice_codeunits(code_text, 6, 10), pa.scalar(None, pa.string()))
    disagree = pc.fill_null(pc.not_equal(subclass_text, from_code), False).to_numpy(zero_copy_only=False)
    _reject_where(rejects, disagree, lambda i: f"subclass {subclass[i]!r} disagrees with object code {codes[i]!r}")
    part_subclass = pc.coalesce(from_code, subclass_text)
    has_class = part_subclass.is_valid().to_numpy(zero_copy_only=False)
    _reject_where(rejects, ~has_class, "no object code and no subclass code")
    classes = pa.array(sorted(ctx.part_classes), type=pa.string())
    part_class = pc.utf8_slice_codeunits(part_subclass, 0, 2)
    known = pc.and_(pc.and_(pc.is_in(part_subclass, value_set=classes), pc.is_in(part_class, value_set=classes)),
                    pc.fill_null(pc.match_substring_regex(part_subclass, r"^[0-9]{4}$"), False))
    subclasses = part_subclass.to_numpy(zero_copy_only=False)
    _reject_where(rejects, has_class & ~known.to_numpy(zero_copy_only=False),
                  lambda i: f"unknown part class {subclasses[i]!r}")
    # parts without an object code get: district adcode + class + subclass + next sequence (after any
    # code this delivery gives explicitly, so a generated code never repeats a given one)
    _advance_sequences(ctx.next_sequence, codes[given & well_formed])
    for i in np.flatnonzero(~given):
        if i in rejects:
            continue
        adcode = district_codes[i]
        if adcode is None or not re.fullmatch(r"[0-9]{6}", str(adcode)):
            rejects[int(i)] = "no object code, and the part lies in no district to derive one from"
            continue
        prefix = f"{adcode}{subclasses[i]}"
        sequence = ctx.next_sequence.get(prefix, 0) + 1
        if sequence > 999_999:
            rejects[int(i)] = f"object code sequence for {prefix} exhausted"
            continue
        ctx.next_sequence[prefix] = sequence
        codes[i] = f"{prefix}{sequence:06d}"
        prepared.notes[int(i)] = f"object code assigned {codes[i]}"
    frame["object_code"] = codes
    # few distinct values and no rule reads them after this: left in Arrow for the hash and the COPY
    frame["part_subclass"] = pd.arrays.ArrowExtensionArray(part_subclass)
    frame["part_class"] = pd.arrays.ArrowExtensionArray(part_class)
    frame = frame.drop(columns=["subclass_code"])
    return Prepared(frame, prepared.geometry, rejects, prepared.notes)


def _advance_sequences(next_sequence: dict[str, int], codes: np.ndarray) -> None:
    """Raise each 10-digit prefix's last sequence to the highest of the given 16-digit ``codes`` — as arrays:
    a Python loop over the codes cost ~1 µs a part on every load that brings its own codes."""
    if not len(codes):
        return
    digits = np.frombuffer(codes.astype("S16").tobytes(), dtype=np.uint8).reshape(-1, 16) - ord("0")
    highest = pd.Series(_as_number(digits[:, 10:])).groupby(_as_number(digits[:, :10])).max()
    for prefix, sequence in zip(highest.index.tolist(), highest.tolist()):
        key = f"{prefix:010d}"
        next_sequence[key] = max(next_sequence.get(key, 0), sequence)


def _as_number(digits: np.ndarray) -> np.ndarray:
    """Rows of decimal digits (0–9) as integers."""
    out = np.zeros(len(digits), dtype=np.int64)
    for column in range(digits.shape[1]):
        out = out * 10 + digits[:, column]
    return out


def prepare_pipelines(frame: pd.DataFrame, geoms: np.ndarray, ctx: Context) -> Prepared:
    rejects: dict[int, str] = {}
    notes: dict[int, str] = {}
    kind = frame["kind"].map(lambda k: PIPE_KIND_SYNONYMS.get(k, k) if k else k).to_numpy(dtype=object)
    known = np.array([k in DEFAULT_DEPTH_M for k in kind])
    _reject_where(rejects, ~known, lambda i: f"unknown pipeline kind {kind[i]!r} "
                                             f"(one of {'、'.join(DEFAULT_DEPTH_M)})")
    # depths are given as positive burial depths; a negative value is already a height below ground
    start, end = np.abs(_float(frame, "start_depth")), np.abs(_float(frame, "end_depth"))
    for name, depth in (("start_depth", start), ("end_depth", end)):
        _reject_where(rejects, depth > MAX_DEPTH_M, lambda i, d=depth, n=name: f"{n} {d[i]:g} m > 100 m")
    default = np.array([DEFAULT_DEPTH_M.get(k, 1.0) for k in kind])
    source_has_z = shapely.has_z(geoms)
    no_depth = np.isnan(start) & np.isnan(end)
    keep_source_z = no_depth & source_has_z
    start = np.where(np.isnan(start), np.where(np.isnan(end), default, end), start)
    end = np.where(np.isnan(end), start, end)
    for i in np.flatnonzero(no_depth & ~source_has_z):
        notes[int(i)] = f"no burial depth: default {default[i]:g} m for {kind[i]}"
    ground = _float(frame, "ground_elevation")
    ground = np.where(np.isnan(ground), 0.0, ground)
    lifted = geo.lines_at_depth(geoms, ground - start, ground - end)
    out = np.where(keep_source_z, geoms, lifted)
    frame = frame.assign(kind=kind, start_depth=np.where(keep_source_z, np.nan, start),
                         end_depth=np.where(keep_source_z, np.nan, end)).drop(columns=["ground_elevation"])
    return Prepared(frame, out, rejects, notes)


def parent_codes(frame: pd.DataFrame, layer: str) -> pd.DataFrame:
    """Hierarchy parents from the code prefix when the delivery does not name them."""
    def prefix(codes: pd.Series, n: int) -> pd.Series:
        return codes.map(lambda c: c[:n] if isinstance(c, str) and len(c) > n and c[:n].isdigit() else None)

    if layer == "streets":
        return frame.assign(district_code=frame["district_code"].fillna(prefix(frame["code"], 6)))
    if layer == "communities":
        return frame.assign(street_code=frame["street_code"].fillna(prefix(frame["code"], 9)))
    if layer == "grids":
        community = frame["community_code"].fillna(prefix(frame["grid_code"], 12))
        return frame.assign(community_code=community, street_code=prefix(community.fillna(""), 9),
                            district_code=prefix(community.fillna(""), 6))
    return frame
