# Two commands: `make demo` and `make test`. Both set themselves up on a fresh Debian machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test setup bytecode system-deps tiles-validator citus db-up clean

$(STAMP): pyproject.toml
	./scripts/system-deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

NODE_STAMP := node_modules/.installed
$(NODE_STAMP): package.json package-lock.json
	command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs npm; }
	npm ci --no-audit --no-fund
	touch $(NODE_STAMP)

# the CesiumGS 3D Tiles validator (not on npm), built from ../shared/vendor into .cache/ once; without
# that archive it prints a note and the tests that need it skip
tiles-validator: $(NODE_STAMP)
	./scripts/build-tiles-validator.sh

# Citus (coordinator + workers: `cim db up --workers N`, the `-m citus` tests), built from ../shared/vendor
# into .cache/citus/ once, never into the system's PostgreSQL; without the archive or the build tools it
# prints a note and those tests skip (in CI a missing build tool is an error)
citus:
	./scripts/build-citus.sh

setup: $(STAMP) $(NODE_STAMP) tiles-validator citus bytecode

# the project's own modules compiled ahead, as an installed package's are: every `cim` command would otherwise
# compile them again (~0.1 s a start where PYTHONDONTWRITEBYTECODE is set); up-to-date files are skipped
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q -j 0 cim ingest tiles cases sensing scenarios vitals api

system-deps:
	./scripts/system-deps.sh

test: setup
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/cim db up
	$(BIN)/cim init
	$(BIN)/cim samples load
	# a week of city-management cases up to today: the viewer's 2D tab shows open and closed ones
	$(BIN)/cim cases simulate --days 7 --per-day 150 --seed 1
	# water-logging (防汛): compounds, roads, pump trucks; a rainstorm peaking half an hour ago, and the
	# responses to its water-level alarms (compounds hit, nearest trucks by road, cases to 条 and 块)
	$(BIN)/cim scenarios flood load-samples
	$(BIN)/cim iot simulate --start $$(date -u -d '-3 hours' +%Y-%m-%dT%H:%M:00Z) --hours 3 --storm-at 2.5 --storm-hours 2 > /dev/null
	$(BIN)/cim scenarios flood respond --pending --k 3
	# curtain-wall risk: the sample dossiers (一楼一档), the riskiest towers with their reasons, inspection cases for the top 5
	$(BIN)/cim scenarios curtain-wall load data_samples/scenarios/curtain_wall_records.csv
	$(BIN)/cim scenarios curtain-wall rank --top 5
	$(BIN)/cim scenarios curtain-wall push --top 5
	# illegal construction (docs/scenarios.md): the streets' 拆违办 posts, then a cluster of clues merged by spot
	$(BIN)/cim ingest responsibility scenarios/illegal_building/sample/responsibility.csv && $(BIN)/cim scenarios illegal-building sample
	# group rental (docs/scenarios.md): the streets' 平安办 posts, then utility data scored and suspects pushed to them
	$(BIN)/cim ingest responsibility scenarios/group_rental/sample/responsibility.csv && $(BIN)/cim scenarios group-rental sample
	# the city's vital signs now (the server recomputes them every 15 min): /dashboard
	$(BIN)/cim vitals compute
	$(BIN)/cim db status
	@echo "serving the API on http://127.0.0.1:8000 (Ctrl-C to stop)"
	CIM_CASES_TICK_S=300 CIM_IOT_OFFLINE_CHECK_S=60 CIM_VITALS_COMPUTE_S=900 $(BIN)/cim serve --host 127.0.0.1 --port 8000

clean:
	-$(BIN)/cim db down
	rm -rf $(VENV) .cim .cache
