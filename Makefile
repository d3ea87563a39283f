# The two front-door commands: `make run` and `make test`. Both create .venv on first use.
# Installing compiles the modules on the request's way (mypyc, about three minutes on two
# cores) where a C compiler exists; RPCBALANCER_NO_EXTENSIONS=1 installs and runs the source.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8080
CONFIG ?=
# What the compiled modules are made from (setup.py's COMPILED): a change compiles them again.
SOURCES := setup.py $(shell sed -n 's|^    "\([a-z_/]*\.py\)",$$|src/rpcbalancer/\1|p' setup.py)

.PHONY: run test test-interpreted compile clients lint fmt typecheck bench docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip "setuptools>=77"

$(BIN)/rpcbalancer: pyproject.toml setup.py | $(BIN)/python
	$(BIN)/pip install -q -e .
	@touch $@

# The dev install leaves compiling to the next rule (one compile, not two).
$(VENV)/.dev: pyproject.toml setup.py | $(BIN)/python
	RPCBALANCER_NO_EXTENSIONS=1 $(BIN)/pip install -q -e '.[dev]'
	@touch $@

# The compiled modules, made in place (setup.py's own build), again after any edit of theirs.
$(VENV)/.compiled: $(SOURCES) $(VENV)/.dev
	$(BIN)/python setup.py -q build_ext --inplace
	@touch $@

compile: $(VENV)/.compiled

run: $(BIN)/rpcbalancer
	$(BIN)/rpcbalancer serve --host $(HOST) --port $(PORT) $(if $(CONFIG),--config $(CONFIG))

test: $(VENV)/.dev $(VENV)/.compiled
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The same suite on the source alone (what runs where nothing could be compiled).
test-interpreted: $(VENV)/.dev
	RPCBALANCER_NO_EXTENSIONS=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

# Real client libraries for tests/integration/test_clients.py, pinned: dsteem, steem-js, dhive,
# ethers and ganache from npm; lighthive, hive-nectar and web3.py in a venv of their own.
# Without them those tests skip (CI installs them and insists).
CLIENTS ?= .venv-clients
clients: $(CLIENTS)/.installed tests/clients/js/node_modules/.package-lock.json

$(CLIENTS)/.installed: tests/clients/py/requirements.txt
	$(PYTHON) -m venv $(CLIENTS)
	$(CLIENTS)/bin/pip install -q -r tests/clients/py/requirements.txt
	@touch $@

tests/clients/js/node_modules/.package-lock.json: tests/clients/js/package-lock.json
	cd tests/clients/js && npm ci --no-audit --no-fund --loglevel=error

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tools/import_graph.py

fmt: $(VENV)/.dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(VENV)/.dev
	$(BIN)/mypy

# The configuration reference is rendered from the config model's docstrings.
docs: $(BIN)/rpcbalancer
	$(BIN)/python -m rpcbalancer.config.reference > docs/configuration.md

clean:
	rm -rf $(VENV) $(CLIENTS) tests/clients/js/node_modules build dist src/*.egg-info \
		.pytest_cache .mypy_cache .ruff_cache
	find src -name '*.so' -delete
