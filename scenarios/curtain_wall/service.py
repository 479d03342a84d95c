"""What the command line and the API both answer, beyond ranking and pushing: the overdue list and the
ranking as map features (the building footprints in WGS84, for the viewer's risk layer)."""
from __future__ import annotations

import json
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from scenarios.curtain_wall.inputs import read_inputs
from scenarios.curtain_wall.model import Model
from scenarios.curtain_wall.schedule import due_dates, overdue_list
from scenarios.curtain_wall.scoring import Ranking


def overdue(conn: Connection, model: Model, as_of: date) -> dict[str, Any]:
    """The late obligations of every dossier as of ``as_of`` (see :mod:`scenarios.curtain_wall.schedule`)."""
    frame = read_inputs(conn, model, as_of, counts=False)
    return overdue_list(frame, due_dates(frame, model.schedule, as_of), as_of)


def ranking_features(conn: Connection, ranking: Ranking, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The listed buildings as a GeoJSON FeatureCollection (footprints in WGS84, lon/lat), score and
    reasons as properties."""
    ids = [r["building"] for r in rows]
    shapes = dict(conn.execute(sa.text(
        "SELECT source_id, ST_AsGeoJSON(ST_Transform(ST_Force2D(geom), 4326), 7) FROM buildings "
        "WHERE valid_to IS NULL AND source_id = ANY(:ids)"), {"ids": ids}).all())
    features = [{"type": "Feature", "id": r["building"],
                 "geometry": json.loads(shapes[r["building"]]) if r["building"] in shapes else None,
                 "properties": r} for r in rows]
    return {"type": "FeatureCollection", "features": features, "numberReturned": len(features),
            "numberMatched": len(ranking.score), "model_version": ranking.model.version,
            "as_of": ranking.as_of.isoformat()}
