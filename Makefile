# `make demo` and `make test` are the README's two commands; both set up .venv first.
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: setup demo demo-real test lint bench smollm2

setup: $(VENV)/.llmac-installed

$(VENV)/.llmac-installed: pyproject.toml scripts/setup.sh
	LLMAC_VENV=$(VENV) bash scripts/setup.sh

demo: setup
	$(VENV)/bin/llmac demo --config recipes/demo.yaml

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check llmac tests bench
	$(VENV)/bin/ruff format --check llmac tests bench

# SmolLM2-135M-Instruct imported once into ~/.cache/llmac/smollm2 (LLMAC_CACHE moves it); not part of setup/test.
SMOLLM2 ?= $(or $(LLMAC_CACHE),$(HOME)/.cache/llmac)/smollm2/SmolLM2-135M-Instruct

smollm2: setup
	LLMAC_VENV=$(VENV) bash scripts/fetch_smollm2.sh

# The demo's spine on SmolLM2-135M-Instruct (README, "A real model"): under an hour on 2 CPU cores.
demo-real: smollm2
	$(VENV)/bin/llmac demo --config recipes/demo_smollm2.yaml --model_name_or_path $(SMOLLM2)

bench: setup smollm2
	for b in bench/*.py; do $(VENV)/bin/python $$b --quick || exit 1; done
