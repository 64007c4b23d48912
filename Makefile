# CareBus developer entry points. Each target installs what it needs itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo up test test-fast lint bench soak reliability schemas clean system fuzz

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
	./scripts/ensure-system.sh dovecot-imapd docker-compose chromium fonts-dejavu-core libfaketime
	$(BIN)/python -m pytest -q -p no:cacheprovider

## test-fast: pure unit tests only (no sockets)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit

## fuzz: coverage-guided fuzzing (atheris) of the HL7 parser/mapper and the FHIR validator,
## FUZZ_SECONDS each (default 600); the growing corpus and any crash land in build/fuzz/
FUZZ_SECONDS ?= 600
fuzz: $(STAMP)
	@for h in hl7 fhir; do \
	  mkdir -p build/fuzz/$$h/corpus build/fuzz/$$h/artifacts; \
	  echo "fuzzing $$h for $(FUZZ_SECONDS) s"; \
	  $(BIN)/python tests/fuzz/fuzz_$$h.py -max_total_time=$(FUZZ_SECONDS) -timeout=10 \
	    -rss_limit_mb=2048 -dict=tests/fuzz/$$h.dict \
	    -artifact_prefix=build/fuzz/$$h/artifacts/ \
	    build/fuzz/$$h/corpus tests/fuzz/corpus/$$h || exit 1; \
	done

lint: $(STAMP)
	$(BIN)/ruff check .

## bench: measure codec, validation and broker throughput; writes bench/results/
bench: system $(STAMP)
	$(BIN)/python -m bench

## soak: 5 min at 300 events/s (MLLP + FHIR) on `carebus up`, invariant at the end
soak: system $(STAMP)
	$(BIN)/python -m bench.soak --seconds $${SOAK_SECONDS:-300} --rate $${SOAK_RATE:-300} --out bench/results/soak.json

## reliability: the fault tests, including the long ones CI skips (worker SIGKILL)
reliability: $(STAMP)
	./scripts/ensure-system.sh libfaketime
	CAREBUS_RELIABILITY_LONG=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/reliability tests/unit/test_invariant.py tests/unit/test_sla_clock_jumps.py tests/integration/test_sla_clock_jump.py

schemas: $(STAMP)
	$(BIN)/carebus schemas export --out build/schemas

clean:
	rm -rf $(VENV) build .pytest_cache
