"""Connections to the city base: one pooled engine per URL, the API's reader engine, raw psycopg2 for COPY."""
from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cim.config import database_target, settings
from cim.errors import UnavailableError


class DatabaseError(UnavailableError):
    """The base cannot be reached or is not initialised; the message says what to run."""


class DatabaseUnavailableError(DatabaseError):
    """The database server cannot be reached, or the connection to it was lost: a request or a load
    cannot be answered now, and may succeed when retried (the API answers 503 with Retry-After)."""


def database_url() -> str:
    """``CIM_DATABASE_URL`` when set, else the embedded cluster's URL (which must be up)."""
    target = database_target()
    if target.is_external:
        return target.url  # type: ignore[return-value]
    from cim.cluster import Cluster, ClusterError

    cluster = Cluster.default()
    try:
        return cluster.url()
    except ClusterError as exc:
        raise DatabaseError(str(exc)) from exc


def sqlalchemy_url(url: str) -> str:
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


_ENGINES: dict[tuple[str, int | None, bool], Engine] = {}


def engine_for(url: str, *, lock_timeout_ms: int | None = None, scoped: bool = False) -> Engine:
    """One pooled engine per URL (and lock timeout, and whether it is scoped) for the life of the process,
    sized by the deployment settings in force when it is first asked for (``CIM_DB_POOL_SIZE``,
    ``CIM_DB_POOL_TIMEOUT_S``, ``CIM_DB_PING_AFTER_IDLE_S``).

    A *scoped* engine begins every transaction in the caller's jurisdiction
    (:func:`cim.jurisdiction.install_scope_hook`): row-level security decides what it sees."""
    engine = _ENGINES.get((url, lock_timeout_ms, scoped))
    if engine is None:
        config = settings()
        connect_args = {} if lock_timeout_ms is None else {"options": f"-c lock_timeout={int(lock_timeout_ms)}"}
        # A fixed pool: under load, overflow connections are opened and closed per request, which cost
        # the API most of its throughput (measured: items at 32 connections 0.81x -> 1.41x tipg's).
        engine = _ENGINES[(url, lock_timeout_ms, scoped)] = sa.create_engine(
            sqlalchemy_url(url), pool_size=config.db_pool_size, max_overflow=0,
            pool_timeout=config.db_pool_timeout_s, connect_args=connect_args)
        _ping_idle_connections(engine, config.db_ping_after_idle_s)
        _unavailable_when_unreachable(engine)
        if lock_timeout_ms is not None:
            _lock_waits_are_unavailable(engine)
        if scoped:
            from cim.jurisdiction import install_scope_hook

            install_scope_hook(engine)
    return engine


def _unavailable_when_unreachable(engine: Engine) -> None:
    """Turn "the server is not there" into :class:`DatabaseUnavailableError`, in this one place.

    A failed connect (refused, server starting up or shutting down) and a connection lost mid-
    statement are not the request's fault and not a bug: callers (the API, the loader, the CLI)
    get one error that says so, instead of a driver exception each would have to recognise. Other
    database errors (bad SQL, constraint violations, timeouts) pass through unchanged. The pool's
    own pings are left alone, so that it can still replace a dropped connection and retry.
    """
    @sa.event.listens_for(engine, "handle_error")
    def _translate(context: sa.engine.ExceptionContext) -> Exception | None:
        if context.is_pre_ping:
            return None
        error = context.original_exception
        dbapi_error = getattr(engine.dialect.loaded_dbapi, "Error", ())
        connecting = context.connection is None  # no Connection yet: the error came from connect()
        if not isinstance(error, dbapi_error) or not (connecting or context.is_disconnect):
            return None
        if connecting and not isinstance(error, getattr(engine.dialect.loaded_dbapi, "OperationalError", ())):
            return None
        what = "not reachable" if connecting else "no longer reachable (connection lost)"
        return DatabaseUnavailableError(f"the database is {what}: {_first_line(error)}; try again shortly")

    @sa.event.listens_for(engine, "handle_error")
    def _node_unreachable(context: sa.engine.ExceptionContext) -> Exception | None:
        # A Citus coordinator that cannot reach a worker holding the shards a statement needs raises
        # connection_exception (SQLSTATE class 08) on a connection that is itself fine: the request
        # cannot be answered now, and will be once the worker is back (docs/citus.md)
        if context.is_pre_ping or context.connection is None or context.is_disconnect:
            return None
        code = getattr(context.original_exception, "pgcode", None) or ""
        if not code.startswith("08"):
            return None
        reason = _first_line(context.original_exception).rpartition("failed with the following error:")[2]
        return DatabaseUnavailableError(f"a node of the database cluster is not reachable ({reason.strip()}); "
                                        "try again shortly")


