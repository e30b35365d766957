# ringloop — top-level entry points. `make bench` and `make test` do all set-up themselves.
# Subdirectories own their own Makefiles (c-examples/, python-binding/, benches/); this file only
# installs prerequisites and delegates.

SHELL := /bin/bash
.DEFAULT_GOAL := build

CARGO ?= cargo
PYTHON ?= python3
VENV := $(CURDIR)/.venv
VPY := $(VENV)/bin/python
export RINGLOOP_ROOT := $(CURDIR)
export CARGO_TERM_COLOR := never

# Debian packages the tests and benchmarks need (clang+libclang for bindgen and sanitizers,
# valgrind for leak checks, libuv/liburing for the reference servers, strace/perf for profiling).
DEB_PACKAGES := clang libclang-dev libclang-rt-14-dev valgrind libuv1-dev liburing-dev pkg-config strace
# Python packages for the test and bench environment.
# pyOpenSSL and psutil: uvloop's test suite imports them (python-binding/tools/run_uvloop_tests.py).
PY_PACKAGES := pytest pytest-timeout uvloop pyOpenSSL psutil setuptools-rust wheel matplotlib

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: build deps deps-deb deps-venv test test-rust test-rust-checks test-c test-python test-bench \
        bench install header check-header clean fuzz soak test-reliability compat

## Prerequisites ---------------------------------------------------------------------------------

deps: deps-deb deps-venv

deps-deb:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

deps-venv: $(VENV)/.deps-stamp

$(VENV)/.deps-stamp: Makefile
	@[ -x $(VPY) ] || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q $(PY_PACKAGES)
	@touch $@

## Build -----------------------------------------------------------------------------------------

build:
	$(CARGO) build --release --workspace

header: 
	$(MAKE) -C ffi header

check-header:
	$(MAKE) -C ffi check-header

install: build
	$(MAKE) -C ffi install PREFIX="$(PREFIX)"

## Tests -----------------------------------------------------------------------------------------

# Each suite's wall time is printed so the total stays visibly inside CI's budget.
SUITES := test-rust test-c test-python test-bench test-reliability

test: deps
	@start=$$(date +%s); times=""; \
	for suite in $(SUITES); do \
	  t0=$$(date +%s); $(MAKE) $$suite || exit 1; \
	  times="$$times $$suite=$$(( $$(date +%s) - t0 ))s"; \
	done; \
	echo "make test: all suites passed in $$(( $$(date +%s) - start ))s ($${times# })"

test-rust-checks:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps

# Every reactor test is instantiated for both backends. The second run forces the default backend
# to epoll (the C ABI tests and the default-backend tests follow it) and runs the io_uring
# instantiations on single-issuer rings (Options::single_thread), so one extra pass covers both.
test-rust: test-rust-checks
	$(CARGO) test --workspace
	RINGLOOP_BACKEND=epoll RINGLOOP_TEST_SINGLE_THREAD=1 $(CARGO) test --workspace

test-c: build
	$(MAKE) -C ffi check-header
	$(MAKE) -C c-examples test

test-python: build deps-venv
	$(MAKE) -C python-binding test VPY=$(VPY)

test-bench: build deps-venv
	$(MAKE) -C benches smoke VPY=$(VPY)

# Short forms of the reliability work (fuzzing the C ABI, soak, faults, fallback, fork).
test-reliability: build deps-venv
	$(MAKE) -C reliability test VPY=$(VPY)

# Third-party libraries' own suites (anyio, aiohttp) on the stdlib loop and on ringloop, compared
# per test. Not part of `test`: it downloads them from PyPI and takes ~15 minutes.
compat: build deps-venv
	$(VPY) python-binding/tools/run_third_party.py --check

# Long forms.
fuzz: deps
	$(MAKE) -C reliability fuzz
soak: build deps-venv
	$(MAKE) -C reliability soak VPY=$(VPY)

## Benchmarks ------------------------------------------------------------------------------------

bench: deps build
	$(MAKE) -C benches bench VPY=$(VPY)

clean:
	$(CARGO) clean
	rm -rf $(VENV)
