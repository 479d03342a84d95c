"""Monthly utility use, registered population and deliveries per address, matched through the
gazetteer: a row whose address is a door of the gazetteer is stored at that door and the room the
text (or the gazetteer's entry) names; any other row — the address unknown, only a road or an area,
ambiguous — goes to the rejects file with its address text and why, so the gazetteer can be
improved. A value that is not a number is refused naming the row and field; an empty one is a
missing attribute (it lowers the score's confidence, see :mod:`.score`)."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cases.textfile import read_text_file
from cim.bootstrap import stored_settings
from cim.config import cim_home
from cim.errors import UserError
from cim.gazetteer.geocode import geocode_many

COLUMNS = ("address", "month", "water_m3", "electricity_kwh", "gas_m3", "registered_population", "deliveries")
VALUE_COLUMNS = COLUMNS[2:]
#: whole-number columns and their largest plausible value for one address and month
COUNTS = {"registered_population": 10_000, "deliveries": 1_000_000}


@dataclass(frozen=True)
class LoadReport:
    read: int
    stored: int
    addresses: int
    rejected: int
    rejects_file: str | None

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def _month(where: str, text: str) -> date:
    parts = (text or "").strip().split("-")
    try:
        if len(parts) not in (2, 3) or (len(parts) == 3 and int(parts[2]) != 1):
            raise ValueError
        return date(int(parts[0]), int(parts[1]), 1)
    except ValueError:
        raise UserError(f"{where}: field month: {text!r} is not a month (YYYY-MM)") from None


def _value(where: str, field: str, text: str | None) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{where}: field {field}: {text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise UserError(f"{where}: field {field}: {text} is not a count or amount ≥ 0")
    if field in COUNTS and (not value.is_integer() or value > COUNTS[field]):
        raise UserError(f"{where}: field {field}: {text} is not a whole number up to {COUNTS[field]:,}")
    return value


def load_utilities(conn: Connection, path: Path, rejects_dir: Path | None = None) -> LoadReport:
    """Load a CSV (header: address,month,water_m3,electricity_kwh,gas_m3,registered_population,
    deliveries) inside the caller's transaction; a month already loaded for an address is replaced."""
    text = read_text_file(path)
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("address", "month") if c not in (reader.fieldnames or [])]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; columns are {', '.join(COLUMNS)}")
    rows = []
    for n, row in enumerate(reader, start=2):
        where = f"{path}, row {n}"
        if "\x00" in (row.get("address") or ""):
            raise UserError(f"{where}: field address: contains a NUL character (U+0000)")
        rows.append((n, (row.get("address") or "").strip(), _month(where, row.get("month") or ""),
                     *(_value(where, f, row.get(f)) for f in VALUE_COLUMNS)))
    settings = stored_settings(conn)
    if settings is None:
        raise UserError("the city base is not initialised: run 'cim init'")
    texts = list(dict.fromkeys(r[1] for r in rows))
    answers = dict(zip(texts, geocode_many(conn, texts, f"EPSG:{settings.srid}")))
    rejects: list[tuple[int, str, str, str]] = []
    keyed: dict[tuple[str, str], dict[str, object]] = {}
    observations = []
    for n, address, month, *values in rows:
        result = answers[address]
        if not address:
            why = "empty address"
        elif result.match_level != "door" or result.entry is None:
            why = f"not a door of the gazetteer (matched at level {result.match_level}: {result.reason or '-'})"
        elif result.ambiguous:
            why = "ambiguous: several doors match"
        else:
            why = None
        if why is not None:
            rejects.append((n, address, month.isoformat()[:7], why))
            continue
        entry = result.entry
        # the room the text names (a door's data without one stays at the door)
        room = ((result.parsed.room if result.parsed else None) or "").strip()
        key = (entry.feature_id, room)
        if not room or room == (entry.room or ""):
            standard = entry.standard_address
        elif not entry.room:
            standard = f"{entry.standard_address}{room}室"
        else:  # the gazetteer knows another room of the door: the text says best which one
            standard = address
        keyed.setdefault(key, {"f": entry.feature_id, "room": room, "std": standard, "x": entry.x,
                               "y": entry.y, "district": entry.district_code, "street": entry.street_code,
                               "community": entry.community_code, "grid": entry.grid_code})
        observations.append((key, month, values))
    ids: dict[tuple[str, str], int] = {}
    for key, a in keyed.items():
        ids[key] = conn.execute(sa.text(
            "INSERT INTO rental_addresses (address_feature_id, room, standard_address, geom, district_code, "
            "street_code, community_code, grid_code) VALUES (:f, :room, :std, ST_SetSRID(ST_MakePoint(:x, :y), :srid), "
            ":district, :street, :community, :grid) ON CONFLICT (address_feature_id, room) DO UPDATE SET "
            "standard_address = EXCLUDED.standard_address, geom = EXCLUDED.geom, grid_code = EXCLUDED.grid_code, "
            "street_code = EXCLUDED.street_code RETURNING id"), {**a, "srid": settings.srid}).scalar_one()
    if observations:
        conn.execute(sa.text(
            "INSERT INTO rental_observations (address_id, month, water_m3, electricity_kwh, gas_m3, "
            "registered_population, deliveries) VALUES (:a, :m, :w, :e, :g, :r, :d) "
            "ON CONFLICT (address_id, month) DO UPDATE SET water_m3 = EXCLUDED.water_m3, "
            "electricity_kwh = EXCLUDED.electricity_kwh, gas_m3 = EXCLUDED.gas_m3, "
            "registered_population = EXCLUDED.registered_population, deliveries = EXCLUDED.deliveries"),
            [{"a": ids[key], "m": month, "w": v[0], "e": v[1], "g": v[2],
              "r": None if v[3] is None else int(v[3]), "d": None if v[4] is None else int(v[4])}
             for key, month, v in observations])
    rejects_file = _write_rejects(path, rejects, rejects_dir) if rejects else None
    return LoadReport(len(rows), len(observations), len(keyed), len(rejects), rejects_file)


def _write_rejects(path: Path, rejects: list[tuple[int, str, str, str]], rejects_dir: Path | None) -> str:
    folder = rejects_dir or (cim_home() / "rejects")
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    out = folder / f"group-rental-{path.stem}-{stamp}.csv"
    with open(out, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["row", "address", "month", "reason"])
        writer.writerows(rejects)
    return str(out)
