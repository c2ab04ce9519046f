# The single source of set-up: every target installs what it needs into .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Tests and the quickstart keep Ray/MLflow quiet and local.
export RAY_USAGE_STATS_ENABLED ?= 0
export MLFLOW_DISABLE_TELEMETRY ?= true
export PYTHONUNBUFFERED := 1

.PHONY: install postgres test lint format run bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	# torch and its CUDA wheels come from the local wheel cache (pip, not uv: see docs/CONTRIBUTING.md).
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# PostgreSQL server programs for tests/tracking/test_postgres_study.py (the recipes' MLflow
# backend store): Debian's package, only when none is installed (it puts them in
# /usr/lib/postgresql/*/bin, off PATH). The test starts its own server; nothing is configured here.
postgres:
	@command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { \
	  sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  echo "installing PostgreSQL (apt-get install postgresql) for the tests"; \
	  $$sudo apt-get update -qq && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends postgresql >/dev/null; }

test: install postgres
	$(PY) -m pytest -q -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint docker/Dockerfile

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The main job: a real S2AP study on the embedded digits data (Ray Tune + Optuna + ASHA + MLflow).
run: install
	$(VENV)/bin/s2ap tune configs/quickstart.yaml

# The prune-step table with its two ratios (S2AP-1 / dense, S2AP-1 / HYDRA time). On a shared
# machine: make bench BENCH_ARGS="--threads 1 --clock cpu" (docs/PERFORMANCE.md).
BENCH_ARGS ?=
bench: install
	$(PY) benchmarks/prune_step.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache

# ---- Containers (docker/): the image, its base, PostgreSQL, the cluster test ----------------------
# docker/host.sh installs Docker (Debian's docker.io, docker-compose) when missing and starts a
# daemon when none answers; docker/image.sh builds FROM the official python image, or from a local
# one made of Debian's packages where Docker Hub is out of reach (docs/cluster.md, "Tested here").
S2AP_IMAGE ?= s2ap:latest
export S2AP_IMAGE

.PHONY: docker-host base-image postgres-image image test-cluster

docker-host:
	@docker/host.sh

base-image: docker-host
	@docker/image.sh base

postgres-image: docker-host
	@docker/image.sh postgres

image: docker-host
	docker/image.sh image

# The compose stack for real (tests/docker/test_stack.py, 11-15 min): not part of `make test`.
# Without a usable Docker daemon the test skips and says why.
test-cluster: install
	@if docker/host.sh; then \
	  docker/image.sh image && pg=$$(docker/image.sh postgres) || exit 1; \
	else echo "make test-cluster: no usable Docker daemon here (see above): the test skips"; fi; \
	POSTGRES_IMAGE="$$pg" $(PY) -m pytest -q -p no:cacheprovider -m cluster tests/docker/test_stack.py
