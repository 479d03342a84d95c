"""The errors of CRS handling: a CRS that cannot be used, and coordinates outside the city."""
from __future__ import annotations

import math

from cim.errors import UserError

__all__ = ["CrsError", "ExtentError"]


class CrsError(UserError, ValueError):
    """A CRS that cannot be resolved or is unfit for the purpose asked."""


class ExtentError(UserError, ValueError):
    """Coordinates do not fall where the city is; ``cause``/``suggestions`` say why, if known."""

    def __init__(
        self,
        message: str,
        *,
        cause: str | None = None,
        suggestions: tuple[str, ...] = (),
        n_outside: int = 0,
        n_total: int = 0,
        median: tuple[float, float] = (math.nan, math.nan),
    ) -> None:
        super().__init__(message)
        self.cause = cause
        self.suggestions = suggestions
        self.n_outside = n_outside
        self.n_total = n_total
        self.median = median

