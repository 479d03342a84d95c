"""``cim scenarios group-rental …``: load utility data, score with a model file, explain, push the
flagged addresses to the 平安办, and the loop there (登记, door visit, rectification, 复核/督办)."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from cim.cli.console import print_json
from cim.database import get_engine

rental_app = typer.Typer(help="Group rental (群租): utility use, registered population and deliveries per address "
                              "→ a suspicion score with its reasons → cases at the street's 平安办.",
                         no_args_is_help=True)
SAMPLE = Path(__file__).parent / "sample"


@rental_app.command("load")
def load(path: Path = typer.Argument(..., help="CSV: address,month,water_m3,electricity_kwh,gas_m3,"
                                               "registered_population,deliveries (empty = missing)."),
         rejects_dir: Path | None = typer.Option(None, help="Where the rejects file goes (default $CIM_HOME/rejects).")
         ) -> None:
    """Monthly utility data per address, matched through the gazetteer; unknown addresses → rejects file."""
    from scenarios.group_rental.loader import load_utilities

    with get_engine().begin() as conn:
        print_json(load_utilities(conn, path, rejects_dir).to_dict())


@rental_app.command("score")
def score_(model: Path | None = typer.Option(None, help="Model file (default: the packaged data/model.txt)."),
           month_from: str | None = typer.Option(None, "--from", help="First month YYYY-MM (default: 3 months)."),
           month_to: str | None = typer.Option(None, "--to", help="Last month YYYY-MM (default: the latest)."),
           top: int = typer.Option(10, help="Show this many of the highest scores with their reasons.")) -> None:
    """Score every address over a window of months; the run records the model it used."""
    from scenarios.group_rental.model import load_model
    from scenarios.group_rental.score import explain, month_of, score

    rules = load_model(model)
    with get_engine().begin() as conn:
        run = score(conn, rules, month_of(month_from, "from") if month_from else None,
                    month_of(month_to, "to") if month_to else None)
        print_json({"run": run.to_dict(), "top": explain(conn, run.id, limit=top)})


@rental_app.command("scores")
def scores(run: int | None = typer.Option(None, help="Scoring run (default: the latest)."),
           flagged: bool = typer.Option(False, "--flagged", help="Only flagged addresses."),
           limit: int = typer.Option(100, min=1, max=100_000)) -> None:
    """Scores with their reasons, highest first (one JSON object a line)."""
    from scenarios.group_rental.score import explain

    with get_engine().connect() as conn:
        for item in explain(conn, run, flagged, limit=limit):
            typer.echo(json.dumps(item, ensure_ascii=False))


@rental_app.command("push")
def push_(run: int | None = typer.Option(None, help="Scoring run (default: the latest).")) -> None:
    """Open a case at the street's 平安办 for each flagged address without an open one."""
    from scenarios.group_rental.handling import push

    with get_engine().begin() as conn:
        print_json(push(conn, run))


@rental_app.command("register")
def register_(case_id: int, actor: str = typer.Option(..., help="Who at the 平安办.")) -> None:
    """登记: the 平安办 takes the case on."""
    from scenarios.group_rental.handling import register_case

    with get_engine().begin() as conn:
        print_json(register_case(conn, case_id, actor).to_dict(mask_contact=True))


@rental_app.command("visit")
def visit_(case_id: int, actor: str = typer.Option(...),
           finding: str = typer.Option(..., help="group_rental or not_group_rental"),
           note: str = typer.Option(..., help="What the door visit found.")) -> None:
    """The door visit (上门核查)."""
    from scenarios.group_rental.handling import visit

    with get_engine().begin() as conn:
        print_json(visit(conn, case_id, actor, finding, note).to_dict(mask_contact=True))


@rental_app.command("rectified")
def rectified_(case_id: int, actor: str = typer.Option(...), note: str = typer.Option(...)) -> None:
    """The rectification is reported done (整改)."""
    from scenarios.group_rental.handling import rectified

    with get_engine().begin() as conn:
        print_json(rectified(conn, case_id, actor, note).to_dict(mask_contact=True))


@rental_app.command("reverify")
def reverify_(case_id: int, actor: str = typer.Option(...),
              passed: bool = typer.Option(..., "--passed/--not-rectified", help="复核: rectified or not (督办)."),
              note: str | None = typer.Option(None)) -> None:
    """复核: passed closes the case; not rectified sends it back to handling (督办)."""
    from scenarios.group_rental.handling import reverify

    with get_engine().begin() as conn:
        print_json(reverify(conn, case_id, actor, passed, note).to_dict(mask_contact=True))


@rental_app.command("sample")
def sample() -> None:
    """The sample city's suspected group rentals: load, score, push (its 平安办 posts are loaded
    first with `cim ingest responsibility scenarios/group_rental/sample/responsibility.csv`)."""
    from scenarios.group_rental.handling import push
    from scenarios.group_rental.loader import load_utilities
    from scenarios.group_rental.model import load_model
    from scenarios.group_rental.score import score

    with get_engine().begin() as conn:
        loaded = load_utilities(conn, SAMPLE / "utilities.csv")
        run = score(conn, load_model())
        print_json({"loaded": loaded.to_dict(), "run": run.to_dict(), "cases": push(conn, run.id)})


def register(scenarios_app: typer.Typer) -> None:
    scenarios_app.add_typer(rental_app, name="group-rental")
