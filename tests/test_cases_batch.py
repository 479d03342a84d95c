"""The set-based import (cases/batch.py) on a real PostGIS: the same file imported one case at a
time and set-based into two fresh bases gives the same cases, field by field, and the same logs;
tickets are taken once; a killed import leaves whole chunks only.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from cases.calendar import LOCAL
from cases.importer import import_cases
from cases.model import case_log, get_case
from cim.database import engine_for
from cim.bootstrap import initialise
from tests.conftest import CIM, PROJECT, create_database
from tests.test_geocode import SAMPLES, load_city

NOW = datetime(2026, 11, 27, 16, 30, tzinfo=LOCAL)  # a Friday afternoon: deadlines cross the weekend
FIELDS = ("channel", "class", "description", "address", "x", "y", "crs", "urgency", "external_id",
          "reporter_contact", "reported_at")


def _load_parts(engine) -> None:
    """The sample city's parts layer (部件), through the real loader, as load_city loads the rest."""
    from ingest.run import IngestOptions, ingest_files

    e = next(e for e in json.loads((SAMPLES / "manifest.json").read_text(encoding="utf-8")) if e["layer"] == "parts")
    options = IngestOptions(crs=e["crs"], encoding=e["encoding"], layer_name=e["layer_name"], x=e["x"], y=e["y"],
                            z=e["z"], wkt=e["wkt"], address_column=e["address_column"], mapping=e["map"] or {})
    ingest_files("parts", [SAMPLES / e["path"]], options, engine)


def _fresh_city(server_url: str):
    url = create_database(server_url)
    engine = engine_for(url)
    initialise(engine)
    load_city(engine)
    _load_parts(engine)
    return url, engine


@pytest.fixture(scope="module")
def two_cities(server_url):
    return _fresh_city(server_url), _fresh_city(server_url)


def _rows(engine) -> list[dict[str, str]]:
    """A hotline export over the sample city: doors of its roads, points on its parts (bound to
    them), repeats near each other (duplicate suggestions), emergencies, tickets given twice, and
    reports no rule can place (unknown address, a point in 浦东, no place at all)."""
    with engine.begin() as conn:
        doors = conn.execute(sa.text(
            "SELECT road, door_number FROM addresses WHERE valid_to IS NULL AND road IS NOT NULL "
            "AND door_number IS NOT NULL ORDER BY road, door_number LIMIT 60")).all()
        parts = conn.execute(sa.text(
            "SELECT part_subclass, ST_X(p), ST_Y(p) FROM (SELECT part_subclass, ST_Transform(geom, 4326) AS p "
            "FROM parts WHERE valid_to IS NULL ORDER BY object_code LIMIT 20) AS q")).all()
    events = ("道路破损", "暴露垃圾", "E0401", "违法搭建", "群租")
    rows: list[dict[str, str]] = []

    def add(n: int, **kw: str) -> None:
        rows.append({"channel": "hotline_12345", "external_id": f"T-{n}", "urgency": "normal",
                     "reported_at": f"2026-11-27T{8 + n % 8:02d}:{n % 60:02d}:00+08:00", **kw})

    for n, (road, door) in enumerate(doors):
        add(n, **{"class": events[n % len(events)], "address": f"{road}{door}号", "description": f"第{n}号工单",
                  "urgency": "emergency" if n % 9 == 0 else "normal", "reporter_contact": f"1391234{n:04d}"})
        if n % 7 == 0:  # the same place again, later: a duplicate candidate, its own ticket
            add(1000 + n, **{"class": events[n % len(events)], "address": f"{road}{door}号"})
    for n, (subclass, lon, lat) in enumerate(parts):
        add(2000 + n, **{"class": subclass, "x": repr(lon), "y": repr(lat), "crs": "EPSG:4326",
                         "channel": "grid_patrol"})
    add(3000, **{"class": "道路破损", "address": "火星路999号"})
    add(3001, **{"class": "暴露垃圾", "x": "121.60", "y": "31.30"})
    add(3002, **{"class": "道路破损"})
    rows.append({"channel": "media", "class": "暴露垃圾", "address": "汾阳路61号"})  # no ticket at all
    rows.append(dict(rows[3]))  # a ticket twice in one file
    rows.insert(40, dict(rows[30]))  # and twice across chunks
    return rows


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _state(engine) -> list[tuple[dict, list[dict]]]:
    with engine.connect() as conn:
        ids = conn.execute(sa.text("SELECT id FROM cases ORDER BY id")).scalars().all()
        return [(get_case(conn, i).to_dict(),
                 [{k: v for k, v in e.to_dict().items() if k != "id"} for e in case_log(conn, i)]) for i in ids]


