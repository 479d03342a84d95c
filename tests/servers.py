"""Real API servers for tests: one way to start one, wait until it answers, and stop it.

Two kinds of server, both in a subprocess (GDAL holds the GIL while it waits for HTTP, so a server
thread in the test process could not answer it):

* :func:`serve_app` — ``uvicorn`` on a socket bound *here* and handed over with ``--fd``: the port
  is ours before the server starts, so no other process (another test run on the same machine)
  can take it in between.
* :func:`serve_command` — a command that binds the port itself (``cim serve`` is what is under
  test there). The port is reserved first (see :func:`reserved_port`) and, should another process
  still take it, the server's "address already in use" exit is retried on a new port instead of
  failing the test — and an answer only counts while our own process is alive.

Readiness is "the server answered ``ready_path`` with 200", never a sleep.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

PROJECT = Path(__file__).resolve().parents[1]
#: how long a server may take to answer at first (a busy 2-core CI machine, cold imports)
START_TIMEOUT_S = 120.0
_ADDRESS_IN_USE = ("address already in use", "cannot listen on")
_BIND_ATTEMPTS = 5


class ServerFailed(AssertionError):
    """The server exited before it answered, or never answered."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(f"{message}:\n{output}")
        self.output = output


def reserved_port(host: str = "127.0.0.1") -> int:
    """A port no other process will be handed for about a minute.

    Bound, listened on, connected to and closed: the port then sits in TIME_WAIT, in which the
    kernel gives it to no ``bind(0)`` and to no bind without SO_REUSEADDR — but a server that sets
    SO_REUSEADDR (uvicorn and ``cim serve`` do) can listen on it at once."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with socket.create_connection((host, port)) as client:
            accepted, _ = listener.accept()
            accepted.close()
            client.close()
    return port


def _server_env(db_url: str | None, env: dict[str, str] | None) -> dict[str, str]:
    full = {k: v for k, v in os.environ.items() if k != "CIM_DATABASE_URL"}
    if db_url:
        full["CIM_DATABASE_URL"] = db_url
    full.update(env or {})
    return full


def _wait_until_ready(proc: subprocess.Popen, base: str, ready_path: str, timeout: float) -> None:
    """Poll ``base + ready_path`` until it answers 200 while ``proc`` is alive."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ServerFailed(f"the server exited with {proc.returncode} before it answered",
                               _output(proc))
        try:
            if httpx.get(base + ready_path, timeout=5).status_code == 200 and proc.poll() is None:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            _stop(proc, close_output=False)
            raise ServerFailed(f"the server did not answer {ready_path} within {timeout:.0f} s", _output(proc))
        time.sleep(0.1)


def _output(proc: subprocess.Popen) -> str:
    """What an exited server printed."""
    return proc.stdout.read().decode(errors="replace") if proc.stdout is not None else ""


def _stop(proc: subprocess.Popen, close_output: bool = True) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if close_output and proc.stdout is not None:
        proc.stdout.close()


@contextmanager
def serve_app(db_url: str, *, app: str = "api.app:create_app", factory: bool = True,
              env: dict[str, str] | None = None, ready_path: str = "/conformance",
              timeout: float = START_TIMEOUT_S) -> Iterator[str]:
    """A real uvicorn server of ``app`` for ``db_url`` on a socket bound here; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    argv = [sys.executable, "-m", "uvicorn", *(["--factory"] if factory else []), app,
            "--fd", str(sock.fileno()), "--log-level", "warning"]
    try:
        proc = subprocess.Popen(argv, env=_server_env(db_url, env), cwd=PROJECT, pass_fds=(sock.fileno(),),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    finally:
        sock.close()  # the server has its own copy
    try:
        _wait_until_ready(proc, base, ready_path, timeout)
        yield base
    finally:
        _stop(proc)


@contextmanager
def serve_command(command: Callable[[int], Sequence[str]], *, db_url: str | None = None,
                  env: dict[str, str] | None = None, ready_path: str = "/healthz",
                  timeout: float = START_TIMEOUT_S) -> Iterator[str]:
    """A server started by ``command(port)`` — a program that binds the port itself; yields its
    base URL. A port lost to another process is retried on a new one."""
    for attempt in range(_BIND_ATTEMPTS):
        port = reserved_port()
        proc = subprocess.Popen(list(command(port)), env=_server_env(db_url, env), cwd=PROJECT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            _wait_until_ready(proc, f"http://127.0.0.1:{port}", ready_path, timeout)
        except ServerFailed as failed:
            _stop(proc)
            if attempt + 1 < _BIND_ATTEMPTS and any(s in failed.output.lower() for s in _ADDRESS_IN_USE):
                continue  # another process took the port between our reservation and the bind
            raise
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            _stop(proc)
        return