def _first_line(error: BaseException) -> str:
    """The driver's reason without its multi-line hints, and without the server's address."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    head, sep, reason = line.partition(" failed: ")  # 'connection to server at "host", port N failed: …'
    return (reason if sep and head.startswith("connection to server") else line).strip() or type(error).__name__


def reader_engine(engine: Engine) -> Engine:
    """The engine the API reads through: the same server, a pool of its own, every transaction in the
    caller's jurisdiction (row-level security, :mod:`cim.jurisdiction`), and no statement that waits
    longer than ``CIM_DB_READER_LOCK_TIMEOUT_MS`` for a lock (it raises :class:`~cim.errors.UnavailableError`).

    Loads never lock readers out of a layer that has rows (see ``ingest.merge``); this bounds what any
    other lock (a first load, a migration, an operator's ``LOCK TABLE``) can cost: one request each,
    briefly, instead of the whole pool for as long as the lock is held.
    """
    return engine_for(engine.url.render_as_string(hide_password=False),
                      lock_timeout_ms=settings().db_reader_lock_timeout_ms, scoped=True)


class LockedOut(UnavailableError):
    """A statement waited longer than the reader's lock timeout: what it reads is being changed."""

    retry_after = 2


def _lock_waits_are_unavailable(engine: Engine) -> None:
    @sa.event.listens_for(engine, "handle_error")
    def _lock_timeout(context) -> None:  # noqa: ANN001 (SQLAlchemy's event signature)
        if getattr(context.original_exception, "pgcode", None) == "55P03":  # lock_not_available
            raise LockedOut("the data asked for is being changed (a load or maintenance holds a lock on it); "
                            "try again in a moment") from context.original_exception


def _ping_idle_connections(engine: Engine, ping_after_idle_s: float) -> None:
    """Pessimistic disconnect handling, but only for connections that sat idle.

    SQLAlchemy's ``pool_pre_ping`` pings on every checkout: one more round trip for every API request
    (a sixth of an uncached vector tile's). A connection returned moments ago is as good as the
    request that just used it; one that sat idle may have been dropped by a server restart or a
    firewall, so it is pinged, and replaced when the ping fails (the pool then retries with a new one).
    """
    @sa.event.listens_for(engine, "checkin")
    def _returned(dbapi_connection, record) -> None:  # noqa: ANN001 (SQLAlchemy's event signature)
        record.info["returned_at"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _handed_out(dbapi_connection, record, proxy) -> None:  # noqa: ANN001
        returned_at = record.info.get("returned_at")
        if returned_at is None or time.monotonic() - returned_at < ping_after_idle_s:
            return  # new, or in use a moment ago
        try:
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            dbapi_connection.rollback()
        except Exception as exc:  # any failure: the pool discards it and tries another connection
            raise sa.exc.DisconnectionError(f"pooled connection lost while idle: {exc}") from exc


def dispose_engines() -> None:
    """Close every pooled connection (before the server they point at goes away)."""
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()


def get_engine(url: str | None = None) -> Engine:
    """The base's engine: the owner's, or under ``cim --as USER`` one scoped to that user's jurisdiction."""
    from cim.jurisdiction import scope_is_set

    return engine_for(url or database_url(), scoped=scope_is_set())


def raw_connection(engine: Engine):
    """A DBAPI (psycopg2) connection for COPY; caller closes it."""
    return engine.raw_connection()
