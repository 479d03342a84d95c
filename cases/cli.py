"""``cim cases …``: import, list, show, act, stats, tick, and loading the class catalogue and the
working calendar. Registered by ``cim.cli.main`` by name (the core never imports this edge)."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import typer

from cim.errors import ParameterError
from cim.cli.console import print_json
from cim.database import get_engine

cases_app = typer.Typer(help="City-management cases (部件/事件): intake, dispatch, lifecycle, evaluation.",
                        no_args_is_help=True)
classes_app = typer.Typer(help="The case class catalogue (大类/小类).", no_args_is_help=True)
calendar_app = typer.Typer(help="The working calendar (holidays, make-up working days).", no_args_is_help=True)
cases_app.add_typer(classes_app, name="classes")
cases_app.add_typer(calendar_app, name="calendar")


def _time(text: str | None, name: str) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ParameterError(name, f"--{name}: {text!r} is not an ISO 8601 time") from None
    if value.tzinfo is None:
        raise ParameterError(name, f"--{name}: {text!r} needs a time zone, e.g. +08:00")
    return value


@cases_app.command("import")
def import_(path: Path = typer.Argument(..., help="CSV (header: channel,class,description,address,x,y,z,crs,"
                                                  "urgency,external_id,reporter_contact,reported_at) or JSON array."),
            now: str | None = typer.Option(None, help="Intake time (ISO 8601 with zone); default: now."),
            chunk: int = typer.Option(2000, help="Rows per transaction, at most (a killed import keeps whole chunks)."),
            one_by_one: bool = typer.Option(False, "--one-by-one",
                                            help="Take each case in alone (the slow reference path).")) -> None:
    """Take in a hotline system's export as cases (idempotent on external ids)."""
    from cases.importer import import_cases

    report = import_cases(get_engine(), path, _time(now, "now"), chunk=chunk, one_by_one=one_by_one)
    typer.echo(f"{path}: {report.read} read, {report.created} new, {report.known} already in, "
               f"{report.dispatched} dispatched by machine, {report.manual} in the manual queue")


@cases_app.command("list")
def list_(status: str | None = typer.Option(None), class_code: str | None = typer.Option(None, "--class"),
          grid: str | None = typer.Option(None), street: str | None = typer.Option(None),
          department: str | None = typer.Option(None),
          manual: bool = typer.Option(False, "--manual", help="Only the manual queue."),
          overdue: bool = typer.Option(False, "--overdue", help="Only overdue cases."),
          limit: int = typer.Option(50, min=1, max=10_000)) -> None:
    """Cases, newest first, one JSON object a line (reporter contacts masked)."""
    from cases.model import CaseFilter, list_cases

    where = CaseFilter(status=status, class_code=class_code, grid_code=grid, street_code=street,
                       department_code=department, manual=True if manual else None, overdue=True if overdue else None)
    with get_engine().connect() as conn:
        for case in list_cases(conn, where, limit=limit):
            d = case.to_dict(mask_contact=True)
            keep = ("id", "status", "class_code", "channel", "urgency", "grid_code", "department_code",
                    "person_name", "due_at", "overdue", "escalated_to", "manual_reason", "reporter_contact",
                    "description")
            typer.echo(json.dumps({k: d[k] for k in keep}, ensure_ascii=False))


@cases_app.command("show")
def show(case_id: int = typer.Argument(...)) -> None:
    """One case with its complete log."""
    from cases.attachments import attachments_of
    from cases.model import case_log, get_case

    with get_engine().connect() as conn:
        case = get_case(conn, case_id)
        print_json({"case": case.to_dict(), "log": [e.to_dict() for e in case_log(conn, case_id)],
                     "attachments": [asdict(a) for a in attachments_of(conn, case_id)]})


@cases_app.command("act")
def act_(case_id: int = typer.Argument(...), action: str = typer.Argument(..., help="register, dispatch, accept, "
                                                                           "return, handle, verify, …"),
         actor: str = typer.Option(..., help="Who acts (name or id)."),
         role: str = typer.Option(..., help="system, platform, department, supervisor or reporter."),
         note: str | None = typer.Option(None, help="Reason or evidence."),
         data: str = typer.Option("{}", help='JSON, e.g. {"passed": true} or {"hours": 8}.'),
         version: int | None = typer.Option(None, help="Act only if the case is at this version."),
         now: str | None = typer.Option(None, help="Time of the action (ISO 8601 with zone); default now.")) -> None:
    """Carry out one lifecycle action; an illegal one is refused (exit 1)."""
    from cases.lifecycle import Action, act

    try:
        payload = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ParameterError("data", f"--data: not JSON ({exc.msg})") from None
    if not isinstance(payload, dict):
        raise ParameterError("data", "--data: expected a JSON object")
    with get_engine().begin() as conn:
        case = act(conn, case_id, Action(action, actor, role, note, payload, version), _time(now, "now"))
    typer.echo(f"case {case.id}: {case.status} (version {case.version})")


