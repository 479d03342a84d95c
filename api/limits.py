"""What one request may make the server hold: request bodies by route, strings by parameter.

Without a key anyone can send a body, and bodies were read whole before anything was checked
(50 MB to ``/grid/lookup`` took 3 GB of memory). So the size is checked before any parsing, by
one ASGI middleware in front of every route: a ``Content-Length`` over the route's limit is
refused at once, and a body sent without one is counted while it streams in and refused as soon
as it passes the limit. Either way the answer is a 413 problem document, and memory stays a few
chunks per request. Counts inside a body (points, addresses) are then bounded by its size, and
checked as the body is parsed where that is cheaper than parsing it all (``/geocode/batch``).

String parameters carry a ``maxLength`` in the OpenAPI document (the constants below), so an
oversized value is a 400 before it reaches a parser; and no problem document's detail is longer
than :data:`MAX_DETAIL_CHARS`.

The upload limit is a deployment setting (``CIM_UPLOAD_MAX_MB``): deployments load files of very
different sizes. The others follow from the routes' own caps and stay constants.
"""
from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cases.attachments import MAX_BYTES as ATTACHMENT_MAX_BYTES
from cim.config import settings
from cim.errors import ParameterError, PayloadTooLargeError

KIB, MIB = 1 << 10, 1 << 20
#: routes that take no body (every GET, and anything not listed below)
DEFAULT_MAX_BODY_BYTES = 64 * KIB
#: ``POST /grid/lookup``: 10,000 points at ~100 bytes each, pretty-printed and full precision
GRID_LOOKUP_MAX_BODY_BYTES = 2 * MIB
#: ``POST /geocode/batch``: 100,000 addresses as JSON with \u escapes (6 bytes a character), or a CSV
GEOCODE_BATCH_MAX_BODY_BYTES = 32 * MIB
#: ``POST /iot/readings``: a batch of readings (~100 bytes each as JSON: some 600,000 readings); a bigger
#: feed is sent as several batches
READINGS_MAX_BODY_BYTES = 64 * MIB
#: ``POST /cases``: a report's fields and up to :data:`MAX_PHOTOS_PER_REPORT` photos of at most
#: ``cases.attachments.MAX_BYTES`` (10 MiB) each, plus 1 MiB for the fields and the multipart framing.
#: Starlette spools each file part over 1 MiB to disk while parsing, so memory stays small; the other
#: case routes (``POST /cases/{id}/actions``, a small JSON action, and ``POST /open311/v2/requests.json``,
#: form fields whose media are a ``media_url``, not bytes) take no photos and keep the default.
MAX_PHOTOS_PER_REPORT = 4
CASE_REPORT_MAX_BODY_BYTES = MAX_PHOTOS_PER_REPORT * ATTACHMENT_MAX_BYTES + 1 * MIB
#: a body refused for its declared size is still read and thrown away up to this many bytes, so that
#: the client (still sending) reads the 413 instead of a connection reset; larger ones are cut off
DRAIN_MAX_BYTES = 64 * MIB

#: ``(method, path pattern, limit)``: the first match wins
ROUTE_BODY_LIMITS: tuple[tuple[str, re.Pattern[str], int | None], ...] = (
    ("POST", re.compile(r"^/grid/lookup/?$"), GRID_LOOKUP_MAX_BODY_BYTES),
    ("POST", re.compile(r"^/geocode/batch/?$"), GEOCODE_BATCH_MAX_BODY_BYTES),
    ("POST", re.compile(r"^/iot/readings/?$"), READINGS_MAX_BODY_BYTES),
    ("POST", re.compile(r"^/cases/?$"), CASE_REPORT_MAX_BODY_BYTES),
    # ``POST /ingest/{layer}``: uploaded files, spooled to disk while they stream in (not held in
    # memory); None: the deployment setting CIM_UPLOAD_MAX_MB
    ("POST", re.compile(r"^/ingest/[^/]+/?$"), None),
)