def test_batch_import_equals_the_one_at_a_time_intake(two_cities, tmp_path):
    (_, single), (_, batch) = two_cities
    src = _write(tmp_path / "hotline.csv", _rows(single))
    one = import_cases(single, src, now=NOW, one_by_one=True, chunk=11)
    many = import_cases(batch, src, now=NOW, chunk=11)
    assert one == many
    assert many.known == 2 and many.created == many.read - 2
    assert many.dispatched > 50 and many.manual >= 3
    expected, got = _state(single), _state(batch)
    assert len(got) == many.created
    for want, have in zip(expected, got):
        assert have == want
    cases = [c for c, _ in got]
    assert any(c["part_object_code"] for c in cases), "no case was bound to a part"
    assert any(log[0]["data"]["possible_duplicates"] for _, log in got), "no duplicate was suggested"
    assert {c["urgency"] for c in cases} == {"normal", "emergency"}
    assert any(c["manual_reason"] and c["manual_reason"].startswith("outside every grid") for c in cases)

    again = import_cases(batch, src, now=NOW, chunk=11)  # a rerun: every ticket is known
    assert (again.created, again.known) == (1, again.read - 1)  # the row without a ticket comes in again


def _wait_for(predicate, seconds: float = 120.0) -> None:
    end = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("the import never got that far")
        time.sleep(0.05)


def test_a_killed_import_leaves_whole_chunks(server_url, tmp_path):
    url, engine = _fresh_city(server_url)
    base = _rows(engine)
    unique = list({r.get("external_id", "X"): r for r in base}.values())  # every row opens a case
    rows = [dict(r, external_id=f"{r.get('external_id', 'X')}-{k}") for k in range(12) for r in unique]
    src = _write(tmp_path / "big.csv", rows)
    chunk = 50
    env = {**os.environ, "CIM_DATABASE_URL": url}
    proc = subprocess.Popen([CIM, "cases", "import", str(src), "--chunk", str(chunk), "--now", NOW.isoformat()],
                            env=env, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def count() -> int:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT count(*) FROM cases")).scalar()
    try:
        _wait_for(lambda: count() > 0 or proc.poll() is not None)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the import ended before it could be killed"
    with engine.connect() as conn:
        n = conn.execute(sa.text("SELECT count(*) FROM cases")).scalar()
        incomplete = conn.execute(sa.text(
            "SELECT count(*) FROM cases c WHERE (SELECT count(*) FROM case_events e WHERE e.case_id = c.id) <> 3"
        )).scalar()
    assert 0 < n < len(rows) and n % chunk == 0 and incomplete == 0
    rest = import_cases(engine, src, now=NOW, chunk=chunk)  # the rerun takes the rest in
    assert rest.known == n and rest.created + rest.known == len(rows)



def test_a_chunk_whose_ticket_races_in_meanwhile_is_taken_again(two_cities):
    """Two intakes of ticket R-1 at once: the second chunk's COPY waits on the first's unique
    index entry and, when the first commits, fails as TicketRaced (the importer takes the chunk
    again and finds the ticket known); no second case."""
    import threading

    from cases.batch import TicketRaced, intake_batch
    from cases.intake import CaseReport

    _, engine = two_cities[1]

    def report(ticket: str) -> CaseReport:
        return CaseReport(channel="hotline_12345", class_code="道路破损", address_text="汾阳路61号", external_id=ticket)

    with engine.begin() as warm:  # what is seeded or cached on first use, done beforehand
        intake_batch(warm, [report("R-0")], now=NOW)
    first = engine.connect()
    trans = first.begin()
    intake_batch(first, [report("R-1")], now=NOW)
    outcome = {}

    def second() -> None:
        try:
            with engine.begin() as conn:
                intake_batch(conn, [report("R-1")], now=NOW)
            outcome["result"] = "taken"
        except TicketRaced:
            outcome["result"] = "raced"
    worker = threading.Thread(target=second)
    worker.start()

    def copy_waits() -> bool:  # a fresh connection each time: pg_stat_activity is a per-transaction snapshot
        with engine.connect() as watch:
            return watch.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'COPY cases%'"
            )).scalar() > 0
    try:
        _wait_for(lambda: not worker.is_alive() or copy_waits(), 30)
    finally:
        trans.commit()
        first.close()
        worker.join(30)
    assert outcome == {"result": "raced"}
    with engine.connect() as check:
        assert check.execute(sa.text("SELECT count(*) FROM cases WHERE external_id = 'R-1'")).scalar() == 1


