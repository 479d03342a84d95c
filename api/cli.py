"""``cim serve``: run the API (and viewer) with uvicorn."""
from __future__ import annotations

import socket

import typer

from cim.errors import UserError


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket for the worker processes to share.

    Hand-made because uvicorn's own multi-worker socket is created with protocol 0: asyncio then never sets
    TCP_NODELAY on accepted connections (it checks ``sock.proto == IPPROTO_TCP``), and Nagle holds every
    response body until the client's delayed ACK — measured +40 ms per response with 2 workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"--host/--port: cannot listen on {host}:{port} ({exc.strerror})") from None
    sock.set_inheritable(True)
    return sock


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
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from cim.bootstrap import load_settings
    from cim.database import get_engine

    load_settings(get_engine())  # fail here with a clear message, not in a worker
    if workers == 1:
        uvicorn.run("api.asgi:app", host=host, port=port, log_level="info", access_log=access_log)
        return
    config = uvicorn.Config("api.asgi:app", host=host, port=port, workers=workers, log_level="info",
                            access_log=access_log)
    Multiprocess(config, sockets=[listening_socket(host, port)]).run()


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
