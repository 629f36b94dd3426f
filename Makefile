# Two commands do all set-up: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test install clean

# Installed with uv, given the indexes pip is configured with here (tools/index_flags.py; every index
# weighed alike, as pip does): it unpacks the 6 GB of torch's CUDA build in parallel, 52 s from a fresh
# clone with uv's cache empty against pip's 2 min 14 s, on this machine (2026-12-08).
$(STAMP): pyproject.toml clients/python/pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python --native-tls --index-strategy unsafe-best-match \
		$$($(BIN)/python tools/index_flags.py) --compile-bytecode -c constraints.txt \
		-e ./clients/python -e '.[test,deploy,timm,hf,detection]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m secateurs.demo

# Two workers (pytest-xdist), one file each at a time, torch on one thread in every process of the run:
# on two cores two workers of two threads each slowed each other past a serial run (26 min 49 s with
# -n 2, 14 min 17 s serial, 8 min 10 s like this; tests/README.md). The tests whose assertions rest on
# latency they measure (marked `measures`) run afterwards, alone: a measurement lock keeps other jobs'
# compute away, not everything a second worker does (tests/conftest.py).
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadfile -m "not measures" --durations=30
	$(BIN)/python -m pytest -m measures --durations=5

clean:
	rm -rf $(VENV) .secateurs .pytest_cache
