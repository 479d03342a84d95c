"""Each layer's canonical input schema: the columns a delivery maps onto, their types, and how a
feature is keyed. Everything else in a file is kept in the feature's ``attributes``."""
from __future__ import annotations

from dataclasses import dataclass, field

#: default burial depth (m) per pipeline kind when a delivery gives none (typical Shanghai practice)
DEFAULT_DEPTH_M = {"给水": 1.2, "排水": 2.5, "雨水": 2.0, "污水": 3.0, "燃气": 1.2, "电力": 1.0,
                   "通信": 0.8, "热力": 1.5, "工业": 1.5}
MAX_BUILDING_HEIGHT_M = 700.0
MAX_DEPTH_M = 100.0


@dataclass(frozen=True)
class LayerSpec:
    name: str  # CLI name
    table: str | None  # target table (None: not a feature table)
    geometry: str | None  # point | line | polygon | None (no geometry)
    fields: dict[str, str]  # canonical column -> type: str, int, float, bool, date, datetime, json
    key_fallback: str | None = None  # column used as source_id when the delivery has none
    required: tuple[str, ...] = ()
    enrich: bool = False  # assign district/street/community/grid codes by location
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)  # usual source names, lower-case

    @property
    def columns(self) -> list[str]:
        return list(self.fields)


_POINT_Z = {"z": "float"}

SPECS: dict[str, LayerSpec] = {s.name: s for s in [
    LayerSpec("districts", "districts", "polygon", {"source_id": "str", "code": "str", "name": "str"},
              key_fallback="code", required=("code", "name"),
              aliases={"code": ("adcode", "region_id", "dm"), "name": ("source_name", "mc")}),
    LayerSpec("streets", "streets", "polygon",
              {"source_id": "str", "code": "str", "name": "str", "district_code": "str"},
              key_fallback="code", required=("code", "name"),
              aliases={"code": ("region_id",), "name": ("source_name",), "district_code": ("region_group",)}),
    LayerSpec("communities", "communities", "polygon",
              {"source_id": "str", "code": "str", "name": "str", "street_code": "str"},
              key_fallback="code", required=("code", "name")),
    LayerSpec("grids", "grids", "polygon",
              {"source_id": "str", "grid_code": "str", "name": "str", "community_code": "str"},
              key_fallback="grid_code", required=("grid_code",)),
    LayerSpec("responsibility", None, None,
              {"grid_code": "str", "post_code": "str", "post_name": "str", "department_code": "str",
               "department_name": "str", "person_name": "str", "person_contact": "str", "handles": "str"},
              required=("grid_code", "post_code", "post_name", "department_code", "department_name")),
    LayerSpec("addresses", "addresses", "point",
              {"source_id": "str", "full_address": "str", "province": "str", "city": "str", "district": "str",
               "street": "str", "community": "str", "road": "str", "door_number": "str", "lane": "str",
               "building_no": "str", "unit": "str", "floor": "str", "room": "str", "compound": "str",
               "remark": "str", **_POINT_Z}, key_fallback="full_address", enrich=True),
    LayerSpec("buildings", "buildings", "polygon",
              {"source_id": "str", "name": "str", "base_elevation": "float", "height": "float", "floors": "int",
               "use": "str", "year_built": "int", "structure": "str", "is_protected": "bool"}, enrich=True,
              aliases={"name": ("bdname",), "height": ("gd",), "floors": ("fnum", "cs"), "year_built": ("age",),
                       "use": ("landusetyp",)}),
    LayerSpec("curtain-walls", "curtain_walls", None,  # geometry comes from the building, or the file
              {"source_id": "str", "building_source_id": "str", "glass_type": "str", "support_type": "str",
               "facade_area": "float", "year_installed": "int", "last_inspection_date": "date",
               "inspection_result": "str", "owner": "str"}, required=("building_source_id",), enrich=True),
    LayerSpec("parts", "parts", "point",
              {"source_id": "str", "object_code": "str", "subclass_code": "str", "name": "str", "status": "str",
               "owner_department": "str", "maintainer": "str", **_POINT_Z},
              key_fallback="object_code", enrich=True),
    LayerSpec("pipelines", "pipelines", "line",
              {"source_id": "str", "kind": "str", "diameter_mm": "float", "section": "str", "material": "str",
               "pressure_class": "str", "year_laid": "int", "owner": "str", "start_depth": "float",
               "end_depth": "float", "ground_elevation": "float"}, required=("kind",), enrich=True),
    LayerSpec("iot-devices", "iot_devices", "point",
              {"source_id": "str", "device_type": "str", "name": "str", "quantities": "json",
               "linked_feature": "str", **_POINT_Z}, required=("device_type",), enrich=True,
              aliases={"device_type": ("kind",)}),
    LayerSpec("iot-readings", None, None,
              {"device_id": "str", "time": "datetime", "quantity": "str", "value": "float"},
              required=("device_id", "time", "quantity", "value")),
]}
