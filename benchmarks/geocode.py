"""Benchmark: the address gazetteer's accuracy and speed, and its district extraction against jionlp and cpca.

Run by hand (not a test):  .venv/bin/python benchmarks/geocode.py [--keep] [--cpu 0]

Needs a database server: CIM_DATABASE_URL, or the embedded cluster (`cim db up`, with CIM_HOME set). Creates
two throwaway databases on it (dropped at the end unless --keep):

- *sample*: the sample city (`cim samples load`) — for (a) and (d);
- *city*: a copy of it plus the 16 real districts and the 229 real sub-districts (as streets) of
  ../shared/data/shanghai, so every district of the city is known — for (b) and (c).

What is measured, in one run:

(a) accuracy on a labelled set generated here from the 2,000 sample addresses: each written in many ways
    (full-width digits, traditional characters, Chinese numerals, with/without 上海市/上海/沪 and the district,
    58弄11-802, trailing remarks, spaces); "right door" = match level door on the address's own gazetteer entry;
(b) robustness on the 18,367 real addresses of ../shared/data/addresses/cpca_addr.csv: exceptions, match
    levels, and for the rows mentioning 上海 whether the district found is the district written;
(c) the same district check for jionlp (`parse_location`) and cpca (`transform`), each run in a separate
    virtualenv (benchmarks/work/peers-venv, created on first use) through a JSON-in/JSON-out child process;
(d) batch speed on one core (Python API and `cim geocode --in … --out …`) and `GET /geocode` latency against
    a real `cim serve` (uvicorn, 1 worker) on a free loopback port, driven from another process.

Prints a Markdown section (also written to benchmarks/work/geocode.md).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
import traceback
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import opencc
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.scratch import create_database, drop_databases, machine  # noqa: E402
from cim.bootstrap import initialise
from cim.database import database_url, engine_for
from cim.gazetteer import MATCH_LEVELS, GeocodeResult, geocode_many, parse_address
from cim.gazetteer.geocode import gazetteer_for

WORK = ROOT / "benchmarks" / "work"
SAMPLES = ROOT / "data_samples"
SHARED = ROOT.parent / "shared" / "data"
REAL_ADDRESSES = SHARED / "addresses" / "cpca_addr.csv"
PEERS_VENV = WORK / "peers-venv"
PEERS = ("jionlp", "cpca")
CIM = str(Path(sys.executable).with_name("cim"))
CHUNK = 5_000
PY_TARGET_ROWS_S = 10_000
P99_TARGET_MS = 20.0
DOOR_TARGET = 0.97
T = TypeVar("T")

# Old district names still written in addresses → today's district (the labels' own table, kept apart from
# the gazetteer's so the check does not grade the gazetteer with its own data).
HISTORICAL = {"闸北区": "静安区", "卢湾区": "黄浦区", "南汇区": "浦东新区", "崇明县": "崇明区"}
DISTRICTS = ("黄浦区", "徐汇区", "长宁区", "静安区", "普陀区", "虹口区", "杨浦区", "闵行区", "宝山区", "嘉定区",
             "浦东新区", "金山区", "松江区", "青浦区", "奉贤区", "崇明区")




def cim_env(url: str) -> dict[str, str]:
    return {**os.environ, "CIM_DATABASE_URL": url}


def run_cim(url: str, *args: str) -> str:
    done = subprocess.run([CIM, *args], env=cim_env(url), cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"cim {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def load_real_areas(url: str) -> dict[str, dict]:
    """The 16 real districts and 229 sub-districts (as streets) over the sample city."""
    shanghai = SHARED / "shanghai"
    reports = {}
    for layer, path, mapping in (
            ("districts", shanghai / "districts_wgs84.geojson", ["code=region_id", "name=source_name"]),
            ("streets", shanghai / "subdistricts_wgs84.geojson",
             ["code=region_id", "name=source_name", "district_code=region_group"])):
        args = [a for m in mapping for a in ("--map", m)]
        reports[layer] = json.loads(run_cim(url, "ingest", layer, str(path), *args, "--json"))
    return reports


# --- (a) the labelled set: many spellings of every sample address -------------------------------

_CN = "零一二三四五六七八九"
_CN_DIGIT = "〇一二三四五六七八九"
_WIDE = {**{ord(c): ord(c) + 0xFEE0 for c in "0123456789-"}, ord(" "): 0x3000}


def reading(n: int) -> str:
    """A number as it is read: 150 → 一百五十, 203 → 二百零三, 15 → 十五, 3088 → 三千零八十八."""
    if n < 10:
        return _CN[n]
    if n < 20:
        return "十" + (_CN[n % 10] if n % 10 else "")
    out, gap = "", False
    for value, unit in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
        digit = n // value % 10
        if digit:
            out += ("零" if gap and out else "") + _CN[digit] + unit
            gap = False
        elif out:
            gap = True
    return out


def digitwise(s: str) -> str:
    """A room number read digit by digit: 101 → 一〇一."""
    return "".join(_CN_DIGIT[int(c)] for c in s)


@dataclass(frozen=True)
class Style:
    """One way of writing an address."""

    city: str = "上海市"
    district: str = "徐汇区"
    digits: str = "ascii"  # ascii | wide | chinese
    marks: bool = False  # 號/區/匯 only (a caller typing on a traditional-Chinese keyboard, partly)
    traditional: bool = False  # the whole text through OpenCC s2t
    hyphen: bool = False  # 58弄11-802 (lane addresses with a room and no unit)
    floor: bool = False  # 4楼403室
    sep: str = ""
    tail: str = ""


def write(row: dict, s: Style, s2t: opencc.OpenCC) -> str:
    chinese = s.digits == "chinese"

    def count(v: str) -> str:  # door, lane, building, unit: read as a number
        return reading(int(v)) if chinese and v.isdigit() else v

    def room(v: str) -> str:  # room: digit by digit
        return digitwise(v) if chinese and v.isdigit() else v

    parts = [s.city + s.district, row["road"]]
    if row["lane"]:
        if s.hyphen:
            parts.append(f"{row['lane']}弄{row['building_no']}-{row['room']}")
        else:
            parts += [f"{count(row['lane'])}弄", f"{count(row['building_no'])}号"]
            if row["unit"]:
                parts.append(f"第{reading(int(row['unit']))}单元" if chinese else f"{row['unit']}单元")
    else:
        parts.append(f"{count(row['door_number'])}号")
    if row["room"] and not s.hyphen:
        if s.floor and row["floor"]:
            parts.append(f"{count(row['floor'])}楼")
        parts.append(f"{room(row['room'])}室")
    text = s.sep.join(p for p in parts if p) + s.tail
    if s.digits == "wide":
        text = text.translate(_WIDE)
    if s.marks:
        text = text.replace("号", "號").replace("区", "區").replace("汇", "匯")
    if s.traditional:
        text = s2t.convert(text)
    return text


def fixed_styles(row: dict, other_road: str) -> list[tuple[str, Style]]:
    styles = [
        ("canonical 上海市徐汇区…", Style()),
        ("no city: 徐汇区…", Style(city="")),
        ("short forms: 上海徐汇…", Style(city="上海", district="徐汇")),
        ("沪徐汇区…", Style(city="沪")),
        ("city, no district: 上海…", Style(city="上海", district="")),
        ("road only, no city or district", Style(city="", district="")),
        ("full-width digits", Style(digits="wide")),
        ("號/區/匯 marks", Style(marks=True)),
        ("traditional (OpenCC s2t)", Style(traditional=True)),
        ("Chinese numerals (一百五十号, 一〇一室)", Style(digits="chinese")),
        ("remark 附近", Style(tail="附近")),
        ("remark 对面", Style(tail="对面")),
        ("remark （近…路）", Style(tail=f"（近{other_road}）")),
        ("spaces between parts", Style(sep=" ")),
        ("full-width spaces, trailing space", Style(sep="\u3000", tail=" ")),
    ]
    if row["lane"] and row["room"] and not row["unit"]:
        styles.append(("hyphen 58弄11-802", Style(hyphen=True)))
    if row["room"]:
        styles.append(("floor written: 4楼403室", Style(floor=True)))
    return styles


def mixed_style(rng: random.Random, row: dict, other_road: str) -> Style:
    """A random combination of the ways above."""
    city = rng.choice(["上海市", "上海", "沪", "", "上海市 "])
    return Style(
        city=city, district=rng.choice(["徐汇区", "徐汇", "徐匯區", ""] if city else ["徐汇区", "徐汇", ""]),
        digits=rng.choice(["ascii", "wide", "chinese"]), marks=rng.random() < 0.3, traditional=rng.random() < 0.2,
        hyphen=bool(row["lane"] and row["room"] and not row["unit"]) and rng.random() < 0.4,
        floor=bool(row["room"]) and rng.random() < 0.2, sep=rng.choice(["", "", " ", "\u3000"]),
        tail=rng.choice(["", "", "附近", "对面", "旁边", "门口", f"（近{other_road}）", "(后门)", " 斜对面"]))


@dataclass
class Labelled:
    text: str
    kind: str
    key: tuple  # the address's components: its own gazetteer entries share them


def labelled_set(rows: list[dict], mixed_per_address: int, seed: int) -> list[Labelled]:
    s2t = opencc.OpenCC("s2t")
    roads = sorted({r["road"] for r in rows})
    out, seen = [], set()
    for i, row in enumerate(rows):
        other_road = roads[(roads.index(row["road"]) + 1) % len(roads)]
        rng = random.Random(seed * 1_000_003 + i)
        styles = fixed_styles(row, other_road) + [
            ("random mix of the above", mixed_style(rng, row, other_road)) for _ in range(mixed_per_address)]
        for kind, style in styles:
            text = write(row, style, s2t)
            if text not in seen:  # one text, one measurement (a repeat would only hit the parse cache)
                seen.add(text)
                out.append(Labelled(text, kind, address_key(row)))
    return out


def address_key(row: dict) -> tuple:
    return tuple(row.get(k) or None for k in ("road", "door_number", "lane", "building_no", "unit", "room"))


def entries_by_key(conn: sa.Connection, rows: list[dict]) -> dict[tuple, set[str]]:
    """Each address's own gazetteer entries (feature ids), found by its source id."""
    ids = dict(conn.execute(sa.text("SELECT source_id, feature_id::text FROM addresses WHERE valid_to IS NULL")).all())
    out: dict[tuple, set[str]] = {}
    for row in rows:
        out.setdefault(address_key(row), set()).add(ids[row["source_id"]])
    return out


