"""The live flood layer for maps (GeoJSON, WGS84): the ponding areas of open responses, the compounds
in them, and every pump truck and team at its latest GPS fix with its status."""
from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cim.bootstrap import stored_settings
from scenarios.flood.routing import extent_params, positions_sql


def flood_layer(conn: Connection) -> dict[str, Any]:
    srid = stored_settings(conn).srid
    rows = conn.execute(sa.text(f"""
        SELECT 'area' AS kind, r.id::text AS id, r.title AS name, NULL AS status, r.id AS response_id,
               ST_AsGeoJSON(ST_Transform(r.area, 4326), 7) AS g
        FROM flood_responses r WHERE r.closed_at IS NULL
        UNION ALL
        SELECT DISTINCT ON (c.source_id) 'compound', c.source_id, c.name, NULL, r.id,
               ST_AsGeoJSON(ST_Transform(c.geom, 4326), 7)
        FROM flood_responses r JOIN flood_compounds c ON ST_Intersects(c.geom, r.area) WHERE r.closed_at IS NULL
        UNION ALL
        SELECT p.kind, p.code, p.name, p.status, NULL, ST_AsGeoJSON(ST_Transform(p.pos, 4326), 7)
        FROM ({positions_sql(srid)}) p"""), extent_params(conn)).all()
    features = [{"type": "Feature", "id": f"{kind}:{fid}", "geometry": json.loads(g),
                 "properties": {"kind": kind, "id": fid, "name": name, "status": status, "response_id": rid}}
                for kind, fid, name, status, rid, g in rows]
    return {"type": "FeatureCollection", "features": features}
