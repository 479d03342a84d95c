"""``cim grid lookup``: attach district/street/community/grid and who is responsible to every row
of a CSV of points, streaming it in batches so a file of millions of rows needs little memory."""
from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

import typer

from cim.cli.console import err_console
from cim.errors import UserError

grid_app = typer.Typer(help="Grid management units: which grid a point lies in and who answers for it.",
                       no_args_is_help=True)

#: columns added to every row, after the input's own
ADDED_COLUMNS = [
    "district_code", "district_name", "street_code", "street_name", "community_code", "community_name",
    "grid_code", "grid_name", "level", "post_code", "post_name", "department_code", "department_name",
    "person_name", "person_contact",
]
_SHOWN_BAD_ROWS = 5


def _coordinate(text: str | None) -> float:
    try:
        value = float((text or "").strip())
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


def _added(answer) -> dict[str, str]:
    out = {name: "" for name in ADDED_COLUMNS}
    for level in ("district", "street", "community", "grid"):
        area = getattr(answer, level)
        if area is not None:
            out[f"{level}_code"] = area.code
            out[f"{level}_name"] = area.name or ""
    out["level"] = answer.level
    if answer.responsibility:
        first = answer.responsibility[0]
        out.update(post_code=first.post.code, post_name=first.post.name or "",
                   department_code=first.department.code, department_name=first.department.name)
        if first.persons:
            out.update(person_name=first.persons[0].name, person_contact=first.persons[0].contact or "")
    return out


@grid_app.command("lookup")
def lookup(
    input_path: Path = typer.Option(..., "--in", help="CSV file with a header row and one point per row."),
    output_path: Path = typer.Option(..., "--out", help="CSV file to write (every input column plus the grid's)."),
    crs: str = typer.Option("EPSG:4326", "--crs", help="CRS of the coordinates: EPSG code, gcj02, bd09, …"),
    x: str = typer.Option("lon", "--x", help="Column holding longitude / easting."),
    y: str = typer.Option("lat", "--y", help="Column holding latitude / northing."),
    encoding: str = typer.Option("utf-8-sig", "--encoding", help="Text encoding of the input CSV."),
) -> None:
    """Look up the grid (and district, street, community, responsible post) of every CSV row."""
    from cim.bootstrap import load_settings
    from cim.crs import resolve_crs
    from cim.database import get_engine
    from cim.grid import MAX_POINTS, lookup_points

    spec = resolve_crs(crs)  # fail on a bad --crs before reading anything
    if not input_path.is_file():
        raise UserError(f"--in: no such file {str(input_path)!r}")
    engine = get_engine()
    settings = load_settings(engine)
    n_rows = n_found = 0
    bad_rows: list[int] = []
    try:
        src = input_path.open(newline="", encoding=encoding)
    except LookupError:
        raise UserError(f"--encoding: unknown text encoding {encoding!r}") from None
    with src, output_path.open("w", newline="", encoding="utf-8") as dst, engine.connect() as conn:
        reader = csv.DictReader(src)
        columns = reader.fieldnames or []
        for option, column in (("--x", x), ("--y", y)):
            if column not in columns:
                raise UserError(f"{option}: column {column!r} is not in {input_path.name} "
                                f"(columns: {', '.join(columns) or 'none'})")
        fieldnames = list(columns) + [c for c in ADDED_COLUMNS if c not in columns]
        writer = csv.DictWriter(dst, fieldnames=fieldnames, extrasaction="ignore")
        writer.writeheader()
        try:
            while chunk := list(itertools.islice(reader, MAX_POINTS)):
                xs = [_coordinate(r.get(x)) for r in chunk]
                ys = [_coordinate(r.get(y)) for r in chunk]
                for i, (vx, vy) in enumerate(zip(xs, ys)):
                    if math.isnan(vx) or math.isnan(vy):
                        bad_rows.append(n_rows + i + 2)  # 1-based, after the header line
                answers = lookup_points(conn, xs, ys, spec, settings)
                for row, answer in zip(chunk, answers):
                    writer.writerow({**row, **_added(answer)})
                    n_found += answer.level != "none"
                n_rows += len(chunk)
        except UnicodeDecodeError as exc:
            raise UserError(f"--encoding: {input_path.name} is not {encoding} ({exc.reason} at byte "
                            f"{exc.start}); pass the right --encoding, e.g. gbk") from None
    if bad_rows:
        shown = ", ".join(str(n) for n in bad_rows[:_SHOWN_BAD_ROWS])
        more = f" and {len(bad_rows) - _SHOWN_BAD_ROWS} more" if len(bad_rows) > _SHOWN_BAD_ROWS else ""
        err_console.print(f"warning: {len(bad_rows)} row(s) have no numeric {x}/{y} (lines {shown}{more}); "
                          "they are written with level 'none'")
    err_console.print(f"{n_rows} rows looked up, {n_found} inside a known unit -> {output_path}")


def register(app: typer.Typer) -> None:
    app.add_typer(grid_app, name="grid")