# --- string parameters (OpenAPI maxLength) ----------------------------------------------------------
#: a CRS: EPSG code, 'gcj02', or an OGC CRS URI (the longest is ~60 characters)
MAX_CRS_CHARS = 256
#: a CQL2 filter, text or JSON: room for a polygon of a few hundred vertices
MAX_FILTER_CHARS = 16_384
#: bbox (4 or 6 numbers), datetime (an interval), sortby, properties, and other short lists and names
MAX_BBOX_CHARS = 256
MAX_DATETIME_CHARS = 128
MAX_LIST_CHARS = 2_048
MAX_NAME_CHARS = 256
#: a problem document's ``detail`` is cut to this many characters: an error quoting an input must
#: not answer with the input (a 50 MB crs came back twice in one 400)
MAX_DETAIL_CHARS = 2_000


class TooManyItems(ParameterError):
    """A JSON list in a body holds more items than the route answers at once."""


def load_json_list(raw: bytes, max_items: int, parameter: str, key: str | None = None) -> Any:
    """The JSON document of ``raw`` whose list of scalars (the document, or its member ``key``) may
    hold at most ``max_items`` items: :class:`TooManyItems` as soon as the parser passes that many.

    A list of n items has at least n - 1 commas, so a body with fewer commas than the cap is
    parsed whole and fast (orjson); only one that might hold more is parsed an item at a time,
    stopping at the cap, so a body of millions of tiny items never becomes millions of objects.
    Raises ``ValueError`` when the body is not JSON.
    """
    if raw.count(b",") < max_items:
        return orjson.loads(raw)
    text = raw.decode("utf-8")
    decoder = json.JSONDecoder()
    i = _skip(text, 0)
    if text.startswith("[", i):
        document, end = _capped_list(decoder, text, i, max_items, parameter)
    elif text.startswith("{", i) and key is not None:
        document, end = _object_with_capped_list(decoder, text, i, key, max_items, parameter)
    else:
        document, end = decoder.raw_decode(text, i)
    if _skip(text, end) != len(text):
        raise ValueError(f"extra data after the JSON document at character {end}")
    return document


_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _skip(text: str, i: int) -> int:
    return _WHITESPACE.match(text, i).end()  # type: ignore[union-attr] (always matches)


def _capped_list(decoder: json.JSONDecoder, text: str, i: int, max_items: int,
                 parameter: str) -> tuple[list[Any], int]:
    """The list starting at ``text[i] == '['`` and the index after it, refused past ``max_items``."""
    items: list[Any] = []
    i = _skip(text, i + 1)
    if text.startswith("]", i):
        return items, i + 1
    while True:
        _refuse_container(text, i, f"{parameter}.{len(items)}")
        value, i = decoder.raw_decode(text, i)
        items.append(value)
        if len(items) > max_items:
            raise TooManyItems(parameter, f"{parameter}: at most {max_items:,} items per request")
        i = _skip(text, i)
        if text.startswith("]", i):
            return items, i + 1
        if not text.startswith(",", i):
            raise ValueError(f"expected ',' or ']' at character {i}")
        i = _skip(text, i + 1)


def _refuse_container(text: str, i: int, parameter: str) -> None:
    """In a body this large only the capped list's items are read, and they are scalars: a nested
    list or object could hold millions of items of its own."""
    if text.startswith(("[", "{"), i):
        raise ParameterError(parameter, f"{parameter}: a list or object is not accepted here")


def _object_with_capped_list(decoder: json.JSONDecoder, text: str, i: int, key: str, max_items: int,
                             parameter: str) -> tuple[dict[str, Any], int]:
    """The object starting at ``text[i] == '{'``, its member ``key`` read by :func:`_capped_list`."""
    document: dict[str, Any] = {}
    i = _skip(text, i + 1)
    if text.startswith("}", i):
        return document, i + 1
    while True:
        if not text.startswith('"', i):
            raise ValueError(f"expected a member name at character {i}")
        name, i = json.decoder.scanstring(text, i + 1)
        i = _skip(text, i)
        if not text.startswith(":", i):
            raise ValueError(f"expected ':' at character {i}")
        i = _skip(text, i + 1)
        if name == key and text.startswith("[", i):
            document[name], i = _capped_list(decoder, text, i, max_items, parameter)
        else:
            _refuse_container(text, i, name)
            document[name], i = decoder.raw_decode(text, i)
        i = _skip(text, i)
        if text.startswith("}", i):
            return document, i + 1
        if not text.startswith(",", i):
            raise ValueError(f"expected ',' or '}}' at character {i}")
        i = _skip(text, i + 1)