def warmup_texts(rows: list[dict]) -> list[str]:
    """Texts no measurement uses (the 中国 prefix is in no style) that touch every road of the city."""
    return [f"中国上海市徐汇区{r['road']}{r['lane'] + '弄' if r['lane'] else ''}"
            f"{r['building_no'] or r['door_number']}号" for r in rows]


# --- geocoding in this process ----------------------------------------------------------------

def backend_cpu_s(conn: sa.Connection) -> float | None:
    """CPU seconds used so far by this connection's PostgreSQL backend (a local server only), so a pass can
    be costed in CPU time as well as wall time — the wall time counts whatever else runs on the machine."""
    pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


@dataclass
class Timing:
    rows: int = 0
    wall_s: float = 0.0
    cpu_s: float | None = 0.0  # this process + its PostgreSQL backend; None when the server is remote

    @property
    def rate(self) -> float:
        return self.rows / self.wall_s

    @property
    def cpu_rate(self) -> float | None:
        return self.rows / self.cpu_s if self.cpu_s else None


def geocode_chunks(engine: sa.Engine, texts: list[str], keep: Callable[[GeocodeResult | None], T]
                   ) -> tuple[list[T], Timing, list[tuple[str, str]]]:
    """Every text through geocode_many in chunks of CHUNK, as a batch would; only the geocoding calls are
    timed, and each answer is reduced by ``keep`` at once so the process holds one chunk of answers (as the
    CLI does). A chunk that raises is retried row by row so each failing row is named (answer None).
    Returns (kept values, timing, failures)."""
    kept: list[T] = []
    failures: list[tuple[str, str]] = []
    timing = Timing(rows=len(texts))
    with engine.connect() as conn:
        backend_before = backend_cpu_s(conn)
        for start in range(0, len(texts), CHUNK):
            chunk = texts[start:start + CHUNK]
            started, cpu_started = time.perf_counter(), time.process_time()
            try:
                answers: list[GeocodeResult | None] = list(geocode_many(conn, chunk))
            except Exception:  # noqa: BLE001 — counting failures is the point
                conn.rollback()
                answers = []
                for text in chunk:
                    try:
                        answers += geocode_many(conn, [text])
                    except Exception:  # noqa: BLE001
                        conn.rollback()
                        failures.append((text, traceback.format_exc(limit=3)))
                        answers.append(None)
            timing.wall_s += time.perf_counter() - started
            timing.cpu_s += time.process_time() - cpu_started
            kept += [keep(a) for a in answers]
        backend_after = backend_cpu_s(conn)
    if backend_before is None or backend_after is None:
        timing.cpu_s = None
    else:
        timing.cpu_s += backend_after - backend_before
    return kept, timing, failures


