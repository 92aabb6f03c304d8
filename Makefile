# noxblock — the two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: demo test lint bench clean browser

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

# The dashboard test drives Debian's chromium headless (installed here when missing and root).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium and chromium-driver (Debian) for the dashboard test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    chromium chromium-driver >/dev/null; \
	else echo "no chromium/chromedriver: the dashboard test will be skipped (apt-get install chromium chromium-driver)"; fi

test: lint browser
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/milp_scaling.py

clean:
	rm -rf $(VENV) var out .pytest_cache .ruff_cache .hypothesis
