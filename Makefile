# The two commands of the README: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/vitasync-fhir: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

.PHONY: install serve test lint
install: $(BIN)/vitasync-fhir

serve: install
	$(BIN)/vitasync-fhir serve

test: install
	$(BIN)/ruff check vitasync_fhir tests benchmarks
	$(BIN)/pytest -n 2 -q

lint: install
	$(BIN)/ruff check vitasync_fhir tests benchmarks