def test_set_based_actions_equal_the_one_at_a_time_actions(two_cities):
    """``cases.bulk.act_many`` (the simulated day's lifecycle) leaves the cases and their logs as
    ``act`` one action at a time does, refuses what ``act`` refuses (item by item), and a case named
    twice sees its first action's result."""
    from datetime import timedelta

    from cases.batch import intake_batch
    from cases.bulk import BulkItem, act_many
    from cases.intake import CaseReport
    from cases.lifecycle import Action, act, verifiers
    from cim.errors import ConflictError, UserError

    (_, single), (_, bulk) = two_cities
    reports = [CaseReport(channel="hotline_12345", class_code="道路破损", address_text=f"汾阳路{n}号",
                          external_id=f"BULK-{n}") for n in (11, 13, 15, 17, 19, 21)]
    ids = {}
    for engine in (single, bulk):
        with engine.begin() as conn:
            ids[engine] = [o.case_id for o in intake_batch(conn, reports, now=NOW)]
    with single.connect() as conn:
        worker = verifiers(conn, get_case(conn, ids[single][0]))[0]
    t1, t2, t3 = NOW + timedelta(hours=1), NOW + timedelta(hours=5), NOW + timedelta(days=1)
    # (case number, action, role, actor, note, data, time)
    script = [(n, "accept", "department", "处置员", None, {}, t1) for n in range(5)] + [
        (5, "return", "department", "处置员", "不归我们管", {}, t1),
        (5, "handle", "department", "处置员", "?", {}, t1),  # refused: returned, not accepted (409)
        (0, "handle", "department", "处置员", "已修", {}, t2), (1, "handle", "department", "处置员", "已修", {}, t2),
        (2, "handle", "department", "处置员", "已修", {}, t2),
        (3, "request_extension", "department", "处置员", "等材料", {"hours": 16}, t2),
        (3, "approve_extension", "platform", "平台", None, {}, t3),
        (0, "verify", "supervisor", worker, None, {"passed": True}, t3),
        (1, "verify", "supervisor", worker, "没修好", {"passed": False}, t3),
        (2, "verify", "supervisor", "路人甲", None, {"passed": True}, t3),  # refused: not the grid's worker (403)
        (1, "handle", "department", "处置员", "重修", {}, t3),  # sees the failed verification: accepted again
        (4, "merge", "platform", "平台", "重复上报", {"into": 3}, t3),  # into: a case number, made an id below
        (3, "merge", "platform", "平台", "重复上报", {"into": 4}, t3),  # refused: case 4 is merged now (409)
    ]

    def data_of(engine, data):
        return {**data, "into": ids[engine][data["into"]]} if "into" in data else data

    refused_single = []
    for k, (n, action, role, actor, note, data, at) in enumerate(script):
        try:
            with single.begin() as conn:
                act(conn, ids[single][n], Action(action, actor, role, note, data_of(single, data)), now=at)
        except UserError as exc:
            refused_single.append((k, type(exc)))
    with bulk.begin() as conn:
        done = act_many(conn, [BulkItem(ids[bulk][n], Action(action, actor, role, note, data_of(bulk, data)), at)
                               for n, action, role, actor, note, data, at in script], now=t3)
    assert sorted((k, type(e)) for k, e in done.errors.items()) == refused_single
    assert [t for _, t in refused_single] == [ConflictError, type(done.errors[14]), ConflictError]
    assert done.errors[14].status == 403

    def state(engine):
        """What the actions changed: the cases' lifecycle fields and the log rows after intake's three
        (ids and the person dispatched to may differ between the two bases: earlier tests of the module)."""
        from cases.bulk import _MUTABLE

        number = {case_id: n for n, case_id in enumerate(ids[engine])}  # ids → case numbers, to compare

        def numbered(data):
            return {k: number.get(v, v) if k in ("into", "case_id", "merged_into") else v for k, v in data.items()}

        with engine.connect() as conn:
            out = []
            for case_id in ids[engine]:
                c = get_case(conn, case_id)
                out.append((numbered({k: getattr(c, k) for k in _MUTABLE}),
                            [(e.actor, e.role, e.action, e.from_status, e.to_status, e.note, numbered(e.data), e.at)
                             for e in case_log(conn, case_id)[3:]]))
            return out

    assert state(bulk) == state(single)
    assert [c.status for c in (done.cases[i] for i in ids[bulk])] == [
        "closed", "handled", "handled", "accepted", "merged", "returned"]

    # the returned case dispatched again by machine (the returning department left out), and a
    # dispatch the rules refuse (case 0 is closed): as act does it
    redispatch = [(5, Action("dispatch", "平台", "platform")), (0, Action("dispatch", "平台", "platform"))]
    with single.begin() as conn:
        act(conn, ids[single][5], redispatch[0][1], now=t3)
    with bulk.begin() as conn:
        again = act_many(conn, [BulkItem(ids[bulk][n], a, t3) for n, a in redispatch], now=t3)
    assert list(again.errors) == [1] and isinstance(again.errors[1], ConflictError)

    def after(engine):
        with engine.connect() as conn:
            c = get_case(conn, ids[engine][5])
            last = case_log(conn, c.id)[-1]
            return (c.status, c.department_code, c.post_code, c.manual_reason, c.due_at, c.returned_departments,
                    (last.actor, last.role, last.action, last.from_status, last.to_status))
    assert after(bulk) == after(single)
    assert after(bulk)[-1][2] in ("dispatch", "to_manual_queue")


