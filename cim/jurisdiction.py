"""Jurisdiction: whose rows a caller may see and change, enforced by PostgreSQL row-level security.

The pattern is PostgREST's. Each transaction on an engine that carries :func:`install_scope_hook`
(the API's reader engine; the ``cim`` command's engine under ``--as USER``) begins with one statement
that switches to the non-owner role :data:`API_ROLE` and sets the caller's jurisdiction as
transaction-local settings (``cim.scope``, ``cim.district``, ``cim.street``, ``cim.grids``,
``cim.department``, and who and from where for the audit trail). The policies of migration
0006_jurisdiction compare indexed code columns with those settings. So no route, tile builder or
export can forget the check, and a pooled connection cannot carry one caller's scope into the next
transaction: the settings end with the transaction, and the pool rolls back on check-in.

The caller's scope is a context variable: the API's access middleware sets it for each request (it
follows the request into the thread pool), ``cim --as USER`` for the command. Without one, a
transaction runs as :data:`PUBLIC` — anonymous reading, no writing, personal data masked.
"""
from __future__ import annotations

import contextlib
import contextvars
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cim.errors import UserError
from cim.schema import DISTRICT_PARTITIONED, PARTITION_COLUMN

#: the database role every API transaction switches to (made by migration 0006_jurisdiction)
API_ROLE = "cim_api"
ScopeKind = Literal["city", "area", "public", "owner", "none"]


class OutsideJurisdiction(UserError):
    """A write the caller's jurisdiction does not cover (the row it would make is not theirs)."""

    status = 403
    title = "Forbidden"


@dataclass(frozen=True)
class Scope:
    """Who is asking and what they may see: the whole city, an area (district, street, grids) and/or a
    department, or the public. ``owner`` is the database owner itself (no role switch: loads)."""

    kind: ScopeKind
    role: str = "viewer"  # the user's role (cim.users.USER_ROLES)
    user: str | None = None
    key_id: int | None = None
    district: str | None = None
    street: str | None = None
    grids: tuple[str, ...] = ()
    department: str | None = None
    personal_data: bool = False  # may read reporters' and responsible persons' contacts unmasked
    client: str | None = None  # from where (the request's client address)
    request: str | None = None  # what ("GET /cases/4")

    def describe(self) -> str:
        """The jurisdiction in words, for audit rows and messages: ``street 310104012``, ``city``."""
        if self.kind != "area":
            return self.kind
        parts = [f"district {self.district}" if self.district and not self.street else "",
                 f"street {self.street}" if self.street else "",
                 f"grids {','.join(self.grids)}" if self.grids else "",
                 f"department {self.department}" if self.department else ""]
        return "; ".join(p for p in parts if p)

    def cache_key(self) -> str:
        """What a cache of rows (a tile, a geocoder answer) must be keyed by: two callers with the same
        cache key see the same rows. The city and the public see all rows (the public masked)."""
        if self.kind in ("city", "public", "owner"):
            return "all"
        if self.kind == "none":
            return "none"
        return f"d={self.district or ''};s={self.street or ''};g={','.join(self.grids)};dep={self.department or ''}"

    def one_district(self) -> str | None:
        """The one district this caller's area lies in: its district, else its street's first 6 digits (a street
        code begins with its district's), else its grids' when every grid code begins with the same 6 digits;
        None when there is none (the city, the public, grids in several districts). The policies of the tables
        partitioned by district compare the partition key with it (:func:`district_pruning`)."""
        if self.district:
            return self.district
        if self.street and self.street[:6]:
            return self.street[:6]
        first = self.grids[0][:6] if self.grids else ""
        if len(first) == 6 and first.isascii() and first.isdigit() and all(g.startswith(first) for g in self.grids):
            return first
        return None

    def with_request(self, client: str | None, request: str | None) -> Scope:
        return replace(self, client=client, request=request)

    def settings(self) -> dict[str, str]:
        """The transaction-local settings the policies and the audit trigger read."""
        return {"cim.scope": self.kind, "cim.district": self.district or "", "cim.street": self.street or "",
                "cim.grids": ",".join(self.grids), "cim.department": self.department or "",
                PARTITION_SETTING: self.one_district() or "",
                "cim.user": self.user or ("anonymous" if self.kind == "public" else ""),
                "cim.key": "" if self.key_id is None else str(self.key_id), "cim.role": self.role,
                "cim.scope_text": self.describe(), "cim.client": self.client or "",
                "cim.request": self.request or ""}


PUBLIC = Scope("public")
#: a caller whose credentials could not be checked (the database is down): sees and writes nothing
NOBODY = Scope("none")
#: the database owner: no role switch (loads, migrations, the ``cim`` command without ``--as``)
OWNER = Scope("owner", role="admin", personal_data=True)

_current: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("cim_scope", default=None)


