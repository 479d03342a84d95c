"""Threshold rules evaluated as readings arrive, set-wise over a whole batch.

For the readings just stored (their (device, quantity) pairs in the temp table ``_touched``, their
rows in memory: :class:`sensing.intake.StoredBatch`) every enabled rule that matches their device
(kind, device, area) and quantity is evaluated in one pass over all (rule, device) series at once:

* **level** — the signal is the value; **rate** — the change per minute between consecutive
  readings. ``below`` rules negate signal and levels, so one rule of comparison serves both.
* a level is *held* at a reading once the signal has been at or past it without a break for
  ``duration_s`` (the run's start is found in the stored history, not only in the batch);
* an alert *clears* when the signal is past the lower level by the ``hysteresis`` the other way;
  between the two it keeps its state;
* the alert state is the last of these events carried forward from the state before the batch, so
  only the *changes* of state (few) are written: open, escalate (warning → alarm), clear.

Readings at or before the time a rule was last evaluated for a device (late readings) do not
replay alert history. **offline** rules are handled by :func:`evaluate_offline_gaps` here (a gap
between readings in the batch) and by :func:`sensing.offline.sweep_offline` (silence now).
"""
from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd

from cim.distribution import IS_CITUS_SQL

from sensing.alerts import AlertWriter
from sensing.rules import MATCH_DEVICE_SQL

LEVELS = {1: "warning", 2: "alarm"}
#: first key of the advisory locks that serialise rule evaluation per device
LOCK_SPACE = 1313


def evaluate_stored(conn, report, batch) -> None:  # noqa: ANN001 (SQLAlchemy connection, IntakeReport, StoredBatch)
    """Evaluate the rules over the batch just stored (its pairs in ``_touched``, its rows in ``batch``)."""
    cur = conn.connection.dbapi_connection.cursor()
    lock_devices(cur, "SELECT DISTINCT device_id FROM _touched")
    writer = AlertWriter(conn, report)
    _evaluate_levels(cur, writer)
    evaluate_offline_gaps(cur, writer, batch)


def lock_devices(cur, devices_sql: str, params: tuple = ()) -> None:  # noqa: ANN001
    """Serialise rule evaluation per device until commit: two batches of one device evaluated at once
    would both see no alert and both open one. Locks are taken in device order, so two batches
    sharing devices wait for each other instead of deadlocking."""
    cur.execute(f"SELECT count(pg_advisory_xact_lock({LOCK_SPACE}, hashtext(device_id))) FROM "
                f"(SELECT device_id FROM ({devices_sql}) d ORDER BY device_id) ordered", params)


def _matches(cur, kinds: tuple[str, ...]) -> pd.DataFrame:  # noqa: ANN001
    """The (rule, device) series of the pairs the batch touched, with ``can_change``: false when the
    series has no active alert and none of its new values reaches the rule's lower level, so its
    state cannot change (only how far it was evaluated moves). Rate rules always can."""
    cur.execute(f"""
        SELECT r.id AS rule_id, r.kind, r.direction, r.warning, r.alarm, r.hysteresis, r.duration_s,
               s.device_id, s.quantity, s.lo, s.time AS hi, d.grid_code, p.evaluated_until,
               (r.kind = 'rate'
                OR (r.direction = 'above' AND s.vmax >= least(r.warning, r.alarm))
                OR (r.direction = 'below' AND s.vmin <= greatest(r.warning, r.alarm))
                OR EXISTS (SELECT 1 FROM iot_alerts a WHERE a.rule_id = r.id AND a.device_id = s.device_id
                           AND a.cleared_at IS NULL)) AS can_change
        FROM _touched s
        JOIN iot_devices d ON d.source_id = s.device_id AND d.valid_to IS NULL
        JOIN iot_rules r ON r.removed_at IS NULL AND r.kind = ANY(%s) AND r.quantity = s.quantity
             AND {MATCH_DEVICE_SQL}
        LEFT JOIN iot_rule_progress p ON p.rule_id = r.id AND p.device_id = s.device_id
        WHERE p.evaluated_until IS NULL OR s.time > p.evaluated_until""", (list(kinds),))
    columns = [c[0] for c in cur.description]
    return pd.DataFrame(cur.fetchall(), columns=columns)


