"""The pooled engine: a connection that sat idle and was dropped by the server is replaced, not handed out."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

import cim.database as database
from cim.config import override_settings
from tests.conftest import create_database


def _backend_pid(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()


def test_an_idle_connection_the_server_dropped_is_replaced(server_url):
    url = create_database(server_url)
    with override_settings(db_ping_after_idle_s=0.0):  # every returned connection has been idle "long enough"
        engine = database.engine_for(url)
    first = _backend_pid(engine)
    with sa.create_engine(database.sqlalchemy_url(url)).connect() as admin:
        assert admin.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": first}).scalar_one()
    second = _backend_pid(engine)  # no error: the dead connection was pinged and replaced
    assert second != first


def test_a_connection_in_use_a_moment_ago_is_handed_out_without_a_ping(server_url):
    """No round trip for a connection returned moments ago: if the server dropped it right then, the
    request that gets it fails (that is the price) and the pool is refilled for the next one."""
    url = create_database(server_url)
    with override_settings(db_ping_after_idle_s=3600.0):
        engine = database.engine_for(url)
    first = _backend_pid(engine)
    with sa.create_engine(database.sqlalchemy_url(url)).connect() as admin:
        admin.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": first})
    with pytest.raises(database.DatabaseUnavailableError):  # a lost connection: "try again", a 503 in the API
        _backend_pid(engine)  # not pinged: the dead connection was handed out
    assert _backend_pid(engine) != first  # and the pool recovered


def test_the_pool_is_sized_by_the_deployment_settings(server_url, monkeypatch):
    url = create_database(server_url)
    monkeypatch.setenv("CIM_DB_POOL_SIZE", "3")
    monkeypatch.setenv("CIM_DB_POOL_TIMEOUT_S", "7.5")
    engine = database.engine_for(url)
    assert engine.pool.size() == 3 and engine.pool.timeout() == 7.5
