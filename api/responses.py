"""JSON responses serialised with orjson (fast, and numpy/datetime aware).

Hand-written because FastAPI deprecated its ORJSONResponse; this is the same ten lines."""
from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse


class OrjsonResponse(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


class GeoJsonResponse(OrjsonResponse):
    media_type = "application/geo+json"
