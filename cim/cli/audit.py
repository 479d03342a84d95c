"""``cim audit``: the append-only audit trail (see :mod:`cim.audit`), as a table, JSON lines or CSV."""
from __future__ import annotations

import json
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from cim.cli.console import console, err_console


def _moment(value: date | datetime, end: bool) -> datetime:
    """A date is a whole UTC day (cim.times): ``--until`` a date includes that day."""
    if isinstance(value, datetime):
        return value
    return datetime.combine(value + timedelta(days=1 if end else 0), time(0), tzinfo=timezone.utc)


def audit(
    since: Optional[str] = typer.Option(None, "--since", help="From this RFC 3339 instant or date."),
    until: Optional[str] = typer.Option(None, "--until", help="Before this RFC 3339 instant or date."),
    actor: Optional[str] = typer.Option(None, "--actor", help="Only this user (or database user)."),
    action: Optional[str] = typer.Option(None, "--action", help="insert, update, delete or read_unmasked."),
    limit: int = typer.Option(1000, "--limit", min=1, help="At most this many rows (oldest first)."),
    fmt: str = typer.Option("table", "--format", help="table, jsonl or csv."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write to this file instead of stdout (export)."),
) -> None:
    """Who did what, when and from where: every write, every unmasked read of personal data."""
    from cim.audit import list_audit, to_csv
    from cim.database import get_engine
    from cim.errors import UserError
    from cim.times import parse_instant

    if fmt not in ("table", "jsonl", "csv"):
        raise UserError(f"--format: {fmt!r} is not table, jsonl or csv")
    start = _moment(parse_instant(since, "--since"), end=False) if since else None
    end = _moment(parse_instant(until, "--until"), end=True) if until else None
    with get_engine().connect() as conn:
        entries = list_audit(conn, since=start, until=end, actor=actor, action=action, limit=limit)
    if fmt == "table" and out is None:
        table = Table("id", "at", "actor", "role", "scope", "action", "object", "client", "request")
        for e in entries:
            table.add_row(str(e.id), f"{e.at:%Y-%m-%d %H:%M:%S}", e.actor, e.role or "", e.scope or "", e.action,
                          e.object, e.client or "", e.request or "")
        console.print(table)
        return
    text = to_csv(entries) if fmt == "csv" else "".join(
        json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in entries)
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        err_console.print(f"{len(entries)} audit rows written to {out}")


def register(app: typer.Typer) -> None:
    app.command("audit")(audit)
