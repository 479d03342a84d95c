"""``cim scenarios curtain-wall …``: load the dossiers, rank, list what is overdue, push inspections,
record their outcomes, report the precision; ``model`` checks and shows a scoring file, ``feed`` writes
the sample city's synthetic dossiers."""
from __future__ import annotations

import getpass
from pathlib import Path

import typer

from cim.config import settings
from cim.errors import ParameterError
from cim.cli.console import print_json
from cim.database import get_engine

from scenarios.curtain_wall.days import as_of_day

app = typer.Typer(help="Glass curtain-wall risk (玻璃幕墙): 一楼一档 records, a versioned scoring model with reasons, "
                       "the 沪府令77号 inspection schedule, inspection cases pushed through the case loop.",
                  no_args_is_help=True)

AS_OF_HELP = "Score as of this day (YYYY-MM-DD); default today (UTC)."
MODEL_HELP = "A scoring file (TOML) instead of the packaged model."


def _model(path: Path | None):
    from scenarios.curtain_wall.model import load_model

    return load_model(path)


def _operator() -> str:
    return settings().operator or getpass.getuser()


@app.command("load")
def load(path: Path = typer.Argument(..., help="CSV or GeoJSON of dossiers, one per building (see docs/scenarios.md)."),
         replace: bool = typer.Option(False, "--replace", help="Also remove dossiers of buildings not in the file."),
         as_json: bool = typer.Option(False, "--json")) -> None:
    """Load curtain-wall records; the whole file is checked first and a bad row refuses it (line and field named)."""
    from scenarios.curtain_wall.records import load_records

    with get_engine().begin() as conn:
        report = load_records(conn, path, replace=replace)
    if as_json:
        print_json(report.as_dict())
    else:
        typer.echo(f"{report.file}: {report.read} dossiers read, {report.inserted} new, {report.updated} updated, "
                   f"{report.removed} removed")


@app.command("rank")
def rank(top: int = typer.Option(20, min=1, help="How many buildings to list."),
         as_of: str | None = typer.Option(None, help=AS_OF_HELP),
         risk_class: str | None = typer.Option(None, "--class", help="Only high, medium or low."),
         model_path: Path | None = typer.Option(None, "--model", help=MODEL_HELP),
         as_json: bool = typer.Option(False, "--json", help="Every listed building with all its reasons.")) -> None:
    """Buildings by risk of glass breakage, each with its score, confidence and reasons."""
    from scenarios.curtain_wall.scoring import RISK_CLASSES, rank_buildings

    if risk_class is not None and risk_class not in RISK_CLASSES:
        raise ParameterError("class", f"--class: {risk_class!r} is not one of {', '.join(RISK_CLASSES)}")
    model, day = _model(model_path), as_of_day(as_of)
    with get_engine().connect() as conn:
        ranking = rank_buildings(conn, model, day)
    rows = ranking.rows(top, risk_class=risk_class)
    if as_json:
        print_json({"as_of": day.isoformat(), "model_version": model.version, "total": len(ranking.score),
                    "counts": ranking.counts(), "buildings": rows})
        return
    typer.echo(f"model {model.version}, as of {day}: {len(ranking.score)} buildings — {ranking.counts()}")
    for r in rows:
        top_reasons = ", ".join(f"{x['factor']}={x['value']} +{x['contribution']:g}"
                                for x in r["reasons"] if not x["missing"] and x["contribution"] > 0)
        unknown = [x["factor"] for x in r["reasons"] if x["missing"]]
        typer.echo(f"{r['rank']:>4}  {r['building']}  {r['score']:6.2f}  {r['risk_class']:<6} conf {r['confidence']:.2f}"
                   f"  {r['name'] or ''}  grid {r['grid_code']}\n        {top_reasons}"
                   + (f"\n        unknown: {', '.join(unknown)}" if unknown else ""))


@app.command("overdue")
def overdue(as_of: str | None = typer.Option(None, help=AS_OF_HELP),
            model_path: Path | None = typer.Option(None, "--model", help=MODEL_HELP),
            as_json: bool = typer.Option(False, "--json")) -> None:
    """Inspections, sealant samplings and appraisals past their due date under 沪府令77号."""
    from scenarios.curtain_wall.service import overdue as overdue_list

    model, day = _model(model_path), as_of_day(as_of)
    with get_engine().connect() as conn:
        result = overdue_list(conn, model, day)
    if as_json:
        print_json(result)
        return
    typer.echo(f"as of {day}: {result['count']} overdue obligation(s)")
    for r in result["overdue"]:
        typer.echo(f"  {r['building']}  {r['obligation']:<16} due {r['due']}  {r['days_overdue']:>5} days late  "
                   f"{r['rule']}  (owner {r['owner'] or '?'}, grid {r['grid_code']})")
    if result["unschedulable"]:
        typer.echo(f"cannot be scheduled ({result['unschedulable_reason']}): {', '.join(result['unschedulable'])}")


