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

.PHONY: run test install lint trial pytest image clean

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

# Build and run the container image with podman, where podman is installed
# (.ci/run installs it: in CI the image test always runs).
image:
	@if command -v podman >/dev/null; then docker/ci-image-test; \
	elif [ "$$CI" = true ]; then echo "podman is not installed" >&2; exit 1; \
	else echo "image test skipped: podman is not installed"; fi

test: lint image trial pytest

clean:
	rm -rf $(VENV) build *.egg-info _trial_temp .pytest_cache .mypy_cache .ruff_cache .hypothesis
