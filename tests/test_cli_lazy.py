"""The ``cim`` command imports a command group only when one of its commands runs (cim/cli/main.py):
``cim --help`` lists every command from the table without importing a module, ``cim cases import``
leaves the other edges alone, the table says what the modules really register, and a scenario's hooks
into the case loop still run under ``cim cases act``. Each check runs in a fresh interpreter: what a
process has imported is the thing under test."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import PROJECT

#: runs the real command in-process, then writes the names of the modules it imported to $PROBE_OUT
PROBE = """
import json, os, sys
from cim.cli.main import run
sys.argv = ["cim", *sys.argv[1:]]
try:
    run()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
with open(os.environ["PROBE_OUT"], "w") as fh:
    json.dump({"code": code, "modules": sorted(sys.modules)}, fh)
"""


def _probe(tmp_path: Path, *args: str, db_url: str | None = None) -> tuple[subprocess.CompletedProcess, set[str]]:
    out = tmp_path / "probe.json"
    env = {k: v for k, v in os.environ.items() if k != "CIM_DATABASE_URL"}
    env["PROBE_OUT"] = str(out)
    if db_url:
        env["CIM_DATABASE_URL"] = db_url
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env,
                          cwd=PROJECT)
    result = json.loads(out.read_text())
    assert result["code"] in (0, None), f"{args}: exit {result['code']}\n{proc.stdout}\n{proc.stderr}"
    return proc, set(result["modules"])


def _imported(modules: set[str], package: str) -> list[str]:
    return sorted(m for m in modules if m == package or m.startswith(package + "."))


def test_help_lists_every_command_without_importing_a_command_module(tmp_path):
    from cim.cli.main import COMMANDS

    proc, modules = _probe(tmp_path, "--help")
    for name, (_, help_text) in COMMANDS.items():
        assert f"  {name} " in proc.stdout, f"{name} missing from cim --help"
    assert "Geocode an address" in proc.stdout and "City-management cases" in proc.stdout
    loaded = {module for module, _ in COMMANDS.values()} & modules
    assert not loaded, f"cim --help imported {sorted(loaded)}"
    for heavy in ("pandas", "sqlalchemy", "fastapi", "cn2an"):
        assert heavy not in modules, f"cim --help imported {heavy}"


def test_cases_import_leaves_the_other_edges_alone(tmp_path, db_url):
    rows = tmp_path / "one.csv"
    rows.write_text("channel,class,address,external_id,x,y\nhotline_12345,暴露垃圾,火星路1号,LAZY-1,,\n"
                    "hotline_12345,暴露垃圾,,LAZY-2,121.437,31.2\n", encoding="utf-8")  # a text and a point
    proc, modules = _probe(tmp_path, "cases", "import", str(rows), db_url=db_url)
    assert "2 read, 2 new" in proc.stdout, proc.stdout + proc.stderr
    assert "cases.cli" in modules and "cases.importer" in modules
    for edge in ("tiles", "scenarios", "ingest", "sensing", "vitals", "api"):
        assert not _imported(modules, edge), f"cim cases import imported {_imported(modules, edge)}"
    # nor what it has no use for: the ORM, GeoAlchemy2 (cim.schema imports it only to build tables), GEOS
    for heavy in ("geoalchemy2", "sqlalchemy.orm", "shapely", "pandas", "fastapi"):
        assert heavy not in modules, f"cim cases import imported {heavy}"


def test_the_table_is_what_each_module_registers():
    """COMMANDS names every command of every module in CORE_MODULES + EDGE_MODULES, with that command's own
    one-line help (registered here, in a fresh interpreter, into a plain typer app)."""
    script = """
import importlib, json, typer
from cim.cli.main import CORE_MODULES, EDGE_MODULES
found = {}
for name in CORE_MODULES + EDGE_MODULES:
    app = typer.Typer()
    app.callback()(lambda: None)
    importlib.import_module(name).register(app)
    for command, cmd in typer.main.get_command(app).commands.items():
        found[command] = [name, cmd.help.strip().splitlines()[0]]
print(json.dumps(found))
"""
    from cim.cli.main import COMMANDS

    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=PROJECT, check=True)
    registered = json.loads(proc.stdout)
    assert {name: list(entry) for name, entry in COMMANDS.items()} == registered


def test_a_command_runs_the_scenarios_hooks_on_case_actions():
    """The scenarios register hooks on the case loop's actions when imported; the lazy command defers
    that import to the first hook lookup — without it (a bare process) there would be no hook."""
    script = """
import sys
{setup}
import cases.lifecycle as lifecycle
assert "scenarios.illegal_building" not in sys.modules
print(lifecycle.has_hooks("E9601", "handle"), "scenarios.illegal_building" in sys.modules)
"""
    with_command = subprocess.run(
        [sys.executable, "-c", script.format(setup="from cim.cli.main import build_app; build_app()")],
        capture_output=True, text=True, cwd=PROJECT, check=True)
    bare = subprocess.run([sys.executable, "-c", script.format(setup="")], capture_output=True, text=True,
                          cwd=PROJECT, check=True)
    assert with_command.stdout.split() == ["True", "True"]
    assert bare.stdout.split() == ["False", "False"]


def test_a_group_gets_the_commands_other_modules_add_to_it(tmp_path):
    """`cim ingest case-classes` is the case loop's command in the loaders' group (cim.cli.main.EXTENDS)."""
    proc, modules = _probe(tmp_path, "ingest", "--help")
    assert "case-classes" in proc.stdout and "cases.cli" in modules
