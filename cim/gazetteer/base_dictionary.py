"""The gazetteer's dictionaries, read from the base itself — so a new city works by loading its
districts, streets, communities and addresses, not by editing code."""
from __future__ import annotations

import hashlib
import re

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cim.gazetteer.dictionary import AddressDictionary

_LEADING_INT = re.compile(r"^(\d+)")


def dictionary_from_base(conn: Connection) -> AddressDictionary:
    def rows(sql: str) -> list[tuple]:
        return [tuple(r) for r in conn.execute(sa.text(sql))]

    city = conn.execute(sa.text("SELECT value #>> '{}' FROM cim_settings WHERE key = 'city_name'")).scalar()
    return AddressDictionary.from_rows(
        districts=rows("SELECT code, name FROM districts WHERE valid_to IS NULL ORDER BY code"),
        streets=rows("SELECT code, name, district_code FROM streets WHERE valid_to IS NULL ORDER BY code"),
        communities=rows("SELECT code, name, street_code FROM communities WHERE valid_to IS NULL ORDER BY code"),
        roads=rows("SELECT DISTINCT road, district_code FROM addresses "
                   "WHERE valid_to IS NULL AND road IS NOT NULL AND district_code IS NOT NULL"),
        compounds=rows("SELECT DISTINCT compound, district_code FROM addresses "
                       "WHERE valid_to IS NULL AND compound IS NOT NULL AND district_code IS NOT NULL"),
        city_name=city,  # None (a base from before city_name was stored): the default city
    )


def door_int(door_number: str | None) -> int | None:
    """The leading integer of a door number ("150-1" → 150), used to interpolate along a road."""
    match = _LEADING_INT.match(door_number or "")
    return int(match.group(1)) if match else None


def address_code(area_code: str | None, standard_address: str) -> str:
    """A structured, stable code: the smallest area's code (12 digits, padded) + a digest of the address."""
    area = (area_code or "").ljust(12, "0")[:12] if area_code and area_code.isdigit() else "000000000000"
    return f"{area}-{hashlib.sha1(standard_address.encode('utf-8')).hexdigest()[:10]}"
