"""Text files handed over by a user (catalogues, calendars, hotline exports): one way to read them."""
from __future__ import annotations

from pathlib import Path

from cim.errors import UserError


def read_text_file(path: Path) -> str:
    """A UTF-8 (optionally BOM-marked) text file handed over by a user, or one clear error naming it."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
