# The front door. `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
RUN_ARGS ?=
IMAGE_REPO ?= tlp
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
# Pinned bases (the Dockerfiles' defaults); without Docker Hub, `make images-offline` builds on
# STANDIN_BASE, made from Debian's packages under a local name. BAKE_WEIGHTS=0: no ImageNet
# weights in the training image (their host unreachable at build time).
BASE_IMAGE ?= python:3.11.7-slim-bookworm
TRAIN_BASE_IMAGE ?= tensorflow/tensorflow:2.21.0-gpu
STANDIN_BASE ?= tlp-local/debian-python:bookworm
# Dataflow workers' SDK harness boot comes from Beam's SDK image of the locked apache-beam (Docker Hub).
BEAM_SDK_IMAGE ?= apache/beam_python3.11_sdk:2.77.0
BAKE_WEIGHTS ?= 1
# What the last `make images` built, one reference a line (`make push` pushes these).
IMAGES_BUILT ?= build/images-built.txt
LOCKED_TENSORFLOW := $(shell sed -n 's/^tensorflow==//p' constraints.txt)

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the project with pinned dependencies

install-cuda: $(STAMP) ## Add TensorFlow's CUDA libraries to .venv: tensorflow[and-cuda] at the locked version (Linux x86_64, NVIDIA driver; not run here)
	$(BIN)/python -m pip install --quiet -c constraints.txt "tensorflow[and-cuda]==$(LOCKED_TENSORFLOW)"

run: $(STAMP) ## Run the whole pipeline locally (kfp.local); RUN_ARGS="--data folder:photos" etc.
	$(BIN)/tlp run $(RUN_ARGS)

test: $(STAMP) ## Lint, build the docs site in strict mode, then run the whole test suite on every core (pytest-xdist)
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory docs
	$(BIN)/python -m pytest -n auto --dist loadfile

test-fast: $(STAMP) ## The inner loop: lint and every test except whole runs and trainings (-m "not slow"), on every core
	$(MAKE) --no-print-directory lint
	$(BIN)/python -m pytest -m "not slow" -n auto --dist loadfile

