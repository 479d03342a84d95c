"""Deployment settings: one typed object from CIM_* variables, documented, read once, one clear error for
a bad value — and the city a new base is initialised with comes from it, not from literals."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa

from cim import config
from cim.bootstrap import initialise, stored_settings
from cim.config import DeploymentSettings, SettingsError, override_settings, settings
from cim.database import engine_for
from cim.gazetteer.dictionary import names_only
from tests.conftest import create_database, run_cim

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_rows() -> dict[str, list[str]]:
    text = README.read_text(encoding="utf-8")
    table = text[text.index("## Deployment settings"):].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`CIM_"):
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_every_setting_is_documented_with_type_default_and_meaning():
    rows = _readme_rows()
    names = {f"CIM_{name.upper()}" for name in DeploymentSettings.model_fields}
    assert set(rows) == names, "the README's table and DeploymentSettings disagree"
    for name, (type_, default, meaning) in rows.items():
        assert type_ and default and len(meaning) > 10, name
    # the documented defaults are the real ones
    defaults = DeploymentSettings.model_construct()
    assert rows["CIM_DB_POOL_SIZE"][1] == f"`{defaults.db_pool_size}`"
    assert rows["CIM_CITY_NAME"][1] == f"`{defaults.city_name}`"
    assert rows["CIM_CITY_BBOX_WGS84"][1].startswith("`" + ",".join(f"{v:g}" for v in defaults.city_bbox_wgs84))


def test_no_module_but_the_settings_reads_the_environment():
    root = Path(__file__).resolve().parents[1]
    readers = [str(p.relative_to(root)) for package in ("cim", "api", "ingest", "tiles", "cases", "sensing", "scenarios")
               for p in (root / package).rglob("*.py")
               if re.search(r"os\.environ|os\.getenv|getenv\(", p.read_text(encoding="utf-8"))]
    assert readers == ["cim/config.py"]


def test_settings_are_read_once_and_again_only_when_a_variable_changes(monkeypatch):
    monkeypatch.delenv("CIM_DB_POOL_SIZE", raising=False)
    first = settings()
    assert settings() is first  # cached
    monkeypatch.setenv("CIM_DB_POOL_SIZE", "13")
    assert settings().db_pool_size == 13
    with override_settings(db_pool_size=2, api_read_key_required=True):
        assert settings().db_pool_size == 2 and settings().api_read_key_required
    assert settings().db_pool_size == 13


@pytest.mark.parametrize("variable, value", [
    ("CIM_DB_POOL_SIZE", "eight"),
    ("CIM_DB_POOL_SIZE", "0"),
    ("CIM_API_READ_KEY_REQUIRED", "maybe"),
    ("CIM_CITY_BBOX_WGS84", "121,31,120"),
    ("CIM_CITY_BBOX_WGS84", "122,31,121,32"),
])
def test_an_invalid_setting_is_one_clear_error_naming_the_variable(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=re.escape(f"{variable}={value!r}")):
        config.load_settings()
    proc = run_cim("db", "url", env={variable: value}, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{variable}={value!r}" in proc.stderr.splitlines()[-1]


def test_a_new_base_takes_its_city_from_the_settings_and_keeps_it(server_url, monkeypatch):
    engine = engine_for(create_database(server_url))
    monkeypatch.setenv("CIM_CITY_NAME", "杭州市")
    monkeypatch.setenv("CIM_CITY_BBOX_WGS84", "118.3,29.2,120.7,30.6")
    base, _ = initialise(engine)
    assert base.city_name == "杭州市" and base.city_bbox_wgs84 == (118.3, 29.2, 120.7, 30.6)
    assert names_only().city_name == "杭州市"  # text normalised without a base: the deployment's city
    monkeypatch.setenv("CIM_CITY_NAME", "苏州市")  # a later deployment default does not move a base
    base, _ = initialise(engine)
    assert base.city_name == "杭州市"
    base, changes = initialise(engine, city_name="杭州")  # cim init --city-name does
    assert base.city_name == "杭州" and any("city_name" in c for c in changes)
    with engine.connect() as conn:
        assert stored_settings(conn).city_name == "杭州"


def test_cim_init_city_name_option(server_url):
    url = create_database(server_url)
    run_cim("init", "--city-name", "宁波市", db_url=url)
    with engine_for(url).connect() as conn:
        assert conn.execute(sa.text("SELECT value #>> '{}' FROM cim_settings WHERE key = 'city_name'")).scalar() \
            == "宁波市"
