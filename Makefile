# certproxy: `make demo` runs the demo stack, `make test` runs the static checks and the test suite.
# Both install what they need first (Debian packages when missing, a virtualenv).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

BENCH_ARGS ?=

.PHONY: demo test check bench bench-quick bench-first-cert bench-dataplane deps system-deps clean

demo: deps
	$(BIN)/python demo/demo.py

# The suite on pytest-xdist workers; the tests that run a Docker engine all go to one of
# them (ENGINE_MODULES in tests/conftest.py), the others are spread test by test.
PYTEST_WORKERS ?= 2

test: check
	$(BIN)/python -m pytest -q -rfEs -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# Static checks of certproxy/: lint, formatting, types.
check: deps
	$(BIN)/ruff check certproxy
	$(BIN)/ruff format --check certproxy
	$(BIN)/mypy

bench: deps
	@scripts/install-bench-deps.sh
	$(BIN)/python bench/bench.py $(BENCH_ARGS)

# Empty store to a certificate: certproxy renew beside certbot and lego on the same Pebble.
bench-first-cert: deps
	@scripts/install-bench-deps.sh
	$(BIN)/python bench/first_cert.py

# certproxy's own CPU per request, in-process (no TLS, no sockets): for comparing code changes.
bench-dataplane: deps
	$(BIN)/python bench/dataplane.py

bench-quick: BENCH_ARGS = --quick
bench-quick: bench

deps: system-deps $(STAMP)

system-deps:
	@scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,speed,dns]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) build demo-run .pytest_cache *.egg-info