def test_the_group_intake_answers_what_reading_the_cases_back_gives(two_cities):
    """POST /cases answers a new case from the row the batch wrote (cases.batch.case_of_row), not by reading
    it back: for every kind of report — a door, a part with its point, an unknown address, a point outside
    every grid, no place at all, emergencies, a ticket already in — the answer equals the stored case, field
    by field and as JSON (under the API's scope, through its engine, with the server's kept constants)."""
    from cases.batch import intake_each
    from cases.constants import ConstantsCache
    from cases.importer import to_report
    from cim.database import reader_engine
    from cim.jurisdiction import Scope, acting_as

    _, owner = two_cities[1]
    rows = list({f"G-{r.get('external_id')}": dict(r, external_id=f"G-{r.get('external_id')}")
                 for r in _rows(owner)[::3] + _rows(owner)[-6:]}.values())  # every third, and the odd ones
    reports = [to_report(f"row {n}", row) for n, row in enumerate(rows)]
    constants = ConstantsCache(60)
    engine = reader_engine(owner)
    with acting_as(Scope("city", role="admin")):
        with engine.begin() as conn:
            first = intake_each(conn, reports[:5], now=NOW, constants=constants.get(conn))
        with engine.begin() as conn:
            results = intake_each(conn, reports, now=NOW, constants=constants.get(conn))
    assert constants.reads == 1
    assert [r.created for r in results] == [False] * 5 + [True] * (len(reports) - 5)
    assert [r.case.id for r in results[:5]] == [r.case.id for r in first]
    with owner.connect() as conn:
        for result in results:
            stored = get_case(conn, result.case.id)
            assert result.case == stored
            assert json.dumps(result.case.to_dict(), sort_keys=True, default=str) == \
                json.dumps(stored.to_dict(), sort_keys=True, default=str)
    kinds = {(r.case.status, r.case.manual_reason is None, r.case.x is None) for r in results}
    assert {("dispatched", True, False), ("registered", False, True), ("registered", False, False)} <= kinds


