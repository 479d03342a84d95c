"""The rule of dependency as a test: ``lint-imports`` checks the layers contract of pyproject.toml
(``cim`` imports no edge; ``ingest``, ``tiles`` and the coming ``cases`` import only ``cim``;
``api`` is outermost), and the same contract is shown to catch a core that imports an edge."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
# import-linter's command, beside this interpreter (the venv) or on PATH; a test extra of pyproject
LINT_IMPORTS = next((str(p) for p in (Path(sys.executable).with_name("lint-imports"),) if p.exists()),
                    shutil.which("lint-imports") or "lint-imports")
NOT_SHIPPED = {"tests", "benchmarks", "data_samples", "docs", "scripts", "node_modules"}


def _pyproject() -> dict:
    return tomllib.loads((PROJECT / "pyproject.toml").read_text(encoding="utf-8"))


def _lint_imports(cwd: Path, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT_IMPORTS, "--no-cache", "--no-logo", str(config)], cwd=cwd,
                          capture_output=True, text=True)


def test_the_code_keeps_the_rule_of_dependency():
    proc = _lint_imports(PROJECT, PROJECT / "pyproject.toml")
    assert proc.returncode == 0, f"import contract broken:\n{proc.stdout}\n{proc.stderr}"
    assert "0 broken" in proc.stdout, proc.stdout


def test_every_shipped_package_is_under_the_contract():
    """A new top-level package (cases, scenarios…) must join root_packages, or the contract would
    never see it: an optional layer that is not analysed is silently skipped."""
    config = _pyproject()
    roots = set(config["tool"]["importlinter"]["root_packages"])
    shipped = {pattern.rstrip("*") for pattern in config["tool"]["setuptools"]["packages"]["find"]["include"]}
    on_disk = {p.parent.name for p in PROJECT.glob("*/__init__.py")} - NOT_SHIPPED
    assert shipped == roots, f"pyproject: packages {sorted(shipped)} but importlinter root_packages {sorted(roots)}"
    assert on_disk <= roots, f"top-level packages outside the import contract: {sorted(on_disk - roots)}"


def _package(root: Path, name: str, source: str = "") -> None:
    (root / name).mkdir()
    (root / name / "__init__.py").write_text(source, encoding="utf-8")


def _toy_project(tmp_path: Path, **sources: str) -> Path:
    """The project's own contract over toy root packages whose ``__init__`` imports are given."""
    importlinter = _pyproject()["tool"]["importlinter"]
    for name in importlinter["root_packages"]:
        _package(tmp_path, name, sources.get(name, ""))
    # the subpackages a contract names (each scenario of the independence contract)
    for contract in importlinter["contracts"]:
        for key in ("modules", "source_modules", "forbidden_modules"):
            for dotted in contract.get(key, []):
                if "." in dotted:
                    path = tmp_path.joinpath(*dotted.split("."))
                    path.mkdir(parents=True, exist_ok=True)
                    (path / "__init__.py").write_text(sources.get(dotted, ""), encoding="utf-8")
    # strings and lists of strings: their JSON form is valid TOML
    lines = ["[tool.importlinter]", f"root_packages = {json.dumps(importlinter['root_packages'])}"]
    for contract in importlinter["contracts"]:
        lines += ["", "[[tool.importlinter.contracts]]"]
        lines += [f"{key} = {json.dumps(value, ensure_ascii=False)}" for key, value in contract.items()]
    config = tmp_path / "pyproject.toml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return config


def test_the_contract_allows_the_layers_downwards(tmp_path):
    config = _toy_project(tmp_path, api="import ingest\nimport tiles\nimport cim\n", ingest="import cim\n",
                          tiles="import cim\n")
    kept = _lint_imports(tmp_path, config)
    assert kept.returncode == 0, kept.stdout + kept.stderr


def test_the_contract_catches_a_core_that_imports_an_edge(tmp_path):
    config = _toy_project(tmp_path, cim="import ingest\n")
    broken = _lint_imports(tmp_path, config)
    assert broken.returncode != 0 and "BROKEN" in broken.stdout and "cim -> ingest" in broken.stdout, broken.stdout


def test_the_contract_keeps_the_edges_apart(tmp_path):
    config = _toy_project(tmp_path, tiles="import ingest\n")
    broken = _lint_imports(tmp_path, config)
    assert broken.returncode != 0 and "tiles -> ingest" in broken.stdout, broken.stdout


def test_the_contract_keeps_sensing_off_the_loaders(tmp_path):
    config = _toy_project(tmp_path, sensing="import ingest\n")
    broken = _lint_imports(tmp_path, config)
    assert broken.returncode != 0 and "sensing -> ingest" in broken.stdout, broken.stdout


def test_the_contract_keeps_each_scenario_to_itself(tmp_path):
    config = _toy_project(tmp_path, **{"scenarios.flood": "import scenarios.curtain_wall\n"})
    broken = _lint_imports(tmp_path, config)
    assert broken.returncode != 0 and "scenarios.flood -> scenarios.curtain_wall" in broken.stdout, broken.stdout
