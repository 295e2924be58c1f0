# Two entry points: `make demo` (the main job) and `make test` (the test suite).
# Both set up .venv first (CPU torch where there is no GPU); see scripts/setup.sh.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast lint bench clean

setup:
	@NEXTLAT_VENV=$(VENV) bash scripts/setup.sh dev

demo: setup
	$(PY) -m nextlat_probe.demo $(DEMO_ARGS)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check nextlat_probe tests benchmarks analyses

clean:
	rm -rf runs report .pytest_cache
