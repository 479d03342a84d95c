"""``cim scenarios flood …``: load the scenario's layers, declare a warning, respond to alarms (once or
watching), look at responses, trucks and the nearest ones to a point."""
from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any, Optional

import typer

from cim.errors import ParameterError, UserError
from cim.cli.console import print_json

flood_app = typer.Typer(help="Water-logging response (防汛): compounds, roads, pump trucks; warnings and alarms.",
                        no_args_is_help=True)
SAMPLES = Path("data_samples") / "flood"


def _brief(response: dict[str, Any]) -> str:
    s = response["summary"]
    trucks = ", ".join(f"{t['code']} {t['road_m'] if t['road_m'] is not None else t['straight_m']:.0f} m"
                       for t in s["pump_trucks"]["trucks"])
    teams = ", ".join(t["code"] for t in s.get("teams", {}).get("trucks", []))
    cases = ", ".join(f"#{c['id']} {c['class_code']}→{c['department_name'] or c['manual_reason']}" for c in s["cases"])
    return (f"response {response['id']}: {response['title']}; {len(s['compounds'])} compounds "
            f"({s['households']} households), {s['buildings']['count']} buildings, {s['addresses']['count']} "
            f"addresses, {len(s['underground_parts'])} underground parts; trucks by {response['routing']} "
            f"({s['pump_trucks']['why']}): "
            f"{trucks or 'none available'}; teams: {teams or 'none available'}; cases: {cases}")