def current_scope() -> Scope:
    """The scope of the request or command running now (:data:`PUBLIC` when none was set)."""
    return _current.get() or PUBLIC


def scope_is_set() -> bool:
    """Whether a caller's scope (other than the owner's) is in force: ``cim --as USER``, an API request."""
    scope = _current.get()
    return scope is not None and scope.kind != "owner"


def set_scope(scope: Scope) -> contextvars.Token:
    return _current.set(scope)


def reset_scope(token: contextvars.Token) -> None:
    _current.reset(token)


@contextlib.contextmanager
def acting_as(scope: Scope) -> Iterator[Scope]:
    """Run the block's database work in ``scope``."""
    token = _current.set(scope)
    try:
        yield scope
    finally:
        _current.reset(token)


@contextlib.contextmanager
def as_owner(what: str) -> Iterator[None]:
    """Bulk work that only a city-wide caller may do (a layer load, a batch of readings) runs as the
    owner: its staging tables, partitions and table locks are the owner's. The caller stays recorded
    in the audit trail; any narrower scope is refused here, before anything is read."""
    scope = current_scope()
    if scope.kind not in ("city", "owner"):
        raise OutsideJurisdiction(f"{what} needs a city-wide key; this key's jurisdiction is {scope.describe()}")
    with acting_as(replace(scope, kind="owner")):
        yield


class NotOnCitus(UserError):
    """A narrower jurisdiction than the city's on a Citus cluster (see :func:`install_scope_hook`)."""

    status = 501
    title = "Not implemented"


#: the scopes that see every row (the public read-only and masked): on Citus they run as the owner
_ALL_ROWS = ("owner", "city", "public")


def _set_statement(scope: Scope, switch_role: bool = True) -> tuple[str, dict[str, str]]:
    settings = scope.settings()
    names = list(settings)
    parts = [f"set_config('{name}', %(cim_scope_{i})s, true)" for i, name in enumerate(names)]
    params = {f"cim_scope_{i}": settings[name] for i, name in enumerate(names)}
    if scope.kind != "owner" and switch_role:
        parts.insert(0, f"set_config('role', '{API_ROLE}', true)")
    return "SELECT " + ", ".join(parts), params


#: The execution option of :func:`statements_scoped`.
STATEMENT_SCOPED = "cim_scope_per_statement"
_PENDING = "cim_scope_pending"
_AUTOCOMMIT = "cim_autocommit"
#: the engines of install_scope_hook
_SCOPED_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


def statements_scoped(conn: sa.Connection) -> sa.Connection:
    """``conn`` (before its transaction begins) with each statement its own transaction, in the caller's scope:
    the scope's statement travels in front of every statement, in the same round trip, and both run as one
    implicit transaction (``SELECT set_config(…, true); <statement>`` is one Query message, which PostgreSQL
    runs as one transaction; the driver hands back the last result). So a read that is one statement costs one
    round trip instead of four (BEGIN, the scope, the statement, the pool's ROLLBACK), and row-level security
    holds as before: the role switch and the settings end with that statement's transaction.

    For reads whose statements stand alone, through SQLAlchemy's ``execute`` only: a raw DBAPI cursor on such
    a connection would run outside the scope, as the owner (which is why this is not the engine's default:
    intake, sensing and scenarios use raw cursors for COPY). A statement the scope cannot travel with (many
    parameter sets, or one sent without parameters) is refused, never sent without it."""
    if conn.engine not in _SCOPED_ENGINES:
        raise ValueError("statements_scoped: the connection's engine does not begin in the caller's scope")
    # The driver's own switch, not SQLAlchemy's isolation_level option: that one costs a round trip of its own
    # when the connection goes back to the pool (SET default_transaction_isolation); the pool's check-in
    # switches it back (install_scope_hook), before anyone else can use the connection.
    conn.connection.dbapi_connection.autocommit = True
    conn.info[_AUTOCOMMIT] = True
    return conn.execution_options(**{STATEMENT_SCOPED: True})


def carries_scope(engine: Engine) -> bool:
    """Whether ``engine``'s transactions begin in the caller's scope (:func:`install_scope_hook`), so that its
    connections may be :func:`statements_scoped`."""
    return engine in _SCOPED_ENGINES


def _positional(statement: str, params: dict[str, str]) -> tuple[str, tuple[str, ...]]:
    """The scope's statement with ``%s`` placeholders, for a statement whose parameters are positional."""
    for name in params:
        statement = statement.replace(f"%({name})s", "%s")
    return statement, tuple(params.values())