# --- (b) the district written in a real address -----------------------------------------------

_FULL = re.compile("|".join(sorted([*DISTRICTS, *HISTORICAL], key=len, reverse=True)))
_SHORTS = {name[:2]: name for name in [*DISTRICTS, *HISTORICAL]}
# a short form right after the city ("上海浦东…", "上海-黄浦") unless it starts a road name (浦东南路, 长宁路)
_SHORT = re.compile(r"(?:上海市?|沪)[\s\-－—:：]*(" + "|".join(_SHORTS) + r")"
                    r"(?![东南西北中]?[一二三四五六七八九十\d]*(?:大道|公路|大街|路|街(?!道)))")
# something written before the district that starts another address or names another place
_BEFORE = re.compile(r"[；;/、]|省|自治区|北京|天津|重庆|(?<!上海)市")


def written_district(text: str, t2s: opencc.OpenCC) -> tuple[str | None, str | None, str]:
    """(today's name of the district written, the name as written, why) for a row mentioning 上海; no name
    when no district is written, or when it belongs to a second address or follows another place (then the
    row is not labelled)."""
    plain = t2s.convert(text)  # 浦東新区 is written too
    found = [(m.start(), m.group()) for m in [_FULL.search(plain)] if m]
    found += [(m.start(1), _SHORTS[m.group(1)]) for m in [_SHORT.search(plain)] if m]
    if not found:
        return None, None, "no district written"
    pos, name = min(found)
    if _BEFORE.search(plain[:pos]):
        return None, None, "second address"
    return HISTORICAL.get(name, name), name, "labelled"


def peer_name(name: object) -> str | None:
    """A tool's district as today's name (an old name it reports as written counts as found)."""
    if not isinstance(name, str) or not name.strip():
        return None
    return HISTORICAL.get(name.strip(), name.strip())


# --- (c) peers in their own virtualenv ---------------------------------------------------------

