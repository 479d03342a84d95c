"""The test-server helper itself (no database): a server that loses its port to another process is
started again on a new one, and one that exits is reported with what it printed."""
from __future__ import annotations

import socket
import sys

import httpx
import pytest

from tests.servers import ServerFailed, reserved_port, serve_command


def _http_server(port: int) -> list[str]:
    return [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]


def test_a_lost_port_is_retried_on_a_new_one():
    ports: list[int] = []

    def command(port: int) -> list[str]:
        ports.append(port)
        if len(ports) == 1:  # as `cim serve` reports a port another process took meanwhile
            return [sys.executable, "-c", "import sys; print('[Errno 98] Address already in use'); sys.exit(1)"]
        return _http_server(port)

    with serve_command(command, ready_path="/") as base:
        assert httpx.get(base + "/", timeout=10).status_code == 200
    assert len(ports) == 2 and base.endswith(f":{ports[1]}")


def test_a_server_that_exits_is_a_clear_failure():
    with pytest.raises(ServerFailed, match="no database here"):
        with serve_command(lambda port: [sys.executable, "-c", "print('no database here'); raise SystemExit(3)"]):
            pass


def test_a_reserved_port_is_not_handed_out_but_a_server_can_listen_on_it():
    port = reserved_port()
    with socket.socket() as plain:  # no SO_REUSEADDR: what a bind by another program gets
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
    with socket.socket() as server:  # SO_REUSEADDR, as uvicorn and `cim serve` set it
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen(1)
