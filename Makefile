# Two entry points: `make run` (reproduce at the small preset and write the report) and `make test`.
# Both build .venv on first use. torch is pinned by constraints.txt so the local CPU wheel is used;
# packages whose declared dependencies cannot install here are added with --no-deps
# (pyproject.toml [tool.honed.no-deps], by tools/install_extra.py).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet -c constraints.txt
# DEVICE=cuda installs the CUDA build of the same pinned torch from PyPI (on a GPU machine); the default
# cpu takes the local CPU wheel. Experiments then run with `honed run ID --device cuda`.
DEVICE ?= cpu
ifeq ($(DEVICE),cuda)
TORCH_INSTALL := PIP_CONFIG_FILE=/dev/null $(PIP) --index-url https://pypi.org/simple torch==2.13.0
else
TORCH_INSTALL := $(PIP) torch==2.13.0
endif
STAMP := $(VENV)/.installed-$(DEVICE)
EXTRAS ?= dev,data,peers,text,mpc,video,speech,he,cluster
# Debian packages, installed as root where apt-get works, else the command is printed:
# espeak-ng synthesises the speech of 25-lifelong-tts offline (without it the experiment refuses in one
# line); chromium + chromium-driver open runs/report.html in tests/test_report_browser.py (else skipped).
ESPEAK_INSTALL := apt-get install -y espeak-ng
BROWSER_INSTALL := apt-get install -y chromium chromium-driver
# $(call apt_install,PROGRAM,INSTALL COMMAND,WHAT NEEDS IT)
apt_install = command -v $(1) >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    $(2) -q || { apt-get update -q && $(2) -q; } || echo "could not install $(1); run as root: $(2)"; \
	  else echo "$(1) is missing ($(3) needs it); run as root: $(2)"; fi; }
PRESET ?= small
IDS ?=
JOBS ?= 0

.PHONY: run test test-cuda install bench bench-torchvision clean wheel-check

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) numpy
	$(TORCH_INSTALL)
	$(PIP) -e '.[$(EXTRAS)]'
	$(BIN)/python tools/install_extra.py --no-deps-only $(EXTRAS)
	@$(call apt_install,espeak-ng,$(ESPEAK_INSTALL),25-lifelong-tts)
	@$(call apt_install,chromedriver,$(BROWSER_INSTALL),tests/test_report_browser.py)
	rm -f $(VENV)/.installed*
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/honed reproduce $(IDS) --preset $(PRESET) --jobs $(JOBS)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q -p no:cacheprovider tests

# On a GPU machine: every experiment's smoke preset and the userland component tests on cuda.
test-cuda: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_cuda.py

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

# The compiled torchvision.ops.nms beside PSRR (benchmarks/bench_nms.py): a second venv with a torch +
# torchvision pair that import together (constraints-torchvision.txt, ~5.5 GB), honed installed into it.
TV_VENV := .venv-torchvision
TV_STAMP := $(TV_VENV)/.installed
$(TV_STAMP): pyproject.toml constraints-torchvision.txt
	test -x $(TV_VENV)/bin/python || $(PY) -m venv $(TV_VENV)
	$(TV_VENV)/bin/python -m pip install --quiet -c constraints-torchvision.txt numpy torch torchvision
	$(TV_VENV)/bin/python -m pip install --quiet -c constraints-torchvision.txt -e .
	touch $(TV_STAMP)

bench-torchvision: $(TV_STAMP)
	$(TV_VENV)/bin/python benchmarks/bench_nms.py

# Build the wheel, install it with EXTRA (e.g. `make wheel-check EXTRA=mpc`) in a fresh venv, run `honed list`.
EXTRA ?=
wheel-check: $(STAMP)
	tools/wheel_check.sh $(EXTRA)

clean:
	rm -rf $(VENV) $(TV_VENV) runs
