"""The scenario's case class (E95 群租, E9501 疑似群租整治 → the street's 平安办) from its data files,
added to the case loop's catalogue through :func:`cases.catalogue.ensure_extension`."""
from __future__ import annotations

from importlib import resources

from sqlalchemy.engine import Connection

from cases.catalogue import ensure_extension

RENTAL_CLASS = "E9501"


def _data(name: str) -> str:
    return resources.files("scenarios.group_rental.data").joinpath(name).read_text(encoding="utf-8")


def ensure_catalogue(conn: Connection) -> None:
    ensure_extension(conn, "scenarios.group_rental", _data("case_classes.csv"), _data("department_kinds.csv"))
