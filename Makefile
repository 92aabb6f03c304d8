# noxblock — the two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/noxblock demo

lint: $(STAMP)
	$(BIN)/ruff check models scheduler ocpp_gateway noxblock tests bench
	$(BIN)/ruff format --check models scheduler ocpp_gateway noxblock tests bench

test: lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/milp_scaling.py

clean:
	rm -rf $(VENV) var out .pytest_cache .ruff_cache .hypothesis
