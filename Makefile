# Pressline: two commands on a fresh Debian/Ubuntu machine with Python 3.11 and root.
#   make run   - start the whole local stack in the foreground (Ctrl-C stops all of it)
#   make test  - lint, type-check and run the whole suite
# Everything the stack needs is installed here, idempotently.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench bench-api bench-proxy deploy package deps system-deps clean

deps: $(STAMP) system-deps

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# System packages: redis-server (the broker the stack and the tests start themselves).
system-deps:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server via apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

run: deps
	$(BIN)/python -m infra.devstack

lint: deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: deps
	$(BIN)/mypy shared workers functions localstack infra bench

test: lint typecheck
	$(BIN)/pytest -q

bench: deps
	$(BIN)/python -m bench.broker_bench

bench-api: deps
	$(BIN)/python -m bench.api_bench

bench-proxy: deps
	$(BIN)/python -m bench.proxy_bench

# Deploy the Chalice functions to the local AWS endpoint (moto on 4566 unless a LocalStack answers
# there); the stack (make run) or a moto server must be up. STAGE=dev by default.
STAGE ?= dev
deploy: deps
	$(BIN)/python -m infra.deploy --stage $(STAGE)

package: deps
	$(BIN)/python -m infra.deploy --stage $(STAGE) --package .data/package

clean:
	rm -rf .data .pytest_cache .mypy_cache .ruff_cache