def test_one_statement_checks_the_tickets_and_draws_the_ids_in_input_order(two_cities):
    """A chunk's tickets already in and the ids of the cases it opens come from one statement (one round trip): a
    report without a ticket, a new ticket, the same ticket again and a ticket already in open exactly the new cases,
    whose ids follow each other in input order — none drawn for the reports that open no case."""
    from cases.batch import intake_each
    from cases.importer import to_report

    _, engine = two_cities[1]
    door = next(r for r in _rows(engine) if r.get("address") and not r.get("x"))
    rows = [dict(door, external_id="ONE-1"), dict(door, external_id=""), dict(door, external_id="ONE-2"),
            dict(door, external_id="ONE-2"), dict(door, external_id="ONE-0"), dict(door, external_id="")]
    sent: list[str] = []
    listener = lambda conn, cursor, statement, *args: sent.append(statement)  # noqa: E731
    with engine.begin() as conn:
        intake_each(conn, [to_report("row 0", dict(door, external_id="ONE-0"))], now=NOW)  # a ticket already in
        sa.event.listen(engine, "before_cursor_execute", listener)
        try:
            results = intake_each(conn, [to_report(f"row {k}", row) for k, row in enumerate(rows)], now=NOW)
        finally:
            sa.event.remove(engine, "before_cursor_execute", listener)
        conn.rollback()
    assert [r.created for r in results] == [True, True, True, False, False, True]
    ids = [r.case.id for r in results]
    assert ids[:3] == list(range(ids[0], ids[0] + 3)) and ids[5] == ids[0] + 3 and ids[3] == ids[2]
    drawing = [statement for statement in sent if "nextval(" in statement]
    assert len(drawing) == 1 and "JOIN cases c USING (channel, external_id)" in drawing[0]
    assert not any("JOIN cases c USING" in statement for statement in sent if statement not in drawing)


def test_the_servers_kept_constants_follow_the_catalogue(two_cities):
    """The catalogue, department kinds and calendar a server keeps are read once per max_age_s; a class
    added meanwhile is found at once (a key they do not know is looked up), a changed calendar is read
    once they are older than max_age_s."""
    from datetime import date

    from cases.constants import ConstantsCache, classes_of
    from cim.errors import UserError

    _, engine = two_cities[1]
    clock = [0.0]
    cache = ConstantsCache(5, clock=lambda: clock[0])
    holiday = date(2031, 5, 6)
    with engine.begin() as conn:
        kept = cache.get(conn)
        assert cache.get(conn) is kept and cache.reads == 1
        assert not isinstance(classes_of(conn, ["道路破损"], kept)["道路破损"], UserError)
        conn.execute(sa.text(
            "INSERT INTO case_classes (code, kind, name, parent_code, department_kind) SELECT 'E9990', kind, "
            "'测试新类', code, department_kind FROM case_classes WHERE code = (SELECT parent_code FROM case_classes "
            "WHERE name = '道路破损')"))
        found = classes_of(conn, ["E9990", "测试新类", "没有这个类"], kept)
        assert found["E9990"].name == "测试新类" and found["测试新类"].code == "E9990"
        assert isinstance(found["没有这个类"], UserError) and "valid 小类" in str(found["没有这个类"])
        conn.execute(sa.text("INSERT INTO case_calendar (day, kind, name) VALUES (:d, 'holiday', 'test')"),
                     {"d": holiday})
        clock[0] += 4
        assert holiday not in cache.get(conn).calendar.holidays  # still the kept ones
        clock[0] += 2
        fresh = cache.get(conn)
        assert cache.reads == 2 and holiday in fresh.calendar.holidays and "E9990" in fresh.classes
        conn.rollback()


