# Developer and CI entry points; `make test` works on a fresh Debian machine as root.
SHELL := /bin/bash
.DEFAULT_GOAL := test

VENV := .venv
PY := $(VENV)/bin/python
LINT_PATHS := $(wildcard exporter monitoring tests bench)
PYTEST_ARGS ?=
DEMO_ARGS ?=
BENCH_ARGS ?=

.PHONY: test lint bootstrap demo bench clean distclean

bootstrap:
	bash scripts/bootstrap.sh

lint: bootstrap
	$(VENV)/bin/ruff check $(LINT_PATHS)

test: lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: bootstrap
	$(VENV)/bin/wfa demo $(DEMO_ARGS)

bench: bootstrap
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf build dist .pytest_cache .ruff_cache bench/results *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) .wfa
