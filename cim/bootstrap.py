"""``cim init``: bring a database to the current schema and seed its code lists — idempotently.

The storage CRS is chosen once. A second ``cim init`` with the same (or no) ``--srid`` changes
nothing; with a different one it refuses, because reprojecting a live base is a migration of
its own, not a flag.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

if TYPE_CHECKING:
    from alembic.config import Config

from cim.config import DEFAULT_FLOOR_HEIGHT_M, DEFAULT_STORAGE_SRID, settings as deployment_settings
from cim.distribution import distribute
from cim.errors import UnavailableError, UserError
from cim.layers import LAYERS

MIGRATIONS = Path(__file__).with_name("migrations")


class InitError(UserError):
    """The base cannot be initialised as asked; the message says why."""


class NotInitialisedError(InitError, UnavailableError):
    """The database has no city base yet: nothing can be answered until ``cim init`` has run (503)."""

    def __init__(self, message: str = "the city base is not initialised: run 'cim init'") -> None:
        super().__init__(message)


@dataclass(frozen=True)
class BaseSettings:
    """The settings of one city base, stored in it at ``cim init`` (not the deployment's, see
    :mod:`cim.config`): storage CRS, city extent and name, floor height."""

    srid: int
    city_bbox_wgs84: tuple[float, float, float, float]
    floor_height_m: float
    city_name: str


# alembic is imported where it is used: every `cim` command imports this module, few migrate (0.3 s of CPU)
def _alembic_config(connection: Connection, srid: int) -> "Config":
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    cfg.attributes["srid"] = srid
    return cfg


def stored_settings(conn: Connection) -> BaseSettings | None:
    """The settings written at ``cim init``, or None for an uninitialised database."""
    if not sa.inspect(conn).has_table("cim_settings"):
        return None
    rows = dict(conn.execute(sa.text("SELECT key, value FROM cim_settings")).all())
    if "srid" not in rows:
        return None
    defaults = deployment_settings()  # for a base initialised before a setting was stored
    return BaseSettings(
        srid=int(rows["srid"]),
        city_bbox_wgs84=tuple(rows.get("city_bbox_wgs84", defaults.city_bbox_wgs84)),  # type: ignore[arg-type]
        floor_height_m=float(rows.get("floor_height_m", DEFAULT_FLOOR_HEIGHT_M)),
        city_name=str(rows.get("city_name", defaults.city_name)),
    )


def load_settings(engine: Engine) -> BaseSettings:
    with engine.connect() as conn:
        settings = stored_settings(conn)
    if settings is None:
        raise NotInitialisedError()
    return settings


def _check_srid(srid: int) -> None:
    from cim.crs import CrsError, check_storage_crs

    try:
        check_storage_crs(srid)
    except CrsError as exc:
        raise InitError(str(exc)) from exc


def current_revision(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head()  # type: ignore[return-value]


def initialise(engine: Engine, srid: int | None = None,
               city_bbox_wgs84: tuple[float, float, float, float] | None = None,
               floor_height_m: float | None = None, city_name: str | None = None) -> tuple[BaseSettings, list[str]]:
    """Upgrade to head and seed; returns the settings in force and what was changed. City extent and
    name not given keep the base's, or for a new base are the deployment's defaults (``CIM_CITY_*``)."""
    changes: list[str] = []
    with engine.begin() as conn:
        # one init at a time: two concurrent `cim init` must not both create the tables
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(4549001)"))
        existing = stored_settings(conn)
        if existing and srid is not None and srid != existing.srid:
            raise InitError(
                f"the base was initialised with storage CRS EPSG:{existing.srid}; it cannot change to "
                f"EPSG:{srid} (reset the database or use another one)"
            )
        chosen_srid = existing.srid if existing else (srid or DEFAULT_STORAGE_SRID)
        _check_srid(chosen_srid)
        before = current_revision(conn)
        from alembic import command

        command.upgrade(_alembic_config(conn, chosen_srid), "head")
        after = current_revision(conn)
        if before != after:
            changes.append(f"schema {before or 'empty'} -> {after}")
        # on a Citus coordinator: reference and distributed tables (a no-op on a single node)
        changes += distribute(conn)
        defaults = deployment_settings()
        if city_name is not None and not city_name.strip():
            raise InitError("the city name must not be empty")
        wanted = {
            "srid": chosen_srid,
            "city_bbox_wgs84": list(city_bbox_wgs84 or (existing.city_bbox_wgs84 if existing
                                                        else defaults.city_bbox_wgs84)),
            "floor_height_m": floor_height_m or (existing.floor_height_m if existing else DEFAULT_FLOOR_HEIGHT_M),
            "city_name": (city_name or "").strip() or (existing.city_name if existing else defaults.city_name),
        }
        for key, value in wanted.items():
            res = conn.execute(sa.text(
                "INSERT INTO cim_settings(key, value) VALUES (:k, CAST(:v AS jsonb)) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value "
                "WHERE cim_settings.value IS DISTINCT FROM EXCLUDED.value"), {"k": key, "v": json.dumps(value)})
            if res.rowcount:
                changes.append(f"setting {key} = {value}")
        changes += _seed(conn)
        # PostGIS's high cost estimates push ordinary lookups over PostgreSQL's JIT threshold, and JIT
        # compilation then costs more than the query (measured: ~1 s on a 10,000-point grid lookup)
        jit_off = conn.execute(sa.text(
            "SELECT EXISTS (SELECT 1 FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
            "WHERE d.datname = current_database() AND s.setrole = 0 AND 'jit=off' = ANY(s.setconfig))")).scalar()
        if not jit_off:
            name = conn.execute(sa.text("SELECT current_database()")).scalar()
            conn.execute(sa.text(f'ALTER DATABASE "{name}" SET jit = off'))
            changes.append("jit = off for this database")
        settings = stored_settings(conn)
    assert settings is not None
    return settings, changes


def _read_csv(name: str) -> list[dict[str, str]]:
    text = resources.files("cim.data").joinpath(name).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


def _seed(conn: Connection) -> list[str]:
    changes: list[str] = []
    classes = _read_csv("part_classes.csv")
    n = 0
    for row in sorted(classes, key=lambda r: len(r["code"])):  # classes before subclasses
        n += conn.execute(sa.text(
            "INSERT INTO part_classes(code, name, parent_code) VALUES (:code, :name, NULLIF(:parent_code, '')) "
            "ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name, parent_code = EXCLUDED.parent_code "
            "WHERE (part_classes.name, part_classes.parent_code) IS DISTINCT FROM "
            "(EXCLUDED.name, EXCLUDED.parent_code)"), row).rowcount
    if n:
        changes.append(f"part classes: {n} written")
    renames_path = resources.files("cim.data").joinpath("admin_renames.csv")
    if renames_path.is_file():
        n = 0
        for row in _read_csv("admin_renames.csv"):
            n += conn.execute(sa.text(
                "INSERT INTO admin_aliases(alias, name, code, kind, since_year) "
                "VALUES (:old_name, :new_name, :new_code, 'historical', CAST(NULLIF(:since_year, '') AS int)) "
                "ON CONFLICT (alias) DO NOTHING"), row).rowcount
        if n:
            changes.append(f"historical admin names: {n} written")
    n = 0
    for layer in LAYERS:
        n += conn.execute(sa.text(
            "INSERT INTO layers(name, title, description, table_name, geometry_type, is_3d, queryables) "
            "VALUES (:name, :title, :description, :table, :gtype, true, CAST(:q AS jsonb)) "
            "ON CONFLICT (name) DO UPDATE SET title = EXCLUDED.title, description = EXCLUDED.description, "
            "geometry_type = EXCLUDED.geometry_type, queryables = EXCLUDED.queryables "
            "WHERE (layers.title, layers.description, layers.geometry_type, layers.queryables) IS DISTINCT FROM "
            "(EXCLUDED.title, EXCLUDED.description, EXCLUDED.geometry_type, EXCLUDED.queryables)"),
            {"name": layer.name, "title": layer.title, "description": layer.description, "table": layer.table,
             "gtype": layer.geometry_type, "q": json.dumps(layer.queryables(), ensure_ascii=False)}).rowcount
    if n:
        changes.append(f"layer registry: {n} written")
    return changes


def downgrade(engine: Engine, revision: str = "base") -> None:
    from alembic import command

    with engine.begin() as conn:
        settings = stored_settings(conn)
        command.downgrade(_alembic_config(conn, settings.srid if settings else DEFAULT_STORAGE_SRID), revision)
