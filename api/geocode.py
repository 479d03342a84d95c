"""``/geocode``, ``/geocode/batch``, ``/reverse``: the gazetteer over HTTP.

- ``GET /geocode?q=…[&crs=]``: one address → point (WGS84 by default; also EPSG:4490, the storage
  CRS, gcj02, bd09), match level, score, standard address and the grid assignment with who is
  responsible.
- ``POST /geocode/batch``: up to 100,000 addresses, as a JSON list (or ``{"addresses": [...]}``),
  answered as JSON; or a CSV file (multipart field ``file`` + ``column``, or a ``text/csv`` body
  with ``?column=``), answered as CSV with every input column plus the geocoder's.
- ``GET /reverse?lon=&lat=[&crs=][&radius=]``: the nearest address within the radius and the
  units containing the point; the answer's point is in the request's CRS.
"""
from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from typing import Any, BinaryIO, Literal

from fastapi import APIRouter, FastAPI, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from api.deps import get_state
from api.grid import check_point, masked
from cim.crs import resolve_parameter
from api.limits import MAX_CRS_CHARS, MAX_NAME_CHARS, TooManyItems, load_json_list
from api.problems import bad_parameter
from cim.audit import record_unmasked_read
from cim.crs import CrsSpec
from cim.gazetteer.batch import BatchSummary, geocode_csv
from cim.gazetteer.geocode import MAX_QUERY_CHARS, geocode, geocode_many
from cim.gazetteer.reverse import DEFAULT_RADIUS_M, MAX_RADIUS_M, reverse
from cim.jurisdiction import current_scope

router = APIRouter(tags=["gazetteer"])

MAX_BATCH_ROWS = 100_000
_CHUNK = 5_000
_OUT_CRS_HELP = ("CRS of the answer's point: EPSG:4326 (default), EPSG:4490, the storage CRS, 'gcj02' "
                 "(Amap/Tencent) or 'bd09' (Baidu); an EPSG code or a CRS URI.")


@router.get("/geocode", summary="Geocode one address: point, match level, score, grid and who is responsible")
def geocode_one(request: Request,
                q: str = Query(..., description="The address, free text (e.g. 上海徐汇区汾阳路150号).",
                               max_length=MAX_QUERY_CHARS),
                crs: str | None = Query(None, max_length=MAX_CRS_CHARS, description=_OUT_CRS_HELP)) -> dict:
    """``match_level`` is one of door, interpolated, road, community, street, district, none;
    ``ambiguous`` answers list ``candidates`` (one per district)."""
    spec = resolve_parameter(crs, "crs")
    if not q.strip():
        raise bad_parameter("q", "q: the address is empty")
    with get_state(request).engine.connect() as conn:
        result = geocode(conn, q, spec)
    return _contacts_masked(request, [result])[0].to_dict()


def _contacts_masked(request: Request, results: list) -> list:
    """Responsible persons' contacts in the answers' assignments are masked unless the caller's role needs
    them (then the read is audited), as in the grid lookup."""
    if not current_scope().personal_data:
        for result, answer in zip(results, masked([r.assignment for r in results])):
            result.assignment = answer
    elif any(p.contact for r in results for resp in r.assignment.responsibility for p in resp.persons):
        record_unmasked_read(get_state(request).engine, "persons", {"geocoded": len(results)})
    return results


def _json_batch(request: Request, body: Any, spec: CrsSpec, detail: str) -> dict:
    if isinstance(body, dict):
        body = body.get("addresses")
    if not isinstance(body, list):
        raise bad_parameter("addresses", "the body must be a JSON list of address strings, "
                                         "or an object {\"addresses\": [...]}")
    if len(body) > MAX_BATCH_ROWS:
        raise bad_parameter("addresses", f"at most {MAX_BATCH_ROWS:,} addresses per batch, got {len(body):,}")
    for i, item in enumerate(body):
        if item is not None and not isinstance(item, str):
            raise bad_parameter(f"addresses.{i}", f"addresses.{i} must be a string, got {type(item).__name__}")
        if item is not None and len(item) > MAX_QUERY_CHARS:  # as GET /geocode's q
            raise bad_parameter(f"addresses.{i}", f"addresses.{i}: at most {MAX_QUERY_CHARS} characters, "
                                                  f"got {len(item):,}")
    results = []
    with get_state(request).engine.connect() as conn:
        for start in range(0, len(body), _CHUNK):
            results += geocode_many(conn, body[start:start + _CHUNK], spec)
    if detail == "full":
        results = _contacts_masked(request, results)
    summary = BatchSummary(rows=len(results))
    summary.levels.update(r.match_level for r in results)
    summary.ambiguous = sum(r.ambiguous for r in results)
    return {"summary": {k: v for k, v in summary.to_dict().items() if k not in ("seconds", "rows_per_second")},
            "results": [r.to_dict() if detail == "full" else r.summary() for r in results]}