def body_limit(method: str, path: str) -> int:
    """The largest body, in bytes, the route for ``method path`` accepts."""
    for route_method, pattern, limit in ROUTE_BODY_LIMITS:
        if method == route_method and pattern.match(path):
            return limit if limit is not None else settings().upload_max_mb * MIB
    return DEFAULT_MAX_BODY_BYTES


class BodyTooLarge(PayloadTooLargeError):
    """Raised into the app by the guarded ``receive`` when a streamed body passes its limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than this route accepts ({limit:,} bytes)")
        self.limit = limit


class BodyLimitMiddleware:
    """Refuses request bodies over the route's limit (:func:`body_limit`) with a 413, before parsing."""

    def __init__(self, app: ASGIApp, limit_for=body_limit) -> None:  # noqa: ANN001 (a function of method, path)
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            if declared <= DRAIN_MAX_BYTES:
                await _drain(receive, DRAIN_MAX_BYTES)
            await _refuse(scope, receive, send, BodyTooLarge(limit), declared)
            return

        received = 0
        exceeded: BodyTooLarge | None = None
        started = False
        # a request without a body has nothing to read; one with a body may be answered before it is read
        body_complete = not declared and not _is_chunked(scope)

        async def guarded_receive() -> Message:
            nonlocal received, exceeded, body_complete
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_complete = not message.get("more_body", False)
                if received > limit:
                    exceeded = BodyTooLarge(limit)
                    raise exceeded
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded is not None:
                return  # whatever the app made of the broken body, the answer is the 413 below
            if message["type"] == "http.response.start":
                started = True
                if not body_complete:
                    # answered without reading the body (a 401 before an upload, say): read and drop the rest
                    # first, so that a client still sending reads this answer instead of a connection reset
                    await _drain(receive, DRAIN_MAX_BYTES)
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if exceeded is None or started:
                raise
        if exceeded is not None and not started:
            if not body_complete:
                await _drain(receive, DRAIN_MAX_BYTES)
            await _refuse(scope, receive, send, exceeded, None)


def _is_chunked(scope: Scope) -> bool:
    return any(name == b"transfer-encoding" and b"chunked" in value.lower() for name, value in scope["headers"])


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _drain(receive: Receive, budget: int) -> None:
    """Read and drop what the client still sends, up to ``budget`` bytes (memory: one chunk at a time)."""
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        budget -= len(message.get("body", b""))


async def _refuse(scope: Scope, receive: Receive, send: Send, error: BodyTooLarge, declared: int | None) -> None:
    from api.problems import problem_response  # here: api.problems imports this module (MAX_DETAIL_CHARS)

    detail = str(error) + (f"; this one declares {declared:,}" if declared is not None else "")
    response = problem_response(Request(scope), error.status, error.title, detail,
                                headers={"Connection": "close"})
    await response(scope, receive, send)


class QueryTextMiddleware:
    """A query parameter whose name or value holds NUL (U+0000) is a 400 naming it, for every route at once.

    PostgreSQL text cannot hold NUL, so such a value could only end as a database error (a 500) in whichever
    route passes it on; one check in front of all routes instead of one per parameter (the fuzz test found
    it in route after route)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "\x00" in scope.get("path", ""):  # a path segment: a path parameter
            await _refuse_nul(scope, receive, send, "path")
            return
        query = scope.get("query_string") or b""
        if scope["type"] == "http" and (b"%00" in query or b"\x00" in query):
            for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True, encoding="utf-8",
                                         errors="replace"):
                if "\x00" in name or "\x00" in value:
                    await _refuse_nul(scope, receive, send, name.replace("\x00", "\\u0000"))
                    return
        await self.app(scope, receive, send)


async def _refuse_nul(scope: Scope, receive: Receive, send: Send, parameter: str) -> None:
    from api.problems import user_error_response  # here: api.problems imports this module

    error = ParameterError(parameter, f"{parameter} contains a NUL character (U+0000)")
    await user_error_response(Request(scope), error)(scope, receive, send)