PEER_SCRIPT = r'''
"""JSON in, JSON out: district of each address by one peer tool (run in the peers' virtualenv)."""
import json, sys, time
from importlib.metadata import version

tool, src, dst = sys.argv[1:4]
job = json.load(open(src, encoding="utf-8"))
if tool == "cpca":
    import cpca

    def one(texts):
        return [v if isinstance(v, str) else None for v in cpca.transform(texts)["区"].tolist()]
else:
    import jionlp

    def one(texts):
        return [jionlp.parse_location(t).get("county") for t in texts]


def run(texts):
    try:
        return one(texts), []
    except Exception as exc:  # a failing batch is retried row by row so each failure is counted
        out, errors = [], []
        for t in texts:
            try:
                out += one([t])
            except Exception as exc:
                out.append(None)
                errors.append([t, repr(exc)])
        return out, errors


run(job["warmup"])
started = time.perf_counter()
districts, errors = run(job["rows"])
seconds = time.perf_counter() - started
json.dump({"tool": tool, "version": version(tool), "seconds": seconds, "districts": districts,
           "errors": errors}, open(dst, "w", encoding="utf-8"), ensure_ascii=False)
'''


def peers_python() -> tuple[Path | None, str]:
    """The peers' virtualenv interpreter, creating the venv and installing the peers on first use."""
    python = PEERS_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    missing = [p for p in PEERS
               if subprocess.run([str(python), "-c", f"import {p}"], capture_output=True, check=False).returncode]
    if missing:
        done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *missing], capture_output=True,
                              text=True, check=False)
        if done.returncode:
            return None, f"pip install {' '.join(missing)} failed: {done.stderr.strip().splitlines()[-1:]}"
    return python, ""


def run_peer(python: Path, tool: str, warmup: list[str], rows: list[str]) -> dict:
    script = WORK / "geocode_peer.py"
    src, dst = WORK / f"geocode_peer_{tool}_in.json", WORK / f"geocode_peer_{tool}_out.json"
    script.write_text(PEER_SCRIPT, encoding="utf-8")
    src.write_text(json.dumps({"warmup": warmup, "rows": rows}, ensure_ascii=False), encoding="utf-8")
    done = subprocess.run([str(python), str(script), tool, str(src), str(dst)], capture_output=True, text=True,
                          check=False)
    if done.returncode:
        return {"tool": tool, "failed": done.stderr.strip().splitlines()[-1:] or ["exit " + str(done.returncode)]}
    return json.loads(dst.read_text(encoding="utf-8"))


# --- (d) the CLI and the server ---------------------------------------------------------------

def cli_batch(url: str, texts: list[str]) -> dict:
    src, dst = WORK / "geocode_in.csv", WORK / "geocode_out.csv"
    with src.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "address"])
        writer.writerows((i, t) for i, t in enumerate(texts))
    started = time.perf_counter()
    done = subprocess.run([CIM, "geocode", "--in", str(src), "--column", "address", "--out", str(dst)],
                          env=cim_env(url), cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"cim geocode --in failed:\n{done.stderr[-3000:]}")
    summary = re.search(r"([\d,]+) rows geocoded in ([\d.]+) s", done.stderr)
    with dst.open(encoding="utf-8") as fh:
        levels = [r["match_level"] for r in csv.DictReader(fh)]
    return {"wall_s": wall, "rows": int(summary.group(1).replace(",", "")), "batch_s": float(summary.group(2)),
            "levels": levels}


