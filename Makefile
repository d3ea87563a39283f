# The two front-door commands: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8080
CONFIG ?=

.PHONY: run test clients lint fmt typecheck bench docs clean

$(BIN)/rpcbalancer: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	@touch $@

$(VENV)/.dev: $(BIN)/rpcbalancer
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

run: $(BIN)/rpcbalancer
	$(BIN)/rpcbalancer serve --host $(HOST) --port $(PORT) $(if $(CONFIG),--config $(CONFIG))

test: $(VENV)/.dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

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
