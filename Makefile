# The gateway's everyday commands. `make help` lists them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BIND ?= 127.0.0.1:8000

.DEFAULT_GOAL := help

.PHONY: help run test lint unit live js clients services clean example react-example

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.runtime

run: $(VENV)/.runtime ## Start the gateway on $(BIND) with the demo provider
	@echo "Gateway on http://$(BIND) -- try:"
	@echo "  curl -N http://$(BIND)/v1/streams -H 'Content-Type: application/json' -d '{\"model\": \"demo/echo\", \"prompt\": \"Hello, streaming world\"}'"
	@echo "Stop with Ctrl-C."
	BIND=$(BIND) $(BIN)/gunicorn -c config/gunicorn.conf.py wsgi:app

EXAMPLE_BIND ?= 127.0.0.1:8001

$(VENV)/.example: requirements.txt examples/chat_app/requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r examples/chat_app/requirements.txt
	touch $@ $(VENV)/.runtime

example: $(VENV)/.example ## Run the example chat app (examples/chat_app) on $(EXAMPLE_BIND), demo provider
	@echo "Chat app on http://$(EXAMPLE_BIND) -- sign in as alice/alice or bob/bob. Stop with Ctrl-C."
	BIND=$(EXAMPLE_BIND) $(BIN)/gunicorn -c examples/chat_app/gunicorn.conf.py examples.chat_app.wsgi:app

REACT_BIND ?= 127.0.0.1:4173

react-example: examples/react/node_modules/.package-lock.json ## Build examples/react (Vite) and serve it on $(REACT_BIND), /v1 proxied to the gateway on $(BIND)
	cd examples/react && npm run build
	@echo "React example on http://$(REACT_BIND) -- with the gateway on $(BIND) (make run). Stop with Ctrl-C."
	cd examples/react && GATEWAY_URL=http://$(BIND) exec ./node_modules/.bin/vite preview \
		--host $(word 1,$(subst :, ,$(REACT_BIND))) --port $(word 2,$(subst :, ,$(REACT_BIND))) --strictPort

examples/react/node_modules/.package-lock.json: examples/react/package.json examples/react/package-lock.json
	cd examples/react && npm ci --no-audit --no-fund --loglevel=error
	cd examples/react && sha256sum package-lock.json | cut -d' ' -f1 > node_modules/.installed-lock.sha256
	touch $@

# REQUIRE_REDIS=1: a test marked `redis` fails, instead of skipping, when no Redis
# answers (tests/redis_server.py); `make services` has started one.
test: $(VENV)/.dev services lint js clients ## Set everything up, lint, and run every test (Redis required)
	REQUIRE_REDIS=1 $(BIN)/python -m pytest -q

unit: $(VENV)/.dev ## Run the tests that need no server and no Redis (the Redis ones skip when none answers)
	$(BIN)/python -m pytest -q -m "not live" --ignore=tests/live

live: $(VENV)/.dev services clients ## Run the live tests (real gunicorn subprocesses)
	REQUIRE_REDIS=1 $(BIN)/python -m pytest -q tests/live

js: ## Run the browser client's tests (node --test, no npm packages)
	node --test tests/js/

clients: tests/clients/node_modules/.package-lock.json ## Install the pinned npm SSE clients the live tests drive (npm ci)

tests/clients/node_modules/.package-lock.json: tests/clients/package.json tests/clients/package-lock.json | services
	cd tests/clients && npm ci --no-audit --no-fund --loglevel=error
	touch $@

services: ## Install redis-server, nginx, chromium and node if missing; start Redis on 127.0.0.1:6379
	@bash .ci/services.sh

lint: $(VENV)/.dev ## ruff and mypy
	$(BIN)/ruff check app sse_gateway sse_gateway_client tests config examples wsgi.py fake_wire.py
	$(BIN)/mypy

clean: ## Remove the virtualenv and build artefacts
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .hypothesis

.PHONY: bench
$(VENV)/.bench: requirements.txt requirements-dev.txt requirements-bench.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-bench.txt
	touch $@ $(VENV)/.dev $(VENV)/.runtime

bench: $(VENV)/.bench ## Benchmark against the alternatives (~15 min); writes bench/results/
	$(BIN)/python -m bench.run