@cases_app.command("attach")
def attach(case_id: int = typer.Argument(...), path: Path = typer.Argument(..., help="A JPEG, PNG, GIF or WebP photo."),
           actor: str = typer.Option(...), role: str = typer.Option(...),
           folder: Path | None = typer.Option(None, "--dir", help="Where photos are kept; default "
                                              "$CIM_CASE_ATTACHMENTS or $CIM_HOME/case-attachments.")) -> None:
    """Attach a photo to a case (stored once by its content hash; logged)."""

    from cases.attachments import add_attachment
    from cases.lifecycle import ROLES

    if role not in ROLES:
        raise ParameterError("role", f"--role: {role!r} is not one of {', '.join(ROLES)}")
    if folder is None:
        from cases.attachments import default_root

        folder = default_root()
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise ParameterError("path", f"{path}: no such file") from None
    with get_engine().begin() as conn:
        att = add_attachment(conn, case_id, content, folder, actor, role)
    typer.echo(f"case {case_id}: {att.media_type}, {att.size_bytes} bytes, {att.path}")


@cases_app.command("stats")
def stats(by: str = typer.Option("department", help="department, district, street, grid or person."),
          start: str = typer.Option(..., "--from", help="Period start, ISO 8601 with zone."),
          end: str = typer.Option(..., "--to", help="Period end (exclusive)."),
          out: Path | None = typer.Option(None, "--csv", help="Write CSV here instead of JSON lines.")) -> None:
    """Evaluation indicators (综合评价) per unit for cases registered in the period."""
    from cases.evaluation import evaluate, to_csv

    with get_engine().connect() as conn:
        rows = evaluate(conn, by, _time(start, "from"), _time(end, "to"))  # type: ignore[arg-type]
    if out is None:
        for r in rows:
            typer.echo(json.dumps(asdict(r), ensure_ascii=False))
        return
    out.write_text(to_csv(rows), encoding="utf-8")
    typer.echo(f"{out}: {len(rows)} rows", err=True)


@cases_app.command("simulate")
def simulate_(days: int = typer.Option(1, min=1, help="Days to simulate."),
              seed: int = typer.Option(1, help="Random seed: the same seed on the same base gives the same run."),
              per_day: int = typer.Option(200, "--per-day", min=1, help="Reports per day."),
              start: str | None = typer.Option(None, help="First day (YYYY-MM-DD, local time); default: "
                                                          "DAYS days before today.")) -> None:
    """A realistic synthetic stream over the loaded city, run through the whole lifecycle by
    simulated handlers (for the demo and the benchmark)."""
    from datetime import date

    from cases.simulate import simulate

    first = None
    if start is not None:
        try:
            first = date.fromisoformat(start)
        except ValueError:
            raise ParameterError("start", f"--start: {start!r} is not a date (YYYY-MM-DD)") from None
    report = simulate(get_engine(), days, seed, first, per_day)
    print_json(report.as_dict())


@cases_app.command("tick")
def tick_(now: str | None = typer.Option(None, help="Time to judge deadlines at; default now.")) -> None:
    """Mark overdue cases and escalate them (street → district → city)."""
    from cases.lifecycle import tick

    with get_engine().begin() as conn:
        report = tick(conn, _time(now, "now"))
    typer.echo(f"{len(report.overdue)} newly overdue, {len(report.escalated)} escalated")
    for case_id, level in report.escalated:
        typer.echo(f"case {case_id} → {level}")


@classes_app.command("load")
def classes_load(path: Path = typer.Argument(..., help="CSV with the columns of cases/data/case_classes.csv.")) -> None:
    """Replace or extend the class catalogue."""
    from cases.catalogue import load_classes_file

    with get_engine().begin() as conn:
        n = load_classes_file(conn, path)
    typer.echo(f"{path}: {n} classes written")


@classes_app.command("list")
def classes_list() -> None:
    """The catalogue, one JSON object a line."""
    from cases.catalogue import all_classes

    with get_engine().begin() as conn:
        for cls in all_classes(conn):
            sys.stdout.write(json.dumps(asdict(cls), ensure_ascii=False) + "\n")


@calendar_app.command("load")
def calendar_load(path: Path = typer.Argument(..., help="CSV day,kind,name (kind: holiday | workday).")) -> None:
    """Load public holidays and make-up working days."""
    from cases.calendar import load_calendar_file

    with get_engine().begin() as conn:
        n = load_calendar_file(conn, path)
    typer.echo(f"{path}: {n} days written")


def _group(app: typer.Typer, name: str) -> typer.Typer | None:
    """The sub-command group ``name`` another edge registered on ``app``, if it did."""
    for info in app.registered_groups:
        if info.name == name and info.typer_instance is not None:
            return info.typer_instance
    return None


def register(app: typer.Typer) -> None:
    app.add_typer(cases_app, name="cases")
    # the issue names it ``cim ingest case-classes FILE``: the loaders (ingest) may not import the case
    # loop (same layer, independent), so the case loop adds its one command to their group when both
    # are installed; ``cim cases classes load`` is the same function
    ingest_group = _group(app, "ingest")
    if ingest_group is not None and not any(c.name == "case-classes" for c in ingest_group.registered_commands):
        ingest_group.command("case-classes", help="Replace or extend the case class catalogue (大类/小类) from a "
                                                  "CSV with the columns of cases/data/case_classes.csv.")(classes_load)


__all__ = ["register"]
