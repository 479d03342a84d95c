"""The OpenAPI document says what the API answers when it refuses a request: a problem document.

FastAPI documents a ``422`` with its own validation-error schema for every operation that takes
parameters, but this API answers bad parameters with ``400`` and an RFC 7807 problem document
(:mod:`api.problems`), as OGC API – Features asks. Clients and contract tests (schemathesis) read
the document, so it is rewritten once, here, when it is generated: no ``422``; a ``400`` where an
operation takes parameters or a body; a ``404`` where it has path parameters; and ``default`` for
the other refusals (401, 403, 413, 503 …), all with the problem schema — or, under a path prefix
with an error format of its own (:func:`api.problems.register_error_format`, Open311's list of
``{code, description}``), with that format's media type and schema.
"""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from api.problems import error_format_for

PROBLEM_TYPE = "application/problem+json"
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "An RFC 7807 problem document.",
    "required": ["title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "parameter": {"type": "string", "description": "The request parameter at fault, when there is one."},
    },
}
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}
_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


def _problem(description: str, media_type: str = PROBLEM_TYPE, ref: dict[str, str] = _PROBLEM_REF) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": ref}}}


def document_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """Rewrite ``schema`` (an OpenAPI document, in place) as described above; returns it."""
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    for path, path_item in schema.get("paths", {}).items():
        error_format = error_format_for(path)
        media_type, ref = PROBLEM_TYPE, _PROBLEM_REF
        if error_format is not None:
            schemas[error_format.schema_name] = error_format.schema
            media_type, ref = error_format.media_type, {"$ref": f"#/components/schemas/{error_format.schema_name}"}
        for method, operation in path_item.items():
            if method not in _METHODS:
                continue
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            parameters = operation.get("parameters", [])
            if parameters or "requestBody" in operation:
                responses.setdefault("400", _problem("A parameter or the body is invalid; "
                                                     "``parameter`` names the one at fault.", media_type, ref))
            if any(p.get("in") == "path" for p in parameters):
                responses.setdefault("404", _problem("What the path names does not exist.", media_type, ref))
            responses.setdefault("default", _problem("Any other refusal: no or a wrong key (401, 403), a body "
                                                     "too large (413), the database unavailable (503, with "
                                                     "Retry-After).", media_type, ref))
    for name in _FASTAPI_VALIDATION_SCHEMAS:
        schemas.pop(name, None)
    schemas["Problem"] = PROBLEM_SCHEMA
    return schema


def install(app: FastAPI) -> None:
    """Wrap the app's OpenAPI generation (after the routers, and the 3.0 conversion, are installed)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        if "Problem" not in schema.get("components", {}).get("schemas", {}):
            document_problems(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