def _show(response: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(response)
    else:
        typer.echo(_brief(response))


@flood_app.command("load")
def load(layer: str = typer.Argument(..., help="roads | compounds | points | resource-devices | resources"),
         path: Path = typer.Argument(..., help="The file (GeoJSON, Shapefile, GeoPackage, … or CSV with lon/lat)."),
         crs: Optional[str] = typer.Option(None, help="The file's CRS when it declares none (e.g. EPSG:4326).")) -> None:
    """Load one of the scenario's layers (roads replace the network; the rest are upserts by key)."""
    from cim.database import get_engine
    from scenarios.flood.loaders import load_layer
    from scenarios.flood.setup import ensure_scenario

    engine = get_engine()
    with engine.begin() as conn:
        ensure_scenario(conn)
    print_json(load_layer(engine, layer, path, crs))


@flood_app.command("load-samples")
def load_samples(directory: Path = typer.Option(SAMPLES, help="Folder with the scenario's manifest.json.")) -> None:
    """The sample city's roads, compounds, points, trucks and teams (data_samples/flood)."""
    from cim.database import get_engine
    from scenarios.flood.loaders import load_layer
    from scenarios.flood.setup import ensure_scenario

    manifest = directory / "manifest.json"
    if not manifest.exists():
        raise UserError(f"{manifest}: not found (run from the project root or pass --directory)")
    engine = get_engine()
    with engine.begin() as conn:
        typer.echo(json.dumps(ensure_scenario(conn)))
    for entry in json.loads(manifest.read_text(encoding="utf-8")):
        report = load_layer(engine, entry["layer"], directory / entry["path"], entry.get("crs"))
        typer.echo(json.dumps({k: v for k, v in report.items() if not isinstance(v, (list, dict))},
                              ensure_ascii=False, default=str))


@flood_app.command("warn")
def warn(area: Optional[str] = typer.Option(None, help="LEVEL:CODE, e.g. street:310104003 (district, street, "
                                                      "community, grid)."),
         polygon: Optional[Path] = typer.Option(None, help="A GeoJSON file: a Polygon/MultiPolygon geometry, "
                                                           "Feature or one-feature FeatureCollection."),
         lon: Optional[float] = typer.Option(None, help="A point (x in --crs): the area is a circle around it."),
         lat: Optional[float] = typer.Option(None, help="The point's y."),
         radius: float = typer.Option(300.0, help="The circle's radius (m)."),
         crs: str = typer.Option("EPSG:4326", help="CRS of the point or polygon (x first)."),
         level: Optional[str] = typer.Option(None, help="The warning's level, e.g. 暴雨橙色."),
         title: Optional[str] = typer.Option(None, help="A title for the response."),
         k: int = typer.Option(5, help="How many pump trucks to send."),
         as_json: bool = typer.Option(False, "--json", help="The whole response as JSON.")) -> None:
    """Declare a warning for an area and respond to it."""
    from cim.database import get_engine
    from scenarios.flood.response import declare_warning

    shape: str | dict | None = area
    if polygon is not None:
        if area is not None:
            raise ParameterError("polygon", "give --area or --polygon, not both")
        shape = _geometry_of(polygon)
    with get_engine().begin() as conn:
        response = declare_warning(conn, area=shape, crs=crs, lon=lon, lat=lat, radius_m=radius, level=level,
                                   title=title, k=k)
    _show(response, as_json)


def _geometry_of(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read as GeoJSON ({exc})") from None
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        features = doc.get("features") or []
        if len(features) != 1:
            raise UserError(f"{path}: a FeatureCollection of exactly one feature is needed, got {len(features)}")
        doc = features[0]
    if isinstance(doc, dict) and doc.get("type") == "Feature":
        doc = doc.get("geometry")
    if not isinstance(doc, dict):
        raise UserError(f"{path}: no GeoJSON geometry in it")
    return doc


@flood_app.command("respond")
def respond(alert: Optional[int] = typer.Option(None, help="Respond to this water-level alarm."),
            pending: bool = typer.Option(False, "--pending", help="Respond to every water-level alarm that has "
                                                                  "no response yet."),
            since_hours: float = typer.Option(24.0, help="--pending: alarms of the last this many hours."),
            k: int = typer.Option(5, help="How many pump trucks to send."),
            as_json: bool = typer.Option(False, "--json", help="The whole responses as JSON.")) -> None:
    """Respond to a water-level alarm (or all pending ones) — what `watch` does as they fire."""
    from cim.database import get_engine
    from scenarios.flood.response import respond_pending, respond_to_alarm

    if (alert is None) == (not pending):
        raise ParameterError("alert", "give --alert ID or --pending")
    engine = get_engine()
    if alert is not None:
        with engine.begin() as conn:
            responses = [respond_to_alarm(conn, alert, k)]
    else:
        responses = respond_pending(engine, since_hours, k)
    if as_json:
        print_json(responses)
        return
    for r in responses:
        typer.echo(_brief(r))
    typer.echo(f"{len(responses)} response(s)")


@flood_app.command("watch")
def watch(sweep_every: float = typer.Option(30.0, help="Also look for unanswered alarms this often (s)."),
          k: int = typer.Option(5, help="How many pump trucks to send.")) -> None:
    """Respond to water-level alarms as they fire (LISTEN on the alerts), until Ctrl-C or SIGTERM."""
    from cim.database import get_engine
    from scenarios.flood.watch import watch as run

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    made = run(get_engine(), stop, lambda r: typer.echo(_brief(r)), sweep_every_s=sweep_every, k=k,
               on_listening=lambda: typer.echo("watching water-level alarms", err=True))
    typer.echo(f"{made} response(s)")


@flood_app.command("show")
def show(response_id: int = typer.Argument(...), as_json: bool = typer.Option(False, "--json")) -> None:
    """One response."""
    from cim.database import get_engine
    from scenarios.flood.response import get_response

    with get_engine().connect() as conn:
        _show(get_response(conn, response_id), as_json)


@flood_app.command("list")
def list_(active: bool = typer.Option(False, "--active", help="Only responses not closed.")) -> None:
    """Responses, newest first."""
    from cim.database import get_engine
    from scenarios.flood.response import list_responses

    with get_engine().connect() as conn:
        for r in list_responses(conn, True if active else None):
            typer.echo(f"{r['id']}\t{r['created_at']:%Y-%m-%d %H:%M}\t{r['trigger']}\t{r['title']}\t"
                       f"{r['compounds']} compounds\tcases {r['case_ids']}\t{'closed' if r['closed_at'] else 'open'}")


@flood_app.command("close")
def close(response_id: int = typer.Argument(...)) -> None:
    """Close a response: its trucks are available again."""
    from cim.database import get_engine
    from scenarios.flood.response import close_response

    with get_engine().begin() as conn:
        close_response(conn, response_id)
    typer.echo(f"response {response_id} closed")


@flood_app.command("nearest")
def nearest(lon: float = typer.Option(...), lat: float = typer.Option(...),
            crs: str = typer.Option("EPSG:4326", help="CRS of the point (x first)."),
            k: int = typer.Option(5), kind: str = typer.Option("pump_truck", help="pump_truck | team")) -> None:
    """The k nearest available trucks (or teams) to a point, by road when roads are loaded."""
    from cim.bootstrap import stored_settings
    from cim.database import get_engine
    from cim.spatial import to_storage
    from scenarios.flood.routing import nearest_trucks

    with get_engine().connect() as conn:
        x, y = to_storage([lon], [lat], crs, stored_settings(conn).srid)
        print_json(nearest_trucks(conn, float(x[0]), float(y[0]), k, kind))


@flood_app.command("resources")
def resources() -> None:
    """Pump trucks and teams: status and latest GPS fix."""
    from cim.database import get_engine
    from scenarios.flood.routing import resources as all_resources

    with get_engine().connect() as conn:
        for r in all_resources(conn):
            where = f"{r['lon']:.6f},{r['lat']:.6f} at {r['fix_time']:%H:%M:%S}" if r["lon"] is not None else "no fix"
            typer.echo(f"{r['code']}\t{r['kind']}\t{r['name']}\t{r['status']}\t{where}")


def register(scenarios_app: typer.Typer) -> None:
    scenarios_app.add_typer(flood_app, name="flood")
