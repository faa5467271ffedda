# Archipelag — `make up` runs the network, `make test` passes the tests, `make bench` measures.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: up test test-unit bench wasm lint env clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

env: $(STAMP)

wasm: $(STAMP)
	$(PY) workloads/build_wasm.py $(if $(CI),--check,)

up: env wasm
	$(VENV)/bin/archipelag up $(ARGS)

test: env wasm
	$(VENV)/bin/pytest -q -ra $(ARGS)

test-unit: env
	$(VENV)/bin/pytest -q tests/unit

bench: env wasm
	$(PY) -m bench $(ARGS)

lint: env
	$(VENV)/bin/ruff check archipelag tests bench
	$(VENV)/bin/mypy archipelag

clean:
	rm -rf .archipelag build *.egg-info