def _scoped(prefix: str, values: dict[str, str], statement: str, parameters, context,  # noqa: ANN001
            executemany: bool) -> tuple[str, object]:
    """``statement`` with the scope's statement in front, and the parameters of both."""
    no_parameters = context is not None and context.no_parameters
    if executemany or no_parameters or (isinstance(parameters, dict) and values.keys() & parameters.keys()):
        raise RuntimeError("a statement on a connection of cim.jurisdiction.statements_scoped must be one "
                           "statement with its parameters (the caller's scope travels with it)")
    if isinstance(parameters, dict):
        return f"{prefix};\n{statement}", {**values, **parameters}
    prefix, ordered = _positional(prefix, values)
    return f"{prefix};\n{statement}", ordered + tuple(parameters or ())


_UNDER_POLICIES = "cim_under_policies"


def under_policies(conn: sa.Connection) -> bool:
    """Whether ``conn``'s transaction runs as the API role, under row-level security — where PostgreSQL
    refuses ``COPY FROM`` (a writer then inserts with one multi-row statement instead)."""
    return bool(conn.info.get(_UNDER_POLICIES))


def install_scope_hook(engine: Engine) -> None:
    """Every transaction on ``engine`` begins in the current scope (one statement, one round trip; on a
    connection of :func:`statements_scoped`, every statement carries it instead).

    On a Citus cluster the policies cannot hold yet: the workers' shards would be read as the API role
    (which Citus logs in as, with no password of its own) and without the transaction's ``cim.*`` settings
    (``set_config`` is not propagated to worker connections). There the scopes that see every row anyway
    (the city; the public, read-only and masked by the API) run as the owner, and a narrower jurisdiction
    is refused (501) — never answered with a wider one. docs/citus.md says what it would take."""
    on_citus: list[bool] = []  # learnt on the engine's first transaction

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        scope = current_scope()
        if not on_citus:
            on_citus.append(bool(conn.exec_driver_sql(
                "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')").scalar()))
        if on_citus[0] and scope.kind not in _ALL_ROWS:
            raise NotOnCitus(f"a jurisdiction narrower than the city's ({scope.describe()}) is not enforced on a "
                             "Citus cluster yet; use a city-wide key (docs/citus.md)")
        switch = scope.kind != "owner" and not on_citus[0]
        statement, params = _set_statement(scope, switch_role=switch)
        conn.info[_UNDER_POLICIES] = switch
        if conn.get_execution_options().get(STATEMENT_SCOPED):
            conn.info[_PENDING] = (statement, params)  # sent with each statement (_with_scope)
        else:
            conn.info.pop(_PENDING, None)
            conn.exec_driver_sql(statement, params)

    @sa.event.listens_for(engine, "before_cursor_execute", retval=True)
    def _with_scope(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001, ANN202
        pending = conn.info.get(_PENDING)
        if pending is None:
            return statement, parameters
        return _scoped(*pending, statement, parameters, context, executemany)

    @sa.event.listens_for(engine, "checkin")
    def _transactions_again(dbapi_connection, record) -> None:  # noqa: ANN001 (SQLAlchemy's event signature)
        # set by statements_scoped; no driver connection when it was invalidated (the database went away)
        if record.info.pop(_AUTOCOMMIT, False) and dbapi_connection is not None:
            dbapi_connection.autocommit = False  # no round trip: the driver begins the next transaction itself

    _SCOPED_ENGINES.add(engine)

    @sa.event.listens_for(engine, "commit")
    @sa.event.listens_for(engine, "rollback")
    def _end(conn: sa.Connection) -> None:
        conn.info.pop(_PENDING, None)  # the scope of a statements_scoped connection ends with its transaction

    @sa.event.listens_for(engine, "handle_error")
    def _outside(context) -> None:  # noqa: ANN001 (SQLAlchemy's event signature)
        error = context.original_exception
        # 42501 from a WITH CHECK policy: the row written would lie outside the caller's jurisdiction
        if getattr(error, "pgcode", None) == "42501" and "row-level security" in str(error):
            raise OutsideJurisdiction(
                f"this would write a row outside your jurisdiction ({current_scope().describe()})") from error


# --- the policies ---------------------------------------------------------------------------------

_AREA = "cim_in_scope({d}, {s}, {g})"
_AREA_WRITE = "cim_may_write({d}, {s}, {g})"


def area_expressions(d: str, s: str, g: str) -> tuple[str, str]:
    """(read, write) policy expressions of a table whose rows carry district / street / grid code
    expressions ``d``, ``s``, ``g`` ('NULL' for one it lacks)."""
    return _AREA.format(d=d, s=s, g=g), _AREA_WRITE.format(d=d, s=s, g=g)


#: the transaction-local setting holding :meth:`Scope.one_district` ('' when none)
PARTITION_SETTING = "cim.partition"
_PARTITION = f"current_setting('{PARTITION_SETTING}', true)"


def district_pruning(d: str) -> str:
    """A policy conjunct on a table partitioned by district (cim.schema.DISTRICT_PARTITIONED): the caller's one
    district (:meth:`Scope.one_district`), or — when the caller is not confined to one — every row (``d >= ''``
    holds for any text). Both arms compare the partition key with a stable value, the only form PostgreSQL
    prunes partitions by at executor start-up (the equality tests inside ``cim_in_scope``'s CASE prune nothing).
    A row whose street or grid code does not begin with its district code would be hidden from a street- or
    grid-scoped caller: the loaders assign all the codes from the same position, and a street lies within its
    district. The conjunct only ever narrows what ``cim_in_scope`` lets through.

    The district is worked out once per transaction, in Python, and read here from one setting: the policy is
    also a filter evaluated on every row read, and the same district worked out in SQL from ``cim.district``,
    ``cim.street`` and ``cim.grids`` (revision 0008: two regular expressions and ten ``current_setting`` calls
    a row) was ~5 µs a row — on a dense tile of 5,471 parts 35 of the statement's 45 ms, for a value the same
    for every row (revision 0012)."""
    return f"({d} = nullif({_PARTITION}, '') OR {d} >= CASE WHEN coalesce({_PARTITION}, '') = '' THEN '' END)"


def through_expressions(parent: str, parent_key: str, key: str, d: str = "district_code", s: str = "street_code",
             g: str = "grid_code", current: str = "") -> tuple[str, str]:
    """Rows that belong to a parent row (a case's log, a device's readings) follow the parent's policy.
    The city and the public skip the lookup."""
    alias = "p"
    where = f"{alias}.{parent_key} = {key}{current}"
    read = (f"current_setting('cim.scope', true) IN ('city', 'public') OR EXISTS "
            f"(SELECT 1 FROM {parent} {alias} WHERE {where})")
    write = (f"current_setting('cim.scope', true) = 'city' OR EXISTS (SELECT 1 FROM {parent} {alias} WHERE {where} "
             f"AND cim_may_write({alias}.{d}, {alias}.{s}, {alias}.{g}))")
    return read, write


def area_tables() -> dict[str, tuple[str, str]]:
    """Every protected table with its read and its write policy expression, parents before children."""
    plain = area_expressions("district_code", "street_code", "grid_code")
    # The administrative frame (districts, streets, communities: names and boundaries) is read by every
    # scope — the gazetteer parses addresses with it, and a map needs it — and written within the writer's.
    frame = "true"
    tables: dict[str, tuple[str, str]] = {
        "districts": (frame, area_expressions("code", "NULL", "NULL")[1]),
        "streets": (frame, area_expressions("district_code", "code", "NULL")[1]),
        "communities": (frame, area_expressions("NULL", "street_code", "NULL")[1]),
        "grids": plain,
        **{t: plain for t in ("addresses", "buildings", "curtain_walls", "parts", "pipelines", "iot_devices")},
    }
    # the big layers are partitioned by district: their policies state the district, so a scoped query reads
    # only its district's partition (revision 0008_partition_by_district)
    for t in DISTRICT_PARTITIONED:
        tables[t] = tuple(f"{expression} AND {district_pruning(PARTITION_COLUMN)}" for expression in plain)
    read, write = plain
    tables["cases"] = (f"{read} AND cim_in_department(department_code)",
                       f"{write} AND cim_in_department(department_code)")
    for t in ("case_events", "case_attachments"):
        tables[t] = through_expressions("cases", "id", f"{t}.case_id")
    for t in ("iot_readings", "iot_latest", "iot_alerts", "iot_rule_progress"):
        tables[t] = through_expressions("iot_devices", "source_id", f"{t}.device_id", current=" AND p.valid_to IS NULL")
    # a grid code begins with its district's and street's codes (6 + 3 digits): no lookup of the grid, so
    # no subquery — which Citus refuses in a policy of a reference table (grid_posts is one)
    tables["grid_posts"] = area_expressions("left(grid_code, 6)", "left(grid_code, 9)", "grid_code")
    return tables


def protect_sql(table: str, read: str, write: str) -> list[str]:
    """The statements that put ``table`` under jurisdiction: RLS on (not forced: the owner's loads and
    migrations see everything), one policy per command for the API role, and the audit trigger.
    A later migration adding a table with area codes runs these for it."""
    return [
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
        f"CREATE POLICY cim_read ON {table} FOR SELECT TO {API_ROLE} USING ({read})",
        f"CREATE POLICY cim_insert ON {table} FOR INSERT TO {API_ROLE} WITH CHECK ({write})",
        f"CREATE POLICY cim_update ON {table} FOR UPDATE TO {API_ROLE} USING ({write}) WITH CHECK ({write})",
        f"CREATE POLICY cim_delete ON {table} FOR DELETE TO {API_ROLE} USING ({write})",
        f"CREATE TRIGGER {table}_audit AFTER INSERT OR UPDATE OR DELETE ON {table} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION cim_audit_write()",
    ]

