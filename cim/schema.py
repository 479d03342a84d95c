"""The city base's tables, built for one storage SRID.

Every feature table shares the same history columns (after 3DCityDB v5): ``fid`` identifies one
version row, ``feature_id`` is the stable id across versions, ``source_id`` is the deliverer's
own id, and ``valid_from``/``valid_to`` bound each version — a change closes the old row and
adds a new one; nothing is deleted. ``content_hash`` lets a loader tell "unchanged" without
comparing every column, ``attributes`` keeps whatever the canonical schema has no column for.

The SRID is a parameter because the storage CRS is chosen once at ``cim init --srid``.
"""
from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

#: the code lists the schema enforces; loaders validate against the same tuples before COPY
PIPELINE_KINDS = ("给水", "排水", "雨水", "污水", "燃气", "电力", "通信", "热力", "工业")
CURTAIN_WALL_SUPPORT_TYPES = ("点支式", "隐框", "半隐框", "明框", "全玻")


def _in_list(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


#: feature tables, in load order, with their geometry type (all carry Z)
FEATURE_TABLES: dict[str, str] = {
    "districts": "MULTIPOLYGONZ",
    "streets": "MULTIPOLYGONZ",
    "communities": "MULTIPOLYGONZ",
    "grids": "MULTIPOLYGONZ",
    "addresses": "POINTZ",
    "buildings": "MULTIPOLYGONZ",
    "curtain_walls": "MULTIPOLYGONZ",
    "parts": "POINTZ",
    "pipelines": "LINESTRINGZ",
    "iot_devices": "POINTZ",
}
#: tables whose features are assigned district/street/community/grid codes on load
ENRICHED = {"addresses", "buildings", "curtain_walls", "parts", "pipelines", "iot_devices"}

#: The big feature layers are LIST-partitioned on the jurisdiction: one partition per district (made as
#: districts appear, :func:`district_partition_sql`) and a DEFAULT one for features outside every district.
#: The same column is the Citus distribution column (cim.distribution), so a district's partition and its
#: shard hold the same rows. Design and what stays unpartitioned: docs/ARCHITECTURE.md, "Partitions by district".
DISTRICT_PARTITIONED = ("parts", "buildings", "addresses", "pipelines")
PARTITION_COLUMN = "district_code"
#: the district of a feature outside every district: a partition key (and Citus's distribution column)
#: is NOT NULL, so "none" is the empty code, kept in the DEFAULT partition
NO_DISTRICT = ""


def _history_columns() -> list[sa.Column]:
    return [
        # on a partitioned table the primary key is (fid, district_code): see _grid_columns
        sa.Column("fid", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("feature_id", UUID(as_uuid=False), nullable=False,
                  server_default=sa.text("gen_random_uuid()")),
        sa.Column("source_id", sa.Text),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("valid_to", sa.DateTime(timezone=True)),
        sa.Column("ingest_run_id", sa.Integer, sa.ForeignKey("ingest_runs.id")),
        sa.Column("content_hash", sa.Text),
        sa.Column("attributes", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    ]


def _grid_columns(partitioned: bool = False) -> list[sa.Column]:
    # a partitioned table's key is in its primary key (PostgreSQL and Citus enforce uniqueness per partition)
    district = (sa.Column(PARTITION_COLUMN, sa.Text, primary_key=True, nullable=False,
                          server_default=sa.text(f"'{NO_DISTRICT}'")) if partitioned
                else sa.Column("district_code", sa.Text))
    return [
        district,
        sa.Column("street_code", sa.Text),
        sa.Column("community_code", sa.Text),
        sa.Column("grid_code", sa.Text),
    ]


def _geometry() -> type:
    """GeoAlchemy2's column type, imported when a table is built, not with this module: its import (with the
    SQLAlchemy dialects and Shapely it loads) was a third of ``cim cases import``'s start-up, which reads only
    this module's constants (the partition column, the empty district)."""
    from geoalchemy2 import Geometry

    return Geometry


def _feature_table(metadata: sa.MetaData, name: str, srid: int, *columns: sa.Column) -> sa.Table:
    Geometry = _geometry()
    geometry_type = FEATURE_TABLES[name]
    partitioned = name in DISTRICT_PARTITIONED
    enrichment = _grid_columns(partitioned) if name in ENRICHED else []
    table = sa.Table(
        name, metadata, *_history_columns(), *columns, *enrichment,
        sa.Column("geom", Geometry(geometry_type, srid=srid, dimension=3, spatial_index=False),
                  nullable=name == "curtain_walls"),
        **({"postgresql_partition_by": f"LIST ({PARTITION_COLUMN})"} if partitioned else {}),
    )
    # one current version per source id — per district on a partitioned table: the loaders keep it city-wide
    # (they close the current version wherever it lies before inserting the next one)
    sa.Index(f"ix_{name}_current_source_id", *unique_columns(table, table.c.source_id), unique=True,
             postgresql_where=table.c.valid_to.is_(None))
    sa.Index(f"ix_{name}_feature_id", table.c.feature_id)
    sa.Index(f"ix_{name}_validity", table.c.valid_from, table.c.valid_to)
    # the one spatial index, 2D: /nearby in 3D walks it too (cim.spatial); an N-D GiST cost ~7 s of server CPU
    # per 1 M rows loaded (PostGIS builds it unsorted) and is gone (migration 0013_nearby_2d)
    sa.Index(f"ix_{name}_geom", table.c.geom, postgresql_using="gist")
    if name in ENRICHED:
        sa.Index(f"ix_{name}_grid_code", table.c.grid_code)
    return table


def unique_columns(table: sa.Table, *columns: sa.Column) -> tuple[sa.Column, ...]:
    """The columns of a unique index on ``table``: a partitioned table's key must be among them."""
    return (*columns, table.c[PARTITION_COLUMN]) if table.name in DISTRICT_PARTITIONED else columns


def district_partition_sql(table: str, district: str | None) -> list[str]:
    """The statements that make ``table``'s partition for ``district`` (None: the DEFAULT partition).

    Made apart and then attached: ATTACH PARTITION locks the parent only against other DDL (SHARE UPDATE
    EXCLUSIVE), where CREATE TABLE … PARTITION OF locks out its readers."""
    name = partition_name(table, district)
    bound = "DEFAULT" if district is None else f"FOR VALUES IN ('{_literal(district)}')"
    return [
        f'CREATE TABLE "{name}" (LIKE "{table}" INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE)',
        f'ALTER TABLE "{table}" ATTACH PARTITION "{name}" {bound}',
    ]


#: the parts' object-code CHECK (revision 0016_object_code_check; before it ``object_code ~ '^[0-9]{16}$'``)
OBJECT_CODE_CHECK = "octet_length(object_code) = 16 AND object_code::text !~ '[^0-9]'"


def partition_name(table: str, district: str | None) -> str:
    """``parts_310104``, ``parts_default``; a code that is not a plain word is named by its hash."""
    if district is None:
        return f"{table}_default"
    if district.isascii() and district.isalnum() and len(district) <= 40:
        return f"{table}_{district}"
    return f"{table}_x{hashlib.sha1(district.encode()).hexdigest()[:12]}"


def _literal(text: str) -> str:
    return text.replace("'", "''")


def build_metadata(srid: int) -> sa.MetaData:
    """All tables of the base with geometry in ``srid`` (metric, Z in metres)."""
    md = sa.MetaData()

    sa.Table(
        "cim_settings", md,
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", JSONB, nullable=False),
    )
    sa.Table(
        "ingest_runs", md,
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("layer", sa.Text, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("status", sa.Text, nullable=False, server_default="running"),
        sa.Column("mode", sa.Text),
        sa.Column("files", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("crs", sa.Text),
        sa.Column("encoding", sa.Text),
        sa.Column("operator", sa.Text),
        sa.Column("options", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("n_read", sa.Integer, nullable=False, server_default="0"),
        sa.Column("n_inserted", sa.Integer, nullable=False, server_default="0"),
        sa.Column("n_updated", sa.Integer, nullable=False, server_default="0"),
        sa.Column("n_unchanged", sa.Integer, nullable=False, server_default="0"),
        sa.Column("n_closed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("n_rejected", sa.Integer, nullable=False, server_default="0"),
        sa.Column("duration_s", sa.Float),
        sa.Column("message", sa.Text),
    )
    sa.Table(
        "layers", md,
        sa.Column("name", sa.Text, primary_key=True),  # collection id, e.g. "curtain-walls"
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("table_name", sa.Text, nullable=False, unique=True),
        sa.Column("geometry_type", sa.Text, nullable=False),
        sa.Column("is_3d", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("queryables", JSONB, nullable=False),  # [{"name", "type", "title"}]
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),  # bumped by changing loads
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )
    sa.Table(
        "part_classes", md,
        sa.Column("code", sa.String(4), primary_key=True),  # 2 digits = class, 4 digits = subclass
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("parent_code", sa.String(2), sa.ForeignKey("part_classes.code")),
        sa.CheckConstraint("code ~ '^[0-9]{2}([0-9]{2})?$'", name="ck_part_classes_code"),
    )
    sa.Table(
        "admin_aliases", md,  # historical and short names: 闸北区 -> 静安区 (310106)
        sa.Column("alias", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("code", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),  # historical | short
        sa.Column("since_year", sa.Integer),
    )

    # --- administrative and grid hierarchy -----------------------------------------------
    code_ops = {"code": "text_pattern_ops"}
    districts = _feature_table(md, "districts", srid, sa.Column("code", sa.Text, nullable=False),
                               sa.Column("name", sa.Text, nullable=False))
    streets = _feature_table(md, "streets", srid, sa.Column("code", sa.Text, nullable=False),
                             sa.Column("name", sa.Text, nullable=False), sa.Column("district_code", sa.Text))
    communities = _feature_table(md, "communities", srid, sa.Column("code", sa.Text, nullable=False),
                                 sa.Column("name", sa.Text, nullable=False), sa.Column("street_code", sa.Text))
    for t in (districts, streets, communities):
        sa.Index(f"ix_{t.name}_code", t.c.code, postgresql_ops=code_ops)
    grids = _feature_table(md, "grids", srid, sa.Column("grid_code", sa.Text, nullable=False),
                           sa.Column("name", sa.Text), sa.Column("community_code", sa.Text),
                           sa.Column("street_code", sa.Text), sa.Column("district_code", sa.Text))
    sa.Index("ix_grids_grid_code", grids.c.grid_code, postgresql_ops={"grid_code": "text_pattern_ops"})

    # --- responsibility: grid -> post -> department -> person ------------------------------
    sa.Table(
        "departments", md,
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("code", sa.Text, nullable=False, unique=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("handles", ARRAY(sa.Text), nullable=False, server_default="{}"),  # part (sub)classes
    )
    sa.Table(
        "posts", md,
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("code", sa.Text, nullable=False, unique=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("department_id", sa.Integer, sa.ForeignKey("departments.id"), nullable=False),
    )
    sa.Table(
        "persons", md,
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("contact", sa.Text),
        sa.UniqueConstraint("name", "contact", name="uq_persons_name_contact"),
    )
    sa.Table(
        "post_persons", md,
        sa.Column("post_id", sa.Integer, sa.ForeignKey("posts.id"), primary_key=True),
        sa.Column("person_id", sa.Integer, sa.ForeignKey("persons.id"), primary_key=True),
    )
    sa.Table(
        "grid_posts", md,
        sa.Column("grid_code", sa.Text, primary_key=True),
        sa.Column("post_id", sa.Integer, sa.ForeignKey("posts.id"), primary_key=True),
    )

    # --- gazetteer ----------------------------------------------------------------------------
    addresses = _feature_table(
        md, "addresses", srid,
        sa.Column("province", sa.Text), sa.Column("city", sa.Text),
        sa.Column("district", sa.Text), sa.Column("street", sa.Text), sa.Column("community", sa.Text),
        sa.Column("road", sa.Text), sa.Column("door_number", sa.Text), sa.Column("lane", sa.Text),
        sa.Column("building_no", sa.Text), sa.Column("unit", sa.Text), sa.Column("floor", sa.Text),
        sa.Column("room", sa.Text), sa.Column("compound", sa.Text), sa.Column("remark", sa.Text),
        sa.Column("door_int", sa.Integer),  # leading integer of door_number, for interpolation
        sa.Column("standard_address", sa.Text), sa.Column("address_code", sa.Text),
        sa.Column("building_feature_id", UUID(as_uuid=False)),
    )
    sa.Index("ix_addresses_road_door", addresses.c.road, addresses.c.door_int)
    sa.Index("ix_addresses_standard", addresses.c.standard_address)
    sa.Table(
        "address_aliases", md,
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("address_feature_id", UUID(as_uuid=False), nullable=False, index=True),
        sa.Column("alias", sa.Text, nullable=False, index=True),
        sa.Column("kind", sa.Text, nullable=False, server_default="alias"),  # alias | historical
    )

    # --- buildings, curtain walls, parts, pipelines -------------------------------------------
    _feature_table(
        md, "buildings", srid,
        sa.Column("name", sa.Text), sa.Column("base_elevation", sa.Float, nullable=False, server_default="0"),
        sa.Column("height", sa.Float), sa.Column("floors", sa.Integer), sa.Column("use", sa.Text),
        sa.Column("year_built", sa.Integer), sa.Column("structure", sa.Text),
        sa.Column("is_protected", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("address_feature_id", UUID(as_uuid=False)),
        sa.CheckConstraint("height IS NULL OR (height > 0 AND height <= 700)", name="ck_buildings_height"),
    )
    _feature_table(
        md, "curtain_walls", srid,
        sa.Column("building_source_id", sa.Text), sa.Column("building_feature_id", UUID(as_uuid=False)),
        sa.Column("glass_type", sa.Text), sa.Column("support_type", sa.Text),
        sa.Column("facade_area", sa.Float), sa.Column("year_installed", sa.Integer),
        sa.Column("last_inspection_date", sa.Date), sa.Column("inspection_result", sa.Text),
        sa.Column("owner", sa.Text),
        sa.CheckConstraint("support_type IS NULL OR " + _in_list("support_type", CURTAIN_WALL_SUPPORT_TYPES),
                           name="ck_curtain_walls_support_type"),
    )
    parts = _feature_table(
        md, "parts", srid,
        sa.Column("object_code", sa.String(16), nullable=False),
        sa.Column("part_class", sa.String(2), sa.ForeignKey("part_classes.code"), nullable=False),
        sa.Column("part_subclass", sa.String(4), sa.ForeignKey("part_classes.code"), nullable=False),
        sa.Column("name", sa.Text), sa.Column("status", sa.Text),
        sa.Column("owner_department", sa.Text), sa.Column("maintainer", sa.Text),
        # 16 ASCII digits: 16 bytes none of which is not a digit (revision 0016: what '^[0-9]{16}$' says, at a
        # fifth of the regex's cost per row — the bounded repetition is the dear part)
        sa.CheckConstraint(OBJECT_CODE_CHECK, name="ck_parts_object_code"),
    )
    # one current part per code (versions of a feature share it): revision 0003
    sa.Index("ix_parts_object_code", *unique_columns(parts, parts.c.object_code), unique=True,
             postgresql_where=parts.c.valid_to.is_(None))
    sa.Index("ix_parts_subclass", parts.c.part_subclass)
    _feature_table(
        md, "pipelines", srid,
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("diameter_mm", sa.Float), sa.Column("section", sa.Text), sa.Column("material", sa.Text),
        sa.Column("pressure_class", sa.Text), sa.Column("year_laid", sa.Integer), sa.Column("owner", sa.Text),
        sa.Column("start_depth", sa.Float), sa.Column("end_depth", sa.Float),
        sa.CheckConstraint(_in_list("kind", PIPELINE_KINDS),
                           name="ck_pipelines_kind"),
    )

    # --- IoT ------------------------------------------------------------------------------------
    _feature_table(
        md, "iot_devices", srid,
        sa.Column("device_type", sa.Text, nullable=False), sa.Column("name", sa.Text),
        sa.Column("quantities", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("linked_feature", sa.Text),
    )
    # revision 0009_cases_readings_district adds district_code (the device's) and puts it in the primary key
    readings = sa.Table(
        "iot_readings", md,
        sa.Column("device_id", sa.Text, nullable=False),  # the device's source_id: stable across versions
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("quantity", sa.Text, nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("ingest_run_id", sa.Integer),
        sa.PrimaryKeyConstraint("device_id", "quantity", "time", name="pk_iot_readings"),
        postgresql_partition_by="RANGE (time)",
    )
    sa.Index("ix_iot_readings_time_brin", readings.c.time, postgresql_using="brin")

    # --- API keys (stored hashed) ------------------------------------------------------------
    sa.Table(
        "api_keys", md,
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("name", sa.Text),
        sa.Column("key_hash", sa.Text, nullable=False, unique=True),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("role IN ('reader','loader','admin')", name="ck_api_keys_role"),
    )
    return md


#: read-only views published as layers, with their geometry type; a migration writes each (they
#: are not in :func:`build_metadata`, whose ``create_all`` would make them tables)
VIEW_LAYERS: dict[str, str] = {"case_features": "POINTZ", "alert_features": "POINTZ"}


def build_views(srid: int) -> sa.MetaData:
    """The published views as SQLAlchemy tables to query: the layer columns every feature table has,
    then their own (``case_features``: migration 0005, over the ``cases`` table of 0004)."""
    Geometry = _geometry()
    md = sa.MetaData()
    sa.Table(
        "case_features", md,
        sa.Column("fid", sa.BigInteger, primary_key=True), sa.Column("feature_id", UUID(as_uuid=False)),
        sa.Column("source_id", sa.Text), sa.Column("valid_from", sa.DateTime(timezone=True)),
        sa.Column("valid_to", sa.DateTime(timezone=True)), sa.Column("ingest_run_id", sa.Integer),
        sa.Column("content_hash", sa.Text), sa.Column("attributes", JSONB),
        sa.Column("channel", sa.Text), sa.Column("class_code", sa.Text), sa.Column("class_name", sa.Text),
        sa.Column("urgency", sa.Text), sa.Column("status", sa.Text), sa.Column("overdue", sa.Boolean),
        sa.Column("escalation_level", sa.Integer), sa.Column("department_name", sa.Text),
        sa.Column("reported_at", sa.DateTime(timezone=True)), sa.Column("due_at", sa.DateTime(timezone=True)),
        sa.Column("closed_at", sa.DateTime(timezone=True)), sa.Column("address_text", sa.Text),
        sa.Column("description", sa.Text), *_grid_columns(),
        sa.Column("geom", Geometry(VIEW_LAYERS["case_features"], srid=srid, dimension=3, spatial_index=False)),
    )
    # sensing's alerts at their devices (migration 0006_sensing_alerts): current = active
    sa.Table(
        "alert_features", md,
        sa.Column("fid", sa.BigInteger, primary_key=True), sa.Column("feature_id", UUID(as_uuid=False)),
        sa.Column("source_id", sa.Text), sa.Column("valid_from", sa.DateTime(timezone=True)),
        sa.Column("valid_to", sa.DateTime(timezone=True)), sa.Column("ingest_run_id", sa.Integer),
        sa.Column("content_hash", sa.Text), sa.Column("attributes", JSONB),
        sa.Column("device_id", sa.Text), sa.Column("device_type", sa.Text), sa.Column("device_name", sa.Text),
        sa.Column("rule_id", sa.Integer), sa.Column("rule_name", sa.Text), sa.Column("rule_kind", sa.Text),
        sa.Column("quantity", sa.Text), sa.Column("level", sa.Text), sa.Column("state", sa.Text),
        sa.Column("opened_at", sa.DateTime(timezone=True)), sa.Column("escalated_at", sa.DateTime(timezone=True)),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True)), sa.Column("cleared_at", sa.DateTime(timezone=True)),
        sa.Column("last_value", sa.Float), sa.Column("last_time", sa.DateTime(timezone=True)),
        sa.Column("case_id", sa.BigInteger), *_grid_columns(),
        sa.Column("geom", Geometry(VIEW_LAYERS["alert_features"], srid=srid, dimension=3, spatial_index=False)),
    )
    return md


@functools.lru_cache(maxsize=4)
def tables_for(srid: int) -> Mapping[str, sa.Table]:
    """The base's tables and published views for a storage SRID, built once per process: queries
    take identifiers from here."""
    return {**build_metadata(srid).tables, **build_views(srid).tables}
