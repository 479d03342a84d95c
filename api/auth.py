"""Access control: API keys in ``X-API-Key`` or ``Authorization: Bearer …``, roles reader < loader
< admin (see :mod:`cim.apikeys`; keys are made with ``cim keys create``).

- Writing: routes that change data depend on :func:`require_role` (``POST /ingest/{layer}``
  needs ``loader``). No or an unknown key → 401 with ``WWW-Authenticate``; a key whose role is
  too low → 403.
- Reading is open by default. A deployment that must not be is started with
  ``CIM_API_READ_KEY_REQUIRED=1`` (a deployment setting, read when the app is created): then every
  request needs a valid key of any role, except the operational and documentation paths in
  :data:`OPEN_PATHS`. This is one app-wide middleware (placed in ``api.app.MIDDLEWARE``), so every
  router — present or future — is covered without each route having to remember it.
"""
from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Security
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from api.problems import Problem, problem_response, user_error_response
from cim.apikeys import ApiKey, check_role, role_allows, verify_key
from cim.errors import UserError

#: the deployment setting (:class:`cim.config.DeploymentSettings`) that makes reading need a key
READ_KEY_ENV = "CIM_API_READ_KEY_REQUIRED"
#: always reachable without a key: health checks, metrics scrapes, API docs, the viewer's files
OPEN_PATHS = ("/healthz", "/metrics", "/docs", "/redoc", "/openapi.json", "/viewer")
# RFC 6750 §3: no error code when no credentials were sent, invalid_token for a bad one
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="cim"'}
CHALLENGE_INVALID = {"WWW-Authenticate": 'Bearer realm="cim", error="invalid_token"'}

# Declared as security schemes so /docs and the OpenAPI document show how to authenticate.
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="ApiKey",
                               description="An API key from 'cim keys create'.")
_bearer = HTTPBearer(auto_error=False, scheme_name="Bearer", description="The same API key as a bearer token.")


def key_from_headers(x_api_key: str | None, authorization: str | None) -> str | None:
    """The presented key: ``X-API-Key`` wins over ``Authorization: Bearer``."""
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def _lookup(engine: Engine, key: str) -> ApiKey | None:
    with engine.connect() as conn:
        return verify_key(conn, key)


def _unauthorized(detail: str, challenge: dict[str, str]) -> Problem:
    return Problem(401, "Unauthorized", detail, headers=challenge)


def authenticate(engine: Engine, key: str | None) -> ApiKey:
    """The key's record, or a 401 problem when it is missing, unknown or revoked."""
    if key is None:
        raise _unauthorized("an API key is required: send it as 'X-API-Key: <key>' or "
                            "'Authorization: Bearer <key>' (create one with 'cim keys create')", CHALLENGE)
    record = _lookup(engine, key)
    if record is None:
        raise _unauthorized("the API key is unknown or revoked", CHALLENGE_INVALID)
    return record


def require_role(role: str) -> Callable[..., ApiKey]:
    """A FastAPI dependency admitting keys of at least ``role``; it returns the key's record."""
    check_role(role)

    def dependency(request: Request,
                   x_api_key: str | None = Security(_api_key_header),
                   bearer: HTTPAuthorizationCredentials | None = Security(_bearer)) -> ApiKey:
        key = key_from_headers(x_api_key, f"Bearer {bearer.credentials}" if bearer else None)
        record = authenticate(request.app.state.cim.engine, key)
        if not role_allows(record.role, role):
            raise _forbidden(role, record)
        request.state.api_key = record
        return record

    dependency.__name__ = f"require_{role}"
    return dependency


def _forbidden(role: str, record: ApiKey) -> Problem:
    return Problem(403, "Forbidden", f"this needs a key with role {role} or higher; "
                                     f"the key presented has role {record.role}")


def key_first_route(role: str) -> type[APIRoute]:
    """A route class that checks the key (at least ``role``) before the request's body is read.

    FastAPI reads a body — for an upload, writes its files to disk — before it solves a route's
    dependencies, so :func:`require_role` alone answered an upload without a key only after
    receiving all of it. Routes that take large bodies use this class as well as the dependency.
    """
    check_role(role)

    class KeyFirstRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def key_checked(request: Request) -> Response:
                key = key_from_headers(request.headers.get("x-api-key"), request.headers.get("authorization"))
                record = await run_in_threadpool(authenticate, request.app.state.cim.engine, key)
                if not role_allows(record.role, role):
                    raise _forbidden(role, record)
                return await handler(request)

            return key_checked

    return KeyFirstRoute


def _is_open(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in OPEN_PATHS)


class ReadAccessMiddleware:
    """When reading needs a key, every request but the open paths must carry a valid one (plain ASGI: no
    per-request task and stream as with BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cim_app = scope.get("app")
        if (scope["type"] != "http" or not cim_app.state.cim.deployment.api_read_key_required
                or scope["method"] == "OPTIONS"
                or _is_open(scope["path"])):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        key = key_from_headers(request.headers.get("x-api-key"), request.headers.get("authorization"))
        try:
            record = await run_in_threadpool(authenticate, cim_app.state.cim.engine, key)
        except Problem as exc:  # middleware runs outside the exception handlers: answer directly
            response = problem_response(request, exc.status, exc.title, exc.detail, headers=exc.headers)
            await response(scope, receive, send)
            return
        except UserError as exc:  # the keys cannot be checked while the database is down: a 503
            await user_error_response(request, exc)(scope, receive, send)
            return
        scope.setdefault("state", {})["api_key"] = record
        await self.app(scope, receive, send)
