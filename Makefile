# `make demo` and `make test` are the README's two commands; both set up .venv first.
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: setup demo test lint bench smollm2

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
smollm2: setup
	LLMAC_VENV=$(VENV) bash scripts/fetch_smollm2.sh

bench: setup
	for b in bench/*.py; do $(VENV)/bin/python $$b --quick || exit 1; done
