"""``cim iot``: listen to an MQTT broker, manage threshold rules, simulate readings."""
from __future__ import annotations

import logging
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer

from cim.cli.console import console
from cim.cli.console import print_json

iot_app = typer.Typer(help="Live sensing: readings from MQTT, threshold rules, simulation.", no_args_is_help=True)
rules_app = typer.Typer(help="Threshold rules evaluated as readings arrive.", no_args_is_help=True)


def listen(
    mqtt_url: str = typer.Option(..., "--mqtt", help="The broker, mqtt://host:port."),
    topics: list[str] = typer.Option(["city/+/readings"], "--topic", help="Topic filter (repeatable)."),
    client_id: str = typer.Option("cim-iot-listener", help="MQTT client id: the broker keeps this session's "
                                                           "unacknowledged messages across restarts."),
    batch_max: int = typer.Option(1000, help="Most messages stored in one transaction."),
    max_backoff: int = typer.Option(30, help="Longest wait between reconnection attempts (s)."),
    offline_every: float = typer.Option(60.0, help="How often offline rules are checked (s)."),
) -> None:
    """Store readings published to the broker until stopped (Ctrl-C or SIGTERM); prints totals."""
    from cim.database import get_engine
    from sensing.mqtt import Broker, Listener

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    listener = Listener(get_engine(), Broker.from_url(mqtt_url), topics, client_id=client_id, batch_max=batch_max,
                        max_backoff_s=max_backoff, offline_every_s=offline_every,
                        on_subscribed=lambda: typer.echo(f"listening on {mqtt_url} to {', '.join(topics)}", err=True))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: listener.stop())
    report = listener.run()
    print_json({"messages": listener.messages_stored, "unreadable_messages": listener.messages_unreadable,
                **report.as_dict()})


def rules_add(
    name: str = typer.Argument(..., help="A name for the rule, unique among current rules."),
    quantity: Optional[str] = typer.Option(None, help="Measured quantity (e.g. water_level); offline: optional."),
    kind: str = typer.Option("level", help="level | rate | offline."),
    device_type: Optional[str] = typer.Option(None, help="Devices of this kind (e.g. 水位计)."),
    device_id: Optional[str] = typer.Option(None, help="Only this device (its source id)."),
    area: Optional[str] = typer.Option(None, help="Only devices in this area: LEVEL:CODE, e.g. street:310104003."),
    direction: str = typer.Option("above", help="above | below."),
    warning: Optional[float] = typer.Option(None, help="Warning level (per minute for rate rules)."),
    alarm: Optional[float] = typer.Option(None, help="Alarm level."),
    hysteresis: float = typer.Option(0.0, help="How far back past the lower level an alert clears."),
    duration: int = typer.Option(0, help="Seconds a level must hold before it counts."),
    offline_minutes: Optional[int] = typer.Option(None, help="offline: minutes without readings."),
    offline_level: str = typer.Option("warning", help="offline: warning | alarm."),
    case_class: Optional[str] = typer.Option(None, help="Class of the case an alarm opens (e.g. 道路积水)."),
) -> None:
    """Add a threshold rule."""
    from cim.database import get_engine
    from sensing.rules import RuleSpec, add_rule

    area_level = area_code = None
    if area:
        area_level, _, area_code = area.partition(":")
    spec = RuleSpec(name=name, kind=kind, quantity=quantity, device_type=device_type, device_id=device_id,
                    area_level=area_level, area_code=area_code or None, direction=direction, warning=warning,
                    alarm=alarm, hysteresis=hysteresis, duration_s=duration, offline_minutes=offline_minutes,
                    offline_level=offline_level, case_class=case_class)
    with get_engine().begin() as conn:
        rule = add_rule(conn, spec)
    console.print(f"rule {rule['id']} added: {rule['name']}")


def rules_list(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """The current rules."""
    from cim.database import get_engine
    from sensing.rules import list_rules

    with get_engine().connect() as conn:
        rules = list_rules(conn)
    if as_json:
        print_json(rules)
        return
    for r in rules:
        scope = " ".join(f"{k}={r[k]}" for k in ("device_type", "device_id", "area_level", "area_code") if r[k])
        if r["kind"] == "offline":
            what = f"no reading for {r['offline_minutes']} min → {r['offline_level']}"
        else:
            what = (f"{r['quantity']} {r['kind']} {r['direction']} warning={r['warning']} alarm={r['alarm']} "
                    f"hysteresis={r['hysteresis']} duration={r['duration_s']}s")
        typer.echo(f"{r['id']}\t{r['name']}\t{what}\t{scope}")


def rules_remove(rule_id: int = typer.Argument(..., help="The rule's id (see 'cim iot rules list').")) -> None:
    """Remove a rule; its active alerts clear, its alert history stays."""
    from cim.database import get_engine
    from sensing.rules import remove_rule

    with get_engine().begin() as conn:
        cleared = remove_rule(conn, rule_id)
    console.print(f"rule {rule_id} removed ({cleared} active alert(s) cleared)")


def rules_check(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Rules that would fire on every reading, match no device, or have their levels reversed."""
    from cim.database import get_engine
    from sensing.rules import check_rules

    with get_engine().connect() as conn:
        findings = check_rules(conn)
    if as_json:
        print_json(findings)
    elif not findings:
        typer.echo("no suspicious rules")
    else:
        for f in findings:
            typer.echo(f"rule {f['rule_id']} ({f['name']}): {f['problem']}")


def simulate(
    start: str = typer.Option(..., help="First reading time, RFC 3339 with offset (e.g. 2026-12-01T00:00:00+08:00)."),
    hours: float = typer.Option(24.0, help="How long to simulate."),
    every: int = typer.Option(10, help="Minutes between readings of a device."),
    storm_at: Optional[float] = typer.Option(None, help="Hours after start when a rainstorm peaks (none if unset)."),
    storm_hours: float = typer.Option(2.0, help="How long the rainstorm lasts."),
    seed: int = typer.Option(13, help="Random seed: the same seed gives the same readings."),
    out: Optional[Path] = typer.Option(None, help="Write CSV here instead of storing."),
    batch: int = typer.Option(20_000, help="Readings per stored batch."),
) -> None:
    """Readings for the base's IoT devices; with --storm-at, water levels rise over their alarm levels."""
    from cim.database import get_engine
    from cim.times import parse_instant
    from sensing.simulate import Storm, simulate_readings, store_simulated

    began = parse_instant(start, "start")
    if not isinstance(began, datetime):
        from cim.times import day_start

        began = day_start(began)
    storm = Storm(peak_after_h=storm_at, hours=storm_hours) if storm_at is not None else None
    engine = get_engine()
    with engine.connect() as conn:
        frame = simulate_readings(conn, began, hours=hours, every_min=every, storm=storm, seed=seed)
    if out is not None:
        frame.to_csv(out, index=False)
        console.print(f"{len(frame)} readings written to {out}")
        return
    report = store_simulated(engine, frame, batch=batch)
    print_json(report.as_dict())


def register(app: typer.Typer) -> None:
    iot_app.command("listen")(listen)
    iot_app.command("simulate")(simulate)
    rules_app.command("add")(rules_add)
    rules_app.command("list")(rules_list)
    rules_app.command("remove")(rules_remove)
    rules_app.command("check")(rules_check)
    iot_app.add_typer(rules_app, name="rules")
    app.add_typer(iot_app, name="iot")
