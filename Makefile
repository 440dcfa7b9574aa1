# certproxy: `make demo` runs the demo stack, `make test` runs the static checks and the test suite.
# Both install what they need first (Debian packages when missing, a virtualenv).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# 1: the data plane's hot modules compiled with mypyc, in place (setup.py, docs/0003);
# 0: pure Python. `make test` runs the suite on the build chosen here, then the data
# plane's in-process tests on the pure modules (CERTPROXY_PURE=1) too.
COMPILE ?= 1
BUILD  := $(VENV)/.build-stamp
HOT    := $(wildcard certproxy/proxy/*.py)

BENCH_ARGS ?=

.PHONY: demo test check bench bench-quick bench-first-cert bench-dataplane deps system-deps clean

demo: deps
	$(BIN)/python demo/demo.py

# The suite on pytest-xdist workers; the tests that run a Docker engine all go to one of
# them (ENGINE_MODULES in tests/conftest.py), the others are spread test by test.
PYTEST_WORKERS ?= 2

# The data plane's tests that run in-process, on the pure-Python modules.
PURE_TESTS ?= tests/test_build.py tests/test_protocol.py tests/test_protocol_hardening.py \
	tests/test_protocol_fuzz.py tests/test_headers.py tests/test_phases.py tests/test_tlsconn.py \
	tests/test_tls.py tests/test_private_apis.py tests/test_accessline.py

test: check
	CPT_EXPECT_BUILD=$(if $(filter 1,$(COMPILE)),compiled,pure) \
		$(BIN)/python -m pytest -q -rfEs -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)
	CERTPROXY_PURE=1 CPT_EXPECT_BUILD=pure \
		$(BIN)/python -m pytest -q -rfEs -n $(PYTEST_WORKERS) -p no:cacheprovider $(PURE_TESTS)

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

deps: system-deps $(STAMP) $(BUILD)

system-deps:
	@scripts/install-system-deps.sh

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 'setuptools>=77' wheel
	$(BIN)/python -m pip install -q -e '.[test,speed,dns]'
	touch $(STAMP)

# The compiled modules beside their sources (rebuilt when a source changes), or none.
$(BUILD): $(STAMP) setup.py $(HOT) Makefile
	rm -f certproxy/proxy/*.so
ifeq ($(COMPILE),1)
	CERTPROXY_COMPILE=1 $(BIN)/python setup.py -q build_ext --inplace
	touch certproxy/proxy/*.so  # an unchanged module is copied from build/ with its old time
endif
	echo $(COMPILE) > $(BUILD)

clean:
	rm -rf $(VENV) build demo-run .pytest_cache *.egg-info
	rm -f certproxy/proxy/*.so
