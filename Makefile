# Two commands: `make run` starts the app locally on embedded defaults; `make test` runs the tests.
# Both install what they need first: the app's venv in .venv from the hashed lock
# requirements-dev.txt, Azurite from tools/azurite's lock file, and for `make test` the checking
# tools (checkov, pip-tools) in their own venv .venv-tools from requirements-tools.txt.
# make run RUN_ARGS="--fresh --port 7072" passes options to tools/run_local.py (--help lists them).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TOOLS := .venv-tools
PIP_INSTALL := install -q --disable-pip-version-check --require-hashes
# pip-compile options of every lock; CUSTOM_COMPILE_COMMAND is what the lock's header names.
# --no-strip-extras: a lock must name the extras its packages ask for (httpx[http2]==..., which
# microsoft-kiota-http requires), or pip < 23.3 (a new venv's bundled pip on Python 3.11, perhaps the
# remote build's) refuses it under --require-hashes once the index holds a newer release than the pin.
COMPILE := CUSTOM_COMPILE_COMMAND="make lock" $(abspath $(TOOLS))/bin/pip-compile --quiet --generate-hashes \
	--no-strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links
LOCKS := requirements.txt requirements-dev.txt requirements-tools.txt
WORKER := .venv-worker
# A Python >= 3.13 for Microsoft's worker library (azure-functions-runtime): the first candidate that
# runs and is >= 3.13 (pyenv shims that are not active fail the test); empty when there is none.
PY_WORKER ?= $(shell for p in $(wildcard $(HOME)/.pyenv/versions/3.1[3-9]*/bin/python3) \
	/usr/local/bin/python3.14 /usr/local/bin/python3.13 /usr/bin/python3.14 /usr/bin/python3.13 \
	python3.14 python3.13; do \
	"$$p" -c 'import sys; sys.exit(sys.version_info < (3, 13))' 2>/dev/null && { command -v "$$p"; break; }; \
	done)

.PHONY: run test install tools worker-venv checkov lock lock-check upgrade bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip $(PIP_INSTALL) -r requirements-dev.txt
	touch $@

$(TOOLS)/.installed: requirements-tools.txt
	$(PY) -m venv $(TOOLS)
	$(TOOLS)/bin/pip $(PIP_INSTALL) -r requirements-tools.txt
	touch $@

# The app's requirements with Microsoft's worker library, for tests/infra/test_worker_indexing.py.
# requirements.txt without its azure-functions pin (1.26.0 requires Python < 3.13), which
# requirements-worker.txt replaces with the 2.x release.
$(WORKER)/.installed: requirements.txt requirements-worker.txt
	rm -rf $(WORKER) && $(PY_WORKER) -m venv $(WORKER)
	awk '/^azure-functions==/ {skip=1; next} skip && /^ / {next} {skip=0; print}' requirements.txt \
		> $(WORKER)/requirements-app.txt
	$(WORKER)/bin/pip $(PIP_INSTALL) -r $(WORKER)/requirements-app.txt -r requirements-worker.txt
	touch $@

worker-venv:
ifeq ($(strip $(PY_WORKER)),)
	@echo "worker-venv: no Python >= 3.13 on this machine; the worker indexing check is skipped"
else
	@$(MAKE) --no-print-directory $(WORKER)/.installed PY_WORKER=$(PY_WORKER)
endif

tools/azurite/node_modules/.bin/azurite: tools/azurite/package-lock.json
	npm ci --prefix tools/azurite --no-audit --no-fund --loglevel=error
	touch $@

install: $(VENV)/.installed tools/azurite/node_modules/.bin/azurite

tools: $(TOOLS)/.installed

run: install
	$(BIN)/python tools/run_local.py $(RUN_ARGS)

test: install tools worker-venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# checkov over infra/ (.checkov.yaml); tests/infra/test_checkov.py runs the same in `make test`.
checkov: tools
	BC_SKIP_MAPPING=TRUE $(TOOLS)/bin/checkov --config-file .checkov.yaml

# Re-compile every lock from its .in file, keeping the pins that still satisfy it (after editing
# an .in file). The runtime lock comes first: the dev lock is constrained by it.
lock: tools
	$(COMPILE) --output-file requirements.txt requirements.in
	$(COMPILE) --output-file requirements-dev.txt requirements-dev.in
	$(COMPILE) --output-file requirements-tools.txt requirements-tools.in

# Upgrade one package (and what it needs) on purpose: make upgrade PACKAGE=httpx
upgrade: tools
	$(COMPILE) --upgrade-package "$(PACKAGE)" --output-file requirements.txt requirements.in
	$(COMPILE) --upgrade-package "$(PACKAGE)" --output-file requirements-dev.txt requirements-dev.in

# CI: the locks are what `make lock` makes of their .in files today (a pin missing, stale or
# added by hand fails). Compiles copies in a temporary directory; changes nothing here.
lock-check: tools
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	cp requirements*.in $(LOCKS) "$$tmp"/ && \
	( cd "$$tmp" && \
	  $(COMPILE) --output-file requirements.txt requirements.in && \
	  $(COMPILE) --output-file requirements-dev.txt requirements-dev.in && \
	  $(COMPILE) --output-file requirements-tools.txt requirements-tools.in ) && \
	for f in $(LOCKS); do \
	  diff -u "$$f" "$$tmp/$$f" || { \
	    echo "lock-check: $$f is out of step with its .in file: run make lock and commit" >&2; exit 1; }; \
	done && echo "lock-check: $(LOCKS) match their .in files"

bench: install
	$(BIN)/python bench/webhook.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/devhost_http.py
	$(BIN)/python bench/lifecycle.py

clean:
	rm -rf $(VENV) $(TOOLS) $(WORKER) tools/azurite/node_modules .azurite artifacts
