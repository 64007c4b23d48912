# CareBus developer entry points. Each target installs what it needs itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo up test test-fast lint bench schemas clean system

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

system:
	./scripts/ensure-system.sh

## demo: run the whole bus on the embedded default and play a day of a territory
demo: system $(STAMP)
	$(BIN)/carebus demo

## up: run CareBus on this machine until Ctrl-C
up: system $(STAMP)
	$(BIN)/carebus up

## test: the whole suite against a real Apache Kafka (embedded unless CAREBUS_KAFKA__BOOTSTRAP)
test: $(STAMP)
	./scripts/ensure-system.sh dovecot-imapd
	$(BIN)/python -m pytest -q -p no:cacheprovider

## test-fast: pure unit tests only (no sockets)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit

lint: $(STAMP)
	$(BIN)/ruff check .

## bench: measure codec, validation and broker throughput; writes bench/results/
bench: system $(STAMP)
	$(BIN)/python -m bench

schemas: $(STAMP)
	$(BIN)/carebus schemas export --out build/schemas

clean:
	rm -rf $(VENV) build .pytest_cache
