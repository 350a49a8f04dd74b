# Farebox — the two commands are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
UV_VERSION := 0.13.8
UV := $(PYTHON) -m uv
VENV := .venv
BIN := $(VENV)/bin
NODE_STAMP := tests/node/node_modules/.installed

.PHONY: help install run test lint fmt docs bench bench-guard bench-soak bench-responses bench-batch bench-http bench-ledger-scale

help:
	@echo "make run    - install, start the simulator, serve config/demo.yaml on :8080"
	@echo "make test   - install, start PostgreSQL/Redis when needed, run the whole suite"
	@echo "make lint   - ruff, mypy, import-linter, hadolint (Dockerfile)"
	@echo "make docs   - regenerate the config and CLI references, build the manual (strict) into site/"
	@echo "make bench  - Farebox vs direct vs LiteLLM proxy vs bare passthrough"
	@echo "make bench-guard - guard checks' CPU per request, alone and under load (bench/GUARD*.md)"
	@echo "make bench-responses - the Responses API (native, translated) beside chat: req/s, CPU"
	@echo "make bench-soak - 15 minutes of steady load on the production profile (RSS, fds, ledger)"
	@echo "make bench-batch - a 5,000-line batch filling a dedicated GPU beside 70 % live load"
	@echo "make bench-http - the HTTP layer alone: uvicorn's ASGI cycle vs Farebox's lean cycle vs granian"
	@echo "make bench-ledger-scale - 50M attempts in a month: every report timed, the writer rate, sizes"

install: $(VENV)/.installed $(NODE_STAMP)

$(VENV)/.installed: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet "uv==$(UV_VERSION)"
	$(UV) sync --frozen --compile-bytecode
	@touch $@

# The Node openai SDK for tests/e2e/test_node_sdk.py, from the lock file. Without node the
# stamp is not written (so the next install tries again) and that test fails saying why.
$(NODE_STAMP): tests/node/package.json tests/node/package-lock.json
	@if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then \
		npm ci --prefix tests/node --no-audit --no-fund && touch $@; \
	else \
		echo "node/npm not found: tests/node is not installed (tests/e2e/test_node_sdk.py will fail)"; \
	fi

run: install
	$(BIN)/farebox demo

# Two workers (each starts its own Postgres, Redis and simulator), one test file per worker
# at a time so module fixtures start once; then the `serial` tests alone. Both phases always
# run; the first failing status is the result.
# The serial phase collects only the files that hold serial tests: collecting the whole suite
# again would cost ~10 s of imports.
SERIAL_FILES = $(shell grep -rlE --include='test_*.py' 'mark\.serial' tests)

# Bytecode for the repo's packages up front: the suite starts ~200 Python processes
# (gateways, CLI calls), and where PYTHONDONTWRITEBYTECODE is set each would compile the
# whole package again (`uv sync --compile-bytecode` does the same for the dependencies).
test: install
	./scripts/ensure-services.sh
	$(BIN)/python -m compileall -q -j 0 gateway routing simulator
	$(BIN)/python -m pytest -n 3 --dist loadfile -m 'not serial'; a=$$?; \
	$(BIN)/python -m pytest -m serial $(SERIAL_FILES); b=$$?; \
	if [ $$a -ne 0 ]; then exit $$a; fi; exit $$b

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile

# The reference pages are generated from the code (committed, so they read on GitHub too);
# tests/unit/test_docs_reference.py fails when a committed one is stale. No network: the theme's
# web fonts are off and no plugin downloads anything.
docs: install
	$(BIN)/python docs/gen_config_reference.py
	$(BIN)/python docs/gen_cli_reference.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The benchmarks install the services they need as the tests do: on a fresh machine without
# Redis, bench/run.py would otherwise measure no production profile.
bench: install
	./scripts/ensure-services.sh
	$(BIN)/python bench/run.py
	$(BIN)/python bench/responses_bench.py
	$(BIN)/python bench/batch_fill_bench.py

bench-guard: install
	$(BIN)/python bench/guard.py
	$(BIN)/python bench/guard_load.py

bench-responses: install
	./scripts/ensure-services.sh
	$(BIN)/python bench/responses_bench.py

bench-batch: install
	./scripts/ensure-services.sh
	$(BIN)/python bench/batch_fill_bench.py

bench-soak: install
	./scripts/ensure-services.sh
	$(BIN)/python bench/soak.py

# 50M attempts in a month, every report timed, the writer's rate (bench/LEDGER_SCALE.md; ~1 h).
bench-ledger-scale: install
	./scripts/ensure-services.sh
	$(BIN)/python bench/ledger_scale.py

# The HTTP layer alone (bench/HTTP_LAYER.md): the bare passthrough under uvicorn's ASGI cycle,
# Farebox's lean cycle and granian. granian is not a Farebox dependency: it goes into a
# throwaway venv under bench/.work.
GRANIAN_VENV := bench/.work/granian-venv
bench-http: install
	@test -x $(GRANIAN_VENV)/bin/python || ($(UV) venv -q $(GRANIAN_VENV) -p $(BIN)/python && \
		$(UV) pip install -q --python $(GRANIAN_VENV)/bin/python granian uvloop uvicorn aiohttp orjson)
	$(BIN)/python bench/http_layer.py --granian $(GRANIAN_VENV)/bin/python