def _history(cur, matched: pd.DataFrame) -> pd.DataFrame:  # noqa: ANN001
    """The readings each matched series needs: from its first new reading back by the longest
    duration of its rules, plus the one reading before that (where a run may have started)."""
    lookback = pd.to_timedelta(matched["duration_s"].astype(float), unit="s")
    matched = matched.assign(start=pd.to_datetime(matched["lo"], utc=True) - lookback)
    series = matched.groupby(["device_id", "quantity"], as_index=False).agg(start=("start", "min"),
                                                                             hi=("hi", "max"))
    cur.execute(IS_CITUS_SQL)
    if not cur.fetchone()[0]:
        return _history_of(cur, series, None)
    # Citus plans this lateral join only routed to one shard: one statement per district, naming it (a reading
    # carries its device's district: migration 0009)
    cur.execute("SELECT source_id, coalesce(district_code, '') FROM iot_devices WHERE valid_to IS NULL "
                "AND source_id = ANY(%s)", (sorted(set(series["device_id"])),))
    district = series["device_id"].map(dict(cur.fetchall())).fillna("")
    parts = [_history_of(cur, group, code) for code, group in series.groupby(district)]
    return pd.concat(parts, ignore_index=True).sort_values(["device_id", "quantity", "time"], ignore_index=True)


def _history_of(cur, series: pd.DataFrame, district: str | None) -> pd.DataFrame:  # noqa: ANN001
    only = "" if district is None else "AND {t}.district_code = %(district)s "
    cur.execute(f"""
        SELECT x.device_id, x.quantity, i.time, i.value
        FROM unnest(%(d)s::text[], %(q)s::text[], %(s)s::timestamptz[], %(h)s::timestamptz[])
             AS x(device_id, quantity, start, hi)
        JOIN LATERAL (
            SELECT time, value FROM iot_readings i
            WHERE i.device_id = x.device_id AND i.quantity = x.quantity AND i.time <= x.hi {only.format(t="i")}
              AND i.time >= coalesce((SELECT max(j.time) FROM iot_readings j WHERE j.device_id = x.device_id
                                      AND j.quantity = x.quantity AND j.time < x.start {only.format(t="j")}),
                                     x.start)) i ON true
        ORDER BY 1, 2, 3""", {"d": series["device_id"].tolist(), "q": series["quantity"].tolist(),
                              "s": [t.to_pydatetime() for t in series["start"]], "h": list(series["hi"]),
                              "district": district})
    return pd.DataFrame(cur.fetchall(), columns=["device_id", "quantity", "time", "value"])


def _held(above: pd.Series, times: pd.Series, group: np.ndarray, duration: pd.Series) -> pd.Series:
    """Whether each reading is in a run of ``above`` that has lasted ``duration`` by its time."""
    run = (~above).astype(int).groupby(group).cumsum()
    start = times.where(above).groupby([group, run.to_numpy()]).transform("min")
    return above & ((times - start) >= duration)


def _evaluate_levels(cur, writer: "AlertWriter") -> None:  # noqa: ANN001
    matched = _matches(cur, ("level", "rate"))
    if matched.empty:
        return
    idle = matched[~matched["can_change"].astype(bool)]
    if len(idle):
        writer.progress(idle["rule_id"].tolist(), idle["device_id"].tolist(), idle["hi"].tolist())
    matched = matched[matched["can_change"].astype(bool)].reset_index(drop=True)
    if matched.empty:
        return
    history = _history(cur, matched)
    frame = matched.drop(columns=["lo", "hi"]).merge(history, on=["device_id", "quantity"])
    frame = frame.sort_values(["rule_id", "device_id", "time"], kind="stable").reset_index(drop=True)
    group = frame.groupby(["rule_id", "device_id"], sort=False).ngroup().to_numpy()
    times = pd.to_datetime(frame["time"], utc=True)
    value = frame["value"].astype(float)
    minutes = times.groupby(group).diff().dt.total_seconds() / 60.0
    rate = value.groupby(group).diff() / minutes.where(minutes > 0)
    signal = value.where(frame["kind"] == "level", rate)
    sign = np.where(frame["direction"] == "below", -1.0, 1.0)
    signal = signal * sign
    warning = frame["warning"].astype(float) * sign
    alarm = frame["alarm"].astype(float) * sign
    duration = pd.to_timedelta(frame["duration_s"].astype(float), unit="s")
    held_warning = _held((signal >= warning).fillna(False), times, group, duration)
    held_alarm = _held((signal >= alarm).fillna(False), times, group, duration)
    lower = warning.where(warning.notna(), alarm)
    clear = (signal < lower - frame["hysteresis"].astype(float)).fillna(False)
    code = pd.Series(np.where(held_alarm, 2.0, np.where(held_warning, 1.0, np.where(clear, 0.0, np.nan))))
    since = pd.to_datetime(frame["evaluated_until"], utc=True)
    new = since.isna() | (times > since)
    code = code.where(new)
    initial = writer.active_levels(frame["rule_id"].to_numpy(), frame["device_id"].to_numpy())
    state = code.groupby(group).ffill().fillna(pd.Series(initial))
    before = state.groupby(group).shift(1).fillna(pd.Series(initial))
    changes = np.flatnonzero((new & (state != before)).to_numpy())
    current: dict[int, float] = {}
    for i in changes:  # only the changes of state: few, however long the batch
        g = int(group[i])
        level = current.get(g, float(before.iat[i]))
        target = float(state.iat[i])
        rule_id, device_id = int(frame.at[i, "rule_id"]), frame.at[i, "device_id"]
        at, reading = times.iat[i].to_pydatetime(), float(value.iat[i])
        if level == 0 and target > 0:
            writer.open(rule_id, device_id, frame.at[i, "quantity"], LEVELS[int(target)], at, reading,
                        frame.at[i, "grid_code"])
        elif level > 0 and target == 0:
            writer.clear(rule_id, device_id, at, "back to normal")
        elif target > level:
            writer.escalate(rule_id, device_id, at, reading)
        else:
            continue  # alarm held, warning only: an alarm stays an alarm until it clears
        current[g] = target
    last = frame.groupby(group).tail(1)
    writer.touch(last["rule_id"].tolist(), last["device_id"].tolist(), list(times[last.index]),
                 last["value"].astype(float).tolist())


