# The two commands a new machine needs: `make up` and `make test`. Everything else follows.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never

.PHONY: up test lint format bench bench-eventlog bench-fold clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

# The virtual environment, rebuilt from the lock file whenever it or pyproject.toml changes.
$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --quiet
	touch $@

up: $(VENV)/.synced  ## the whole stack on this machine (embedded Postgres and Redis by default)
	$(VENV)/bin/tally up

test: $(VENV)/.synced  ## the whole suite against real Postgres and Redis (started if down)
	$(VENV)/bin/pytest

lint: $(VENV)/.synced  ## ruff and mypy (strict on libs/ and services/)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

format: $(VENV)/.synced
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: bench-eventlog bench-fold  ## every benchmark; each prints its figures and how to rerun it

bench-eventlog: $(VENV)/.synced
	$(VENV)/bin/python -m bench.eventlog.run

bench-fold: $(VENV)/.synced  ## billing fold: 1 and 2 workers, replay of 1M usage events, memory
	$(VENV)/bin/python -m bench.fold.run

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
