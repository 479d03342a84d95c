"""A second, hand-written reading of the machine-dispatch rule, to check the machine's choices against (issue 11:
"each to the department a hand-written rule check agrees with").

The rule as docs/cases.md and :mod:`cases.dispatch` state it, written again from the words in one SQL
statement over the stored tables — not from the Python that dispatches: among the posts of the case's grid
(``grid_posts``), leave out the grid platform's own departments; a department is a candidate when its name
matches the class's department kind (``case_department_kinds.name_pattern``) or, for a 部件 class, when it
handles the class (its ``handles`` holds the class code, or the class code's first two digits); a department
that is both comes first, then by kind, then by part; among equals the lowest post code. The machine's choice is
the department of each case's *first* dispatch by the machine (``case_events``: the intake's; a re-dispatch after a
return leaves out the departments that returned it, which this check does not model).

Used by ``benchmarks/cases_day.py`` (the simulated Shanghai day) and by ``tests/test_cases_simulate.py``; run
alone it checks a base's cases (CIM_DATABASE_URL, or the embedded cluster under CIM_HOME):

  .venv/bin/python benchmarks/dispatch_check.py [--url URL]
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cim.database import database_url, engine_for  # noqa: E402

_CHECK = """
WITH first_dispatch AS (
    SELECT DISTINCT ON (e.case_id) e.case_id, e.data ->> 'department_code' AS chosen
    FROM case_events e
    WHERE e.action = 'dispatch' AND e.actor = 'machine'
    ORDER BY e.case_id, e.id),
candidates AS (
    SELECT c.id AS case_id, d.code, p.code AS post_code,
           (k.name_pattern IS NOT NULL AND d.name ~ k.name_pattern) AS by_kind,
           (cl.kind = '部件' AND EXISTS (SELECT 1 FROM unnest(d.handles) AS h
                                         WHERE h = cl.code OR (length(h) = 2 AND left(cl.code, 2) = h))) AS by_part
    FROM first_dispatch f
    JOIN cases c ON c.id = f.case_id
    JOIN case_classes cl ON cl.code = c.class_code
    LEFT JOIN case_department_kinds k ON k.kind = cl.department_kind
    JOIN grid_posts gp ON gp.grid_code = c.grid_code
    JOIN posts p ON p.id = gp.post_id
    JOIN departments d ON d.id = p.department_id
    WHERE d.name !~ '网格化管理中心|城运中心|城市运行管理中心'),
expected AS (
    SELECT DISTINCT ON (case_id) case_id, code
    FROM candidates
    WHERE by_kind OR by_part
    ORDER BY case_id, CASE WHEN by_kind AND by_part THEN 0 WHEN by_kind THEN 1 ELSE 2 END, post_code)
SELECT f.case_id, f.chosen, x.code AS expected
FROM first_dispatch f LEFT JOIN expected x USING (case_id)
"""


@dataclass(frozen=True)
class DispatchCheck:
    checked: int  # cases the machine dispatched
    agreeing: int
    disagreements: list[tuple[int, str | None, str | None]]  # (case id, the machine's department, the rule's)

    @property
    def share(self) -> float:
        return self.agreeing / self.checked if self.checked else 1.0


def check_dispatch(conn: Connection, case_ids: list[int] | None = None) -> DispatchCheck:
    """The machine's first dispatch of each case (of ``case_ids``, or all) against the hand-written rule."""
    rows = conn.execute(sa.text(_CHECK)).all()
    if case_ids is not None:
        wanted = set(case_ids)
        rows = [r for r in rows if r.case_id in wanted]
    bad = [(r.case_id, r.chosen, r.expected) for r in rows if r.chosen != r.expected]
    return DispatchCheck(len(rows), len(rows) - len(bad), bad)


def main() -> None:
    parser = argparse.ArgumentParser(description="Each machine dispatch of a base's cases against a second, "
                                                 "hand-written reading of the dispatch rule.")
    parser.add_argument("--url", help="the database (default: CIM_DATABASE_URL, or the embedded cluster)")
    args = parser.parse_args()
    engine = engine_for(args.url or database_url())
    try:
        with engine.connect() as conn:
            found = check_dispatch(conn)
    finally:
        engine.dispose()
    print(f"{found.agreeing:,} of {found.checked:,} machine dispatches ({found.share:.1%}) go where the rule "
          "read by hand sends them")
    for case_id, chosen, expected in found.disagreements[:20]:
        print(f"case {case_id}: the machine chose {chosen}, the rule says {expected}")
    raise SystemExit(1 if found.disagreements else 0)


if __name__ == "__main__":
    main()
