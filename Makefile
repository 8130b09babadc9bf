# Two commands a newcomer needs: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# LiteLLM pins openai<3 and the dev extra's openai-agents needs openai>=3: its own environment.
LITELLM_VENV := .venv-litellm
LITELLM_STAMP := $(LITELLM_VENV)/.installed

.PHONY: demo test lint typecheck unit unit-litellm bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "budgeteer needs Python 3.11+ (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(LITELLM_STAMP): pyproject.toml
	test -x $(LITELLM_VENV)/bin/python || $(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LITELLM_VENV)/bin/python -m pip install --quiet -e '.[litellm-test]'
	touch $(LITELLM_STAMP)

demo: $(STAMP)
	$(BIN)/budgeteer demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

unit: $(STAMP)
	$(BIN)/python -m pytest -q --ignore=tests/litellm_env

unit-litellm: $(LITELLM_STAMP)
	$(LITELLM_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/litellm_env

test: lint typecheck unit unit-litellm

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_ledger.py

clean:
	rm -rf $(VENV) $(LITELLM_VENV) .mypy_cache .pytest_cache .ruff_cache
