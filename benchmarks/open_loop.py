"""An open-loop, constant-rate HTTP/1.1 load generator (the wrk2 method), one process, asyncio.

A closed loop (wrk, ``ab``: each connection sends its next request when the last answer arrives) measures
how fast the server answers a fixed number of waiting clients; by Little's law 32 such connections at 500
answers/s see a *mean* latency of 64 ms, whatever the server does. Citizens and hotline systems do not wait
for each other: reports arrive at a rate. This client offers ``--rate`` requests/s spread evenly over
``--connections`` keep-alive connections — request k is *intended* to be sent at ``start + k / rate``, on
connection ``k mod connections`` — and measures each latency from its intended send time, not from when it
could be sent. A request whose connection is still waiting for the previous answer is sent as soon as that
answer arrives, and the time it waited counts: coordinated omission (a stalled server that also stalls its
client's clock) is not hidden. The latency from the actual send is reported beside it.

Times are ``time.perf_counter``'s; the event loop's timers fire within about a millisecond of the intended
time (their resolution), and a send that late is counted from the intended time too (pessimistic).

The client's own CPU (user + system of this process) is reported, so a result can be checked for a client
that took the cores it was measuring. Prints one JSON object:

    python benchmarks/open_loop.py --port 8000 --rate 500 --connections 32 --seconds 10 \\
        --bodies bodies.jsonl --path /cases --header 'X-API-Key: …'

``--bodies``: one request body a line (each sent once, in order; POST with Content-Type application/json);
without it, GETs of ``--path``. Requests whose intended time falls in the first ``--warmup`` seconds are sent
but not measured.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Plan:
    """What to send: request k is ``requests[k]``, intended at ``start + k / rate``."""

    requests: list[bytes]
    rate: float
    connections: int
    warmup_s: float


@dataclass
class Tally:
    """Per measured request: latency from the intended send, from the actual send, and the status."""

    intended_ms: list[float] = field(default_factory=list)
    service_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    late_sends: int = 0  # measured requests sent more than 1 ms after their intended time
    answered: int = 0  # all answers, the warm-up's included (for the server's CPU per request)
    failures: list[str] = field(default_factory=list)
    last_answer: float = 0.0
    answered_in_window: int = 0


class _Connection(asyncio.Protocol):
    """One keep-alive connection sending its share of the plan (k = index, index + n, …), one at a time,
    once :meth:`begin` gives it the clock's start."""

    def __init__(self, index: int, plan: Plan, tally: Tally, done: asyncio.Future[None]) -> None:
        self.k, self.plan, self.tally, self.done = index, plan, tally, done
        self.loop = asyncio.get_running_loop()
        self.start = 0.0
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.sent_at = 0.0
        self.waiting = False  # a request is out, its answer not complete

    # --- sending ---------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def begin(self, start: float) -> None:
        self.start = start
        self._schedule()

    def _intended(self, k: int) -> float:
        return self.start + k / self.plan.rate

    def _schedule(self) -> None:
        if self.k >= len(self.plan.requests):
            self._finish()
            return
        wait = self._intended(self.k) - time.perf_counter()
        if wait <= 0:
            self._send()
        else:
            self.loop.call_later(wait, self._send)

    def _send(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.sent_at = time.perf_counter()
        self.waiting = True
        self.transport.write(self.plan.requests[self.k])

    # --- receiving -------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.waiting:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            length = None
            for line in head[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "transfer-encoding":
                    self._fail(f"answer with Transfer-Encoding {value.strip()} (only Content-Length is read)")
                    return
            if length is None:
                self._fail(f"answer without Content-Length: {head[0]}")
                return
            if len(self.buffer) < end + 4 + length:
                return
            del self.buffer[:end + 4 + length]
            self._answered(int(head[0].split()[1]))

    def _answered(self, status: int) -> None:
        now = time.perf_counter()
        intended = self._intended(self.k)
        tally = self.tally
        tally.answered += 1
        if intended - self.start >= self.plan.warmup_s:
            tally.intended_ms.append((now - intended) * 1000)
            tally.service_ms.append((now - self.sent_at) * 1000)
            tally.statuses[status] = tally.statuses.get(status, 0) + 1
            tally.late_sends += self.sent_at - intended > 0.001
            tally.answered_in_window += 1
            tally.last_answer = max(tally.last_answer, now)
        self.waiting = False
        self.k += self.plan.connections
        self._schedule()

    def _fail(self, why: str) -> None:
        self.tally.failures.append(why)
        self._finish()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.tally.failures.append(f"connection {self.k % self.plan.connections} closed by the server: {exc}")
        self._finish()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def request_bytes(host: str, port: int, path: str, headers: list[str], body: bytes | None) -> bytes:
    lines = [f"{'GET' if body is None else 'POST'} {path} HTTP/1.1", f"Host: {host}:{port}", *headers]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


async def run(host: str, port: int, plan: Plan, drain_s: float = 30.0) -> tuple[Tally, float]:
    """Send the plan; (the tally, seconds from the measured window's start to its last answer)."""
    loop = asyncio.get_running_loop()
    tally = Tally()
    connections: list[_Connection] = []
    for i in range(plan.connections):  # connect first, then start the clock: connecting is no request's latency
        done: asyncio.Future[None] = loop.create_future()
        _, protocol = await loop.create_connection(lambda i=i, done=done: _Connection(i, plan, tally, done),
                                                   host, port)
        connections.append(protocol)
    start = time.perf_counter() + 0.01
    for c in connections:
        c.begin(start)
    last_intended = start + (len(plan.requests) - 1) / plan.rate
    try:
        await asyncio.wait_for(asyncio.gather(*(c.done for c in connections)),
                               timeout=max(0.0, last_intended - time.perf_counter()) + drain_s)
    except asyncio.TimeoutError:
        tally.failures.append(f"answers still missing {drain_s:g} s after the last intended send")
    for c in connections:
        c._finish()
    return tally, max(tally.last_answer - (start + plan.warmup_s), 1e-9)


def summary(tally: Tally, window_s: float, plan: Plan, cpu_s: float, loop_name: str) -> dict:
    lat = np.array(tally.intended_ms) if tally.intended_ms else np.array([np.nan])
    svc = np.array(tally.service_ms) if tally.service_ms else np.array([np.nan])
    measured = len(plan.requests) - int(plan.warmup_s * plan.rate)

    def pct(a: np.ndarray, q: float) -> float:
        return round(float(np.percentile(a, q)), 2)

    return {"offered_per_s": plan.rate, "connections": plan.connections, "requests": tally.answered_in_window,
            "answered_total": tally.answered,
            "measured_planned": measured, "answered_per_s": round(tally.answered_in_window / window_s, 1),
            "seconds": round(window_s, 3), "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
            "errors": sum(v for k, v in tally.statuses.items() if not 200 <= k < 300) + len(tally.failures),
            "failures": tally.failures[:5],
            "p50_ms": pct(lat, 50), "p90_ms": pct(lat, 90), "p99_ms": pct(lat, 99), "p999_ms": pct(lat, 99.9),
            "max_ms": round(float(np.max(lat)), 2), "service_p50_ms": pct(svc, 50), "service_p99_ms": pct(svc, 99),
            "late_sends": tally.late_sends, "client_cpu_s": round(cpu_s, 3), "event_loop": loop_name}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/cases")
    parser.add_argument("--rate", type=float, required=True, help="requests a second, offered")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10, help="measured, after --warmup")
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--bodies", type=Path, help="JSON bodies, one a line, each POSTed once")
    parser.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    args = parser.parse_args()
    n = int(round((args.seconds + args.warmup) * args.rate))
    if args.bodies is not None:
        bodies = [line.encode() for line in args.bodies.read_text(encoding="utf-8").splitlines() if line]
        if len(bodies) < n:
            raise SystemExit(f"{len(bodies):,} bodies for {n:,} requests: give more")
        requests = [request_bytes(args.host, args.port, args.path, args.header, b) for b in bodies[:n]]
    else:
        requests = [request_bytes(args.host, args.port, args.path, args.header, None)] * n
    plan = Plan(requests, args.rate, args.connections, args.warmup)
    try:
        import uvloop  # the server's loop too (uvicorn[standard]): less CPU per event than asyncio's
        loop_name, runner = "uvloop", uvloop.run
    except ImportError:
        loop_name, runner = "asyncio", asyncio.run
    before = resource.getrusage(resource.RUSAGE_SELF)
    tally, window = runner(run(args.host, args.port, plan))
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    json.dump(summary(tally, window, plan, cpu, loop_name), sys.stdout)
    print()


if __name__ == "__main__":
    main()
