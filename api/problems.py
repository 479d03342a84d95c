"""RFC 7807 problem documents for every error the API returns: never a bare 500 or an HTML page."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from api.limits import MAX_DETAIL_CHARS
from api.responses import OrjsonResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cim.errors import NotFoundError, ParameterError, UnavailableError, UserError

log = logging.getLogger("cim.api")
PROBLEM = "application/problem+json"


class Problem(Exception):
    """An HTTP-only answer that no core error stands for (401 and 403 of access control). Everything
    else is a :class:`cim.errors.UserError`, mapped by its own ``status``/``title``/``parameter``."""

    def __init__(self, status: int, title: str, detail: str, parameter: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.parameter, self.headers = status, title, detail, parameter, headers


def bad_parameter(parameter: str, detail: str) -> ParameterError:
    """A route's own check of a parameter: the same error the core raises, so one mapping words both."""
    return ParameterError(parameter, detail)


def not_found(detail: str) -> NotFoundError:
    return NotFoundError(detail)


def user_error_response(request: Request, exc: UserError) -> OrjsonResponse:
    """The one mapping of a core error to a problem document: its status, title and parameter as it
    declares them (:mod:`cim.errors`); a 503 also says when to retry."""
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, UnavailableError) else None
    return problem_response(request, exc.status, exc.title, str(exc), exc.parameter, headers)


ErrorRenderer = Callable[[int, str, str, "str | None", "dict[str, str] | None"], OrjsonResponse]


@dataclass(frozen=True)
class ErrorFormat:
    """How errors are written under a path prefix, for a facade whose standard has its own error
    format (Open311's ``[{"code": …, "description": …}]``); the status still comes from the one
    mapping here. ``media_type`` and ``schema`` (a JSON schema of the body, named ``schema_name`` in
    the OpenAPI components) let :mod:`api.openapi_errors` document the answers as they are written."""

    render: ErrorRenderer
    media_type: str
    schema_name: str
    schema: dict[str, Any]


#: path prefix → its error format
_ERROR_FORMATS: dict[str, ErrorFormat] = {}


def register_error_format(path_prefix: str, error_format: ErrorFormat) -> None:
    _ERROR_FORMATS[path_prefix] = error_format


def error_format_for(path: str) -> ErrorFormat | None:
    """The error format of the routes under ``path``, or None for the problem document."""
    for prefix, error_format in _ERROR_FORMATS.items():
        if path.startswith(prefix):
            return error_format
    return None


def problem_response(request: Request, status: int, title: str, detail: str, parameter: str | None = None,
              headers: dict[str, str] | None = None) -> OrjsonResponse:
    if len(detail) > MAX_DETAIL_CHARS:  # a message quoting a huge input must not become a huge answer
        detail = f"{detail[:MAX_DETAIL_CHARS]}… (cut at {MAX_DETAIL_CHARS:,} characters)"
    error_format = error_format_for(request.url.path)
    if error_format is not None:
        return error_format.render(status, title, detail, parameter, headers)
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail,
            "instance": str(request.url.path)}
    if parameter:
        body["parameter"] = parameter
    return OrjsonResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem):
        return problem_response(request, exc.status, exc.title, exc.detail, exc.parameter, exc.headers)

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError):
        return user_error_response(request, exc)

    @app.exception_handler(sa.exc.TimeoutError)
    async def _pool_exhausted(request: Request, exc: sa.exc.TimeoutError):
        # The pool raises this on checkout, outside any statement, so the engines' error listeners
        # (cim.database) never see it: every pooled connection stayed busy for CIM_DB_POOL_TIMEOUT_S.
        busy = UnavailableError("every database connection of this server is busy; try again in a moment")
        return user_error_response(request, busy)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", []) if p not in ("query", "path", "body", "header")]
        parameter = ".".join(loc) or None
        detail = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', [])[1:]) or 'request'}: {e.get('msg')}"
                           for e in errors)
        return problem_response(request, 400, "Bad request parameter", detail, parameter)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return problem_response(request, exc.status_code, str(exc.detail) if exc.status_code != 404 else "Not found",
                         str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return problem_response(request, 500, "Internal server error",
                         "the server could not answer this request; it has been logged")
