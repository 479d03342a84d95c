"""Each layer's canonical input schema: the columns a delivery maps onto, their types, and how a
feature is keyed. Everything else in a file is kept in the feature's ``attributes``. A feature
layer's own behaviour (rules, checks, links) is named here too, as hooks from ``ingest.layers``,
so the loader (``ingest.run``) treats every layer alike."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ingest import layers
from ingest.prepare import DEFAULT_DEPTH_M, MAX_BUILDING_HEIGHT_M, MAX_DEPTH_M  # noqa: F401 (read from here too)


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
    # text fields (and "attributes") that no rule or check of the layer reads: kept as Arrow text from the reader
    # to the COPY rather than made Python strings and back (ingest.columns.coerce, ingest.hashing)
    passive_text: tuple[str, ...] = ()
    # --- behaviour of a feature layer (hooks in ingest.layers) ---
    rules: layers.Rules = layers.flat_rules  # rules over each batch in the storage CRS
    read_context: Callable[[Any, Any], None] | None = None  # (connection, Context): once, before the load
    begin: Callable[[Any, Any], None] | None = None  # (cursor, Context): in the load's transaction, after its lock
    check: layers.Check | None = None  # checks of each batch against the base
    merge_sql: dict[str, Any] = field(default_factory=dict)  # links the merge makes (extra_select, joins)
    geometry_from_link: bool = False  # no geometry of its own required: taken from a linked feature
    # a layer with links may still be staged on its first load (ingest.staged) if it says how to link there
    staged_links: Any = None  # ingest.staged.StagedLinks
    # after a load: (cursor, run id) -> rows of another layer given a link to this load's rows, and the tables
    # it writes (locked with the layer's own, in one order: ingest.run)
    complete_links: Callable[[Any, int], int] | None = None
    also_locks: tuple[str, ...] = ()

    @property
    def columns(self) -> list[str]:
        return list(self.fields)


_POINT_Z = {"z": "float"}

SPECS: dict[str, LayerSpec] = {s.name: s for s in [
    LayerSpec("districts", "districts", "polygon", {"source_id": "str", "code": "str", "name": "str"},
              key_fallback="code", required=("code", "name"),
              aliases={"code": ("adcode", "region_id", "dm"), "name": ("source_name", "mc")},
              rules=partial(layers.hierarchy_rules, layer="districts")),
    LayerSpec("streets", "streets", "polygon",
              {"source_id": "str", "code": "str", "name": "str", "district_code": "str"},
              key_fallback="code", required=("code", "name"),
              aliases={"code": ("region_id",), "name": ("source_name",), "district_code": ("region_group",)},
              rules=partial(layers.hierarchy_rules, layer="streets")),
    LayerSpec("communities", "communities", "polygon",
              {"source_id": "str", "code": "str", "name": "str", "street_code": "str"},
              key_fallback="code", required=("code", "name"),
              rules=partial(layers.hierarchy_rules, layer="communities")),
    LayerSpec("grids", "grids", "polygon",
              {"source_id": "str", "grid_code": "str", "name": "str", "community_code": "str"},
              key_fallback="grid_code", required=("grid_code",),
              rules=partial(layers.hierarchy_rules, layer="grids")),
    LayerSpec("responsibility", None, None,
              {"grid_code": "str", "post_code": "str", "post_name": "str", "department_code": "str",
               "department_name": "str", "person_name": "str", "person_contact": "str", "handles": "str"},
              required=("grid_code", "post_code", "post_name", "department_code", "department_name")),
    LayerSpec("addresses", "addresses", "point",
              {"source_id": "str", "full_address": "str", "province": "str", "city": "str", "district": "str",
               "street": "str", "community": "str", "road": "str", "door_number": "str", "lane": "str",
               "building_no": "str", "unit": "str", "floor": "str", "room": "str", "compound": "str",
               "remark": "str", **_POINT_Z}, key_fallback="full_address", enrich=True,
              rules=layers.address_rules, read_context=layers.read_address_parser, merge_sql=layers.ADDRESS_MERGE,
              staged_links=(layers.address_staged_links, layers.address_loaded_links),
              complete_links=layers.complete_building_links, also_locks=layers.LINKED_LAYERS),
    LayerSpec("buildings", "buildings", "polygon",
              {"source_id": "str", "name": "str", "base_elevation": "float", "height": "float", "floors": "int",
               "use": "str", "year_built": "int", "structure": "str", "is_protected": "bool"}, enrich=True,
              aliases={"name": ("bdname",), "height": ("gd",), "floors": ("fnum", "cs"), "year_built": ("age",),
                       "use": ("landusetyp",)},
              rules=layers.building_rules, merge_sql=layers.BUILDING_MERGE,
              complete_links=layers.complete_address_links, also_locks=layers.LINKED_LAYERS),
    LayerSpec("curtain-walls", "curtain_walls", None,  # geometry comes from the building, or the file
              {"source_id": "str", "building_source_id": "str", "glass_type": "str", "support_type": "str",
               "facade_area": "float", "year_installed": "int", "last_inspection_date": "date",
               "inspection_result": "str", "owner": "str"}, required=("building_source_id",), enrich=True,
              check=layers.check_curtain_walls, merge_sql=layers.CURTAIN_WALL_MERGE, geometry_from_link=True),
    LayerSpec("parts", "parts", "point",
              {"source_id": "str", "object_code": "str", "subclass_code": "str", "name": "str", "status": "str",
               "owner_department": "str", "maintainer": "str", **_POINT_Z},
              key_fallback="object_code", enrich=True, rules=layers.part_rules,
              passive_text=("name", "status", "owner_department", "maintainer", "attributes"),
              begin=layers.read_part_sequences, check=layers.check_object_codes),
    LayerSpec("pipelines", "pipelines", "line",
              {"source_id": "str", "kind": "str", "diameter_mm": "float", "section": "str", "material": "str",
               "pressure_class": "str", "year_laid": "int", "owner": "str", "start_depth": "float",
               "end_depth": "float", "ground_elevation": "float"}, required=("kind",), enrich=True,
              rules=layers.pipeline_rules),
    LayerSpec("iot-devices", "iot_devices", "point",
              {"source_id": "str", "device_type": "str", "name": "str", "quantities": "json",
               "linked_feature": "str", **_POINT_Z}, required=("device_type",), enrich=True,
              aliases={"device_type": ("kind",)}, rules=layers.point_rules),
    LayerSpec("iot-readings", None, None,
              {"device_id": "str", "time": "datetime", "quantity": "str", "value": "float"},
              required=("device_id", "time", "quantity", "value")),
]}