def test_the_servers_kept_constants_spare_the_layer_versions_and_the_chains(server_url):
    """With the kept constants a group of reports asks the base neither for the geocoder's layer versions nor for
    the responsibility chains of grids met before (two of a group's ~10 round trips); the chains a dispatch uses
    are the base's again once the constants are older than max_age_s, and then at once."""
    from cases.batch import intake_each
    from cases.constants import ConstantsCache
    from cases.importer import to_report

    _, engine = _fresh_city(server_url)
    doors = [r for r in _rows(engine) if r.get("address") and not r.get("x")][:12]
    clock = [0.0]
    cache = ConstantsCache(5, clock=lambda: clock[0])
    sent: list[str] = []

    def group(conn, n: int) -> list:
        reports = [to_report(f"row {k}", dict(r, external_id=f"K{n}-{k}")) for k, r in enumerate(doors)]
        sent.clear()
        results = intake_each(conn, reports, now=NOW, constants=cache.get(conn))
        return [r.case for r in results]

    def asked(fragment: str) -> bool:
        return any(fragment in statement for statement in sent)

    listener = lambda conn, cursor, statement, *args: sent.append(statement)  # noqa: E731
    sa.event.listen(engine, "before_cursor_execute", listener)
    try:
        with engine.begin() as conn:
            first = group(conn, 1)
            assert asked("FROM layers") and asked("jsonb_agg(jsonb_build_object(")  # the constants are read
            again = group(conn, 2)
            assert not asked("FROM layers") and not asked("jsonb_agg(jsonb_build_object(")
            assert [c.grid_code for c in again] == [c.grid_code for c in first]
            assert {c.status for c in again} == {"dispatched"}
            conn.execute(sa.text("UPDATE persons SET name = name || '·新'"))  # every person, renamed
            clock[0] += 4
            assert not any(c.person_name.endswith("·新") for c in group(conn, 3))  # the kept chains
            clock[0] += 2
            renamed = group(conn, 4)
            assert asked("FROM layers") and asked("jsonb_agg(jsonb_build_object(")
            assert all(c.person_name.endswith("·新") for c in renamed)
    finally:
        sa.event.remove(engine, "before_cursor_execute", listener)
    assert cache.reads == 2


def test_a_set_based_write_bumps_the_layer_itself_and_queues_no_trigger_call(two_cities):
    """The cases' layer-version trigger (migration 0010_case_import) skips the rows of a writer that said it bumps
    the version itself (``defer_cases_bump``); every other writer's change still bumps it at the commit."""
    from cases.model import bump_cases_layer, defer_cases_bump

    (_, engine), _ = two_cities
    version = sa.text("SELECT version FROM layers WHERE table_name = 'case_features'")
    touch = sa.text("UPDATE cases SET description = description WHERE id IN (SELECT id FROM cases ORDER BY id LIMIT 5)")
    fire = sa.text("SELECT set_config('cim.case_features_bumped', '', true); SET CONSTRAINTS ALL IMMEDIATE")
    with engine.connect() as conn:
        v0 = conn.execute(version).scalar()
        defer_cases_bump(conn)
        assert conn.execute(touch).rowcount == 5
        conn.execute(fire)  # a queued trigger call would bump now, the flag being cleared
        assert conn.execute(version).scalar() == v0, "the set-based writer's rows were queued for the trigger"
        bump_cases_layer(conn)
        assert conn.execute(version).scalar() == v0 + 1
        conn.rollback()

        conn.execute(touch)  # any other writer: its first row is queued and bumps once
        conn.execute(fire)
        assert conn.execute(version).scalar() == v0 + 1
        conn.rollback()