lint: $(STAMP) ## ruff on the code, mypy over components and pipelines, hadolint on every Dockerfile
	$(BIN)/ruff check components pipelines tests bench
	$(BIN)/mypy
	$(BIN)/hadolint containers/*.Dockerfile

compile: $(STAMP) ## Write the pipeline as kfp IR YAML to pipeline.yaml
	$(BIN)/tlp compile --output pipeline.yaml

lock: ## Re-resolve constraints.txt from pyproject.toml in a scratch venv
	rm -rf /tmp/tlp-lock && $(PYTHON) -m venv /tmp/tlp-lock
	/tmp/tlp-lock/bin/pip install --quiet -e '.[dev]'
	{ echo "# The one lock: exact versions for .venv (make) and for every container image."; \
	  echo "# Regenerate with: make lock"; \
	  /tmp/tlp-lock/bin/pip freeze --all --exclude-editable | grep -v -e '^tlp' -e '^pip==' -e '^wheel=='; } > constraints.txt

clean: ## Remove .venv, the built site and tlp-runs/ (every local run AND the local registry tlp-runs/registry.db)
	rm -rf $(VENV) site tlp-runs

.PHONY: help install install-cuda run test test-fast lint compile lock clean

docs: $(STAMP) ## Build the documentation site into site/ (strict: a broken link or a page missing from the nav fails)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

docs-serve: $(STAMP) ## Serve the documentation site at http://127.0.0.1:8000, rebuilt as pages change
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:8000

.PHONY: docs docs-serve

images: ## Build the CPU, training, serving and Dataflow-worker images (IMAGE_REPO, IMAGE_TAG, BASE_IMAGE, TRAIN_BASE_IMAGE, BAKE_WEIGHTS=0|1)
	@# IMAGES_BUILT lists what this build made, so `make push` pushes exactly that (never an older image left behind).
	@mkdir -p $(dir $(IMAGES_BUILT)) && rm -f $(IMAGES_BUILT)
	docker build -f containers/base.Dockerfile --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	    -t $(IMAGE_REPO)/tlp:$(IMAGE_TAG) .
	@echo $(IMAGE_REPO)/tlp:$(IMAGE_TAG) >> $(IMAGES_BUILT)
	docker build -f containers/train.Dockerfile --build-arg BASE_IMAGE=$(TRAIN_BASE_IMAGE) \
	    --build-arg BAKE_WEIGHTS=$(BAKE_WEIGHTS) -t $(IMAGE_REPO)/tlp-train:$(IMAGE_TAG) .
	@echo $(IMAGE_REPO)/tlp-train:$(IMAGE_TAG) >> $(IMAGES_BUILT)
	docker build -f containers/serve.Dockerfile --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	    -t $(IMAGE_REPO)/tlp-serve:$(IMAGE_TAG) .
	@echo $(IMAGE_REPO)/tlp-serve:$(IMAGE_TAG) >> $(IMAGES_BUILT)
	@# Beam's SDK image (the harness's boot) lives on Docker Hub only: without it, say so and go on.
	@if docker image inspect $(BEAM_SDK_IMAGE) > /dev/null 2>&1 || docker pull $(BEAM_SDK_IMAGE) > /dev/null; then \
	  docker build -f containers/dataflow.Dockerfile --build-arg CPU_IMAGE=$(IMAGE_REPO)/tlp:$(IMAGE_TAG) \
	    --build-arg BEAM_SDK_IMAGE=$(BEAM_SDK_IMAGE) -t $(IMAGE_REPO)/tlp-dataflow:$(IMAGE_TAG) . \
	  && echo $(IMAGE_REPO)/tlp-dataflow:$(IMAGE_TAG) >> $(IMAGES_BUILT); \
	else echo "SKIPPED $(IMAGE_REPO)/tlp-dataflow:$(IMAGE_TAG): $(BEAM_SDK_IMAGE) cannot be pulled"; fi
	@for ref in $$(cat $(IMAGES_BUILT)); do \
	  echo "$$ref  $$(docker image ls --format '{{.Size}}' $$ref)  (base: $$(docker image inspect \
	    --format '{{index .Config.Labels "org.opencontainers.image.base.name"}}' $$ref))"; \
	done

standin-base: ## Build the stand-in base from Debian's packages as STANDIN_BASE (a local name), if missing
	containers/standin-base.sh $(STANDIN_BASE)

images-offline: standin-base ## make images without Docker Hub or the weights host: stand-in base, no baked weights
	$(MAKE) --no-print-directory images BASE_IMAGE=$(STANDIN_BASE) TRAIN_BASE_IMAGE=$(STANDIN_BASE) BAKE_WEIGHTS=0

push: images ## Build the images (make images), then push each one built to IMAGE_REPO (e.g. us-docker.pkg.dev/PROJECT/tlp); names any it skipped
	@skipped=""; for name in tlp tlp-train tlp-serve tlp-dataflow; do ref=$(IMAGE_REPO)/$$name:$(IMAGE_TAG); \
	  if grep -qxF "$$ref" $(IMAGES_BUILT); then echo "docker push $$ref"; docker push "$$ref" || exit 1; \
	  else skipped="$$skipped $$ref"; fi; \
	done; \
	if [ -n "$$skipped" ]; then echo "SKIPPED push of$$skipped: make images did not build it (see its SKIPPED line above);" \
	  "runs with --data-prep-runner dataflow need tlp-dataflow in IMAGE_REPO."; fi

.PHONY: images standin-base images-offline push

BENCH_ARGS ?=

bench: $(STAMP) ## Benchmark suite, about 18 min (BENCH_ARGS=--quick: about 3 min); writes bench/results.json
	$(BIN)/python -m bench.run $(BENCH_ARGS)

.PHONY: bench
