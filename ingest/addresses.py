"""Address rows on load: parse a single full-address column with the gazetteer, and give every
entry its standard address string, structured code and door number for interpolation."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy.engine import Connection

from cim.gazetteer.base_dictionary import address_code, dictionary_from_base, door_int
from cim.gazetteer.dictionary import AddressDictionary
from cim.gazetteer.parse import address_line
from cim.gazetteer.shapes import ShapeParser
from ingest.prepare import Prepared

_FROM_PARSE = {"district": "district", "street": "street", "community": "community", "road": "road",
               "door_number": "door_number", "lane": "lane", "building_no": "building", "unit": "unit",
               "floor": "floor", "room": "room", "compound": "compound", "remark": "remark"}


def _missing(value: object) -> bool:
    """No value given in the file for this part (None, or a missing value of the column's type)."""
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


@dataclass
class AddressParser:
    dictionary: AddressDictionary

    def __post_init__(self) -> None:
        # the gazetteer's parser, once per head and shape of address for the whole load (cim.gazetteer.shapes)
        self.shapes = ShapeParser(self.dictionary)

    @classmethod
    def load(cls, conn: Connection) -> "AddressParser":
        return cls(dictionary_from_base(conn))

    def prepare(self, prepared: Prepared) -> Prepared:
        frame = prepared.frame.copy()
        rejects = dict(prepared.rejects)
        full = frame["full_address"].to_numpy(dtype=object)
        # the parsed parts are filled into plain arrays and put back once: a cell write through the frame
        # (``frame.at``) costs ~50 µs, ten times the parse, which made 10 M addresses a matter of hours
        parts = {column: frame[column].to_numpy(dtype=object, copy=True) for column in _FROM_PARSE}
        for i in np.flatnonzero(pd.notna(full)):
            parsed = self.shapes.parse(str(full[i]))
            if parsed.foreign:
                rejects[int(i)] = f"address {full[i]!r} is not in {self.dictionary.city_name}"
                continue
            for column, attr in _FROM_PARSE.items():
                value = getattr(parsed, attr)
                if value and _missing(parts[column][i]):
                    parts[column][i] = value
        for column, values in parts.items():
            frame[column] = values
        standard, codes, doors = [], [], []
        names = self.dictionary.district_names
        frame = frame.astype(object).where(frame.notna(), None)
        for row in frame.itertuples(index=False):
            district = row.district or names.get(row.district_code or "")
            text = address_line(self.dictionary.city_name, district, row.road, row.compound, row.door_number,
                                row.lane, None, row.building_no, "号" if row.lane and row.building_no else None,
                                row.unit, row.floor, row.room)
            standard.append(text)
            codes.append(address_code(row.community_code or row.street_code or row.district_code, text))
            doors.append(door_int(row.door_number))
        frame["standard_address"] = standard
        frame["address_code"] = codes
        frame["door_int"] = pd.array(doors, dtype="Int64")
        frame["city"] = frame["city"].fillna(self.dictionary.city_name)
        frame = frame.drop(columns=["full_address"])
        return Prepared(frame, prepared.geometry, rejects, prepared.notes)
