# The two commands of the README: `make run` and `make test`. Both install what
# they need first (uv, then the locked workspace), so a fresh clone works.
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")

.PHONY: run test install uv lint bench down status

uv:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 \
		|| python3 -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

## The locked workspace, byte-compiled once here: every process the tests start (two
## test processes, uvicorn, workers, the CLI) then loads .pyc files instead of compiling
## the sources again (PYTHONDONTWRITEBYTECODE, when set, stops Python from caching them
## itself; docs/testing.md).
install: uv
	@$(UV) sync --frozen --quiet --compile-bytecode
	@$(UV) run --frozen python -m compileall -q -j 0 packages apps alembic >/dev/null

## Start the embedded PostgreSQL (or use DATABASE_URL), migrate, seed, show the schema;
## then serve the API (HOST, PORT; default 127.0.0.1:8000) and run a worker beside
## it, supervised by automl-run: a child that exits is restarted with backoff, one
## that keeps failing stops both with a one-line reason (and a non-zero exit), and
## Ctrl-C stops both (the worker finishes or releases its work).
run: install
	$(UV) run automl-db up
	@echo "API: http://$${HOST:-127.0.0.1}:$${PORT:-8000}  (docs: /docs; Ctrl-C stops it and the worker; make down stops PostgreSQL)"
	@$(UV) run automl-run

## The test suite, against a real PostgreSQL (embedded unless TEST_DATABASE_URL), in
## parallel (pytest-xdist: one process a core, each with its own embedded server;
## TEST_WORKERS=0 runs it in one process). Tests are handed out one at a time
## to whichever process is free; tests/conftest.py starts the heaviest modules first.
test: install
	$(UV) run pytest -n $${TEST_WORKERS:-auto} --dist loadgroup

status: install
	$(UV) run automl-db status

down: install
	$(UV) run automl-db down

lint: install
	$(UV) run ruff check .
	$(UV) run ruff format --check packages apps alembic/env.py tests
	$(UV) run mypy

bench: install
	$(UV) run --frozen --group bench python -m bench
