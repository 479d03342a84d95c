"""`cim iot simulate` on the sample city's devices: a quiet day raises nothing; a rainstorm drives
water-level sensors over their thresholds, their alerts open, escalate, and clear as it recedes."""
from __future__ import annotations

import orjson
import pytest
import sqlalchemy as sa

from cim.bootstrap import initialise
from cim.database import engine_for
from tests.conftest import create_database, run_cim
from tests.sensing_fixtures import load_sample_layers, scalar


@pytest.fixture(scope="module")
def base(server_url) -> str:
    url = create_database(server_url)
    initialise(engine_for(url))
    load_sample_layers(url, "districts", "streets", "communities", "grids", "iot-devices")
    run_cim("iot", "rules", "add", "积水", "--device-type", "水位计", "--quantity", "water_level",
            "--warning", "1.2", "--alarm", "1.5", "--hysteresis", "0.2", "--case-class", "道路积水", db_url=url)
    return url


def test_a_quiet_day_raises_no_alert(base):
    out = run_cim("iot", "simulate", "--start", "2026-12-01T00:00:00+08:00", "--hours", "12", db_url=base)
    report = orjson.loads(out.stdout)
    devices_quantities = scalar(base, "SELECT count(*) FROM iot_latest")
    assert report["stored"] == 72 * devices_quantities and report["rejected"] == 0
    assert report["alerts"] == {"opened": 0, "escalated": 0, "cleared": 0}


def test_a_rainstorm_drives_water_levels_over_their_thresholds_and_back(base):
    out = run_cim("iot", "simulate", "--start", "2026-12-02T00:00:00+08:00", "--hours", "12", "--storm-at", "6",
                  "--storm-hours", "2", "--batch", "1000", db_url=base)
    report = orjson.loads(out.stdout)
    assert report["rejected"] == 0
    with engine_for(base).connect() as conn:
        rows = conn.execute(sa.text("""SELECT a.device_id, a.level, a.opened_at, a.cleared_at, d.device_type
            FROM iot_alerts a JOIN iot_devices d ON d.source_id = a.device_id AND d.valid_to IS NULL""")).all()
    assert rows, "the storm should push some water levels over 1.2 m"
    assert report["alerts"]["opened"] == len(rows) == len({r.device_id for r in rows})  # one alert each
    assert all(r.device_type == "水位计" for r in rows)
    assert any(r.level == "alarm" for r in rows)
    assert all(r.cleared_at is not None for r in rows), "the storm recedes within the 12 hours"
    # each alarm opened one case of its rule's class (道路积水) on the iot channel, in the device's grid
    with engine_for(base).connect() as conn:
        linked = conn.execute(sa.text("""SELECT a.level, c.channel, c.class_code, c.grid_code = d.grid_code
            FROM iot_alerts a JOIN iot_devices d ON d.source_id = a.device_id AND d.valid_to IS NULL
            LEFT JOIN cases c ON c.id = a.case_id""")).all()
    assert all((row[1], row[2], row[3]) == ("iot", "E0401", True) for row in linked if row[0] == "alarm")
    assert all(row[1] is None for row in linked if row[0] == "warning")
    # the storm's peak is at 06:00 +08:00 = 22:00 UTC the day before; every alert opened around it
    assert all(r.opened_at.hour in (20, 21, 22) for r in rows)


def test_the_same_seed_gives_the_same_readings(base, tmp_path):
    for name in ("a.csv", "b.csv"):
        run_cim("iot", "simulate", "--start", "2026-12-03T00:00:00Z", "--hours", "1", "--storm-at", "0.5",
                "--out", str(tmp_path / name), db_url=base)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    header = (tmp_path / "a.csv").read_text().splitlines()[0]
    assert header == "device_id,time,quantity,value,unit"
