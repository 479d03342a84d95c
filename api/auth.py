"""Access control: API keys in ``X-API-Key`` or ``Authorization: Bearer …``, roles reader < loader
< admin (see :mod:`cim.apikeys`; keys are made with ``cim keys create``), and the caller's
jurisdiction (:mod:`cim.jurisdiction`): the access middleware puts every request in its caller's
scope — a key's user's, the city for a key without a user, :data:`cim.jurisdiction.PUBLIC` without a
key — and row-level security in the database does the rest. A key that is presented but unknown,
revoked or of a disabled user is a 401 on every path, never a fall-back to anonymous reading.
Verified keys are kept for ``CIM_AUTH_CACHE_S`` (one SHA-256 and a dictionary look-up per request).

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

import time
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
from cim.apikeys import ApiKey, check_role, hash_key, role_allows, verify_key
from cim.errors import UserError
from cim.jurisdiction import NOBODY, PUBLIC, reset_scope, set_scope
from cim.tokens import InvalidToken, TokenVerifier, looks_like_jwt

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


class VerifiedKeys:
    """Keys verified in the last ``ttl_s`` seconds, by their SHA-256: the hot path costs one hash and a
    dictionary look-up. Unknown keys are not kept (a flood of made-up keys cannot fill memory)."""

    MAX_ENTRIES = 10_000

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, ApiKey]] = {}

    def fresh(self, key: str) -> ApiKey | None:
        """The key's record if it was verified lately (no database, no I/O: answered on the event loop), else None."""
        entry = self._entries.get(hash_key(key))
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        return None

    def get(self, engine: Engine, key: str, tokens: TokenVerifier | None = None) -> ApiKey | None:
        digest = hash_key(key)
        entry = self._entries.get(digest)
        now = time.monotonic()
        if entry is not None and entry[0] > now:
            return entry[1]
        until = now + self.ttl_s
        if tokens is not None and looks_like_jwt(key):
            caller = tokens.verify(key, engine)  # InvalidToken: a 401, by the caller
            record: ApiKey | None = ApiKey(id=0, name=caller.scope.user, role=caller.key_role, created_at=None,
                                           revoked_at=None, token_scope=caller.scope)
            until = min(until, now + caller.expires_at - time.time())  # never kept past its expiry
        else:
            with engine.connect() as conn:
                record = verify_key(conn, key)
        if record is None:
            self._entries.pop(digest, None)
        elif until > now:
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
            self._entries[digest] = (until, record)
        return record


def _token_verifier(state: Any) -> TokenVerifier | None:
    deployment = state.deployment
    if not (deployment.jwt_issuer and deployment.jwt_jwks_url):
        return None
    verifier = state.token_verifier
    if verifier is None:
        verifier = state.token_verifier = TokenVerifier(deployment.jwt_issuer, deployment.jwt_jwks_url,
                                                        deployment.jwt_audience)
    return verifier


def lookup_key(state: Any, key: str) -> ApiKey | None:
    """The caller of an API key or (when the deployment accepts them) a bearer JWT, or None when unknown;
    a JWT that cannot be accepted raises :class:`cim.tokens.InvalidToken`."""
    cache = state.verified_keys
    if cache is None:
        cache = state.verified_keys = VerifiedKeys(state.deployment.auth_cache_s)
    return cache.get(state.engine, key, _token_verifier(state))


def _unauthorized(detail: str, challenge: dict[str, str]) -> Problem:
    return Problem(401, "Unauthorized", detail, headers=challenge)


def authenticate(state: Any, key: str | None) -> ApiKey:
    """The key's record, or a 401 problem when it is missing, unknown, revoked or its user disabled
    (``state``: the app's :class:`api.deps.AppState`)."""
    if key is None:
        raise _unauthorized("an API key is required: send it as 'X-API-Key: <key>' or "
                            "'Authorization: Bearer <key>' (create one with 'cim keys create')", CHALLENGE)
    try:
        record = lookup_key(state, key)
    except InvalidToken as exc:
        raise _unauthorized(str(exc), CHALLENGE_INVALID) from None
    if record is None:
        raise _unauthorized("the API key is unknown or revoked, or its user is disabled", CHALLENGE_INVALID)
    return record


async def authenticate_async(state: Any, key: str | None) -> ApiKey:
    """:func:`authenticate` from the event loop: a key verified lately is answered there (a hash and a dictionary
    look-up), only one that needs the database (or a token verifier) goes to a worker thread: a thread hop
    costs far more CPU than that check, and a request with a key made two (the access middleware, then the
    route's key dependency)."""
    cache = state.verified_keys
    if key is not None and cache is not None:
        record = cache.fresh(key)
        if record is not None:
            return record
    return await run_in_threadpool(authenticate, state, key)


def require_role(role: str) -> Callable[..., ApiKey]:
    """A FastAPI dependency admitting keys of at least ``role``; it returns the key's record."""
    check_role(role)

    async def dependency(request: Request,
                         x_api_key: str | None = Security(_api_key_header),
                         bearer: HTTPAuthorizationCredentials | None = Security(_bearer)) -> ApiKey:
        key = key_from_headers(x_api_key, f"Bearer {bearer.credentials}" if bearer else None)
        record = await authenticate_async(request.app.state.cim, key)
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
                record = await authenticate_async(request.app.state.cim, key)
                if not role_allows(record.role, role):
                    raise _forbidden(role, record)
                return await handler(request)

            return key_checked

    return KeyFirstRoute


def _is_open(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in OPEN_PATHS)


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


class ReadAccessMiddleware:
    """Puts every request in its caller's jurisdiction (a context variable the database hook reads), and
    when reading needs a key, refuses requests without one but on the open paths (plain ASGI: no
    per-request task and stream as with BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cim_app = scope.get("app")
        state = cim_app.state.cim
        request = Request(scope)
        key = key_from_headers(request.headers.get("x-api-key"), request.headers.get("authorization"))
        caller = PUBLIC
        required = state.deployment.api_read_key_required and scope["method"] != "OPTIONS"
        if not _is_open(scope["path"]) and (key is not None or required):
            try:
                record = await authenticate_async(state, key)
            except Problem as exc:  # middleware runs outside the exception handlers: answer directly
                response = problem_response(request, exc.status, exc.title, exc.detail, headers=exc.headers)
                await response(scope, receive, send)
                return
            except UserError as exc:  # the keys cannot be checked while the database is down
                if required:  # a 503: nothing may be answered without a checked key
                    await user_error_response(request, exc)(scope, receive, send)
                    return
                # reading is open and what needs no database may still be answered; whatever does
                # reads as nobody (never as the public: the key may be narrower), and 503s anyway now
                caller = NOBODY
            else:
                scope.setdefault("state", {})["api_key"] = record
                caller = record.scope()
        token = set_scope(caller.with_request(_client(scope), f"{scope['method']} {scope['path']}"))
        try:
            await self.app(scope, receive, send)
        finally:
            reset_scope(token)
