"""``cim users create|list|disable`` and the ``--as USER`` option of the ``cim`` command (see :mod:`cim.users`)."""
from __future__ import annotations

import sys
from typing import Optional

import typer
from rich.table import Table

from cim.cli.console import console, err_console

users_app = typer.Typer(help="Users: a role and a jurisdiction (city, district, street, grids, department); "
                             "their API keys come from 'cim keys create --user'.", no_args_is_help=True)


@users_app.command("create")
def create(
    name: str = typer.Argument(..., help="The user's name (unique)."),
    role: str = typer.Option(..., "--role", help="viewer, operator, handler, dispatcher, loader or admin."),
    city: bool = typer.Option(False, "--city", help="The whole city."),
    district: Optional[str] = typer.Option(None, "--district", help="A district code."),
    street: Optional[str] = typer.Option(None, "--street", help="A street (街道/镇) code; its district follows."),
    grid: list[str] = typer.Option([], "--grid", help="A unit grid code; repeatable."),
    department: Optional[str] = typer.Option(None, "--department", help="A department code (cases assigned to it)."),
) -> None:
    """Create a user; every code must exist in the base."""
    from cim.database import get_engine
    from cim.users import create_user

    with get_engine().begin() as conn:
        user = create_user(conn, name, role, city=city, district=district, street=street, grids=tuple(grid),
                           department=department)
    console.print(f"user {user.id} {user.name} ({user.role}, {user.describe()}) created; "
                  f"give it a key with: cim keys create --user {user.name}")


@users_app.command("list")
def list_() -> None:
    """Users with their role, jurisdiction and state."""
    from cim.database import get_engine
    from cim.users import list_users

    with get_engine().connect() as conn:
        users = list_users(conn)
    table = Table("id", "name", "role", "jurisdiction", "created", "disabled")
    for u in users:
        table.add_row(str(u.id), u.name, u.role, u.describe(),
                      f"{u.created_at:%Y-%m-%d %H:%M}" if u.created_at else "",
                      f"{u.disabled_at:%Y-%m-%d %H:%M}" if u.disabled_at else "")
    console.print(table)


@users_app.command("disable")
def disable(name: str = typer.Argument(..., help="The user's name.")) -> None:
    """Disable a user: their keys are refused from now on (by a running API within CIM_AUTH_CACHE_S)."""
    from cim.database import get_engine
    from cim.users import disable_user

    with get_engine().begin() as conn:
        user = disable_user(conn, name)
    console.print(f"user {user.name} disabled")


def act_as(name: str) -> None:
    """Run the rest of this command in user ``name``'s jurisdiction: every engine it asks for is scoped
    (:func:`cim.database.get_engine`), so row-level security applies as it does to the API."""
    from cim.database import get_engine
    from cim.errors import UserError
    from cim.jurisdiction import set_scope
    from cim.users import get_user

    with get_engine().connect() as conn:
        user = get_user(conn, name)
    if user.disabled_at is not None:
        raise UserError(f"--as: user {name!r} is disabled")
    err_console.print(f"acting as {user.name} ({user.role}, {user.describe()})")
    set_scope(user.scope().with_request("cli", "cim " + " ".join(sys.argv[1:])))


def register(app: typer.Typer) -> None:
    app.add_typer(users_app, name="users")
