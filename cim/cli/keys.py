"""``cim keys create|list|revoke``: API keys for the spatial API (see :mod:`cim.apikeys`)."""
from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from cim.cli.console import console, err_console

keys_app = typer.Typer(help="API keys: reader (read when keys are required), loader (upload data), admin.",
                       no_args_is_help=True)


@keys_app.command("create")
def create(
    role: Optional[str] = typer.Option(None, "--role", help="reader, loader or admin (a key without a user: "
                                                             "city-wide)."),
    name: Optional[str] = typer.Option(None, "--name", help="Who or what the key is for."),
    user: Optional[str] = typer.Option(None, "--user", help="The user the key belongs to: its role and "
                                                             "jurisdiction (see 'cim users')."),
) -> None:
    """Create a key; it is printed once on stdout and only its hash is kept."""
    from cim.apikeys import check_role, create_key
    from cim.database import get_engine
    from cim.errors import UserError
    from cim.users import get_user

    if role is None and user is None:
        raise UserError("--role or --user: say which role, or which user the key is for")
    if role is not None:
        check_role(role)
    with get_engine().begin() as conn:
        owner = get_user(conn, user) if user else None
        record, key = create_key(conn, role, name, owner)
    scope = f", user {owner.name}: {owner.describe()}" if owner else ""
    err_console.print(f"API key {record.id} ({record.role}{', ' + record.name if record.name else ''}{scope}) "
                      "created; store it now, it cannot be shown again:")
    typer.echo(key)  # alone on stdout so scripts can capture it


@keys_app.command("list")
def list_() -> None:
    """Keys with their role and state (never the keys themselves)."""
    from cim.apikeys import list_keys
    from cim.database import get_engine

    with get_engine().connect() as conn:
        keys = list_keys(conn)
    table = Table("id", "name", "role", "user (jurisdiction)", "created", "revoked")
    for k in keys:
        owner = f"{k.user.name} ({k.user.describe()})" if k.user else "(none: city-wide)"
        table.add_row(str(k.id), k.name or "", k.role, owner, f"{k.created_at:%Y-%m-%d %H:%M}" if k.created_at else "",
                      f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "")
    console.print(table)


@keys_app.command("revoke")
def revoke(key_id: int = typer.Argument(..., metavar="ID", help="The key's id from 'cim keys list'.")) -> None:
    """Revoke a key: requests with it are refused from now on."""
    from cim.apikeys import revoke_key
    from cim.database import get_engine

    with get_engine().begin() as conn:
        record = revoke_key(conn, key_id)
    console.print(f"API key {record.id} ({record.role}) revoked")


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