def _csv_batch(request: Request, raw: BinaryIO, column: str | None, encoding: str) -> tempfile.SpooledTemporaryFile:
    if not column or not column.strip():
        raise bad_parameter("column", "column: name the CSV column that holds the addresses")
    try:
        text = io.TextIOWrapper(raw, encoding=encoding, newline="")
    except LookupError:
        raise bad_parameter("encoding", f"encoding: unknown text encoding {encoding!r}") from None
    out = tempfile.SpooledTemporaryFile(max_size=16 << 20, mode="w+b")
    writer = io.TextIOWrapper(out, encoding="utf-8", newline="")
    try:
        with get_state(request).engine.connect() as conn:
            geocode_csv(text, writer, column, conn, chunk_rows=_CHUNK, max_rows=MAX_BATCH_ROWS)
    except BaseException:
        out.close()
        raise
    writer.flush()
    writer.detach()
    text.detach()
    out.seek(0)
    return out


def _stream(out: tempfile.SpooledTemporaryFile) -> Iterator[bytes]:
    try:
        while block := out.read(1 << 16):
            yield block
    finally:
        out.close()


_ADDRESS = {"type": "string", "maxLength": MAX_QUERY_CHARS, "nullable": True}
_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"oneOf": [
                {"type": "array", "items": _ADDRESS, "maxItems": MAX_BATCH_ROWS},
                {"type": "object", "required": ["addresses"], "properties": {
                    "addresses": {"type": "array", "items": _ADDRESS, "maxItems": MAX_BATCH_ROWS}}},
            ]}},
            "multipart/form-data": {"schema": {"type": "object", "required": ["file", "column"], "properties": {
                "file": {"type": "string", "format": "binary", "description": "CSV file with a header row."},
                "column": {"type": "string", "description": "The column holding the addresses."},
                "encoding": {"type": "string", "description": "Text encoding of the file (default utf-8)."},
            }}},
            "text/csv": {"schema": {"type": "string", "description": "CSV text; name the column with ?column="}},
        },
    }
}


@router.post("/geocode/batch", summary=f"Geocode up to {MAX_BATCH_ROWS:,} addresses (JSON list or CSV)",
             openapi_extra=_BATCH_BODY,
             responses={200: {"content": {"application/json": {}, "text/csv": {"schema": {"type": "string"}}},
                              "description": "JSON for a JSON body, CSV for a CSV one"}})
async def geocode_batch(
    request: Request,
    crs: str | None = Query(None, max_length=MAX_CRS_CHARS,
                            description=_OUT_CRS_HELP + " JSON answers only; CSV answers are WGS84."),
    detail: Literal["summary", "full"] = Query("summary",
                        description="JSON answers: 'summary' (flat record per address) or 'full' (as GET /geocode)."),
    column: str | None = Query(None, max_length=MAX_NAME_CHARS,
                               description="CSV body: the column holding the addresses."),
    encoding: str = Query("utf-8-sig", max_length=MAX_NAME_CHARS,
                          description="CSV body: its text encoding (e.g. gbk)."),
) -> Any:
    """JSON in → ``{"summary", "results"}`` in input order; CSV in → CSV out with the input columns
    plus lon, lat (WGS84), match_level, score, standard_address, district/street/community/grid codes."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise bad_parameter("file", "file: upload the CSV file as the multipart field 'file'")
        form_column = form.get("column")
        form_encoding = form.get("encoding")
        out = await run_in_threadpool(_csv_batch, request, upload.file,
                                      form_column if isinstance(form_column, str) else column,
                                      form_encoding if isinstance(form_encoding, str) and form_encoding else encoding)
        return StreamingResponse(_stream(out), media_type="text/csv; charset=utf-8")
    if content_type in ("text/csv", "text/plain"):
        body = await request.body()
        out = await run_in_threadpool(_csv_batch, request, io.BytesIO(body), column, encoding)
        return StreamingResponse(_stream(out), media_type="text/csv; charset=utf-8")
    spec = resolve_parameter(crs, "crs")
    raw = await request.body()
    try:
        payload = load_json_list(raw, MAX_BATCH_ROWS, "addresses", key="addresses")
    except TooManyItems as exc:
        raise bad_parameter(exc.parameter, str(exc)) from None
    except ValueError as exc:  # orjson's JSONDecodeError, json's, and UnicodeDecodeError are all ValueErrors
        raise bad_parameter("addresses", f"the body is not valid JSON ({exc}); send a JSON list of addresses "
                                         "or a CSV file") from None
    return await run_in_threadpool(_json_batch, request, payload, spec, detail)


@router.get("/reverse", summary="The address nearest a point and the grid, community, street and district there")
def reverse_one(request: Request,
                lon: float = Query(..., description="Longitude (or easting in a projected crs)."),
                lat: float = Query(..., description="Latitude (or northing in a projected crs)."),
                crs: str | None = Query(None, max_length=MAX_CRS_CHARS,
                                        description="CRS of lon/lat and of the answer's point; default WGS84. "
                                                          + _OUT_CRS_HELP),
                radius: float = Query(DEFAULT_RADIUS_M, gt=0, le=MAX_RADIUS_M,
                                      description="Search radius in metres.")) -> dict:
    """``found`` is false when no address lies within ``radius``; the assignment is given either way."""
    spec = resolve_parameter(crs, "crs")
    check_point(lon, lat, spec)
    with get_state(request).engine.connect() as conn:
        result = reverse(conn, lon, lat, spec, radius)
    return _contacts_masked(request, [result])[0].to_dict()


def install(app: FastAPI) -> None:
    app.include_router(router)
