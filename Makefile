# One entry point for people and CI: `make check` = lint + types + tests (installs what it needs).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The AsyncAPI parser that validates docs/asyncapi.yaml (pinned in contract/asyncapi).
NODE_STAMP := contract/asyncapi/node_modules/.installed

.PHONY: check install lint types test kafka kafka-stop demo bench docs clean

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $(STAMP)

$(NODE_STAMP): contract/asyncapi/package.json contract/asyncapi/package-lock.json
	cd contract/asyncapi && npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

install: $(STAMP) $(NODE_STAMP)

check: lint types test

lint: $(STAMP)
	$(BIN)/ruff check $(wildcard producer tests bench examples setup.py)
	$(BIN)/ruff format --check $(wildcard producer tests bench examples setup.py)

types: $(STAMP)
	$(BIN)/mypy --strict producer
	$(BIN)/mypy --strict examples/provision
	$(BIN)/mypy tests

# Uses KAFKA_BOOTSTRAP when set; otherwise the test session starts its own broker (scripts/kafka).
# tests/test_java_contract.py runs Maven (contract/java); a cold ~/.m2 costs about a minute.
test: $(STAMP) $(NODE_STAMP)
	$(BIN)/pytest

kafka:
	scripts/kafka start

kafka-stop:
	scripts/kafka stop

demo: $(STAMP)
	$(BIN)/oneroster-cdc demo

bench: $(STAMP)
	$(BIN)/python -m bench --size S

# Rewrites docs/asyncapi.yaml from producer/contract.py and schemas/.
docs: $(STAMP)
	$(BIN)/python -m producer.contract

clean:
	scripts/kafka stop || true
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache contract/asyncapi/node_modules contract/java/target
