# Two entry points: `make run` (reproduce at the small preset and write the report) and `make test`.
# Both build .venv on first use. torch is pinned by constraints.txt so the local CPU wheel is used.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PRESET ?= small
IDS ?=

.PHONY: run test install bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt numpy torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,data]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/honed reproduce $(IDS) --preset $(PRESET)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q tests

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs
