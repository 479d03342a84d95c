"""``cim serve``: run the API (and viewer) with uvicorn."""
from __future__ import annotations

import socket

import typer
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from cim.errors import UserError


def listening_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket for worker processes.

    Hand-made because uvicorn's own multi-worker socket is created with protocol 0: asyncio then never sets
    TCP_NODELAY on accepted connections (it checks ``sock.proto == IPPROTO_TCP``), and Nagle holds every
    response body until the client's delayed ACK — measured +40 ms per response with 2 workers.
    ``reuse_port``: one of several sockets on the same port (SO_REUSEPORT, :func:`worker_sockets`)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"--host/--port: cannot listen on {host}:{port} ({exc.strerror})") from None
    sock.set_inheritable(True)
    return sock


def worker_sockets(host: str, port: int, workers: int) -> list[socket.socket]:
    """A listening socket per worker, all on one port (SO_REUSEPORT): the kernel spreads new connections over
    them evenly, by each connection's addresses. On one shared socket the worker that woke first accepted a
    client's whole burst of connections (asyncio accepts all that are waiting): 31 of a pool's 32 keep-alive
    connections in one worker was measured, and they stay there — one worker saturated beside an idle one.

    SO_REUSEPORT would also let this server share the port with another one left running by the same user, so
    the port is first taken alone, which fails if anyone holds it."""
    probe = listening_socket(host, port)
    port = probe.getsockname()[1]  # port 0: the one the system chose
    probe.close()
    return [listening_socket(host, port, reuse_port=True) for _ in range(workers)]


class WorkerSupervisor(Multiprocess):
    """uvicorn's supervisor (health checks, signals, restarts), each worker on a socket of its own
    (:func:`worker_sockets`): a worker that dies or is replaced is restarted on its own socket, which the
    supervisor keeps open meanwhile, so its share of new connections waits in the queue, not refused."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets=sockets)
        self.processes_num = len(sockets)

    def _start(self, slot: int) -> Process:
        process = Process(self.config, [self.sockets[slot]])
        process.start()
        return process

    def init_processes(self) -> None:
        self.processes = [self._start(slot) for slot in range(len(self.sockets))]

    def restart_all(self) -> None:  # SIGHUP: as uvicorn's, a worker at a time, each on its own socket
        for slot, old in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new = self._start(slot)
            if not new.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit):
                new.kill()
                new.join()
                return
            old.terminate()
            old.join()
            self.processes[slot] = new

    def keep_subprocess_alive(self) -> None:  # as uvicorn's, a worker restarted on its own socket
        for slot, process in enumerate(self.processes):
            if self.should_exit.is_set() or process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()
            process.join()
            if process.exitcode == STARTUP_FAILURE:  # the app itself cannot start: every restart would fail
                self.should_exit.set()
                return
            self.processes[slot] = self._start(slot)


def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port."),
    workers: int = typer.Option(1, min=1, help="Worker processes."),
    access_log: bool = typer.Option(False, "--access-log/--no-access-log",
                                    help="Log every request (uvicorn's access log). Off by default: at thousands of "
                                         "cached tiles a second it is a third of the server's work, and /metrics "
                                         "counts every request by route, status and latency anyway."),
) -> None:
    """Serve the spatial API, tiles and viewer."""
    from cim.bootstrap import load_settings
    from cim.database import get_engine

    load_settings(get_engine())  # fail here with a clear message, not in a worker
    if workers == 1:
        uvicorn.run("api.asgi:app", host=host, port=port, log_level="info", access_log=access_log)
        return
    config = uvicorn.Config("api.asgi:app", host=host, port=port, workers=workers, log_level="info",
                            access_log=access_log)
    WorkerSupervisor(config, worker_sockets(host, port, workers)).run()


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
