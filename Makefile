# The front door. `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
RUN_ARGS ?=
IMAGE_REPO ?= tlp
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the project with pinned dependencies

run: $(STAMP) ## Run the whole pipeline locally (kfp.local); RUN_ARGS="--data folder:photos" etc.
	$(BIN)/tlp run $(RUN_ARGS)

test: $(STAMP) ## Lint, then run the test suite
	$(MAKE) --no-print-directory lint
	$(BIN)/python -m pytest

test-fast: $(STAMP) ## The inner loop: lint and every test except whole-pipeline runs (-m "not slow")
	$(MAKE) --no-print-directory lint
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP) ## ruff on the code, hadolint on every Dockerfile
	$(BIN)/ruff check components pipelines tests bench
	$(BIN)/hadolint containers/*.Dockerfile

compile: $(STAMP) ## Write the pipeline as kfp IR YAML to pipeline.yaml
	$(BIN)/tlp compile --output pipeline.yaml

lock: ## Re-resolve constraints.txt from pyproject.toml in a scratch venv
	rm -rf /tmp/tlp-lock && $(PYTHON) -m venv /tmp/tlp-lock
	/tmp/tlp-lock/bin/pip install --quiet -e '.[dev]'
	{ echo "# The one lock: exact versions for .venv (make) and for every container image."; \
	  echo "# Regenerate with: make lock"; \
	  /tmp/tlp-lock/bin/pip freeze --exclude-editable | grep -v '^tlp'; } > constraints.txt

clean: ## Remove .venv and local outputs
	rm -rf $(VENV) tlp-runs

.PHONY: help install run test test-fast lint compile lock clean

images: ## Build both container images (IMAGE_REPO=..., IMAGE_TAG=... default: project version)
	docker build -f containers/base.Dockerfile -t $(IMAGE_REPO)/tlp:$(IMAGE_TAG) .
	docker build -f containers/train.Dockerfile -t $(IMAGE_REPO)/tlp-train:$(IMAGE_TAG) .

push: ## Push both images to IMAGE_REPO (e.g. us-docker.pkg.dev/PROJECT/tlp)
	docker push $(IMAGE_REPO)/tlp:$(IMAGE_TAG)
	docker push $(IMAGE_REPO)/tlp-train:$(IMAGE_TAG)

.PHONY: images push

BENCH_ARGS ?=

bench: $(STAMP) ## Benchmark suite, about 20 min (BENCH_ARGS=--quick: about 3 min); writes bench/results.json
	$(BIN)/python -m bench.run $(BENCH_ARGS)

.PHONY: bench
