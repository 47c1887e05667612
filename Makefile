# Set-up and checks. `make test` works on a fresh machine: it builds .venv, installs the CPU torch
# wheel first (so no CUDA build is pulled in), then the package with its dev extras.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
JOBS ?= 2

.PHONY: install test lint demo clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	@# The web UI test drives Debian's Chromium (Playwright's own browser download is not used).
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
		|| echo "warning: could not install chromium; the browser test will be skipped"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

test: lint
	$(VENV)/bin/pytest -n $(JOBS) -q

demo: $(STAMP)
	$(VENV)/bin/diptych shapes demo --out demo

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache demo
