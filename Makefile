# The two set-up commands of the README: `make demo` and `make test`. Each creates its own virtualenv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PG_TEST_URL ?= postgresql://postgres@127.0.0.1:5432/test

.PHONY: demo test test-sqlite test-postgres lint install

$(BIN)/connector: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/connector

# The app page's browser test drives Debian's Chromium (headless) through its ChromeDriver.
BROWSER := /usr/bin/chromedriver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
$(BROWSER):
	$(SUDO) apt-get install -y -q chromium chromium-driver >/dev/null \
	  || ($(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q chromium chromium-driver >/dev/null)

demo: install
	$(BIN)/connector demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy connector sync mappings loyalty webhooks

test-sqlite: install $(BROWSER)
	TEST_DATABASE_URL= $(BIN)/pytest

test-postgres: install $(BROWSER)
	@$(BIN)/python -m connector.pgcheck "$(PG_TEST_URL)"
	TEST_DATABASE_URL="$(PG_TEST_URL)" $(BIN)/pytest

test: lint test-sqlite test-postgres
