"""``cim cases simulate --days N``: a realistic synthetic stream of cases over the loaded city, run
through the whole lifecycle by simulated handlers — for the demo and the benchmark.

The stream: reports from every channel (grid patrols and sensors send a point, the hotline and the
public an address text), classes weighted towards the everyday ones, addresses drawn from the
city's address layer, a few that no gazetteer can place (→ the manual queue) and a few second
reports of the same problem (→ merged by the platform). The handlers: the department accepts,
sometimes returns a case that is not its own (→ re-dispatched by machine) or asks for an extension
(mostly approved), handles it mostly in time and sometimes late; the grid's worker (网格监督员) verifies and
fails some (→ rework). ``tick`` runs twice a working day, so late cases are marked overdue and
escalated.

Everything goes through the public functions (the set-based intake and actions, tick), in time
order, the events of one kind within a 10-minute window together. Deterministic for a seed and a start on the same base: every draw comes from
one ``random.Random(seed)`` and events are ordered by (time, sequence). External ids are
``SIM-{seed}-{n}``, so a rerun takes in nothing twice.
"""
from __future__ import annotations

import heapq
import random
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cim.bootstrap import stored_settings
from cim.errors import UserError

from cases.batch import BatchMemo, intake_batch
from cases.bulk import BulkItem, act_many
from cases.calendar import LOCAL
from cases.catalogue import all_classes
from cases.intake import CaseReport
from cases.lifecycle import Action, tick, verifiers_by_scope, verify_scope
from cases.model import Case, get_cases

#: channel → share of the reports (the 12345 hotline and the grid patrols carry most)
CHANNEL_SHARES = {"grid_patrol": 0.34, "hotline_12345": 0.30, "vehicle_patrol": 0.10, "public": 0.09,
                  "police_110": 0.06, "iot": 0.06, "media": 0.05}
#: channels whose reports carry a point (a patrol's handset, a sensor) rather than an address text
POINT_CHANNELS = {"grid_patrol", "iot", "vehicle_patrol"}
#: the everyday 小类, reported more often than the rest
COMMON = {"暴露垃圾": 8, "道路破损": 6, "占道堆物": 6, "店外经营": 6, "违法搭建": 3, "道路积水": 3,
          "井盖缺失": 3, "群租": 2, "非法小广告": 4, "非机动车乱停放": 4}
UNPLACEABLE = ("老西门附近", "小区门口", "菜场后面那条弄堂", "火星路1号")
PLATFORM, SUPERVISOR = "区网格化管理中心", "网格监督员"
#: events due within one window of simulated time are taken together, kind by kind (set-based)
WINDOW = timedelta(minutes=10)


@dataclass
class SimulationReport:
    days: int
    seed: int
    start: str
    reported: int = 0
    created: int = 0
    known: int = 0  # external id already in (a rerun)
    machine_dispatched: int = 0
    manual_queue: int = 0
    merged: int = 0
    accepted: int = 0
    returned: int = 0
    extensions_requested: int = 0
    extensions_approved: int = 0
    handled: int = 0
    verified_passed: int = 0
    verified_failed: int = 0
    overdue_marked: int = 0
    escalated: int = 0
    conflicts: int = 0  # a handler found the case changed under it (e.g. merged meanwhile)
    open_at_end: int = 0
    by_channel: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Place:
    text: str
    x: float
    y: float


def _places(engine: Engine) -> list[_Place]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT road, door_number, ST_X(geom) AS x, ST_Y(geom) AS y FROM addresses "
            "WHERE valid_to IS NULL AND road IS NOT NULL AND door_number IS NOT NULL AND grid_code IS NOT NULL "
            "ORDER BY road, door_int NULLS LAST, door_number")).all()
    return [_Place(f"{r.road}{r.door_number}号", r.x, r.y) for r in rows]


