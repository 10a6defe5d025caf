# qlab — make targets are the front door. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0
HOST ?= 127.0.0.1
PORT ?= 5000
# Absolute sqlite store at the project root (MLflow's own default is relative to the cwd).
MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
export MLFLOW_TRACKING_URI
# Let Python cache compiled modules (a shell that sets PYTHONDONTWRITEBYTECODE makes every
# test worker recompile qlab and re-rewrite every test module's asserts on each run).
unexport PYTHONDONTWRITEBYTECODE
ARGS ?=
DOCS_PORT ?= 8000

.DEFAULT_GOAL := help
EXP ?= epsilon_decay
# The server's own store (MLFLOW_TRACKING_URI may point at the server itself).
BACKEND_STORE_URI ?= sqlite:///$(CURDIR)/mlflow.db
ARTIFACTS_DESTINATION ?= $(CURDIR)/mlartifacts
# Extra Host headers the server accepts (the names clients use for it), comma-separated.
ALLOWED_HOSTS ?=

.PHONY: help setup train sweep test test-unit test-slow test-cluster lint ui server server-auth clean cartpole report play bench bench-quick docs docs-serve tutorial

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | sed -e 's/$$(HOST)/$(HOST)/g' -e 's/$$(PORT)/$(PORT)/g' -e 's/$$(DOCS_PORT)/$(DOCS_PORT)/g' \
		| awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: the CPU build on this machine; an unpinned torch pulls a CUDA build.
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) ## Create .venv and install qlab with its dev tools (idempotent)

train: setup ## Train tabular Q-learning on the 4x4 grid, logged to MLflow (extra Hydra overrides: ARGS="...")
	$(BIN)/qlab-train $(ARGS)

sweep: setup ## Run a named sweep from experiments/ (EXP=epsilon_decay by default; extra overrides: ARGS="...")
	$(BIN)/qlab-train +experiment=$(EXP) $(ARGS)

report: setup ## HTML report of experiment EXP's latest sweep in reports/EXP/, logged to its parent run (EXP=epsilon_decay; flags: ARGS="...")
	$(BIN)/qlab-report $(EXP) $(ARGS)

RUN ?= last
play: setup ## Replay a trained agent greedily in the terminal: make play [RUN=<run id>, default: the latest run] (ARGS="--gif agent.gif")
	$(BIN)/qlab-play $(RUN) $(ARGS)

cartpole: setup ## DQN on CartPole-v1, 5 seeds x 50k env steps (rl-zoo settings), logged to MLflow (slow)
	$(BIN)/qlab-train +experiment=dqn_cartpole $(ARGS)

# The bench extra (Stable-Baselines3, the DQN baseline); torch stays the pinned build.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: setup $(BENCH_STAMP) ## Benchmark qlab against its baselines (tens of minutes); prints the table, writes BENCHMARKS.md (flags: ARGS="...")
	$(BIN)/qlab-bench $(ARGS)

bench-quick: setup $(BENCH_STAMP) ## The benchmark suite in under two minutes (fewer repeats and steps); prints only
	$(BIN)/qlab-bench --quick $(ARGS)

# The docs extra (MkDocs + Material, the notebook tools).
DOCS_STAMP := $(VENV)/.docs-installed
# Quiet the plugins' banner about a future MkDocs 2 (the build pins mkdocs < 2).
DOCS_ENV := NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true
$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,docs]'
	touch $(DOCS_STAMP)

docs: setup $(DOCS_STAMP) ## Build the docs site into build/site, strict: a broken link or a missing page fails
	$(DOCS_ENV) $(BIN)/mkdocs build --strict

docs-serve: setup $(DOCS_STAMP) ## Serve the docs site on http://$(HOST):$(DOCS_PORT), rebuilt on every edit
	$(DOCS_ENV) $(BIN)/mkdocs serve --strict --dev-addr $(HOST):$(DOCS_PORT)

tutorial: setup $(DOCS_STAMP) ## Run docs/tutorial.ipynb end to end (its cells assert what they claim); outputs saved in it
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace docs/tutorial.ipynb \
		--ExecutePreprocessor.timeout=600

# pytest-xdist: TEST_WORKERS processes (auto: one per core); tests sharing an expensive
# fixture stay on one worker (tests/conftest.py, SHARED).
TEST_WORKERS ?= auto
XDIST = -n $(TEST_WORKERS) --dist loadgroup

test-unit: setup ## Unit tests only: in-process, no subprocess, server or end-to-end training; the quick check while coding
	$(BIN)/python -m pytest $(XDIST) -m 'not slow and not integration and not training and not cluster' $(ARGS)

test: setup ## The default suite, run by CI: unit + integration tests, not the slow ones
	$(BIN)/python -m pytest $(XDIST) -m 'not slow and not cluster' --durations=15 $(ARGS)

test-slow: setup ## Run only the slow, long-training tests
	$(BIN)/python -m pytest $(XDIST) -m 'slow and not cluster' $(ARGS)

test-cluster: setup ## As root: PostgreSQL, qlab-server, a one-node SLURM on 127.0.0.1 (installs Debian packages), the cluster tests; all torn down after
	PYTHON=$(BIN)/python .ci/cluster/run $(ARGS)

lint: setup ## Lint: ruff, and the import-linter contracts that keep the layers pointing down
	$(BIN)/ruff check src tests benchmarks examples docs
	$(BIN)/lint-imports

# One worker and no job consumers (MLflow's GenAI job runner): the UI starts in seconds.
UI_ENV = MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
ui: setup ## MLflow UI on http://$(HOST):$(PORT) over the project's store (docs/comparing.md: the four clicks)
	@$(BIN)/python -c "import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('$(HOST)', $(PORT)))" 2>/dev/null \
		|| { echo "make ui: port $(PORT) on $(HOST) is in use (another MLflow UI?); stop it or choose another: make ui PORT=5001" >&2; exit 2; }
	@echo "MLflow UI: http://$(HOST):$(PORT)/#/experiments?workflowType=machine_learning  (Ctrl-C stops it)"
	$(UI_ENV) $(BIN)/mlflow ui --backend-store-uri "$(MLFLOW_TRACKING_URI)" --host $(HOST) --port $(PORT) --workers 1

SERVER_ARGS = --backend-store-uri "$(BACKEND_STORE_URI)" \
	--artifacts-destination "$(ARTIFACTS_DESTINATION)" --host $(HOST) --port $(PORT) \
	--allowed-hosts "$(ALLOWED_HOSTS)"

server: setup ## Locked-down MLflow server on http://$(HOST):$(PORT) (loopback Host headers + ALLOWED_HOSTS), no login
	$(BIN)/qlab-server $(SERVER_ARGS)

server-auth: setup ## The same with MLflow's basic-auth login; admin password from env MLFLOW_AUTH_ADMIN_PASSWORD
	$(BIN)/qlab-server --auth $(SERVER_ARGS)

clean: ## Remove the venv, caches and Hydra outputs (keeps mlflow.db and mlruns/)
	rm -rf $(VENV) .pytest_cache .ruff_cache outputs multirun build src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
