# The two commands a new machine needs: `make up` and `make test`. Everything else follows.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never

.PHONY: up test lint format bench bench-eventlog bench-eventlog-storage bench-finance bench-payments bench-gateway bench-tenant bench-fold clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

# The virtual environment, rebuilt from the lock file whenever it or pyproject.toml changes.
$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --quiet --all-extras
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

bench: bench-eventlog bench-eventlog-storage bench-fold bench-finance bench-payments bench-gateway bench-tenant  ## every benchmark; each prints its figures and how to rerun it

bench-eventlog: $(VENV)/.synced
	$(VENV)/bin/python -m bench.eventlog.run

bench-eventlog-storage: $(VENV)/.synced  ## bytes on disk per usage event, for sizing Postgres
	$(VENV)/bin/python -m bench.eventlog.storage

bench-finance: $(VENV)/.synced
	$(VENV)/bin/python -m bench.finance.run

bench-payments: $(VENV)/.synced  ## checkout, webhook intake and Stripe event processing rates
	$(VENV)/bin/python -m bench.payments.run

# Needs wrk (apt-get install -y wrk). SOAK=1000000 for the memory check over a million requests.
bench-gateway: $(VENV)/.synced
	$(VENV)/bin/python -m bench.gateway.run --soak $(or $(SOAK),200000)

bench-tenant: $(VENV)/.synced
	$(VENV)/bin/python -m bench.tenant.run

bench-fold: $(VENV)/.synced  ## billing fold: 1 and 2 workers, replay of 1M usage events, memory
	$(VENV)/bin/python -m bench.fold.run

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
