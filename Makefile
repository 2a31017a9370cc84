# fedw2v: `make demo` runs the whole pipeline on the embedded synthetic corpus; `make test` runs the suite.
# Both install what they need first (idempotent: a second run with nothing changed takes seconds).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.fedw2v-installed
DEMO   ?= demo
# torch and torchaudio come from pip (CPU/GPU wheels on the local disk or PyPI), pinned here and in the constraints.
TORCH  := torch==2.14.1 torchaudio==2.11.0

export FLWR_TELEMETRY_ENABLED=0
export FLWR_DISABLE_UPDATE_CHECK=1

.PHONY: install system-deps test demo bench clean help

help:
	@echo "make demo     install, then synth -> prepare -> partition on a synthetic corpus in ./$(DEMO)"
	@echo "make test     install, then run the test suite"
	@echo "make bench    install, then run the benchmarks (figures go to BENCHMARKS.md by hand)"
	@echo "make install  create .venv with pinned versions and the system packages"

install: system-deps $(STAMP)

system-deps:
	@scripts/ensure-system-deps.sh

$(STAMP): pyproject.toml requirements/constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -c requirements/constraints.txt $(TORCH)
	$(PIP) install -c requirements/constraints.txt -e '.[dev]'
	@touch $@

test: install
	$(VENV)/bin/pytest -q -p no:cacheprovider

demo: install
	$(VENV)/bin/fedw2v synth $(DEMO)/corpus --force
	$(VENV)/bin/fedw2v prepare $(DEMO)/corpus -o $(DEMO)/manifest.parquet
	$(VENV)/bin/fedw2v partition $(DEMO)/manifest.parquet -o $(DEMO)/clients.parquet --plot $(DEMO)/clients.png

bench: install
	$(PY) benchmarks/prepare_scale.py
	$(PY) benchmarks/partition_scale.py --cli
	$(PY) benchmarks/aggregate.py
	$(PY) benchmarks/transcribe.py
	$(PY) benchmarks/round_overhead.py
	if $(PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
	  $(PY) benchmarks/gpu_client_step.py; else echo "no GPU here: benchmarks/gpu_client_step.py not run"; fi

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info .pytest_cache