def test_the_pipeline_starts_and_ends_with_small_chunks():
    from cases.importer import chunk_spans

    for n, chunk in ((20_000, 2000), (3000, 2000), (4001, 2000), (7, 2000), (600, 50), (0, 10)):
        spans = chunk_spans(n, chunk)
        sizes = [end - start for start, end in spans]
        assert [s for s, _ in spans] == ([0] + [e for _, e in spans[:-1]] if n else []) and sum(sizes) == n
        assert all(0 < size <= chunk for size in sizes)
    sizes = [end - start for start, end in chunk_spans(20_000, 2000)]
    assert sizes[0] == sizes[-1] == 500 and max(sizes) == 2000 and len(sizes) == 12
    assert {end - start for start, end in chunk_spans(600, 50)} == {50}  # too small a chunk to cut: all equal


def test_the_log_lines_written_straight_equal_the_log_rows_escaped(two_cities):
    """``_event_lines`` (the import's log as COPY text, built while the chunk before is written) gives what
    escaping ``_events``'s rows value by value gives, free texts with tabs, backslashes and line breaks too."""
    from cases.batch import _events, _lines, prepare_batch
    from cases.intake import CaseReport

    (_, engine), _ = two_cities
    reports = [CaseReport("hotline_12345", "道路破损", description="路面\t龟裂\\N\n第二行", address_text="汾阳路150号"),
               CaseReport("media", "暴露垃圾", description="C:\\temp", address_text="火星路\t1号"),
               CaseReport("grid_patrol", "道路积水", address_text="汾阳路120号附近")]
    with engine.connect() as conn:
        p = prepare_batch(conn, reports, now=NOW)
        conn.rollback()
    assert {row["status"] for row in p.case_rows} == {"dispatched", "registered"}
    assert p.event_lines == _lines(_events(p.case_rows, p.fresh, p.locs, p.classes, {}, p.now))


def test_a_small_group_leaves_the_layer_bump_to_the_trigger(two_cities):
    """A group of concurrent reports (fewer than SET_BASED_BUMP_ROWS) sends no statement of the set-based bump
    (two round trips cost more than the trigger's queued calls for tens of rows) and the layer's version still
    moves once with the commit; a chunk from SET_BASED_BUMP_ROWS on bumps it itself."""
    from cases import batch
    from cases.batch import intake_batch
    from cases.intake import CaseReport

    (_, engine), _ = two_cities
    version = sa.text("SELECT version FROM layers WHERE table_name = 'case_features'")
    statements: list[str] = []

    def seen(conn, cursor, statement, *args) -> None:
        statements.append(statement)

    def reports(tag: str, n: int) -> list[CaseReport]:
        return [CaseReport(channel="hotline_12345", class_code="道路破损", address_text=f"汾阳路{2 * k + 1}号",
                           external_id=f"{tag}-{k}") for k in range(n)]

    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        for tag, n, threshold in (("SMALL", 3, batch.SET_BASED_BUMP_ROWS), ("LARGE", 3, 3)):
            with engine.connect() as conn:
                v0 = conn.execute(version).scalar()
            statements.clear()
            saved, batch.SET_BASED_BUMP_ROWS = batch.SET_BASED_BUMP_ROWS, threshold
            try:
                with engine.begin() as conn:
                    assert all(o.created for o in intake_batch(conn, reports(tag, n), now=NOW))
            finally:
                batch.SET_BASED_BUMP_ROWS = saved
            bumps = [s for s in statements if "case_features_bumped" in s]
            assert len(bumps) == (0 if tag == "SMALL" else 2), (tag, bumps)
            with engine.connect() as conn:
                assert conn.execute(version).scalar() == v0 + 1, tag
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)


