"""The errors a user can cause and fix, each with its meaning given once.

The CLI shows an error's message as-is (naming file, row, field or parameter) instead of a
traceback; the API maps it in one place (``api.problems``) to a problem document with the
error's ``status`` and ``title``, and with ``parameter`` when one request parameter is at fault.
A new error says what it means by subclassing the right class here, never by a router catching
and re-wrapping it.
"""
from __future__ import annotations

__all__ = [
    "ConflictError",
    "NotFoundError",
    "ParameterError",
    "PayloadTooLargeError",
    "UnavailableError",
    "UserError",
]


class UserError(Exception):
    """An error whose message tells the user what is wrong and what to do (HTTP 400)."""

    status: int = 400
    title: str = "Bad request"
    #: the request parameter (or input field) at fault, when there is one
    parameter: str | None = None


class ParameterError(UserError, ValueError):
    """A request parameter (``bbox``, ``filter``, ``crs`` …) is invalid; ``parameter`` names it."""

    title = "Bad request parameter"

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


class NotFoundError(UserError):
    """What the request names does not exist (a layer, a feature, a tile)."""

    status = 404
    title = "Not found"


class ConflictError(UserError):
    """The request cannot be carried out in the current state (e.g. a stale version)."""

    status = 409
    title = "Conflict"


class PayloadTooLargeError(UserError):
    """A request body or value is larger than the route accepts."""

    status = 413
    title = "Payload too large"


class UnavailableError(UserError):
    """The base cannot answer now (database down, schema not initialised): try again later."""

    status = 503
    title = "Service unavailable"
    #: seconds a client should wait before retrying
    retry_after: int = 5
