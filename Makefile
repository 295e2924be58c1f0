# Entry points: `make demo` (the main job), `make test` (the test suite), `make lab` (JupyterLab).
# Each sets up .venv first (CPU torch where there is no GPU); see scripts/setup.sh.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast lab lint bench clean

setup:
	@NEXTLAT_VENV=$(VENV) bash scripts/setup.sh dev

demo: setup
	$(PY) -m nextlat_probe.demo $(DEMO_ARGS)

# JupyterLab on notebooks/: installs the notebooks extra into .venv if missing, registers
# the .venv kernel as "nextlat_probe" (for any Jupyter of this user), then starts the lab.
lab:
	@NEXTLAT_VENV=$(VENV) bash scripts/setup.sh dev,notebooks
	$(PY) -m ipykernel install --user --name nextlat_probe --display-name "Python (nextlat_probe)"
	$(VENV)/bin/jupyter lab notebooks/ $(LAB_ARGS)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check nextlat_probe tests benchmarks analyses

clean:
	rm -rf runs report .pytest_cache
