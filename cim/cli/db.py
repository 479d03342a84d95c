"""``cim db up|down|status|url|reset`` and ``cim init``."""
from __future__ import annotations

from typing import Optional

import sqlalchemy as sa
import typer

from cim.cli.console import console
from cim.config import database_target
from cim.errors import UserError

db_app = typer.Typer(help="The embedded PostgreSQL + PostGIS cluster (or CIM_DATABASE_URL).", no_args_is_help=True)


@db_app.command("up")
def up(workers: Optional[int] = typer.Option(
        None, "--workers", min=1,
        help="Start a Citus cluster instead: a coordinator and N worker nodes on loopback (see docs/citus.md); "
             "a Citus cluster made earlier restarts with its workers without this option.")) -> None:
    """Create (first time) and start the embedded cluster under $CIM_HOME."""
    from cim.citus import CitusCluster
    from cim.cluster import Cluster
    from cim.config import cim_home

    if database_target().is_external:
        console.print("CIM_DATABASE_URL is set: using that server; nothing to start")
        return
    citus = CitusCluster.existing(cim_home())
    if workers is not None or citus is not None:
        citus = CitusCluster(cim_home(), workers or citus.workers)  # type: ignore[union-attr]
        url = citus.up()
        console.print(f"Citus cluster up: coordinator {_redact(url)}, {citus.workers} worker(s)")
        return
    url = Cluster.default().up()
    console.print(f"embedded PostGIS cluster up: {_redact(url)}")


@db_app.command("down")
def down() -> None:
    """Stop the embedded cluster (data is kept); a Citus cluster's workers too."""
    from cim.citus import CitusCluster
    from cim.cluster import Cluster
    from cim.config import cim_home

    citus = CitusCluster.existing(cim_home())
    (citus or Cluster.default()).down()
    console.print("embedded cluster stopped" + (f" (coordinator and {citus.workers} workers)" if citus else ""))


@db_app.command("reset")
def reset(yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation.")) -> None:
    """Throw away the embedded cluster's data and start an empty one."""
    from cim.cluster import Cluster

    if database_target().is_external:
        raise UserError("CIM_DATABASE_URL is set: 'cim db reset' only resets the embedded cluster")
    if not yes:
        typer.confirm("Delete all data in the embedded cluster?", abort=True)
    from cim.citus import CitusCluster
    from cim.config import cim_home

    url = (CitusCluster.existing(cim_home()) or Cluster.default()).reset()
    console.print(f"embedded cluster reset: {_redact(url)}")


@db_app.command("url")
def url() -> None:
    """Print the database URL (with password) for psql, QGIS, ogr2ogr."""
    from cim.database import database_url

    typer.echo(database_url())


@db_app.command("status")
def status() -> None:
    """Server, PostgreSQL and PostGIS versions, schema revision, storage CRS, feature counts."""
    from cim.bootstrap import current_revision, head_revision, stored_settings
    from cim.database import DatabaseUnavailableError, get_engine
    from cim.distribution import citus_nodes

    engine = get_engine()
    try:
        with engine.connect() as conn:
            pg = conn.execute(sa.text("SHOW server_version")).scalar()
            postgis = conn.execute(sa.text(
                "SELECT extversion FROM pg_extension WHERE extname = 'postgis'")).scalar()
            revision = current_revision(conn)
            nodes = citus_nodes(conn)
            settings = stored_settings(conn)
            counts = {}
            if settings:
                for name, table in conn.execute(sa.text("SELECT name, table_name FROM layers ORDER BY name")):
                    counts[name] = conn.execute(sa.text(
                        f'SELECT count(*) FROM "{table}" WHERE valid_to IS NULL')).scalar()
    except (sa.exc.OperationalError, DatabaseUnavailableError) as exc:
        from cim.database import DatabaseError

        cause = getattr(exc, "orig", None) or exc  # the engine words a failed connect as DatabaseUnavailableError
        raise DatabaseError(f"database not reachable ({cause}); run 'cim db up'") from exc
    where = "CIM_DATABASE_URL" if database_target().is_external else "embedded cluster"
    console.print(f"server: {where}  PostgreSQL {pg}")
    for node in nodes:  # a Citus coordinator: its nodes and the shard placements each holds
        console.print(f"  citus {node.role:<11} {node.host}:{node.port}  "
                      f"{'active' if node.active else 'INACTIVE'}  {node.shards} shards")
    console.print(f"PostGIS: {postgis or 'not installed in this database (run cim init)'}")
    console.print(f"schema: {revision or 'empty (run cim init)'} (head {head_revision()})")
    if settings:
        console.print(f"storage CRS: EPSG:{settings.srid}; city extent (WGS84): {settings.city_bbox_wgs84}")
        for name, n in counts.items():
            console.print(f"  {name:<14} {n:>10,}")


def init(
    srid: Optional[int] = typer.Option(None, help="Storage CRS (EPSG code of a metric projected CRS); "
                                                   "default 4549, fixed after the first init."),
    bbox: Optional[str] = typer.Option(None, help="City extent in WGS84 'minlon,minlat,maxlon,maxlat' "
                                                  "(default: CIM_CITY_BBOX_WGS84, Shanghai)."),
    city_name: Optional[str] = typer.Option(None, "--city-name", help="The city's name as written in front of "
                                                                      "addresses (default: CIM_CITY_NAME, 上海市)."),
    floor_height: Optional[float] = typer.Option(None, help="Metres per floor when a building has floors but "
                                                            "no height (default 3.0)."),
) -> None:
    """Create or upgrade the schema and seed code lists (idempotent)."""
    from cim.bootstrap import InitError, initialise
    from cim.database import get_engine

    city_bbox = None
    if bbox:
        try:
            parts = tuple(float(v) for v in bbox.split(","))
        except ValueError:
            parts = ()
        if len(parts) != 4 or not (parts[0] < parts[2] and parts[1] < parts[3]):
            raise InitError(f"--bbox must be 'minlon,minlat,maxlon,maxlat' with min < max, got {bbox!r}")
        city_bbox = parts  # type: ignore[assignment]
    settings, changes = initialise(get_engine(), srid=srid, city_bbox_wgs84=city_bbox, floor_height_m=floor_height,
                                   city_name=city_name)
    for change in changes:
        console.print(f"  {change}")
    console.print(f"city base ready: storage CRS EPSG:{settings.srid}"
                  + ("" if changes else " (nothing to change)"))


def _redact(url: str) -> str:
    import re

    return re.sub(r"://([^:]+):[^@]+@", r"://\1:***@", url)


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
    app.command("init")(init)
