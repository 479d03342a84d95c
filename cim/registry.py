"""The layer registry as the API and tiles read it: from the ``layers`` table, not from code."""
from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cim.errors import UserError
from cim.schema import tables_for


@dataclass(frozen=True)
class Queryable:
    name: str  # column name
    type: str  # json schema type: string, number, integer, boolean, date, datetime
    title: str


@dataclass(frozen=True)
class Layer:
    name: str  # collection id, e.g. "curtain-walls"
    title: str
    description: str | None
    table: str  # table name, e.g. "curtain_walls"
    geometry_type: str  # e.g. "MULTIPOLYGONZ"
    is_3d: bool
    queryables: tuple[Queryable, ...]
    version: int  # bumped by every load that changes the layer: tile caches key on it

    def queryable(self, name: str) -> Queryable | None:
        return next((q for q in self.queryables if q.name == name), None)

    @property
    def property_names(self) -> list[str]:
        return [q.name for q in self.queryables]


def load_layers(conn: Connection) -> dict[str, Layer]:
    rows = conn.execute(sa.text(
        "SELECT name, title, description, table_name, geometry_type, is_3d, queryables, version "
        "FROM layers ORDER BY name")).mappings()
    return {
        r["name"]: Layer(
            name=r["name"], title=r["title"], description=r["description"], table=r["table_name"],
            geometry_type=r["geometry_type"], is_3d=r["is_3d"],
            queryables=tuple(Queryable(q["name"], q["type"], q.get("title", q["name"])) for q in r["queryables"]),
            version=r["version"],
        )
        for r in rows
    }


def bump_version(cur, table: str) -> int:
    """Mark a layer as changed, on a DBAPI cursor inside the loading transaction; returns the new version.

    Tile caches and ETags key on this number, so every load that changes a layer must call it."""
    cur.execute("UPDATE layers SET version = version + 1, updated_at = now() WHERE table_name = %s RETURNING version",
                (table,))
    return cur.fetchone()[0]


def layer_table(layer: Layer, srid: int) -> sa.Table:
    """The table behind a layer; identifiers come from the schema, never from a request."""
    table = tables_for(srid).get(layer.table)
    if table is None or "geom" not in table.c:
        raise UserError(f"layer {layer.name!r} names table {layer.table!r}, which is not a feature table "
                        "of the city base")
    return table
