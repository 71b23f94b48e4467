# One entry point for people and CI: `make check` = lint + types + tests (installs what it needs).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: check install lint types test kafka kafka-stop demo bench clean

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

check: lint types test

lint: $(STAMP)
	$(BIN)/ruff check $(wildcard producer tests bench setup.py)
	$(BIN)/ruff format --check $(wildcard producer tests bench setup.py)

types: $(STAMP)
	$(BIN)/mypy --strict producer
	$(BIN)/mypy tests

# Uses KAFKA_BOOTSTRAP when set; otherwise the test session starts its own broker (scripts/kafka).
test: $(STAMP)
	$(BIN)/pytest

kafka:
	scripts/kafka start

kafka-stop:
	scripts/kafka stop

demo: $(STAMP)
	$(BIN)/oneroster-cdc demo

bench: $(STAMP)
	$(BIN)/python -m bench --size S

clean:
	scripts/kafka stop || true
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
