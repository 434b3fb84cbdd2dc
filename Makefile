# `make demo` and `make test` are the README's two commands; both set up .venv first.
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: setup demo test lint bench

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

bench: setup
	for b in bench/*.py; do $(VENV)/bin/python $$b --quick || exit 1; done
