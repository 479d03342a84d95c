"""Addresses loaded from one full-address column (``--address-column``): the parsed parts fill only what the
delivery leaves empty, a part the delivery gives is kept, and an address of another city is a reject. The
parse writes into plain arrays that go back into the batch once (cell by cell through the frame, 10 M
addresses of a synthetic Shanghai took hours); these are the rules that rewrite had to keep."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from ingest.run import IngestOptions, ingest_files

SAMPLES = Path(__file__).resolve().parents[1] / "data_samples"


@pytest.fixture(scope="module")
def base(engine):
    manifest = json.loads((SAMPLES / "manifest.json").read_text(encoding="utf-8"))
    for e in manifest:
        if e["layer"] in ("districts", "streets"):
            ingest_files(e["layer"], [SAMPLES / e["path"]],
                         IngestOptions(crs=e["crs"], encoding=e["encoding"], layer_name=e["layer_name"],
                                       mapping=e["map"] or {}), engine)
    return engine


def test_parsed_parts_fill_only_the_empty_fields(base, tmp_path):
    rows = [
        ("上海市徐汇区淮海中路347弄2号403室", "", "", "637326.392", "3455965.597"),
        ("上海市徐汇区建国西路58弄6号1002室", "建国西路(旧名)", "", "638925.761", "3455163.983"),
        ("上海市徐汇区漕溪北路88号", "", "8号楼", "637100.000", "3452100.000"),
        ("北京市海淀区中关村大街27号", "", "", "637200.000", "3452200.000"),
    ]
    path = tmp_path / "addresses.csv"
    path.write_text("full_address,road,remark,x,y\n" + "\n".join(",".join(r) for r in rows) + "\n", encoding="utf-8")
    report = ingest_files("addresses", [path], IngestOptions(crs="EPSG:4549", x="x", y="y",
                                                             address_column="full_address",
                                                             rejects_dir=tmp_path / "rejects"), base)
    assert (report.read, report.inserted, report.rejected) == (4, 3, 1)
    rejects = (tmp_path / "rejects").glob("*.csv")
    assert any("北京市海淀区" in p.read_text(encoding="utf-8") for p in rejects)
    with base.connect() as conn:
        got = {r.source_id: r for r in conn.execute(sa.text(
            "SELECT source_id, district, road, lane, building_no, door_number, room, remark, standard_address "
            "FROM addresses WHERE valid_to IS NULL"))}
    first = got["上海市徐汇区淮海中路347弄2号403室"]
    assert (first.district, first.road, first.lane, first.building_no, first.room) == (
        "徐汇区", "淮海中路", "347", "2", "403")
    assert first.standard_address == "上海市徐汇区淮海中路347弄2号403室"
    given = got["上海市徐汇区建国西路58弄6号1002室"]
    assert given.road == "建国西路(旧名)"  # the delivery's own value wins over the parse
    assert (given.lane, given.building_no, given.room) == ("58", "6", "1002")  # the rest is filled
    door = got["上海市徐汇区漕溪北路88号"]
    assert (door.road, door.door_number, door.remark) == ("漕溪北路", "88", "8号楼")
