# The two commands of the README:
#   make run    start the server on its defaults (echo on tcp:27015)
#   make test   install everything and run every check and test
#
# Everything goes into a virtual environment in .venv, installed with a
# regular (non-editable) `pip install`: Twisted finds twistd plugins only in
# installed twisted/plugins/ packages, which editable installs do not create.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
# The oldest Twisted that pyproject.toml declares; test-floor runs the core
# suite on it in a virtual environment of its own.
TWISTED_FLOOR := $(shell sed -n 's/.*"twisted\[tls\]>=\([0-9.]*\),.*/\1/p' pyproject.toml)
FLOOR_VENV ?= .venv-floor
CORE_TESTS := tests.test_echo tests.test_backpressure tests.test_limits \
	tests.test_shutdown tests.test_proxy tests.test_tls tests.test_guard \
	tests.test_core tests.test_twistedcontract tests.test_budget tests.test_upgrade

.PHONY: run test test-fast install lint trial pytest test-floor image clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(PIP) install ".[test,lint,deploy,bench]"

run: install
	$(BIN)/twistd -n --pidfile= myserver

lint: install
	$(BIN)/ruff check myserver twisted_plugins tests
	$(BIN)/ruff format --check myserver twisted_plugins tests
	$(BIN)/mypy

trial: install
	$(BIN)/python -m twisted.trial tests

pytest: install
	$(BIN)/python -m pytest tests

# Build and run the container image with docker or podman, whichever answers
# (the script skips, naming why, where neither can; CI=true makes that a
# failure: .ci/run installs podman).
image:
	docker/ci-image-test

# Every test that starts no process (in memory, or the server in the
# test's own reactor): seconds, for the edit-test loop.  Test classes that
# need a process are marked @processTest and skip here.
test-fast: install
	TEST_FAST=1 $(BIN)/python -m twisted.trial tests

# The core suite again, on the oldest Twisted the package accepts.
test-floor:
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip --disable-pip-version-check -q install \
		".[test]" "twisted[tls]==$(TWISTED_FLOOR)"
	$(FLOOR_VENV)/bin/python -c 'import twisted; print("core suite on Twisted", twisted.__version__)'
	$(FLOOR_VENV)/bin/python -m twisted.trial $(CORE_TESTS)

# Every runner runs even when one before it failed; the result fails if
# any did.
test: install
	@status=0; \
	for step in lint image trial pytest test-floor; do \
		$(MAKE) --no-print-directory $$step || { echo "make $$step failed" >&2; status=1; }; \
	done; \
	exit $$status

clean:
	rm -rf $(VENV) $(FLOOR_VENV) build *.egg-info _trial_temp .pytest_cache .mypy_cache .ruff_cache .hypothesis
