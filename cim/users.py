"""Users: a role and a jurisdiction each; API keys belong to them (``cim users …``, ``cim keys create --user``).

Roles, and what they may do through the API:

| role | key role (cim.apikeys) | personal data |
|---|---|---|
| viewer, operator | reader | masked |
| handler, dispatcher | loader | unmasked (and every such read is audited) |
| loader | loader | masked |
| admin | admin | unmasked (audited) |

A jurisdiction is the whole city, or a district code, a street code (its district follows), a set
of grid codes (their street and district follow when they share one), and/or a department code (a
department handler sees the cases assigned to it). Every code must exist in the base: a user cannot
be given a scope that matches nothing by a typing error.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cim.errors import NotFoundError, UserError
from cim.jurisdiction import Scope

#: a user's role → the API key role it acts with (reader < loader < admin)
USER_ROLES = {"viewer": "reader", "operator": "reader", "handler": "loader", "dispatcher": "loader",
              "loader": "loader", "admin": "admin"}
#: roles that need reporters' and responsible persons' contacts to do their work
PERSONAL_DATA_ROLES = frozenset({"handler", "dispatcher", "admin"})


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str
    city: bool
    district_code: str | None
    street_code: str | None
    grid_codes: tuple[str, ...]
    department_code: str | None
    created_at: datetime | None
    disabled_at: datetime | None

    @property
    def key_role(self) -> str:
        return USER_ROLES[self.role]

    def scope(self, key_id: int | None = None) -> Scope:
        """The user's jurisdiction as the database will enforce it."""
        personal = self.role in PERSONAL_DATA_ROLES
        if self.city and self.department_code is None:
            return Scope("city", role=self.role, user=self.name, key_id=key_id, personal_data=personal)
        return Scope("area", role=self.role, user=self.name, key_id=key_id, district=self.district_code,
                     street=self.street_code, grids=self.grid_codes, department=self.department_code,
                     personal_data=personal)

    def describe(self) -> str:
        return "city" if self.city and not self.department_code else self.scope().describe()


_COLUMNS = ("id, name, role, city, district_code, street_code, grid_codes, department_code, created_at, "
            "disabled_at")


def user_from_row(r: sa.RowMapping) -> User:
    return User(id=r["id"], name=r["name"], role=r["role"], city=r["city"], district_code=r["district_code"],
                street_code=r["street_code"], grid_codes=tuple(r["grid_codes"] or ()),
                department_code=r["department_code"], created_at=r["created_at"], disabled_at=r["disabled_at"])


def check_user_role(role: str) -> str:
    if role not in USER_ROLES:
        raise UserError(f"role: must be one of {', '.join(USER_ROLES)}, got {role!r}")
    return role


def _one_code(conn: Connection, sql: str, code: str, what: str, option: str) -> sa.Row:
    row = conn.execute(sa.text(sql), {"code": code}).first()
    if row is None:
        raise UserError(f"{option}: no current {what} has code {code!r}")
    return row


def resolve_jurisdiction(conn: Connection, *, city: bool = False, district: str | None = None,
                         street: str | None = None, grids: tuple[str, ...] = (),
                         department: str | None = None) -> dict[str, object]:
    """Check every code against the base and fill in what follows from it (a street's district; the
    street and district of grids that share one). An empty or contradictory scope is a UserError."""
    if city and (district or street or grids):
        raise UserError("--city: a city-wide user has no district, street or grid codes")
    if not (city or district or street or grids or department):
        raise UserError("a user needs a jurisdiction: --city, --district, --street, --grid and/or --department")
    if street:
        (street_district,) = _one_code(conn, "SELECT district_code FROM streets WHERE code = :code "
                                             "AND valid_to IS NULL", street, "street", "--street")
        if district and street_district and district != street_district:
            raise UserError(f"--street: street {street} lies in district {street_district}, not {district}")
        district = district or street_district
    if district:
        _one_code(conn, "SELECT 1 FROM districts WHERE code = :code AND valid_to IS NULL", district,
                  "district", "--district")
    if grids:
        rows = conn.execute(sa.text("SELECT grid_code, street_code, district_code FROM grids "
                                    "WHERE grid_code = ANY(:codes) AND valid_to IS NULL"),
                            {"codes": list(grids)}).all()
        missing = sorted(set(grids) - {r[0] for r in rows})
        if missing:
            raise UserError(f"--grid: no current grid has code {', '.join(missing)}")
        for r in rows:
            if (street and r[1] != street) or (district and r[2] != district):
                raise UserError(f"--grid: grid {r[0]} lies outside the user's street or district")
        if not street and len({r[1] for r in rows}) == 1:
            street = rows[0][1]
        if not district and len({r[2] for r in rows}) == 1:
            district = rows[0][2]
    if department:
        _one_code(conn, "SELECT 1 FROM departments WHERE code = :code", department, "department", "--department")
    return {"city": city, "district_code": district, "street_code": street, "grid_codes": sorted(set(grids)),
            "department_code": department}


def create_user(conn: Connection, name: str, role: str, **jurisdiction: object) -> User:
    """A new user; a taken name is a UserError."""
    check_user_role(role)
    if not name or not name.strip():
        raise UserError("name: a user needs a name")
    values = resolve_jurisdiction(conn, **jurisdiction)  # type: ignore[arg-type]
    if conn.execute(sa.text("SELECT 1 FROM users WHERE name = :n"), {"n": name}).first():
        raise UserError(f"name: a user called {name!r} exists already; see 'cim users list'")
    row = conn.execute(sa.text(
        f"INSERT INTO users (name, role, city, district_code, street_code, grid_codes, department_code) "
        f"VALUES (:name, :role, :city, :district_code, :street_code, :grid_codes, :department_code) "
        f"RETURNING {_COLUMNS}"), {"name": name, "role": role, **values}).mappings().one()
    return user_from_row(row)


def get_user(conn: Connection, name: str) -> User:
    row = conn.execute(sa.text(f"SELECT {_COLUMNS} FROM users WHERE name = :n"), {"n": name}).mappings().first()
    if row is None:
        raise NotFoundError(f"no user called {name!r}; see 'cim users list'")
    return user_from_row(row)


def list_users(conn: Connection) -> list[User]:
    return [user_from_row(r) for r in conn.execute(sa.text(f"SELECT {_COLUMNS} FROM users ORDER BY id")).mappings()]


def disable_user(conn: Connection, name: str) -> User:
    """Disable a user (idempotent): their keys are refused from now on (within the API's key cache time)."""
    row = conn.execute(sa.text(f"UPDATE users SET disabled_at = COALESCE(disabled_at, now()) WHERE name = :n "
                               f"RETURNING {_COLUMNS}"), {"n": name}).mappings().first()
    if row is None:
        raise NotFoundError(f"no user called {name!r}; see 'cim users list'")
    return user_from_row(row)
