"""Writes the sample city's utility file ``utilities.csv`` (deterministic: no randomness): three
months (2026-08 … 2026-10) of water, electricity, gas, registered population and deliveries for

* six hand-made addresses whose expected scores under the packaged model are in the docstring of
  tests/test_scenario_group_rental.py (two rooms and a door flagged, one unflagged for missing
  registered population, one family, one borderline single resident);
* thirty ordinary households at doors of the sample city (families: nothing fires);
* two rows whose addresses the gazetteer does not know (they go to the rejects file).

    python scenarios/group_rental/sample/generate.py   # rewrites the file beside it
"""
from __future__ import annotations

import csv
from pathlib import Path

HERE = Path(__file__).parent
SAMPLES = HERE.parents[2] / "data_samples" / "xuhui" / "addresses_gcj02.csv"
MONTHS = ("2026-08", "2026-09", "2026-10")
# address → (water m³, electricity kWh, gas m³, registered residents, deliveries) a month; None: missing
CASES = {
    "上海市徐汇区淮海中路347弄2号403室": (30, 900, 40, 2, 120),      # G1 room: everything fires
    "上海市徐汇区天平路347弄2号104室": (28, 800, 35, None, 90),       # G2 room: no registered population
    "上海市徐汇区建国西路58弄6号1002室": (25, 700, None, 2, 80),      # G3 room: no gas service
    "上海市徐汇区岳阳路331弄6号202室": (14, 320, 24, 4, 30),          # G4 room: a family of four
    "徐汇区衡山路231号": (8, 140, 6, 1, 25),                          # G5 door: borderline single resident
    "徐汇区淮海中路25号": (40, 1200, 45, 3, 150),                     # G6 door: everything fires
}
UNKNOWN = ("徐汇区不存在路88号301室", "徐汇区淮海中路99999号")


def main() -> None:
    with open(SAMPLES, encoding="utf-8") as f:
        doors = [r for r in csv.DictReader(f) if r["door_number"] and not r["lane"]]
    taken = {"衡山路231", "淮海中路25"}
    households = []
    for r in doors[::37]:
        if f"{r['road']}{r['door_number']}" not in taken and len(households) < 30:
            households.append(f"徐汇区{r['road']}{r['door_number']}号")
    rows = []
    for m, month in enumerate(MONTHS):
        wobble = (m - 1) * 0.05  # the same household uses a little more or less from month to month
        for address, values in CASES.items():
            rows.append([address, month, *(("" if v is None else round(v * (1 + wobble), 1) if i < 3 else v)
                                           for i, v in enumerate(values))])
        for k, address in enumerate(households):
            residents = 2 + k % 3
            rows.append([address, month, round(3.2 * residents * (1 + wobble), 1),
                         round(85 * residents * (1 + wobble), 1), round(5 * residents, 1), residents, 4 + k % 5])
        for address in UNKNOWN:
            rows.append([address, month, 12, 300, 10, 2, 10])
    with open(HERE / "utilities.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["address", "month", "water_m3", "electricity_kwh", "gas_m3", "registered_population", "deliveries"])
        w.writerows(rows)


if __name__ == "__main__":
    main()
