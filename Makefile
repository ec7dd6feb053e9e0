# The two set-up commands: `make demo` and `make test`. Both install what they need:
#   make demo  .venv/ with the project (pip), and on Debian as root the PostgreSQL server
#              binaries (apt-get install postgresql) when none are found
#   make test  the same, plus PgBouncer (apt-get install pgbouncer) for the
#              transaction-pooler test and the ko_KR.UTF-8 locale (apt-get install
#              locales; localedef) for the tests of a server answering in Korean
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint install postgres postgres-test

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $@

install: $(BIN)/.installed

postgres:
	@bash .ci/ensure-postgres

postgres-test:
	@bash .ci/ensure-postgres test

# Migrations applied to a throwaway local PostgreSQL, then their status; the server is
# stopped and removed at the end.
demo: install postgres
	$(BIN)/python -m tests.demo

test: install postgres-test
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
