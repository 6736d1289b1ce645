# facelake: `make demo` runs the main job on the embedded default; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo dev test test-fast lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: install  ## the offline LAION-Face world, part 00000 end to end, CelebA-HQ clusters, HyperFace demo variant
	$(BIN)/python -m dagster_project.demo

dev: install  ## the Dagster UI on the demo instance
	DAGSTER_HOME=$(CURDIR)/.facelake/demo/dagster_home FACELAKE_CONFIG=$(CURDIR)/.facelake/demo/facelake.yaml \
		$(BIN)/dagster dev -w workspace.yaml

test: install  ## lint, architecture contracts, then the whole suite (Postgres and Redis on 127.0.0.1; CI sets FACELAKE_REQUIRE_SERVICES=1)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports --no-cache

format: install
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

bench: install
	$(BIN)/python -m benchmarks.laion_meta_convert

clean:
	rm -rf .facelake .pytest_cache
