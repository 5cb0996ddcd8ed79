# Pressline: two commands on a fresh Debian/Ubuntu machine with Python 3.11 and root.
#   make run   - start the whole local stack in the foreground (Ctrl-C stops all of it)
#   make test  - lint, type-check and run the whole suite
# Everything the stack needs is installed here, idempotently.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: dashboards run test lint typecheck unit bench bench-api bench-proxy bench-peers bench-pipeline bench-cache bench-wakeup bench-jobs demo deploy package deps system-deps clean

deps: $(STAMP) system-deps

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# System packages: redis-server (the broker the stack and the tests start themselves) and
# prometheus (promtool for the rules' tests; the server for the tests and PRESSLINE_PROMETHEUS=1)
# and the local WordPress's packages.
system-deps:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server via apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing prometheus via apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@# The local WordPress (infra/wordpress.py): Debian's wordpress, PHP's CLI server, MariaDB.
	@{ command -v php && test -x /usr/sbin/mariadbd && test -f /usr/share/wordpress/wp-load.php \
	  && test -d /usr/share/wordpress/wp-content/themes/twentytwentythree \
	  && php -m | grep -qx mysqli; } >/dev/null 2>&1 || { \
	  echo "installing wordpress, php-cli, php-mysql, mariadb via apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    wordpress wordpress-theme-twentytwentythree php-cli php-mysql mariadb-server mariadb-client >/dev/null; }

# Regenerate the Grafana dashboards' JSON from dashboards/build.py.
dashboards: deps
	$(BIN)/python -m dashboards.build

run: deps
	$(BIN)/python -m infra.devstack

lint: deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: deps
	$(BIN)/mypy shared workers functions localstack infra bench dashboards

test: lint typecheck
	$(BIN)/pytest -q

bench: deps
	$(BIN)/python -m bench.broker_bench

bench-api: deps
	$(BIN)/python -m bench.api_bench

bench-proxy: deps
	$(BIN)/python -m bench.proxy_bench

# The proxy bench with the issue's peers measured in the same run: LiteLLM's proxy (into its own
# virtualenv) and Portkey's gateway (npm, into its own folder); neither is a project dependency.
PEERS := .peers
bench-peers: deps
	@test -x $(PEERS)/litellm/bin/litellm || { $(PYTHON) -m venv $(PEERS)/litellm && \
	  $(PEERS)/litellm/bin/pip install -q 'litellm[proxy]==1.106.2'; }
	@command -v npm >/dev/null || { echo "installing nodejs, npm via apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
	@mkdir -p $(PEERS)/portkey && cmp -s bench/portkey-package.json $(PEERS)/portkey/package.json || { \
	  cp bench/portkey-package.json $(PEERS)/portkey/package.json && \
	  npm install --prefix $(PEERS)/portkey --no-audit --no-fund --loglevel=error; }
	$(BIN)/python -m bench.proxy_bench --litellm $(PEERS)/litellm/bin/litellm --portkey $(PEERS)/portkey

bench-pipeline: deps
	$(BIN)/python -m bench.pipeline_bench

bench-cache: deps
	$(BIN)/python -m bench.cache_bench

# CPU per thread wake-up on this host (read beside bench-proxy's CPU per stream).
bench-wakeup: deps
	$(BIN)/python -m bench.wakeup_cost

# The job path's cost per job (Redis commands, S3 requests, worker CPU, $/million jobs) on the real
# stack, floor (stock RedisBroker), baseline commit and this tree in one run; e.g. ARGS="--jobs 300".
bench-jobs: deps
	$(BIN)/python -m bench.jobs_bench $(ARGS)

# Burn-in (issue 15, point 5): the stack with its WordPress under open-loop load while a fault schedule
# kills, freezes and starves its parts, then an account of every accepted job (exit 1 on a missed
# target). 30 minutes by default; e.g. make burn-in ARGS="--short" or ARGS="--minutes 30 --rate 2.5".
ARGS ?=
.PHONY: burn-in
burn-in: deps
	$(BIN)/python -m bench.burn_in $(ARGS)

# One article from an API request to a post in the local WordPress, offline (uses `make run`'s
# stack when it runs, else starts its own); prints the post's URL, id, trace id and cost.
demo: deps
	$(BIN)/python -m infra.demo

# Deploy the Chalice functions to the local AWS endpoint (moto on 4566 unless a LocalStack answers
# there); the stack (make run) or a moto server must be up. STAGE=dev by default.
STAGE ?= dev
deploy: deps
	$(BIN)/python -m infra.deploy --stage $(STAGE)

package: deps
	$(BIN)/python -m infra.deploy --stage $(STAGE) --package .data/package

clean:
	rm -rf .data .pytest_cache .mypy_cache .ruff_cache
