# Two commands: `make run` starts the app locally on embedded defaults; `make test` runs the tests.
# Both install what they need first (a venv in .venv, Azurite from tools/azurite's lock file).
# make run RUN_ARGS="--fresh --port 7072" passes options to tools/run_local.py (--help lists them).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test install bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

tools/azurite/node_modules/.bin/azurite: tools/azurite/package-lock.json
	npm ci --prefix tools/azurite --no-audit --no-fund --loglevel=error
	touch $@

install: $(VENV)/.installed tools/azurite/node_modules/.bin/azurite

run: install
	$(BIN)/python tools/run_local.py $(RUN_ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/webhook.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/pipeline.py

clean:
	rm -rf $(VENV) tools/azurite/node_modules .azurite artifacts
