PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test check lint types demo bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check shardload tests bench
	$(BIN)/ruff format --check shardload tests bench

types: install
	$(BIN)/mypy

check: lint types test

demo: install
	$(BIN)/python -m shardload.cli.demo

bench: install
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python -m bench.run $(BENCH_ARGS)
	$(BIN)/python -m bench.memory $(MEMORY_ARGS)

clean:
	rm -rf $(VENV) demo-out bench/out .mypy_cache .ruff_cache .pytest_cache