def evaluate_offline_gaps(cur, writer: "AlertWriter", batch) -> None:  # noqa: ANN001 (cursor, StoredBatch)
    """Offline rules against the batch: a gap longer than the rule's minutes between consecutive
    readings of a device (the newest stored before the batch included) is an offline episode,
    recorded opened and cleared; an active offline alert clears at the device's first new reading."""
    cur.execute(f"""
        SELECT r.id AS rule_id, r.quantity, r.offline_minutes, r.offline_level, s.device_id, d.grid_code,
               p.evaluated_until,
               (SELECT max(l.time) FROM iot_latest l WHERE l.device_id = s.device_id
                  AND (r.quantity IS NULL OR l.quantity = r.quantity)) AS before,
               (SELECT coalesce(a.last_time, a.opened_at) FROM iot_alerts a WHERE a.rule_id = r.id
                  AND a.device_id = s.device_id AND a.cleared_at IS NULL) AS silent_since
        FROM (SELECT DISTINCT device_id FROM _touched) s
        JOIN iot_devices d ON d.source_id = s.device_id AND d.valid_to IS NULL
        JOIN iot_rules r ON r.removed_at IS NULL AND r.kind = 'offline' AND {MATCH_DEVICE_SQL}
        LEFT JOIN iot_rule_progress p ON p.rule_id = r.id AND p.device_id = s.device_id""")
    rules = cur.fetchall()
    if not rules:
        return
    us = lambda t: int(pd.Timestamp(t).value // 1000)  # noqa: E731 (an aware time as µs since 1970)
    at = lambda v: pd.Timestamp(int(v), unit="us", tz="UTC").to_pydatetime()  # noqa: E731
    done_rules, done_devices, done_times = [], [], []
    for rule_id, quantity, minutes, level, device_id, grid_code, since, before, silent_since in rules:
        times = batch.times_of(device_id, quantity)
        if not len(times):
            continue
        # the stored readings before the batch were evaluated already: only gaps ending after them count
        series = np.unique(np.append(times, us(before))) if before is not None else times
        ends = series[1:]
        gap = (ends - series[:-1]) > minutes * 60_000_000
        if since is not None:
            gap &= ends > us(since)
        for i in np.flatnonzero(gap):
            previous = at(series[i])
            writer.offline_episode(rule_id, device_id, level, previous, previous + timedelta(minutes=minutes),
                                   at(series[i + 1]), grid_code)
        if silent_since is not None:
            back = times[times > us(silent_since)]
            if len(back):
                writer.clear(rule_id, device_id, at(back[0]), "readings again")
        done_rules.append(rule_id)
        done_devices.append(device_id)
        done_times.append(at(times[-1]))
    if done_rules:
        writer.progress(done_rules, done_devices, done_times)
