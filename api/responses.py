"""JSON responses serialised with orjson (fast, and numpy/datetime aware).

Hand-written because FastAPI deprecated its ORJSONResponse; this is the same ten lines, plus the one
thing orjson refuses: an integer past 64 bits, which a client may have put in a case's or feature's
attributes (jsonb keeps any number), is written by the standard library instead of failing with a 500."""
from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.responses import JSONResponse

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _plain(value: Any) -> Any:
    """What json cannot write but orjson could: numpy values and arrays, dates."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


class OrjsonResponse(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content, option=_OPTIONS)
        except TypeError:  # "Integer exceeds 64-bit range" (orjson's only refusal of JSON data)
            return json.dumps(content, ensure_ascii=False, separators=(",", ":"), default=_plain).encode()


class GeoJsonResponse(OrjsonResponse):
    media_type = "application/geo+json"
