"""The scenario's case classes (E96 违法建筑) and department kinds (街道拆违, 区拆违), from its data
files, added to the case loop's catalogue through :func:`cases.catalogue.ensure_extension`."""
from __future__ import annotations

from importlib import resources

from sqlalchemy.engine import Connection

from cases.catalogue import ensure_extension

VERIFY_CLASS = "E9601"      # 违法建筑线索核查: the street's 拆违办 verifies a clue on site
RECHECK_CLASS = "E9602"     # 违法建筑区级复核: the district re-checks a "not illegal" finding
FAST_CLASS = "E9603"        # 在建违法建筑快速处置: under construction → fast procedure
NORMAL_CLASS = "E9604"      # 存量违法建筑处置: existing → normal procedure
CERTIFICATE_CLASS = "E9605"  # 违法建筑产证复核: a later property certificate → re-check
CLASSES = (VERIFY_CLASS, RECHECK_CLASS, FAST_CLASS, NORMAL_CLASS, CERTIFICATE_CLASS)


def _data(name: str) -> str:
    return resources.files("scenarios.illegal_building.data").joinpath(name).read_text(encoding="utf-8")


def ensure_catalogue(conn: Connection) -> None:
    ensure_extension(conn, "scenarios.illegal_building", _data("case_classes.csv"), _data("department_kinds.csv"))