class _Simulation:
    def __init__(self, engine: Engine, days: int, seed: int, start: datetime, per_day: int) -> None:
        self.engine, self.days, self.per_day = engine, days, per_day
        self.rng = random.Random(seed)
        self.seed, self.start, self.end = seed, start, start + timedelta(days=days)
        self.queue: list[tuple[datetime, int, str, dict[str, Any]]] = []
        self.seq = 0
        self.report = SimulationReport(days, seed, start.isoformat())
        with engine.connect() as conn:
            settings = stored_settings(conn)
            if settings is None:
                raise UserError("the city base is not initialised: run 'cim init'")
            self.srid = settings.srid
            classes = [c for c in all_classes(conn) if c.parent_code is not None and c.department_kind]
        if not classes:
            raise UserError("the case catalogue has no class with a handling department kind")
        self.classes = classes
        self.class_weights = [COMMON.get(c.name, 1) for c in classes]
        self.places = _places(engine)
        if not self.places:
            raise UserError("the city has no addresses in grids to report from: load the sample city "
                            "('cim samples load') or a city's addresses first")
        self.recent: list[tuple[CaseReport, int]] = []  # reports of the last while, for second reports
        self.memo = BatchMemo()  # an address text geocoded, a (grid, class) ranked, once per run

    def push(self, at: datetime, kind: str, **data: Any) -> None:
        if at < self.end:
            self.seq += 1
            heapq.heappush(self.queue, (at, self.seq, kind, data))

    def hours(self, low: float, high: float) -> timedelta:
        return timedelta(hours=self.rng.uniform(low, high))

    # --- the stream ------------------------------------------------------------------------------

    def schedule_reports(self) -> None:
        n = 0
        for day in range(self.days):
            midnight = self.start + timedelta(days=day)
            for _ in range(self.per_day):
                # reports come from 07:00 to 22:00, most in the working day
                at = midnight + timedelta(hours=min(max(self.rng.gauss(13.5, 3.5), 7.0), 22.0))
                n += 1
                self.push(at, "report", n=n)
            for hour in (9, 17):
                self.push(midnight + timedelta(hours=hour), "tick")

    def new_report(self, n: int, at: datetime) -> CaseReport:
        # each report draws from its own generator: report n is the same whatever happened before it
        # (a rerun, where the known cases are not handled again, reports exactly the same cases)
        rng = random.Random(self.seed * 1_000_003 + n)
        channel = rng.choices(list(CHANNEL_SHARES), weights=list(CHANNEL_SHARES.values()))[0]
        external_id = f"SIM-{self.seed}-{n}"
        if self.recent and rng.random() < 0.05:  # a second report of a problem already reported
            first, _ = rng.choice(self.recent[-50:])
            return CaseReport(channel=channel, class_code=first.class_code, description=first.description,
                              address_text=first.address_text, x=first.x, y=first.y, crs=first.crs,
                              external_id=external_id, reported_at=at)
        cls = rng.choices(self.classes, weights=self.class_weights)[0]
        urgency = "emergency" if rng.random() < 0.04 else "normal"
        contact = f"139{rng.randrange(10**8):08d}" if channel in ("hotline_12345", "public") else None
        if rng.random() < 0.04:  # nobody can place this one
            return CaseReport(channel="hotline_12345", class_code=cls.code, urgency=urgency,
                              description=f"{cls.name}（市民来电）", address_text=rng.choice(UNPLACEABLE),
                              external_id=external_id, reporter_contact=contact, reported_at=at)
        place = rng.choice(self.places)
        description = f"{place.text}{cls.name}"
        if channel in POINT_CHANNELS:
            return CaseReport(channel=channel, class_code=cls.code, urgency=urgency, description=description,
                              x=place.x + rng.uniform(-8, 8), y=place.y + rng.uniform(-8, 8),
                              crs=f"EPSG:{self.srid}", external_id=external_id, reported_at=at)
        text = place.text + rng.choice(("", "附近", "门口"))
        return CaseReport(channel=channel, class_code=cls.code, urgency=urgency, description=description,
                          address_text=text, external_id=external_id, reporter_contact=contact, reported_at=at)

    # --- the handlers: each takes the events of one kind due in a window, set-based ----------------

    def on_report(self, events: list[tuple[datetime, dict[str, Any]]]) -> None:
        reports = [self.new_report(data["n"], at) for at, data in events]
        for report in reports:
            self.report.reported += 1
            self.report.by_channel[report.channel] = self.report.by_channel.get(report.channel, 0) + 1
        at = events[-1][0]  # the platform registers the window's reports at its last one
        with self.engine.begin() as conn:
            outcomes = intake_batch(conn, reports, now=at, srid=self.srid, memo=self.memo)
        for report, outcome in zip(reports, outcomes):
            self.recent.append((report, outcome.case_id))
            if not outcome.created:
                self.report.known += 1
                continue
            self.report.created += 1
            if outcome.duplicates:  # the platform merges a second report into the first
                self.push(at + self.hours(0.2, 1.0), "merge", case_id=outcome.case_id, into=outcome.duplicates[0])
            if outcome.status == "dispatched":
                self.report.machine_dispatched += 1
                self.push(at + self.hours(0.3, 4.0), "accept", case_id=outcome.case_id)
            elif outcome.manual_reason:
                self.report.manual_queue += 1
        del self.recent[:-50]

    def act_all(self, events: list[tuple[datetime, dict[str, Any]]], decide: Any,
                verifying: bool = False) -> list[tuple[datetime, int, Case | None]]:
        """One transaction for a window's actions of one kind: ``decide(case, at, verifiers)`` gives each event's
        (action, role, note, data) or None to skip it; returns (at, case id, the case after it or None
        if the rules refused it)."""
        out: list[tuple[datetime, int, Case | None]] = []
        with self.engine.begin() as conn:
            cases = get_cases(conn, sorted({d["case_id"] for _, d in events}))
            allowed = verifiers_by_scope(conn, list(cases.values())) if verifying else {}
            items, keys = [], []
            for at, data in events:
                case = cases[data["case_id"]]
                decided = decide(case, at, allowed)
                if decided is None:
                    continue
                action, role, note, payload = decided
                actor = self.actor(case, role, allowed)
                items.append(BulkItem(case.id, Action(action, actor, role, note, payload), at))
                keys.append((at, case.id))
            done = act_many(conn, items, now=events[-1][0])
        for n, (at, case_id) in enumerate(keys):
            if n in done.errors:
                self.report.conflicts += 1
                out.append((at, case_id, None))
            else:
                out.append((at, case_id, done.cases[case_id]))
        return out

    def actor(self, case: Case, role: str, allowed: dict) -> str:
        if role == "supervisor":  # the grid's worker verifies (another one only once escalated)
            names = allowed.get(verify_scope(case)) or [SUPERVISOR]
            return names[case.id % len(names)]
        return {"department": case.person_name or case.department_name or "处置人员",
                "platform": PLATFORM}.get(role, role)

    def on_merge(self, events: list[tuple[datetime, dict[str, Any]]]) -> None:
        with self.engine.begin() as conn:
            keep = get_cases(conn, sorted({d["into"] for _, d in events}))
            items = [BulkItem(d["case_id"], Action("merge", PLATFORM, "platform", "同一问题重复上报，合并",
                                                   {"into": d["into"]}), at)
                     for at, d in events
                     if keep[d["into"]].status not in ("merged", "not_registered", "closed", "handled")]
            done = act_many(conn, items, now=events[-1][0])
        self.report.conflicts += len(done.errors)
        self.report.merged += len(items) - len(done.errors)

    def on_accept(self, events: list[tuple[datetime, dict[str, Any]]]) -> None:
        rng = self.rng
        by_case = {data["case_id"]: rng.random() < 0.04 for _, data in events}
        done = self.act_all(events, lambda case, at, _: (
            ("return", "department", "不属于本部门职责，退回平台", {}) if by_case[case.id] else
            ("accept", "department", None, {})))
        for at, case_id, case in done:
            if case is None:
                continue
            if by_case[case_id]:
                self.report.returned += 1
                self.push(at + self.hours(0.5, 2.0), "redispatch", case_id=case_id)
                continue
            self.report.accepted += 1
            due = case.due_at or at + timedelta(days=3)
            if rng.random() < 0.06:
                self.push(at + self.hours(0.5, 3.0), "extension", case_id=case_id)
            span = max((due - at).total_seconds() / 3600, 0.5)
            # most are handled in time; some late (overdue → tick escalates them)
            when = at + (self.hours(0.1 * span, 0.9 * span) if rng.random() < 0.86 else
                         (due - at) + self.hours(2.0, 60.0))
            self.push(when, "handle", case_id=case_id)

    def on_redispatch(self, events: list[tuple[datetime, dict[str, Any]]]) -> None:
        # the machine again, the returning departments left out: the window's chains in one statement
        done = self.act_all(events, lambda case, at, _: ("dispatch", "platform", None, {}))
        for at, case_id, case in done:
            if case is not None and case.status == "dispatched":
                self.push(at + self.hours(0.3, 3.0), "accept", case_id=case_id)

    def on_extension(self, events: list[tuple[datetime, dict[str, Any]]]) -> None:
        done = self.act_all(events, lambda case, at, _: (
            "request_extension", "department", "需协调产权单位，申请延期", {"hours": 16}))
        for at, case_id, case in done:
            if case is None:
                continue
            self.report.extensions_requested += 1
            approve = self.rng.random() < 0.8
            self.push(at + self.hours(0.5, 4.0), "decide_extension", case_id=case_id, approve=approve)

    def on_decide_extension(self, events: list[tuple[datetime, dict[str, Any]]]) -> None:
        approve = {data["case_id"]: data["approve"] for _, data in events}
        done = self.act_all(events, lambda case, at, _: (
            "approve_extension" if approve[case.id] else "refuse_extension", "platform", None, {}))
        self.report.extensions_approved += sum(1 for _, case_id, case in done if case is not None and approve[case_id])

    def on_handle(self, events: list[tuple[datetime, dict[str, Any]]]) -> None:
        done = self.act_all(events, lambda case, at, _: ("handle", "department", "已处置，附现场照片", {}))
        for at, case_id, case in done:
            if case is not None:
                self.report.handled += 1
                self.push(at + self.hours(0.5, 8.0), "verify", case_id=case_id)

    def on_verify(self, events: list[tuple[datetime, dict[str, Any]]]) -> None:
        passed = {data["case_id"]: self.rng.random() >= 0.1 for _, data in events}
        done = self.act_all(events, lambda case, at, _: (
            "verify", "supervisor", None if passed[case.id] else "现场核查未整改到位，返工",
            {"passed": passed[case.id]}), verifying=True)
        for at, case_id, case in done:
            if case is None:
                continue
            if passed[case_id]:
                self.report.verified_passed += 1
            else:
                self.report.verified_failed += 1
                self.push(at + self.hours(2.0, 24.0), "handle", case_id=case_id)

    def on_tick(self, events: list[tuple[datetime, dict[str, Any]]]) -> None:
        for at, _ in events:
            with self.engine.begin() as conn:
                done = tick(conn, at)
            self.report.overdue_marked += len(done.overdue)
            self.report.escalated += len(done.escalated)

    def run(self) -> SimulationReport:
        """Events in time order, taken a window (:data:`WINDOW`) at a time: within a window, the
        events of one kind go through together (one intake batch, one set-based action each), kinds
        in the order a case passes them; what an event schedules inside the window follows in the
        same window."""
        self.schedule_reports()
        handlers = {"report": self.on_report, "merge": self.on_merge, "accept": self.on_accept,
                    "redispatch": self.on_redispatch, "extension": self.on_extension,
                    "decide_extension": self.on_decide_extension, "handle": self.on_handle,
                    "verify": self.on_verify, "tick": self.on_tick}
        while self.queue:
            first = self.queue[0][0]
            window_end = self.start + ((first - self.start) // WINDOW + 1) * WINDOW
            while self.queue and self.queue[0][0] < window_end:
                due: dict[str, list[tuple[datetime, dict[str, Any]]]] = {}
                while self.queue and self.queue[0][0] < window_end:
                    at, _, kind, data = heapq.heappop(self.queue)
                    due.setdefault(kind, []).append((at, data))
                for kind in handlers:
                    if due.get(kind):
                        handlers[kind](due[kind])
        with self.engine.connect() as conn:
            self.report.open_at_end = conn.execute(sa.text(
                "SELECT count(*) FROM cases WHERE external_id LIKE :p AND status NOT IN "
                "('closed', 'merged', 'not_registered')"), {"p": f"SIM-{self.seed}-%"}).scalar_one()
        return self.report


def simulate(engine: Engine, days: int, seed: int = 1, start: date | datetime | None = None,
             per_day: int = 200) -> SimulationReport:
    """Simulate ``days`` days of ``per_day`` reports each from ``start`` (a local date or time;
    default: ``days`` days before today, so the stream ends at today's midnight with cases still
    open, as a live platform has them)."""
    if days < 1 or per_day < 1:
        raise UserError(f"days and per-day must be at least 1, got {days} and {per_day}")
    if start is None:
        start = datetime.now(LOCAL).date() - timedelta(days=days)
    if not isinstance(start, datetime):
        start = datetime.combine(start, time(0), LOCAL)
    if start.tzinfo is None:
        raise UserError("start: the time needs a time zone")
    return _Simulation(engine, days, seed, start, per_day).run()