@app.command("push")
def push(top: int = typer.Option(10, min=1, help="Push at most this many buildings."),
         min_score: float | None = typer.Option(None, help="Only buildings scoring at least this; default the "
                                                           "model's high threshold."),
         as_of: str | None = typer.Option(None, help=AS_OF_HELP),
         model_path: Path | None = typer.Option(None, "--model", help=MODEL_HELP),
         as_json: bool = typer.Option(False, "--json")) -> None:
    """Open inspection cases for the highest-risk buildings, dispatched to each building's grid and department."""
    from scenarios.curtain_wall.push import push_top

    model, day = _model(model_path), as_of_day(as_of)
    with get_engine().begin() as conn:
        report = push_top(conn, model, day, top, min_score)
    if as_json:
        print_json(report.as_dict())
        return
    typer.echo(f"model {report.model_version}, class {report.case_class}, score ≥ {report.min_score:g}: "
               f"{len(report.pushed)} pushed" + (f", {len(report.pending_skipped)} skipped (earlier push awaits its "
                                                  f"outcome)" if report.pending_skipped else ""))
    for p in report.pushed:
        where = p["department_name"] or f"manual queue: {p['manual_reason']}"
        typer.echo(f"  case {p['case_id']}  {p['building']}  {p['score']:6.2f}  grid {p['grid_code']} → {where}"
                   + (f" ({p['person_name']})" if p["person_name"] else ""))


@app.command("outcome")
def outcome(confirmed: bool = typer.Option(..., "--confirmed/--not-confirmed", help="What the inspection found."),
            case_id: int | None = typer.Option(None, "--case", help="The pushed case."),
            building: str | None = typer.Option(None, help="Or the building whose push awaits its outcome."),
            by: str | None = typer.Option(None, help="Who inspected; default CIM_OPERATOR or the OS user."),
            note: str | None = typer.Option(None, help="What was found."),
            as_json: bool = typer.Option(False, "--json")) -> None:
    """Record an inspection's outcome (confirmed or not) for a push; it is noted in the case's log too."""
    from scenarios.curtain_wall.push import record_outcome

    with get_engine().begin() as conn:
        result = record_outcome(conn, confirmed, by or _operator(), case_id=case_id, building=building, note=note)
    if as_json:
        print_json(result)
    else:
        typer.echo(f"push {result['id']} ({result['building']}, case {result['case_id']}): {result['outcome']}"
                   + (" (already recorded)" if result["unchanged"] else ""))


@app.command("precision")
def precision_(as_json: bool = typer.Option(False, "--json")) -> None:
    """Confirmed among inspected pushes, overall and per model version (the seed: 648 of 904)."""
    from scenarios.curtain_wall.push import precision

    with get_engine().connect() as conn:
        result = precision(conn)
    if as_json:
        print_json(result)
        return
    typer.echo(result["summary"])
    for r in result["by_model_version"]:
        typer.echo(f"  model {r['model_version']}: {r['summary']}")


@app.command("model")
def model_(model_path: Path | None = typer.Option(None, "--model", help=MODEL_HELP)) -> None:
    """Check a scoring file and show its factors, weights, bands, levels and schedule."""
    print_json(_model(model_path).describe())


@app.command("feed")
def feed(out: Path = typer.Option(Path("data_samples/scenarios/curtain_wall_records.csv"), help="Where to write."),
         samples: Path = typer.Option(Path("data_samples"), help="The sample city's folder."),
         seed: int = typer.Option(77, help="Seed of the generator.")) -> None:
    """Write the sample city's synthetic dossiers (deterministic for a seed)."""
    from scenarios.curtain_wall.feed import write_feed

    typer.echo(f"{out}: {write_feed(samples, out, seed)} dossiers")


def register(scenarios_app: typer.Typer) -> None:
    scenarios_app.add_typer(app, name="curtain-wall")
