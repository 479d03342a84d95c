"""The address loader's per-row Python cost, before and after (issue 15 item 3: parsing was the largest part
of the 10 M-address load, ~90 µs a row). No database: ``ingest.addresses.AddressParser.prepare`` — parse each
full address with the gazetteer, fill the columns, standard address, address code, door number — over the
first ``--rows`` addresses of a district of the generated city (``--city``), with a dictionary of the city's
districts, streets and communities as a first load has it (no roads yet) and, ``--known-roads``, with the
roads of those addresses too (a later load). Each turn runs *before* (``--before``, a git revision: its tree
archived under ``--home``) and *after* (this checkout) in a fresh process, alternating which goes first;
CPU seconds of the process (``time.process_time``), so a busy machine inflates both alike. Both sides' output
frames must be identical (compared by a digest of every column).

    .venv/bin/python benchmarks/address_parse.py --district 310101 --rows 200000 --before main
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# run in a fresh interpreter with the measured tree first on sys.path: (city, prefix, rows, known roads) → JSON
CHILD = r'''
import csv, hashlib, itertools, json, sys, time
sys.path.insert(0, sys.argv[1])
csv.field_size_limit(10**9)
import pandas as pd
from cim.gazetteer.dictionary import AddressDictionary
from cim.gazetteer.parse import parse_address
from ingest.addresses import AddressParser
from ingest.prepare import Prepared
from ingest.specs import SPECS
city, prefix, n, known = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
def rows(name, cols):
    with open(f"{city}/{name}", encoding="utf-8") as f:
        return [tuple(r[c] for c in cols) for r in csv.DictReader(f)]
kw = dict(districts=rows("districts.csv", ("code", "name")), streets=rows("streets.csv", ("code", "name", "district_code")),
          communities=rows("communities.csv", ("code", "name", "street_code")), city_name="上海市")
with open(f"{city}/addresses.csv", encoding="utf-8") as f:
    texts = list(itertools.islice((line.split(",", 1)[0] for line in f if line.startswith(prefix)), n))
d = AddressDictionary.from_rows(**kw)
if known:
    d = AddressDictionary.from_rows(**kw, roads=sorted({(p.road, p.district_code) for p in map(lambda t: parse_address(t, d), texts[::50]) if p.road and p.district_code}))
frame = pd.DataFrame({c: pd.Series([None] * len(texts), dtype=object) for c in SPECS["addresses"].fields})
frame["full_address"] = texts
for c in ("district_code", "street_code", "community_code", "grid_code"):
    frame[c] = pd.Series([None] * len(texts), dtype=object)
parser = AddressParser(d)
started = time.process_time()
out = parser.prepare(Prepared(frame, None, {}, {}))
cpu = time.process_time() - started
digest = hashlib.sha256(pd.util.hash_pandas_object(out.frame.astype("string"), index=False).values.tobytes()
                        + json.dumps(sorted(out.rejects.items())).encode()).hexdigest()
shapes = getattr(parser, "shapes", None)
print(json.dumps({"rows": len(texts), "cpu_s": round(cpu, 3), "us_per_row": round(cpu / len(texts) * 1e6, 2),
                  "digest": digest, "fast": getattr(shapes, "fast", None), "full": getattr(shapes, "full", None)}))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--city", type=Path, default=Path("/work/scale-data/city"))
    parser.add_argument("--district", default="310101")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--before", default="main")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--home", type=Path, default=Path("/tmp/cim-address-parse-bench"))
    args = parser.parse_args()
    from ingest.synthetic_city import DISTRICTS

    sys.path.insert(0, str(ROOT))
    prefix = "上海市" + {code: name for code, name, *_ in DISTRICTS}[args.district]
    before_src = args.home / f"src-{args.before}"
    if not before_src.exists():
        before_src.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(before_src)], input=archive.stdout, check=True)
    trees = {"before": before_src, "after": ROOT}
    results: dict = {"district": args.district, "rows": args.rows, "before": args.before, "turns": []}
    for known in (False, True):
        for turn in range(args.turns):
            for variant in (["before", "after"] if turn % 2 == 0 else ["after", "before"]):
                done = subprocess.run([sys.executable, "-c", CHILD, str(trees[variant]), str(args.city), prefix,
                                       str(args.rows), "1" if known else "0"], capture_output=True, text=True,
                                      check=True)
                entry = {"variant": variant, "known_roads": known, "turn": turn, **json.loads(done.stdout)}
                print(json.dumps(entry, ensure_ascii=False), flush=True)
                results["turns"].append(entry)
    for known in (False, True):
        turns = [t for t in results["turns"] if t["known_roads"] == known]
        per = {v: sorted(t["us_per_row"] for t in turns if t["variant"] == v) for v in ("before", "after")}
        median = {v: per[v][len(per[v]) // 2] for v in per}
        results[f"{'known_roads' if known else 'first_load'}"] = {
            "us_per_row_median": median, "ratio": round(median["before"] / median["after"], 2),
            "identical_output": len({t["digest"] for t in turns}) == 1}
    print(json.dumps({k: v for k, v in results.items() if k != "turns"}, indent=1, ensure_ascii=False))
    args.home.mkdir(parents=True, exist_ok=True)
    (args.home / f"results-{args.district}.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
