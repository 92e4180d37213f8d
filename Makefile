# poisonguard: `make demo` and `make test` work from nothing but python3.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev
BENCH  := $(VENV)/.installed-bench
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false

.PHONY: install demo test lint typecheck unit kernels-nojit bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/poisonguard demo

lint: $(STAMP)
	$(VENV)/bin/ruff format --check src flows tests benchmarks
	$(VENV)/bin/ruff check src flows tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(PY) -m pytest

# Kernels once more as plain Python, so the code inside @njit is really executed and covered.
kernels-nojit: $(STAMP)
	NUMBA_DISABLE_JIT=1 $(PY) -m pytest -q tests/test_kernels.py

test: lint typecheck unit kernels-nojit

$(BENCH): $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,bench]"
	touch $@

bench: $(BENCH)
	$(PY) benchmarks/detection.py
	$(PY) benchmarks/odds.py
	$(PY) benchmarks/speed.py
	$(PY) benchmarks/tables.py --split all
	$(PY) benchmarks/variants.py
	$(PY) benchmarks/ceiling.py --split all
	$(PY) benchmarks/adaptive.py
	$(PY) benchmarks/backdoor_split.py --split holdout

clean:
	rm -rf data/demo data/store .pytest_cache .mypy_cache .ruff_cache