DRIVER_SCRIPT = r'''
"""Drive GET /geocode from N keep-alive connections: a warm-up, then the measured requests."""
import http.client, json, os, queue, sys, threading, time, urllib.parse

port, concurrency, src, dst, cpu = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
os.sched_setaffinity(0, {cpu})  # off the server's core
job = json.load(open(src, encoding="utf-8"))


def get(conn, q):
    started = time.perf_counter()
    conn.request("GET", "/geocode?q=" + urllib.parse.quote(q))
    response = conn.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - started
    level = json.loads(body).get("match_level") if response.status == 200 else None
    return elapsed, response.status, level


results, lock = [], threading.Lock()


def worker(todo, out):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while True:
        try:
            q = todo.get_nowait()
        except queue.Empty:
            break
        r = get(conn, q)
        with lock:
            out.append(r)
    conn.close()


def drive(queries, out):
    todo = queue.Queue()
    for q in queries:
        todo.put(q)
    threads = [threading.Thread(target=worker, args=(todo, out)) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# warm-up at the same concurrency: the server's connection pool grows to what the run needs
drive(job["warmup"], [])
started = time.perf_counter()
drive(job["rows"], results)
wall = time.perf_counter() - started
json.dump({"wall_s": wall, "latency_s": [r[0] for r in results], "status": [r[1] for r in results],
           "levels": [r[2] for r in results]}, open(dst, "w"))
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_and_drive(url: str, runs: list[tuple[int, list[str], list[str]]], driver_cpu: int) -> list[dict]:
    """Start `cim serve` (1 worker, on this process's core) on a free loopback port; run the driver (on
    ``driver_cpu``) for each (concurrency, warm-up queries, measured queries)."""
    port = free_port()
    log = (WORK / "geocode_serve.log").open("w")
    server = subprocess.Popen([CIM, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              env=cim_env(url), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"cim serve did not come up; see {WORK / 'geocode_serve.log'}")
            time.sleep(0.3)
        script = WORK / "geocode_driver.py"
        script.write_text(DRIVER_SCRIPT, encoding="utf-8")
        out = []
        for concurrency, warmup, queries in runs:
            src, dst = WORK / "geocode_driver_in.json", WORK / "geocode_driver_out.json"
            src.write_text(json.dumps({"warmup": warmup, "rows": queries}, ensure_ascii=False), encoding="utf-8")
            subprocess.run([sys.executable, str(script), str(port), str(concurrency), str(src), str(dst),
                            str(driver_cpu)], check=True)
            out.append({"concurrency": concurrency, **json.loads(dst.read_text())})
        return out
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


# --- the run ----------------------------------------------------------------------------------

def fresh_texts(rows: list[dict], seen: set[str], seed: int, target: int) -> list[str]:
    """About ``target`` random mixed spellings no earlier measurement used (for more timed passes)."""
    s2t = opencc.OpenCC("s2t")
    roads = sorted({r["road"] for r in rows})
    per_address = target // len(rows) + 1
    out: list[str] = []
    for i, row in enumerate(rows):
        rng = random.Random(seed * 1_000_003 + i)
        other_road = roads[(roads.index(row["road"]) + 1) % len(roads)]
        for _ in range(per_address * 3):  # attempts: some mixes repeat earlier texts
            text = write(row, mixed_style(rng, row, other_road), s2t)
            if text not in seen:
                seen.add(text)
                out.append(text)
                if len(out) >= (i + 1) * per_address:
                    break
    return out[:target]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixed", type=int, default=6, help="random mixed spellings per address (default 6)")
    parser.add_argument("--mix-passes", type=int, default=3,
                        help="extra timed batch passes on random mixes only, each on texts not seen before")
    parser.add_argument("--requests", type=int, default=2_000, help="measured GET /geocode requests per run")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--cpu", type=int, default=0, help="core the geocoder runs on (server and peers too); "
                                                           "the HTTP driver uses another")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the two databases")
    args = parser.parse_args()
    for path in (SAMPLES / "manifest.json", REAL_ADDRESSES, SHARED / "shanghai" / "districts_wgs84.geojson"):
        if not path.exists():
            raise SystemExit(f"{path}: not found")
    WORK.mkdir(exist_ok=True)
    cpus = sorted(os.sched_getaffinity(0))
    driver_cpu = next((c for c in cpus if c != args.cpu), args.cpu)
    os.sched_setaffinity(0, {args.cpu})  # the geocoder (and every child started from here) on one core

    server_url = database_url()
    tag = uuid.uuid4().hex[:8]
    sample_db, city_db = f"geobench_sample_{tag}", f"geobench_city_{tag}"
    try:
        sample_url = create_database(server_url, sample_db)
        initialise(engine_for(sample_url))
        engine_for(sample_url).dispose()
        log("loading the sample city …")
        run_cim(sample_url, "samples", "load", "--directory", str(SAMPLES), "--json")
        city_url = create_database(server_url, city_db, template=sample_db)
        log("loading the real districts and sub-districts …")
        area_reports = load_real_areas(city_url)
        report = render(measure(args, sample_url, city_url, driver_cpu), area_reports, args)
    finally:
        from cim.database import dispose_engines
        dispose_engines()
        if args.keep:
            log(f"kept databases {sample_db}, {city_db}")
        else:
            drop_databases(server_url, [sample_db, city_db])
    (WORK / "geocode.md").write_text(report, encoding="utf-8")
    print(report)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure(args: argparse.Namespace, sample_url: str, city_url: str, driver_cpu: int) -> dict:
    """Run (a)–(d); returns the figures for :func:`render`."""
    r: dict = {"load_before": os.getloadavg()}
    sample = engine_for(sample_url)
    with (SAMPLES / "xuhui" / "addresses_gcj02.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    with sample.connect() as conn:
        expected = entries_by_key(conn, rows)
        r["machine"] = machine(conn)
    labelled = labelled_set(rows, args.mixed, args.seed)
    texts = [x.text for x in labelled]
    r["rows"], r["n"] = len(rows), len(texts)
    r["doors"], r["dupes"] = sum(1 for row in rows if not row["lane"]), len(rows) - len(expected)

    # (a) and the first timed pass: the process is warmed on texts no measurement uses
    log(f"(a) {len(texts):,} spellings of {len(rows):,} addresses …")
    warmup = warmup_texts(rows)
    geocode_chunks(sample, warmup, lambda a: None)
    kept, timing, r["a_failures"] = geocode_chunks(
        sample, texts, lambda a: (a.match_level, a.entry.feature_id if a.entry else None, a.reason) if a
        else ("exception", None, None))
    r["labelled_timing"], r["mix_passes"] = timing, []
    r["by_kind"], r["levels"], r["misses"] = {}, Counter(), []
    for x, (level, feature_id, reason) in zip(labelled, kept):
        c = r["by_kind"].setdefault(x.kind, Counter())
        c["n"] += 1
        r["levels"][level] += 1
        if level == "door" and feature_id in expected[x.key]:
            c["right"] += 1
        else:
            r["misses"].append((x.text, level, reason))
    r["right"] = sum(c["right"] for c in r["by_kind"].values())
    seen = set(texts) | set(warmup)
    for k in range(1, args.mix_passes + 1):
        extra = fresh_texts(rows, seen, args.seed + 100 * k, len(texts))
        log(f"(d) timed pass on {len(extra):,} fresh random mixes …")
        _, timing, failures = geocode_chunks(sample, extra, lambda a: None)
        r["mix_passes"].append(timing)
        r["a_failures"] += failures

    # (d) the CLI on the same texts, fresh process on the same core
    log("(d) cim geocode --in … --out …")
    r["cli"] = cli_batch(sample_url, texts)
    r["cli_same"] = sum(lv == level for lv, (level, _, _) in zip(r["cli"].pop("levels"), kept))

    # (d) GET /geocode: texts the server has not seen (its warm-ups use others)
    pool = random.Random(args.seed).sample(texts, min(len(texts), 2 * (args.requests + 200)))
    half = len(pool) // 2
    log(f"(d) GET /geocode, {args.requests:,} requests at concurrency {args.concurrency}, then at 1 …")
    r["http"] = serve_and_drive(sample_url, [(args.concurrency, pool[:200], pool[200:half]),
                                             (1, pool[half:half + 200], pool[half + 200:])], driver_cpu)

    # (b) the real addresses on the city database (16 districts, 229 streets, the sample city)
    log("(b) 18,367 real addresses …")
    city = engine_for(city_url)
    with city.connect() as conn:
        names = dict(conn.execute(sa.text("SELECT code, name FROM districts WHERE valid_to IS NULL")).all())
        dictionary = gazetteer_for(conn).dictionary
    with REAL_ADDRESSES.open(encoding="utf-8") as fh:
        real = [row["原始地址"] or "" for row in csv.DictReader(fh)]
    shanghai = [t for t in real if "上海" in t]
    others = [t for t in real if "上海" not in t]

    def district(a: GeocodeResult | None) -> tuple[str, str | None, str | None]:
        if a is None:
            return "exception", None, None
        found = a.assignment.district.code if a.match_level != "none" and a.assignment.district else None
        return a.match_level, names.get(found, found), a.reason

    # the other rows first: they warm the process, so the 上海 rows are timed on texts it has not seen
    other_kept, _, other_failures = geocode_chunks(city, others, district)
    sh_kept, timing, sh_failures = geocode_chunks(city, shanghai, district)
    r["sh_s"] = timing.wall_s
    r["real_n"], r["real_empty"], r["sh_n"] = len(real), sum(1 for t in real if not t.strip()), len(shanghai)
    r["real_failures"] = other_failures + sh_failures
    r["real_levels"] = Counter(k[0] for k in other_kept + sh_kept)
    r["sh_levels"] = Counter(k[0] for k in sh_kept)
    r["placed_elsewhere"] = [t for t, k in zip(others, other_kept) if k[0] not in ("none", "exception")]
    r["others_n"] = len(others)
    started = time.perf_counter()
    parsed = [parse_address(t, dictionary).district_code for t in shanghai]
    r["parse_s"] = time.perf_counter() - started
    t2s = opencc.OpenCC("t2s")
    r["labels"] = [written_district(t, t2s) for t in shanghai]
    r["found"] = {"this project: geocoding answer": [k[1] for k in sh_kept],
                  "this project: parse only": [names.get(c, c) if c else None for c in parsed]}
    r["our_misses"] = [(t, lab[0], k[1], k[0], k[2]) for t, lab, k in zip(shanghai, r["labels"], sh_kept)
                       if lab[0] and k[1] != lab[0]]

    # (c) the peers on the same rows, warmed on other rows, in their own virtualenv, on the same core
    log("(c) jionlp, cpca …")
    python, why_not = peers_python()
    r["peers"] = {tool: run_peer(python, tool, [t for t in others if t][:1_000], shanghai) if python
                  else {"tool": tool, "failed": [why_not]} for tool in PEERS}
    r["load_after"] = os.getloadavg()
    return r


# --- report -----------------------------------------------------------------------------------

def pct(n: int, d: int) -> str:
    return f"{100 * n / d:.1f} %" if d else "–"


def level_rows(rows: list[tuple[str, Counter, int]]) -> list[str]:
    levels = [*MATCH_LEVELS] + (["exception"] if any(c.get("exception") for _, c, _ in rows) else [])
    return (["| rows | " + " | ".join(levels) + " |", "|---|" + "---:|" * len(levels)]
            + [f"| {label} | " + " | ".join(pct(c.get(k, 0), n) for k in levels) + " |" for label, c, n in rows])


def met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def render(r: dict, area_reports: dict, args: argparse.Namespace) -> str:
    n = r["n"]
    load = "/".join(f"{v:.1f}" for v in r["load_before"][:1] + r["load_after"][:1])
    L = ["## Gazetteer: messy spellings, real addresses, jionlp and cpca, speed (issue 4)", "",
         (f"`benchmarks/geocode.py`, one run. **Machine:** {r['machine']}. **Date:** {time.strftime('%Y-%m-%d')}. "
          f"The geocoder, the server and the peers run pinned to one core (CPU {args.cpu}); the HTTP driver on "
          f"another; PostgreSQL (embedded cluster, same machine) is not pinned. 1-minute load average at start/end: "
          f"{load} (other processes share the 2 cores)."), ""]

    L += ["### (a) Messy spellings of the sample city's addresses", "",
          (f"{n:,} distinct texts: each of the {r['rows']:,} sample addresses ({r['doors']:,} street doors, "
           f"{r['rows'] - r['doors']:,} in lanes; {r['dupes']} are in the file twice, so their texts collapse) in "
           f"the fixed ways below, plus {args.mixed} random mixes of them each (seed {args.seed}). **Right door** "
           "= match level `door` on the address's own gazetteer entry (the room's, when a room is written)."), "",
          "| spelling | texts | right door | share |", "|---|---:|---:|---:|"]
    for kind, c in r["by_kind"].items():
        L.append(f"| {kind} | {c['n']:,} | {c['right']:,} | {pct(c['right'], c['n'])} |")
    L += [f"| **all** | **{n:,}** | **{r['right']:,}** | **{pct(r['right'], n)}** |", "",
          f"Target ≥ 97 % right door: {met(r['right'] / n >= DOOR_TARGET)}.", "",
          *level_rows([("labelled set", r["levels"], n)]), ""]
    if r["a_failures"]:
        L += [f"**{len(r['a_failures'])} texts raised an exception**, e.g. `{r['a_failures'][0][0]}`.", ""]
    if r["misses"]:
        L += ["Misses (first 8):", ""] + [f"- `{t}` → {lv}: {why}" for t, lv, why in r["misses"][:8]] + [""]

    total, sh = r["real_n"], r["sh_n"]
    why = Counter(w for _, _, w in r["labels"])
    L += ["### (b) Robustness on 18,367 real addresses", "",
          (f"`../shared/data/addresses/cpca_addr.csv` ({total:,} rows, {r['real_empty']:,} of them empty) through "
           f"`geocode_many`, against the sample city plus the real districts ({area_reports['districts']['read']} "
           f"read, {area_reports['districts']['rejected']} rejected) and sub-districts loaded as streets "
           f"({area_reports['streets']['read']} read, {area_reports['streets']['rejected']} rejected)."), "",
          f"- Exceptions: **{len(r['real_failures'])}** of {total:,}.",
          f"- Rows not mentioning 上海 that were placed in the city anyway: {len(r['placed_elsewhere']):,} of "
          f"{r['others_n']:,} (most name a district or a road of Shanghai without the city, e.g. "
          + ", ".join(f"`{t}`" for t in r["placed_elsewhere"][:3]) + ").",
          (f"- Rows mentioning 上海: {sh:,}. The *district written* is the first Shanghai district name in the "
           "row — full or old name, or a short form right after 上海/沪 not starting a road name (上海浦东…, but "
           "not 浦东南路) — with old names mapped 闸北→静安, 卢湾→黄浦, 南汇→浦东新区, 崇明县→崇明区. "
           f"Labelled: {why['labelled']:,}; no district written: {why['no district written']:,}; district only in "
           f"a second address or after another place (北京…；上海…): {why['second address']:,} (not labelled)."), "",
          *level_rows([("all rows", r["real_levels"], total), ("rows mentioning 上海", r["sh_levels"], sh)]), ""]

    labelled = [i for i, lab in enumerate(r["labels"]) if lab[0]]
    old = [i for i in labelled if r["labels"][i][1] in HISTORICAL]
    m = len(labelled)

    def tally(found: list[str | None]) -> tuple[int, int, int, int]:
        truth = {i: r["labels"][i][0] for i in labelled}
        return (sum(found[i] == truth[i] for i in labelled),
                sum(found[i] is not None and found[i] != truth[i] for i in labelled),
                sum(found[i] is None for i in labelled), sum(found[i] == truth[i] for i in old))

    ours_rate, parse_rate = sh / r["sh_s"], sh / r["parse_s"]
    ours_agree = tally(r["found"]["this project: geocoding answer"])[0]
    L += ["### (c) District extraction compared with jionlp and cpca", "",
          (f"The same {sh:,} rows mentioning 上海; agreement over the {m:,} labelled rows ({len(old)} of them write "
           "an old district name). Each peer runs in its own virtualenv, in a child process on the same core, "
           "warmed up on 1,000 other rows; rows/s over all the 上海 rows (cpca: one `transform` call on the list; "
           "jionlp: `parse_location` per row). A peer reporting the old name as written counts as right. This "
           "project: the district of the full geocoding answer (point, grid assignment, responsibility — what a "
           "case system gets), and the parse alone (`parse_address`), the step comparable to what the peers do."),
          "", ("| tool | version | district = written | share | other district | none | old names right | "
          "rows/s | this project ÷ tool: agreement | this project ÷ tool: rows/s (geocode / parse) |"),
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, found in r["found"].items():
        agree, wrong, none, old_ok = tally(found)
        rate = ours_rate if label.endswith("answer") else parse_rate
        L.append(f"| {label} | — | {agree:,} | {pct(agree, m)} | {wrong} | {none} | {old_ok}/{len(old)} | "
                 f"{rate:,.0f} | — | — |")
    for tool in PEERS:
        p = r["peers"][tool]
        if "failed" in p:
            L.append(f"| {tool} | not run: {'; '.join(p['failed'])} | – | – | – | – | – | – | – | – |")
            continue
        agree, wrong, none, old_ok = tally([peer_name(v) for v in p["districts"]])
        rate = sh / p["seconds"]
        raised = f" ({len(p['errors'])} rows raised)" if p["errors"] else ""
        L.append(f"| {tool} | {p['version']} | {agree:,}{raised} | {pct(agree, m)} | {wrong} | {none} | "
                 f"{old_ok}/{len(old)} | {rate:,.0f} | {ours_agree / agree if agree else float('inf'):.2f}× | "
                 f"{ours_rate / rate:.2f}× / {parse_rate / rate:.2f}× |")
    L.append("")
    if r["our_misses"]:
        L += ["This project's disagreements (geocoding answer):", ""]
        L += [f"- `{t.strip()}`: written {lab}, found {found or 'none'} ({level}: {why})"
              for t, lab, found, level, why in r["our_misses"][:12]] + [""]

    cli = r["cli"]
    cli_rate = cli["rows"] / cli["batch_s"]
    own = r["labelled_timing"]
    mixes = sorted(r["mix_passes"], key=lambda t: t.rate)

    def cpu(t: Timing) -> str:
        return f"{t.cpu_rate:,.0f}" if t.cpu_rate else "–"

    L += ["### (d) Speed", "",
          ("Batch rows/s by wall clock, and per CPU-second of this process plus its PostgreSQL backend (which does "
           "not count what other processes took from the core). Every pass runs on texts the process has not seen "
           "(the gazetteer caches parses), after a warm-up on others."), "",
          "| path | rows | seconds | rows/s | rows per CPU-second | target ≥ 10,000/s |",
          "|---|---:|---:|---:|---:|---|",
          (f"| Python API `geocode_many`, chunks of {CHUNK:,}, one core: the labelled set of (a) | {own.rows:,} | "
           f"{own.wall_s:.2f} | {own.rate:,.0f} | {cpu(own)} | {met(own.rate >= PY_TARGET_ROWS_S)} |")]
    if mixes:
        mid = mixes[len(mixes) // 2]
        L.append(f"| the same on random mixes only (more traditional text and Chinese numerals, so more "
                 f"normalisation per row): median of {len(mixes)} passes (all: "
                 f"{', '.join(f'{t.rate:,.0f}' for t in mixes)}) | {mid.rows:,} | {mid.wall_s:.2f} | {mid.rate:,.0f} | "
                 f"{cpu(mid)} | {met(mid.rate >= PY_TARGET_ROWS_S)} |")
    L += [(f"| `cim geocode --in … --out …` on the labelled set, one core: the batch time it reports (fresh "
           f"process, so it includes building the gazetteer; reading and writing the CSV) | {cli['rows']:,} | "
           f"{cli['batch_s']:.2f} | {cli_rate:,.0f} | – | {met(cli_rate >= PY_TARGET_ROWS_S)} |"),
          (f"| the same, whole process wall time (includes Python start-up and imports) | {cli['rows']:,} | "
           f"{cli['wall_s']:.2f} | {cli['rows'] / cli['wall_s']:,.0f} | – | – |"), ""]
    L += [
          f"The CLI's match levels equal the Python API's on {r['cli_same']:,} of {n:,} rows.", "",
          ("`GET /geocode` against `cim serve` (uvicorn, 1 worker, pinned to one core) on 127.0.0.1; requests from "
           "a separate process over keep-alive connections; queries drawn from the labelled set, none seen by the "
           "server before (each run is preceded by 200 warm-up requests with other texts at the same concurrency); "
           "latency measured by the client:"), "",
          ("| concurrency | requests | non-200 | answers at door level | p50 ms | p90 ms | p99 ms | max ms | "
           "requests/s | target p99 ≤ 20 ms |"),
          "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for h in r["http"]:
        lat = np.array(h["latency_s"]) * 1000
        bad = sum(s != 200 for s in h["status"])
        p50, p90, p99 = np.percentile(lat, [50, 90, 99])
        doors = sum(level == "door" for level in h["levels"])
        L.append(f"| {h['concurrency']} | {len(lat):,} | {bad} | {pct(doors, len(lat))} | {p50:.1f} | {p90:.1f} | "
                 f"{p99:.1f} | {lat.max():.1f} | {len(lat) / h['wall_s']:,.0f} | {met(p99 <= P99_TARGET_MS)} |")
    L.append("")
    return "\n".join(L)


if __name__ == "__main__":
    main()