def test_an_imports_duplicates_found_beside_the_writer_equal_the_databases(two_cities, tmp_path):
    """The import finds its duplicate suggestions while preparing (cases.duplicates: the cases that were in
    before it asked of the database, its own earlier cases in memory), not by the writer's statement: an
    import into a base that holds earlier open cases suggests, for every new case, exactly the open cases of
    its class within its radius and window before it with lower ids, in the single intake's order — from
    before the import, from earlier chunks and from the same chunk."""
    from cases.catalogue import class_by_code
    from cases.intake import duplicates_of

    _, (_, engine) = two_cities
    rows = [r for r in _rows(engine) if r.get("external_id")]
    first = _write(tmp_path / "first.csv", [dict(r, external_id=f"DA-{r['external_id']}") for r in rows])
    second = _write(tmp_path / "second.csv", [dict(r, external_id=f"DB-{r['external_id']}") for r in rows])
    import_cases(engine, first, now=NOW, chunk=13)
    with engine.connect() as conn:
        before = conn.execute(sa.text("SELECT coalesce(max(id), 0) FROM cases")).scalar()
    report = import_cases(engine, second, now=NOW, chunk=13)
    assert report.created == len({r["external_id"] for r in rows})
    earlier = within = 0
    with engine.connect() as conn:
        for i in conn.execute(sa.text("SELECT id FROM cases WHERE id > :b ORDER BY id"), {"b": before}).scalars():
            case = get_case(conn, i)
            want = [d for d in duplicates_of(conn, case, class_by_code(conn, case.class_code)) if d < i]
            assert case_log(conn, i)[0].data["possible_duplicates"] == want, i
            earlier += any(d <= before for d in want)
            within += any(d > before for d in want)
    assert earlier > 0 and within > 0, (earlier, within)


def test_an_import_whose_chunk_races_takes_it_again_and_keeps_the_files_order(two_cities, tmp_path, monkeypatch):
    """A chunk whose write finds one of its tickets taken in meanwhile (TicketRaced) is taken again alone; the
    chunks already located and built behind it (three are in flight) are prepared again after it: every row
    one case, ids in the file's order, a whole log each, and the duplicate suggestions still the database's."""
    from cases import importer
    from cases.batch import TicketRaced
    from cases.catalogue import class_by_code
    from cases.intake import duplicates_of

    _, (_, engine) = two_cities
    rows = [dict(r, external_id=f"RC-{r['external_id']}") for r in _rows(engine) if r.get("external_id")]
    rows = list({r["external_id"]: r for r in rows}.values())
    src = _write(tmp_path / "race.csv", rows)
    real, calls = importer._write, []

    def racing(engine_, prepared, last):  # the second chunk's COPY finds a ticket taken in: nothing written
        calls.append(len(prepared.case_rows))
        if len(calls) == 2:
            raise TicketRaced("duplicate key value violates unique constraint")
        return real(engine_, prepared, last)
    monkeypatch.setattr(importer, "_write", racing)
    with engine.connect() as conn:
        before = conn.execute(sa.text("SELECT coalesce(max(id), 0) FROM cases")).scalar()
    report = importer.import_cases(engine, src, now=NOW, chunk=9)
    assert len(calls) >= 4 and (report.created, report.known) == (len(rows), 0)
    with engine.connect() as conn:
        got = conn.execute(sa.text("SELECT external_id, id FROM cases WHERE id > :b ORDER BY id"), {"b": before}).all()
        assert [e for e, _ in got] == [r["external_id"] for r in rows]  # the file's order
        for _, i in got:
            case, log = get_case(conn, i), case_log(conn, i)
            assert len(log) == 3
            want = [d for d in duplicates_of(conn, case, class_by_code(conn, case.class_code)) if d < i]
            assert log[0].data["possible_duplicates"] == want, i
