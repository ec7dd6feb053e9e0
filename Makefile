# The two set-up commands: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint install postgres

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $@

install: $(BIN)/.installed

postgres:
	@bash .ci/ensure-postgres

# Migrations applied to a throwaway local PostgreSQL, then their status; the server is
# stopped and removed at the end.
demo: install postgres
	$(BIN)/python -m tests.demo

test: install postgres
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
